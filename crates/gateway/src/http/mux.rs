//! One client session in front of several upstreams.
//!
//! Each upstream gets its own relay (`relay.rs`, the whole layer stack)
//! for the session, so each call is decoded, attributed, authorized,
//! contained, forwarded and recorded exactly as `custody wrap` does it,
//! with the upstream's name as the server. The mux sits in front: it
//! routes each client message to the relay it is for, fans the lists out
//! and merges their answers, and routes what the upstreams send back to
//! the HTTP stream waiting for it.
//!
//! - **Names.** With several upstreams (or a configured prefix), tools and
//!   prompts are listed as `PREFIX` + `SEPARATOR` + name and called by that
//!   name; the prefix is taken off before the relay sees the call, so
//!   decisions and records name the upstream's own tool. Resources keep
//!   their URIs; a read goes to the upstream that listed the URI (or a
//!   template it matches). One upstream without a prefix is transparent:
//!   every message goes to it as it came, answers come back unchanged.
//! - **Ids.** The client's ids pass to the relays unchanged: each relay
//!   (and upstream) sees only the requests meant for it, and a fanned-out
//!   request goes to each with the client's id. The upstreams' own
//!   requests (sampling, elicitation) get ids of the gateway's, so two
//!   upstreams' requests never meet at the client; the client's answer
//!   is mapped back.
//! - **Streams.** A client request's answer goes to the HTTP response
//!   waiting for it. What an upstream sends unasked goes to the request
//!   it is about (a progress notification names its token; otherwise the
//!   newest request in flight at that upstream), else to the session's GET
//!   stream, else waits for one (bounded).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

use super::upstream;
use super::{Caller, Shared, UpstreamConfig};
use crate::decode::{self, ClientMessage, Id, Request};
use crate::identity::Identity;
use crate::outbox::Recorder;
use crate::relay::{Config, Ended, Gateway, KILLED, Pipe, SERVER_GONE};
use custody_engine::{Decide, Strictest};

/// Messages kept for a GET stream not yet open; beyond it the oldest go.
const BACKLOG: usize = 256;
/// Requests of the upstreams the client has not answered, per session.
const SERVER_REQUESTS: usize = 1024;
/// How long a relay's last answers are waited for after it ends.
const DRAIN: Duration = Duration::from_secs(2);

/// JSON-RPC: no such method (here: one no upstream serves).
const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: invalid params (an unknown tool, prompt or cursor).
const INVALID_PARAMS: i64 = -32602;

/// What the mux hands an HTTP response.
#[derive(Debug)]
pub(crate) enum Out {
    /// A message sent on the way: a notification or an upstream's request.
    Message(Vec<u8>),
    /// The answer to one of the client's requests.
    Answer(Vec<u8>),
}

/// Where an HTTP response receives.
pub(crate) type Stream = mpsc::Sender<Out>;

/// The methods whose answers are gathered from every upstream.
const FANNED_OUT: [&str; 7] = [
    "initialize",
    "server/discover",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "logging/setLevel",
];

struct Link {
    name: String,
    /// `PREFIX` + separator, or empty.
    prefix: String,
    input: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    alive: AtomicBool,
}

