//! A rule's examples, and checking them: `custody rules test`.
//!
//! Beside a rule file `x.yml`, `x.tests.yml` holds its cases:
//!
//! ```yaml
//! rule: 5b8c...            # the id (or name) of the rule the cases are about
//! cases:
//!   - name: a secret read, then a post to a paste site, in one run
//!     expect: fire          # or `quiet`
//!     events:
//!       - {kind: data_access, action: secrets/get, ...}   # a Custody event
//!       - cloudtrail: {eventName: CreateAccessKey, ...}   # a raw record
//! ```
//!
//! Events are Custody events as `POST /v1/events` takes them, or raw
//! records of a source under its format's name (`cloudtrail`, `okta`,
//! `github`), imported as `custody ingest` would. Each case runs on fresh
//! state, with every rule of the set loaded (a correlation needs its rules).

use chrono::Utc;
use custody_engine::{Detect, Signal};
use custody_event::{EventId, NewEvent, RuntimeEvent};
use serde::Deserialize;
use serde_json::Value;

use crate::rules::{RuleError, RuleSet};
use crate::sigma::{Sigma, SigmaConfig};

/// The examples of one rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    /// The rule's id or name.
    pub rule: String,
    /// Its cases.
    pub cases: Vec<Case>,
}

/// One case: events in order, and whether the rule fires on them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub name: String,
    /// Whether the rule fires.
    pub expect: Expect,
    /// The events, in order.
    pub events: Vec<Value>,
}

/// Whether a rule fires on a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// It fires (a true positive).
    Fire,
    /// It stays quiet (a true negative).
    Quiet,
}

/// How one case went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The examples file.
    pub file: String,
    /// The rule.
    pub rule: String,
    /// The case.
    pub case: String,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
}

/// Reads an examples file.
pub fn parse(file: &str, text: &str) -> Result<Examples, RuleError> {
    yaml_serde::from_str(text).map_err(|error| RuleError {
        file: file.to_owned(),
        line: error.location().map(|l| l.line()),
        field: None,
        message: error.to_string(),
    })
}

/// Runs every case of `examples` against `set`.
pub fn run(set: &RuleSet, file: &str, examples: &Examples) -> Vec<Outcome> {
    let known = set
        .rules
        .iter()
        .map(|r| (r.key(), r.sigma.name.as_deref()))
        .chain(
            set.correlations
                .iter()
                .map(|c| (c.key(), c.sigma.name.as_deref())),
        )
        .find(|(key, name)| *key == examples.rule || *name == Some(examples.rule.as_str()));
    let Some((key, _)) = known else {
        return vec![Outcome {
            file: file.to_owned(),
            rule: examples.rule.clone(),
            case: "(all)".into(),
            failure: Some(format!(
                "no loaded rule has the id or name `{}`",
                examples.rule
            )),
        }];
    };
    examples
        .cases
        .iter()
        .map(|case| Outcome {
            file: file.to_owned(),
            rule: key.to_owned(),
            case: case.name.clone(),
            failure: check(set, key, case).err(),
        })
        .collect()
}

fn check(set: &RuleSet, key: &str, case: &Case) -> Result<(), String> {
    // One correlation engine: a case is a handful of events, and each
    // engine compiles the rules correlations name.
    let sigma = Sigma::new(
        set,
        SigmaConfig {
            correlation_shards: 1,
            ..SigmaConfig::default()
        },
    )?;
    let mut fired_on = Vec::new();
    for (index, value) in case.events.iter().enumerate() {
        let event = event(value).map_err(|e| format!("event {}: {e}", index + 1))?;
        let signals: Vec<Signal> = sigma.detect(&event);
        if signals.iter().any(|s| s.id == key) {
            fired_on.push(index + 1);
        }
    }
    match (case.expect, fired_on.is_empty()) {
        (Expect::Fire, false) | (Expect::Quiet, true) => Ok(()),
        (Expect::Fire, true) => Err("expected the rule to fire; it did not".into()),
        (Expect::Quiet, false) => Err(format!(
            "expected the rule to stay quiet; it fired on event {}",
            fired_on
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A case's event: a Custody event, or a raw record under its format.
pub fn event(value: &Value) -> Result<RuntimeEvent, String> {
    let received_at = Utc::now();
    if let Some(object) = value.as_object()
        && object.len() == 1
        && let Some((format, record)) = object.iter().next()
    {
        let bytes = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let imported = match format.as_str() {
            "cloudtrail" => {
                custody_import::import(&custody_import::CloudTrail, &bytes, received_at)
            }
            "okta" => custody_import::import(&custody_import::Okta, &bytes, received_at),
            "github" => custody_import::import(&custody_import::GitHub, &bytes, received_at),
            _ => Vec::new(),
        };
        if let Some(first) = imported.into_iter().next() {
            let (_, event) = first.map_err(|e| format!("{format} record: {}", e.error))?;
            return Ok(event.into_event(received_at, EventId::new_v7));
        }
    }
    let event: NewEvent = custody_event::decode_value(value.clone()).map_err(|e| e.to_string())?;
    Ok(event.into_event(received_at, EventId::new_v7))
}
