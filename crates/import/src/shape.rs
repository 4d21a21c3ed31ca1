//! Splitting an input into raw records, whatever its shape.
//!
//! The shape is decided from the first non-space byte and, for an object,
//! its top-level keys:
//!
//! | input starts with | and | read as |
//! | --- | --- | --- |
//! | `[` | | a JSON array of records |
//! | `{` | it is one JSON value with the wrapper key (`Records`) | the records of a delivered file |
//! | `{` | it is one JSON value without it | one record |
//! | `{` | more follows its first line | NDJSON: one record a line |
//! | `{` | its first value spans lines and more follows | a sequence of records |
//!
//! Records are borrowed from the input as raw slices (`RawValue`); nothing
//! is parsed into a `Value` tree here, so a large file costs its records one
//! at a time.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::FieldError;

/// Where a record is in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The record's index among the input's records, from 0.
    pub index: usize,
    /// The line the record starts on, from 1.
    pub line: usize,
}

/// One record of an input, or why it could not be read.
pub type Split<'a> = (Position, Result<&'a RawValue, FieldError>);

/// Splits `input` into its records. `wrapper` is the format's top-level key
/// wrapping an array of records (`Records`), if it has one.
pub fn split<'a>(input: &'a [u8], wrapper: Option<&str>) -> Vec<Split<'a>> {
    let Some(start) = input.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Vec::new();
    };
    let mut out = Records::new(input);
    match input.get(start) {
        Some(b'[') => out.array(input),
        Some(b'{') => out.objects(input, start, wrapper),
        _ => out.push_error(
            start,
            FieldError::at("", "expected JSON records: an array, an object or NDJSON"),
        ),
    }
    out.records
}

/// The records found so far, and the line of each.
struct Records<'a> {
    input: &'a [u8],
    records: Vec<Split<'a>>,
    lines: LineCounter<'a>,
}

