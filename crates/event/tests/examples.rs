//! The example events under `examples/events/` are valid, complete, cover
//! every kind, and survive decoding, serializing and the OCSF export.

mod common;

use std::collections::BTreeSet;

use custody_event::{AttributionMethod, EventKind, NewEvent, RuntimeEvent, decode, ocsf, schema};

/// Each example parsed as the stored event it is.
fn events() -> Vec<(String, Vec<u8>, RuntimeEvent)> {
    common::examples()
        .into_iter()
        .map(|(name, bytes)| {
            let event = serde_json::from_slice(&bytes)
                .unwrap_or_else(|error| panic!("{name} is not a RuntimeEvent: {error}"));
            (name, bytes, event)
        })
        .collect()
}

#[test]
fn examples_decode_round_trip_and_validate() {
    let validator = common::committed_validator(schema::RUNTIME_EVENT_FILE);
    for (name, bytes, event) in events() {
        let decoded = decode(&bytes).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(decoded, NewEvent::from(event.clone()), "{name}");
        assert_eq!(
            decoded.into_event(event.received_at, || unreachable!("{name} has an id")),
            event,
            "{name}"
        );

        let json = serde_json::to_value(&event).unwrap();
        let back: RuntimeEvent = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, event, "{name} does not round-trip");
        let text = serde_json::to_string_pretty(&event).unwrap();
        assert_eq!(serde_json::from_str::<RuntimeEvent>(&text).unwrap(), event);

        let file: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(common::schema_errors(&validator, &file), "", "{name}");
        assert_eq!(json, file, "{name} has a field serialization drops");
    }
}

#[test]
fn examples_are_complete_and_realistic() {
    for (name, bytes, event) in events() {
        assert_eq!(
            name,
            format!("{}.json", event.kind),
            "one file per kind, named after it"
        );
        assert!(
            (512..=3072).contains(&bytes.len()),
            "{name} is {} bytes, examples are 0.5 to 3 KiB",
            bytes.len()
        );
        assert!(
            std::str::from_utf8(&bytes).unwrap().contains("\n  \""),
            "{name} is not pretty-printed"
        );
        assert_eq!(event.id.0.get_version_num(), 7, "{name} id is not a UUIDv7");
        assert!(
            event.received_at >= event.observed_at,
            "{name} arrived before it happened"
        );
        assert!(event.raw.is_some(), "{name} has no raw record");
        assert_eq!(
            event.attribution.evidence.is_empty(),
            event.attribution.method == AttributionMethod::Unattributed,
            "{name}: evidence goes with every attribution but unattributed"
        );
    }
}

#[test]
fn examples_cover_every_kind() {
    let covered: BTreeSet<EventKind> = events()
        .into_iter()
        .map(|(_, _, event)| event.kind)
        .collect();
    let missing: Vec<&str> = EventKind::ALL
        .into_iter()
        .filter(|kind| !covered.contains(kind))
        .map(EventKind::as_str)
        .collect();
    assert!(missing.is_empty(), "no example for {missing:?}");
}

#[test]
fn examples_export_to_ocsf_with_every_required_field() {
    for (name, _, event) in events() {
        let exported = ocsf::to_ocsf(&event);
        let class = exported["class_uid"].as_u64().unwrap();
        assert_eq!(class, u64::from(ocsf::class_uid(event.kind)), "{name}");
        for field in ocsf::required_fields(u32::try_from(class).unwrap()) {
            assert!(
                !exported[field].is_null(),
                "{name}: no {field} in {exported:#}"
            );
        }
        let activity = exported["activity_id"].as_u64().unwrap();
        assert_eq!(
            exported["type_uid"].as_u64().unwrap(),
            class * 100 + activity,
            "{name}"
        );
    }
}

/// The fuzzer starts from the examples; a seed that drifted from them would
/// start it from an event the model no longer describes.
#[test]
fn fuzz_seeds_are_the_examples() {
    let seeds = common::json_files(&common::repo_root().join("fuzz/seeds/decode_event"));
    assert_eq!(
        seeds,
        common::examples(),
        "copy examples/events/*.json to fuzz/seeds/decode_event/"
    );
}
