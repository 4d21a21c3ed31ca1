//! The upstream side of a session: a server the gateway fronts, reached
//! as a stdio child it starts or over streamable HTTP, seen by the relay as
//! a pair of byte streams carrying one JSON-RPC message per line.
//!
//! For an HTTP upstream an adapter turns each line the relay writes into a
//! POST, and each answer (a JSON body, or the events of a
//! `text/event-stream` body) back into lines. It keeps the upstream's
//! `Mcp-Session-Id` and protocol version from its `initialize` answer,
//! sends the routing headers of the 2026-07-28 revision from the body it
//! forwards (so they always match it), listens on the upstream's GET
//! stream once a session exists, and ends the upstream session when the
//! relay ends.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;

use super::headers;
use super::sse;
use crate::decode;
use crate::relay::{Pipe, SERVER_GONE};

/// How an upstream is reached.
#[derive(Clone)]
pub enum Target {
    /// A streamable-HTTP endpoint.
    Http {
        /// Its URL.
        url: String,
        /// Headers sent with every request (an `Authorization` for the
        /// upstream, say); their values are never logged.
        headers: Vec<(String, String)>,
    },
    /// A command the gateway starts, one child per session, speaking over
    /// its standard input and output.
    Stdio {
        /// The program and its arguments.
        command: Vec<String>,
        /// Environment variables set for it.
        env: Vec<(String, String)>,
        /// Its working directory.
        cwd: Option<PathBuf>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", url)
                .field(
                    "headers",
                    &headers.iter().map(|(name, _)| name).collect::<Vec<_>>(),
                )
                .finish(),
            Target::Stdio { command, cwd, env } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("env", &env.iter().map(|(name, _)| name).collect::<Vec<_>>())
                .field("cwd", cwd)
                .finish(),
        }
    }
}

/// A connection to an upstream: what the relay writes to and reads from,
/// and what keeps the upstream alive (dropped, it ends).
pub(crate) struct Connection {
    pub(crate) pipe: Pipe,
    pub(crate) keep: Keep,
}