impl<'a> Records<'a> {
    fn new(input: &'a [u8]) -> Records<'a> {
        Records {
            input,
            records: Vec::new(),
            lines: LineCounter::new(input),
        }
    }

    fn position(&mut self, offset: usize) -> Position {
        Position {
            index: self.records.len(),
            line: self.lines.line_at(offset),
        }
    }

    fn push(&mut self, raw: &'a RawValue) {
        let position = self.position(self.offset_of(raw));
        self.records.push((position, Ok(raw)));
    }

    fn push_error(&mut self, offset: usize, error: FieldError) {
        let position = self.position(offset);
        self.records.push((position, Err(error)));
    }

    /// Where a slice borrowed from the input starts in it.
    fn offset_of(&self, raw: &RawValue) -> usize {
        (raw.get().as_ptr() as usize).saturating_sub(self.input.as_ptr() as usize)
    }

    /// The elements of a JSON array (`text`, part of the input), each a
    /// record. A syntax error ends the array: what came before is kept.
    fn array(&mut self, text: &'a [u8]) {
        let before = self.records.len();
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let result = deserializer
            .deserialize_seq(ElementsVisitor(self))
            .and_then(|()| deserializer.end());
        if let Err(error) = result {
            self.syntax_error(text, &error, before);
        }
    }

    /// Records a syntax error in `text`, as the record that follows the
    /// last one read from it (the `before`th of the input read before
    /// `text`), or `text` itself when none was.
    fn syntax_error(&mut self, text: &'a [u8], error: &serde_json::Error, before: usize) {
        let what = match error.classify() {
            serde_json::error::Category::Eof => "truncated JSON",
            _ => "invalid JSON",
        };
        let last = self
            .records
            .get(before..)
            .and_then(|read| read.last())
            .and_then(|(_, record)| record.as_ref().ok())
            .map(|raw| self.offset_of(raw) + raw.get().len());
        let (offset, message) = match last {
            // The next record starts after the separator.
            Some(end) => {
                let next = self
                    .input
                    .get(end..)
                    .and_then(|rest| {
                        rest.iter()
                            .position(|b| !b.is_ascii_whitespace() && *b != b',')
                    })
                    .map_or(end, |skip| end + skip);
                let message = format!("{what}, no record after this one can be read: {error}");
                (next, message)
            }
            None => (self.offset_in(text), format!("{what}: {error}")),
        };
        self.push_error(offset, FieldError::at("", message));
    }

    /// An input starting with `{`: one record, a wrapped file, NDJSON, or a
    /// sequence of multi-line records.
    fn objects(&mut self, input: &'a [u8], start: usize, wrapper: Option<&str>) {
        let mut values = serde_json::Deserializer::from_slice(input).into_iter::<&RawValue>();
        let first = values.next();
        let end = values.byte_offset();
        let rest_is_space = input
            .get(end..)
            .is_some_and(|rest| rest.iter().all(u8::is_ascii_whitespace));
        match first {
            Some(Ok(value)) if rest_is_space => self.object(value.get().as_bytes(), wrapper),
            Some(Ok(value)) if value.get().contains('\n') => self.sequence(input),
            Some(Ok(_)) => self.lines(input),
            // The first value is broken: NDJSON with a bad first line when
            // the next line is a value of its own, else one broken object
            // (a truncated file), read as far as it goes.
            _ if second_line_is_a_value(input.get(start..).unwrap_or_default()) => {
                self.lines(input)
            }
            _ => self.object(input, wrapper),
        }
    }

    /// One JSON object (`text`, part of the input): the records of a
    /// wrapped file, read one by one so those before a syntax error are
    /// kept, or one record.
    fn object(&mut self, text: &'a [u8], wrapper: Option<&str>) {
        let before = self.records.len();
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let found = deserializer
            .deserialize_map(WrapperVisitor {
                key: wrapper,
                records: self,
            })
            .and_then(|found| deserializer.end().map(|()| found));
        let path = wrapper.unwrap_or_default();
        match found {
            Ok(Found::Records) => {}
            Ok(Found::NotAnArray) => {
                let offset = self.offset_in(text);
                let message = format!("`{path}` holds the records: an array");
                self.push_error(offset, FieldError::at(path, message));
            }
            Ok(Found::None) => match serde_json::from_slice::<&RawValue>(text) {
                Ok(raw) => self.push(raw),
                Err(error) => self.syntax_error(text, &error, before),
            },
            Err(error) => self.syntax_error(text, &error, before),
        }
    }

    /// Where `text`, part of the input, starts in it.
    fn offset_in(&self, text: &[u8]) -> usize {
        (text.as_ptr() as usize).saturating_sub(self.input.as_ptr() as usize)
    }

    /// NDJSON: every non-blank line is a record, good or bad on its own.
    fn lines(&mut self, input: &'a [u8]) {
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', input).chain(std::iter::once(input.len()));
        for end in ends {
            let line = input.get(start..end).unwrap_or_default();
            let offset = start;
            start = end + 1;
            let Some(first) = line.iter().position(|b| !b.is_ascii_whitespace()) else {
                continue;
            };
            match serde_json::from_slice::<&RawValue>(line) {
                Ok(raw) => self.push(raw),
                Err(error) => {
                    let message = if error.is_eof() {
                        format!("truncated JSON: {error}")
                    } else {
                        format!("invalid JSON: {error}")
                    };
                    self.push_error(offset + first, FieldError::at("", message));
                }
            }
        }
    }

    /// Records one after another, spanning lines. A syntax error ends the
    /// sequence: what came before is kept.
    fn sequence(&mut self, input: &'a [u8]) {
        let mut values = serde_json::Deserializer::from_slice(input).into_iter::<&RawValue>();
        loop {
            let before = values.byte_offset();
            match values.next() {
                None => break,
                Some(Ok(raw)) => self.push(raw),
                Some(Err(error)) => {
                    let skipped = input
                        .get(before..)
                        .and_then(|rest| rest.iter().position(|b| !b.is_ascii_whitespace()))
                        .unwrap_or(0);
                    let message =
                        format!("invalid JSON, no record after this one can be read: {error}");
                    self.push_error(before + skipped, FieldError::at("", message));
                    break;
                }
            }
        }
    }
}

/// Reads a JSON array's elements into `Records`, one by one, so those before
/// a syntax error are kept.
struct ElementsVisitor<'r, 'a>(&'r mut Records<'a>);

impl<'de> Visitor<'de> for ElementsVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            self.0.push(raw);
        }
        Ok(())
    }
}

/// What an object held under the wrapper key.
enum Found {
    /// No wrapper key: the object is a record.
    None,
    /// An array, whose elements were read as records.
    Records,
    /// Something else.
    NotAnArray,
}

/// Reads an object's top-level keys, the elements of the wrapper key's
/// array into `records` as it goes, and skips the rest unparsed.
struct WrapperVisitor<'k, 'r, 'a> {
    key: Option<&'k str>,
    records: &'r mut Records<'a>,
}

impl<'de> Visitor<'de> for WrapperVisitor<'_, '_, 'de> {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = Found::None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if Some(key.as_ref()) == self.key && matches!(found, Found::None) {
                found = map.next_value_seed(ElementsSeed(self.records))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The wrapper key's value: an array read element by element, or anything
/// else skipped.
struct ElementsSeed<'r, 'a>(&'r mut Records<'a>);

