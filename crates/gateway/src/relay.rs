//! The stdio relay: lines between the client (the MCP host) and the server
//! (the wrapped child), with the layer stack on every client request.
//!
//! Each direction has its own id space. A request the client sends is
//! tracked by its id until the server answers it; a request the server
//! sends (sampling, elicitation, roots) is tracked by its id until the
//! client answers it. Ids pass through unchanged, so progress tokens and
//! cancellations keep meaning what they meant; an answer is only relayed
//! to the side that is waiting for it, so the client's request 1 and the
//! server's request 1 never meet. A client may not reuse an id still in
//! flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use custody_engine::{Decide, Decision, Engine, ReasonSource, Verdict};
use custody_event::{
    Context, EventId, EventKind, NewEvent, Outcome, OutcomeStatus, Source, SourceKind, Target,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::approval::{Approval, Approvals, HeldCall};
use crate::decode::{self, ClientMessage, DecodeError, Id, Request, ServerMessage};
use crate::identity::Identity;
use crate::outbox::{Outbox, RecordFailure, Recorder};
use crate::redact;
use crate::tools::{self, Catalog, ChangedDefinitions, Definition};

/// JSON-RPC error code of a call Custody refused.
pub const DENIED: i64 = -32001;
/// JSON-RPC error code of a call failed because Custody ended the session.
pub const KILLED: i64 = -32002;
/// JSON-RPC error code of a call the server ended without answering.
pub const SERVER_GONE: i64 = -32003;
/// JSON-RPC error code of a request the server did not answer in time.
pub const TIMED_OUT: i64 = -32004;
/// JSON-RPC error code of a request refused because the client has too
/// many in flight.
pub const TOO_MANY: i64 = -32005;

/// The largest redacted arguments kept in an event, serialized; larger
/// ones keep their digest and size only.
const MAX_KEPT_ARGUMENTS: usize = 16 << 10;
/// Events waiting for the recorder before new calls are refused.
const OUTBOX_CAPACITY: usize = 4096;
/// Lines waiting to be written to either side.
const LINES_QUEUED: usize = 64;
/// Bytes waiting to be written to either side: a reader waits for room
/// (and stops reading its peer) beyond it. A single longer line is let
/// through alone.
const BYTES_QUEUED: usize = 8 << 20;
/// Requests that timed out whose late answers are still expected and
/// dropped; beyond it the oldest are forgotten.
const EXPIRED_KEPT: usize = 4096;

/// How a gateway behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The wrapped server's name, recorded as the calls' target server.
    pub server: String,
    /// The largest message a client may send, in bytes.
    pub max_message: usize,
    /// The largest message the server may send, in bytes.
    pub max_server_message: usize,
    /// How long a call is held for approval before it is refused.
    pub hold_timeout: Duration,
    /// Forward calls when Custody cannot decide or record them, instead
    /// of refusing them.
    pub fail_open: bool,
    /// How long a request forwarded to the server waits for its answer
    /// before the client is told it timed out.
    pub call_timeout: Duration,
    /// The client's requests in flight (held or forwarded) beyond which
    /// new ones are refused.
    pub max_in_flight: usize,
    /// What relays the calls, recorded as the events' source
    /// (`custody wrap`, `custody gateway`).
    pub via: String,
    /// The session the events belong to; a fresh `wrap-<uuid>` when unset.
    pub session_id: Option<String>,
}