/// What ends with the connection.
pub(crate) enum Keep {
    Child(#[allow(dead_code)] tokio::process::Child),
    Adapter(#[allow(dead_code)] tokio::task::JoinHandle<()>),
}

impl Drop for Keep {
    fn drop(&mut self) {
        if let Keep::Adapter(task) = self {
            task.abort();
        }
    }
}

/// Messages queued between the relay and an HTTP adapter, each way.
const MESSAGES_QUEUED: usize = 64;
/// Requests to an HTTP upstream in flight at once per session; more wait.
const HTTP_IN_FLIGHT: usize = 64;

/// Connects to `target` for one session. `client` is shared by every
/// session's HTTP adapters (one connection pool); `max_message` bounds each
/// message read from the upstream.
pub(crate) fn connect(
    target: &Target,
    client: &reqwest::Client,
    max_message: usize,
) -> std::io::Result<Connection> {
    match target {
        Target::Stdio { command, env, cwd } => {
            let Some((program, args)) = command.split_first() else {
                return Err(std::io::Error::other("the upstream's command is empty"));
            };
            let mut command = tokio::process::Command::new(program);
            command
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if let Some(cwd) = cwd {
                command.current_dir(cwd);
            }
            let mut child = command.spawn()?;
            let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(std::io::Error::other("the upstream's stdio was not piped"));
            };
            Ok(Connection {
                pipe: Pipe::Bytes {
                    input: Box::new(output),
                    output: Box::new(input),
                },
                keep: Keep::Child(child),
            })
        }
        Target::Http { url, headers } => {
            let (requests, from_relay) = mpsc::channel(MESSAGES_QUEUED);
            let (to_relay, answers) = mpsc::channel(MESSAGES_QUEUED);
            let adapter = Adapter {
                client: client.clone(),
                url: url.clone(),
                // Parsed once, not on every request; one that does not
                // parse fails each request as it did.
                endpoint: reqwest::Url::parse(url).ok(),
                headers: headers.clone(),
                session: Arc::new(Mutex::new(Upstream::default())),
                max_message,
            };
            let task = tokio::spawn(adapter.run(from_relay, to_relay));
            Ok(Connection {
                pipe: Pipe::Messages {
                    input: answers,
                    output: requests,
                },
                keep: Keep::Adapter(task),
            })
        }
    }
}

/// What the adapter learned of the upstream's session.
#[derive(Default)]
struct Upstream {
    session_id: Option<String>,
    protocol_version: Option<String>,
    listening: bool,
}

#[derive(Clone)]
struct Adapter {
    client: reqwest::Client,
    url: String,
    endpoint: Option<reqwest::Url>,
    headers: Vec<(String, String)>,
    session: Arc<Mutex<Upstream>>,
    max_message: usize,
}

impl Adapter {
    async fn run(self, mut from_relay: mpsc::Receiver<Vec<u8>>, lines: mpsc::Sender<Vec<u8>>) {
        // The POSTs in flight are polled here, in the adapter's own task,
        // rather than each spawned: one task hop less per message.
        let mut posts = futures_util::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                message = from_relay.recv(), if posts.len() < HTTP_IN_FLIGHT => {
                    let Some(message) = message else { break };
                    posts.push(self.post(message, &lines));
                }
                Some(()) = posts.next(), if !posts.is_empty() => {}
            }
        }
        // What was still in flight is the ended session's: dropped.
        drop(posts);
        // The relay ended the session: end it upstream too.
        let session = self.upstream().session_id.clone();
        if let Some(session) = session {
            let mut delete = self
                .to(reqwest::Method::DELETE)
                .header("mcp-session-id", session);
            for (name, value) in &self.headers {
                delete = delete.header(name, value);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), delete.send()).await;
        }
    }

    /// A request to the upstream's endpoint.
    fn to(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        match &self.endpoint {
            Some(endpoint) => self.client.request(method, endpoint.clone()),
            None => self.client.request(method, self.url.as_str()),
        }
    }

    fn upstream(&self) -> std::sync::MutexGuard<'_, Upstream> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// POSTs one message and relays what comes back.
    async fn post(&self, message: Vec<u8>, lines: &mpsc::Sender<Vec<u8>>) {
        let Outgoing {
            method,
            id,
            version,
            name,
        } = Outgoing::read(&message);
        let method = method.as_deref();
        let is_request = method.is_some() && id.is_some();
        let initialize = method == Some("initialize");
        let mut request = self
            .to(reqwest::Method::POST)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        {
            let upstream = self.upstream();
            if let Some(session) = &upstream.session_id {
                request = request.header("mcp-session-id", session);
            }
            match version {
                Some(version) => request = request.header(headers::PROTOCOL_VERSION, version),
                None => {
                    if let Some(version) = &upstream.protocol_version {
                        request = request.header(headers::PROTOCOL_VERSION, version);
                    }
                }
            }
            if let Some(method) = method {
                request = request.header(headers::METHOD, method);
                if let Some(name) = name {
                    request = request.header(headers::NAME, headers::encode_value(&name));
                }
            }
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let fail = |why: String| {
            let answer = is_request.then(|| {
                tracing::warn!(upstream = %self.url, %why, "an upstream request failed");
                decode::error_response(id.as_ref(), SERVER_GONE, &why, None)
            });
            async move {
                if let Some(answer) = answer {
                    let _ = lines.send(answer).await;
                }
            }
        };
        let response = match request.body(message).send().await {
            Ok(response) => response,
            Err(error) => return fail(format!("the upstream is unreachable: {error}")).await,
        };
        let status = response.status();
        if initialize && let Some(session) = response.headers().get("mcp-session-id") {
            self.upstream().session_id = session.to_str().ok().map(str::to_owned);
        }
        if status == reqwest::StatusCode::ACCEPTED || status == reqwest::StatusCode::NO_CONTENT {
            return;
        }
        let streaming = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if streaming && status.is_success() {
            let answered = self.pump(response, lines, initialize).await;
            if initialize {
                self.listen_once(lines);
            }
            if let Err(why) = answered {
                fail(why).await;
            }
            return;
        }
        let body = match read_limited(response, self.max_message).await {
            Ok(body) => body,
            Err(why) => return fail(why).await,
        };
        // A JSON-RPC answer is relayed whatever the status (an upstream may
        // answer a refused request with 400 and a JSON-RPC error). The usual
        // one, a single answer, goes on as it came: the relay reads it
        // anyway, and building it here only to write it again is waste.
        if !initialize && let Some(true) = answers_request(&body) {
            let _ = lines.send(body).await;
            return;
        }
        let mut answered = false;
        if let Ok(value) = serde_json::from_slice::<Value>(&body) {
            let messages = match value {
                Value::Array(batch) => batch,
                one => vec![one],
            };
            for message in messages {
                if message.get("id").is_some()
                    && (message.get("result").is_some() || message.get("error").is_some())
                {
                    answered = true;
                }
                self.relay(&message, lines, initialize).await;
            }
        }
        if initialize {
            self.listen_once(lines);
        }
        if !answered {
            let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            let why = if status == reqwest::StatusCode::NOT_FOUND
                && self.upstream().session_id.is_some()
            {
                "the upstream no longer knows this session".to_owned()
            } else {
                format!("the upstream answered HTTP {status}: {snippet}")
            };
            fail(why).await;
        }
    }

    /// Relays each event of a `text/event-stream` answer; `Err` when the
    /// stream broke before the request's answer came.
    async fn pump(
        &self,
        response: reqwest::Response,
        lines: &mpsc::Sender<Vec<u8>>,
        initialize: bool,
    ) -> Result<(), String> {
        let mut parser = sse::Parser::new(self.max_message);
        let mut body = response.bytes_stream();
        let mut events = Vec::new();
        let mut answered = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| format!("the upstream's stream broke: {error}"))?;
            parser
                .feed(&chunk, &mut events)
                .map_err(|error| error.to_string())?;
            for event in events.drain(..) {
                // An event without data (a stream's first, which some
                // servers send to prime resumption) carries no message.
                if event.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let Ok(message) = serde_json::from_slice::<Value>(&event) else {
                    tracing::warn!(upstream = %self.url, "dropped an upstream event that is not JSON");
                    continue;
                };
                if message.get("id").is_some()
                    && (message.get("result").is_some() || message.get("error").is_some())
                {
                    answered = true;
                }
                self.relay(&message, lines, initialize).await;
            }
        }
        if answered {
            Ok(())
        } else {
            Err("the upstream's stream ended without an answer".into())
        }
    }

    /// Hands one upstream message to the relay, on a line of its own.
    async fn relay(&self, message: &Value, lines: &mpsc::Sender<Vec<u8>>, initialize: bool) {
        if initialize
            && let Some(version) = message
                .get("result")
                .and_then(|r| r.get("protocolVersion"))
                .and_then(Value::as_str)
        {
            self.upstream().protocol_version = Some(version.to_owned());
        }
        if let Ok(line) = serde_json::to_vec(message) {
            let _ = lines.send(line).await;
        }
    }

    /// Starts listening on the GET stream once the upstream has a session.
    fn listen_once(&self, lines: &mpsc::Sender<Vec<u8>>) {
        let start = {
            let mut upstream = self.upstream();
            let start = upstream.session_id.is_some()
                && upstream.protocol_version.is_some()
                && !upstream.listening;
            upstream.listening |= start;
            start
        };
        if start {
            tokio::spawn(self.clone().listen(lines.clone()));
        }
    }

    /// The upstream's GET stream: what the server sends outside any
    /// request. Reopened while the session lasts; an upstream that offers
    /// none (405) is not asked again.
    async fn listen(self, lines: mpsc::Sender<Vec<u8>>) {
        let mut backoff = Duration::from_millis(100);
        for _ in 0..20 {
            let Some(session) = self.upstream().session_id.clone() else {
                return;
            };
            let mut request = self
                .to(reqwest::Method::GET)
                .header("accept", "text/event-stream")
                .header("mcp-session-id", session);
            if let Some(version) = self.upstream().protocol_version.clone() {
                request = request.header(headers::PROTOCOL_VERSION, version);
            }
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    backoff = Duration::from_millis(100);
                    let _ = self.pump(response, &lines, false).await;
                }
                Ok(response) if response.status().is_client_error() => return,
                _ => {}
            }
            if lines.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// What the adapter reads of a message it forwards: its method and id,