impl<'de> DeserializeSeed<'de> for ElementsSeed<'_, 'de> {
    type Value = Found;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Found, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElementsSeed<'_, 'de> {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Found, A::Error> {
        ElementsVisitor(self.0)
            .visit_seq(seq)
            .map(|()| Found::Records)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Found::NotAnArray)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Found, E> {
        Ok(Found::NotAnArray)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Found, E> {
        Ok(Found::NotAnArray)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Found, E> {
        Ok(Found::NotAnArray)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Found, E> {
        Ok(Found::NotAnArray)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Found, E> {
        Ok(Found::NotAnArray)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::NotAnArray)
    }
}

/// Whether the second non-blank line of `text` is a JSON value on its own.
fn second_line_is_a_value(text: &[u8]) -> bool {
    text.split(|b| *b == b'\n')
        .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
        .nth(1)
        .is_some_and(|line| serde_json::from_slice::<&RawValue>(line).is_ok())
}

/// Turns increasing byte offsets into line numbers from 1, counting each
/// newline once.
#[derive(Debug)]
pub struct LineCounter<'a> {
    text: &'a [u8],
    offset: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    /// A counter over `text`, at its start.
    pub fn new(text: &'a [u8]) -> Self {
        LineCounter {
            text,
            offset: 0,
            line: 1,
        }
    }

    /// The line of the byte at `offset`; offsets are asked in increasing
    /// order (an earlier one answers the last line reached).
    pub fn line_at(&mut self, offset: usize) -> usize {
        if offset > self.offset {
            let skipped = self.text.get(self.offset..offset).unwrap_or_default();
            self.line += memchr::memchr_iter(b'\n', skipped).count();
            self.offset = offset;
        }
        self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `input` and describes each record as `index@line text` or
    /// `index@line error path: message`.
    fn check(input: &str, expected: &[&str]) {
        let got: Vec<String> = split(input.as_bytes(), Some("Records"))
            .into_iter()
            .map(|(position, record)| {
                let at = format!("{}@{}", position.index, position.line);
                match record {
                    Ok(raw) => format!("{at} {}", raw.get()),
                    Err(error) => format!("{at} error {error}"),
                }
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn every_shape_splits_into_numbered_records() {
        check(r#"{"a":1}"#, &[r#"0@1 {"a":1}"#]);
        check(
            "{\"Records\": [\n{\"a\":1},\n {\"b\":2}]}",
            &[r#"0@2 {"a":1}"#, r#"1@3 {"b":2}"#],
        );
        check(
            "\n [{\"a\":1}, {\"b\":2}]",
            &[r#"0@2 {"a":1}"#, r#"1@2 {"b":2}"#],
        );
        check(
            "{\"a\":1}\n\n{\"b\":2}\n",
            &[r#"0@1 {"a":1}"#, r#"1@3 {"b":2}"#],
        );
        check(
            "{\n \"a\": 1\n}\n{\n \"b\": 2\n}",
            &["0@1 {\n \"a\": 1\n}", "1@4 {\n \"b\": 2\n}"],
        );
        check("  \n", &[]);
        check(r#"{"Records": []}"#, &[]);
    }

    #[test]
    fn a_broken_line_costs_only_itself() {
        check(
            "{\"a\":1}\n{\"b\":\n{\"c\":3}\n",
            &[
                r#"0@1 {"a":1}"#,
                "1@2 error record: truncated JSON: EOF while parsing a value at line 1 column 5",
                r#"2@3 {"c":3}"#,
            ],
        );
        check(
            "{\"b\":\n{\"c\":3}",
            &[
                "0@1 error record: truncated JSON: EOF while parsing a value at line 1 column 5",
                r#"1@2 {"c":3}"#,
            ],
        );
    }

    #[test]
    fn a_syntax_error_in_an_array_keeps_what_came_before() {
        check(
            "[{\"a\":1},\n{\"b\":}]",
            &[
                r#"0@1 {"a":1}"#,
                "1@2 error record: invalid JSON, no record after this one can be read: \
                 expected value at line 2 column 6",
            ],
        );
        check(
            "{\"Records\":[{\"a\":1},",
            &[
                r#"0@1 {"a":1}"#,
                "1@1 error record: truncated JSON, no record after this one can be read: \
                 EOF while parsing a value at line 1 column 20",
            ],
        );
        check(
            r#"{"Records": {"a": 1}}"#,
            &["0@1 error Records: `Records` holds the records: an array"],
        );
        check(
            "nope",
            &["0@1 error record: expected JSON records: an array, an object or NDJSON"],
        );
    }
}