impl Config {
    /// The defaults for a server named `server`: 4 MiB messages from the
    /// client, 64 MiB from the server, five minutes' hold, two minutes for
    /// an answer, 64 requests in flight, fail closed.
    pub fn new(server: impl Into<String>) -> Config {
        Config {
            server: server.into(),
            max_message: decode::DEFAULT_MAX_MESSAGE,
            max_server_message: 64 << 20,
            hold_timeout: Duration::from_secs(300),
            fail_open: false,
            call_timeout: Duration::from_secs(120),
            max_in_flight: 64,
            via: "custody wrap".into(),
            session_id: None,
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The client closed its input; the server's answers were relayed
    /// until it closed its output.
    ClientClosed,
    /// The server closed its output.
    ServerClosed,
    /// A decision ended the session.
    Killed(String),
}

/// A gateway in front of one server: the engine that decides, the
/// identity calls are made by, and where they are recorded.
pub struct Gateway {
    session: Session,
    delivering: JoinHandle<()>,
    on_kill: watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("identity", &self.session.identity)
            .field("config", &self.session.config)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway deciding with `decide`, for calls by `identity`, holding
    /// calls on `approvals` and recording into `recorder`. Starts the
    /// outbox's task: call it inside a Tokio runtime.
    pub fn new(
        decide: impl Decide + 'static,
        identity: Identity,
        approvals: Arc<dyn Approvals>,
        recorder: Arc<dyn Recorder>,
        config: Config,
    ) -> Gateway {
        let (outbox, delivering) = Outbox::start(recorder, OUTBOX_CAPACITY);
        // The engine's record stage is the outbox: it refuses room while
        // recording fails, which is how a call is refused when it could
        // not be recorded. Its detect stage signals calls to tools whose
        // definitions changed; the decide stage weighs that.
        let engine = Engine::builder(Arc::new(outbox.clone()))
            .detect(ChangedDefinitions)
            .decide(decide)
            .build();
        let (killed, on_kill) = watch::channel(None);
        let id = config
            .session_id
            .clone()
            .unwrap_or_else(|| format!("wrap-{}", EventId::new_v7()));
        let session = Session {
            engine,
            identity,
            approvals,
            outbox,
            config,
            id,
            to_client: Mutex::new(None),
            to_server: Mutex::new(None),
            state: Mutex::new(State::default()),
            killed,
            killing: Arc::default(),
            closing: watch::Sender::new(false),
            deadline_added: Notify::new(),
        };
        Gateway {
            session,
            delivering,
            on_kill,
        }
    }

    /// Set with the reason once a decision kills the session, before the
    /// client is told: whoever relays the client's messages checks it
    /// before passing on what the relay sends, so that the kill is in force
    /// before the client can act on it.
    pub fn killing(&self) -> Arc<std::sync::OnceLock<String>> {
        self.session.killing.clone()
    }

    /// Relays between the client (`client_in`, `client_out`) and the
    /// server (`server_in`, `server_out`) until one side ends or a
    /// decision ends the session, then delivers what is left to record,
    /// waiting at most `drain` for the recorder.
    pub async fn relay(
        self,
        client_in: impl AsyncRead + Unpin + Send + 'static,
        client_out: impl AsyncWrite + Unpin + Send + 'static,
        server_in: impl AsyncWrite + Unpin + Send + 'static,
        server_out: impl AsyncRead + Unpin + Send + 'static,
        drain: Duration,
    ) -> Ended {
        let client = Pipe::Bytes {
            input: Box::new(client_in),
            output: Box::new(client_out),
        };
        let server = Pipe::Bytes {
            input: Box::new(server_out),
            output: Box::new(server_in),
        };
        self.relay_pipes(client, server, drain).await
    }

    /// [`Gateway::relay`] over any pipes: byte streams of lines, or
    /// channels of whole messages for peers in this process (the HTTP
    /// gateway's sessions and upstream adapters), which spare a copy and a
    /// task between the relay and each of them.
    pub async fn relay_pipes(self, client: Pipe, server: Pipe, drain: Duration) -> Ended {
        let (to_client, client_writer, client_in) = client.open();
        let (to_server, server_writer, server_out) = server.open();
        let Gateway {
            session,
            delivering,
            mut on_kill,
        } = self;
        *session
            .to_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(to_client);
        *session
            .to_server
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(to_server);
        let session = Arc::new(session);

        let mut from_client = tokio::spawn(read_client(session.clone(), client_in));
        let mut from_server = tokio::spawn(read_server(session.clone(), server_out));
        let timeouts = tokio::spawn(expire_late(session.clone()));
        let killed = async move {
            let reason = on_kill.wait_for(Option::is_some).await;
            reason
                .ok()
                .and_then(|reason| reason.clone())
                .unwrap_or_default()
        };
        let ended = tokio::select! {
            _ = &mut from_client => {
                // The stdio transport ends with the client closing the
                // server's input; the server then finishes and exits, and
                // its last answers still go to the client.
                session.close_server_input();
                let _ = tokio::time::timeout(drain, &mut from_server).await;
                Ended::ClientClosed
            }
            _ = &mut from_server => {
                session.fail_in_flight(SERVER_GONE, "the server ended before answering");
                Ended::ServerClosed
            }
            reason = killed => Ended::Killed(reason),
        };
        from_client.abort();
        from_server.abort();
        timeouts.abort();
        // Calls still in flight (the client left before they were
        // answered) are recorded as failed, and held calls stop waiting.
        session.fail_in_flight(KILLED, "the session ended before the call was answered");
        session.closing.send_replace(true);
        session.close_server_input();
        session.close_client_output();
        let outbox = session.outbox.clone();
        drop(session);
        if let Some(client_writer) = client_writer {
            let _ = tokio::time::timeout(drain, client_writer).await;
        }
        if let Some(server_writer) = server_writer {
            server_writer.abort();
        }
        // The outbox's task ends once every sender is gone and its queue
        // is delivered.
        drop(outbox);
        if tokio::time::timeout(drain, delivering).await.is_err() {
            tracing::error!("events not yet recorded when the session ended are lost");
        }
        ended
    }
}

/// What the relay shares between its tasks.
struct Session {
    engine: Engine,
    identity: Identity,
    approvals: Arc<dyn Approvals>,
    outbox: Outbox,
    config: Config,
    id: String,
    to_client: Mutex<Option<Lines>>,
    to_server: Mutex<Option<Lines>>,
    state: Mutex<State>,
    killed: watch::Sender<Option<String>>,
    /// Set before a kill's refusal is sent, for an embedder that must act
    /// on the kill before the client can send anything else.
    killing: Arc<std::sync::OnceLock<String>>,
    /// Turns true when the session ends: held calls stop waiting.
    closing: watch::Sender<bool>,
    /// Wakes the session's timer when a request is forwarded, so that it
    /// sleeps until the earliest deadline.
    deadline_added: Notify,
}

/// What is in flight, by direction, and what the session has seen.
#[derive(Default)]
struct State {
    /// The client's requests not yet answered: held or forwarded.
    client: HashMap<Id, InFlight>,
    /// The server's requests the client has not yet answered.
    server: HashSet<Id>,
    /// The client's requests that timed out, oldest first: their answers
    /// may still come and are dropped, and their ids are not reused
    /// meanwhile.
    expired: std::collections::VecDeque<Id>,
    /// Numbers the client's requests, so that a timer finds the request it
    /// was armed for and not a later one with the same id.
    admitted: u64,
    /// The forwarded requests' deadlines, earliest first, with their
    /// numbers and ids: one timer per session serves them all, rather
    /// than a task per request.
    deadlines: BTreeMap<(tokio::time::Instant, u64), Id>,
    /// The server's tools' definitions as first and last listed.
    catalog: Catalog,
}

struct InFlight {
    /// The call's event, when the request is one that is recorded.
    call: Option<Call>,
    /// Held for approval, not yet forwarded.
    held: bool,
    /// The request's number in the session.
    number: u64,
    /// A `tools/list` request: its answer is filtered and its tools'
    /// definitions noted.
    lists_tools: bool,
    /// When the request fails if the server has not answered it (once
    /// forwarded): its key in `State::deadlines`, taken out when it is
    /// answered.
    deadline: Option<tokio::time::Instant>,
}

/// Why a request was not admitted.
enum Refusal {
    /// Its id is in flight, or its timed-out namesake may still be answered.
    InFlight,
    /// The client has `max_in_flight` requests in flight.
    TooMany,
}

/// A recorded call on its way.
struct Call {
    event: NewEvent,
    started: Instant,
}

/// What the engine and the gateway made of a call.
struct Authorized {
    decision: Decision,
    /// Why the agent is told it was refused: the reasons' sentences, never
    /// the ids of the policies behind them.
    told: String,
}

impl Session {
    /// The client->server path: one request through the layer stack.
    ///
    /// The order is the point. Each layer relies on the ones above it, and
    /// none may be skipped by a message that looks different to two
    /// readers.
    async fn client_message(self: &Arc<Self>, line: Vec<u8>) {
        // 1. Decode. First, because every later layer reads the method, the
        //    tool and the arguments, and each must read exactly what the
        //    server will: one copy of every key that matters, in its exact
        //    spelling, re-serialized into the canonical bytes forwarded.
        let request = match decode::client(&line, self.config.max_message) {
            Ok(ClientMessage::Request(request)) => request,
            Ok(ClientMessage::Notification { method, params }) => {
                return self
                    .client_notification(line, &method, params.as_ref())
                    .await;
            }
            Ok(ClientMessage::Response { id }) => return self.client_response(line, id).await,
            Err(error) => return self.refuse_undecodable(error).await,
        };
        match self.admit(&request) {
            Ok(()) => {}
            Err(Refusal::InFlight) => {
                let why = format!("the request id {} is already in flight", request.id);
                let answer = decode::error_response(
                    Some(request.id.value()),
                    decode::INVALID_REQUEST,
                    &why,
                    None,
                );
                return self.send_client(answer).await;
            }
            // A client flooding the server is refused beyond the limit,
            // every excess request recorded, before anything else is spent
            // on it.
            Err(Refusal::TooMany) => {
                let event = self.event_for(&request);
                let told = format!(
                    "the client has {} requests in flight, the most this session allows",
                    self.config.max_in_flight
                );
                return self
                    .refuse(&request, event, TOO_MANY, &told, "refused")
                    .await;
            }
        }

        // 2. Authenticate. The session's identity was proved when it began
        //    (the server verified the agent token); what can change since
        //    is the server refusing that token (revoked, expired), which
        //    the outbox learns on its next delivery. Before anything is
        //    decided for a chain, the chain must still hold.
        if let Some(RecordFailure::Refused(why)) = self.outbox.failure() {
            let event = self.event_for(&request);
            let told = format!("custody refused this session's agent token: {why}");
            return self.refuse(&request, event, DENIED, &told, "deny").await;
        }

        // Only calls that act on the server's tools, resources and prompts
        // are events with decisions; the rest (initialize, discovery,
        // listing, ping) set the session up and go straight through, in
        // order, so that a notification following them cannot overtake.
        if !is_call(&request.method) {
            return self.forward(request, None).await;
        }

        // 3. Attribute. The event names the chain the identity layer
        //    vouched for, the server, the target and the arguments
        //    (digested, redacted), and whether the tool's definition changed
        //    since it was first listed, so that the decision and the record
        //    are about the same call.
        let mut event = self.event_for(&request);
        self.mark_changed(&mut event);

        // 4. Authorize, before anything reaches the server. The engine's
        //    stages run here on the request path; a panic, an engine
        //    failure or no room to record the call is a refusal unless the
        //    gateway was told to fail open.
        let (event, authorized) = self.authorize(event);

        // 5. Contain: act on the verdict. Only after authorize, because
        //    the verdict is what it carries out.
        match authorized.decision.verdict {
            Verdict::Allow | Verdict::Alert => {}
            Verdict::RequireApproval => return self.hold(request, event, authorized),
            Verdict::Kill => return self.kill(&request, event, &authorized.told).await,
            Verdict::Deny | Verdict::Quarantine | Verdict::Revoke => {
                let verdict = authorized.decision.verdict.as_str();
                return self
                    .refuse(&request, event, DENIED, &authorized.told, verdict)
                    .await;
            }
        }

        // 6. Forward the canonical bytes, never the line as it came.
        // 7. Record: armed by forward, completed with the latency and
        //    outcome when the server's answer comes back (`server_message`).
        self.forward(
            request,
            Some(Call {
                event,
                started: Instant::now(),
            }),
        )
        .await;
    }

    /// The server->client path: answers complete the client's calls and
    /// their records; everything else is relayed as it came.
    async fn server_message(&self, line: Vec<u8>) {
        match decode::server(&line) {
            ServerMessage::Request(id) => {
                self.state().server.insert(id);
            }
            ServerMessage::Response {
                id,
                error,
                tool_error,
            } => {
                let Some(in_flight) = self.answered(&id) else {
                    return;
                };
                if in_flight.lists_tools && error.is_none() {
                    let line = self.tools_listed(line);
                    return self.send_client(line).await;
                }
                if let Some(call) = in_flight.call {
                    let (status, reason) = match (error, tool_error) {
                        (Some(error), _) => (OutcomeStatus::Failure, Some(error_text(&error))),
                        (None, true) => (
                            OutcomeStatus::Failure,
                            Some("the tool reported an error".to_owned()),
                        ),
                        (None, false) => (OutcomeStatus::Success, None),
                    };
                    self.record(call, status, reason);
                }
            }
            ServerMessage::Notification | ServerMessage::Other => {}
        }
        self.send_client(line).await;
    }

    /// The request the server answered, taken out of those in flight; an
    /// answer to none, or a late one to a request that timed out, is
    /// dropped.
    fn answered(&self, id: &Id) -> Option<InFlight> {
        let mut state = self.state();
        if let Some(in_flight) = state.client.remove(id) {
            if let Some(deadline) = in_flight.deadline {
                state.deadlines.remove(&(deadline, in_flight.number));
            }
            return Some(in_flight);
        }
        if let Some(at) = state.expired.iter().position(|e| e == id) {
            state.expired.remove(at);
            tracing::info!(%id, "dropped a late answer to a request that timed out");
        } else {
            tracing::warn!(%id, "dropped an answer to no request in flight");
        }
        None
    }

    /// Notifications are relayed as they came, except a cancellation of a
    /// call still held: the server never saw that call. A cancelled request
    /// the server has is over for the client, which expects no answer: it
    /// stops counting as in flight, its call is recorded as cancelled, and
    /// an answer the server may still send is dropped (as after a timeout,
    /// its id is not reused meanwhile).
    async fn client_notification(&self, line: Vec<u8>, method: &str, params: Option<&Value>) {
        if method == "notifications/cancelled"
            && let Some(id) = params
                .and_then(|p| p.get("requestId"))
                .and_then(Id::from_value)
        {
            let mut state = self.state();
            match state.client.get(&id).map(|f| f.held) {
                Some(true) => {
                    let cancelled = state.client.remove(&id);
                    drop(state);
                    if let Some(call) = cancelled.and_then(|f| f.call) {
                        let reason = "cancelled by the client while held".to_owned();
                        self.record(call, OutcomeStatus::Failure, Some(reason));
                    }
                    return;
                }
                // A forwarded request the client cancelled is over for
                // the client: the server should not answer it, and an
                // answer that comes anyway is dropped, like a late one.
                Some(false) => {
                    let cancelled = state.client.remove(&id);
                    if let Some(InFlight {
                        deadline: Some(deadline),
                        number,
                        ..
                    }) = &cancelled
                    {
                        state.deadlines.remove(&(*deadline, *number));
                    }
                    if state.expired.len() >= EXPIRED_KEPT {
                        state.expired.pop_front();
                    }
                    state.expired.push_back(id);
                    drop(state);
                    if let Some(call) = cancelled.and_then(|c| c.call) {
                        let reason = params
                            .and_then(|p| p.get("reason"))
                            .and_then(Value::as_str)
                            .map_or_else(
                                || "cancelled by the client".to_owned(),
                                |why| format!("cancelled by the client: {}", clip(why, 512)),
                            );
                        self.record(call, OutcomeStatus::Failure, Some(reason));
                    }
                }
                None => {}
            }
        }
        self.send_server(line).await;
    }

    /// The client's answer to a server's request goes to the server only
    /// if the server is waiting for it.
    async fn client_response(&self, line: Vec<u8>, id: Id) {
        if self.state().server.remove(&id) {
            self.send_server(line).await;
        } else {
            tracing::warn!(%id, "dropped a client answer to no server request in flight");
        }
    }

    /// A server line over the limit is read past, never held, and dropped;
    /// the session goes on. It is not parsed, so the request it may have
    /// answered is not known: that one fails when its time runs out.
    fn drop_oversized(&self, limit: usize) {
        tracing::error!(limit, "dropped a server message larger than the limit");
        let mut event = self.base_event(EventKind::McpRequest, "custody/server-message-too-large");
        let why = format!("a server message exceeded {limit} bytes and was dropped");
        event.outcome = outcome(OutcomeStatus::Denied, Some(why), None);
        self.outbox.submit(event);
    }

    async fn refuse_undecodable(&self, error: DecodeError) {
        let mut event = self.base_event(EventKind::McpRequest, "invalid_message");
        event.outcome = outcome(OutcomeStatus::Denied, Some(error.message.clone()), None);
        self.outbox.submit(event);
        self.send_client(error.response()).await;
    }

    /// Takes the request's id, unless it is in flight already (or may yet
    /// be answered after timing out), or the client has too many requests
    /// in flight.
    fn admit(&self, request: &Request) -> Result<(), Refusal> {
        let mut state = self.state();
        if state.client.contains_key(&request.id) || state.expired.contains(&request.id) {
            return Err(Refusal::InFlight);
        }
        if state.client.len() >= self.config.max_in_flight {
            return Err(Refusal::TooMany);
        }
        state.admitted += 1;
        let number = state.admitted;
        state.client.insert(
            request.id.clone(),
            InFlight {
                call: None,
                held: false,
                number,
                lists_tools: request.method == "tools/list",
                deadline: None,
            },
        );
        Ok(())
    }

    /// The server's answer to `tools/list`, seen by the session and
    /// filtered for the client: each tool's definition is noted (a change
    /// is recorded and signalled), and the tools the decide stage would
    /// refuse to this chain are removed. The answer is re-serialized, one
    /// copy of each key, so the client reads exactly the list that was
    /// checked; one that is not a list of tools passes as it came.
    fn tools_listed(&self, line: Vec<u8>) -> Vec<u8> {
        let Ok(mut answer) = serde_json::from_slice::<Value>(&line) else {
            return line;
        };
        let Some(listed) = answer
            .get_mut("result")
            .and_then(|result| result.get_mut("tools"))
            .and_then(Value::as_array_mut)
        else {
            return line;
        };
        let mut changes = Vec::new();
        {
            let mut state = self.state();
            for tool in listed.iter().filter_map(Value::as_object) {
                if let Some(name) = tool.get("name").and_then(Value::as_str) {
                    changes.extend(state.catalog.observe(name, Definition::of(tool)));
                }
            }
        }
        for change in changes {
            self.record_change(change);
        }
        listed.retain(|tool| {
            let name = tool.get("name").and_then(Value::as_str);
            name.is_some_and(|name| self.may_call(name))
        });
        serde_json::to_vec(&answer).unwrap_or(line)
    }

    /// Whether the decide stage would let this session's chain call
    /// `tool`: a synthetic call, with no arguments, previewed through the
    /// engine's stages and neither acted on nor recorded. Refusals (deny,
    /// quarantine, revoke, kill) hide the tool; a tool held for approval
    /// stays, as it may be approved. A failure to decide hides it, unless
    /// failing open.
    fn may_call(&self, tool: &str) -> bool {
        let mut event = self.base_event(EventKind::ToolCall, "tools/call");
        event.target.tool = Some(clip(tool, custody_event::MAX_ID_LEN));
        self.mark_changed(&mut event);
        let provenance = self.identity.provenance();
        let decided = catch_unwind(AssertUnwindSafe(|| {
            self.engine.preview_as(event, Utc::now(), &provenance)
        }));
        let Ok(decision) = decided else {
            return self.config.fail_open;
        };
        match decision.verdict {
            Verdict::Allow | Verdict::Alert | Verdict::RequireApproval => true,
            Verdict::Deny | Verdict::Quarantine | Verdict::Revoke | Verdict::Kill => {
                self.config.fail_open
                    && decision
                        .reasons
                        .iter()
                        .any(|r| r.source == ReasonSource::Engine)
            }
        }
    }

    /// Marks a call's event when its tool's definition is no longer the one
    /// first listed: the detect stage raises a signal on it.
    fn mark_changed(&self, event: &mut NewEvent) {
        let Some(tool) = event.target.tool.as_deref() else {
            return;
        };
        let state = self.state();
        if let Some((first, now)) = state.catalog.changed(tool) {
            let digests = serde_json::json!({"first": first, "now": now});
            drop(state);
            event.attributes.insert(tools::CHANGED.into(), digests);
        }
    }

    /// Records a tool definition that changed, with the signal it raises
    /// for detection.
    fn record_change(&self, change: tools::Change) {
        tracing::warn!(tool = %change.tool, fields = ?change.fields, "a tool's definition changed");
        let mut event = self.base_event(EventKind::McpRequest, tools::CHANGE_ACTION);
        event.target.tool = Some(clip(&change.tool, custody_event::MAX_ID_LEN));
        let signals = vec![tools::signal(&change.tool)];
        let attributes = [
            ("custody.tool.digest.before", Value::from(change.before)),
            ("custody.tool.digest.after", Value::from(change.after)),
            ("custody.tool.changed_fields", Value::from(change.fields)),
            (
                "custody.signals",
                serde_json::to_value(signals).unwrap_or_default(),
            ),
        ];
        for (key, value) in attributes {
            event.attributes.insert(key.into(), value);
        }
        event.outcome = outcome(OutcomeStatus::Success, None, None);
        self.outbox.submit(event);
    }

    fn authorize(&self, mut event: NewEvent) -> (NewEvent, Authorized) {
        let provenance = self.identity.provenance();
        // The id is chosen here so that the event is known even when the
        // engine fails.
        let id = EventId::new_v7();
        event.id = Some(id);
        let decided = catch_unwind(AssertUnwindSafe(|| {
            self.engine
                .evaluate_as(event.clone(), Utc::now(), &provenance)
        }));
        let (decision, signals) = match decided {
            Ok((evaluated, Ok(_receipt))) => (evaluated.decision, evaluated.signals),
            Ok((_, Err(error))) => (
                Decision::fail_closed(format!("custody cannot record the call: {error}")),
                Vec::new(),
            ),
            Err(_) => (
                Decision::fail_closed("the engine panicked while deciding"),
                Vec::new(),
            ),
        };
        // What detection found goes with the event, for the detections
        // and responders that read the record.
        if !signals.is_empty() {
            event.attributes.insert(
                "custody.signals".into(),
                serde_json::to_value(&signals).unwrap_or_default(),
            );
        }
        let failed = decision
            .reasons
            .iter()
            .any(|r| r.source == ReasonSource::Engine);
        let (decision, told) = if failed && self.config.fail_open {
            tracing::warn!(reasons = ?decision.reasons, "failing open: forwarding a call custody could not decide or record");
            (Decision::allow(), String::new())
        } else if failed {
            (
                decision,
                "custody could not decide or record this call".to_owned(),
            )
        } else {
            let told = decision
                .reasons
                .iter()
                .map(|r| r.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            (decision, told)
        };
        event.attributes.insert(
            "custody.verdict".into(),
            Value::from(decision.verdict.as_str()),
        );
        if !decision.reasons.is_empty() {
            event.attributes.insert(
                "custody.reasons".into(),
                serde_json::to_value(&decision.reasons).unwrap_or_default(),
            );
        }
        (event, Authorized { decision, told })
    }

    /// Holds a call until it is approved (then forwarded), refused, or
    /// the wait runs out (both refusals), without holding up the relay.
    fn hold(self: &Arc<Self>, request: Request, event: NewEvent, authorized: Authorized) {
        let held = HeldCall {
            event: event.id.unwrap_or_else(EventId::new_v7),
            method: request.method.clone(),
            target: target_name(&request),
            reason: authorized.told.clone(),
            chain: event.actor.clone(),
            server: self.config.server.clone(),
            session: self.id.clone(),
            digest: event
                .attributes
                .get("gen_ai.tool.call.arguments.sha256")
                .and_then(Value::as_str)
                .map(str::to_owned),
            arguments: event.attributes.get("custody.arguments").cloned(),
        };
        // The call waits in the table of calls in flight, so that a
        // cancellation, a kill or the end of the session finds and records
        // it like any other.
        if let Some(in_flight) = self.state().client.get_mut(&request.id) {
            in_flight.held = true;
            in_flight.call = Some(Call {
                event,
                started: Instant::now(),
            });
        }
        let answer = self.approvals.ask(held);
        let session = self.clone();
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            let approval = tokio::select! {
                approval = tokio::time::timeout(session.config.hold_timeout, answer) => approval,
                // The session ended: the call was failed with the others in
                // flight.
                _ = closing.changed() => return,
            };
            // The call may have been cancelled or failed by a kill while
            // it waited: then it is no longer ours to forward.
            let call = match session.state().client.get_mut(&request.id) {
                Some(in_flight) if in_flight.held => {
                    in_flight.held = false;
                    in_flight.call.take()
                }
                _ => None,
            };
            let Some(Call { mut event, .. }) = call else {
                return;
            };
            let (told, verdict) = match approval {
                Ok(Ok(Approval::Approved)) => {
                    event
                        .attributes
                        .insert("custody.approval".into(), Value::from("approved"));
                    let call = Call {
                        event,
                        started: Instant::now(),
                    };
                    return session.forward(request, Some(call)).await;
                }
                Ok(Ok(Approval::Refused)) | Ok(Err(_)) => {
                    ("the call was held for approval and refused", "refused")
                }
                Ok(Ok(Approval::Expired)) => (
                    "the call was held for approval and its approval expired",
                    "expired",
                ),
                Err(_) => (
                    "the call was held for approval and no answer came in time",
                    "timed_out",
                ),
            };
            event
                .attributes
                .insert("custody.approval".into(), Value::from(verdict));
            session
                .refuse(&request, event, DENIED, told, "require_approval")
                .await;
        });
    }

    /// Refuses this call and fails every other in flight, then ends the
    /// session.
    async fn kill(&self, request: &Request, event: NewEvent, told: &str) {
        let _ = self.killing.set(told.to_owned());
        self.refuse(request, event, KILLED, told, "kill").await;
        self.fail_in_flight(KILLED, "custody ended the session");
        let _ = self.killed.send(Some(told.to_owned()));
    }

    /// Answers `request` with an error and records its event as denied.
    async fn refuse(
        &self,
        request: &Request,
        event: NewEvent,
        code: i64,
        told: &str,
        verdict: &str,
    ) {
        let in_flight = self.state().client.remove(&request.id);
        drop(in_flight);
        let mut event = event;
        event.outcome = outcome(OutcomeStatus::Denied, Some(told.to_owned()), None);
        let id = event.id;
        self.outbox.submit(event);
        let data = serde_json::json!({"custody": {"verdict": verdict, "event": id}});
        let answer = decode::error_response(
            Some(request.id.value()),
            code,
            &format!("custody refused this call: {told}"),
            Some(data),
        );
        self.send_client(answer).await;
    }

    /// Fails every client request in flight with `code`; their records say
    /// why.
    fn fail_in_flight(&self, code: i64, why: &str) {
        let in_flight: Vec<(Id, InFlight)> = {
            let mut state = self.state();
            state.deadlines.clear();
            state.client.drain().collect()
        };
        let Some(to_client) = self.client_sender() else {
            return;
        };
        for (id, in_flight) in in_flight {
            if let Some(call) = in_flight.call {
                self.record(call, OutcomeStatus::Failure, Some(why.to_owned()));
            }
            let answer = decode::error_response(Some(id.value()), code, why, None);
            // The writer may be gone; the session is ending either way.
            let _ = to_client.try_send(answer);
        }
    }

    /// Sends the request to the server and arms its timeout (the
    /// session's timer, `expire_late`, fails it if it is still in flight
    /// then).
    async fn forward(self: &Arc<Self>, request: Request, call: Option<Call>) {
        let deadline = tokio::time::Instant::now() + self.config.call_timeout;
        let earliest = {
            let mut state = self.state();
            let State {
                client, deadlines, ..
            } = &mut *state;
            match client.get_mut(&request.id) {
                Some(in_flight) => {
                    in_flight.call = call;
                    in_flight.deadline = Some(deadline);
                    deadlines.insert((deadline, in_flight.number), request.id.clone());
                    deadlines
                        .first_key_value()
                        .is_some_and(|((first, number), _)| {
                            *first == deadline && *number == in_flight.number
                        })
                }
                // Cancelled, or failed with the session, between its
                // approval and here: recorded, never forwarded.
                None => {
                    drop(state);
                    if let Some(call) = call {
                        let reason = "ended before it was forwarded".to_owned();
                        self.record(call, OutcomeStatus::Failure, Some(reason));
                    }
                    return;
                }
            }
        };
        if earliest {
            self.deadline_added.notify_one();
        }
        self.send_server(request.canonical).await;
    }

    /// Fails request `number` if it is still waiting for the server's
    /// answer: the client is told it timed out, the call is recorded as
    /// failed, the server is told to cancel it, and a late answer will be
    /// dropped.
    async fn expire(&self, id: &Id, number: u64) {
        let call = {
            let mut state = self.state();
            match state.client.get(id) {
                Some(in_flight) if in_flight.number == number => {}
                _ => return,
            }
            let call = state.client.remove(id).and_then(|in_flight| in_flight.call);
            if state.expired.len() >= EXPIRED_KEPT {
                state.expired.pop_front();
            }
            state.expired.push_back(id.clone());
            call
        };
        let why = format!(
            "timeout: the server did not answer within {} s",
            self.config.call_timeout.as_secs_f64()
        );
        tracing::warn!(%id, "{why}");
        if let Some(call) = call {
            self.record(call, OutcomeStatus::Failure, Some(why.clone()));
        }
        let cancel = serde_json::json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": id.value(), "reason": why},
        });
        self.send_server(cancel.to_string().into_bytes()).await;
        let answer = decode::error_response(Some(id.value()), TIMED_OUT, &why, None);
        self.send_client(answer).await;
    }

    fn record(&self, call: Call, status: OutcomeStatus, reason: Option<String>) {
        let took = u64::try_from(call.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut event = call.event;
        event.outcome = outcome(status, reason, Some(took));
        self.outbox.submit(event);
    }

    /// The event of a request, before its decision and outcome.
    fn event_for(&self, request: &Request) -> NewEvent {
        let kind = if request.method == "tools/call" {
            EventKind::ToolCall
        } else {
            EventKind::McpRequest
        };
        let mut event = self.base_event(kind, &request.method);
        event.target = match request.method.as_str() {
            "tools/call" => Target {
                tool: request.name().map(|n| clip(n, custody_event::MAX_ID_LEN)),
                ..Target::default()
            },
            "resources/read" => Target {
                resource: request.uri().map(|u| clip(u, custody_event::MAX_TEXT_LEN)),
                resource_type: Some("mcp_resource".into()),
                ..Target::default()
            },
            "prompts/get" => Target {
                resource: request.name().map(|n| clip(n, custody_event::MAX_TEXT_LEN)),
                resource_type: Some("mcp_prompt".into()),
                ..Target::default()
            },
            _ => Target::default(),
        };
        event.target.server = Some(self.config.server.clone());
        event.context.request_id = Some(clip(&request.id.to_string(), 1024));
        if let Some(arguments) = request.arguments() {
            event.attributes.insert(
                "gen_ai.tool.call.arguments.sha256".into(),
                Value::from(redact::digest(arguments)),
            );
            let kept = redact::redact(arguments);
            // Its size, serialized, counted without keeping the bytes.
            let mut size = Counted(0);
            let size = serde_json::to_writer(&mut size, &kept).map_or(0, |()| size.0);
            let kept = if size <= MAX_KEPT_ARGUMENTS {
                kept
            } else {
                serde_json::json!({"custody.truncated": true, "bytes": size})
            };
            event.attributes.insert("custody.arguments".into(), kept);
        }
        event
    }

    fn base_event(&self, kind: EventKind, action: &str) -> NewEvent {
        gateway_event(
            kind,
            action,
            &format!("{} {}", self.config.via, self.config.server),
            self.identity.chain(),
            Some(self.config.server.clone()),
            Some(self.id.clone()),
        )
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn client_sender(&self) -> Option<Lines> {
        self.to_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn send_client(&self, line: Vec<u8>) {
        if let Some(sender) = self.client_sender() {
            let _ = sender.send(line).await;
        }
    }

    async fn send_server(&self, line: Vec<u8>) {
        let sender = self
            .to_server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(sender) = sender {
            let _ = sender.send(line).await;
        }
    }

    fn close_server_input(&self) {
        self.to_server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn close_client_output(&self) {
        self.to_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// The methods that act on the server's tools, resources and prompts:
/// each is an event with a decision.
fn is_call(method: &str) -> bool {
    matches!(method, "tools/call" | "resources/read" | "prompts/get")
}

fn target_name(request: &Request) -> Option<String> {
    request.name().or_else(|| request.uri()).map(str::to_owned)
}

/// An event of the gateway's, before its decision and outcome: `action` by
/// `actor`, relayed by `source` (`custody wrap NAME`), to `server` in
/// `session`.
pub(crate) fn gateway_event(
    kind: EventKind,
    action: &str,
    source: &str,
    actor: &custody_event::Actor,
    server: Option<String>,
    session: Option<String>,
) -> NewEvent {
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert("mcp.method.name".into(), Value::from(clip(action, 1024)));
    NewEvent {
        version: None,
        id: Some(EventId::new_v7()),
        kind,
        action: clip(action, custody_event::MAX_LABEL_LEN),
        observed_at: Utc::now(),
        received_at: None,
        source: Source {
            kind: SourceKind::Gateway,
            name: Some(clip(source, custody_event::MAX_ID_LEN)),
            record_id: None,
        },
        actor: actor.clone(),
        target: Target {
            server,
            ..Target::default()
        },
        outcome: outcome(OutcomeStatus::Unknown, None, None),
        attribution: None,
        context: Context {
            session_id: session,
            ..Context::default()
        },
        attributes,
        raw: None,
    }
}

pub(crate) fn outcome(status: OutcomeStatus, reason: Option<String>, took: Option<u64>) -> Outcome {
    Outcome {
        status,
        reason: reason.map(|r| clip(&r, custody_event::MAX_TEXT_LEN)),
        duration_ms: took,
    }
}

/// A JSON-RPC error as `CODE: MESSAGE`.
fn error_text(error: &Value) -> String {
    let code = error.get("code").map(Value::to_string).unwrap_or_default();
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    format!("{code}: {message}")
}

/// `text` cut to at most `max` bytes, at a character boundary.
/// A sink counting the bytes written to it.
struct Counted(usize);

impl std::io::Write for Counted {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

/// The lines waiting for one side, bounded in number and in bytes: a
/// sender waits for room, so a peer that does not read holds up the one
/// writing to it (the relay stops reading that one's output) instead of
/// growing a buffer.
#[derive(Clone)]
enum Lines {
    /// To a writer task.
    Queued {
        queue: mpsc::Sender<(Vec<u8>, OwnedSemaphorePermit)>,
        room: Arc<Semaphore>,
    },
    /// Straight to a peer in this process, bounded by its channel.
    Direct(mpsc::Sender<Vec<u8>>),
}

impl Lines {
    /// Queues `line`, waiting for room; false once the side is gone.
    async fn send(&self, line: Vec<u8>) -> bool {
        match self {
            Lines::Queued { queue, room } => {
                let Ok(room) = room.clone().acquire_many_owned(cost(&line)).await else {
                    return false;
                };
                queue.send((line, room)).await.is_ok()
            }
            Lines::Direct(sender) => sender.send(line).await.is_ok(),
        }
    }

    /// Queues `line` if there is room now.
    fn try_send(&self, line: Vec<u8>) -> bool {
        match self {
            Lines::Queued { queue, room } => {
                let Ok(room) = room.clone().try_acquire_many_owned(cost(&line)) else {
                    return false;
                };
                queue.try_send((line, room)).is_ok()
            }
            Lines::Direct(sender) => sender.try_send(line).is_ok(),
        }
    }
}

/// One side of a relay: where its messages come from and go to.
pub enum Pipe {
    /// Newline-delimited JSON over byte streams (stdio).
    Bytes {
        /// What the relay reads.
        input: Box<dyn AsyncRead + Unpin + Send>,
        /// What the relay writes.
        output: Box<dyn AsyncWrite + Unpin + Send>,
    },
    /// Whole messages, one per item, over channels. Input longer than the
    /// side's limit is refused as a line would be.
    Messages {
        /// What the relay reads.
        input: mpsc::Receiver<Vec<u8>>,
        /// What the relay writes.
        output: mpsc::Sender<Vec<u8>>,
    },
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pipe::Bytes { .. } => "Pipe::Bytes",
            Pipe::Messages { .. } => "Pipe::Messages",
        })
    }
}

/// Where a relay reads one side's messages.
enum Incoming {
    Bytes(Box<dyn AsyncRead + Unpin + Send>),
    Messages(mpsc::Receiver<Vec<u8>>),
}

impl Incoming {
    /// The next message: `None` at the end, `Some(None)` for one longer
    /// than `limit`.
    async fn next(
        &mut self,
        reader: &mut Option<BufReader<Box<dyn AsyncRead + Unpin + Send>>>,
        limit: usize,
    ) -> Option<Option<Vec<u8>>> {
        match self {
            Incoming::Messages(receiver) => {
                let message = receiver.recv().await?;
                Some((message.len() <= limit).then_some(message))
            }
            Incoming::Bytes(_) => {
                let reader = reader.as_mut()?;
                next_line(reader, limit).await
            }
        }
    }
}

impl Pipe {
    /// The side's sender, its writer task if it has one, and its input.
    fn open(self) -> (Lines, Option<JoinHandle<()>>, Incoming) {
        match self {
            Pipe::Bytes { input, output } => {
                let (lines, task) = writer(output);
                (lines, Some(task), Incoming::Bytes(input))
            }
            Pipe::Messages { input, output } => {
                (Lines::Direct(output), None, Incoming::Messages(input))
            }
        }
    }
}

/// The room a line takes in a queue: its size, at most the whole queue.
fn cost(line: &[u8]) -> u32 {
    u32::try_from(line.len().clamp(1, BYTES_QUEUED)).unwrap_or(u32::MAX)
}

/// A task writing lines to `out`, and the sender that feeds it.
fn writer(mut out: impl AsyncWrite + Unpin + Send + 'static) -> (Lines, JoinHandle<()>) {
    let (queue, mut lines) = mpsc::channel::<(Vec<u8>, OwnedSemaphorePermit)>(LINES_QUEUED);
    let room = Arc::new(Semaphore::new(BYTES_QUEUED));
    let task = tokio::spawn(async move {
        // The room a line took is given back once it is written.
        while let Some((mut line, _room)) = lines.recv().await {
            line.push(b'\n');
            if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
        let _ = out.shutdown().await;
    });
    (Lines::Queued { queue, room }, task)
}

/// The session's timer: sleeps until the earliest deadline of the
/// requests forwarded, then fails those still unanswered (each on a task
/// of its own, as telling the client and the server may wait for room).
async fn expire_late(session: Arc<Session>) {
    loop {
        let earliest = session
            .state()
            .deadlines
            .first_key_value()
            .map(|((at, _), _)| *at);
        match earliest {
            None => session.deadline_added.notified().await,
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = session.deadline_added.notified() => continue,
                }
            }
        }
        let now = tokio::time::Instant::now();
        let due: Vec<(Id, u64)> = {
            let mut state = session.state();
            let mut due = Vec::new();
            while let Some(entry) = state.deadlines.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((_, number), id) = entry.remove_entry();
                due.push((id, number));
            }
            due
        };
        for (id, number) in due {
            let session = session.clone();
            tokio::spawn(async move { session.expire(&id, number).await });
        }
    }
}

async fn read_client(session: Arc<Session>, mut input: Incoming) {
    let limit = session.config.max_message;
    let mut reader = take_reader(&mut input);
    while let Some(line) = input.next(&mut reader, limit).await {
        match line {
            Some(line) => session.client_message(line).await,
            None => {
                let error = DecodeError::too_large(limit);
                session.refuse_undecodable(error).await;
            }
        }
    }
}

async fn read_server(session: Arc<Session>, mut output: Incoming) {
    let limit = session.config.max_server_message;
    let mut reader = take_reader(&mut output);
    while let Some(line) = output.next(&mut reader, limit).await {
        match line {
            Some(line) => session.server_message(line).await,
            None => session.drop_oversized(limit),
        }
    }
}

/// A byte stream's buffered reader, taken out of `input` (which keeps an
/// empty stand-in).
fn take_reader(input: &mut Incoming) -> Option<BufReader<Box<dyn AsyncRead + Unpin + Send>>> {
    match input {
        Incoming::Bytes(stream) => {
            let stream = std::mem::replace(stream, Box::new(tokio::io::empty()));
            Some(BufReader::new(stream))
        }
        Incoming::Messages(_) => None,
    }
}

/// The next line: `None` at the end, `Some(None)` for a line longer than
/// `limit`.
async fn next_line(
    input: &mut (impl AsyncBufReadExt + Unpin),
    limit: usize,
) -> Option<Option<Vec<u8>>> {
    match read_line(input, limit).await {
        Line::Text(line) => Some(Some(line)),
        Line::TooLong => Some(None),
        Line::End => None,
    }
}

enum Line {
    Text(Vec<u8>),
    /// A line longer than the limit, read past and dropped.
    TooLong,
    End,
}

/// Reads one non-empty line of at most `limit` bytes, never holding more
/// than that in memory.
async fn read_line(input: &mut (impl AsyncBufReadExt + Unpin), limit: usize) -> Line {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buffer = match input.fill_buf().await {
            Ok(buffer) => buffer,
            Err(_) => return Line::End,
        };
        if buffer.is_empty() {
            return match (too_long, line.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::End,
                (false, false) => Line::Text(line),
            };
        }
        let (chunk, found) = match buffer.iter().position(|b| *b == b'\n') {
            Some(at) => (buffer.get(..at).unwrap_or_default(), Some(at)),
            None => (buffer, None),
        };
        if !too_long {
            if line.len() + chunk.len() > limit {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = found.map_or(chunk.len(), |at| at + 1);
        input.consume(used);
        if found.is_some() {
            if too_long {
                return Line::TooLong;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                line.clear();
                continue;
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Line::Text(line);
        }
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
