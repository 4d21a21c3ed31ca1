//! The streamable-HTTP gateway: one MCP endpoint in front of several
//! upstream servers, mounted by `custody serve` (`[gateway]` in its
//! configuration).
//!
//! The HTTP layer here does what only HTTP can: the `Origin` check,
//! authentication (a bearer agent token, verified by the server; 401 with
//! RFC 9728 metadata otherwise), the body limit, the 2026-07-28 routing
//! headers against the body (`headers.rs`), sessions (`Mcp-Session-Id`),
//! and answering as JSON or as a `text/event-stream`. Each message then
//! goes to the session's mux (`mux.rs`), which routes it to the relay of
//! the upstream it is for; each relay is the same layer stack as
//! `custody wrap` (`relay.rs`).

// A refusal here is the HTTP response that says so; boxing it would buy
// nothing on a path that ends in sending it.
#![allow(clippy::result_large_err)]

mod headers;
mod mux;
pub mod sse;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hashlink::LinkedHashMap;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub use headers::{HEADER_MISMATCH, decode_value, encode_value};
pub use upstream::Target;

use crate::approval::Approvals;
use crate::decode::{self, ClientMessage};
use crate::identity::Identity;
use crate::outbox::Recorder;
use crate::policy::ToolRules;
use crate::relay::{self, Config, KILLED};
use mux::{End, Mux, Out, Stream};

/// The most messages in one batch.
const MAX_BATCH: usize = 256;
/// How long a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Agents whose sessions a decision killed, remembered so that they do not
/// simply start another.
const KILLED_KEPT: usize = 65_536;

/// One upstream server.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Its name: the server of its calls' events.
    pub name: String,
    /// What its tools and prompts are listed under (`PREFIX__tool`); empty
    /// for none, allowed for a single upstream.
    pub prefix: String,
    /// How it is reached.
    pub target: Target,
    /// The decisions on its tools, until Cedar policies arrive.
    pub rules: ToolRules,
}

/// How the gateway behaves.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The endpoint's path (`/mcp`).
    pub path: String,
    /// The servers it fronts, in order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Each relay's limits, timeouts and failure mode (its `server` is
    /// set per upstream).
    pub relay: Config,
    /// Between an upstream's prefix and its tool's name (`__`).
    pub separator: String,
    /// `Origin` values accepted besides the endpoint's own (that of
    /// `resource`); a request naming another is refused (a request without
    /// one, from a program rather than a page, is not).
    pub allowed_origins: Vec<String>,
    /// Sessions open at once; beyond it a new one is refused (503).
    pub max_sessions: usize,
    /// Sessions one caller may have open at once; beyond it its new one is
    /// refused (429): a stdio upstream starts a child per session.
    pub max_sessions_per_caller: usize,
    /// A session unused this long is ended.
    pub idle_timeout: Duration,
    /// The endpoint's public URL: the protected resource of RFC 9728.
    pub resource: String,
    /// Authorization servers named in the resource's metadata.
    pub authorization_servers: Vec<String>,
}

impl GatewayConfig {
    /// Checks that the upstreams can be told apart.
    pub fn check(&self) -> Result<(), String> {
        if self.upstreams.is_empty() {
            return Err("the gateway has no upstreams".into());
        }
        if !self.path.starts_with('/') {
            return Err(format!(
                "the gateway's path `{}` must start with /",
                self.path
            ));
        }
        for (i, upstream) in self.upstreams.iter().enumerate() {
            if upstream.name.is_empty() {
                return Err(format!("upstreams[{i}] has no name"));
            }
            if let Some(other) = self
                .upstreams
                .iter()
                .take(i)
                .position(|u| u.name == upstream.name)
            {
                return Err(format!(
                    "upstreams[{i}] has the name `{}` of upstreams[{other}]",
                    upstream.name
                ));
            }
            if upstream.prefix.is_empty() && self.upstreams.len() > 1 {
                return Err(format!(
                    "upstreams[{i}] (`{}`) needs a prefix: with several upstreams, each lists its tools under its own",
                    upstream.name
                ));
            }
            if !upstream.prefix.is_empty()
                && self.upstreams.iter().take(i).any(|u| {
                    u.prefix.starts_with(&upstream.prefix) || upstream.prefix.starts_with(&u.prefix)
                })
            {
                return Err(format!(
                    "upstreams[{i}] (`{}`): its prefix `{}` overlaps another's",
                    upstream.name, upstream.prefix
                ));
            }
            if let Target::Stdio { command, .. } = &upstream.target
                && command.is_empty()
            {
                return Err(format!(
                    "upstreams[{i}] (`{}`) has an empty command",
                    upstream.name
                ));
            }
        }
        Ok(())
    }
}

