//! AWS CloudTrail: records of API calls in an AWS account, as CloudTrail
//! delivers them (`{"Records": [...]}` files, often `.json.gz`), as a JSON
//! array, one record, or NDJSON (as CloudTrail Lake and log pipelines export
//! them).
//!
//! One record becomes one event:
//!
//! - `action`: `{service}:{eventName}`, the service being `eventSource`
//!   without `.amazonaws.com` (`s3:GetObject`, `sts:AssumeRole`).
//! - `kind`: by the rule table in `kind.rs`.
//! - `actor`: from `userIdentity`, by the table in `identity.rs`.
//! - `target`: by the table in `target.rs`.
//! - `outcome`: `denied` when `errorCode` says access was refused
//!   (`AccessDenied`, `UnauthorizedOperation`, `*AccessDenied*`,
//!   `Unauthorized*`, also after EC2's `Client.`), `failure` for any other `errorCode` or a console
//!   sign-in whose response says `Failure`, else `success`; the reason is
//!   `errorCode: errorMessage`.
//! - `context`: `request_id` from `requestID`, `session_id` from a
//!   temporary access key.
//! - `attributes`: flat `aws.*` strings and booleans (region, source IP,
//!   user agent, read-only, category, event type, the TLS host, the
//!   identity's fields) and, for a successful `sts:AssumeRole*`, what attribution learns a
//!   binding from: the new session's name (`aws.role_session_name`), source
//!   identity (`aws.source_identity`) and end (`aws.session_expires`), and
//!   the temporary key issued (`aws.issued_access_key_id`); the caller's
//!   own session stays named by its `aws_role_session` credential; for
//!   `iam:*AccessKey`, the user whose key it is (`aws.key_user`).
//! - `observed_at`: `eventTime`, in any of the forms CloudTrail and its
//!   exporters write (`2024-07-31T13:06:24Z`, `2024-06-02 19:41:40.000000000`).
//!
//! The id is the UUIDv5 of `eventID` under [`NAMESPACE`].

mod identity;
mod kind;
mod target;

use chrono::{DateTime, Utc};
use custody_event::{
    Context, MAX_ID_LEN, MAX_LABEL_LEN, MAX_TEXT_LEN, NewEvent, Outcome, OutcomeStatus,
    Source as EventSource, SourceKind,
};
use custody_graph::{ATTR_AWS_ROLE_SESSION, ATTR_AWS_SESSION_EXPIRES, ATTR_AWS_SOURCE_IDENTITY};
use serde_json::Value;
use uuid::Uuid;

use crate::fields::{clip, parse_time};
use crate::{FieldError, Fields, Source};

/// The namespace of CloudTrail events' ids. Fixed: changing it would store
/// every re-imported record a second time.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x3c1f_0d2e_7a54_5b61_9e08_c10d_7a11_2e01);

/// Attribute of an `sts:AssumeRole*` event naming the temporary access key
/// the call issued; attribution learns it.
pub const ATTR_ISSUED_ACCESS_KEY: &str = custody_graph::ATTR_AWS_ISSUED_ACCESS_KEY;

/// The CloudTrail source. It has no settings yet: every record carries its
/// account and region.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloudTrail;

impl Source for CloudTrail {
    const KIND: SourceKind = SourceKind::Cloudtrail;
    const WRAPPER: Option<&'static str> = Some("Records");
    const NAMESPACE: Uuid = NAMESPACE;

    fn record_id<'r>(&self, record: Fields<'r>) -> Option<&'r str> {
        record.str("eventID")
    }

    fn observed_at(&self, record: Fields<'_>) -> Option<DateTime<Utc>> {
        record.str("eventTime").and_then(parse_time)
    }

    fn map(&self, record: Fields<'_>, observed_at: DateTime<Utc>) -> Result<NewEvent, FieldError> {
        map(record, observed_at)
    }
}

