//! The GitHub audit log source against its fixtures
//! (`tests/fixtures/github/`, entries written after GitHub's documented
//! examples) and, when they are present, the real samples in
//! `../shared/datasets/github/`.

mod common;

use common::{check_every_fixture, events, fixture, import_all, real_samples};
use custody_event::{CredentialKind, EventKind, OutcomeStatus, PrincipalKind};
use custody_import::GitHub;

fn snapshot(name: &str) -> String {
    common::snapshot(&GitHub, "github", name)
}

#[test]
fn every_fixture_keeps_the_contract() {
    assert!(check_every_fixture(&GitHub, "github") >= 3);
}

#[test]
fn a_page_of_the_audit_log() {
    insta::assert_snapshot!(snapshot("audit-page.json"));
}

#[test]
fn a_stream_of_token_and_bot_entries() {
    let events = events(&GitHub, &fixture("github", "token-and-bot.ndjson"));
    insta::assert_snapshot!(common::summary(&events), @r"
    credential_use personal_access_token.request_created bob-marsh success github.com/example-org
    data_access git.push release-bot[bot] success github.com/example-org
    privilege_change protected_branch.policy_override carol-diaz success github.com/example-org
    authentication user.failed_login dave-ng failure github.com
    ");
    let push = &events[1];
    assert_eq!(push.actor.current.kind, PrincipalKind::Service);
    let credential = push.actor.credential.as_ref().unwrap();
    assert_eq!(
        (credential.kind, credential.id.as_str()),
        (
            CredentialKind::GithubToken,
            "Qm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWo="
        )
    );
    assert_eq!(push.attributes["oauth.client_id"], "845120");
    assert_eq!(
        push.attributes["github.programmatic_access_type"],
        "GitHub App server-to-server token"
    );
    assert_eq!(events[0].attributes["oauth.token_id"], "20419001");
    assert_eq!(events[3].outcome.status, OutcomeStatus::Failure);
}

#[test]
fn a_broken_ndjson_line_is_reported_and_the_rest_kept() {
    assert_eq!(
        common::lines(&GitHub, &fixture("github", "broken-line.ndjson")),
        [
            "line 1: repo.create",
            "line 2: error record: truncated JSON: EOF while parsing a string at line 1 column 93",
            "line 3: git.clone",
        ]
    );
}

#[test]
fn every_real_sample_imports() {
    let Some(inputs) = real_samples("github") else {
        return;
    };
    let kinds = import_all(&GitHub, &inputs);
    let total: usize = kinds.values().sum();
    assert_eq!(total, 177 + 177, "{kinds:?}");
    assert!(kinds[&EventKind::PrivilegeChange] > 0, "{kinds:?}");
}
