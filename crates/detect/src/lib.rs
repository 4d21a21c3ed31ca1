//! Detections over runtime events and the raw records they came from.
//!
//! [`rules`] reads Sigma rules (detection, correlation, filters) with
//! errors that name file, line and field; [`Sigma`] is the engine's detect
//! stage built from them (rsigma's evaluator and correlation engine, routed
//! by log source, grouped on Custody's chain keys); [`view`] says which
//! fields a rule sees; [`testing`] checks rules against their examples.
//! [`builtin`] is the rule pack shipped in the repository's `rules/`.
//!
//! The detect stage sits on the decision path: it never panics on an
//! event, and a poisoned lock is recovered rather than propagated.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod baseline;
pub mod builtin;
mod distinct;
pub mod findings;
pub mod rules;
mod sigma;
mod stage;
pub mod testing;
pub mod thresholds;
pub mod view;

pub use baseline::{BaselineConfig, Baselines, TypeBaseline};
pub use rules::{Placeholders, RuleError, RuleFile, RuleSet};
pub use sigma::{Sigma, SigmaConfig, SigmaStats};
pub use stage::{Detections, DetectionsConfig};
pub use thresholds::{ThresholdConfig, Thresholds};
