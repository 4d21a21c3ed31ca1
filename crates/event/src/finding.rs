//! Findings: what a detection concluded about one or more events.
//!
//! A finding names the rule (a Sigma rule, a correlation, a threshold or a
//! baseline) that produced it, the events it rests on, the chain of the
//! event that completed it, and the group it was counted in. Findings are
//! de-duplicated per rule and group within a window: a repeat links its
//! event to the open finding instead of opening another. [`crate::ocsf`]
//! maps a finding onto OCSF's Detection Finding class for export.

use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Actor, EventId};

/// The unique id of a finding (a UUIDv7).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct FindingId(pub Uuid);

impl FindingId {
    /// A new time-ordered id.
    pub fn new_v7() -> FindingId {
        FindingId(Uuid::now_v7())
    }

    /// The id's 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for FindingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for FindingId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(FindingId)
    }
}

/// What sort of detection produced a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A Sigma detection rule matched one event.
    Rule,
    /// A Sigma correlation rule's condition held over several events.
    Correlation,
    /// A configured threshold was crossed.
    Threshold,
    /// An agent type left its learned baseline.
    Baseline,
}

impl FindingKind {
    /// The kind's name in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Rule => "rule",
            FindingKind::Correlation => "correlation",
            FindingKind::Threshold => "threshold",
            FindingKind::Baseline => "baseline",
        }
    }
}

/// How severe a finding is: Sigma's levels, which OCSF's severities extend.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth recording, not worth a look.
    Informational,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Every severity, least first.
    pub const ALL: [Severity; 5] = [
        Severity::Informational,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The severity's name in the JSON form (Sigma's level).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "informational",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|level| level.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown severity \"{s}\", expected one of: informational, low, medium, high, critical"
                )
            })
    }
}

/// The rule, threshold or baseline behind a finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Analytic {
    /// The rule's id (a Sigma rule's `id`, else its `name` or title; a
    /// threshold's or baseline's name).
    pub id: String,
    /// The rule's title.
    pub title: String,
    /// Its tags (`attack.t1098`, `owasp.asi03`, `nist.de.cm-01`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// What a detection concluded, and on which events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// The finding's id.
    pub id: FindingId,
    /// What sort of detection produced it.
    pub kind: FindingKind,
    /// The rule, threshold or baseline.
    pub analytic: Analytic,
    /// How severe it is.
    pub severity: Severity,
    /// A sentence for the responder.
    pub message: String,
    /// When Custody concluded it.
    pub created_at: DateTime<Utc>,
    /// When the first and the last of its events happened.
    pub first_seen: DateTime<Utc>,
    /// See `first_seen`.
    pub last_seen: DateTime<Utc>,
    /// The group it was counted in: the correlation's `group-by` fields and
    /// their values, or the run (else the actor) of a single event's rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group: Vec<GroupField>,
    /// The chain of the event that completed it.
    pub chain: Actor,
    /// The events it rests on, oldest first (capped; a repeat within the
    /// de-duplication window adds its event when stored).
    pub events: Vec<EventId>,
}

/// One field of a finding's group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupField {
    /// The field's name.
    pub field: String,
    /// Its value in the group.
    pub value: String,
}
