//! Reading the fields of one record, forgivingly: audit logs pass through
//! pipelines that change key case (`eventname`), and a field's absence,
//! `null` and `""` all mean "not given".

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use custody_event::{Actor, Credential, MAX_ID_LEN, MAX_TEXT_LEN, Principal, PrincipalKind};
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

    /// The string or number at `path`, as text: ids that one exporter
    /// writes as numbers and another as strings (GitHub's `token_id`).
    pub fn text(self, path: &str) -> Option<String> {
        match self.at(path)? {
            Value::Number(number) => Some(number.to_string()),
            Value::String(_) => self.str(path).map(str::to_owned),
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

/// A time in any of the forms audit logs and their exporters write: RFC 3339
/// (CloudTrail's `eventTime`, Okta's `published`), `2024-06-02
/// 19:41:40.000000000` (UTC, from log pipelines), and STS's `Dec 12, 2024,
/// 4:19:32 PM` (UTC).
pub(crate) fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%b %d, %Y, %I:%M:%S %p",
        "%b %d, %Y %I:%M:%S %p",
        "%b %d, %Y, %H:%M:%S %p",
        "%b %d, %Y %H:%M:%S %p",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    .map(|time| time.and_utc())
}

/// Sets the attribute `key` to `value`, clipped, when there is one.
pub(crate) fn put_text(attributes: &mut BTreeMap<String, Value>, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        attributes.insert(key.to_owned(), Value::from(clip(value, MAX_TEXT_LEN)));
    }
}

/// An actor with only a current identity and, maybe, a credential: what a
/// source reports, never claiming a chain.
pub(crate) fn actor(
    id: String,
    kind: PrincipalKind,
    name: Option<&str>,
    credential: Option<Credential>,
) -> Actor {
    Actor {
        root: None,
        agents: Vec::new(),
        current: principal(kind, &id, name),
        credential,
    }
}

/// An identity named by `id`, clipped.
pub(crate) fn principal(kind: PrincipalKind, id: &str, name: Option<&str>) -> Principal {
    Principal {
        kind,
        id: clip(id, MAX_ID_LEN),
        name: name.map(|name| clip(name, MAX_ID_LEN)),
        version: None,
        run_id: None,
    }
}
