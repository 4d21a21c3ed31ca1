//! Okta System Log: `LogEvent` objects, as the System Log API returns them
//! (a JSON array a page) or as log pipelines export them (NDJSON).
//!
//! One event becomes one Custody event:
//!
//! - `action`: `eventType` (`user.session.start`, `app.oauth2.as.token.grant`),
//!   else `legacyEventType`, else `unknown` (records a pipeline derived from
//!   the System Log, such as anomaly summaries, name none).
//! - `kind`: by the rule table in `kind.rs`.
//! - `actor`: from `actor`, by the table in `identity.rs`, with the OAuth
//!   token or Okta session as the credential.
//! - `target`: the first `target[]` entry is the `resource` (its `id`, else
//!   `alternateId`; `resource_type` its type in snake case, `app_instance`),
//!   the first `User` or `AppUser` entry the target `principal`; `system`
//!   is `okta:{host}` when the event gives its org's URL
//!   (`debugContext.debugData.url` or `requestUri`, when absolute), else
//!   `okta`.
//! - `outcome`: `outcome.result` `SUCCESS` or `ALLOW` -> `success`, `DENY` ->
//!   `denied`, `FAILURE` -> `failure`, anything else (`CHALLENGE`,
//!   `SKIPPED`, `UNKNOWN`, absent) -> `unknown`; the reason is
//!   `outcome.reason`.
//! - `context`: `session_id` from `authenticationContext.externalSessionId`,
//!   `request_id` from `debugContext.debugData.requestId`.
//! - `attributes`: flat `okta.*` strings and booleans: the client's address
//!   and user agent, the transaction, severity, display message, location,
//!   authentication provider, granted scopes; `oauth.client_id` and
//!   `oauth.token_id` for attribution.
//! - `observed_at`: `published`.
//!
//! The id is the UUIDv5 of `uuid` under [`NAMESPACE`].

mod identity;
mod kind;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use custody_event::{
    Context, MAX_ID_LEN, MAX_LABEL_LEN, MAX_TEXT_LEN, NewEvent, Outcome, OutcomeStatus,
    PrincipalKind, Source as EventSource, SourceKind, Target,
};
use serde_json::Value;
use uuid::Uuid;

use crate::fields::{clip, parse_time, principal, put_text};
use crate::{FieldError, Fields, Source};

/// The namespace of Okta events' ids. Fixed: changing it would store every
/// re-imported record a second time.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x5d0b_8e3a_41c7_5f02_8a6e_0c4f_7b12_0d02);

/// The Okta System Log source. It has no settings: the org is read from
/// each event when it says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Okta;

impl Source for Okta {
    const KIND: SourceKind = SourceKind::Okta;
    const WRAPPER: Option<&'static str> = None;
    const NAMESPACE: Uuid = NAMESPACE;

    fn record_id<'r>(&self, record: Fields<'r>) -> Option<&'r str> {
        record.str("uuid")
    }

    fn observed_at(&self, record: Fields<'_>) -> Option<DateTime<Utc>> {
        record.str("published").and_then(parse_time)
    }

    fn map(&self, record: Fields<'_>, observed_at: DateTime<Utc>) -> Result<NewEvent, FieldError> {
        Ok(map(record, observed_at))
    }
}

