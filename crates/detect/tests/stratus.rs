//! The shipped CloudTrail rules against CloudTrail records of the Stratus
//! Red Team techniques: the repository's hand-written fixtures always, and
//! the recorded detonation logs in `../shared/datasets/` when present.
//! Records go through the CloudTrail importer, as `custody ingest` reads
//! them, then through the detect stage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::Utc;
use custody_detect::{RuleSet, Sigma, SigmaConfig, builtin};
use custody_engine::Detect;
use custody_event::EventId;
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    fires: Vec<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn aws_rules() -> RuleSet {
    let files: Vec<_> = builtin::files()
        .into_iter()
        .filter(|f| f.name.starts_with("builtin:aws/"))
        .collect();
    assert!(files.len() >= 30, "the AWS rules are built in");
    RuleSet::load(&files).unwrap_or_else(|errors| panic!("{errors:#?}"))
}

/// The ids of the rules firing on each record of a file.
fn fired(set: &RuleSet, path: &Path) -> Vec<BTreeSet<String>> {
    let sigma = Sigma::new(set, SigmaConfig::default()).unwrap();
    let bytes = std::fs::read(path).unwrap();
    custody_import::import(&custody_import::CloudTrail, &bytes, Utc::now())
        .into_iter()
        .map(|imported| {
            let (_, event) = imported
                .unwrap_or_else(|e| panic!("{}: {:?}: {}", path.display(), e.position, e.error));
            let event = event.into_event(Utc::now(), EventId::new_v7);
            sigma.detect(&event).into_iter().map(|s| s.id).collect()
        })
        .collect()
}

fn expected() -> BTreeMap<String, Expected> {
    let path = root().join("tests/fixtures/cloudtrail/stratus/expected.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn check_dir(dir: &Path) -> usize {
    let set = aws_rules();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (technique, expected) in expected() {
        let path = dir.join(format!("{technique}.json"));
        if !path.exists() {
            failures.push(format!("{technique}: no file {}", path.display()));
            continue;
        }
        let fired: BTreeSet<String> = fired(&set, &path).into_iter().flatten().collect();
        for rule in &expected.fires {
            if !fired.contains(rule) {
                failures.push(format!(
                    "{technique}: {rule} did not fire (fired: {fired:?})"
                ));
            }
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    checked
}

#[test]
fn each_technique_fixture_fires_its_rules() {
    let checked = check_dir(&root().join("tests/fixtures/cloudtrail/stratus"));
    assert!(checked >= 30, "{checked} techniques");
}

#[test]
fn benign_look_alikes_fire_nothing() {
    let path = root().join("tests/fixtures/cloudtrail/stratus/benign.json");
    let fired = fired(&aws_rules(), &path);
    assert!(fired.len() >= 30, "{} benign records", fired.len());
    for (index, rules) in fired.iter().enumerate() {
        assert!(rules.is_empty(), "benign record {index} fired {rules:?}");
    }
}

#[test]
fn the_recorded_detonations_fire_their_rules() {
    let dir = root().join("../shared/datasets/cloudtrail/stratus-red-team");
    if !dir.is_dir() {
        eprintln!(
            "skipping: {} is absent (the shared datasets are not part of the repository)",
            dir.display()
        );
        return;
    }
    let checked = check_dir(&dir);
    assert_eq!(checked, expected().len());
}
