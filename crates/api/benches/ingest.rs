//! Ingest benchmark: HTTP ingest of realistic events in batches into the
//! SQLite store, against the raw SQLite insert rate of the same events
//! measured in the same run.
//!
//! ```sh
//! cargo bench -p custody-api --bench ingest -- [EVENTS] [CLIENTS]
//! ```
//!
//! The baseline prepares every event beforehand (serialized, columns
//! extracted) and times only the inserts, in transactions of one batch each,
//! through the store's own insert code. The HTTP figure covers everything a
//! client waits for: sending NDJSON, decoding and validating each item, the
//! engine's stages, queueing, group commit with fsync, and the answer. Client
//! and server share this machine's cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use custody_api::{AppState, Limits};
use custody_engine::{Decision, Engine, Evaluated, Normalize};
use custody_store::{Durability, Store, StoreOptions, raw};

const BATCH: usize = 1000;

/// The allocator the `custody` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let durability = match std::env::var("CUSTODY_BENCH_DURABILITY").as_deref() {
        Ok("normal") => Durability::Normal,
        _ => Durability::Full,
    };

    let lines: Vec<String> = (0..events).map(realistic_event).collect();
    let mean = lines.iter().map(String::len).sum::<usize>() / lines.len();
    let (smallest, largest) = (
        lines.iter().map(String::len).min().unwrap_or(0),
        lines.iter().map(String::len).max().unwrap_or(0),
    );
    println!(
        "events: {events}, {mean} bytes on average ({smallest}..{largest}), batches of {BATCH}"
    );
    println!(
        "durability: {durability:?}, cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let raw_rate = baseline(&lines, durability);
    println!(
        "baseline  raw SQLite insert (store's insert code, same events): {raw_rate:>9.0} events/s"
    );

    let (rate, p50, p99, max) = http(&lines, clients, durability);
    println!(
        "measured  HTTP ingest, {clients} clients, acknowledged durable:      {rate:>9.0} events/s   \
         ack latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!("ratio     HTTP / raw: {:.0}%", 100.0 * rate / raw_rate);
}

/// The store's `max_pending_postings`, from `CUSTODY_BENCH_PENDING`.
fn pending_postings() -> usize {
    std::env::var("CUSTODY_BENCH_PENDING")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(StoreOptions::default().max_pending_postings)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Times the store's insert code alone on prepared events.
fn baseline(lines: &[String], durability: Durability) -> f64 {
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = StoreOptions {
        durability,
        max_pending_postings: pending_postings(),
        ..StoreOptions::default()
    };
    let mut raw =
        raw::open(&dir.path().join("custody.db"), &options).expect("opening the baseline database");
    let now = Utc::now();
    let preparing = Instant::now();
    let prepared: Vec<raw::PreparedEvent> = lines
        .iter()
        .map(|line| {
            let event = custody_event::decode(line.as_bytes()).expect("benchmark events are valid");
            let event = custody_engine::stages::Stamp.normalize(event, now);
            raw::PreparedEvent::new(Evaluated {
                event,
                signals: Vec::new(),
                decision: Decision::allow(),
                actions: Vec::new(),
            })
            .expect("benchmark events serialize")
        })
        .collect();
    println!(
        "prepare   decode, stamp and serialize, one thread: {:.1} µs/event",
        preparing.elapsed().as_secs_f64() * 1e6 / lines.len() as f64
    );
    let started = Instant::now();
    for chunk in prepared.chunks(BATCH) {
        raw.insert(chunk).expect("inserting");
    }
    let elapsed = started.elapsed();
    // As with the store, whose closing is not timed either: every event is
    // committed by now; this writes the postings still in memory.
    raw.finish().expect("writing the postings");
    lines.len() as f64 / elapsed.as_secs_f64()
}

/// Runs the real server in-process and posts every event over HTTP.
fn http(
    lines: &[String],
    clients: usize,
    durability: Durability,
) -> (f64, Duration, Duration, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("CUSTODY_BENCH_WORKERS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            durability,
            max_group_events: std::env::var("CUSTODY_BENCH_GROUP")
                .ok()
                .and_then(|g| g.parse().ok())
                .unwrap_or(StoreOptions::default().max_group_events),
            max_pending_postings: pending_postings(),
            ..StoreOptions::default()
        },
    )
    .expect("store");
    let token = custody_api::issue_token(&store, custody_api::Role::Ingest, None)
        .expect("token")
        .secret;
    let engine = Engine::builder(Arc::new(store.clone()));
    // The attribute stage `custody serve` runs: attribution and the graph.
    // `CUSTODY_BENCH_ATTRIBUTE=attribution` keeps no graph (`--no-graph`);
    // `reported` keeps the events' own claims, for comparison.
    let engine = match std::env::var("CUSTODY_BENCH_ATTRIBUTE").as_deref() {
        Ok("reported") => engine,
        Ok("attribution") => engine.attribute(custody_graph::Live::without_graph(
            custody_graph::Attributor::default(),
        )),
        _ => engine.attribute(custody_graph::Live::new(
            custody_graph::Attributor::default(),
            custody_graph::Graph::default(),
        )),
    };
    // The detect stage `custody serve` runs: the shipped rule pack and
    // baselines. `CUSTODY_BENCH_DETECT=none` leaves it out.
    // `rules` runs the pack without learning baselines.
    let detections = match std::env::var("CUSTODY_BENCH_DETECT").as_deref() {
        Ok("none") => None,
        Ok("rules") => {
            let set = custody_detect::RuleSet::load(&custody_detect::builtin::files())
                .expect("the shipped rules");
            let config = custody_detect::DetectionsConfig {
                baselines: custody_detect::BaselineConfig {
                    max_types: 1,
                    max_runs: 1,
                    max_values: 0,
                    ..Default::default()
                },
                ..Default::default()
            };
            Some(Arc::new(
                custody_detect::Detections::new(&set, config).expect("the shipped rules"),
            ))
        }
        _ => Some(Arc::new(
            custody_detect::Detections::builtin().expect("the shipped rules"),
        )),
    };
    let engine = match &detections {
        None => engine,
        Some(detections) => engine.detect(detections.clone()),
    };
    let engine = Arc::new(engine.build());
    // Bytes, so a client's copy of a body costs a reference count, as a
    // client in a process of its own would not copy at all.
    let bodies: Arc<Vec<axum::body::Bytes>> = Arc::new(
        lines
            .chunks(BATCH)
            .map(|chunk| axum::body::Bytes::from(chunk.join("\n")))
            .collect(),
    );

    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listening");
        let url = format!(
            "http://{}/v1/events",
            listener.local_addr().expect("address")
        );
        let state = AppState::new(engine, store.clone(), Limits::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(custody_api::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let next = Arc::new(AtomicUsize::new(0));
        let cpu_before = thread_cpu();
        let written_before = written_bytes();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (http, url, token, bodies, next) = (
                http.clone(),
                url.clone(),
                token.clone(),
                bodies.clone(),
                next.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(index) else { break };
                    loop {
                        let sent = Instant::now();
                        let response = http
                            .post(&url)
                            .bearer_auth(&token)
                            .header("content-type", "application/x-ndjson")
                            .body(body.clone())
                            .send()
                            .await
                            .expect("posting a batch");
                        let status = response.status();
                        let _ = response.bytes().await;
                        if status == 429 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                        assert_eq!(status, 200, "a batch was refused");
                        latencies.push(sent.elapsed());
                        break;
                    }
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("client task"));
        }
        let elapsed = started.elapsed();
        let cpu = thread_cpu();
        if let (Some(before), Some(after)) = (written_before, written_bytes()) {
            println!(
                "disk      written during HTTP ingest: {:.0} MB, {:.0} bytes per event",
                (after - before) as f64 / 1e6,
                (after - before) as f64 / lines.len() as f64
            );
        }
        let mut spent: Vec<(String, f64)> = cpu
            .iter()
            .map(|(name, seconds)| {
                (
                    name.clone(),
                    seconds - cpu_before.get(name).copied().unwrap_or(0.0),
                )
            })
            .filter(|(_, seconds)| *seconds > 0.01)
            .collect();
        spent.sort_by(|a, b| b.1.total_cmp(&a.1));
        let spent: Vec<String> = spent
            .iter()
            .map(|(name, seconds)| {
                format!("{name} {:.0}%", 100.0 * seconds / elapsed.as_secs_f64())
            })
            .collect();
        println!(
            "cpu       during HTTP ingest, of one core: {}",
            spent.join(", ")
        );
        let _ = stop.send(());
        let _ = server.await;
        (elapsed, latencies)
    });
    let (elapsed, mut latencies) = result;
    let stats = store.stats();
    println!(
        "store     {} commits, {:.0} events per group commit on average",
        stats.commits,
        stats.committed_events as f64 / stats.commits.max(1) as f64
    );
    if let Some(detections) = &detections {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = detections.sigma.stats();
        let mut rules: std::collections::BTreeMap<String, usize> = Default::default();
        let mut query = custody_store::FindingQuery {
            limit: 1000,
            ..Default::default()
        };
        loop {
            let page = store.findings(&query).expect("findings");
            for found in &page.findings {
                *rules
                    .entry(found.finding.analytic.title.clone())
                    .or_default() += 1 + found.repeats as usize;
            }
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => break,
            }
        }
        println!(
            "detect    {} rule matches, {} correlations fired, {} findings opened, {} repeats; by rule (with repeats): {rules:?}",
            stats.matches.load(Relaxed),
            stats.correlations.load(Relaxed),
            detections.findings.opened.load(Relaxed),
            detections.findings.repeats.load(Relaxed),
        );
    }
    let stored = store.count().expect("counting");
    assert_eq!(
        stored as usize,
        lines.len(),
        "every acknowledged event is stored"
    );
    queries(&store, lines.len());
    store.close().expect("closing the store");
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len() - 1))
            .copied()
            .unwrap_or_default()
    };
    (
        lines.len() as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or_default(),
    )
}

