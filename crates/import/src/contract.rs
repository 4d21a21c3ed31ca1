//! The source contract (`SPEC.md`) as a check: the one helper every source's
//! tests run over every fixture, and the fuzz target over any input.

use chrono::{DateTime, Utc};
use custody_event::{EventId, NewEvent, RawRecord};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{ATTR_TIME_MISSING, Fields, Imported, Source, import, shape};

/// Imports `input` with `source` and checks every rule of the contract,
/// returning what was imported, or every rule broken, one a line.
pub fn check<S: Source>(source: &S, input: &[u8]) -> Result<Vec<Imported>, String> {
    let imported_at = DateTime::<Utc>::UNIX_EPOCH;
    let imported = import(source, input, imported_at);
    let records = shape::split(input, S::WRAPPER);
    let mut broken = Vec::new();
    if imported.len() != records.len() {
        broken.push(format!(
            "{} records in, {} events and errors out",
            records.len(),
            imported.len()
        ));
    }
    for (n, (item, (position, raw))) in imported.iter().zip(&records).enumerate() {
        let at = match item {
            Ok((at, _)) => *at,
            Err(error) => error.position,
        };
        if at != *position || at.index != n {
            broken.push(format!(
                "record {n}: reported at {at:?}, found at {position:?}"
            ));
        }
        if let (Ok((_, event)), Ok(raw)) = (item, raw) {
            for rule in check_event(source, raw, event) {
                broken.push(format!("record {n} (line {}): {rule}", at.line));
            }
        }
    }
    if broken.is_empty() {
        Ok(imported)
    } else {
        Err(broken.join("\n"))
    }
}

/// The rules one event of `raw` breaks.
fn check_event<S: Source>(source: &S, raw: &RawValue, event: &NewEvent) -> Vec<String> {
    let mut broken = Vec::new();
    let mut rule = |ok: bool, what: &str| {
        if !ok {
            broken.push(what.to_owned());
        }
    };
    let record: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw.get()).unwrap_or_default();
    let fields = Fields::new(&record);
    let kept = serde_json::from_str::<RawRecord>(raw.get()).ok();
    rule(
        event.raw.is_some() && event.raw == kept,
        "`raw` is the record as it arrived",
    );
    rule(
        event.raw.as_ref().map(RawRecord::get) == kept.as_ref().map(RawRecord::get),
        "`raw` keeps the record's keys in order",
    );
    rule(event.source.kind == S::KIND, "`source.type` is the format");
    let record_id = source.record_id(fields);
    rule(
        event.source.record_id.as_deref() == record_id,
        "`source.record_id` is the record's own id",
    );
    let name = record_id.unwrap_or(raw.get());
    rule(
        event.id == Some(EventId(Uuid::new_v5(&S::NAMESPACE, name.as_bytes()))),
        "the id is the UUIDv5 of the record's id under the source's namespace",
    );
    let time_missing = event.attributes.get(ATTR_TIME_MISSING) == Some(&true.into());
    rule(
        match source.observed_at(fields) {
            Some(time) => event.observed_at == time && !time_missing,
            None => time_missing,
        },
        "`observed_at` is the record's time, or the import's with `import.time_missing`",
    );
    rule(
        event.attribution.is_none() && event.actor.root.is_none() && event.actor.agents.is_empty(),
        "no attribution is claimed",
    );
    rule(custody_event::validate(event).is_ok(), "the event is valid");
    rule(!event.action.is_empty(), "the event has an action");
    rule(event.target.system.is_some(), "the event has a system");
    rule(
        !event.actor.current.id.is_empty(),
        "the event has a current actor",
    );
    broken
}