impl Link {
    fn sender(&self) -> Option<mpsc::Sender<Vec<u8>>> {
        if !self.alive.load(Ordering::Acquire) {
            return None;
        }
        self.input
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Waiter {
    /// The upstream it went to.
    upstream: usize,
    stream: Stream,
    order: u64,
    progress: Option<String>,
}

struct Fanout {
    method: String,
    /// The upstreams asked.
    asked: Vec<usize>,
    answers: Vec<(usize, Value)>,
    stream: Stream,
    order: u64,
    /// The version the client asked for (`initialize`).
    requested: Option<String>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<Id, Waiter>,
    fanouts: HashMap<Id, Fanout>,
    /// The upstreams' requests sent to the client, by the gateway's id.
    server_requests: HashMap<u64, (usize, Value, Instant)>,
    next_server_id: u64,
    /// Progress tokens of requests in flight.
    progress: HashMap<String, Id>,
    general: Option<Stream>,
    backlog: VecDeque<Vec<u8>>,
    /// Which upstream listed each resource URI, and each template's
    /// literal start.
    resources: HashMap<String, usize>,
    templates: Vec<(String, usize)>,
    order: u64,
}

/// A client session: its identity, one relay per upstream, and what is in
/// flight.
pub(crate) struct Mux {
    /// Whose session it is (an agent token's id, or the declared chain).
    pub(crate) owner: String,
    /// The chain its calls are made by.
    pub(crate) chain: custody_event::Actor,
    links: Vec<Link>,
    transparent: bool,
    state: Mutex<State>,
    /// Set when the session ends: why, and whether a decision ended it.
    ended: watch::Sender<Option<End>>,
    torn_down: AtomicBool,
    last_used: Mutex<Instant>,
    call_timeout: Duration,
    shared: Weak<Shared>,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// A decision killed it.
    Killed(String),
    /// Every upstream went away, or the client or the gateway closed it.
    Closed(String),
}

impl End {
    /// The JSON-RPC error a request of the ended session is answered with.
    fn refusal(&self) -> (i64, String) {
        match self {
            End::Killed(why) => (KILLED, format!("custody ended the session: {why}")),
            End::Closed(why) => (SERVER_GONE, format!("the session ended: {why}")),
        }
    }
}

impl Mux {
    /// Starts a session for `caller`: a relay per upstream, each with its
    /// own connection (a child per session for stdio upstreams), its events
    /// sharing a session id of their own (`gateway-<uuid>`, not the
    /// `Mcp-Session-Id`, which is a credential of sorts).
    pub(crate) fn start(shared: &Arc<Shared>, caller: Caller) -> Arc<Mux> {
        let Caller {
            owner,
            identity,
            recorder,
        } = caller;
        let session_id = format!("gateway-{}", custody_event::EventId::new_v7());
        let config = &shared.config;
        let mut links = Vec::new();
        let mut pipes = Vec::new();
        for upstream in &config.upstreams {
            let (input, lines) = mpsc::channel(64);
            links.push(Link {
                name: upstream.name.clone(),
                prefix: if upstream.prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}{}", upstream.prefix, config.separator)
                },
                input: Mutex::new(Some(input)),
                alive: AtomicBool::new(true),
            });
            pipes.push(lines);
        }
        let transparent = links.len() == 1 && links.iter().all(|l| l.prefix.is_empty());
        let mux = Arc::new(Mux {
            owner,
            chain: identity.chain().clone(),
            links,
            transparent,
            state: Mutex::new(State::default()),
            ended: watch::Sender::new(None),
            torn_down: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
            call_timeout: config.relay.call_timeout,
            shared: Arc::downgrade(shared),
        });
        for (index, (upstream, lines)) in config.upstreams.iter().zip(pipes).enumerate() {
            mux.clone().run_link(
                shared,
                index,
                upstream,
                lines,
                &identity,
                &recorder,
                &session_id,
            );
        }
        mux
    }

    #[allow(clippy::too_many_arguments)]
    fn run_link(
        self: Arc<Self>,
        shared: &Arc<Shared>,
        index: usize,
        upstream: &UpstreamConfig,
        lines: mpsc::Receiver<Vec<u8>>,
        identity: &Identity,
        recorder: &Arc<dyn Recorder>,
        session_id: &str,
    ) {
        let connection = match upstream::connect(
            &upstream.target,
            &shared.client,
            shared.config.relay.max_server_message,
        ) {
            Ok(connection) => connection,
            Err(error) => {
                tracing::error!(upstream = %upstream.name, %error, "cannot reach the upstream");
                self.link_ended(index, Ended::ServerClosed);
                return;
            }
        };
        let mut config: Config = shared.config.relay.clone();
        config.server = upstream.name.clone();
        config.via = "custody gateway".into();
        config.session_id = Some(session_id.to_owned());
        let decide: Arc<dyn Decide> = match &shared.decide {
            Some(first) => Arc::new(Strictest(vec![
                first.clone(),
                Arc::new(upstream.rules.clone()),
            ])),
            None => Arc::new(upstream.rules.clone()),
        };
        let gateway = Gateway::new(
            decide,
            identity.clone(),
            shared.approvals.clone(),
            recorder.clone(),
            config,
        );
        let (to_mux, from_relay) = mpsc::channel(64);
        let client = Pipe::Messages {
            input: lines,
            output: to_mux,
        };
        let killing = gateway.killing();
        let reader = tokio::spawn(self.clone().read_relay(index, from_relay, killing));
        tokio::spawn(async move {
            let upstream::Connection { pipe, keep } = connection;
            let ended = gateway.relay_pipes(client, pipe, DRAIN).await;
            drop(keep);
            // The relay's last answers (a killed call's refusal, the calls
            // failed with it) are on their way to the client: let them
            // arrive before the session's remains are failed.
            let _ = tokio::time::timeout(DRAIN, reader).await;
            self.link_ended(index, ended);
        });
    }

    async fn read_relay(
        self: Arc<Self>,
        index: usize,
        mut from_relay: mpsc::Receiver<Vec<u8>>,
        killing: Arc<std::sync::OnceLock<String>>,
    ) {
        while let Some(line) = from_relay.recv().await {
            // A kill is in force for the agent before its refusal reaches
            // the client; then the session is torn down.
            let killed = killing.get().filter(|_| self.ended().is_none());
            if let Some(why) = killed {
                self.mark_ended(End::Killed(why.clone()));
                if let Some(shared) = self.shared.upgrade() {
                    shared.note_killed(&self.owner, &self.chain, why);
                }
            }
            self.upstream_message(index, line).await;
            if let Some(why) = killed {
                self.end(End::Killed(why.clone()));
            }
        }
    }

    fn link_ended(&self, index: usize, ended: Ended) {
        if let Some(link) = self.links.get(index) {
            link.alive.store(false, Ordering::Release);
            tracing::info!(upstream = %link.name, ?ended, "an upstream's relay ended");
        }
        match ended {
            Ended::Killed(why) => self.end(End::Killed(why)),
            Ended::ClientClosed | Ended::ServerClosed => {
                if self.links.iter().all(|l| !l.alive.load(Ordering::Acquire)) {
                    self.end(End::Closed("every upstream of the session ended".into()));
                }
            }
        }
    }

