//! The stage traits and the implementations in use until later work fills
//! each stage.
//!
//! Every stage is a small, synchronous trait taking values and returning
//! values: stages do no IO, so the inline gateway can run them on its request
//! path. The no-op implementations are deliberate and explicit: they say what
//! the pipeline does today rather than hide an empty stage.

use chrono::{DateTime, Utc};
use custody_event::{
    Actor, AttributionMethod, EventId, Evidence, Finding, FindingId, NewEvent, RuntimeEvent,
};
use serde::{Deserialize, Serialize};

use crate::decision::Decision;

/// Turns a validated submission into a complete event.
pub trait Normalize: Send + Sync {
    /// Completes `event`, received at `received_at`.
    fn normalize(&self, event: NewEvent, received_at: DateTime<Utc>) -> RuntimeEvent;
}

/// Who vouches for an event's actor.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Provenance {
    /// The source reported the actor; nothing Custody holds proved it.
    #[default]
    Reported,
    /// Custody validated the submitter's token (at the gateway, or a
    /// delegation token on the collector): the event is that token's
    /// holder's own action, by `chain`.
    Authenticated {
        /// The token's id, the evidence.
        token: String,
        /// The chain the token carries, its credential the token.
        chain: Actor,
    },
    /// Custody itself records the event (a token it minted, a binding it
    /// was told of), acting for `chain`. Only Custody can give an event this
    /// provenance: nothing a client sends can.
    Custody {
        /// What Custody did, the evidence.
        what: String,
        /// Who it acted for.
        chain: Actor,
    },
}

/// Resolves an event's actor to its identity chain.
pub trait Attribute: Send + Sync {
    /// Sets the event's chain and attribution, given who vouches for it.
    fn attribute(&self, event: &mut RuntimeEvent, provenance: &Provenance);
}

/// Finds what is suspicious about an event.
pub trait Detect: Send + Sync {
    /// The signals the event raises. Stateful detections (correlations,
    /// baselines, counters) count the event.
    fn detect(&self, event: &RuntimeEvent) -> Vec<Signal>;

    /// The signals the event would raise, counting nothing: for a preview
    /// of a call that may never happen. Stateless detections need not
    /// override it.
    fn peek(&self, event: &RuntimeEvent) -> Vec<Signal> {
        self.detect(event)
    }
}

impl<T: Detect + ?Sized> Detect for std::sync::Arc<T> {
    fn detect(&self, event: &RuntimeEvent) -> Vec<Signal> {
        (**self).detect(event)
    }

    fn peek(&self, event: &RuntimeEvent) -> Vec<Signal> {
        (**self).peek(event)
    }
}

/// Decides what to do with an event.
pub trait Decide: Send + Sync {
    /// The decision, given the event and its signals.
    fn decide(&self, event: &RuntimeEvent, signals: &[Signal]) -> Decision;
}

impl<T: Decide + ?Sized> Decide for std::sync::Arc<T> {
    fn decide(&self, event: &RuntimeEvent, signals: &[Signal]) -> Decision {
        (**self).decide(event, signals)
    }
}

/// Several decide stages as one: each decides, and the strongest verdict
/// stands with the reasons of every stage that gave it. An `allow` keeps
/// the reasons of every stage (the policies that permitted it).
pub struct Strictest(pub Vec<std::sync::Arc<dyn Decide>>);

impl std::fmt::Debug for Strictest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strictest")
            .field("stages", &self.0.len())
            .finish()
    }
}

impl Decide for Strictest {
    fn decide(&self, event: &RuntimeEvent, signals: &[Signal]) -> Decision {
        let mut strongest = Decision::allow();
        for stage in &self.0 {
            let decision = stage.decide(event, signals);
            if decision.verdict > strongest.verdict {
                strongest = decision;
            } else if decision.verdict == strongest.verdict {
                strongest.reasons.extend(decision.reasons);
            }
        }
        strongest
    }
}

impl<T: Act + ?Sized> Act for std::sync::Arc<T> {
    fn act(
        &self,
        event: &RuntimeEvent,
        signals: &[Signal],
        decision: &Decision,
    ) -> Vec<ActionRecord> {
        (**self).act(event, signals, decision)
    }
}

/// Responds to what detection found and to what was decided: playbooks'
/// containment and revocation.
pub trait Act: Send + Sync {
    /// What was done, or would have been done, about `event`, given its
    /// signals and the decision on it. It runs for every event detection
    /// counts: those the collector decides, and those the gateway decided
    /// and enforced where they happened (whose decision it need not carry
    /// out again, but whose signals it answers).
    fn act(
        &self,
        event: &RuntimeEvent,
        signals: &[Signal],
        decision: &Decision,
    ) -> Vec<ActionRecord>;
}

