//! Feeds arbitrary bytes to the OTLP span mapper (`custody_otlp::Mapper`),
//! as the receiver does: decoded as a protobuf `ExportTraceServiceRequest`,
//! or as OTLP/JSON when they start with `{`. Checks: no panic; every span is
//! one event or one error; every event is valid and decodes to itself from
//! its own JSON; a second request of the same spans, linked through the
//! mapper's memory, maps to the same ids.

#![no_main]

use chrono::{TimeZone, Utc};
use custody_otlp::Mapper;
use custody_otlp::collector::ExportTraceServiceRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|bytes: &[u8]| {
    let request = if bytes.first() == Some(&b'{') {
        match serde_json::from_slice::<ExportTraceServiceRequest>(bytes) {
            Ok(request) => request,
            Err(_) => return,
        }
    } else {
        match ExportTraceServiceRequest::decode(bytes) {
            Ok(request) => request,
            Err(_) => return,
        }
    };
    let spans: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let now = Utc.timestamp_opt(1_790_000_000, 0).unwrap();
    let mut mapper = Mapper::default();
    let first = mapper.map(&request, now);
    assert_eq!(
        first.events.len() + first.errors.len(),
        spans,
        "a span went missing"
    );
    for event in &first.events {
        custody_event::validate(event).expect("a mapped event is valid");
        let json = serde_json::to_vec(event).expect("a mapped event serializes");
        let again = custody_event::decode(&json)
            .unwrap_or_else(|error| panic!("a mapped event is refused by the collector: {error}"));
        assert_eq!(&again, event, "a mapped event changed through its own JSON");
    }
    let second = mapper.map(&request, now);
    let ids = |m: &custody_otlp::Mapped| m.events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&first),
        ids(&second),
        "the same spans mapped to other ids"
    );
});
