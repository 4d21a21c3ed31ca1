//! Attribution benchmark: the cost per event of attribution and the graph
//! update on the hot path, against plain decoding of the same events
//! measured in the same run, and the memory the graph holds.
//!
//! ```sh
//! cargo bench -p custody-graph --bench attribution -- [EVENTS] [RUNS]
//! ```
//!
//! Events come from RUNS runs of 50 agent types under 200 humans, chains of
//! one to three agents, with tools, resources, systems, credentials and
//! sessions; half arrive authenticated, the rest as reported records whose
//! credential or session a binding or correlation explains, or nothing does.

use std::time::{Duration, Instant};

use chrono::Utc;
use custody_graph::{
    Attributor, Binding, BindingKey, Graph, NodeKey, NodeKind, Origin, Sensitivity, Trust,
};

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
    println!("events: {events} from {runs} runs");

    let now = Utc::now();
    let rss_before = rss_bytes();
    let mut attributor = Attributor::default();
    // Each run's deploy key is declared bound to it.
    for run in 0..runs {
        let (chain, _) = chain(run);
        attributor.bind(Binding {
            id: format!("decl-{run}"),
            key: BindingKey::AwsAccessKey(format!("AKIA{run:016}")),
            holder: serde_json::from_value(chain).expect("a chain"),
            valid_from: now - chrono::Duration::days(1),
            valid_until: None,
            origin: Origin::Declared,
        });
    }
    let mut graph = Graph::new(Sensitivity::new(["*payroll*", "*customer*"]));
    // Events are made, measured and dropped one at a time: what stays is
    // what attribution and the graph keep.
    let mut decode_times = Vec::with_capacity(events);
    let mut attribute_times = Vec::with_capacity(events);
    let mut graph_times = Vec::with_capacity(events);
    let mut methods = std::collections::BTreeMap::new();
    for i in 0..events {
        let (line, authenticated) = realistic(i, runs);
        // Baseline: decoding and stamping, what every event costs anyway.
        let started = Instant::now();
        let mut event = custody_event::decode(line.as_bytes())
            .expect("benchmark events are valid")
            .into_event(now, custody_event::EventId::new_v7);
        decode_times.push(nanos(started.elapsed()));
        let trust = if authenticated {
            Trust::Authenticated("jti".into())
        } else {
            Trust::Reported
        };
        let started = Instant::now();
        attributor.attribute(&mut event, &trust);
        let attributed = Instant::now();
        graph.apply(&event);
        attribute_times.push(nanos(attributed - started));
        graph_times.push(nanos(attributed.elapsed()));
        *methods
            .entry(event.attribution.method.as_str())
            .or_insert(0) += 1;
    }
    let rss_after = rss_bytes();

    let both: Vec<u32> = attribute_times
        .iter()
        .zip(&graph_times)
        .map(|(a, g)| a.saturating_add(*g))
        .collect();
    report("baseline  decode and stamp:          ", decode_times);
    report("measured  attribute and graph:       ", both);
    report("          of which attribution:      ", attribute_times);
    report("          of which the graph:        ", graph_times);
    println!("methods   {methods:?}");
    let (nodes, edges) = graph.size();
    println!(
        "graph     {nodes} nodes, {edges} edges, {:.0} MB by its own count ({:.0} bytes per node or edge)",
        graph.memory() as f64 / 1e6,
        graph.memory() as f64 / (nodes + edges).max(1) as f64
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!(
            "memory    resident growth of attribution and graph together: {:.0} MB",
            after.saturating_sub(before) as f64 / 1e6
        );
    }
    reads(&graph, events, runs);
}

