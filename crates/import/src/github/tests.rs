//! One test per mapping rule, on small entries shaped like GitHub's
//! examples.

use custody_event::{CredentialKind, EventKind, NewEvent, PrincipalKind};
use serde_json::{Value, json};

use super::GitHub;
use crate::testing::{event_of, with};

fn event(record: Value) -> NewEvent {
    event_of(&GitHub, &record)
}

/// An entry of `action` by a person, with `extra` fields.
fn record(action: &str, extra: Value) -> Value {
    with(
        json!({
            "@timestamp": 1764064800000_u64,
            "_document_id": format!("doc-{action}"),
            "action": action,
            "actor": "alice-chen",
            "org": "example-org",
        }),
        extra,
    )
}

#[test]
fn kinds_follow_the_rule_table() {
    use EventKind::*;
    for (action, expected) in [
        ("user.login", Authentication),
        ("user.failed_login", Authentication),
        ("org.sso_response", Authentication),
        ("personal_access_token.request_created", CredentialUse),
        ("personal_access_token.access_granted", CredentialUse),
        ("oauth_access.create", CredentialUse),
        ("oauth_authorization.create", CredentialUse),
        ("integration_installation.token_created", CredentialUse),
        ("git.clone", DataAccess),
        ("git.fetch", DataAccess),
        ("git.push", DataAccess),
        ("repo.download_zip", DataAccess),
        ("org.add_member", PrivilegeChange),
        ("team.add_member", PrivilegeChange),
        ("repo.add_member", PrivilegeChange),
        ("org.update_member", PrivilegeChange),
        ("org.invite_member", PrivilegeChange),
        ("team.add_repository", PrivilegeChange),
        ("org.update_default_repository_permission", PrivilegeChange),
        ("protected_branch.destroy", PrivilegeChange),
        ("repository_ruleset.update", PrivilegeChange),
        ("business.set_actions_retention_limit", PrivilegeChange),
        ("integration_installation.create", PrivilegeChange),
        ("org.disable_two_factor_requirement", PrivilegeChange),
        ("org.saml_disabled", PrivilegeChange),
        ("ip_allow_list.disable", PrivilegeChange),
        ("public_key.create", PrivilegeChange),
        ("repo.access", PrivilegeChange),
        ("repo.create", Other),
        ("hook.create", Other),
        ("workflows.completed_workflow_run", Other),
    ] {
        assert_eq!(event(record(action, json!({}))).kind, expected, "{action}");
    }
}

#[test]
fn bots_and_apps_are_services() {
    let kind = |extra: Value| event(record("git.clone", extra)).actor.current.kind;
    assert_eq!(kind(json!({})), PrincipalKind::Human);
    assert_eq!(
        kind(json!({"actor": "dependabot[bot]"})),
        PrincipalKind::Service
    );
    assert_eq!(kind(json!({"actor_is_bot": true})), PrincipalKind::Service);
    assert_eq!(
        kind(json!({"programmatic_access_type": "GitHub App server-to-server token"})),
        PrincipalKind::Service
    );
    assert_eq!(
        kind(json!({"programmatic_access_type": "personal_access_token"})),
        PrincipalKind::Human
    );
    let mut anonymous = record("git.clone", json!({}));
    anonymous.as_object_mut().unwrap().remove("actor");
    assert_eq!(event(anonymous).actor.current.id, "github:unknown");
}

#[test]
fn tokens_are_the_credential_and_the_binding_keys() {
    let event = event(record(
        "git.clone",
        json!({"token_id": 20411973, "hashed_token": "abc=", "oauth_application_id": 845120,
               "programmatic_access_type": "OAuth access token"}),
    ));
    let credential = event.actor.credential.as_ref().unwrap();
    assert_eq!(
        (credential.kind, credential.id.as_str()),
        (CredentialKind::GithubToken, "20411973")
    );
    assert_eq!(event.attributes["oauth.token_id"], "20411973");
    assert_eq!(event.attributes["oauth.client_id"], "845120");
    assert_eq!(event.attributes["github.hashed_token"], "abc=");
    let hashed = self::event(record("git.clone", json!({"hashed_token": "abc="})));
    assert_eq!(hashed.actor.credential.unwrap().id, "abc=");
}

#[test]
fn targets_are_the_repository_the_user_and_the_org() {
    let event = event(record(
        "repo.add_member",
        json!({"repo": "example-org/payments", "user": "bob-marsh", "business": "example-corp"}),
    ));
    assert_eq!(
        event.target.resource.as_deref(),
        Some("example-org/payments")
    );
    assert_eq!(event.target.resource_type.as_deref(), Some("repository"));
    assert_eq!(
        event.target.system.as_deref(),
        Some("github.com/example-org")
    );
    assert_eq!(event.target.principal.unwrap().id, "bob-marsh");
    let mut enterprise = record("business.add_admin", json!({"business": "example-corp"}));
    enterprise.as_object_mut().unwrap().remove("org");
    assert_eq!(
        self::event(enterprise).target.system.as_deref(),
        Some("github.com/example-corp")
    );
}

#[test]
fn times_are_milliseconds_or_text() {
    let at = |extra: Value| {
        let mut entry = record("repo.create", json!({}));
        entry.as_object_mut().unwrap().remove("@timestamp");
        entry
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        event(entry).observed_at.to_rfc3339()
    };
    assert_eq!(
        at(json!({"created_at": 1621305118553_u64})),
        "2021-05-18T02:31:58.553+00:00"
    );
    assert_eq!(
        at(json!({"created_at": "2023-01-31 18:58:27.638"})),
        "2023-01-31T18:58:27.638+00:00"
    );
    assert_eq!(
        at(json!({"at_sign_timestamp": "2023-01-31T18:58:27Z"})),
        "2023-01-31T18:58:27+00:00"
    );
}

#[test]
fn webhook_deliveries_are_named_by_what_they_carry() {
    let action = |entry: Value| event(entry).action;
    assert_eq!(
        action(json!({"action": "opened", "pull_request": {}, "repository": {"full_name": "o/r"}})),
        "pull_request.opened"
    );
    assert_eq!(
        action(json!({"action": "created", "comment": {}, "issue": {}, "repository": {}})),
        "issue_comment.created"
    );
    assert_eq!(
        action(json!({"ref": "refs/heads/main", "commits": []})),
        "push"
    );
    let push = event(json!({"ref": "refs/heads/main", "pusher": {"name": "bob"},
                            "repository": {"full_name": "o/r", "owner": {"login": "o"}}}));
    assert_eq!(push.actor.current.id, "bob");
    assert_eq!(push.target.resource.as_deref(), Some("o/r"));
    assert_eq!(push.target.system.as_deref(), Some("github.com/o"));
}

#[test]
fn an_entry_without_an_action_is_refused() {
    let imported = crate::import(&GitHub, br#"{"actor": "x"}"#, chrono::DateTime::UNIX_EPOCH);
    assert_eq!(
        imported[0].as_ref().unwrap_err().to_string(),
        "record 0 (line 1): action: a GitHub audit log entry names what was done in `action`"
    );
}
