//! Lineage and graph read benchmark: the latency of `GET /v1/lineage/{id}`
//! and `GET /v1/blast-radius/{node}` on a large store, against reading one
//! event by id (`GET /v1/events/{id}`) measured in the same run, and the
//! memory the agent graph holds at that size.
//!
//! ```sh
//! cargo bench -p custody-cli --bench lineage -- [EVENTS] [RUNS]    # defaults: 1000000 10000
//! ```
//!
//! Each run is an orchestrator agent minted for one of 200 humans, which
//! spawns a worker sub-agent; both spawns are recorded as Custody records
//! them. The runs' events (tool calls on files, S3 reads) then arrive in
//! batches of 25 vouched for by the acting agent's token, runs interleaved.
//! Everything goes through the engine `custody serve` runs (attribution and
//! the graph) into the store, without HTTP; the reads go through HTTP.
//!
//! `CUSTODY_BENCH_DIR=PATH` keeps the store in PATH: a later run with the
//! same PATH skips the filling and rebuilds attribution and the graph by
//! replaying the store, as `custody serve` does on start, and times that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use custody_api::{AppState, Limits};
use custody_engine::{Engine, Provenance};
use custody_event::{Actor, EventId};
use custody_graph::{Attributor, Graph, Live, Sensitivity};
use custody_store::{Store, StoreOptions};

/// Events per batch: one agent's token vouches for each.
const BATCH: usize = 25;
/// Reads timed per query.
const READS: usize = 2000;

/// The allocator the `custody` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let events: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let kept = std::env::var_os("CUSTODY_BENCH_DIR").map(std::path::PathBuf::from);
    let temporary = tempfile::tempdir().expect("temporary directory");
    let dir = kept.clone().unwrap_or_else(|| temporary.path().to_owned());
    std::fs::create_dir_all(&dir).expect("the store's directory");
    println!(
        "events: {events} from {runs} runs, store in {}",
        dir.display()
    );

    let store = Store::open(&dir, StoreOptions::default()).expect("store");
    let live = Live::new(
        Attributor::default(),
        Graph::new(Sensitivity::new(["*payroll*"])),
    );
    let rss_before = rss_bytes();
    let empty = store.scan(0, 1).expect("scanning").is_empty();
    let sample = if empty {
        fill(&store, &live, events, runs)
    } else {
        replay(&store, &live)
    };
    let rss_after = rss_bytes();
    if let Some(graph) = live.read(|graph| (graph.size(), graph.memory())) {
        let ((nodes, edges), bytes) = graph;
        println!(
            "graph     {nodes} nodes, {edges} edges: {:.0} MB by its own count ({:.0} bytes per node or edge)",
            bytes as f64 / 1e6,
            bytes as f64 / (nodes + edges).max(1) as f64
        );
    }
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!(
            "memory    resident growth (attribution, graph, store caches): {:.0} MB",
            after.saturating_sub(before) as f64 / 1e6
        );
    }
    reads(store, live, &sample, runs);
}