/// Reads the live graph answers: a node's blast radius, every chain that
/// touched a resource, a run's neighbourhood.
fn reads(graph: &Graph, events: usize, runs: usize) {
    const READS: usize = 20_000;
    let run = |i: usize| NodeKey::new(NodeKind::Run, format!("run-{}", (i * 104_729) % runs));
    let human = |i: usize| NodeKey::new(NodeKind::Human, format!("user{}@example.com", i % 200));
    let mut times = Vec::with_capacity(READS);
    for i in 0..READS {
        let key = if i % 10 == 0 { human(i) } else { run(i) };
        let started = Instant::now();
        let view = graph
            .node_view(&key)
            .expect("every run and human is a node");
        std::hint::black_box(view);
        times.push(nanos(started.elapsed()));
    }
    report("read      blast radius (node view):  ", times);
    let mut times = Vec::with_capacity(READS / 10);
    for i in 0..READS / 10 {
        // The resource of event `e`, as `realistic` names it.
        let e = (i * 7_727) % events;
        let resource = format!(
            "file:///srv/{}/src/{}.rs",
            (e * 7919) % runs % 100,
            e % 1000
        );
        let started = Instant::now();
        let chains = graph.who(&resource, 100);
        assert!(!chains.is_empty(), "{resource} was touched");
        std::hint::black_box(chains);
        times.push(nanos(started.elapsed()));
    }
    report("read      who (100 chains):          ", times);
    let mut times = Vec::with_capacity(READS / 10);
    for i in 0..READS / 10 {
        let started = Instant::now();
        std::hint::black_box(graph.subgraph(&run(i), 2, 5000, None));
        times.push(nanos(started.elapsed()));
    }
    report("read      run subgraph (depth 2):    ", times);
}

fn nanos(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos()).unwrap_or(u32::MAX)
}

/// Prints the median, p99 and slowest of `times` (nanoseconds).
fn report(label: &str, mut times: Vec<u32>) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let us = |nanos: u32| f64::from(nanos) / 1e3;
    println!(
        "{label} median {:>8.2} µs, p99 {:>8.2} µs, slowest {:>8.2} ms",
        us(at(0.5)),
        us(at(0.99)),
        us(times.last().copied().unwrap_or_default()) / 1e3
    );
}

/// Resident memory from `/proc/self/statm` (`None` where there is none).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The chain of `run`: a human, one or two agents above, the run's agent.
fn chain(run: usize) -> (serde_json::Value, usize) {
    let human = format!("user{}@example.com", run % 200);
    let agent = format!("agent-type-{}", run % 50);
    let depth = run % 3;
    let agents: Vec<serde_json::Value> = (0..depth)
        .map(|d| serde_json::json!({"type": "agent", "id": format!("orchestrator-{d}"), "run_id": format!("run-{run}-up{d}")}))
        .collect();
    (
        serde_json::json!({
            "root": {"type": "human", "id": human},
            "agents": agents,
            "current": {"type": "agent", "id": agent, "run_id": format!("run-{run}")},
        }),
        depth,
    )
}

/// Event `i`: by one of `runs` runs; authenticated or not.
fn realistic(i: usize, runs: usize) -> (String, bool) {
    let run = (i * 7919) % runs;
    let observed = Utc::now() - chrono::Duration::milliseconds((events_span(i)) as i64);
    let authenticated = i.is_multiple_of(2);
    let (actor, _) = chain(run);
    let (actor, attributes) = match i % 6 {
        // Reported with the run's bound key.
        1 => (
            serde_json::json!({"current": {"type": "service", "id": "iam-user/ci"},
                               "credential": {"type": "aws_access_key", "id": format!("AKIA{run:016}")}}),
            serde_json::json!({}),
        ),
        // Reported in a session the run used.
        3 => (
            serde_json::json!({"current": {"type": "agent", "id": "unknown"}}),
            serde_json::json!({}),
        ),
        // Reported and unexplained.
        5 => (
            serde_json::json!({"current": {"type": "role", "id": format!("arn:aws:sts::1:assumed-role/r/{i}")},
                               "credential": {"type": "aws_role_session", "id": format!("arn:aws:sts::1:assumed-role/r/{i}")}}),
            serde_json::json!({"aws.source_identity": format!("nobody-{i}")}),
        ),
        _ => (actor, serde_json::json!({})),
    };
    let tool = ["read_file", "write_file", "search_code"][i % 3];
    let line = serde_json::json!({
        "kind": if i.is_multiple_of(4) { "data_access" } else { "tool_call" },
        "action": if i.is_multiple_of(4) { "s3:GetObject" } else { "tools/call" },
        "observed_at": observed.to_rfc3339(),
        "source": {"type": "gateway"},
        "actor": actor,
        "target": {"tool": tool,
                   "server": "filesystem",
                   "resource": format!("file:///srv/{}/src/{}.rs", run % 100, i % 1000),
                   "system": format!("aws:{}", run % 20)},
        "outcome": {"status": "success"},
        "context": {"session_id": format!("mcp-{run}")},
        "attributes": attributes,
    })
    .to_string();
    (line, authenticated)
}

fn events_span(i: usize) -> usize {
    1_000_000 - (i % 1_000_000)
}