/// the protocol version of its envelope, and the name (or URI) the routing
/// header carries.
#[derive(Debug, Default, PartialEq)]
struct Outgoing {
    method: Option<String>,
    /// Present (`null` included) when the message has an id.
    id: Option<Value>,
    version: Option<String>,
    name: Option<String>,
}

impl Outgoing {
    /// Read without building the message (its arguments are skipped)
    /// when it is an object with one copy of each key read; otherwise in
    /// full, as a JSON value, so both readings agree.
    fn read(message: &[u8]) -> Outgoing {
        let object = message.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if object && let Ok(peek) = serde_json::from_slice::<Peek>(message) {
            let method = peek
                .method
                .as_ref()
                .and_then(Value::as_str)
                .map(str::to_owned);
            let params = match peek.params {
                None => None,
                Some(raw) if raw.get().starts_with('{') => {
                    match serde_json::from_str::<PeekParams>(raw.get()) {
                        Ok(params) => Some(params),
                        Err(_) => return Outgoing::read_whole(message),
                    }
                }
                // Not an object: nothing is read from it.
                Some(_) => None,
            };
            let params = params.as_ref();
            let version = params
                .and_then(|p| p.meta.as_ref())
                .and_then(|m| m.get(headers::PROTOCOL_VERSION_META))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let name = method
                .as_deref()
                .and_then(headers::named_by)
                .and_then(|member| match member {
                    "name" => params?.name.as_ref(),
                    _ => params?.uri.as_ref(),
                })
                .and_then(Value::as_str)
                .map(str::to_owned);
            return Outgoing {
                method,
                id: peek.id,
                version,
                name,
            };
        }
        Outgoing::read_whole(message)
    }