/// Fills the store through the engine; returns a sample of event ids.
fn fill(store: &Store, live: &Live, events: usize, runs: usize) -> Vec<EventId> {
    let engine = Engine::builder(Arc::new(store.clone()))
        .attribute(live.clone())
        .build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut in_flight: VecDeque<custody_engine::Receipt> = VecDeque::new();
    let mut submit = |batch: Vec<custody_event::NewEvent>, provenance: &Provenance| {
        let ingested = engine
            .ingest_batch_as(batch, Utc::now(), provenance)
            .expect("the queue has room: receipts are awaited");
        in_flight.push_back(ingested.receipt);
        // Bounded, so the queue never refuses (a refused batch would have
        // been attributed already).
        while in_flight.len() > 64 {
            if let Some(receipt) = in_flight.pop_front() {
                runtime.block_on(receipt.durable()).expect("durable");
            }
        }
        ingested.ids
    };

    let started = Instant::now();
    for run in 0..runs {
        let human = human(run);
        let spawn = |chain: &Actor, agent: serde_json::Value| {
            decode(serde_json::json!({
                "kind": "agent_spawn", "action": "token_exchange", "observed_at": Utc::now(),
                "source": {"type": "custody", "name": "delegation"},
                "actor": chain, "target": {"principal": agent},
                "outcome": {"status": "success"},
                "attributes": {"custody.minted_token": format!("jti-{run}"),
                               "custody.scope": "repo:read tests:run"},
            }))
        };
        let by_human: Actor =
            serde_json::from_value(serde_json::json!({"current": human})).expect("a chain");
        submit(
            vec![spawn(&by_human, orchestrator(run))],
            &Provenance::Custody {
                what: "an agent token minted".into(),
                chain: by_human,
            },
        );
        let by_orchestrator = chain(run, false);
        submit(
            vec![spawn(&by_orchestrator, worker(run))],
            &Provenance::Custody {
                what: "a token exchange".into(),
                chain: by_orchestrator,
            },
        );
    }
    let mut sample = Vec::new();
    let batches = events.saturating_sub(2 * runs) / BATCH;
    for b in 0..batches {
        let run = (b * 7919) % runs;
        let by_worker = b % 2 == 0;
        let batch = (0..BATCH).map(|i| event(run, b * BATCH + i)).collect();
        let ids = submit(
            batch,
            &Provenance::Authenticated {
                token: format!("jti-{run}"),
                chain: chain(run, by_worker),
            },
        );
        if b.is_multiple_of((batches / READS).max(1)) {
            sample.extend(ids.first().copied());
        }
    }
    for receipt in in_flight {
        runtime.block_on(receipt.durable()).expect("durable");
    }
    let took = started.elapsed();
    println!(
        "fill      {:.0} events/s through the engine (attribution and graph) into the store, {:.0} s",
        events as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    sample
}

/// Rebuilds attribution and the graph from the store, as `custody serve`
/// does on start; returns a sample of event ids.
fn replay(store: &Store, live: &Live) -> Vec<EventId> {
    let replayed = custody_cli::replay(store, live).expect("replaying the store");
    println!(
        "replay    {} events in {:.1} s ({:.0} events/s): the start-up cost of `custody serve`",
        replayed.events,
        replayed.took.as_secs_f64(),
        replayed.events as f64 / replayed.took.as_secs_f64()
    );
    // Every 5,000th event, read again by sequence number.
    let mut sample = Vec::new();
    let mut after = 0;
    while sample.len() < READS {
        let page = store.scan(after, 1).expect("scanning");
        let Some(stored) = page.first() else { break };
        sample.push(stored.event().expect("stored events parse").id);
        after = stored.seq + 5000;
    }
    sample
}

/// Times the reads over HTTP, one at a time.
fn reads(store: Store, live: Live, sample: &[EventId], runs: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let token = custody_api::issue_token(&store, custody_api::Role::Viewer, None)
        .expect("token")
        .secret;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listening");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let engine = Arc::new(
            Engine::builder(Arc::new(store.clone()))
                .attribute(live.clone())
                .build(),
        );
        let state = AppState::new(engine, store.clone(), Limits::default()).with_graph(live);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(custody_api::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let time = |paths: Vec<String>| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move {
                let mut times = Vec::with_capacity(paths.len());
                for path in paths {
                    let started = Instant::now();
                    let answer = http
                        .get(format!("{base}{path}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .expect("answered");
                    assert!(answer.status().is_success(), "{path}: {}", answer.status());
                    let body = answer.bytes().await.expect("a body");
                    times.push(started.elapsed());
                    std::hint::black_box(body);
                }
                times
            }
        };
        let ids = || sample.iter().cycle().take(READS);
        report(
            "baseline  GET /v1/events/{id}:          ",
            time(ids().map(|id| format!("/v1/events/{id}")).collect()).await,
        );
        report(
            "measured  GET /v1/lineage/{id}:         ",
            time(ids().map(|id| format!("/v1/lineage/{id}")).collect()).await,
        );
        let nodes = (0..READS).map(|i| {
            if i % 10 == 0 {
                format!("/v1/blast-radius/human:{}", human_id(i))
            } else {
                format!("/v1/blast-radius/run:run-{}", (i * 104_729) % runs)
            }
        });
        report(
            "measured  GET /v1/blast-radius/{node}:  ",
            time(nodes.collect()).await,
        );
        let _ = stop.send(());
        let _ = server.await;
    });
}

fn report(label: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label} p50 {:>7.3} ms, p99 {:>7.3} ms, slowest {:>7.3} ms",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(times.last().copied().unwrap_or_default())
    );
}

fn decode(value: serde_json::Value) -> custody_event::NewEvent {
    custody_event::decode_value(value).expect("benchmark events are valid")
}

fn human_id(run: usize) -> String {
    format!("user{}@example.com", run % 200)
}

fn human(run: usize) -> serde_json::Value {
    serde_json::json!({"type": "human", "id": human_id(run)})
}

fn orchestrator(run: usize) -> serde_json::Value {
    serde_json::json!({"type": "agent", "id": format!("orchestrator-{}", run % 50), "run_id": format!("run-{run}")})
}

fn worker(run: usize) -> serde_json::Value {
    serde_json::json!({"type": "agent", "id": format!("worker-{}", run % 20), "run_id": format!("run-{run}.w")})
}

/// The chain of run `run`'s orchestrator, or of its worker.
fn chain(run: usize, worker_acts: bool) -> Actor {
    let chain = if worker_acts {
        serde_json::json!({"root": human(run), "agents": [orchestrator(run)], "current": worker(run)})
    } else {
        serde_json::json!({"root": human(run), "current": orchestrator(run)})
    };
    serde_json::from_value(chain).expect("a chain")
}

/// Event `i`, of run `run`: a tool call on a file, or an S3 read.
fn event(run: usize, i: usize) -> custody_event::NewEvent {
    let (kind, action, target, raw) = if i.is_multiple_of(4) {
        let key = format!("exports/{}/part-{:05}.parquet", run % 100, i % 4096);
        (
            "data_access",
            "s3:GetObject",
            serde_json::json!({"resource": format!("arn:aws:s3:::customer-data/{key}"), "system": format!("aws:{}", run % 20)}),
            serde_json::json!({"eventSource": "s3.amazonaws.com", "eventName": "GetObject", "requestParameters": {"bucketName": "customer-data", "key": key}}),
        )
    } else {
        let tool = ["read_file", "write_file", "search_code"][i % 3];
        let path = format!("/srv/{}/src/{}.rs", run % 100, i % 1000);
        (
            "tool_call",
            "tools/call",
            serde_json::json!({"tool": tool, "server": "filesystem", "resource": format!("file://{path}")}),
            serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool, "arguments": {"path": path}}}),
        )
    };
    decode(serde_json::json!({
        "kind": kind, "action": action, "observed_at": Utc::now(),
        "source": {"type": "gateway", "name": "gw-1"},
        "actor": {"current": {"type": "agent", "id": "reported"}},
        "target": target,
        "outcome": {"status": "success"},
        "context": {"session_id": format!("mcp-{run}")},
        "raw": raw,
    }))
}

/// Resident memory from `/proc/self/statm` (`None` where there is none).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
