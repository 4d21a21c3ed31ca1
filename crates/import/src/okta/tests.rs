//! One test per mapping rule, on small `LogEvent`s shaped like Okta's
//! examples.

use custody_event::{CredentialKind, EventKind, NewEvent, OutcomeStatus, PrincipalKind};
use serde_json::{Value, json};

use super::Okta;
use crate::testing::{event_of, with};

fn event(record: Value) -> NewEvent {
    event_of(&Okta, &record)
}

/// An event of type `event_type` by a user, with `extra` fields.
fn record(event_type: &str, extra: Value) -> Value {
    with(
        json!({
            "uuid": format!("uuid-{event_type}"),
            "published": "2026-11-25T10:00:00.000Z",
            "eventType": event_type,
            "actor": {"id": "00u1", "type": "User", "alternateId": "alice@example.com",
                      "displayName": "Alice Chen"},
            "outcome": {"result": "SUCCESS"},
        }),
        extra,
    )
}

#[test]
fn kinds_follow_the_rule_table() {
    use EventKind::*;
    for (event_type, expected) in [
        ("user.session.start", Authentication),
        ("user.session.end", Authentication),
        ("user.authentication.sso", Authentication),
        ("user.authentication.auth_via_mfa", Authentication),
        ("policy.evaluate_sign_on", Authentication),
        ("app.oauth2.as.token.grant.access_token", CredentialUse),
        ("app.oauth2.token.revoke", CredentialUse),
        ("system.api_token.create", CredentialUse),
        ("system.api_token.revoke", CredentialUse),
        ("user.account.privilege.grant", PrivilegeChange),
        ("user.session.impersonation.grant", PrivilegeChange),
        ("group.user_membership.add", PrivilegeChange),
        ("application.user_membership.add", PrivilegeChange),
        ("policy.lifecycle.update", PrivilegeChange),
        ("policy.rule.deactivate", PrivilegeChange),
        ("system.mfa.factor.deactivate", PrivilegeChange),
        ("user.account.reset_password", PrivilegeChange),
        ("app.oauth2.as.authorize", Other),
        ("system.org.rate_limit.warning", Other),
        ("user.lifecycle.create", Other),
    ] {
        assert_eq!(
            event(record(event_type, json!({}))).kind,
            expected,
            "{event_type}"
        );
    }
}

#[test]
fn actors_follow_their_type() {
    let check = |actor: Value, kind: PrincipalKind, id: &str| {
        let event = event(record("user.session.start", json!({"actor": actor})));
        assert_eq!(
            (event.actor.current.kind, event.actor.current.id.as_str()),
            (kind, id)
        );
    };
    check(
        json!({"id": "00u1", "type": "User", "alternateId": "alice@example.com"}),
        PrincipalKind::Human,
        "alice@example.com",
    );
    check(
        json!({"id": "0oa1", "type": "PublicClientApp", "alternateId": "unknown"}),
        PrincipalKind::Service,
        "0oa1",
    );
    check(
        json!({"id": "0oa2", "type": "SystemPrincipal", "alternateId": "system@okta.com"}),
        PrincipalKind::Service,
        "0oa2",
    );
    check(
        json!({"id": "203.0.113.1", "type": "IP address"}),
        PrincipalKind::Unknown,
        "203.0.113.1",
    );
    check(json!({}), PrincipalKind::Unknown, "okta:unknown");
}

#[test]
fn the_credential_is_the_token_else_the_session() {
    let session = event(record(
        "user.session.start",
        json!({"authenticationContext": {"externalSessionId": "102abc"}}),
    ));
    let credential = session.actor.credential.unwrap();
    assert_eq!(
        (credential.kind, credential.id.as_str()),
        (CredentialKind::OktaSession, "102abc")
    );
    assert_eq!(session.context.session_id.as_deref(), Some("102abc"));
    let token = event(record(
        "app.oauth2.token.revoke",
        json!({"client": {"id": "0oaclient"},
               "authenticationContext": {"externalSessionId": "102abc"},
               "debugContext": {"debugData": {"tokenId": "AT.1", "requestId": "R1"}}}),
    ));
    let credential = token.actor.credential.as_ref().unwrap();
    assert_eq!(
        (
            credential.kind,
            credential.id.as_str(),
            credential.issuer.as_deref()
        ),
        (CredentialKind::OauthToken, "AT.1", Some("okta"))
    );
    assert_eq!(token.attributes["oauth.client_id"], "0oaclient");
    assert_eq!(token.attributes["oauth.token_id"], "AT.1");
    assert_eq!(token.context.request_id.as_deref(), Some("R1"));
    let by_data = event(record(
        "app.oauth2.as.token.grant",
        json!({"debugContext": {"debugData": {"clientId": "0oadebug"}}}),
    ));
    assert_eq!(by_data.attributes["oauth.client_id"], "0oadebug");
}

#[test]
fn targets_are_the_first_entry_and_the_first_user() {
    let event = event(record(
        "group.user_membership.add",
        json!({"target": [
            {"id": "00g1", "type": "UserGroup", "displayName": "Admins"},
            {"id": "00u2", "type": "User", "alternateId": "carol@example.com", "displayName": "Carol"}],
            "debugContext": {"debugData": {"url": "https://acme.okta.com/api/v1/groups/00g1/users/00u2?"}}}),
    ));
    assert_eq!(event.target.resource.as_deref(), Some("00g1"));
    assert_eq!(event.target.resource_type.as_deref(), Some("user_group"));
    let user = event.target.principal.unwrap();
    assert_eq!(
        (user.kind, user.id.as_str(), user.name.as_deref()),
        (PrincipalKind::Human, "carol@example.com", Some("Carol"))
    );
    assert_eq!(event.target.system.as_deref(), Some("okta:acme.okta.com"));
}

#[test]
fn outcomes_follow_the_result() {
    for (result, status) in [
        ("SUCCESS", OutcomeStatus::Success),
        ("ALLOW", OutcomeStatus::Success),
        ("DENY", OutcomeStatus::Denied),
        ("FAILURE", OutcomeStatus::Failure),
        ("CHALLENGE", OutcomeStatus::Unknown),
    ] {
        let event = event(record(
            "user.session.start",
            json!({"outcome": {"result": result, "reason": "why"}}),
        ));
        assert_eq!(event.outcome.status, status, "{result}");
        assert_eq!(event.outcome.reason.as_deref(), Some("why"));
    }
}

#[test]
fn a_record_without_an_event_type_or_time_is_kept_and_says_so() {
    let event = event(json!({"uuid": "u1", "actorId": "x"}));
    assert_eq!(event.action, "unknown");
    assert_eq!(event.kind, EventKind::Other);
    assert_eq!(event.attributes[crate::ATTR_TIME_MISSING], json!(true));
    assert_eq!(event.target.system.as_deref(), Some("okta"));
}

#[test]
fn lower_case_keys_and_pipeline_times_are_read() {
    let event = event(json!({"eventtype": "user.session.start", "uuid": "u2",
                             "published": "2022-03-22 14:21:53.225",
                             "actor": {"type": "User", "alternateId": "homer@example.com"}}));
    assert_eq!(event.action, "user.session.start");
    assert_eq!(
        event.observed_at.to_rfc3339(),
        "2022-03-22T14:21:53.225+00:00"
    );
}
