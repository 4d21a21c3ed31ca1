//! The engine: one ordered pipeline every event goes through, whatever its
//! source.
//!
//! ```text
//! normalize -> attribute -> detect -> decide -> act -> record
//! ```
//!
//! Each stage is a small trait ([`Normalize`], [`Attribute`], [`Detect`],
//! [`Decide`], [`Act`], [`Record`]) so that later work fills a stage without
//! touching the others. The inline gateway calls [`Engine::evaluate`] and gets
//! a decision before it forwards a call; collectors call
//! [`Engine::ingest_batch`] and wait on the returned [`Receipt`] before they
//! acknowledge. Both run the same stages in the same order.
//!
//! The engine does no IO itself: recording is a trait the store implements.
//! It sits on the decision path, so it never panics: unwrap, expect, panic
//! and slice indexing are denied outside tests.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod decision;
mod pipeline;
mod record;
pub mod stages;

pub use decision::{Decision, Reason, ReasonSource, Verdict};
pub use pipeline::{Engine, EngineBuilder, Evaluated, Ingested};
pub use record::{Receipt, Record, RecordError, Reservation};
pub use stages::{
    Act, ActionRecord, Attribute, CUSTODY_EVIDENCE, Decide, Detect, FindingNote, Normalize,
    Provenance, Signal, Strictest, authenticate, recorded_by_custody,
};
