//! Gateway benchmark: `tools/call` through Custody's MCP gateway against
//! the same calls made directly to the same upstream, in the same run.
//!
//! ```sh
//! cargo bench -p custody-api --bench gateway -- [CALLS] [CONCURRENCY...]
//! ```
//!
//! The upstream is an echo MCP server over streamable HTTP in this process,
//! answering each call with its argument as JSON, so that it is not the
//! bottleneck. The gateway is the one `custody serve` mounts, with
//! everything on: the caller's agent token verified on every request
//! (Ed25519), the session's relay (decode, canonical body, the engine's
//! decision), the event recorded through the server's engine (attribution,
//! graph) into the embedded store with `full` durability. The direct client
//! and the gateway's client share this machine's cores with the upstream
//! and the gateway, as they would on one host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use custody_api::{AppState, GatewayAuth, Limits};
use custody_engine::Engine;
use custody_gateway::http::HttpGateway;
use custody_store::{Store, StoreOptions};
use serde_json::{Value, json};
use support::echo::serve_echo;

#[path = "support/mod.rs"]
mod support;

/// The allocator the `custody` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let mut levels: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
    if levels.is_empty() {
        levels = vec![1, 32];
    }
    let workers = std::env::var("CUSTODY_BENCH_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    println!(
        "calls: {calls} per measurement, tools/call with a 40-byte argument; cores: {}, runtime workers: {workers}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(calls, &levels));
}

async fn run(calls: usize, levels: &[usize]) {
    let upstream = serve_echo().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (gateway, token, store) = serve_gateway(dir.path(), &upstream).await;
    let proxy = serve_proxy(&upstream).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .build()
        .expect("client");

    for &concurrency in levels {
        // Warm both paths (connections, sessions, caches), then alternate
        // direct and gateway measurements so that drift hits both.
        let direct_sessions = open_sessions(&http, &upstream, None, concurrency).await;
        let gateway_sessions = open_sessions(&http, &gateway, Some(&token), concurrency).await;
        let proxy_sessions = open_sessions(&http, &proxy, None, concurrency).await;
        measure(&http, &upstream, None, &direct_sessions, calls / 10).await;
        measure(&http, &gateway, Some(&token), &gateway_sessions, calls / 10).await;
        measure(&http, &proxy, None, &proxy_sessions, calls / 10).await;
        let mut direct = Vec::new();
        let mut through = Vec::new();
        let mut bare = Vec::new();
        for _ in 0..2 {
            direct.push(measure(&http, &upstream, None, &direct_sessions, calls / 2).await);
            through
                .push(measure(&http, &gateway, Some(&token), &gateway_sessions, calls / 2).await);
            bare.push(measure(&http, &proxy, None, &proxy_sessions, calls / 2).await);
        }
        let direct = Run::merge(direct);
        let through = Run::merge(through);
        let bare = Run::merge(bare);
        println!("concurrency {concurrency}:");
        println!(
            "  baseline  direct to the upstream:  {:>8.0} calls/s   latency p50 {:>7.1} µs, p99 {:>7.1} µs; CPU {:>5.1} µs/call",
            direct.rate(),
            direct.percentile(50.0),
            direct.percentile(99.0),
            direct.cpu_per_call()
        );
        println!(
            "  reference bare axum->reqwest proxy:{:>8.0} calls/s   latency p50 {:>7.1} µs, p99 {:>7.1} µs; CPU {:>5.1} µs/call ({:.0}% of direct's throughput)",
            bare.rate(),
            bare.percentile(50.0),
            bare.percentile(99.0),
            bare.cpu_per_call(),
            100.0 * bare.rate() / direct.rate()
        );
        println!(
            "  measured  through the gateway:     {:>8.0} calls/s   latency p50 {:>7.1} µs, p99 {:>7.1} µs; CPU {:>5.1} µs/call",
            through.rate(),
            through.percentile(50.0),
            through.percentile(99.0),
            through.cpu_per_call()
        );
        println!(
            "  added     p50 {:+.1} µs, p99 {:+.1} µs, CPU {:+.1} µs/call; throughput {:.0}% of direct, {:.0}% of the bare proxy",
            through.percentile(50.0) - direct.percentile(50.0),
            through.percentile(99.0) - direct.percentile(99.0),
            through.cpu_per_call() - direct.cpu_per_call(),
            100.0 * through.rate() / direct.rate(),
            100.0 * through.rate() / bare.rate()
        );
    }
    // Every call through the gateway was recorded: wait for the store.
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = u64::try_from(levels.len() * (calls / 10 + 2 * (calls / 2))).unwrap_or(0);
    let mut stored = 0;
    while Instant::now() < deadline {
        stored = store.count().expect("counting events");
        if stored >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = store.stats();
    println!(
        "recorded  {stored} events for {expected} calls through the gateway, in {} commits",
        stats.commits
    );
}

/// One measurement: each call's latency, the wall time of all, and the
/// CPU time this process spent meanwhile (client, gateway, store and
/// upstream together: less sensitive than throughput to what else the
/// machine runs).
struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
    cpu: Duration,
}

