//! Custody's inline MCP gateway, stdio slice: `custody wrap` starts an MCP
//! server as its child and relays newline-delimited JSON-RPC between the
//! host and the server, deciding on every call before the server sees it.
//!
//! Every client request goes through one stack of layers, assembled in
//! `relay.rs` (`Session::client_message`):
//!
//! ```text
//! decode -> authenticate -> attribute -> authorize -> contain -> forward -> record
//! ```
//!
//! `README.md` beside this file is the design note: sessions, protocol
//! eras, and why the gateway decides in-process but records through the
//! server.
//!
//! The gateway sits on the decision path, so it never panics: unwrap,
//! expect, panic and slice indexing are denied outside tests.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod approval;
pub mod decode;
pub mod http;
mod identity;
mod outbox;
mod policy;
pub mod redact;
pub(crate) mod relay;
pub mod tools;

pub use approval::{Approval, Approvals, HeldCall};
pub use identity::Identity;
pub use outbox::{RecordFailure, Recorder, Recording};
pub use policy::ToolRules;
pub use relay::{Config, DENIED, Ended, Gateway, KILLED, SERVER_GONE, TIMED_OUT, TOO_MANY};
pub use tools::ChangedDefinitions;