/// Times the first page (100 events, newest first) of queries by each
/// filter on the store just filled, part of whose postings are still in
/// memory; the time-ordered page without filters is the baseline.
fn queries(store: &Store, events: usize) {
    use custody_store::EventQuery;
    let text = |s: String| Some(s);
    type Shape = Box<dyn Fn(usize) -> EventQuery>;
    let shapes: [(&str, Shape); 5] = [
        ("no filter (baseline)", Box::new(|_| EventQuery::default())),
        (
            "actor (~1/40 of events)",
            Box::new(move |i| EventQuery {
                actor: text(format!("agent-{}", i % 40)),
                ..EventQuery::default()
            }),
        ),
        (
            "run (~1/500)",
            Box::new(move |i| EventQuery {
                run: text(format!("run-{:05}", i % 500)),
                ..EventQuery::default()
            }),
        ),
        (
            "target resource (a few events)",
            Box::new(move |i| EventQuery {
                target: text(format!(
                    "arn:aws:s3:::customer-exports/2026/11/part-{:05}.parquet",
                    // S3 reads are the events with `i % 8` 4 or 5.
                    (i * 8 + 4) % 4096
                )),
                ..EventQuery::default()
            }),
        ),
        (
            "root and kind (~1/5, then 1/4)",
            Box::new(move |i| EventQuery {
                root: text(format!(
                    "{}@example.com",
                    ["alice", "bob", "carol", "dan", "erin"][i % 5]
                )),
                kinds: vec![custody_event::EventKind::DataAccess],
                ..EventQuery::default()
            }),
        ),
    ];
    let runs = 200;
    for (name, query) in &shapes {
        let mut times: Vec<Duration> = (0..runs)
            .map(|i| {
                let started = Instant::now();
                let page = store.query(&query(i * 7919 % events)).expect("querying");
                assert!(!page.events.is_empty(), "{name} finds events");
                started.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "query     first page, {name:<32} p50 {:>6.2} ms, p99 {:>6.2} ms",
            ms(times[runs / 2]),
            ms(times[runs * 99 / 100])
        );
    }
}

/// Bytes this process has caused to be written to storage, from
/// `/proc/self/io` (`None` where there is none).
fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))?
        .trim()
        .parse()
        .ok()
}

