//! One MCP session driven by `rmcp`, the Rust SDK, as a real client: the
//! same scenario against any server, over stdio (a command started as a
//! child: the server itself, or `custody wrap -- server`) or streamable
//! HTTP (a URL, with a bearer token or none), so that its transcripts can
//! be compared directly against and through Custody.
//!
//! The scenario is written for `@modelcontextprotocol/server-everything`
//! (2026.8.31): list tools, `echo`, resources list and read, prompts list
//! and `args-prompt`, a sampling round trip (`trigger-sampling-request`,
//! answered by this client with a fixed message), an elicitation round
//! trip (`trigger-elicitation-request`, accepted with fixed content),
//! progress from `trigger-long-running-operation`, and the cancellation of
//! a second long-running call followed by `get-sum`.
//!
//! The transcript holds nothing that changes from run to run (no request
//! ids, progress tokens, session ids or times): the server's answers as
//! rmcp reads them, what the server asked the client (without `_meta`),
//! and the progress of the call that reports it. Only the test files that
//! use it include it (rather than `tests/common/mod.rs`), so that the
//! others do not compile rmcp:
//!
//! ```ignore
//! #[path = "common/rmcp_client.rs"]
//! mod rmcp_client;
//! ```

#![allow(dead_code)]
// Sampling is deprecated by SEP-2577 in rmcp 3; servers still ask for it.
#![allow(deprecated)]

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientInfo, ClientRequest,
    CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, ErrorData, GetPromptRequestParams, Implementation,
    JsonObject, ProgressNotificationParam, ProgressToken, ReadResourceRequestParams,
    SamplingCapability, SamplingMessage, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RoleClient};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// An rmcp value as JSON (rmcp's serde is not re-exported without its
/// macros, and the root package does not depend on serde).
macro_rules! to_value {
    ($value:expr) => {
        serde_json::to_value($value).expect("an rmcp value serializes")
    };
}

/// Where the server is.
#[derive(Debug)]
pub enum Target {
    /// A server speaking on the standard input and output of this command
    /// (its standard error is inherited).
    Stdio(std::process::Command),
    /// A streamable-HTTP endpoint (`http://host:port/mcp`), with a bearer
    /// token or none.
    Http { url: String, bearer: Option<String> },
}

/// What this client answers to `sampling/createMessage`.
pub const SAMPLED_TEXT: &str = "a fixed answer from the rmcp test client";
/// The model this client says answered.
pub const SAMPLING_MODEL: &str = "custody-rmcp-test-model";

/// What this client answers to `elicitation/create`.
pub fn elicited() -> Value {
    json!({"name": "Ada Lovelace", "check": true, "email": "ada@example.com", "integer": 7})
}

/// The message `echo` is called with.
pub const ECHOED: &str = "hello from rmcp";
/// The static document the scenario reads.
pub const RESOURCE: &str = "demo://resource/static/document/features.md";

/// How long one step may take before the scenario fails.
const STEP: Duration = Duration::from_secs(30);
/// How long a stdio server may take to exit once its input is closed.
const EXIT: Duration = Duration::from_secs(20);

/// What a run of the scenario read.
#[derive(Debug)]
pub struct Run {
    /// One JSON object a step, `{"step": NAME, ...}`.
    pub transcript: Vec<Value>,
    /// How a stdio server exited once its input was closed.
    pub exit: Option<ExitStatus>,
}

/// Runs the scenario against `target`, starting with the `initialize`
/// handshake (2025-11-25). Panics, naming the step, when a step fails.
pub async fn run(target: Target) -> Run {
    run_with(target, ClientLifecycleMode::Initialize).await
}