/// Who is calling, as the server's authentication established.
pub struct Caller {
    /// Whose sessions these are: an agent token's id, or the declared
    /// chain's name. A session answers only its owner.
    pub owner: String,
    /// The identity its calls are made by.
    pub identity: Identity,
    /// Where its calls are recorded.
    pub recorder: Arc<dyn Recorder>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("owner", &self.owner)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No credential was presented.
    Missing,
    /// The credential was refused, and why.
    Refused(String),
}

/// An authentication in progress.
pub type Authenticating<'a> =
    Pin<Box<dyn Future<Output = Result<Caller, Unauthenticated>> + Send + 'a>>;

/// Authenticates the gateway's callers: the server verifies agent tokens.
pub trait Authenticate: Send + Sync + 'static {
    /// The caller presenting `authorization` (the header's value).
    fn authenticate<'a>(&'a self, authorization: Option<&'a str>) -> Authenticating<'a>;
}

pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) client: reqwest::Client,
    pub(crate) approvals: Arc<dyn Approvals>,
    /// Decides every call before each upstream's own tool rules (the
    /// containment in force and the policies), when the host gives one.
    pub(crate) decide: Option<Arc<dyn custody_engine::Decide>>,
    auth: Arc<dyn Authenticate>,
    sessions: Mutex<HashMap<String, Arc<Mux>>>,
    /// Stateless requests' relays, by owner.
    stateless: Mutex<HashMap<String, Arc<Mux>>>,
    /// Owners whose sessions a kill ended: why, and the chain they called
    /// as (to pardon them when the kill is lifted).
    killed: Mutex<LinkedHashMap<String, (String, custody_event::Actor)>>,
}

impl Shared {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mux>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stateless(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mux>>> {
        self.stateless
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the owner's sessions were killed, if they were.
    fn killed(&self, owner: &str) -> Option<String> {
        self.killed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(owner)
            .map(|(why, _)| why.clone())
    }

    /// Remembers that a decision killed `owner`'s sessions: new ones are
    /// refused.
    pub(crate) fn note_killed(&self, owner: &str, chain: &custody_event::Actor, why: &str) {
        let mut killed = self.killed.lock().unwrap_or_else(PoisonError::into_inner);
        killed.replace(owner.to_owned(), (why.to_owned(), chain.clone()));
        while killed.len() > KILLED_KEPT {
            killed.pop_front();
        }
    }

    /// Ends every session of `owner`, and refuses new ones.
    pub(crate) fn kill_owner(&self, owner: &str, chain: &custody_event::Actor, why: &str) {
        self.note_killed(owner, chain, why);
        // Every session of the killed owner ends, on every upstream.
        let ended: Vec<Arc<Mux>> = {
            let mut sessions = self.sessions();
            let ids: Vec<String> = sessions
                .iter()
                .filter(|(_, m)| m.owner == owner)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        let stateless = self.stateless().remove(owner);
        for mux in ended.into_iter().chain(stateless) {
            mux.end(End::Killed(why.to_owned()));
        }
    }
}

/// The gateway: its configuration, its sessions, and the routes serving
/// them.
#[derive(Clone)]
pub struct HttpGateway(Arc<Shared>);

impl std::fmt::Debug for HttpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGateway")
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

impl HttpGateway {
    /// A gateway authenticating with `auth`, deciding each call with
    /// `decide` (if given) and each upstream's tool rules, the strictest
    /// verdict standing, and holding calls on `approvals`. Starts the task
    /// that ends idle sessions: call it inside a Tokio runtime.
    pub fn new(
        config: GatewayConfig,
        auth: Arc<dyn Authenticate>,
        approvals: Arc<dyn Approvals>,
        decide: Option<Arc<dyn custody_engine::Decide>>,
    ) -> Result<HttpGateway, String> {
        config.check()?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|error| format!("building the upstreams' HTTP client: {error}"))?;
        let shared = Arc::new(Shared {
            config,
            client,
            approvals,
            decide,
            auth,
            sessions: Mutex::default(),
            stateless: Mutex::default(),
            killed: Mutex::new(LinkedHashMap::new()),
        });
        tokio::spawn(reap(Arc::downgrade(&shared)));
        Ok(HttpGateway(shared))
    }

    /// The endpoint's path.
    pub fn path(&self) -> &str {
        &self.0.config.path
    }

    /// Where the resource's metadata (RFC 9728) is served: the well-known
    /// path with the endpoint's path after it.
    pub fn metadata_path(&self) -> String {
        format!(
            "/.well-known/oauth-protected-resource{}",
            self.0.config.path
        )
    }

    /// The endpoint (POST, GET, DELETE) and the resource's metadata.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route(
                &self.0.config.path,
                get(open_stream).post(post).delete(delete),
            )
            .route(&self.metadata_path(), get(metadata))
            .with_state(self.0.clone())
    }

