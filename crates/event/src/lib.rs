//! The runtime event model: one action taken by an identity, with its chain,
//! target, outcome and raw record, as Custody stores and exchanges it.
//!
//! This crate is the serialization boundary for events. It is pure: it does no
//! IO. [`decode`] turns untrusted bytes into a validated [`NewEvent`] and names
//! the field at fault when it cannot; [`NewEvent::into_event`] completes it into
//! a [`RuntimeEvent`] once the receiver has stamped it. [`schema`] generates the
//! committed JSON Schema and [`ocsf`] maps events onto OCSF classes for export.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod canonical;
mod decode;
mod finding;
mod model;
pub mod ocsf;
pub mod schema;

pub use decode::{
    DecodeError, MAX_ATTRIBUTES, MAX_ID_LEN, MAX_LABEL_LEN, MAX_TEXT_LEN, MAX_TRACE_ID_LEN, decode,
    decode_value, validate,
};
pub use finding::{Analytic, Finding, FindingId, FindingKind, GroupField, Severity};
pub use model::*;
