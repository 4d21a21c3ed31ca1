//! What the fuzz targets share: the checks run on every importer.

use custody_import::{Source, contract};

/// Feeds `bytes` to the importer `source`: it must never panic, every input
/// must keep the source contract (`crates/import/SPEC.md`, as
/// `contract::check` tests it), and every event it makes must decode to
/// itself from its own JSON, as the collector will decode it.
pub fn check_import<S: Source>(source: &S, bytes: &[u8]) {
    let imported = contract::check(source, bytes)
        .unwrap_or_else(|broken| panic!("the source contract is broken:\n{broken}"));
    for (_, event) in imported.into_iter().flatten() {
        let json = serde_json::to_vec(&event).expect("an imported event serializes");
        let again = custody_event::decode(&json)
            .unwrap_or_else(|error| panic!("an imported event is refused by the collector: {error}"));
        assert_eq!(again, event, "an imported event changed through its own JSON");
    }
}