/// Runs the scenario against `target`, starting as `lifecycle` says: with
/// `Auto`, the 2026-07-28 `server/discover` probe first, and the
/// handshake if the server does not know it.
pub async fn run_with(target: Target, lifecycle: ClientLifecycleMode) -> Run {
    let (progress, mut progress_rx) = mpsc::unbounded_channel();
    let handler = Handler {
        progress,
        server_requests: Arc::default(),
    };
    let server_requests = handler.server_requests.clone();
    // A stdio child is started here rather than by rmcp's
    // `TokioChildProcess`, which gives a child 3 s to exit once its input is
    // closed and then signals it: `custody wrap` may take longer, waiting
    // for its server and delivering its last events.
    let mut child = None;
    let client = match target {
        Target::Stdio(command) => {
            let mut command = tokio::process::Command::from(command);
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut spawned = command.spawn().expect("starting the stdio server");
            let stdout = read_to_the_end(spawned.stdout.take().expect("piped stdout"));
            let stdin = spawned.stdin.take().expect("piped stdin");
            child = Some(spawned);
            within(
                "initialize",
                handler.serve_with_lifecycle((stdout, stdin), lifecycle),
            )
            .await
        }
        Target::Http { url, bearer } => {
            let mut config = StreamableHttpClientTransportConfig::with_uri(url);
            if let Some(bearer) = bearer {
                config = config.auth_header(bearer);
            }
            let transport = StreamableHttpClientTransport::from_config(config);
            within(
                "initialize",
                handler.serve_with_lifecycle(transport, lifecycle),
            )
            .await
        }
    }
    .expect("the initialize handshake");
    let mut transcript = Vec::new();

    let info = client.peer_info().expect("the server's initialize answer");
    transcript.push(json!({"step": "initialize", "server": to_value!(&*info)}));

    let tools = within("tools/list", client.list_all_tools())
        .await
        .expect("tools/list");
    transcript.push(json!({"step": "tools/list", "tools": to_value!(&tools)}));

    let echo = call(&client, "echo", json!({"message": ECHOED})).await;
    transcript.push(json!({"step": "echo", "result": echo}));

    let resources = within("resources/list", client.list_all_resources())
        .await
        .expect("resources/list");
    transcript.push(json!({"step": "resources/list", "resources": to_value!(&resources)}));
    let read = within(
        "resources/read",
        client.read_resource(ReadResourceRequestParams::new(RESOURCE)),
    )
    .await
    .expect("resources/read");
    transcript.push(json!({"step": "resources/read", "result": to_value!(&read)}));

    let prompts = within("prompts/list", client.list_all_prompts())
        .await
        .expect("prompts/list");
    transcript.push(json!({"step": "prompts/list", "prompts": to_value!(&prompts)}));
    let prompt = within(
        "prompts/get",
        client.get_prompt(
            GetPromptRequestParams::new("args-prompt")
                .with_arguments(object(json!({"city": "Lisbon", "state": "Lisboa"}))),
        ),
    )
    .await
    .expect("prompts/get");
    transcript.push(json!({"step": "prompts/get", "result": to_value!(&prompt)}));

    let sampled = call(
        &client,
        "trigger-sampling-request",
        json!({"prompt": "the sampling round trip", "maxTokens": 32}),
    )
    .await;
    let asked = take_requests(&server_requests);
    transcript.push(json!({"step": "sampling", "server_asked": asked, "result": sampled}));

    let elicitation = call(&client, "trigger-elicitation-request", json!({})).await;
    let asked = take_requests(&server_requests);
    transcript.push(json!({"step": "elicitation", "server_asked": asked, "result": elicitation}));

    // Progress: rmcp gives every request a progress token of its own.
    let handle = within(
        "send trigger-long-running-operation",
        client.send_cancellable_request(
            tool_request(
                "trigger-long-running-operation",
                json!({"duration": 1, "steps": 4}),
            ),
            PeerRequestOptions::no_options(),
        ),
    )
    .await
    .expect("sending trigger-long-running-operation");
    let token = handle.progress_token.clone();
    let answer = within("trigger-long-running-operation", handle.await_response())
        .await
        .expect("trigger-long-running-operation");
    let mut steps = Vec::new();
    while steps.len() < 4 {
        let progress = next_progress(&mut progress_rx, &token, "the progress of the call").await;
        steps.push(json!([progress.progress, progress.total, progress.message]));
    }
    transcript.push(json!({
        "step": "progress",
        "notifications": steps,
        "result": tool_result(answer),
    }));

    // Cancellation: once the server is at work on the call (its first
    // progress came), the client cancels it; the next call works.
    let handle = within(
        "send the call to cancel",
        client.send_cancellable_request(
            tool_request(
                "trigger-long-running-operation",
                json!({"duration": 3, "steps": 6}),
            ),
            PeerRequestOptions::no_options(),
        ),
    )
    .await
    .expect("sending the call to cancel");
    let token = handle.progress_token.clone();
    let first = next_progress(
        &mut progress_rx,
        &token,
        "the first progress of the call to cancel",
    )
    .await;
    within(
        "notifications/cancelled",
        handle.cancel(Some("the rmcp scenario cancels it".into())),
    )
    .await
    .expect("sending notifications/cancelled");
    let sum = call(&client, "get-sum", json!({"a": 1, "b": 2})).await;
    transcript.push(json!({
        "step": "cancellation",
        "first_progress": [first.progress, first.total],
        "next_call": sum,
    }));

    // Closing the transport ends the session: a stdio child sees its input
    // close (`custody wrap` then records what is left and exits).
    within("closing the session", client.cancel())
        .await
        .expect("closing the session");
    let mut exit = None;
    if let Some(mut child) = child {
        let status = tokio::time::timeout(EXIT, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("the stdio server did not exit within {EXIT:?} of its input closing")
            })
            .expect("waiting for the stdio server");
        exit = Some(status);
    }
    Run { transcript, exit }
}

