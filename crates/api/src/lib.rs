//! Custody's HTTP API: the JSON event collector, the OTLP trace receivers
//! (HTTP and gRPC), event queries, the OCSF export, the live stream, health and
//! metrics, all behind bearer tokens with roles.
//!
//! Only this crate knows HTTP. Handlers decode requests, check the caller's
//! role, and hand events to the engine or queries to the store; they hold no
//! state of their own beyond metrics.

mod auth;
mod bindings;
mod collect;
pub mod contain;
mod delegate;
mod error;
mod findings;
mod gateway;
mod graph;
mod grpc;
mod issuers;
mod lineage;
mod metrics;
mod otlp;
mod query;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use custody_engine::Engine;
use custody_store::Store;
use tokio::net::TcpListener;

pub use auth::{
    Caller, IssuedToken, Role, TOKEN_PREFIX, authenticate, issue_token, new_secret, register_token,
};
pub use collect::{BatchAnswer, ItemError};
pub use delegate::{Delegation, SaveState, TOKEN_EXCHANGE};
pub use error::ApiError;
pub use gateway::GatewayAuth;
pub use issuers::{
    FETCH_TIMEOUT, MAX_JWKS_BYTES, ON_DEMAND_INTERVAL, TrustedIssuer, UNKNOWN_KEY_WAIT,
};
pub use metrics::Metrics;
pub use query::{EventParams, parse_time};

/// Limits on what one request may make the server do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body, as sent.
    pub max_body_bytes: usize,
    /// Largest accepted request body after gzip decompression.
    pub max_decompressed_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
        }
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The pipeline events go through.
    pub engine: Arc<Engine>,
    /// Where they are stored and read back.
    pub store: Store,
    /// The API's metrics.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// Turns true when the server starts shutting down.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// The delegation service, when enabled.
    pub delegation: Option<Arc<Delegation>>,
    /// The attribute stage's state, when the server keeps the agent graph.
    pub graph: Option<custody_graph::Live>,
    /// The OTLP span mapper, with its memory of recent spans' lineage.
    pub otlp: Arc<std::sync::Mutex<custody_otlp::Mapper>>,
    /// The MCP gateway, when configured.
    pub gateway: Option<custody_gateway::http::HttpGateway>,
    /// The engine's detect stage, when it runs Custody's (for metrics and
    /// baselines).
    pub detections: Option<Arc<custody_detect::Detections>>,
    /// Containment: measures in force, playbooks, held calls, policies.
    pub containing: Option<contain::Containing>,
}

impl AppState {
    /// State for an engine recording into `store`.
    pub fn new(engine: Arc<Engine>, store: Store, limits: Limits) -> AppState {
        AppState {
            engine,
            store,
            metrics: Arc::new(Metrics::default()),
            limits,
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            delegation: None,
            graph: None,
            otlp: Arc::default(),
            gateway: None,
            detections: None,
            containing: None,
        }
    }

    /// The state with the engine's detect stage, whose counters `/metrics`
    /// reports and whose baselines `/v1/baselines` shows.
    pub fn with_detections(mut self, detections: Arc<custody_detect::Detections>) -> AppState {
        self.detections = Some(detections);
        self
    }

    /// The state with containment: its measures, playbooks, approvals and
    /// policies served under `/v1/approvals`, `/v1/containment`,
    /// `/v1/actions`, `/v1/playbooks` and `/v1/policies`.
    pub fn with_containing(mut self, containing: contain::Containing) -> AppState {
        self.containing = Some(containing);
        self
    }

    /// The same state serving the MCP gateway at its path.
    pub fn with_gateway(mut self, gateway: custody_gateway::http::HttpGateway) -> AppState {
        self.gateway = Some(gateway);
        self
    }

    /// The same state answering the graph's queries from `live`.
    pub fn with_graph(mut self, live: custody_graph::Live) -> AppState {
        self.graph = Some(live);
        self
    }

    /// The same state with the delegation service enabled.
    pub fn with_delegation(mut self, delegation: Delegation) -> AppState {
        self.delegation = Some(Arc::new(delegation));
        self
    }
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    // Bodies are read under the collector's own limit, which answers 413
    // with a JSON error; axum's default 2 MiB limit must not cut in first.
    let gateway = match &state.gateway {
        Some(gateway) => gateway.router(),
        None => Router::new(),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::get_metrics))
        .route(
            "/v1/events",
            post(collect::post_events).get(query::list_events),
        )
        .route(
            "/v1/ingest/cloudtrail",
            post(collect::post_import::<custody_import::CloudTrail>),
        )
        .route(
            "/v1/ingest/okta",
            post(collect::post_import::<custody_import::Okta>),
        )
        .route(
            "/v1/ingest/github",
            post(collect::post_import::<custody_import::GitHub>),
        )
        .route("/v1/traces", post(otlp::post_traces))
        .route("/v1/events/stream", get(query::stream_events))
        .route("/v1/findings", get(findings::list_findings))
        .route("/v1/findings/stream", get(findings::stream_findings))
        .route("/v1/findings/{id}", get(findings::get_finding))
        .route("/v1/baselines", get(findings::list_baselines))
        .route(
            "/v1/baselines/{agent_type}",
            get(findings::get_baseline).delete(findings::reset_baseline),
        )
        .route("/v1/approvals", get(contain::list_approvals))
        .route("/v1/approvals/{id}", post(contain::answer_approval))
        .route(
            "/v1/containment",
            get(contain::list_measures).post(contain::apply_measure),
        )
        .route("/v1/containment/mine", get(contain::my_measures))
        .route("/v1/containment/{id}", delete(contain::lift_measure))
        .route("/v1/actions", get(contain::list_actions))
        .route("/v1/playbooks", get(contain::list_playbooks))
        .route("/v1/policies/reload", post(contain::reload_policies))
        .route("/v1/events/{id}", get(query::get_event))
        .route("/v1/export/ocsf", get(query::export_ocsf))
        // OAuth needs these open; the token endpoint is authenticated by
        // the subject token it is given.
        .route(
            "/.well-known/oauth-authorization-server",
            get(delegate::metadata),
        )
        .route("/oauth/jwks", get(delegate::jwks))
        .route("/oauth/token", post(delegate::token))
        .route("/v1/agent-tokens", post(delegate::mint))
        .route("/v1/whoami", get(whoami))
        .route("/v1/revocations", post(delegate::revoke))
        .route("/v1/bindings", post(bindings::declare))
        .route("/v1/lineage/{id}", get(lineage::lineage))
        .route("/v1/graph", get(graph::subgraph))
        .route("/v1/who", get(graph::who))
        .route("/v1/blast-radius/{node}", get(graph::blast_radius))
        .merge(gateway)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// The sockets a server answers on: the API's, and the OTLP receivers'
