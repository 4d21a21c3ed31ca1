//! Reading a span's or resource's attributes by key.

use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};

/// A list of OTLP attributes, read by key (the first of a repeated key).
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a>(&'a [KeyValue]);

impl<'a> Attrs<'a> {
    /// The attributes `list`.
    pub fn new(list: &'a [KeyValue]) -> Attrs<'a> {
        Attrs(list)
    }

    fn value(&self, key: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    /// The non-empty string value of `key`.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        match self.value(key)? {
            Value::StringValue(s) if !s.trim().is_empty() => Some(s.as_str()),
            _ => None,
        }
    }

    /// The integer value of `key`, or a string holding one.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.value(key)? {
            Value::IntValue(i) => Some(*i),
            Value::StringValue(s) => s.parse().ok(),
            _ => None,
        }
    }
}
