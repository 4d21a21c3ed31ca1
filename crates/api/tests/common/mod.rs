//! The harness of the API's end-to-end tests: a real server on a loopback
//! port over a store in a temporary directory, a real HTTP client, and small
//! readers for what the server answers (JSON, server-sent events, metrics).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use custody_api::{AppState, Limits, Role};
use custody_engine::Engine;
use custody_store::{Durability, Store, StoreOptions};
use futures_util::{Stream, StreamExt as _};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any single wait in these tests may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// A server serving the API in-process, with a token of every role.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The server's store, to inspect and to issue tokens.
    pub store: Store,
    /// The client every request goes through.
    pub http: reqwest::Client,
    tokens: HashMap<Role, String>,
    /// Every state the delegation service asked to save, in order.
    pub saved: Arc<std::sync::Mutex<Vec<custody_delegation::IssuerState>>>,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<std::io::Result<()>>>,
    // Last, so the directory outlives the store handle above.
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server with default limits over a store with default options, but
    /// `Durability::Normal`: these tests are about HTTP, not fsync.
    pub async fn start() -> Server {
        Server::start_with(store_options(), Limits::default()).await
    }

    /// A server over a store opened with `options`, enforcing `limits`.
    pub async fn start_with(options: StoreOptions, limits: Limits) -> Server {
        Server::start_full(options, limits, false).await
    }

    /// A server whose pipeline attributes events and keeps the agent graph,
    /// as `custody serve` does.
    pub async fn start_with_graph() -> Server {
        Server::start_full(store_options(), Limits::default(), true).await
    }

    async fn start_full(options: StoreOptions, limits: Limits, graph: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), options).unwrap();
        let tokens = Role::ALL
            .into_iter()
            .map(|role| {
                let issued =
                    custody_api::issue_token(&store, role, Some(format!("{role} tests"))).unwrap();
                (role, issued.secret)
            })
            .collect();
        let live = custody_graph::Live::new(
            custody_graph::Attributor::default(),
            custody_graph::Graph::default(),
        );
        let engine = Engine::builder(Arc::new(store.clone()));
        let engine = Arc::new(if graph {
            engine.attribute(live.clone()).build()
        } else {
            engine.build()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let saved: Arc<std::sync::Mutex<Vec<custody_delegation::IssuerState>>> = Arc::default();
        let save: custody_api::SaveState = {
            let saved = saved.clone();
            Arc::new(move |state| {
                saved.lock().unwrap().push(state.clone());
                Ok(())
            })
        };
        let issuer =
            custody_delegation::Issuer::new(url.clone(), "custody", chrono::Duration::hours(1));
        let mut state = AppState::new(engine, store.clone(), limits)
            .with_delegation(custody_api::Delegation::new(issuer, url.clone(), save));
        if graph {
            state = state.with_graph(live);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(custody_api::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Server {
            url,
            store,
            http,
            tokens,
            saved,
            stop: Some(stop),
            serving: Some(serving),
            _dir: dir,
        }
    }

    /// The secret of the server's token of `role`.
    pub fn token(&self, role: Role) -> &str {
        &self.tokens[&role]
    }

    /// A request to `path` (which may hold a query string), without a token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    /// `POST /v1/events` with the ingest token, `Content-Type: content_type`
    /// and `body`.
    pub async fn post_events(&self, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
        send(
            self.request(Method::POST, "/v1/events")
                .bearer_auth(self.token(Role::Ingest))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// Submits `events` as a JSON array and returns their ids, insisting
    /// that every one was accepted.
    pub async fn ingest(&self, events: &[Value]) -> Vec<String> {
        let answer = self
            .post_events("application/json", Value::from(events.to_vec()).to_string())
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let body = answer.json();
        assert_eq!(body["rejected"], 0, "{answer:?}");
        body["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect()
    }

    /// `GET path?query` with the viewer token.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        send(
            self.request(Method::GET, path)
                .bearer_auth(self.token(Role::Viewer))
                .query(query),
        )
        .await
    }

    /// Every record a paginated `path` returns for `query`, walking the
    /// pages by their `next_cursor`; the records of each page are under
    /// `key` (`events`).
    pub async fn walk(&self, path: &str, query: &[(&str, &str)]) -> Vec<Value> {
        let mut records = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let mut query = query.to_vec();
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor));
            }
            let answer = self.get(path, &query).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            let page = answer.json();
            records.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return records,
            }
        }
        panic!("{path} {query:?} has more than 1000 pages");
    }

    /// Ids of every event `GET /v1/events` lists for `query`, page by page.
    pub async fn listed_ids(&self, query: &[(&str, &str)]) -> Vec<String> {
        self.walk("/v1/events", query)
            .await
            .iter()
            .map(|record| record["event"]["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Subscribes to `GET /v1/events/stream?query` with the viewer token.
    pub async fn stream(&self, query: &[(&str, &str)]) -> SseReader {
        // No overall timeout: the stream outlives any single request. Every
        // read from it is bounded instead.
        let response = reqwest::Client::new()
            .get(format!("{}/v1/events/stream", self.url))
            .bearer_auth(self.token(Role::Viewer))
            .query(query)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader {
            chunks: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// `GET /metrics` with the viewer token, as `name{labels}` -> value.
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let answer = self.get("/metrics", &[]).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        parse_metrics(&answer.body)
    }

    /// Asks the server to stop and waits up to `patience` for it to have
    /// stopped; false if it had not.
    pub async fn stop(mut self, patience: Duration) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let serving = self.serving.take().unwrap();
        match tokio::time::timeout(patience, serving).await {
            Ok(result) => {
                result.unwrap().unwrap();
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A live stream may hold a graceful shutdown up: do not wait for it.
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }
}

/// The store options of every test server unless a test needs others.
pub fn store_options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Normal,
        ..StoreOptions::default()
    }
}

/// What the server answered, body read in full.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON; fails the test when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("the body is not JSON ({error}): {self:?}"))
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }
}

