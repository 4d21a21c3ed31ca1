//! The detect stage as `custody serve` runs it: Sigma rules, thresholds and
//! baselines over every event, one memory of open findings among them.

use std::collections::BTreeMap;
use std::sync::Arc;

use custody_engine::{Detect, Signal};
use custody_event::RuntimeEvent;
use custody_graph::Sensitivity;

use crate::baseline::{BaselineConfig, Baselines};
use crate::findings::OpenFindings;
use crate::rules::RuleSet;
use crate::sigma::{Sigma, SigmaConfig};
use crate::thresholds::{ThresholdConfig, Thresholds};

/// How the detections run, beside their rules.
#[derive(Debug, Clone)]
pub struct DetectionsConfig {
    /// The Sigma stage's limits and windows (its de-duplication window and
    /// open-finding memory serve every detection).
    pub sigma: SigmaConfig,
    /// The thresholds.
    pub thresholds: Vec<ThresholdConfig>,
    /// Teams, for thresholds kept per team.
    pub teams: BTreeMap<String, Vec<String>>,
    /// What is sensitive, for thresholds on sensitive writes.
    pub sensitivity: Sensitivity,
    /// Counters a threshold keeps at most.
    pub max_threshold_groups: usize,
    /// How baselines learn.
    pub baselines: BaselineConfig,
}

impl Default for DetectionsConfig {
    fn default() -> Self {
        DetectionsConfig {
            sigma: SigmaConfig::default(),
            thresholds: Vec::new(),
            teams: BTreeMap::new(),
            sensitivity: Sensitivity::default(),
            max_threshold_groups: 100_000,
            baselines: BaselineConfig::default(),
        }
    }
}

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

impl Detections {
    /// The detections of `set`, configured by `config`. An error names the
    /// threshold or rule at fault.
    pub fn new(set: &RuleSet, config: DetectionsConfig) -> Result<Detections, String> {
        let findings = Arc::new(OpenFindings::new(
            config.sigma.max_open_findings,
            config.sigma.dedup_window_secs,
        ));
        let sigma = Sigma::sharing(set, config.sigma, findings.clone())
            .map_err(|why| format!("starting the Sigma rules: {why}"))?;
        let thresholds = Thresholds::new(
            config.thresholds,
            config.teams,
            config.sensitivity,
            config.max_threshold_groups,
            findings.clone(),
        )?;
        let baselines = Baselines::new(config.baselines, findings.clone());
        Ok(Detections {
            sigma,
            thresholds,
            baselines,
            findings,
        })
    }

    /// The shipped rule pack, with no thresholds and default baselines: what
    /// `custody serve` runs when nothing is configured.
    pub fn builtin() -> Result<Detections, String> {
        let set = RuleSet::load(&crate::builtin::files()).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Detections::new(&set, DetectionsConfig::default())
    }
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