    fn read_whole(message: &[u8]) -> Outgoing {
        let parsed: Option<Value> = serde_json::from_slice(message).ok();
        let method = parsed
            .as_ref()
            .and_then(|m| m.get("method"))
            .and_then(Value::as_str);
        let params = parsed.as_ref().and_then(|m| m.get("params"));
        Outgoing {
            method: method.map(str::to_owned),
            id: parsed.as_ref().and_then(|m| m.get("id")).cloned(),
            version: headers::envelope_version(params).map(str::to_owned),
            name: method
                .and_then(headers::named_by)
                .and_then(|member| params?.get(member)?.as_str())
                .map(str::to_owned),
        }
    }
}

/// Present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

#[derive(serde::Deserialize)]
struct Peek {
    #[serde(default, deserialize_with = "present")]
    method: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default)]
    params: Option<Box<serde_json::value::RawValue>>,
}

#[derive(serde::Deserialize)]
struct PeekParams {
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    uri: Option<Value>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

/// Whether `body` is one JSON object answering a request (an `id` with a
/// `result` or an `error`), read without building its values; `None` when
/// it cannot be read so (not one object, an escaped key).
fn answers_request(body: &[u8]) -> Option<bool> {
    let fields: std::collections::HashMap<&str, &serde_json::value::RawValue> =
        serde_json::from_slice(body).ok()?;
    Some(
        fields.contains_key("id")
            && (fields.contains_key("result") || fields.contains_key("error")),
    )
}

async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| format!("reading the upstream's answer: {error}"))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("the upstream's answer exceeds {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::{Outgoing, answers_request};

    /// A single answer is recognised without being built; anything else
    /// is left to the full reading.
    #[test]
    fn answers_are_recognised_as_they_came() {
        let cases: [(&str, Option<bool>); 7] = [
            (
                r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#,
                Some(true),
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700}}"#,
                Some(true),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#,
                Some(false),
            ),
            (r#"{"jsonrpc":"2.0","id":3}"#, Some(false)),
            (r#"[{"jsonrpc":"2.0","id":3,"result":{}}]"#, None),
            (r#"{"i\u0064":3,"result":{}}"#, None),
            ("not json", None),
        ];
        for (body, expected) in cases {
            assert_eq!(answers_request(body.as_bytes()), expected, "{body}");
        }
    }

    /// The quick reading agrees with reading the whole message, whatever
    /// shape it has.
    #[test]
    fn outgoing_reads_as_the_whole_message_does() {
        let messages = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"a":[1,{"b":2}]},"name":"echo"}}"#,
            r#"{"id":null,"method":"resources/read","params":{"uri":"file:///x","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            r#"{"id":"a","method":"tools/call","params":{"name":"x","name":"y"}}"#,
            r#"{"id":1,"id":2,"method":"ping"}"#,
            r#"{"id":1,"method":"tools/call","params":["echo",1,2]}"#,
            r#"{"id":1,"method":"tools/call","params":null}"#,
            r#"{"method":7,"params":{"name":3}}"#,
            r#"{"method":"notifications/initialized"}"#,
            r#"["tools/call",1,{"name":"echo"}]"#,
            r#" {"id":2,"method":"prompts/get","params":{"name":"caf\u00e9"}}"#,
            "not json",
        ];
        for message in messages {
            assert_eq!(
                Outgoing::read(message.as_bytes()),
                Outgoing::read_whole(message.as_bytes()),
                "{message}"
            );
        }
    }
}
