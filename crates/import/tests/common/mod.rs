//! What every source's tests share: reading fixtures and the real samples,
//! importing under the contract, describing what was imported.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use custody_event::{EventKind, NewEvent};
use custody_import::{Imported, Source, contract};

/// The fixture `name` of the source `source` (`tests/fixtures/{source}/`).
pub fn fixture(source: &str, name: &str) -> Vec<u8> {
    std::fs::read(fixtures(source).join(name)).unwrap()
}

fn fixtures(source: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(source)
}

/// Imports `input`, checking the contract, and returns its events, failing
/// on any record refused.
pub fn events<S: Source>(source: &S, input: &[u8]) -> Vec<NewEvent> {
    contract::check(source, input)
        .unwrap_or_else(|broken| panic!("the contract is broken:\n{broken}"))
        .into_iter()
        .map(|item| item.map(|(_, event)| event))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Checks the contract over every fixture of `name`, returning how many.
pub fn check_every_fixture<S: Source>(source: &S, name: &str) -> usize {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures(name)).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let imported = contract::check(source, &input)
            .unwrap_or_else(|broken| panic!("{}:\n{broken}", path.display()));
        assert!(!imported.is_empty(), "{}", path.display());
        checked += 1;
    }
    checked
}

/// The events of a fixture, as JSON, for a snapshot.
pub fn snapshot<S: Source>(source: &S, dir: &str, name: &str) -> String {
    serde_json::to_string_pretty(&events(source, &fixture(dir, name))).unwrap()
}

/// One line an event, `kind action actor outcome system`, for a snapshot.
pub fn summary(events: &[NewEvent]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {} {}",
                e.kind,
                e.action,
                e.actor.current.id,
                e.outcome.status.as_str(),
                e.target.system.as_deref().unwrap_or("-")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each record of `input` as `line N: action` or `line N: error ...`.
pub fn lines<S: Source>(source: &S, input: &[u8]) -> Vec<String> {
    contract::check(source, input)
        .unwrap()
        .iter()
        .map(|item| match item {
            Ok((at, event)) => format!("line {}: {}", at.line, event.action),
            Err(error) => format!("line {}: error {}", error.position.line, error.error),
        })
        .collect()
}

/// `../shared/datasets/{name}/` from the repository's root, if present.
pub fn datasets(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/datasets")
        .join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} is absent (the real samples are not part of the repository)",
            dir.display()
        );
        None
    }
}

/// The raw records of a labelled file, which wraps each in `event`, one
/// input each.
pub fn labelled(path: &Path) -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let test: serde_json::Value = serde_json::from_str(line).unwrap();
            let raw = serde_json::to_vec(&test["event"]).unwrap();
            (format!("{}:{}", path.display(), n + 1), raw)
        })
        .collect()
}

/// The real samples of `name` (`events.ndjson`, raw, and the records of
/// `panther-test-events.ndjson`), if `../shared/datasets` is present.
pub fn real_samples(name: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let dir = datasets(name)?;
    let mut inputs = vec![(
        format!("{name}/events.ndjson"),
        std::fs::read(dir.join("events.ndjson")).unwrap(),
    )];
    inputs.extend(labelled(&dir.join("panther-test-events.ndjson")));
    Some(inputs)
}

/// Imports every input, failing on any broken rule or refused record, and
/// counts the events of each kind.
pub fn import_all<S: Source>(
    source: &S,
    inputs: &[(String, Vec<u8>)],
) -> BTreeMap<EventKind, usize> {
    let mut kinds = BTreeMap::<EventKind, usize>::new();
    for (name, input) in inputs {
        let imported: Vec<Imported> =
            contract::check(source, input).unwrap_or_else(|broken| panic!("{name}:\n{broken}"));
        for item in imported {
            let (_, event) = item.unwrap_or_else(|error| panic!("{name}: {error}"));
            *kinds.entry(event.kind).or_default() += 1;
        }
    }
    eprintln!("events by kind: {kinds:?}");
    kinds
}
