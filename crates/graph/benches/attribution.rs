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
use custody_graph::{Attributor, Binding, BindingKey, Graph, Origin, Sensitivity, Trust};

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
    let lines: Vec<(String, bool)> = (0..events).map(|i| realistic(i, runs)).collect();
    println!("events: {events} from {runs} runs");

    // Baseline: decoding and stamping, what every event costs anyway.
    let now = Utc::now();
    let mut decode_times = Vec::with_capacity(events);
    let mut decoded = Vec::with_capacity(events);
    for (line, _) in &lines {
        let started = Instant::now();
        let event = custody_event::decode(line.as_bytes())
            .expect("benchmark events are valid")
            .into_event(now, custody_event::EventId::new_v7);
        decode_times.push(started.elapsed());
        decoded.push(event);
    }

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
    let mut times = Vec::with_capacity(events);
    let mut methods = std::collections::BTreeMap::new();
    for (event, (_, authenticated)) in decoded.iter_mut().zip(&lines) {
        let trust = if *authenticated {
            Trust::Authenticated("jti".into())
        } else {
            Trust::Reported
        };
        let started = Instant::now();
        attributor.attribute(event, &trust);
        times.push(started.elapsed());
        *methods
            .entry(event.attribution.method.as_str())
            .or_insert(0) += 1;
    }
    let rss_attributed = rss_bytes();
    let mut graph = Graph::new(Sensitivity::new(["*payroll*", "*customer*"]));
    for (event, time) in decoded.iter().zip(times.iter_mut()) {
        let started = Instant::now();
        graph.apply(event);
        *time += started.elapsed();
    }
    let rss_after = rss_bytes();

    let (d50, d99) = percentiles(&mut decode_times);
    let (a50, a99) = percentiles(&mut times);
    println!(
        "baseline  decode and stamp:               median {:>6.2} µs, p99 {:>6.2} µs",
        us(d50),
        us(d99)
    );
    println!(
        "measured  attribute and update the graph: median {:>6.2} µs, p99 {:>6.2} µs",
        us(a50),
        us(a99)
    );
    println!("methods   {methods:?}");
    let (nodes, edges) = graph.size();
    println!("graph     {nodes} nodes, {edges} edges");
    if let (Some(before), Some(attributed), Some(after)) = (rss_before, rss_attributed, rss_after) {
        let mb = |bytes: u64| bytes as f64 / 1e6;
        println!(
            "memory    resident growth: attribution {:.0} MB (bindings, sessions, and the \
             events' longer chains), graph {:.0} MB ({:.0} bytes per node or edge)",
            mb(attributed.saturating_sub(before)),
            mb(after.saturating_sub(attributed)),
            after.saturating_sub(attributed) as f64 / (nodes + edges).max(1) as f64
        );
    }
}

fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn percentiles(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    (at(0.5), at(0.99))
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