/// own (the standard ports 4318 and 4317 by default), if enabled.
#[derive(Debug)]
pub struct Listeners {
    /// Every route of the API.
    pub api: TcpListener,
    /// OTLP/HTTP: `POST /v1/traces` only, as on the API's port.
    pub otlp_http: Option<TcpListener>,
    /// OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService`.
    pub otlp_grpc: Option<TcpListener>,
}

/// Serves the API on `listener` until `shutdown` resolves, then stops
/// accepting and lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listeners = Listeners {
        api: listener,
        otlp_http: None,
        otlp_grpc: None,
    };
    serve_all(listeners, state, shutdown).await
}

/// Serves the API and the OTLP receivers on `listeners` until `shutdown`
/// resolves, then stops accepting on all of them and lets requests in
/// flight finish.
pub async fn serve_all(
    listeners: Listeners,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = state.stopping.clone();
    let gateway = state.gateway.clone();
    let shutdown = async move {
        shutdown.await;
        // The gateway's streams last as long as their sessions: end them.
        if let Some(gateway) = gateway {
            gateway.close();
        }
        // Live streams never end by themselves; tell them to, or graceful
        // shutdown would wait for them forever. Every listener stops on it.
        stopping.send_replace(true);
        Ok(())
    };
    let stopped = |state: &AppState| {
        let mut stopping = state.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    };
    let api = axum::serve(
        listeners.api,
        router(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(&state));
    let otlp_http = async {
        match listeners.otlp_http {
            Some(listener) => {
                axum::serve(
                    listener,
                    otlp_router(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stopped(&state))
                .await
            }
            None => Ok(()),
        }
    };
    let otlp_grpc = async {
        match listeners.otlp_grpc {
            Some(listener) => tonic::transport::Server::builder()
                .add_service(grpc::TraceService::new(state.clone()))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped(&state),
                )
                .await
                .map_err(std::io::Error::other),
            None => Ok(()),
        }
    };
    tokio::try_join!(shutdown, api.into_future(), otlp_http, otlp_grpc).map(|_| ())
}

/// The OTLP/HTTP receiver on a port of its own: `POST /v1/traces`, as on
/// the API's port, and nothing else.
pub fn otlp_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/traces", post(otlp::post_traces))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Query parameters whose parse errors answer as every other error does:
/// 400 with a JSON body naming the parameter.
#[derive(Debug)]
pub(crate) struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(params)| Params(params))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    let stats = state.store.stats();
    axum::Json(serde_json::json!({"status": "ok", "queued_events": stats.queued_events}))
        .into_response()
}

/// Who the caller's token says it is: its id, its role and, for an agent
/// token, the chain it carries. Any valid token may ask, so an intermediary
/// holding an agent token (`custody wrap`) learns its chain from the one
/// place that verifies tokens, revocations included.
async fn whoami(caller: Caller) -> Response {
    axum::Json(serde_json::json!({
        "token_id": caller.token_id,
        "role": caller.role.as_str(),
        "chain": caller.agent,
    }))
    .into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|value| value.to_str().map_err(|_| ()));
        resolve_caller(state, authorization, parts.uri.path()).await
    }
}

/// The caller an `Authorization` value (`Some(Err(()))` when it is not
/// text) stands for, whichever transport carried it: an API token, or an
/// agent token of the delegation service or a trusted issuer. A refused
/// agent token is recorded as a refusal at `at`.
pub(crate) async fn resolve_caller(
    state: &AppState,
    authorization: Option<Result<&str, ()>>,
    at: &str,
) -> Result<Caller, ApiError> {
    let authorization = match authorization {
        Some(Ok(value)) => Some(value),
        Some(Err(())) => {
            return Err(ApiError::Unauthenticated(
                "the Authorization header is not text",
            ));
        }
        None => None,
    };
    let secret = auth::bearer(authorization)?;
    // An agent token, Custody's or a trusted issuer's, is a JWT, never
    // an API token's `cst_` secret.
    if let Some(delegation) = &state.delegation
        && !secret.starts_with(TOKEN_PREFIX)
        && secret.matches('.').count() == 2
    {
        return match delegation.accept(secret).await {
            Ok(accepted) => Ok(Caller::agent(accepted)),
            Err(error) => {
                delegate::record_refusal(state, at, secret, &error.to_string()).await;
                Err(ApiError::AgentToken(error.to_string()))
            }
        };
    }
    auth::authenticate_secret(&state.store, secret)
}