fn map(record: Fields<'_>, observed_at: DateTime<Utc>) -> Result<NewEvent, FieldError> {
    let name = record.str("eventName");
    let service = record
        .str("eventSource")
        .map(|source| source.strip_suffix(".amazonaws.com").unwrap_or(source));
    let action = match (service, name) {
        (Some(service), Some(name)) => format!("{service}:{name}"),
        (None, Some(name)) => name.to_owned(),
        (Some(service), None) => format!("{service}:unknown"),
        (None, None) => {
            return Err(FieldError::at(
                "eventName",
                "a CloudTrail record names its call in `eventName`",
            ));
        }
    };
    let (service, name) = (service.unwrap_or_default(), name.unwrap_or_default());
    let identity = identity::identity(record);
    let mut attributes = std::collections::BTreeMap::new();
    for (key, value) in identity.attributes {
        attributes.insert(key.to_owned(), value);
    }
    let mut text = |key: &str, path: &str| {
        if let Some(value) = record.str(path) {
            attributes.insert(key.to_owned(), Value::from(clip(value, MAX_TEXT_LEN)));
        }
    };
    text("aws.region", "awsRegion");
    text("aws.source_ip", "sourceIPAddress");
    text("aws.user_agent", "userAgent");
    text("aws.event_type", "eventType");
    text("aws.event_category", "eventCategory");
    text("aws.event_version", "eventVersion");
    text("aws.recipient_account_id", "recipientAccountId");
    text("aws.shared_event_id", "sharedEventID");
    text("aws.vpc_endpoint_id", "vpcEndpointId");
    text("aws.tls_host", "tlsDetails.clientProvidedHostHeader");
    text("aws.error_code", "errorCode");
    if service == "iam" && name.ends_with("AccessKey") {
        // The response names the user when the request left it implicit.
        text("aws.key_user", "requestParameters.userName");
        text("aws.key_user", "responseElements.accessKey.userName");
    }
    for (key, path) in [
        ("aws.read_only", "readOnly"),
        ("aws.management_event", "managementEvent"),
        ("aws.console_session", "sessionCredentialFromConsole"),
    ] {
        if let Some(flag) = record.bool(path) {
            attributes.insert(key.to_owned(), Value::Bool(flag));
        }
    }
    // A refused call opened no session: naming one would let attribution
    // bind a later session of that name to this caller.
    if service == "sts" && name.starts_with("AssumeRole") && !record.has("errorCode") {
        assumed_session(record, &mut attributes);
    }
    Ok(NewEvent {
        version: None,
        id: None,
        kind: kind::kind(service, name, record),
        action: clip(&action, MAX_LABEL_LEN),
        observed_at,
        received_at: None,
        source: EventSource {
            kind: SourceKind::Cloudtrail,
            name: None,
            record_id: None,
        },
        actor: identity.actor,
        target: target::target(service, name, record),
        outcome: outcome(record),
        attribution: None,
        context: Context {
            session_id: identity.session_id,
            request_id: record.str("requestID").map(|id| clip(id, MAX_ID_LEN)),
            ..Context::default()
        },
        attributes,
        raw: None,
    })
}

/// What an `sts:AssumeRole*` call tells of the session it opened: what
/// attribution learns a binding from when the caller is attributed.
fn assumed_session(record: Fields<'_>, attributes: &mut std::collections::BTreeMap<String, Value>) {
    let mut set = |key: &str, value: Option<&str>| {
        if let Some(value) = value {
            attributes.insert(key.to_owned(), Value::from(clip(value, MAX_TEXT_LEN)));
        }
    };
    set(
        ATTR_AWS_ROLE_SESSION,
        record.str("requestParameters.roleSessionName"),
    );
    // A source identity, once set, passes to every session a session opens.
    set(
        ATTR_AWS_SOURCE_IDENTITY,
        record
            .str("requestParameters.sourceIdentity")
            .or_else(|| record.str("responseElements.sourceIdentity"))
            .or_else(|| record.str("userIdentity.sessionContext.sourceIdentity")),
    );
    set(
        ATTR_ISSUED_ACCESS_KEY,
        record.str("responseElements.credentials.accessKeyId"),
    );
    let expires = record
        .str("responseElements.credentials.expiration")
        .and_then(parse_time)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    set(ATTR_AWS_SESSION_EXPIRES, expires.as_deref());
}

fn outcome(record: Fields<'_>) -> Outcome {
    let code = record.str("errorCode");
    let message = record.str("errorMessage");
    let login_failed = record
        .str("responseElements.ConsoleLogin")
        .is_some_and(|result| result.eq_ignore_ascii_case("Failure"));
    let status = match code {
        Some(code) if is_denial(code) => OutcomeStatus::Denied,
        Some(_) => OutcomeStatus::Failure,
        None if login_failed => OutcomeStatus::Failure,
        None => OutcomeStatus::Success,
    };
    let reason = match (code, message) {
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (code, message) => code.or(message).map(str::to_owned),
    };
    Outcome {
        status,
        reason: reason.map(|reason| clip(&reason, MAX_TEXT_LEN)),
        duration_ms: None,
    }
}

/// Whether an `errorCode` says the caller was refused rather than that the
/// call failed. EC2 prefixes its codes with who was at fault
/// (`Client.UnauthorizedOperation`).
fn is_denial(code: &str) -> bool {
    let code = code
        .strip_prefix("Client.")
        .or_else(|| code.strip_prefix("Server."))
        .unwrap_or(code);
    code.contains("AccessDenied") || code.starts_with("Unauthorized") || code == "Forbidden"
}

#[cfg(test)]
mod tests;
