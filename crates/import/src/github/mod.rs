//! GitHub audit log: entries as the audit log API returns them (a JSON
//! array a page) or as audit log streaming and exports write them (NDJSON).
//!
//! One entry becomes one event:
//!
//! - `action`: `action` (`repo.create`, `git.clone`, `org.add_member`). A
//!   webhook delivery mixed into the same stream (its bare `action`, such as
//!   `opened`, qualified by the object it carries: `pull_request.opened`;
//!   a push, which has none, `push`) is read too.
//! - `kind`: by the rule table in `kind.rs`.
//! - `actor`: `actor`, the login (a webhook's `sender.login`, `pusher.name`):
//!   `service` when it ends with `[bot]`, `actor_is_bot` says so, or
//!   `programmatic_access_type` names a GitHub App; else `human`; with no
//!   login, `unknown` (`github:unknown`).
//! - `actor.credential`: the token used (`token_id`, else `hashed_token`)
//!   as a `github_token`; it is also `oauth.token_id`, and the OAuth app
//!   (`oauth_application_id`) `oauth.client_id`, the binding keys
//!   attribution reads.
//! - `target`: `repo` (a webhook's `repository.full_name`) is the resource,
//!   `resource_type` `repository`; `user` the target principal (`human`);
//!   `system` is `github.com/{org}`, else `github.com/{business}`, else
//!   `github.com`, as in `examples/events/credential_use.json`.
//! - `outcome`: `failure` for a failed login, else `success`: the audit log
//!   records what was done.
//! - `context`: `request_id` from `request_id`.
//! - `attributes`: flat `github.*` strings and booleans (the actor's address
//!   and location, user agent, operation type, programmatic access type,
//!   token scopes, org, business, repository visibility).
//! - `observed_at`: `@timestamp`, else `created_at` (milliseconds since the
//!   epoch, or a time as text).
//!
//! The id is the UUIDv5 of `_document_id` under [`NAMESPACE`]; an entry
//! without one (webhook deliveries, some exports) takes the UUIDv5 of its
//! raw text, as `crate::import` does for any record without an id.

mod kind;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use custody_event::{
    Context, Credential, CredentialKind, MAX_ID_LEN, MAX_LABEL_LEN, MAX_TEXT_LEN, NewEvent,
    Outcome, OutcomeStatus, PrincipalKind, Source as EventSource, SourceKind, Target,
};
use custody_graph::{ATTR_OAUTH_CLIENT, ATTR_OAUTH_TOKEN};
use serde_json::Value;
use uuid::Uuid;

use crate::fields::{actor, clip, parse_time, principal, put_text};
use crate::{FieldError, Fields, Source};

/// The namespace of GitHub events' ids. Fixed: changing it would store
/// every re-imported entry a second time.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x9b4e_27c1_6d3a_5e90_b1f2_4a7d_c3e5_0d03);

/// The GitHub audit log source. It has no settings: every entry names its
/// org or enterprise.
#[derive(Debug, Clone, Copy, Default)]
pub struct GitHub;

impl Source for GitHub {
    const KIND: SourceKind = SourceKind::Github;
    const WRAPPER: Option<&'static str> = None;
    const NAMESPACE: Uuid = NAMESPACE;

    fn record_id<'r>(&self, record: Fields<'r>) -> Option<&'r str> {
        record.str("_document_id")
    }

    fn observed_at(&self, record: Fields<'_>) -> Option<DateTime<Utc>> {
        ["@timestamp", "at_sign_timestamp", "created_at"]
            .iter()
            .find_map(|key| time(record.get(key)?))
    }

    fn map(&self, record: Fields<'_>, observed_at: DateTime<Utc>) -> Result<NewEvent, FieldError> {
        map(record, observed_at)
    }
}

