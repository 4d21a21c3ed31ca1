//! What the engine decided about an event, and why.

use serde::{Deserialize, Serialize};

/// The engine's decision about one event.
///
/// Every decision names what produced it; the default, an `allow` with no
/// reasons, means no stage objected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do with the action.
    pub verdict: Verdict,
    /// The policies, rules and thresholds that produced the verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
}

impl Decision {
    /// Allow, with no objection from any stage.
    pub fn allow() -> Decision {
        Decision::default()
    }

    /// Refuse because deciding failed; the enforcement path fails closed.
    pub fn fail_closed(why: impl Into<String>) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            reasons: vec![Reason {
                source: ReasonSource::Engine,
                id: "engine.fail_closed".into(),
                message: why.into(),
            }],
        }
    }
}

/// What to do with an action, from the mildest to the strongest.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let it through.
    #[default]
    Allow,
    /// Let it through and raise an alert.
    Alert,
    /// Hold it until a human approves or refuses it.
    RequireApproval,
    /// Refuse it.
    Deny,
    /// Refuse it and end the run and its descendants.
    Kill,
    /// Refuse it and every future action of the identity.
    Quarantine,
    /// Refuse it and revoke the credential at its issuer.
    Revoke,
}

impl Verdict {
    /// The verdict's name in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Alert => "alert",
            Verdict::RequireApproval => "require_approval",
            Verdict::Deny => "deny",
            Verdict::Kill => "kill",
            Verdict::Quarantine => "quarantine",
            Verdict::Revoke => "revoke",
        }
    }
}

/// One input that produced a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// What kind of input.
    pub source: ReasonSource,
    /// The policy, rule or threshold id.
    pub id: String,
    /// A sentence for the responder.
    pub message: String,
}

/// The kinds of input a decision rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonSource {
    /// A Cedar policy.
    Policy,
    /// A detection rule.
    Rule,
    /// A blast-radius or rate threshold.
    Threshold,
    /// A learned baseline.
    Baseline,
    /// A containment already in force (a killed run, a quarantined identity).
    Containment,
    /// The engine itself (a failure while deciding).
    Engine,
}
