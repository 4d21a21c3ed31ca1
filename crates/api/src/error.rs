//! The API's errors and their HTTP form.
//!
//! Every error answers with a JSON body `{"error": {"code": ..., "message":
//! ...}}` and the status that says what the client should do: fix the
//! request (4xx), wait (429 with `Retry-After`) or report it (5xx).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custody_engine::RecordError;
use custody_store::StoreError;

use crate::auth::Role;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No usable token.
    #[error("authentication required: {0}")]
    Unauthenticated(&'static str),
    /// An agent token the delegation service refuses, and why.
    #[error("agent token refused: {0}")]
    AgentToken(String),
    /// The token's role does not allow this endpoint.
    #[error("a token with the {have} role may not do this, it needs {needed}")]
    Forbidden {
        /// The caller's role.
        have: Role,
        /// The role the endpoint needs.
        needed: Role,
    },
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing has that id.
    #[error("{0}")]
    NotFound(String),
    /// The endpoint exists but not with this method.
    #[error("this endpoint does not accept that method")]
    MethodNotAllowed,
    /// The body, or what it decompresses to, is larger than allowed.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Which size: the body, or the decompressed body.
        what: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body's media type or encoding is not one the endpoint reads.
    #[error("{0}")]
    Unsupported(String),
    /// Every item of a batch was refused; the body lists why.
    #[error("no event in the batch was accepted")]
    AllRejected(serde_json::Value),
    /// The ingest queue is full: the client should retry after a pause.
    #[error("the ingest queue is full, retry after {retry_after_secs} s ({detail})")]
    Busy {
        /// Seconds to wait.
        retry_after_secs: u64,
        /// The queue's state.
        detail: String,
    },
    /// The request conflicts with the state of what it names.
    #[error("{0}")]
    Conflict(String),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Unavailable,
    /// A failure of the server itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) | ApiError::AgentToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::AllRejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::AgentToken(_) => "invalid_token",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Unsupported(_) => "unsupported",
            ApiError::AllRejected(_) => "all_rejected",
            ApiError::Busy { .. } => "busy",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Cursor { .. } => ApiError::BadRequest(format!("cursor: {error}")),
            error => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<RecordError> for ApiError {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::QueueFull { .. } => ApiError::Busy {
                retry_after_secs: 1,
                detail: error.to_string(),
            },
            RecordError::Closed => ApiError::Unavailable,
            RecordError::Failed(why) => ApiError::Internal(why),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut body =
            serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}});
        if let ApiError::AllRejected(details) = &self {
            body["rejected"] = details.clone();
        }
        let mut response = (status, Json(body)).into_response();
        match &self {
            ApiError::Busy {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthenticated(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::AgentToken(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        response
    }
}
