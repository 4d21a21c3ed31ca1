//! Reading the fields of one record, forgivingly: audit logs pass through
//! pipelines that change key case (`eventname`), and a field's absence,
//! `null` and `""` all mean "not given".

use serde_json::{Map, Value};

/// A record's fields (a JSON object), looked up by name: exactly, else
/// ignoring ASCII case.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// The fields of `object`.
    pub fn new(object: &'a Map<String, Value>) -> Fields<'a> {
        Fields(object)
    }

    /// The value of `key`, unless it is absent or `null`.
    pub fn get(self, key: &str) -> Option<&'a Value> {
        let value = match self.0.get(key) {
            Some(value) => value,
            None => {
                self.0
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(key))?
                    .1
            }
        };
        (!value.is_null()).then_some(value)
    }

    /// The value at a dotted path of keys (`sessionContext.sessionIssuer.arn`).
    pub fn at(self, path: &str) -> Option<&'a Value> {
        let (parents, last) = match path.rsplit_once('.') {
            Some((parents, last)) => (Some(parents), last),
            None => (None, path),
        };
        match parents {
            Some(parents) => self.object(parents)?.get(last),
            None => self.get(last),
        }
    }

    /// The non-blank string at `path`, trimmed.
    pub fn str(self, path: &str) -> Option<&'a str> {
        let text = self.at(path)?.as_str()?.trim();
        (!text.is_empty()).then_some(text)
    }

    /// The object at `path`.
    pub fn object(self, path: &str) -> Option<Fields<'a>> {
        let mut fields = self;
        for key in path.split('.') {
            fields = Fields(fields.get(key)?.as_object()?);
        }
        Some(fields)
    }

    /// The boolean at `path`, given as a JSON boolean or as `"true"` or
    /// `"false"` (CloudTrail writes both).
    pub fn bool(self, path: &str) -> Option<bool> {
        match self.at(path)? {
            Value::Bool(b) => Some(*b),
            Value::String(text) if text.eq_ignore_ascii_case("true") => Some(true),
            Value::String(text) if text.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }

    /// Whether the record has a value at `path`.
    pub fn has(self, path: &str) -> bool {
        self.at(path).is_some()
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}
