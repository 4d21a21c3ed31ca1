//! Containment while the agent runs.
//!
//! [`Containment`] holds the measures in force (a killed run, a quarantined
//! identity, a run whose calls are held for approval); [`Contained`] is the
//! decide stage that enforces them on every call, at the gateway and the
//! collector alike. [`Playbooks`] is the act stage that applies them (and
//! queues what reaches outside Custody, a responder's revocation, as a
//! [`Job`] for the server's executor) when detection finds something. The
//! crate does no IO.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod measures;
pub mod playbook;
pub mod signals;

pub use measures::{Change, Contained, Containment, Measure, MeasureKind, Scope, scopes_of};
pub use playbook::{Job, JobStep, Playbook, PlaybookCounts, Playbooks, Step, Trigger};
pub use signals::{Raised, RunSignals, acting_run};
