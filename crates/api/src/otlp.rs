//! The OTLP/HTTP trace receiver: `POST /v1/traces`.
//!
//! An `ExportTraceServiceRequest` as protobuf (`application/x-protobuf`) or
//! OTLP/JSON (`application/json`), gzip or not, from a client holding an
//! `ingest` token. Each span becomes an event (`custody_otlp`); the answer
//! is an `ExportTraceServiceResponse` in the request's encoding, sent once
//! the events are durable, its `partial_success` counting the spans refused
//! and saying why. An undecodable body is answered 400, a full queue 429
//! with `Retry-After`, as for `POST /v1/events`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use custody_otlp::collector::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::collect::{ingest, read_body};
use crate::error::ApiError;

/// The errors named in a partial success message, at most.
const MAX_NAMED: usize = 5;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

pub(crate) async fn post_traces(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Role::Ingest)?;
    let started = std::time::Instant::now();
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let encoding = match media_type.as_deref() {
        Some("application/x-protobuf" | "application/protobuf") => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        other => {
            return Err(ApiError::Unsupported(format!(
                "content type {} is not OTLP, send application/x-protobuf or application/json",
                other.map_or("(none)".to_owned(), |t| format!("\"{t}\""))
            )));
        }
    };
    let body = read_body(&state, &headers, body).await?;
    let request = match encoding {
        Encoding::Protobuf => {
            ExportTraceServiceRequest::decode(body.as_ref()).map_err(|error| {
                ApiError::BadRequest(format!("the body is not an OTLP trace request: {error}"))
            })?
        }
        Encoding::Json => serde_json::from_slice(&body).map_err(|error| {
            ApiError::BadRequest(format!(
                "the body is not an OTLP/JSON trace request: {error}"
            ))
        })?,
    };

    let answer = export(&state, &caller, started, &request).await?;
    Ok(match encoding {
        Encoding::Protobuf => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            )],
            answer.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => axum::Json(answer).into_response(),
    })
}

/// Maps one trace request to events and records them, whichever transport
/// brought it: the answer, once its events are durable, counts the spans
/// refused and names the first few.
pub(crate) async fn export(
    state: &AppState,
    caller: &Caller,
    started: std::time::Instant,
    request: &ExportTraceServiceRequest,
) -> Result<ExportTraceServiceResponse, ApiError> {
    let mapped = match state.otlp.lock() {
        Ok(mut mapper) => mapper.map(request, Utc::now()),
        Err(poisoned) => poisoned.into_inner().map(request, Utc::now()),
    };
    let rejected = mapped.errors.len();
    if mapped.events.is_empty() {
        state.metrics.events_rejected.inc_by(rejected as u64);
    } else {
        ingest(state, caller, started, mapped.events, rejected).await?;
    }

    let partial_success = (rejected > 0).then(|| {
        let mut message = format!("{rejected} span(s) refused: ");
        let named: Vec<String> = mapped
            .errors
            .iter()
            .take(MAX_NAMED)
            .map(|e| format!("span {}: {}", e.index, e.message))
            .collect();
        message.push_str(&named.join("; "));
        if rejected > MAX_NAMED {
            message.push_str("; ...");
        }
        ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: message,
        }
    });
    Ok(ExportTraceServiceResponse { partial_success })
}