fn map(record: Fields<'_>, observed_at: DateTime<Utc>) -> Result<NewEvent, FieldError> {
    let action = action(record).ok_or_else(|| {
        FieldError::at(
            "action",
            "a GitHub audit log entry names what was done in `action`",
        )
    })?;
    let mut attributes = BTreeMap::new();
    let token = record
        .text("token_id")
        .or_else(|| record.text("hashed_token"));
    put_text(&mut attributes, ATTR_OAUTH_TOKEN, token.as_deref());
    put_text(
        &mut attributes,
        ATTR_OAUTH_CLIENT,
        record.text("oauth_application_id").as_deref(),
    );
    for (key, path) in [
        ("github.actor_id", "actor_id"),
        ("github.actor_ip", "actor_ip"),
        ("github.country", "actor_location.country_code"),
        ("github.user_agent", "user_agent"),
        ("github.operation_type", "operation_type"),
        (
            "github.programmatic_access_type",
            "programmatic_access_type",
        ),
        ("github.token_scopes", "token_scopes"),
        ("github.hashed_token", "hashed_token"),
        ("github.org", "org"),
        ("github.org_id", "org_id"),
        ("github.business", "business"),
        ("github.business_id", "business_id"),
        ("github.repo_id", "repo_id"),
        ("github.user", "user"),
        ("github.user_id", "user_id"),
        ("github.visibility", "visibility"),
        ("github.transport_protocol", "transport_protocol_name"),
        ("github.external_identity", "external_identity_nameid"),
        ("github.conclusion", "conclusion"),
    ] {
        put_text(&mut attributes, key, record.text(path).as_deref());
    }
    for (key, path) in [
        ("github.public_repo", "public_repo"),
        ("github.public_repo", "repository_public"),
        ("github.actor_is_bot", "actor_is_bot"),
    ] {
        if let Some(flag) = record.bool(path) {
            attributes.insert(key.to_owned(), Value::Bool(flag));
        }
    }
    let system = record
        .str("org")
        .or_else(|| record.str("business"))
        .or_else(|| record.str("repository.owner.login"))
        .map_or_else(
            || "github.com".to_owned(),
            |org| format!("github.com/{org}"),
        );
    let credential = token.map(|token| Credential {
        kind: CredentialKind::GithubToken,
        id: clip(&token, MAX_ID_LEN),
        issuer: Some("github.com".to_owned()),
    });
    let failed = action.ends_with("failed_login");
    Ok(NewEvent {
        version: None,
        id: None,
        kind: kind::kind(&action),
        action: clip(&action, MAX_LABEL_LEN),
        observed_at,
        received_at: None,
        source: EventSource {
            kind: SourceKind::Github,
            name: None,
            record_id: None,
        },
        actor: actor_of(record, credential),
        target: Target {
            resource: record
                .str("repo")
                .or_else(|| record.str("repository.full_name"))
                .map(|repo| clip(repo, MAX_TEXT_LEN)),
            resource_type: (record.has("repo") || record.has("repository.full_name"))
                .then(|| "repository".to_owned()),
            system: Some(clip(&system, MAX_ID_LEN)),
            principal: record
                .str("user")
                .map(|user| principal(PrincipalKind::Human, user, None)),
            ..Target::default()
        },
        outcome: Outcome {
            status: if failed {
                OutcomeStatus::Failure
            } else {
                OutcomeStatus::Success
            },
            reason: None,
            duration_ms: None,
        },
        attribution: None,
        context: Context {
            request_id: record.str("request_id").map(|id| clip(id, MAX_ID_LEN)),
            ..Context::default()
        },
        attributes,
        raw: None,
    })
}

/// What was done: the audit log's `action`, or a webhook delivery's.
fn action(record: Fields<'_>) -> Option<String> {
    let action = record.str("action");
    if let Some(action) = action.filter(|action| action.contains('.')) {
        return Some(action.to_owned());
    }
    // A webhook's event is named by its header, not its body: the object
    // the body carries says which it is.
    let event = [
        ("workflow_job", "workflow_job"),
        ("workflow_run", "workflow_run"),
        ("review", "pull_request_review"),
        ("pull_request", "pull_request"),
        ("issue", "issues"),
        ("pages", "gollum"),
        ("commits", "push"),
        ("ref", "push"),
    ]
    .iter()
    .find(|(key, _)| record.has(key))
    .map(|(_, event)| *event);
    let event = match event {
        Some("pull_request") | Some("issues") if record.has("comment") => {
            Some(if record.has("issue") {
                "issue_comment"
            } else {
                "pull_request_review_comment"
            })
        }
        event => event,
    };
    match (event, action) {
        (Some(event), Some(action)) => Some(format!("{event}.{action}")),
        (Some(event), None) => Some(event.to_owned()),
        (None, Some(action)) => Some(action.to_owned()),
        (None, None) => None,
    }
}

/// Who acted, with `credential`.
fn actor_of(
    record: Fields<'_>,
    credential: Option<custody_event::Credential>,
) -> custody_event::Actor {
    let login = record
        .str("actor")
        .or_else(|| record.str("sender.login"))
        .or_else(|| record.str("pusher.name"));
    let Some(login) = login else {
        return actor(
            "github:unknown".to_owned(),
            PrincipalKind::Unknown,
            None,
            credential,
        );
    };
    let app = record.str("programmatic_access_type").is_some_and(|kind| {
        let kind = kind.to_ascii_lowercase();
        kind.contains("github app") || kind.contains("github_app") || kind.contains("installation")
    });
    let kind = if login.ends_with("[bot]") || record.bool("actor_is_bot") == Some(true) || app {
        PrincipalKind::Service
    } else {
        PrincipalKind::Human
    };
    actor(login.to_owned(), kind, None, credential)
}

/// A time given as milliseconds since the epoch (the audit log API's
/// `@timestamp` and `created_at`) or as text (exports).
fn time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::Number(number) => {
            let millis = number
                .as_i64()
                .or_else(|| number.as_f64().map(|f| f as i64))?;
            DateTime::from_timestamp_millis(millis)
        }
        Value::String(text) => parse_time(text.trim()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