    /// Ends every session (the server is stopping).
    pub fn close(&self) {
        let sessions: Vec<Arc<Mux>> = self.0.sessions().drain().map(|(_, m)| m).collect();
        let stateless: Vec<Arc<Mux>> = self.0.stateless().drain().map(|(_, m)| m).collect();
        for mux in sessions.into_iter().chain(stateless) {
            mux.end(End::Closed("the gateway is stopping".into()));
        }
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.0.sessions().len()
    }

    /// Kills every session whose caller's chain `covers` accepts (a run
    /// killed out of band, an identity quarantined): calls in flight fail,
    /// the sessions end, and their owners' new sessions are refused. How
    /// many sessions ended.
    pub fn kill_where(&self, covers: impl Fn(&custody_event::Actor) -> bool, why: &str) -> usize {
        let ended: Vec<Arc<Mux>> = {
            let sessions = self.0.sessions();
            let stateless = self.0.stateless();
            sessions
                .values()
                .chain(stateless.values())
                .filter(|mux| mux.ended().is_none() && covers(&mux.chain))
                .cloned()
                .collect()
        };
        for mux in &ended {
            mux.end(End::Killed(why.to_owned()));
        }
        ended.len()
    }

    /// Lets the owners whose chain `covers` accepts open sessions again (a
    /// kill lifted); how many were refused until now.
    pub fn pardon_where(&self, covers: impl Fn(&custody_event::Actor) -> bool) -> usize {
        let mut killed = self.0.killed.lock().unwrap_or_else(PoisonError::into_inner);
        let before = killed.len();
        killed.retain(|_, (_, chain)| !covers(chain));
        before - killed.len()
    }
}

/// Ends sessions unused for longer than the idle timeout, and forgets
/// ended ones, until the gateway is gone.
async fn reap(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let idle = shared.config.idle_timeout;
        let mut ended = Vec::new();
        for map in [&shared.sessions, &shared.stateless] {
            map.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, mux| {
                    let keep = mux.ended().is_none() && mux.idle_for() < idle;
                    if !keep {
                        ended.push(mux.clone());
                    }
                    keep
                });
        }
        for mux in ended {
            mux.end(End::Closed("the session was idle".into()));
        }
    }
}

fn jsonrpc_error(status: StatusCode, id: Option<&Value>, code: i64, message: &str) -> Response {
    let body = decode::error_response(id, code, message, None);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The checks every method shares: the origin, then the caller.
async fn admit(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Response> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        // The endpoint's own origin is the same origin, not a foreign one.
        let own = origin_of(&shared.config.resource);
        let allowed = origin.to_str().is_ok_and(|o| {
            (!own.is_empty() && o == own) || shared.config.allowed_origins.iter().any(|a| a == o)
        });
        if !allowed {
            return Err(jsonrpc_error(
                StatusCode::FORBIDDEN,
                None,
                decode::INVALID_REQUEST,
                "requests from this Origin are not accepted",
            ));
        }
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match shared.auth.authenticate(authorization).await {
        Ok(caller) => caller,
        Err(refusal) => return Err(unauthorized(shared, &refusal)),
    };
    if let Some(why) = shared.killed(&caller.owner) {
        record_refusal(&caller, "custody/killed-agent", "", &why);
        return Err(jsonrpc_error(
            StatusCode::FORBIDDEN,
            None,
            KILLED,
            &format!("custody ended this agent's sessions: {why}"),
        ));
    }
    Ok(caller)
}

fn unauthorized(shared: &Shared, refusal: &Unauthenticated) -> Response {
    let metadata = format!(
        "{}/.well-known/oauth-protected-resource{}",
        origin_of(&shared.config.resource),
        shared.config.path
    );
    let (challenge, message) = match refusal {
        Unauthenticated::Missing => (
            format!("Bearer resource_metadata=\"{metadata}\""),
            "an agent token is required (Authorization: Bearer)".to_owned(),
        ),
        Unauthenticated::Refused(why) => (
            format!(
                "Bearer resource_metadata=\"{metadata}\", error=\"invalid_token\", error_description=\"{}\"",
                why.replace(['"', '\\'], "'")
            ),
            format!("the agent token was refused: {why}"),
        ),
    };
    let mut response = jsonrpc_error(
        StatusCode::UNAUTHORIZED,
        None,
        decode::INVALID_REQUEST,
        &message,
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// `scheme://authority` of a URL.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    match url.get(after_scheme..).and_then(|rest| rest.find('/')) {
        Some(slash) => url.get(..after_scheme + slash).unwrap_or(url),
        None => url,
    }
}

/// RFC 9728 protected resource metadata.
async fn metadata(State(shared): State<Arc<Shared>>) -> Response {
    let mut body = json!({
        "resource": shared.config.resource,
        "bearer_methods_supported": ["header"],
        "resource_name": "Custody MCP gateway",
    });
    if !shared.config.authorization_servers.is_empty()
        && let Some(map) = body.as_object_mut()
    {
        map.insert(
            "authorization_servers".into(),
            Value::from(shared.config.authorization_servers.clone()),
        );
    }
    axum::Json(body).into_response()
}

fn session_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("mcp-session-id").and_then(|v| v.to_str().ok())
}