impl Run {
    fn merge(runs: Vec<Run>) -> Run {
        let wall = runs.iter().map(|r| r.wall).sum();
        let cpu = runs.iter().map(|r| r.cpu).sum();
        let mut latencies: Vec<Duration> = runs.into_iter().flat_map(|r| r.latencies).collect();
        latencies.sort_unstable();
        Run {
            latencies,
            wall,
            cpu,
        }
    }

    /// CPU time of the whole process per call, in microseconds.
    fn cpu_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.latencies.len().max(1) as f64
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    /// The `p`th percentile latency, in microseconds.
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        let at = rank.min(self.latencies.len() - 1);
        self.latencies
            .get(at)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }
}

/// `calls` calls spread over the sessions, one client task per session.
async fn measure(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    sessions: &[String],
    calls: usize,
) -> Run {
    let each = calls / sessions.len().max(1);
    let cpu = cpu_time();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for session in sessions {
        let (http, url, token, session) = (
            http.clone(),
            url.to_owned(),
            token.map(str::to_owned),
            session.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(each);
            for n in 0..each {
                let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": "a forty byte argument for echo......"}}});
                let began = Instant::now();
                let answer = post(&http, &url, token.as_deref(), Some(&session), &body).await;
                latencies.push(began.elapsed());
                assert!(
                    answer.1["result"]["content"][0]["text"].is_string(),
                    "{}",
                    answer.1
                );
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(calls);
    for task in tasks {
        latencies.extend(task.await.expect("a client task"));
    }
    Run {
        latencies,
        wall: started.elapsed(),
        cpu: cpu_time().saturating_sub(cpu),
    }
}

/// The CPU time of this process's threads so far (Linux; zero elsewhere).
fn cpu_time() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: &Value,
) -> (Option<String>, Value) {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let response = request.send().await.expect("posting");
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response.bytes().await.expect("reading");
    (
        session,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn open_sessions(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    count: usize,
) -> Vec<String> {
    let mut sessions = Vec::new();
    for _ in 0..count {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}});
        let (session, answer) = post(http, url, token, None, &init).await;
        let session = session.unwrap_or_else(|| panic!("no session from {url}: {answer}"));
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        post(http, url, token, Some(&session), &initialized).await;
        sessions.push(session);
    }
    sessions
}

/// A proxy with no Custody logic: each POST forwarded to `upstream` by a
/// shared reqwest client, the session header passed both ways. What one
/// more HTTP server and client hop costs on this machine, for reference.
async fn serve_proxy(upstream: &str) -> String {
    #[derive(Clone)]
    struct Proxy {
        client: reqwest::Client,
        upstream: reqwest::Url,
    }
    async fn forward(
        axum::extract::State(proxy): axum::extract::State<Proxy>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        let mut request = proxy
            .client
            .post(proxy.upstream.clone())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for name in ["mcp-session-id", "mcp-protocol-version"] {
            if let Some(value) = headers.get(name) {
                request = request.header(name, value);
            }
        }
        let Ok(response) = request.body(body).send().await else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        let status = response.status();
        let session = response.headers().get("mcp-session-id").cloned();
        let Ok(bytes) = response.bytes().await else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        let mut answer = (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response();
        if let Some(session) = session {
            answer.headers_mut().insert("mcp-session-id", session);
        }
        answer
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let proxy = Proxy {
        client,
        upstream: upstream.parse().expect("the upstream's URL"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listening");
    let url = format!("http://{}/mcp", listener.local_addr().expect("address"));
    let app = axum::Router::new()
        .route("/mcp", axum::routing::post(forward))
        .with_state(proxy);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// `custody serve`'s API with its gateway in front of `upstream`; the
/// gateway's URL, an agent token for it, and the store.
async fn serve_gateway(dir: &std::path::Path, upstream: &str) -> (String, String, Store) {
    let store = Store::open(dir, StoreOptions::default()).expect("store");
    let live = custody_graph::Live::new(
        custody_graph::Attributor::default(),
        custody_graph::Graph::default(),
    );
    let engine = Arc::new(
        Engine::builder(Arc::new(store.clone()))
            .attribute(live.clone())
            .build(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listening");
    let public = format!("http://{}", listener.local_addr().expect("address"));
    let lifetime = chrono::Duration::hours(support::gateway::LIFETIME_HOURS);
    let issuer = custody_delegation::Issuer::new(&public, "custody", lifetime);
    let token = support::gateway::mint(&issuer, "run-1");
    let save: custody_api::SaveState = Arc::new(|_| Ok(()));
    let delegation = custody_api::Delegation::new(issuer, &public, save);
    let state = AppState::new(engine, store.clone(), Limits::default())
        .with_delegation(delegation)
        .with_graph(live);
    let mut relay = custody_gateway::Config::new("");
    relay.max_in_flight = 256;
    let config = support::gateway::config(&public, upstream, relay, 1024, 64);
    let auth = GatewayAuth::new(state.clone(), None);
    let gateway = HttpGateway::new(
        config,
        Arc::new(auth),
        Arc::new(custody_gateway::approval::Nobody),
        None,
    )
    .expect("the gateway");
    let state = state.with_gateway(gateway);
    tokio::spawn(custody_api::serve(
        listener,
        state,
        std::future::pending::<()>(),
    ));
    (format!("{public}/mcp"), token, store)
}
