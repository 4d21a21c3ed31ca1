//! Custody's agent graph and identity attribution: which human's agent did
//! what, through which sub-agents and credentials, and what it touched.
//!
//! - [`Attributor`] (`attribution.rs`): each event's chain, and how it is
//!   known: `authenticated`, `bound` (a credential key a chain holds),
//!   `correlated` (a session shared within a window) or `unattributed`, with
//!   its evidence; ambiguity is reported, never resolved by a guess.
//! - [`Graph`] (`graph.rs`): typed nodes and edges built from attributed
//!   events, each edge with first- and last-seen times and the events that
//!   made it, and every node's [`BlastRadius`] kept incrementally.
//!
//! - [`Live`] (`live.rs`): both behind one lock, as the engine's attribute
//!   stage.
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

mod arena;
mod attribution;
mod export;
mod graph;
mod live;

pub use attribution::{
    ATTR_AWS_ACCESS_KEY, ATTR_AWS_ISSUED_ACCESS_KEY, ATTR_AWS_ROLE_SESSION,
    ATTR_AWS_SESSION_EXPIRES, ATTR_AWS_SOURCE_IDENTITY, ATTR_BINDING_FROM, ATTR_BINDING_KEY,
    ATTR_BINDING_KEY_TYPE, ATTR_BINDING_UNTIL, ATTR_MINTED_EXPIRES, ATTR_MINTED_TOKEN,
    ATTR_OAUTH_CLIENT, ATTR_OAUTH_TOKEN, Attributor, Binding, BindingKey, DECLARE_BINDING, Origin,
    Trust, binding_keys,
};
pub use export::{SOURCE_KIND, opengraph};
pub use graph::{
    BlastRadius, EdgeKind, EdgeSeen, EdgeView, Graph, NodeKey, NodeKind, NodeView, Sensitivity,
    Subgraph, Verb, is_credential,
};
pub use live::Live;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod attribution_tests;