    /// Marks the session ended (the first end is the one kept); its
    /// lookups fail from now on.
    fn mark_ended(&self, end: End) {
        self.ended.send_if_modified(|ended| {
            if ended.is_some() {
                return false;
            }
            *ended = Some(end);
            true
        });
    }

    /// Ends the session: the relays' inputs close (each fails what it has
    /// in flight), and what still waits is failed.
    pub(crate) fn end(&self, end: End) {
        // The owner is refused before the session reads as ended, so that
        // a request arriving meanwhile hears of the kill, not of a session
        // gone missing.
        if let (End::Killed(why), Some(shared)) = (&end, self.shared.upgrade()) {
            shared.note_killed(&self.owner, &self.chain, why);
        }
        self.mark_ended(end);
        if self.torn_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(end) = self.ended() else {
            return;
        };
        for link in &self.links {
            link.input
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        let (code, why) = end.refusal();
        let (waiting, fanouts) = {
            let mut state = self.state();
            state.general = None;
            (
                std::mem::take(&mut state.waiting),
                std::mem::take(&mut state.fanouts),
            )
        };
        let failed = waiting
            .into_iter()
            .map(|(id, w)| (id, w.stream))
            .chain(fanouts.into_iter().map(|(id, f)| (id, f.stream)));
        for (id, stream) in failed {
            let answer = decode::error_response(Some(id.value()), code, &why, None);
            let _ = stream.try_send(Out::Answer(answer));
        }
        // A kill ends every session of the agent, and refuses new ones.
        if let (End::Killed(why), Some(shared)) = (&end, self.shared.upgrade()) {
            shared.kill_owner(&self.owner, &self.chain, why);
        }
    }

    /// How the session ended, once it has.
    pub(crate) fn ended(&self) -> Option<End> {
        self.ended.borrow().clone()
    }

    /// When the client last used the session.
    pub(crate) fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the session's GET stream (replacing one already open) and
    /// hands it what waited for it.
    pub(crate) fn listen(&self, stream: Stream) {
        let mut state = self.state();
        for message in state.backlog.drain(..) {
            if stream.try_send(Out::Message(message)).is_err() {
                break;
            }
        }
        state.general = Some(stream);
    }

    /// Takes one decoded client message; answers to requests arrive on
    /// `stream`. Returns how many answers to wait for.
    pub(crate) async fn submit(
        &self,
        message: ClientMessage,
        raw: &[u8],
        stream: &Stream,
    ) -> usize {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        match message {
            ClientMessage::Request(request) => {
                match self.ended() {
                    None => self.request(request, stream).await,
                    Some(end) => {
                        let (code, why) = end.refusal();
                        self.answer_now(stream, &request.id, code, &why).await;
                    }
                }
                1
            }
            ClientMessage::Notification { method, params } => {
                self.notification(&method, params).await;
                0
            }
            ClientMessage::Response { .. } => {
                if let Ok(Value::Object(message)) = serde_json::from_slice(raw) {
                    self.client_response(message).await;
                }
                0
            }
        }
    }

    /// The client's answer to an upstream's request: back to that upstream,
    /// under the id it gave.
    async fn client_response(&self, mut message: Map<String, Value>) {
        let Some(ours) = message.get("id").and_then(Value::as_u64) else {
            tracing::warn!("dropped a client answer to no request of the gateway's");
            return;
        };
        let Some((index, theirs, _)) = self.state().server_requests.remove(&ours) else {
            tracing::warn!(id = ours, "dropped a client answer to no request in flight");
            return;
        };
        message.insert("id".into(), theirs);
        if let (Some(link), Ok(line)) = (
            self.links.get(index),
            serde_json::to_vec(&Value::Object(message)),
        ) {
            self.send(link, line).await;
        }
    }

    async fn send(&self, link: &Link, line: Vec<u8>) -> bool {
        match link.sender() {
            Some(sender) => sender.send(line).await.is_ok(),
            None => false,
        }
    }

    async fn answer_now(&self, stream: &Stream, id: &Id, code: i64, why: &str) {
        let answer = decode::error_response(Some(id.value()), code, why, None);
        let _ = stream.send(Out::Answer(answer)).await;
    }

    async fn request(&self, request: Request, stream: &Stream) {
        let busy = {
            let state = self.state();
            state.waiting.contains_key(&request.id) || state.fanouts.contains_key(&request.id)
        };
        if busy {
            let why = format!("the request id {} is already in flight", request.id);
            return self
                .answer_now(stream, &request.id, decode::INVALID_REQUEST, &why)
                .await;
        }
        if self.transparent {
            let progress = progress_token(request.params.as_ref());
            return self
                .direct(0, request.id, request.canonical, progress, stream)
                .await;
        }
        let method = request.method.as_str();
        if method == "ping" {
            let answer = json!({"jsonrpc": "2.0", "id": request.id.value(), "result": {}});
            let answer = serde_json::to_vec(&answer).unwrap_or_default();
            let _ = stream.send(Out::Answer(answer)).await;
            return;
        }
        if FANNED_OUT.contains(&method) {
            return self.fan_out(request, stream).await;
        }
        let routed = match method {
            "tools/call" | "prompts/get" => self.by_name(&request),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                self.by_uri(request.uri())
            }
            "completion/complete" => self.by_reference(&request),
            _ => Err((
                METHOD_NOT_FOUND,
                format!("no upstream of this gateway serves `{method}`"),
            )),
        };
        match routed {
            Ok((index, params)) => {
                // Routing renames the tool, prompt or reference only: the
                // progress token is the request's.
                let progress = progress_token(request.params.as_ref());
                let line = match params {
                    Some(params) => with_params(&request, params),
                    None => request.canonical,
                };
                self.direct(index, request.id, line, progress, stream).await;
            }
            Err((code, why)) => self.answer_now(stream, &request.id, code, &why).await,
        }
    }