fn map(record: Fields<'_>, observed_at: DateTime<Utc>) -> NewEvent {
    let action = record
        .str("eventType")
        .or_else(|| record.str("legacyEventType"))
        .unwrap_or("unknown");
    let system = org_host(record).map_or_else(|| "okta".to_owned(), |host| format!("okta:{host}"));
    let system = clip(&system, MAX_ID_LEN);
    let mut attributes = BTreeMap::new();
    let actor = identity::actor_of(record, &system, &mut attributes);
    for (key, path) in [
        ("okta.client_ip", "client.ipAddress"),
        ("okta.user_agent", "client.userAgent.rawUserAgent"),
        ("okta.client_device", "client.device"),
        ("okta.client_zone", "client.zone"),
        ("okta.country", "client.geographicalContext.country"),
        ("okta.city", "client.geographicalContext.city"),
        ("okta.transaction_id", "transaction.id"),
        ("okta.transaction_type", "transaction.type"),
        ("okta.severity", "severity"),
        ("okta.display_message", "displayMessage"),
        ("okta.legacy_event_type", "legacyEventType"),
        ("okta.outcome_result", "outcome.result"),
        (
            "okta.authentication_provider",
            "authenticationContext.authenticationProvider",
        ),
        (
            "okta.credential_type",
            "authenticationContext.credentialType",
        ),
        (
            "okta.credential_provider",
            "authenticationContext.credentialProvider",
        ),
        (
            "okta.granted_scopes",
            "debugContext.debugData.grantedScopes",
        ),
        ("okta.grant_type", "debugContext.debugData.grantType"),
        ("okta.request_uri", "debugContext.debugData.requestUri"),
        (
            "okta.threat_suspected",
            "debugContext.debugData.threatSuspected",
        ),
        ("okta.behaviors", "debugContext.debugData.behaviors"),
        ("okta.risk", "debugContext.debugData.risk"),
        ("okta.as_number", "securityContext.asNumber"),
        ("okta.as_org", "securityContext.asOrg"),
        ("okta.isp", "securityContext.isp"),
    ] {
        // Okta writes an unset zone as the text `null`.
        put_text(
            &mut attributes,
            key,
            record.str(path).filter(|value| *value != "null"),
        );
    }
    if let Some(proxy) = record.bool("securityContext.isProxy") {
        attributes.insert("okta.is_proxy".to_owned(), Value::Bool(proxy));
    }
    NewEvent {
        version: None,
        id: None,
        kind: kind::kind(action),
        action: clip(action, MAX_LABEL_LEN),
        observed_at,
        received_at: None,
        source: EventSource {
            kind: SourceKind::Okta,
            name: None,
            record_id: None,
        },
        actor,
        target: target(record, system),
        outcome: outcome(record),
        attribution: None,
        context: Context {
            session_id: identity::session_id(record).map(|id| clip(id, MAX_ID_LEN)),
            request_id: record
                .str("debugContext.debugData.requestId")
                .map(|id| clip(id, MAX_ID_LEN)),
            ..Context::default()
        },
        attributes,
        raw: None,
    }
}

/// The host of the org, from a URL the event gives.
fn org_host(record: Fields<'_>) -> Option<&str> {
    [
        "debugContext.debugData.url",
        "debugContext.debugData.requestUri",
    ]
    .iter()
    .filter_map(|path| record.str(path))
    .find_map(|url| {
        let rest = url
            .strip_prefix("https://")
            .or(url.strip_prefix("http://"))?;
        let host = rest.split(['/', '?', '#']).next()?;
        (!host.is_empty()).then_some(host)
    })
}

/// The target of `record` in `system`.
fn target(record: Fields<'_>, system: String) -> Target {
    let entries: Vec<Fields<'_>> = record
        .get("target")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|entry| entry.as_object().map(Fields::new))
                .collect()
        })
        .unwrap_or_default();
    let mut target = Target {
        system: Some(system),
        ..Target::default()
    };
    if let Some((entry, id)) = entries
        .iter()
        .find_map(|entry| Some((entry, entry.str("id").or_else(|| entry.str("alternateId"))?)))
    {
        target.resource = Some(clip(id, MAX_TEXT_LEN));
        target.resource_type = Some(clip(
            &snake_case(entry.str("type").unwrap_or("okta_resource")),
            MAX_LABEL_LEN,
        ));
    }
    target.principal = entries
        .iter()
        .filter(|entry| matches!(entry.str("type"), Some("User" | "AppUser")))
        .find_map(|entry| {
            let id = entry
                .str("alternateId")
                .filter(|id| *id != "unknown")
                .or_else(|| entry.str("id"))?;
            Some(principal(
                PrincipalKind::Human,
                id,
                entry.str("displayName"),
            ))
        });
    target
}

/// `AppInstance` as `app_instance`, `URL Pattern` as `url_pattern`.
fn snake_case(kind: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in kind.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            out.push('_');
        }
        if c.is_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
    }
    out
}

fn outcome(record: Fields<'_>) -> Outcome {
    let result = record.str("outcome.result").unwrap_or_default();
    let status = if result.eq_ignore_ascii_case("SUCCESS") || result.eq_ignore_ascii_case("ALLOW") {
        OutcomeStatus::Success
    } else if result.eq_ignore_ascii_case("DENY") {
        OutcomeStatus::Denied
    } else if result.eq_ignore_ascii_case("FAILURE") {
        OutcomeStatus::Failure
    } else {
        OutcomeStatus::Unknown
    };
    Outcome {
        status,
        reason: record
            .str("outcome.reason")
            .map(|reason| clip(reason, MAX_TEXT_LEN)),
        duration_ms: None,
    }
}

#[cfg(test)]
mod tests;