/// CPU seconds (user and system) by thread name, summed over threads of one
/// name, from `/proc/self/task` (empty where there is none).
fn thread_cpu() -> std::collections::HashMap<String, f64> {
    let mut cpu = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The name is in parentheses and may hold spaces; fields follow it.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
        *cpu.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    cpu
}

/// A realistic event of 0.5 to 1 KiB: a mix of kinds from many agents, runs
/// and humans, with a raw record from its source.
fn realistic_event(i: usize) -> String {
    let humans = [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dan@example.com",
        "erin@example.com",
    ];
    let tools = [
        "read_file",
        "write_file",
        "search_code",
        "run_tests",
        "git_commit",
        "http_fetch",
        "sql_query",
    ];
    let human = humans[i % humans.len()];
    let run = format!("run-{:05}", i % 500);
    let agent = format!("agent-{}", i % 40);
    let tool = tools[i % tools.len()];
    let observed = Utc::now() - chrono::Duration::milliseconds((300_000 - (i % 300_000)) as i64);
    let (kind, action, target, raw) = match i % 8 {
        0..=3 => (
            "tool_call",
            "tools/call",
            serde_json::json!({"tool": tool, "server": "filesystem", "resource": format!("file:///srv/repo/src/module_{}/file_{}.rs", i % 97, i % 1013)}),
            serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool, "arguments": {"path": format!("/srv/repo/src/module_{}/file_{}.rs", i % 97, i % 1013), "max_bytes": 65536}}}),
        ),
        4 | 5 => (
            "data_access",
            "s3:GetObject",
            serde_json::json!({"resource": format!("arn:aws:s3:::customer-exports/2026/11/part-{:05}.parquet", i % 4096), "resource_type": "s3_object", "system": "aws:123456789012"}),
            serde_json::json!({"eventVersion": "1.09", "eventSource": "s3.amazonaws.com", "eventName": "GetObject", "awsRegion": "eu-west-1", "sourceIPAddress": "10.0.12.7", "requestParameters": {"bucketName": "customer-exports", "key": format!("2026/11/part-{:05}.parquet", i % 4096)}}),
        ),
        6 => (
            "mcp_request",
            "resources/read",
            serde_json::json!({"server": "github", "resource": format!("repo://acme/payments/issues/{}", i % 5000)}),
            serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "resources/read", "params": {"uri": format!("repo://acme/payments/issues/{}", i % 5000)}}),
        ),
        _ => (
            "agent_spawn",
            "token_exchange",
            serde_json::json!({"principal": {"type": "agent", "id": format!("sub-{agent}"), "run_id": format!("{run}-sub-{}", i % 7)}}),
            serde_json::json!({"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "scope": "repo:read tests:run", "requested_token_type": "urn:ietf:params:oauth:token-type:access_token"}),
        ),
    };
    serde_json::json!({
        "version": 1,
        "kind": kind,
        "action": action,
        "observed_at": observed.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "source": {"type": "gateway", "name": "gw-eu-1"},
        "actor": {
            "root": {"type": "human", "id": human},
            "agents": [{"type": "agent", "id": "release-orchestrator", "run_id": format!("orch-{}", i % 100)}],
            "current": {"type": "agent", "id": agent, "run_id": run},
            "credential": {"type": "custody_token", "id": format!("jti-{:08x}", i / 50), "issuer": "https://custody.example.com"}
        },
        "target": target,
        "outcome": {"status": if i.is_multiple_of(23) { "failure" } else { "success" }, "duration_ms": (i % 400) as u64},
        "attribution": {"method": "authenticated", "evidence": [{"type": "token", "detail": format!("jti-{:08x}", i / 50)}]},
        "context": {"session_id": format!("mcp-session-{}", i % 300), "request_id": i.to_string()},
        "raw": raw
    })
    .to_string()
}
