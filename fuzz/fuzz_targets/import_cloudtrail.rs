//! Feeds arbitrary bytes to the CloudTrail importer: it must never panic,
//! every input must keep the source contract (`crates/import/SPEC.md`, as
//! `contract::check` tests it), and every event it makes must decode to
//! itself from its own JSON, as the collector will decode it.

#![no_main]

use custody_import::{CloudTrail, contract};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let imported = contract::check(&CloudTrail, bytes)
        .unwrap_or_else(|broken| panic!("the source contract is broken:\n{broken}"));
    for (_, event) in imported.into_iter().flatten() {
        let json = serde_json::to_vec(&event).expect("an imported event serializes");
        let again = custody_event::decode(&json)
            .unwrap_or_else(|error| panic!("an imported event is refused by the collector: {error}"));
        assert_eq!(again, event, "an imported event changed through its own JSON");
    }
});