/// The session a request names, if it is open and the caller's.
fn find_session(shared: &Shared, id: &str, caller: &Caller) -> Result<Arc<Mux>, Response> {
    let found = shared.sessions().get(id).cloned();
    match found {
        Some(mux) if mux.ended().is_none() => {
            if mux.owner == caller.owner {
                Ok(mux)
            } else {
                record_refusal(
                    caller,
                    "custody/session-of-another",
                    "",
                    "the request named a session another caller opened",
                );
                Err(jsonrpc_error(
                    StatusCode::FORBIDDEN,
                    None,
                    decode::INVALID_REQUEST,
                    "the session belongs to another caller",
                ))
            }
        }
        Some(_) => {
            shared.sessions().remove(id);
            Err(session_not_found())
        }
        None => Err(session_not_found()),
    }
}

fn session_not_found() -> Response {
    // -32001 "Session not found", as the reference servers answer.
    jsonrpc_error(StatusCode::NOT_FOUND, None, -32001, "Session not found")
}

async fn post(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let caller = match admit(&shared, &headers).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json_body {
        return jsonrpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            decode::INVALID_REQUEST,
            "the body must be application/json",
        );
    }
    let limit = shared.config.relay.max_message;
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                decode::INVALID_REQUEST,
                &format!("the body exceeds {limit} bytes"),
            );
        }
        Err(_) => {
            return jsonrpc_error(
                StatusCode::REQUEST_TIMEOUT,
                None,
                decode::INVALID_REQUEST,
                &format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            );
        }
    };
    let batch = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let raws: Vec<Vec<u8>> = if batch {
        match serde_json::from_slice::<Vec<Box<RawValue>>>(&bytes) {
            Ok(raws) if !raws.is_empty() && raws.len() <= MAX_BATCH => raws
                .into_iter()
                .map(|raw| raw.get().as_bytes().to_vec())
                .collect(),
            Ok(raws) => {
                let why = format!(
                    "a batch holds 1 to {MAX_BATCH} messages, not {}",
                    raws.len()
                );
                return jsonrpc_error(StatusCode::BAD_REQUEST, None, decode::INVALID_REQUEST, &why);
            }
            Err(error) => {
                let why = format!("the body is not JSON: {error}");
                return jsonrpc_error(StatusCode::BAD_REQUEST, None, decode::PARSE_ERROR, &why);
            }
        }
    } else {
        vec![bytes.to_vec()]
    };
    let messages: Vec<(Result<ClientMessage, decode::DecodeError>, Vec<u8>)> = raws
        .into_iter()
        .map(|raw| (decode::client(&raw, limit), raw))
        .collect();
    // The routing headers describe one message; a batch is held to the
    // headers only if it carries them (then every message must match).
    for (decoded, _) in &messages {
        let (method, params, id) = match decoded {
            Ok(ClientMessage::Request(r)) => (r.method.as_str(), r.params.as_ref(), Some(&r.id)),
            Ok(ClientMessage::Notification { method, params }) => {
                (method.as_str(), params.as_ref(), None)
            }
            _ => continue,
        };
        if let Err(why) = headers::check(&headers, method, params) {
            record_refusal(&caller, "custody/header-mismatch", method, &why);
            return jsonrpc_error(
                StatusCode::BAD_REQUEST,
                id.map(|id| id.value()),
                HEADER_MISMATCH,
                &why,
            );
        }
    }
    if !batch && let Some((Err(error), _)) = messages.first() {
        record_refusal(&caller, "invalid_message", "", &error.message);
        let status = if error.code == decode::PARSE_ERROR {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        return (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            error.response(),
        )
            .into_response();
    }

    let (mux, new_session) = match session_header(&headers) {
        Some(id) => match find_session(&shared, id, &caller) {
            Ok(mux) => (mux, None),
            Err(response) => return response,
        },
        None => {
            let initialize = messages.iter().any(
                |(m, _)| matches!(m, Ok(ClientMessage::Request(r)) if r.method == "initialize"),
            );
            let stateless = messages.iter().all(|(m, _)| match m {
                Ok(ClientMessage::Request(r)) => {
                    headers::envelope_version(r.params.as_ref()).is_some()
                        || r.method == "server/discover"
                }
                Ok(ClientMessage::Notification { params, .. }) => {
                    headers::envelope_version(params.as_ref()).is_some()
                }
                _ => false,
            });
            if initialize {
                if messages.len() != 1 {
                    return jsonrpc_error(
                        StatusCode::BAD_REQUEST,
                        None,
                        decode::INVALID_REQUEST,
                        "initialize must be sent alone",
                    );
                }
                match open_session(&shared, caller) {
                    Ok((id, mux)) => (mux, Some(id)),
                    Err(response) => return response,
                }
            } else if stateless {
                (stateless_relays(&shared, caller), None)
            } else {
                return jsonrpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    decode::INVALID_REQUEST,
                    "Bad Request: an Mcp-Session-Id header is required (or a stateless request's _meta)",
                );
            }
        }
    };

    let (stream, answers) = mpsc::channel(64 + messages.len());
    let mut expected = 0;
    for (decoded, raw) in messages {
        match decoded {
            Ok(message) => expected += mux.submit(message, &raw, &stream).await,
            Err(error) => {
                let _ = stream.send(Out::Answer(error.response())).await;
                expected += 1;
            }
        }
    }
    drop(stream);
    if expected == 0 {
        return StatusCode::ACCEPTED.into_response();
    }
    let streams = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream") || v.contains("*/*"));
    let mut response = answer(answers, expected, batch, streams).await;
    if let Some(id) = new_session
        && let Ok(value) = HeaderValue::from_str(&id)
    {
        response.headers_mut().insert("mcp-session-id", value);
    }
    response
}

/// Records a request refused before any relay saw it, as the relays record
/// theirs: kind `mcp_request`, outcome `denied`, the caller's chain.
/// Recording happens off the request's path; a failure is logged.
fn record_refusal(caller: &Caller, action: &str, method: &str, why: &str) {
    let mut event = relay::gateway_event(
        custody_event::EventKind::McpRequest,
        action,
        "custody gateway",
        caller.identity.chain(),
        None,
        None,
    );
    if method.is_empty() {
        event.attributes.remove("mcp.method.name");
    } else {
        event.attributes.insert(
            "mcp.method.name".into(),
            Value::from(relay::clip(method, 1024)),
        );
    }
    event
        .attributes
        .insert("custody.verdict".into(), Value::from("deny"));
    event.outcome = relay::outcome(
        custody_event::OutcomeStatus::Denied,
        Some(why.to_owned()),
        None,
    );
    let recorder = caller.recorder.clone();
    tokio::spawn(async move {
        if let Err(error) = recorder.record(std::slice::from_ref(&event)).await {
            tracing::error!(%error, "a refused request could not be recorded");
        }
    });
}

/// A new session for `caller`, unless the gateway has as many as it keeps.
fn open_session(shared: &Arc<Shared>, caller: Caller) -> Result<(String, Arc<Mux>), Response> {
    let mut sessions = shared.sessions();
    if sessions.len() >= shared.config.max_sessions {
        sessions.retain(|_, mux| mux.ended().is_none());
    }
    if sessions.len() >= shared.config.max_sessions {
        return Err(jsonrpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            decode::INVALID_REQUEST,
            "the gateway has as many sessions open as it allows",
        ));
    }
    let owned = sessions
        .values()
        .filter(|mux| mux.owner == caller.owner && mux.ended().is_none())
        .count();
    if owned >= shared.config.max_sessions_per_caller {
        return Err(jsonrpc_error(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            decode::INVALID_REQUEST,
            &format!(
                "this caller has {owned} sessions open, the most it may; end one (DELETE) first"
            ),
        ));
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mux = Mux::start(shared, caller);
    sessions.insert(id.clone(), mux.clone());
    Ok((id, mux))
}

/// The relays serving `caller`'s stateless requests.
fn stateless_relays(shared: &Arc<Shared>, caller: Caller) -> Arc<Mux> {
    let mut stateless = shared.stateless();
    if let Some(mux) = stateless.get(&caller.owner)
        && mux.ended().is_none()
    {
        return mux.clone();
    }
    let owner = caller.owner.clone();
    let mux = Mux::start(shared, caller);
    stateless.insert(owner, mux.clone());
    mux
}

/// The response to a POST: a single answer as JSON when nothing else came
/// first; otherwise a stream of events ending with the last answer. A
/// client that takes no streams gets the answers alone.
async fn answer(
    mut answers: mpsc::Receiver<Out>,
    expected: usize,
    batch: bool,
    streams: bool,
) -> Response {
    let json = |body: Vec<u8>| {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    };
    let Some(first) = answers.recv().await else {
        return jsonrpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            SERVER_ERROR,
            "the session ended before answering",
        );
    };
    let first = match first {
        Out::Answer(answer) if !batch => return json(answer),
        other => other,
    };
    if !streams {
        let mut collected = Vec::new();
        if let Out::Answer(answer) = first {
            collected.push(answer);
        }
        while collected.len() < expected {
            match answers.recv().await {
                Some(Out::Answer(answer)) => collected.push(answer),
                Some(Out::Message(_)) => {}
                None => break,
            }
        }
        if !batch && let Some(answer) = collected.pop() {
            return json(answer);
        }
        let mut body = b"[".to_vec();
        for (i, answer) in collected.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(answer);
        }
        body.push(b']');
        return json(body);
    }
    let answered = usize::from(matches!(first, Out::Answer(_)));
    let events = futures_util::stream::unfold(
        (Some(first), answers, answered, expected),
        |(pending, mut answers, answered, expected)| async move {
            let (out, answered) = match pending {
                Some(out) => (out, answered),
                None => {
                    if answered >= expected {
                        return None;
                    }
                    let out = answers.recv().await?;
                    let answered = answered + usize::from(matches!(out, Out::Answer(_)));
                    (out, answered)
                }
            };
            let (Out::Answer(data) | Out::Message(data)) = out;
            let event = Event::default()
                .event("message")
                .data(String::from_utf8_lossy(&data));
            Some((
                Ok::<_, Infallible>(event),
                (None, answers, answered, expected),
            ))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// JSON-RPC: an internal error.
const SERVER_ERROR: i64 = -32603;

/// The GET stream: what the upstreams send outside any request.
async fn open_stream(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let caller = match admit(&shared, &headers).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let Some(id) = session_header(&headers) else {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "a GET stream belongs to a session: send its Mcp-Session-Id",
        )
            .into_response();
    };
    let mux = match find_session(&shared, id, &caller) {
        Ok(mux) => mux,
        Err(response) => return response,
    };
    let (stream, messages): (Stream, _) = mpsc::channel(256);
    mux.listen(stream);
    let events = futures_util::stream::unfold(messages, |mut messages| async move {
        let (Out::Answer(data) | Out::Message(data)) = messages.recv().await?;
        let event = Event::default()
            .event("message")
            .data(String::from_utf8_lossy(&data));
        Some((Ok::<_, Infallible>(event), messages))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Ends a session at the client's request.
async fn delete(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let caller = match admit(&shared, &headers).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let Some(id) = session_header(&headers) else {
        return jsonrpc_error(
            StatusCode::BAD_REQUEST,
            None,
            decode::INVALID_REQUEST,
            "name the session to end in Mcp-Session-Id",
        );
    };
    let mux = match find_session(&shared, id, &caller) {
        Ok(mux) => mux,
        Err(response) => return response,
    };
    shared.sessions().remove(id);
    mux.end(End::Closed("the client ended the session".into()));
    StatusCode::NO_CONTENT.into_response()
}
