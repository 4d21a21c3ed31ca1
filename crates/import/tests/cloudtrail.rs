//! The CloudTrail source against its fixtures (`tests/fixtures/cloudtrail/`,
//! records written after AWS's documented examples) and, when they are
//! present, the real samples in `../shared/datasets/cloudtrail/`.

use std::path::{Path, PathBuf};

use custody_event::{EventKind, NewEvent};
use custody_import::{CloudTrail, Imported, contract};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cloudtrail")
            .join(name),
    )
    .unwrap()
}

/// Imports `input`, checking the contract, and returns its events, failing
/// on any record refused.
fn events(input: &[u8]) -> Vec<NewEvent> {
    contract::check(&CloudTrail, input)
        .unwrap_or_else(|broken| panic!("the contract is broken:\n{broken}"))
        .into_iter()
        .map(|item| item.map(|(_, event)| event))
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn every_fixture_keeps_the_contract() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cloudtrail");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let imported = contract::check(&CloudTrail, &input)
            .unwrap_or_else(|broken| panic!("{}:\n{broken}", path.display()));
        assert!(!imported.is_empty(), "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 7);
}

/// The events of a fixture, as JSON, for a snapshot.
fn snapshot(name: &str) -> String {
    serde_json::to_string_pretty(&events(&fixture(name))).unwrap()
}

#[test]
fn assume_role_with_a_source_identity() {
    insta::assert_snapshot!(snapshot("assume-role-source-identity.json"));
}

#[test]
fn s3_get_object_by_an_assumed_role() {
    insta::assert_snapshot!(snapshot("s3-get-object-assumed-role.json"));
}

#[test]
fn create_access_key_by_an_iam_user() {
    insta::assert_snapshot!(snapshot("create-access-key.json"));
}

#[test]
fn a_delivered_records_file() {
    let events = events(&fixture("records.json"));
    let summary: Vec<String> = events
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
        .collect();
    insta::assert_snapshot!(summary.join("\n"), @r"
    authentication signin:ConsoleLogin arn:aws:iam::111122223333:root failure aws:111122223333
    data_access secretsmanager:GetSecretValue arn:aws:sts::111122223333:assumed-role/deployer/deploy-run-0.d success aws:111122223333
    credential_use sts:AssumeRole ec2.amazonaws.com success aws:111122223333
    ");
}

#[test]
fn a_console_login_and_an_access_denied() {
    let login = &events(&fixture("console-login.json"))[0];
    assert_eq!(login.kind, EventKind::Authentication);
    assert_eq!(
        login.actor.credential, None,
        "a password sign-in uses no key"
    );
    let denied = &events(&fixture("access-denied.json"))[0];
    assert_eq!(denied.kind, EventKind::PrivilegeChange);
    assert_eq!(denied.outcome.status.as_str(), "denied");
    assert!(
        denied
            .outcome
            .reason
            .as_deref()
            .unwrap()
            .starts_with("AccessDenied: User: arn:aws:sts")
    );
}

#[test]
fn a_broken_ndjson_line_is_reported_and_the_rest_kept() {
    let imported = contract::check(&CloudTrail, &fixture("broken-line.ndjson")).unwrap();
    let described: Vec<String> = imported
        .iter()
        .map(|item| match item {
            Ok((at, event)) => format!("line {}: {}", at.line, event.action),
            Err(error) => format!("line {}: error {}", error.position.line, error.error),
        })
        .collect();
    assert_eq!(
        described,
        [
            "line 1: iam:CreateRole",
            "line 2: error record: truncated JSON: EOF while parsing an object at line 1 column 91",
            "line 3: lambda:Invoke",
        ]
    );
}

/// `../shared/datasets/cloudtrail/` from the repository's root, if present.
fn datasets() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/cloudtrail");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} is absent (the real CloudTrail samples are not part of the repository)",
            dir.display()
        );
        None
    }
}

#[test]
fn every_real_sample_imports() {
    let Some(dir) = datasets() else { return };
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    inputs.push((
        "events.ndjson".into(),
        std::fs::read(dir.join("events.ndjson")).unwrap(),
    ));
    let mut stratus: Vec<PathBuf> = std::fs::read_dir(dir.join("stratus-red-team"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    stratus.sort();
    for path in stratus {
        inputs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    // The labelled file wraps each raw record in `event`.
    let labelled = std::fs::read_to_string(dir.join("panther-test-events.ndjson")).unwrap();
    for (n, line) in labelled.lines().enumerate() {
        let test: serde_json::Value = serde_json::from_str(line).unwrap();
        let raw = serde_json::to_vec(&test["event"]).unwrap();
        inputs.push((format!("panther-test-events.ndjson:{}", n + 1), raw));
    }
    let mut total = 0;
    let mut kinds = std::collections::BTreeMap::<EventKind, usize>::new();
    for (name, input) in &inputs {
        let imported: Vec<Imported> = contract::check(&CloudTrail, input)
            .unwrap_or_else(|broken| panic!("{name}:\n{broken}"));
        for item in imported {
            let (_, event) = item.unwrap_or_else(|error| panic!("{name}: {error}"));
            assert!(!event.action.is_empty(), "{name}");
            assert!(event.target.system.is_some(), "{name}");
            assert!(!event.actor.current.id.is_empty(), "{name}");
            *kinds.entry(event.kind).or_default() += 1;
            total += 1;
        }
    }
    assert_eq!(total, 461 + 310 + 461, "{kinds:?}");
}
