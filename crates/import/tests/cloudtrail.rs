//! The CloudTrail source against its fixtures (`tests/fixtures/cloudtrail/`,
//! records written after AWS's documented examples) and, when they are
//! present, the real samples in `../shared/datasets/cloudtrail/`.

mod common;

use std::path::PathBuf;

use common::{check_every_fixture, datasets, events, fixture, import_all, labelled};
use custody_event::EventKind;
use custody_import::CloudTrail;

fn snapshot(name: &str) -> String {
    common::snapshot(&CloudTrail, "cloudtrail", name)
}

#[test]
fn every_fixture_keeps_the_contract() {
    assert!(check_every_fixture(&CloudTrail, "cloudtrail") >= 7);
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
    let events = events(&CloudTrail, &fixture("cloudtrail", "records.json"));
    insta::assert_snapshot!(common::summary(&events), @r"
    authentication signin:ConsoleLogin arn:aws:iam::111122223333:root failure aws:111122223333
    data_access secretsmanager:GetSecretValue arn:aws:sts::111122223333:assumed-role/deployer/deploy-run-0.d success aws:111122223333
    credential_use sts:AssumeRole ec2.amazonaws.com success aws:111122223333
    ");
}

#[test]
fn a_console_login_and_an_access_denied() {
    let login = &events(&CloudTrail, &fixture("cloudtrail", "console-login.json"))[0];
    assert_eq!(login.kind, EventKind::Authentication);
    assert_eq!(
        login.actor.credential, None,
        "a password sign-in uses no key"
    );
    let denied = &events(&CloudTrail, &fixture("cloudtrail", "access-denied.json"))[0];
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
    let described = common::lines(&CloudTrail, &fixture("cloudtrail", "broken-line.ndjson"));
    assert_eq!(
        described,
        [
            "line 1: iam:CreateRole",
            "line 2: error record: truncated JSON: EOF while parsing an object at line 1 column 91",
            "line 3: lambda:Invoke",
        ]
    );
}

#[test]
fn every_real_sample_imports() {
    let Some(dir) = datasets("cloudtrail") else {
        return;
    };
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
    inputs.extend(labelled(&dir.join("panther-test-events.ndjson")));
    let kinds = import_all(&CloudTrail, &inputs);
    let total: usize = kinds.values().sum();
    assert_eq!(total, 461 + 310 + 461, "{kinds:?}");
}
