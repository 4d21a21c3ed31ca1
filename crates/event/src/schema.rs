//! The JSON Schemas of the event model, generated from its types.
//!
//! The generated schemas are committed under `schema/` at the repository root
//! so that producers in other languages can validate against them; a test
//! checks that the committed files are what the types generate, and
//! `CUSTODY_UPDATE_SCHEMA=1 cargo test -p custody-event --test schema`
//! rewrites them.
//!
//! The schemas state everything `decode` checks that JSON Schema can say,
//! the chain's shape included. Two rules stay with `decode` alone: text must
//! not be blank, and limits count bytes where `maxLength` counts characters.

use crate::model::{NewEvent, RuntimeEvent};

/// File name of the stored event's schema under `schema/`.
pub const RUNTIME_EVENT_FILE: &str = "runtime-event.v1.schema.json";
/// File name of the submitted event's schema under `schema/`.
pub const NEW_EVENT_FILE: &str = "new-event.v1.schema.json";

/// The JSON Schema of [`RuntimeEvent`], as a stored or exported event.
pub fn runtime_event() -> serde_json::Value {
    schemars::schema_for!(RuntimeEvent).to_value()
}

/// The JSON Schema of [`NewEvent`], as submitted to the collector.
pub fn new_event() -> serde_json::Value {
    schemars::schema_for!(NewEvent).to_value()
}

/// Every schema with its file name, pretty-printed as committed.
pub fn files() -> Vec<(&'static str, String)> {
    [
        (RUNTIME_EVENT_FILE, runtime_event()),
        (NEW_EVENT_FILE, new_event()),
    ]
    .into_iter()
    .map(|(name, schema)| {
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        (name, text)
    })
    .collect()
}