/// Something a detection found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// The rule, threshold or baseline that fired.
    pub id: String,
    /// A sentence for the responder.
    pub message: String,
    /// The finding the signal opens or adds to, when it is one: the store
    /// records it with the event, in the same transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<FindingNote>,
}

impl Signal {
    /// A signal that is no finding.
    pub fn new(id: impl Into<String>, message: impl Into<String>) -> Signal {
        Signal {
            id: id.into(),
            message: message.into(),
            finding: None,
        }
    }
}

/// How a signal bears on the findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingNote {
    /// A new finding.
    Opens(Box<Finding>),
    /// A repeat, within its de-duplication window, of an open finding: the
    /// event is linked to it and counted, and no new finding is opened.
    Repeats(FindingId),
}

/// An action a playbook took (or, in monitor mode, would have taken). The
/// store writes it with the event that triggered it; an action carried out
/// later (a responder's call) updates its outcome by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// The action's id (a UUIDv7).
    pub id: String,
    /// The playbook that took it.
    pub playbook: String,
    /// The action, e.g. `kill`, `quarantine`, `revoke.aws_access_key`.
    pub action: String,
    /// What it acts on, e.g. `run:run-7`, `agent:coder`.
    pub target: String,
    /// Whether the playbook only monitors: the action was not taken.
    pub monitor: bool,
    /// What happened: `done`, `would`, `queued`, `failed`, `skipped`.
    pub outcome: String,
    /// Why, and what it did, for the investigator.
    pub detail: String,
    /// The finding that triggered it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
}

/// Normalization as it stands: keep a client-chosen id or assign a UUIDv7,
/// and stamp the receipt time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stamp;

impl Normalize for Stamp {
    fn normalize(&self, event: NewEvent, received_at: DateTime<Utc>) -> RuntimeEvent {
        event.into_event(received_at, EventId::new_v7)
    }
}

/// Attribution without a graph: the chain and method the source reported
/// are kept as they are, unless a validated token vouches for the event,
/// whose chain then replaces them.
#[derive(Debug, Default, Clone, Copy)]
pub struct AsReported;

impl Attribute for AsReported {
    fn attribute(&self, event: &mut RuntimeEvent, provenance: &Provenance) {
        match provenance {
            Provenance::Reported => {}
            Provenance::Authenticated { token, chain } => authenticate(event, token, chain),
            Provenance::Custody { what, chain } => recorded_by_custody(event, what, chain),
        }
    }
}

/// The evidence type marking an event Custody recorded itself.
pub const CUSTODY_EVIDENCE: &str = "custody";

/// Makes `event` one Custody records for `chain`: authenticated, with
/// evidence of type [`CUSTODY_EVIDENCE`] saying what it did.
pub fn recorded_by_custody(event: &mut RuntimeEvent, what: &str, chain: &Actor) {
    event.actor = chain.clone();
    event.attribution.method = AttributionMethod::Authenticated;
    event.attribution.evidence = vec![Evidence {
        kind: CUSTODY_EVIDENCE.into(),
        detail: what.to_owned(),
    }];
}

/// Makes `event` the action of `chain`, authenticated by `token`.
pub fn authenticate(event: &mut RuntimeEvent, token: &str, chain: &Actor) {
    event.actor = chain.clone();
    event.attribution.method = AttributionMethod::Authenticated;
    event.attribution.evidence = vec![Evidence {
        kind: "token".into(),
        detail: token.to_owned(),
    }];
}

/// Detection as it stands: no rules are loaded, so nothing is signalled.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDetections;

impl Detect for NoDetections {
    fn detect(&self, _event: &RuntimeEvent) -> Vec<Signal> {
        Vec::new()
    }
}

/// Decision as it stands: no policies are loaded, so everything is allowed.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Decide for AllowAll {
    fn decide(&self, _event: &RuntimeEvent, _signals: &[Signal]) -> Decision {
        Decision::allow()
    }
}

/// Action as it stands: no playbooks or responders, so nothing is done.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoActions;

impl Act for NoActions {
    fn act(
        &self,
        _event: &RuntimeEvent,
        _signals: &[Signal],
        _decision: &Decision,
    ) -> Vec<ActionRecord> {
        Vec::new()
    }
}
