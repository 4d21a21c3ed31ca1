//! Custody's agent graph and identity attribution: which human's agent did
//! what, through which sub-agents and credentials, and what it touched.
//!
//! - [`Graph`] (`graph.rs`): typed nodes and edges built from attributed
//!   events, each edge with first- and last-seen times and the events that
//!   made it, and every node's [`BlastRadius`] kept incrementally.
//!
//! *Invariant:* this crate does no IO. It takes events and returns values;
//! persisting the graph and serving it are the store's and the API's.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod graph;

pub use graph::{BlastRadius, EdgeKind, EdgeSeen, Graph, NodeKey, NodeKind, Sensitivity, Verb};

#[cfg(test)]
mod tests;