/// Sends `request` and reads the whole answer.
pub async fn send(request: RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// Waits for `future`, failing the test with `what` after [`PATIENCE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `condition` until it holds, failing the test with `what` after
/// [`PATIENCE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// One message of a server-sent event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event:` field; empty when absent.
    pub event: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

/// Reads messages from a server-sent event stream.
pub struct SseReader {
    chunks: Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    /// The next message that has an `event:` field (comments and keep-alives
    /// are skipped), within [`PATIENCE`].
    pub async fn next(&mut self) -> SseMessage {
        within("a server-sent event", async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let message = parse_sse(&block);
                    if !message.event.is_empty() {
                        return message;
                    }
                    continue;
                }
                let chunk = self.chunks.next().await.expect("the stream ended").unwrap();
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
    }
}

fn parse_sse(block: &str) -> SseMessage {
    let mut message = SseMessage {
        event: String::new(),
        id: None,
        data: String::new(),
    };
    let mut data = Vec::new();
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => message.event = value.to_owned(),
            "id" => message.id = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    message.data = data.join("\n");
    message
}

/// Reads OpenMetrics text into `name{labels}` -> value.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line}"));
            (
                name.to_owned(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("not a value: {line}")),
            )
        })
        .collect()
}

/// Every example event of the repository, sorted by file name.
pub fn examples() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/events");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
        .collect()
}

/// The example event of `kind`.
pub fn example(kind: &str) -> Value {
    examples()
        .into_iter()
        .find(|event| event["kind"] == kind)
        .unwrap_or_else(|| panic!("no example of {kind}"))
}

/// A fixed, readable client-chosen event id.
pub fn id(n: usize) -> String {
    format!("00000000-0000-7000-8000-{n:012}")
}

/// A small valid event with the client-chosen id [`id`]`(n)`.
pub fn minimal(n: usize) -> Value {
    serde_json::json!({
        "id": id(n),
        "kind": "tool_call",
        "action": "tools/call",
        "observed_at": "2026-11-25T10:00:00Z",
        "source": {"type": "gateway"},
        "actor": {"current": {"type": "agent", "id": "coder", "run_id": "run-1"}},
        "outcome": {"status": "success"}
    })
}

/// `event` with the field at JSON pointer `pointer` set to `value`, whether
/// it was there or not.
pub fn with(mut event: Value, pointer: &str, value: Value) -> Value {
    let shown = event.to_string();
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    let parent = event.pointer_mut(parent).and_then(Value::as_object_mut);
    parent
        .unwrap_or_else(|| panic!("no object at {pointer} in {shown}"))
        .insert(field.to_owned(), value);
    event
}

/// `event` without its field `field`.
pub fn without(mut event: Value, field: &str) -> Value {
    event.as_object_mut().unwrap().remove(field);
    event
}

/// NDJSON of `events`, one a line.
pub fn ndjson(events: &[Value]) -> String {
    events.iter().map(|event| format!("{event}\n")).collect()
}

/// `bytes`, gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}
