//! Detection-to-containment latency: from the moment the event that
//! crosses a threshold is sent (through the JSON API, and as an OTLP span)
//! to the moment the gateway refuses the run's next call, against the
//! plain gateway round trip measured in the same run.
//!
//! ```sh
//! cargo bench -p custody-api --bench containment -- [TRIALS]
//! ```
//!
//! One process, as `custody serve` runs: the API and its MCP gateway in
//! front of an echo upstream over streamable HTTP, the engine with the
//! built-in rule pack and a threshold (more than one distinct resource per
//! run), a playbook killing the run when it is crossed, the executor, and
//! the embedded store with `full` durability. Each trial is a run of its
//! own: its agent token, an open gateway session, a first resource read
//! already recorded; then the timed part: the second resource's event is
//! sent without waiting for its answer, and the run calls through the
//! gateway, call after call, until one is refused. The latency ends when
//! the refusal arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use custody_api::{AppState, GatewayAuth, Limits};
use custody_contain::{Contained, Containment, Playbooks};
use custody_engine::Engine;
use custody_gateway::http::HttpGateway;
use custody_store::{Store, StoreOptions};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};
use prost::Message as _;
use serde_json::{Value, json};
use support::echo::serve_echo;

#[path = "support/mod.rs"]
mod support;

/// The allocator the `custody` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let trials: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    println!(
        "trials: {trials} per source; cores: {}, runtime workers: 2",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(trials));
}

/// How the event crossing the threshold arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Json,
    Otlp,
}

struct Bench {
    http: reqwest::Client,
    api: String,
    gateway: String,
    admin: String,
}

async fn run(trials: usize) {
    let upstream = serve_echo().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let runs: Vec<String> = (0..2 * trials).map(|i| format!("{:016x}", i + 1)).collect();
    let (bench, tokens) = serve(dir.path(), &upstream, &runs).await;

    let mut plain = Vec::with_capacity(2 * trials);
    let mut json = Vec::with_capacity(trials);
    let mut otlp = Vec::with_capacity(trials);
    let mut calls_before = 0usize;
    for (i, (run, token)) in runs.iter().zip(&tokens).enumerate() {
        let source = if i % 2 == 0 {
            Source::Json
        } else {
            Source::Otlp
        };
        let session = open_session(&bench, token).await;
        // The plain gateway round trip, allowed.
        let started = Instant::now();
        let answer = call(&bench, token, &session, i).await;
        plain.push(started.elapsed());
        assert!(answer["result"].is_object(), "{answer}");
        // The run's first resource: recorded, below the threshold.
        send(&bench, source, run, i, 0).await;
        // Timed: the second resource crosses the threshold; the playbook
        // kills the run; the gateway refuses its next call.
        let started = Instant::now();
        let sending = {
            let http = bench.http.clone();
            let (api, admin, run) = (bench.api.clone(), bench.admin.clone(), run.clone());
            tokio::spawn(async move {
                let bench = Bench {
                    http,
                    api,
                    gateway: String::new(),
                    admin,
                };
                send(&bench, source, &run, i, 1).await;
            })
        };
        loop {
            let answer = call(&bench, token, &session, i).await;
            if answer["result"].is_object() {
                calls_before += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "run {run} was not contained"
                );
                continue;
            }
            // Refused by the kill: by the decision on the call, or by the
            // session the kill ended, or by the run's revoked token.
            let why = answer.to_string();
            assert!(
                why.contains(&format!("run:{run}")) || why.contains("revoked"),
                "run {run}'s call refused for another reason: {why}"
            );
            break;
        }
        let took = started.elapsed();
        sending.await.expect("sending");
        match source {
            Source::Json => json.push(took),
            Source::Otlp => otlp.push(took),
        }
    }
    for (label, samples) in [
        (
            "baseline  plain gateway round trip (allowed call)   ",
            &mut plain,
        ),
        (
            "measured  JSON API event -> gateway refuses the run ",
            &mut json,
        ),
        (
            "measured  OTLP span -> gateway refuses the run      ",
            &mut otlp,
        ),
    ] {
        samples.sort();
        println!(
            "{label}: p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  (n = {})",
            ms(percentile(samples, 0.50)),
            ms(percentile(samples, 0.99)),
            ms(*samples.last().expect("samples")),
            samples.len()
        );
    }
    println!(
        "calls allowed after the crossing event was sent, before the refusal: {calls_before} in {} trials",
        2 * trials
    );
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Sends run `run`'s read of resource `n` by `source`, and waits for the
/// answer.
async fn send(bench: &Bench, source: Source, run: &str, trial: usize, n: usize) {
    let resource = format!("s3://bench/run-{trial}/object-{n}");
    let response = match source {
        Source::Json => {
            let event = json!({
                "kind": "data_access", "action": "s3:GetObject",
                "observed_at": Utc::now().to_rfc3339(),
                "source": {"type": "api"},
                "actor": {"root": {"type": "human", "id": "alice@example.com"},
                          "current": {"type": "agent", "id": "bench-agent", "run_id": run}},
                "target": {"resource": resource, "system": "aws:111122223333"},
                "outcome": {"status": "success"}
            });
            bench
                .http
                .post(format!("{}/v1/events", bench.api))
                .bearer_auth(&bench.admin)
                .json(&event)
                .send()
                .await
        }
        Source::Otlp => {
            bench
                .http
                .post(format!("{}/v1/traces", bench.api))
                .bearer_auth(&bench.admin)
                .header("content-type", "application/x-protobuf")
                .body(spans(run, trial, n, &resource).encode_to_vec())
                .send()
                .await
        }
    };
    let response = response.expect("sending the event");
    assert!(
        response.status().is_success(),
        "{:?}: {}",
        source,
        response.text().await.unwrap_or_default()
    );
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// The run's agent span (its id is the run's) and a tool span under it
/// reading `resource`.
fn spans(run: &str, trial: usize, n: usize, resource: &str) -> ExportTraceServiceRequest {
    let run_id: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&run[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&run_id);
    let at = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    let agent = Span {
        trace_id: trace_id.to_vec(),
        span_id: run_id.clone(),
        name: "invoke_agent bench-agent".into(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: at,
        end_time_unix_nano: at + 1_000_000,
        attributes: vec![
            kv("gen_ai.operation.name", "invoke_agent"),
            kv("gen_ai.agent.id", "bench-agent"),
            kv("gen_ai.agent.name", "bench-agent"),
            kv("user.id", "alice@example.com"),
        ],
        ..Span::default()
    };
    let mut tool_id = run_id.clone();
    tool_id[0] ^= 0x80 | (n as u8 + 1);
    let tool = Span {
        trace_id: trace_id.to_vec(),
        span_id: tool_id,
        parent_span_id: run_id,
        name: "resources/read".into(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: at,
        end_time_unix_nano: at + 500_000,
        attributes: vec![
            kv("mcp.method.name", "resources/read"),
            kv("mcp.resource.uri", resource),
            kv("gen_ai.tool.call.id", format!("call-{trial}-{n}")),
        ],
        ..Span::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "bench-agents")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![agent, tool],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// A `tools/call` of `echo` in `session`; the JSON-RPC answer, or the
/// HTTP refusal's body.
async fn call(bench: &Bench, token: &str, session: &str, trial: usize) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": trial + 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hello"}}});
    let response = bench
        .http
        .post(&bench.gateway)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .expect("calling");
    let bytes = response.bytes().await.expect("reading");
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

