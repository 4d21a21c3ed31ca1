//! The detect stage as `custody serve` runs it: Sigma rules, thresholds and
//! baselines over every event, one memory of open findings among them.

use std::sync::Arc;

use custody_engine::{Detect, Signal};
use custody_event::RuntimeEvent;

use crate::baseline::Baselines;
use crate::findings::OpenFindings;
use crate::sigma::Sigma;
use crate::thresholds::Thresholds;

/// Every detection, in one stage.
#[derive(Debug)]
pub struct Detections {
    /// The Sigma rules and correlations.
    pub sigma: Sigma,
    /// The thresholds.
    pub thresholds: Thresholds,
    /// The learned baselines.
    pub baselines: Baselines,
    /// The findings they open.
    pub findings: Arc<OpenFindings>,
}

impl Detect for Detections {
    fn detect(&self, event: &RuntimeEvent) -> Vec<Signal> {
        let mut signals = self.sigma.detect(event);
        if !self.thresholds.is_empty() {
            signals.extend(self.thresholds.detect(event));
        }
        signals.extend(self.baselines.detect(event));
        signals
    }

    fn peek(&self, event: &RuntimeEvent) -> Vec<Signal> {
        self.sigma.peek(event)
    }
}
