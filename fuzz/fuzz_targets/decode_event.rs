//! Feeds arbitrary bytes to `custody_event::decode`: it must never panic, an
//! event it accepts must come back unchanged from its own JSON, its raw
//! record must be well-formed JSON on one line, and the OCSF export of an accepted
//! event must not panic either.

#![no_main]

use custody_event::{EventId, ocsf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(event) = custody_event::decode(bytes) else {
        return;
    };
    if let Some(raw) = &event.raw {
        assert!(!raw.get().contains('\n'), "a raw record spans lines");
        serde_json::from_str::<Box<serde_json::value::RawValue>>(raw.get())
            .expect("a raw record is well-formed JSON");
    }
    let json = serde_json::to_vec(&event).expect("an accepted event serializes");
    let again = custody_event::decode(&json)
        .unwrap_or_else(|error| panic!("an accepted event is refused once re-serialized: {error}"));
    assert_eq!(
        again, event,
        "an accepted event changed through its own JSON"
    );

    let received_at = event.observed_at;
    let event = event.into_event(received_at, || EventId(uuid::Uuid::nil()));
    let exported = ocsf::to_ocsf(&event);
    for field in ocsf::required_fields(ocsf::class_uid(event.kind)) {
        assert!(!exported[field].is_null(), "the OCSF export lacks {field}");
    }
});