/// The server's output as the client reads it, read to its end even after
/// the client has gone: a server writing once its client stopped reading
/// (server-everything sends the cancelled call's later progress) would
/// otherwise die of a broken pipe, where through `custody wrap`, which
/// reads its server to the end, it exits cleanly.
fn read_to_the_end(mut stdout: tokio::process::ChildStdout) -> tokio::io::DuplexStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (client, mut relay) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let mut buffer = vec![0; 1 << 14];
        let mut reading = true;
        loop {
            let n = match stdout.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if reading && relay.write_all(&buffer[..n]).await.is_err() {
                reading = false;
            }
        }
    });
    client
}

/// A `tools/call` of `tool` with `arguments`; its result as JSON (a tool's
/// error is a result too, with `isError`).
async fn call<S: rmcp::Service<RoleClient>>(
    client: &rmcp::service::RunningService<RoleClient, S>,
    tool: &'static str,
    arguments: Value,
) -> Value {
    let params = CallToolRequestParams::new(tool).with_arguments(object(arguments));
    let result = within(tool, client.call_tool(params))
        .await
        .unwrap_or_else(|error| panic!("calling {tool}: {error}"));
    to_value!(&result)
}

fn tool_request(tool: &'static str, arguments: Value) -> ClientRequest {
    ClientRequest::CallToolRequest(CallToolRequest::new(
        CallToolRequestParams::new(tool).with_arguments(object(arguments)),
    ))
}

fn tool_result(answer: ServerResult) -> Value {
    match answer {
        ServerResult::CallToolResult(result) => to_value!(&result),
        other => panic!("a tools/call answered with {other:?}"),
    }
}

/// The next progress notification for `token`; the others are dropped (a
/// cancelled call may still report progress).
async fn next_progress(
    progress: &mut mpsc::UnboundedReceiver<ProgressNotificationParam>,
    token: &ProgressToken,
    what: &str,
) -> ProgressNotificationParam {
    loop {
        let next = tokio::time::timeout(STEP, progress.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} did not come within {STEP:?}"))
            .expect("the progress channel");
        if &next.progress_token == token {
            return next;
        }
    }
}

fn take_requests(requests: &Mutex<Vec<Value>>) -> Vec<Value> {
    std::mem::take(&mut *requests.lock().unwrap())
}

fn object(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

async fn within<T>(step: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{step} did not complete within {STEP:?}"))
}

/// The client's side of server requests: sampling answered with a fixed
/// message, elicitation accepted with fixed content, both remembered;
/// progress passed to the scenario.
struct Handler {
    progress: mpsc::UnboundedSender<ProgressNotificationParam>,
    server_requests: Arc<Mutex<Vec<Value>>>,
}

impl rmcp::ClientHandler for Handler {
    fn get_info(&self) -> ClientInfo {
        // rmcp's capability builders come with its server side; the
        // fields are set directly.
        let mut capabilities = ClientCapabilities::default();
        capabilities.sampling = Some(SamplingCapability::default());
        capabilities.elicitation = Some(ElicitationCapability::default());
        ClientInfo::new(
            capabilities,
            Implementation::new("custody-rmcp-test", "1.0.0"),
        )
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.server_requests.lock().unwrap().push(json!({
            "method": "sampling/createMessage",
            "params": without_meta(to_value!(&params)),
        }));
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text(SAMPLED_TEXT),
            SAMPLING_MODEL.into(),
        )
        .with_stop_reason(CreateMessageResult::STOP_REASON_END_TURN))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.server_requests.lock().unwrap().push(json!({
            "method": "elicitation/create",
            "params": without_meta(to_value!(&request)),
        }));
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(elicited()))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.progress.send(params);
    }
}

/// `value` without its `_meta`: what a server adds there (a related
/// request, a task) names this run's ids.
fn without_meta(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.remove("_meta");
    }
    value
}
