//! A decide stage from the command line: tools denied, held for approval,
//! or ending the session, by name. It stands in until Cedar policies
//! arrive, and lets a host (and the end-to-end tests) exercise every
//! verdict the gateway enforces.

use std::collections::BTreeSet;

use custody_engine::{Decide, Decision, Reason, ReasonSource, Signal, Verdict};
use custody_event::RuntimeEvent;

use crate::tools;

/// Tools named for each verdict; any other call is allowed.
#[derive(Debug, Clone, Default)]
pub struct ToolRules {
    /// Tools refused.
    pub deny: BTreeSet<String>,
    /// Tools held until approved.
    pub hold: BTreeSet<String>,
    /// Tools whose call ends the session.
    pub kill: BTreeSet<String>,
    /// Refuse calls to a tool whose definition changed since it was first
    /// listed in the session (`--deny-changed-tools`).
    pub deny_changed: bool,
}

impl Decide for ToolRules {
    fn decide(&self, event: &RuntimeEvent, signals: &[Signal]) -> Decision {
        let Some(tool) = event.target.tool.as_deref() else {
            return Decision::allow();
        };
        let changed = self.deny_changed && signals.iter().any(|s| s.id == tools::SIGNAL);
        let (verdict, what) = if self.kill.contains(tool) {
            (Verdict::Kill, "ends the session")
        } else if self.deny.contains(tool) {
            (Verdict::Deny, "is not allowed")
        } else if changed {
            (
                Verdict::Deny,
                "changed its definition since it was first listed, and is not allowed",
            )
        } else if self.hold.contains(tool) {
            (Verdict::RequireApproval, "needs approval")
        } else {
            return Decision::allow();
        };
        Decision {
            verdict,
            reasons: vec![Reason {
                source: ReasonSource::Policy,
                id: format!("wrap.{}", verdict.as_str()),
                message: format!("the tool `{tool}` {what} in this session"),
            }],
        }
    }
}