    /// Sends a request to one upstream (`progress`: its progress token);
    /// its answer goes to `stream`.
    async fn direct(
        &self,
        index: usize,
        id: Id,
        line: Vec<u8>,
        progress: Option<String>,
        stream: &Stream,
    ) {
        let Some(link) = self.links.get(index) else {
            return;
        };
        {
            let mut state = self.state();
            state.order += 1;
            let order = state.order;
            if let Some(token) = &progress {
                state.progress.insert(token.clone(), id.clone());
            }
            state.waiting.insert(
                id.clone(),
                Waiter {
                    upstream: index,
                    stream: stream.clone(),
                    order,
                    progress,
                },
            );
        }
        if !self.send(link, line).await {
            let waiter = self.state().waiting.remove(&id);
            if waiter.is_some() {
                let why = format!("the upstream `{}` is not available", link.name);
                self.answer_now(stream, &id, SERVER_GONE, &why).await;
            }
        }
    }

    /// The upstream a listed tool or prompt name is for: the one whose
    /// prefix it carries, with its own name there; else the upstream
    /// without a prefix, with the name as it is.
    fn owner_of<'n>(&self, name: &'n str) -> Option<(usize, Option<&'n str>)> {
        self.links
            .iter()
            .enumerate()
            .filter(|(_, link)| !link.prefix.is_empty())
            .find_map(|(index, link)| Some((index, Some(name.strip_prefix(&link.prefix)?))))
            .or_else(|| {
                let index = self.links.iter().position(|l| l.prefix.is_empty())?;
                Some((index, None))
            })
    }

    /// `tools/call` and `prompts/get`: the upstream whose prefix the name
    /// carries, and the params with the upstream's own name.
    fn by_name(&self, request: &Request) -> Result<(usize, Option<Value>), (i64, String)> {
        let what = if request.method == "tools/call" {
            "tool"
        } else {
            "prompt"
        };
        let name = request
            .name()
            .ok_or_else(|| (INVALID_PARAMS, format!("the request names no {what}")))?;
        match self.owner_of(name) {
            Some((index, Some(own))) => {
                let mut params = request.params.clone().unwrap_or_else(|| json!({}));
                if let Some(map) = params.as_object_mut() {
                    map.insert("name".into(), Value::from(own));
                }
                Ok((index, Some(params)))
            }
            Some((index, None)) => Ok((index, None)),
            None => Err((
                INVALID_PARAMS,
                format!("no upstream has the {what} `{name}`"),
            )),
        }
    }

    fn by_uri(&self, uri: Option<&str>) -> Result<(usize, Option<Value>), (i64, String)> {
        let uri = uri.ok_or_else(|| (INVALID_PARAMS, "the request names no uri".to_owned()))?;
        let state = self.state();
        if let Some(index) = state.resources.get(uri) {
            return Ok((*index, None));
        }
        let templated = state
            .templates
            .iter()
            .filter(|(start, _)| uri.starts_with(start.as_str()))
            .max_by_key(|(start, _)| start.len());
        if let Some((_, index)) = templated {
            return Ok((*index, None));
        }
        if self.links.len() == 1 {
            return Ok((0, None));
        }
        // -32002: the resource-not-found code of the MCP specification.
        Err((
            -32002,
            format!("no upstream listed the resource `{uri}`; list the resources first"),
        ))
    }

    fn by_reference(&self, request: &Request) -> Result<(usize, Option<Value>), (i64, String)> {
        let reference = request.params.as_ref().and_then(|p| p.get("ref"));
        match reference
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str)
        {
            Some("ref/prompt") => {
                let name = reference
                    .and_then(|r| r.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match self.owner_of(name) {
                    Some((index, Some(own))) => {
                        let mut params = request.params.clone().unwrap_or_default();
                        if let Some(r) = params.get_mut("ref").and_then(Value::as_object_mut) {
                            r.insert("name".into(), Value::from(own));
                        }
                        Ok((index, Some(params)))
                    }
                    Some((index, None)) => Ok((index, None)),
                    None => Err((
                        INVALID_PARAMS,
                        format!("no upstream has the prompt `{name}`"),
                    )),
                }
            }
            _ => self.by_uri(reference.and_then(|r| r.get("uri")).and_then(Value::as_str)),
        }
    }

    /// Sends a request to every upstream (or those a cursor names) and
    /// answers once all have.
    async fn fan_out(&self, request: Request, stream: &Stream) {
        let cursor = request
            .params
            .as_ref()
            .and_then(|p| p.get("cursor"))
            .and_then(Value::as_str);
        let targets: Vec<(usize, Option<String>)> = match cursor {
            Some(cursor) => match decode_cursor(cursor) {
                Some(targets) => targets,
                None => {
                    return self
                        .answer_now(
                            stream,
                            &request.id,
                            INVALID_PARAMS,
                            "the cursor is not valid",
                        )
                        .await;
                }
            },
            None => (0..self.links.len()).map(|i| (i, None)).collect(),
        };
        let targets: Vec<(usize, Option<String>)> = targets
            .into_iter()
            .filter(|(i, _)| self.links.get(*i).is_some_and(|l| l.sender().is_some()))
            .collect();
        if targets.is_empty() {
            let why = "no upstream of this session is available";
            return self.answer_now(stream, &request.id, SERVER_GONE, why).await;
        }
        let requested = (request.method == "initialize")
            .then(|| {
                request
                    .params
                    .as_ref()
                    .and_then(|p| p.get("protocolVersion"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .flatten();
        {
            let mut state = self.state();
            state.order += 1;
            let order = state.order;
            state.fanouts.insert(
                request.id.clone(),
                Fanout {
                    method: request.method.clone(),
                    asked: targets.iter().map(|(i, _)| *i).collect(),
                    answers: Vec::new(),
                    stream: stream.clone(),
                    order,
                    requested,
                },
            );
        }
        for (index, cursor) in targets {
            let mut params = request.params.clone().unwrap_or_else(|| json!({}));
            if let Some(map) = params.as_object_mut() {
                match cursor {
                    Some(cursor) => map.insert("cursor".into(), Value::from(cursor)),
                    None => map.remove("cursor"),
                };
            }
            let params =
                (request.params.is_some() || params.get("cursor").is_some()).then_some(params);
            let line = match params {
                Some(params) => with_params(&request, params),
                None => request.canonical.clone(),
            };
            let Some(link) = self.links.get(index) else {
                continue;
            };
            if !self.send(link, line).await {
                let why = format!("the upstream `{}` is not available", link.name);
                let failed = json!({"jsonrpc": "2.0", "id": request.id.value(),
                    "error": {"code": SERVER_GONE, "message": why}});
                self.gathered(index, request.id.clone(), failed).await;
            }
        }
    }

    async fn notification(&self, method: &str, params: Option<Value>) {
        let mut message = json!({"jsonrpc": "2.0", "method": method});
        if let (Some(params), Some(map)) = (&params, message.as_object_mut()) {
            map.insert("params".into(), params.clone());
        }
        let line = serde_json::to_vec(&message).unwrap_or_default();
        if method == "notifications/cancelled" {
            let Some(id) = params
                .as_ref()
                .and_then(|p| p.get("requestId"))
                .and_then(Id::from_value)
            else {
                return;
            };
            // The client stopped waiting: its stream ends without an answer,
            // and the upstreams it went to are told.
            let targets: Vec<usize> =
                match (self.take_waiter(&id), self.state().fanouts.remove(&id)) {
                    (Some(waiter), _) => vec![waiter.upstream],
                    (None, Some(fanout)) => fanout.asked,
                    (None, None) => Vec::new(),
                };
            for index in targets {
                if let Some(link) = self.links.get(index) {
                    self.send(link, line.clone()).await;
                }
            }
            return;
        }
        for link in &self.links {
            self.send(link, line.clone()).await;
        }
    }

    /// A message from upstream `index`'s relay.
    async fn upstream_message(&self, index: usize, line: Vec<u8>) {
        // Most are answers to one request: read only their id, without
        // building the whole message, and pass them on as they came.
        if let Some(id) = answer_id(&line)
            && !self.state().fanouts.contains_key(&id)
        {
            return self.answer_waiter(id, line).await;
        }
        let Ok(Value::Object(mut message)) = serde_json::from_slice::<Value>(&line) else {
            tracing::warn!("dropped an upstream message that is not a JSON object");
            return;
        };
        let id = message.get("id").and_then(Id::from_value);
        let is_request = message.contains_key("method");
        match (is_request, id) {
            (false, Some(id)) => {
                let fanned = self.state().fanouts.contains_key(&id);
                if fanned {
                    return self.gathered(index, id, Value::Object(message)).await;
                }
                self.answer_waiter(id, line).await;
            }
            (true, Some(theirs)) => {
                let (ours, expired) = self.note_server_request(index, &theirs);
                for (i, theirs) in expired {
                    let why = "the client did not answer in time";
                    let answer =
                        decode::error_response(Some(&theirs), crate::relay::TIMED_OUT, why, None);
                    if let Some(link) = self.links.get(i) {
                        self.send(link, answer).await;
                    }
                }
                let Some(ours) = ours else {
                    let why = "the client has too many of the server's requests unanswered";
                    let answer = decode::error_response(
                        Some(theirs.value()),
                        crate::relay::TOO_MANY,
                        why,
                        None,
                    );
                    if let Some(link) = self.links.get(index) {
                        self.send(link, answer).await;
                    }
                    return;
                };
                message.insert("id".into(), Value::from(ours));
                let line = serde_json::to_vec(&Value::Object(message)).unwrap_or(line);
                self.route(index, line, None);
            }
            (true, None) => {
                let token = progress_token(message.get("params"));
                self.route(index, line, token);
            }
            (false, None) => tracing::warn!("dropped an upstream message without id or method"),
        }
    }

    /// An upstream's answer to the client's request `id`, to the stream
    /// waiting for it.
    async fn answer_waiter(&self, id: Id, line: Vec<u8>) {
        match self.take_waiter(&id) {
            Some(waiter) => {
                let _ = waiter.stream.send(Out::Answer(line)).await;
            }
            None => tracing::warn!(%id, "dropped an answer no client request waits for"),
        }
    }

    /// The request `id` no longer waited for, with its progress token.
    fn take_waiter(&self, id: &Id) -> Option<Waiter> {
        let mut state = self.state();
        let waiter = state.waiting.remove(id)?;
        if let Some(token) = &waiter.progress {
            state.progress.remove(token);
        }
        Some(waiter)
    }

    /// Gives an upstream's request an id of the gateway's, unless the
    /// client has too many unanswered; forgets those unanswered too long,
    /// returned so that their upstreams are told.
    fn note_server_request(&self, index: usize, theirs: &Id) -> (Option<u64>, Vec<(usize, Value)>) {
        let mut state = self.state();
        let timeout = self.call_timeout;
        let stale: Vec<u64> = state
            .server_requests
            .iter()
            .filter(|(_, (_, _, at))| at.elapsed() > timeout)
            .map(|(ours, _)| *ours)
            .collect();
        let expired = stale
            .into_iter()
            .filter_map(|ours| state.server_requests.remove(&ours))
            .map(|(i, theirs, _)| (i, theirs))
            .collect();
        if state.server_requests.len() >= SERVER_REQUESTS {
            return (None, expired);
        }
        state.next_server_id += 1;
        let ours = state.next_server_id;
        state
            .server_requests
            .insert(ours, (index, theirs.value().clone(), Instant::now()));
        (Some(ours), expired)
    }

    /// Sends what an upstream sent unasked to the stream it belongs to.
    fn route(&self, index: usize, line: Vec<u8>, token: Option<String>) {
        let mut state = self.state();
        let by_token = token
            .and_then(|t| state.progress.get(&t).cloned())
            .and_then(|id| state.waiting.get(&id).map(|w| w.stream.clone()));
        let newest = || {
            let waiting = state
                .waiting
                .values()
                .filter(|w| w.upstream == index)
                .map(|w| (w.order, &w.stream));
            let fanned = state
                .fanouts
                .values()
                .filter(|f| f.asked.contains(&index))
                .map(|f| (f.order, &f.stream));
            waiting
                .chain(fanned)
                .filter(|(_, s)| !s.is_closed())
                .max_by_key(|(order, _)| *order)
                .map(|(_, s)| s.clone())
        };
        let stream = by_token
            .or_else(newest)
            .or_else(|| state.general.clone().filter(|s| !s.is_closed()));
        let line = match stream {
            Some(stream) => match stream.try_send(Out::Message(line)) {
                Ok(()) => return,
                Err(
                    mpsc::error::TrySendError::Full(Out::Message(line))
                    | mpsc::error::TrySendError::Closed(Out::Message(line)),
                ) => line,
                Err(_) => return,
            },
            None => line,
        };
        if state.backlog.len() >= BACKLOG {
            state.backlog.pop_front();
            tracing::warn!("dropped the oldest message waiting for the client's GET stream");
        }
        state.backlog.push_back(line);
    }

    /// One upstream's answer to a fanned-out request; the merged answer
    /// goes out once every upstream asked has answered.
    async fn gathered(&self, index: usize, id: Id, answer: Value) {
        let done = {
            let mut state = self.state();
            let Some(fanout) = state.fanouts.get_mut(&id) else {
                return;
            };
            fanout.answers.push((index, answer));
            if fanout.answers.len() < fanout.asked.len() {
                return;
            }
            state.fanouts.remove(&id)
        };
        let Some(fanout) = done else {
            return;
        };
        let merged = self.merge(&id, &fanout);
        let _ = fanout.stream.send(Out::Answer(merged)).await;
    }

    fn merge(&self, id: &Id, fanout: &Fanout) -> Vec<u8> {
        let mut results = Vec::new();
        let mut first_error = None;
        for (index, answer) in &fanout.answers {
            match answer.get("result").and_then(Value::as_object) {
                Some(result) => results.push((*index, result.clone())),
                None => {
                    if fanout.method == "initialize"
                        && let Some(link) = self.links.get(*index)
                    {
                        tracing::error!(upstream = %link.name, error = ?answer.get("error"), "an upstream refused to initialize; the session goes on without it");
                        link.alive.store(false, Ordering::Release);
                    }
                    first_error.get_or_insert_with(|| answer.get("error").cloned());
                }
            }
        }
        results.sort_by_key(|(index, _)| *index);
        if results.is_empty() {
            let error = first_error
                .flatten()
                .unwrap_or_else(|| json!({"code": SERVER_GONE, "message": "no upstream answered"}));
            return serde_json::to_vec(
                &json!({"jsonrpc": "2.0", "id": id.value(), "error": error}),
            )
            .unwrap_or_default();
        }
        let result = match fanout.method.as_str() {
            "initialize" => self.merge_initialize(&results, fanout.requested.as_deref()),
            "server/discover" => self.merge_discover(&results),
            "logging/setLevel" => Map::new(),
            method => self.merge_list(method, &results),
        };
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id.value(), "result": result}))
            .unwrap_or_default()
    }

    fn merge_initialize(
        &self,
        results: &[(usize, Map<String, Value>)],
        requested: Option<&str>,
    ) -> Map<String, Value> {
        let versions: Vec<&str> = results
            .iter()
            .filter_map(|(_, r)| r.get("protocolVersion").and_then(Value::as_str))
            .collect();
        // Every upstream must speak the version the session uses: the one
        // asked for if all agreed to it, else the oldest any answered.
        let version = match requested {
            Some(asked) if versions.iter().all(|v| *v == asked) => asked.to_owned(),
            _ => versions
                .iter()
                .min()
                .map(|v| (*v).to_owned())
                .unwrap_or_default(),
        };
        let mut merged = Map::new();
        merged.insert("protocolVersion".into(), Value::from(version));
        merged.insert("capabilities".into(), merge_capabilities(results));
        merged.insert("serverInfo".into(), server_info());
        if let Some(instructions) = self.instructions(results) {
            merged.insert("instructions".into(), Value::from(instructions));
        }
        merged
    }

    fn merge_discover(&self, results: &[(usize, Map<String, Value>)]) -> Map<String, Value> {
        let mut merged = results.first().map(|(_, r)| r.clone()).unwrap_or_default();
        let supported = |r: &Map<String, Value>| -> Vec<String> {
            r.get("supportedVersions")
                .and_then(Value::as_array)
                .map(|v| {
                    v.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut versions = results
            .first()
            .map(|(_, r)| supported(r))
            .unwrap_or_default();
        for (_, result) in results.iter().skip(1) {
            let theirs = supported(result);
            versions.retain(|v| theirs.contains(v));
        }
        merged.insert("supportedVersions".into(), Value::from(versions));
        merged.insert("capabilities".into(), merge_capabilities(results));
        match self.instructions(results) {
            Some(instructions) => merged.insert("instructions".into(), Value::from(instructions)),
            None => merged.remove("instructions"),
        };
        let meta = merged.entry("_meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("io.modelcontextprotocol/serverInfo".into(), server_info());
        }
        merged
    }

    fn instructions(&self, results: &[(usize, Map<String, Value>)]) -> Option<String> {
        let parts: Vec<String> = results
            .iter()
            .filter_map(|(index, r)| {
                let text = r.get("instructions")?.as_str()?;
                let link = self.links.get(*index)?;
                Some(format!("[{}] {text}", link.name))
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    fn merge_list(
        &self,
        method: &str,
        results: &[(usize, Map<String, Value>)],
    ) -> Map<String, Value> {
        let key = match method {
            "tools/list" => "tools",
            "prompts/list" => "prompts",
            "resources/list" => "resources",
            _ => "resourceTemplates",
        };
        let mut items = Vec::new();
        let mut cursors = Vec::new();
        let mut state = self.state();
        for (index, result) in results {
            let Some(link) = self.links.get(*index) else {
                continue;
            };
            if let Some(next) = result.get("nextCursor").and_then(Value::as_str) {
                cursors.push((*index, Some(next.to_owned())));
            }
            let listed = result
                .get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for mut item in listed {
                match key {
                    "tools" | "prompts" => {
                        if let Some(map) = item.as_object_mut()
                            && let Some(name) = map.get("name").and_then(Value::as_str)
                        {
                            let named = format!("{}{name}", link.prefix);
                            map.insert("name".into(), Value::from(named));
                        }
                    }
                    "resources" => {
                        if let Some(uri) = item.get("uri").and_then(Value::as_str) {
                            state.resources.insert(uri.to_owned(), *index);
                        }
                    }
                    _ => {
                        if let Some(template) = item.get("uriTemplate").and_then(Value::as_str) {
                            let start = template.split('{').next().unwrap_or_default().to_owned();
                            if !state
                                .templates
                                .iter()
                                .any(|(s, i)| *s == start && i == index)
                            {
                                state.templates.push((start, *index));
                            }
                        }
                    }
                }
                items.push(item);
            }
        }
        // Bounded memory: a session listing without end keeps the latest.
        if state.resources.len() > 100_000 {
            state.resources.clear();
        }
        state.templates.truncate(10_000);
        drop(state);
        let mut merged = Map::new();
        merged.insert(key.into(), Value::Array(items));
        if !cursors.is_empty() {
            merged.insert("nextCursor".into(), Value::from(encode_cursor(&cursors)));
        }
        merged
    }
}

fn server_info() -> Value {
    json!({"name": "custody-gateway", "version": env!("CARGO_PKG_VERSION")})
}

/// The union of the upstreams' capabilities: a capability any upstream
/// has, with each flag (`listChanged`, `subscribe`) set if any sets it.
fn merge_capabilities(results: &[(usize, Map<String, Value>)]) -> Value {
    let mut merged = Map::new();
    for (_, result) in results {
        let Some(capabilities) = result.get("capabilities").and_then(Value::as_object) else {
            continue;
        };
        for (name, value) in capabilities {
            let slot = merged.entry(name.clone()).or_insert_with(|| json!({}));
            if let (Some(slot), Some(value)) = (slot.as_object_mut(), value.as_object()) {
                for (flag, set) in value {
                    let keep = slot.get(flag).is_some_and(|v| v.as_bool() == Some(true));
                    if !keep {
                        slot.insert(flag.clone(), set.clone());
                    }
                }
            }
        }
    }
    Value::Object(merged)
}

fn with_params(request: &Request, params: Value) -> Vec<u8> {
    let message = json!({
        "jsonrpc": "2.0",
        "id": request.id.value(),
        "method": request.method,
        "params": params,
    });
    serde_json::to_vec(&message).unwrap_or_else(|_| request.canonical.clone())
}

/// The id of a message that is an answer (an object with an `id` and no
/// `method`), read without building the message; `None` for anything
/// else, or anything this quick reading cannot settle (a key given twice,
/// say), which is then read in full.
fn answer_id(line: &[u8]) -> Option<Id> {
    /// Present, whatever its value (`null` included).
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        <Value as serde::Deserialize>::deserialize(d).map(Some)
    }
    fn present_any<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
        <serde::de::IgnoredAny as serde::Deserialize>::deserialize(d).map(|_| Some(()))
    }
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(default, deserialize_with = "present")]
        id: Option<Value>,
        #[serde(default, deserialize_with = "present_any")]
        method: Option<()>,
    }
    // Only an object: a derived struct would also read an array.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let peek: Peek = serde_json::from_slice(line).ok()?;
    if peek.method.is_some() {
        return None;
    }
    Id::from_value(&peek.id?)
}

fn progress_token(params: Option<&Value>) -> Option<String> {
    let token = params?.get("_meta")?.get("progressToken")?;
    Some(token.to_string())
}

fn encode_cursor(cursors: &[(usize, Option<String>)]) -> String {
    let list: Vec<Value> = cursors.iter().map(|(i, c)| json!([i, c])).collect();
    let text = serde_json::to_vec(&list).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(cursor: &str) -> Option<Vec<(usize, Option<String>)>> {
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let list: Vec<(usize, Option<String>)> = serde_json::from_slice(&text).ok()?;
    (!list.is_empty()).then_some(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_from_the_rest_by_their_id_and_no_method() {
        let id = |line: &str| answer_id(line.as_bytes());
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#),
            Id::from_value(&json!(7))
        );
        assert_eq!(id(r#" {"error":{},"id":"a"}"#), Id::from_value(&json!("a")));
        // Requests, notifications, odd ids and anything unsure are read
        // in full.
        assert_eq!(id(r#"{"id":7,"method":"sampling/createMessage"}"#), None);
        assert_eq!(id(r#"{"id":7,"method":null}"#), None);
        assert_eq!(id(r#"{"method":"notifications/progress"}"#), None);
        assert_eq!(id(r#"{"id":null,"result":{}}"#), None);
        assert_eq!(id(r#"{"id":1.5,"result":{}}"#), None);
        assert_eq!(id(r#"{"id":1,"id":2,"result":{}}"#), None);
        assert_eq!(id(r#"[7,null]"#), None);
        assert_eq!(id("not json"), None);
    }

    #[test]
    fn cursors_name_the_upstreams_they_continue() {
        let cursors = vec![(0, Some("page-2".to_owned())), (3, None)];
        assert_eq!(decode_cursor(&encode_cursor(&cursors)), Some(cursors));
        assert_eq!(decode_cursor("not a cursor"), None);
        assert_eq!(decode_cursor(&encode_cursor(&[])), None);
    }

    #[test]
    fn capabilities_are_the_union_of_the_upstreams() {
        let a = json!({"capabilities": {"tools": {"listChanged": false}, "logging": {}}});
        let b = json!({"capabilities": {"tools": {"listChanged": true}, "resources": {"subscribe": true}}});
        let results = vec![
            (0, a.as_object().unwrap().clone()),
            (1, b.as_object().unwrap().clone()),
        ];
        assert_eq!(
            merge_capabilities(&results),
            json!({"tools": {"listChanged": true}, "logging": {}, "resources": {"subscribe": true}})
        );
    }
}
