//! What the sources' unit tests share: one record imported under the
//! contract, and records built from a base and the fields a test changes.

use custody_event::NewEvent;
use serde_json::Value;

use crate::{Source, contract};

/// The event of one record, checked against the contract.
pub(crate) fn event_of<S: Source>(source: &S, record: &Value) -> NewEvent {
    let input = serde_json::to_vec(record).unwrap();
    let mut imported = contract::check(source, &input).unwrap();
    assert_eq!(imported.len(), 1);
    imported.pop().unwrap().unwrap().1
}

/// `record` with the fields of `extra` set.
pub(crate) fn with(mut record: Value, extra: Value) -> Value {
    let fields = record.as_object_mut().unwrap();
    for (key, value) in extra.as_object().unwrap() {
        fields.insert(key.clone(), value.clone());
    }
    record
}
