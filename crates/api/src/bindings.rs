//! `POST /v1/bindings`: declaring that a run holds a credential key, so that
//! records made with that key (CloudTrail, Okta, GitHub, OTLP) are
//! attributed to the run.
//!
//! A declaration is recorded as an event Custody vouches for
//! (`Provenance::Custody`), from which the attribute stage learns the
//! binding, now and whenever the store is replayed: the store is the
//! binding's only record, and its audit trail.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use custody_graph::{
    ATTR_BINDING_FROM, ATTR_BINDING_KEY, ATTR_BINDING_KEY_TYPE, ATTR_BINDING_UNTIL, BindingKey,
    DECLARE_BINDING,
};
use serde::Deserialize;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;

/// The body of a declaration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Declaration {
    key: Key,
    /// The chain holding the key; its current actor is the run.
    holder: custody_event::Actor,
    #[serde(default)]
    valid_from: Option<DateTime<Utc>>,
    #[serde(default)]
    valid_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Key {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

/// `POST /v1/bindings` (admin).
pub(crate) async fn declare(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<axum::Json<Declaration>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let axum::Json(declaration) =
        body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let key =
        BindingKey::parse(&declaration.key.kind, &declaration.key.value).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "key: type `{}` with value `{}` is not a key that can be declared (aws_access_key, \
             aws_role_session, aws_source_identity, oauth_client or oauth_token, with a value)",
                declaration.key.kind, declaration.key.value
            ))
        })?;
    let holder = declaration.holder;
    if holder.current.run_id.is_none() {
        return Err(ApiError::BadRequest(
            "holder.current.run_id: a binding is held by a run".into(),
        ));
    }
    let now = Utc::now();
    let from = declaration.valid_from.unwrap_or(now);
    if let Some(until) = declaration.valid_until
        && until <= from
    {
        return Err(ApiError::BadRequest(
            "valid_until: must be after valid_from".into(),
        ));
    }
    let key_type = key.kind();
    let mut attributes = serde_json::json!({
        ATTR_BINDING_KEY_TYPE: key_type,
        ATTR_BINDING_KEY: key.value(),
        ATTR_BINDING_FROM: from.to_rfc3339(),
    });
    if let Some(until) = declaration.valid_until {
        attributes[ATTR_BINDING_UNTIL] = until.to_rfc3339().into();
    }
    let event = custody_event::decode_value(serde_json::json!({
        "kind": "other",
        "action": DECLARE_BINDING,
        "observed_at": now,
        "source": {"type": "custody", "name": "bindings"},
        "actor": holder,
        "target": {"resource": key.value(), "resource_type": key_type},
        "outcome": {"status": "success"},
        "attributes": attributes,
    }))
    .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let provenance = custody_engine::Provenance::Custody {
        what: format!("binding declared with api token {}", caller.token_id),
        chain: holder,
    };
    let ingested = state
        .engine
        .ingest_batch_as(vec![event], now, &provenance)?;
    let id = ingested
        .ids
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    ingested.receipt.durable().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"binding": format!("declared-{id}"), "event": id})),
    )
        .into_response())
}
