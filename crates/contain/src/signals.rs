//! What detection raised on each run lately, for the policies' context:
//! the rule ids of findings opened on a run (or on a run above it) within
//! the findings' de-duplication window, and its baseline signals.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};
use custody_engine::{FindingNote, Signal};
use custody_event::{Actor, RuntimeEvent};

/// The most runs remembered; beyond, the least recently noted go.
const MAX_RUNS: usize = 100_000;

#[derive(Debug, Default)]
struct Noted {
    /// Rule id, and when its finding opened.
    findings: Vec<(String, DateTime<Utc>)>,
    /// Baseline signal id, and when.
    baseline: Vec<(String, DateTime<Utc>)>,
    last: DateTime<Utc>,
}

/// Signals by run, within a window.
#[derive(Debug)]
pub struct RunSignals {
    runs: Mutex<HashMap<String, Noted>>,
    window: Duration,
}

/// What a run's chain has raised within the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raised {
    /// Rule ids of findings opened on the run or a run above it.
    pub findings: Vec<String>,
    /// Baseline signal ids raised on them.
    pub baseline: Vec<String>,
}

impl RunSignals {
    /// Signals remembered for `window`.
    pub fn new(window: std::time::Duration) -> RunSignals {
        RunSignals {
            runs: Mutex::default(),
            window: Duration::from_std(window).unwrap_or(Duration::MAX),
        }
    }

    /// Notes what `signals` raised on `event`'s run.
    pub fn note(&self, event: &RuntimeEvent, signals: &[Signal]) {
        let now = Utc::now();
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        for signal in signals {
            let (rule, chain) = match &signal.finding {
                Some(FindingNote::Opens(finding)) => (&finding.analytic.id, &finding.chain),
                Some(FindingNote::Repeats(_)) => continue,
                None => (&signal.id, &event.actor),
            };
            let Some(run) = acting_run(chain) else {
                continue;
            };
            if runs.len() >= MAX_RUNS && !runs.contains_key(run) {
                let cutoff = now - self.window;
                runs.retain(|_, noted| noted.last >= cutoff);
                if runs.len() >= MAX_RUNS {
                    runs.clear();
                }
            }
            let noted = runs.entry(run.to_owned()).or_default();
            noted.last = now;
            let list = if rule.starts_with("baseline.") {
                &mut noted.baseline
            } else {
                &mut noted.findings
            };
            list.retain(|(id, _)| id != rule);
            list.push((rule.clone(), now));
        }
    }

    /// What `chain`'s runs raised within the window.
    pub fn raised(&self, chain: &Actor) -> Raised {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if runs.is_empty() {
            return Raised::default();
        }
        let cutoff = Utc::now() - self.window;
        let mut raised = Raised::default();
        let chain_runs = chain
            .agents
            .iter()
            .chain(std::iter::once(&chain.current))
            .filter_map(|a| a.run_id.as_deref());
        for run in chain_runs {
            if let Some(noted) = runs.get(run) {
                for (id, at) in &noted.findings {
                    if *at >= cutoff && !raised.findings.contains(id) {
                        raised.findings.push(id.clone());
                    }
                }
                for (id, at) in &noted.baseline {
                    if *at >= cutoff && !raised.baseline.contains(id) {
                        raised.baseline.push(id.clone());
                    }
                }
            }
        }
        raised
    }
}

/// The run acting in `chain`: the current actor's, or the nearest agent's
/// (a role or key acting for a run).
pub fn acting_run(chain: &Actor) -> Option<&str> {
    chain
        .run_id()
        .or_else(|| chain.agents.iter().rev().find_map(|a| a.run_id.as_deref()))
}