async fn open_session(bench: &Bench, token: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}});
    let response = bench
        .http
        .post(&bench.gateway)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .body(init.to_string())
        .send()
        .await
        .expect("initializing");
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session")
        .to_owned();
    let _ = response.bytes().await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let _ = bench
        .http
        .post(&bench.gateway)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .bearer_auth(token)
        .body(initialized.to_string())
        .send()
        .await
        .expect("initialized");
    session
}

/// `custody serve` as it runs with a threshold and a playbook killing the
/// run that crosses it; the bench's clients, and an agent token per run.
async fn serve(dir: &std::path::Path, upstream: &str, runs: &[String]) -> (Bench, Vec<String>) {
    let store = Store::open(dir, StoreOptions::default()).expect("store");
    let admin = custody_api::issue_token(&store, custody_api::Role::Admin, None)
        .expect("token")
        .secret;
    let live = custody_graph::Live::new(
        custody_graph::Attributor::default(),
        custody_graph::Graph::default(),
    );
    let set = custody_detect::RuleSet::load(&custody_detect::builtin::files()).expect("rules");
    let threshold: custody_detect::ThresholdConfig = serde_json::from_value(json!({
        "name": "reach", "metric": "distinct_resources", "limit": 1, "per": "run",
        "severity": "high"
    }))
    .expect("threshold");
    let detections = Arc::new(
        custody_detect::Detections::new(
            &set,
            custody_detect::DetectionsConfig {
                thresholds: vec![threshold],
                ..custody_detect::DetectionsConfig::default()
            },
        )
        .expect("detections"),
    );
    let playbooks = custody_contain::playbook::parse(
        "bench.toml",
        "[[playbook]]\nid = \"contain-reach\"\n[playbook.when]\nrules = [\"threshold.reach\"]\n\
         [[playbook.actions]]\ndo = \"kill\"\n",
    )
    .expect("playbook");
    let containment = Arc::new(Containment::new());
    let (playbooks, jobs) = Playbooks::new(playbooks, containment.clone());
    let playbooks = Arc::new(playbooks);
    let engine = Arc::new(
        Engine::builder(Arc::new(store.clone()))
            .attribute(live.clone())
            .detect(detections.clone())
            .decide(Contained(containment.clone()))
            .act(playbooks.clone())
            .build(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listening");
    let public = format!("http://{}", listener.local_addr().expect("address"));
    let lifetime = chrono::Duration::hours(support::gateway::LIFETIME_HOURS);
    let issuer = custody_delegation::Issuer::new(&public, "custody", lifetime);
    let tokens = runs
        .iter()
        .map(|run| support::gateway::mint(&issuer, run))
        .collect();
    let save: custody_api::SaveState = Arc::new(|_| Ok(()));
    let delegation = custody_api::Delegation::new(issuer, &public, save);
    let state = AppState::new(engine, store.clone(), Limits::default())
        .with_delegation(delegation)
        .with_detections(detections)
        .with_graph(live);
    let config =
        support::gateway::config(&public, upstream, custody_gateway::Config::new(""), 4096, 4);
    let approvals = custody_api::contain::ApprovalQueue::new(Duration::from_secs(60));
    let gateway = HttpGateway::new(
        config,
        Arc::new(GatewayAuth::new(state.clone(), None)),
        Arc::new(approvals.clone()),
        Some(Arc::new(Contained(containment.clone()))),
    )
    .expect("the gateway");
    let state = state
        .with_gateway(gateway)
        .with_containing(custody_api::contain::Containing {
            containment,
            playbooks: Some(playbooks),
            approvals,
            policies: None,
        });
    tokio::spawn(custody_api::contain::execute(
        state.clone(),
        jobs,
        Arc::new(custody_api::contain::NoResponders),
    ));
    tokio::spawn(custody_api::serve(
        listener,
        state,
        std::future::pending::<()>(),
    ));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    (
        Bench {
            http,
            api: public.clone(),
            gateway: format!("{public}/mcp"),
            admin,
        },
        tokens,
    )
}
