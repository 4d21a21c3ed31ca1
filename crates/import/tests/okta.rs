//! The Okta System Log source against its fixtures (`tests/fixtures/okta/`,
//! `LogEvent`s written after Okta's documented examples) and, when they are
//! present, the real samples in `../shared/datasets/okta/`.

mod common;

use common::{check_every_fixture, events, fixture, import_all, real_samples};
use custody_event::{CredentialKind, EventKind, OutcomeStatus};
use custody_import::Okta;

fn snapshot(name: &str) -> String {
    common::snapshot(&Okta, "okta", name)
}

#[test]
fn every_fixture_keeps_the_contract() {
    assert!(check_every_fixture(&Okta, "okta") >= 5);
}

#[test]
fn a_page_of_sign_ins() {
    insta::assert_snapshot!(snapshot("session-start.json"));
}

#[test]
fn an_oauth_token_grant_to_a_client_app() {
    insta::assert_snapshot!(snapshot("oauth-token-grant.json"));
}

#[test]
fn a_privilege_grant() {
    insta::assert_snapshot!(snapshot("privilege-grant.json"));
}

#[test]
fn an_ndjson_export() {
    let events = events(&Okta, &fixture("okta", "group-membership.ndjson"));
    insta::assert_snapshot!(common::summary(&events), @r"
    privilege_change group.user_membership.add alice@example.com success okta
    credential_use system.api_token.create bob@example.com success okta
    other app.generic.unauth_app_access_attempt bob@example.com denied okta
    ");
    let membership = &events[0];
    assert_eq!(
        membership.target.principal.as_ref().map(|p| p.id.as_str()),
        Some("carol@example.com")
    );
    assert_eq!(
        membership.actor.credential.as_ref().map(|c| c.kind),
        Some(CredentialKind::OktaSession)
    );
    assert_eq!(
        events[2].outcome.reason.as_deref(),
        Some("User is not assigned to this application")
    );
    assert_eq!(
        events[2].target.resource_type.as_deref(),
        Some("app_instance")
    );
}

#[test]
fn a_failed_sign_in_has_no_session() {
    let events = events(&Okta, &fixture("okta", "session-start.json"));
    let failed = &events[1];
    assert_eq!(failed.kind, EventKind::Authentication);
    assert_eq!(failed.outcome.status, OutcomeStatus::Failure);
    assert_eq!(
        failed.outcome.reason.as_deref(),
        Some("INVALID_CREDENTIALS")
    );
    assert_eq!(failed.context.session_id, None, "Okta says `unknown`");
    assert_eq!(failed.actor.credential, None);
}

#[test]
fn a_broken_ndjson_line_is_reported_and_the_rest_kept() {
    assert_eq!(
        common::lines(&Okta, &fixture("okta", "broken-line.ndjson")),
        [
            "line 1: user.session.start",
            "line 2: error record: truncated JSON: EOF while parsing a string at line 1 column 101",
            "line 3: user.session.end",
        ]
    );
}

#[test]
fn every_real_sample_imports() {
    let Some(inputs) = real_samples("okta") else {
        return;
    };
    let kinds = import_all(&Okta, &inputs);
    let total: usize = kinds.values().sum();
    assert_eq!(total, 100 + 100, "{kinds:?}");
}
