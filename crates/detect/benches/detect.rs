//! Detection benchmark: events through the engine with 100 Sigma detection
//! rules and 10 correlation rules, against the same engine with no rules,
//! in the same run, on two threads; and the memory of one million live
//! correlation groups.
//!
//! ```sh
//! cargo bench -p custody-detect --bench detect -- [EVENTS] [THREADS]
//! ```
//!
//! The rules are the shipped pack (the CloudTrail rules and the agent
//! pack, its correlations included), filled up to 100 detection rules and
//! 10 correlations with generated rules of the same shapes: tool, server,
//! resource and argument matches with `contains`, `startswith`,
//! `endswith`, `re` and lists, and `event_count` / `value_count` /
//! `temporal_ordered` correlations grouped by run. The events are a mix an
//! agent platform produces: gateway and OTLP tool calls with arguments,
//! data access, sub-agent spawns, and imported CloudTrail records with
//! their raw JSON, over 50 humans, 20 agent types and 5,000 runs. Both runs
//! go through the same engine (normalize, attribute as reported, detect,
//! decide, record into a recorder that drops), so the difference is the
//! detect stage. Events are built beforehand; each thread feeds batches of
//! 100.

use std::sync::{Arc, Barrier};
use std::time::Instant;

use chrono::{Duration, Utc};
use custody_detect::{RuleFile, RuleSet, Sigma, SigmaConfig, builtin};
use custody_engine::{Detect, Engine, Evaluated, Receipt, Record, RecordError};
use custody_event::{EventId, NewEvent};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A recorder that keeps nothing: the benchmark measures the stages.
struct Drop;

impl Record for Drop {
    fn record(&self, batch: Vec<Evaluated>) -> Result<Receipt, RecordError> {
        std::hint::black_box(batch);
        let (done, receipt) = Receipt::channel();
        let _ = done.send(Ok(()));
        Ok(receipt)
    }
}

const TOOLS: [&str; 24] = [
    "read_file",
    "write_file",
    "edit_file",
    "list_dir",
    "search_code",
    "run_tests",
    "git_commit",
    "git_push",
    "create_issue",
    "comment_pr",
    "http_get",
    "http_post",
    "fetch_url",
    "query_db",
    "get_secret",
    "send_email",
    "slack_post",
    "deploy",
    "kubectl_apply",
    "s3_get",
    "s3_put",
    "browse",
    "summarize",
    "plan",
];
const SERVERS: [&str; 6] = [
    "filesystem",
    "github",
    "postgres",
    "aws",
    "slack",
    "browser",
];

/// The ingest benchmark's events (`crates/api/benches/ingest.rs`): gateway
/// tool calls, S3 reads, MCP resource reads and spawns of 40 agents in 500
/// runs, each with a raw record. `DETECT_EVENTS=ingest` selects them.
fn ingest_events(count: usize) -> Vec<NewEvent> {
    let tools = [
        "read_file",
        "write_file",
        "search_code",
        "run_tests",
        "git_commit",
        "http_fetch",
        "sql_query",
    ];
    let start = Utc::now() - Duration::minutes(5);
    (0..count)
        .map(|i| {
            let run = format!("run-{:05}", i % 500);
            let agent = format!("agent-{}", i % 40);
            let tool = tools[i % tools.len()];
            let at = start + Duration::milliseconds((i % 300_000) as i64);
            let (kind, action, target) = match i % 8 {
                0..=3 => ("tool_call", "tools/call", json!({"tool": tool, "server": "filesystem",
                    "resource": format!("file:///srv/repo/src/module_{}/file_{}.rs", i % 97, i % 1013)})),
                4 | 5 => ("data_access", "s3:GetObject", json!({"resource": format!("arn:aws:s3:::customer-exports/2026/11/part-{:05}.parquet", i % 4096),
                    "resource_type": "s3_object", "system": "aws:123456789012"})),
                6 => ("mcp_request", "resources/read", json!({"server": "github", "resource": format!("repo://acme/payments/issues/{}", i % 5000)})),
                _ => ("agent_spawn", "token_exchange", json!({"principal": {"type": "agent", "id": format!("sub-{agent}"), "run_id": format!("{run}-sub-{}", i % 7)}})),
            };
            custody_event::decode_value(json!({
                "kind": kind, "action": action, "observed_at": at,
                "source": {"type": "gateway", "name": "gw-eu-1"},
                "actor": {"root": {"type": "human", "id": format!("user{}@example.com", i % 5)},
                          "agents": [{"type": "agent", "id": "release-orchestrator", "run_id": format!("orch-{}", i % 100)}],
                          "current": {"type": "agent", "id": agent, "run_id": run}},
                "target": target, "outcome": {"status": "success"},
                "raw": {"jsonrpc": "2.0", "id": i, "method": action},
            }))
            .unwrap()
        })
        .collect()
}

fn events(count: usize) -> Vec<NewEvent> {
    if std::env::var("DETECT_EVENTS").as_deref() == Ok("ingest") {
        return ingest_events(count);
    }
    let start = Utc::now() - Duration::hours(1);
    let cloudtrail = [
        ("s3.amazonaws.com", "GetObject", true),
        ("s3.amazonaws.com", "PutObject", false),
        ("sts.amazonaws.com", "AssumeRole", true),
        ("iam.amazonaws.com", "CreateAccessKey", false),
        ("secretsmanager.amazonaws.com", "GetSecretValue", true),
        ("ec2.amazonaws.com", "DescribeInstances", true),
        (
            "lambda.amazonaws.com",
            "UpdateFunctionCode20150331v2",
            false,
        ),
        ("cloudtrail.amazonaws.com", "LookupEvents", true),
    ];
    (0..count)
        .map(|i| {
            let human = format!("user{}@example.com", i % 50);
            let agent = format!("agent-type-{}", i % 20);
            let run = format!("run-{}", i % 5000);
            let at = start + Duration::milliseconds(i as i64 * 3);
            let tool = TOOLS[i % TOOLS.len()];
            let server = SERVERS[i % SERVERS.len()];
            let chain = json!({
                "root": {"type": "human", "id": human},
                "agents": [{"type": "agent", "id": "planner", "run_id": format!("parent-{}", i % 1000)}],
                "current": {"type": "agent", "id": agent, "version": "1", "run_id": run},
            });
            let value = match i % 20 {
                // Imported CloudTrail records, with their raw JSON.
                0 | 1 => {
                    let (source, name, read_only) = cloudtrail[i % cloudtrail.len()];
                    let record = json!({
                        "eventVersion": "1.09", "eventTime": at.to_rfc3339(),
                        "eventSource": source, "eventName": name, "awsRegion": "eu-west-1",
                        "sourceIPAddress": "203.0.113.7", "userAgent": "aws-sdk-go-v2/1.30",
                        "userIdentity": {"type": "AssumedRole",
                            "arn": format!("arn:aws:sts::111122223333:assumed-role/agents/{run}"),
                            "accessKeyId": "ASIAEXAMPLEKEY", "accountId": "111122223333",
                            "sessionContext": {"sessionIssuer": {"type": "Role",
                                "arn": "arn:aws:iam::111122223333:role/agents"}}},
                        "requestParameters": {"bucketName": "reports", "key": format!("q/{i}.csv")},
                        "responseElements": null, "readOnly": read_only,
                        "eventID": format!("00000000-0000-4000-8000-{i:012}"),
                        "eventType": "AwsApiCall", "recipientAccountId": "111122223333",
                    });
                    let bytes = serde_json::to_vec(&record).unwrap();
                    let (_, event) = custody_import::import(&custody_import::CloudTrail, &bytes, Utc::now())
                        .into_iter()
                        .next()
                        .unwrap()
                        .unwrap();
                    return event;
                }
                2 => json!({"kind": "agent_spawn", "action": "agent/spawn", "observed_at": at,
                    "source": {"type": "api"}, "actor": chain,
                    "target": {"principal": {"type": "agent", "id": "helper", "run_id": format!("child-{i}")}},
                    "outcome": {"status": "success"}}),
                3..=5 => json!({"kind": "data_access", "action": "read", "observed_at": at,
                    "source": {"type": "otlp"}, "actor": chain,
                    "target": {"resource": format!("s3://bucket-{}/data/{}.parquet", i % 7, i % 900),
                               "system": format!("aws:{}", i % 3)},
                    "outcome": {"status": "success"},
                    "attributes": {"gen_ai.operation.name": "execute_tool", "db.system": "s3"}}),
                _ => json!({"kind": "tool_call", "action": "tools/call", "observed_at": at,
                    "source": {"type": if i % 3 == 0 { "otlp" } else { "gateway" }}, "actor": chain,
                    "target": {"tool": tool, "server": server,
                               "resource": format!("file:///repo/src/module{}/file{}.rs", i % 40, i % 300)},
                    "outcome": {"status": if i % 50 == 0 { "denied" } else { "success" }, "duration_ms": 12},
                    "context": {"session_id": format!("s-{}", i % 700), "tool_call_id": format!("c{i}")},
                    "attributes": {"mcp.arguments": {"path": format!("/repo/src/module{}/file{}.rs", i % 40, i % 300),
                                                     "query": "fn main"},
                                   "mcp.arguments.digest": "sha256:0f00"}}),
            };
            custody_event::decode_value(value).unwrap()
        })
        .collect()
}

/// Generated detection rules of the shapes real ones take.
fn generated_rule(n: usize) -> String {
    let detection = match n % 6 {
        0 => format!(
            "    selection:\n        target.tool|contains: 'tool{n}'\n    condition: selection"
        ),
        1 => format!(
            "    selection:\n        target.server: server{n}\n        target.tool:\n            - a{n}\n            - b{n}\n    condition: selection"
        ),
        2 => format!(
            "    selection:\n        attributes.mcp.arguments.path|endswith: '/secret{n}.txt'\n    filter:\n        outcome.status: denied\n    condition: selection and not filter"
        ),
        3 => format!(
            "    selection:\n        target.resource|startswith: 's3://restricted-{n}/'\n    condition: selection"
        ),
        4 => format!(
            "    selection:\n        target.tool|re: '^(drop|truncate)_table_{n}$'\n    condition: selection"
        ),
        _ => format!(
            "    selection:\n        actor.current.id: agent-type-{}\n        target.tool: tool-x-{n}\n    condition: selection",
            n % 20
        ),
    };
    let category = [
        "tool_call",
        "tool_call",
        "tool_call",
        "data_access",
        "tool_call",
        "tool_call",
    ][n % 6];
    format!(
        "title: Generated {n}\nid: generated-{n}\nname: generated_{n}\nlogsource:\n    product: custody\n    category: {category}\ndetection:\n{detection}\nlevel: medium\n"
    )
}

/// Generated correlations, each on a rule that matches often.
fn generated_correlation(n: usize) -> String {
    let tool = TOOLS[n % TOOLS.len()];
    let (kind, condition) = match n % 3 {
        0 => (
            "event_count",
            "    condition:\n        gte: 50\n".to_owned(),
        ),
        1 => (
            "value_count",
            "    condition:\n        field: target.resource\n        gte: 40\n".to_owned(),
        ),
        _ => (
            "event_count",
            "    condition:\n        gte: 30\n".to_owned(),
        ),
    };
    format!(
        "title: Base {n}\nid: base-{n}\nname: base_{n}\nlogsource:\n    product: custody\n    category: tool_call\ndetection:\n    selection:\n        target.tool: {tool}\n    condition: selection\n---\ntitle: Correlated {n}\nid: correlated-{n}\ncorrelation:\n    type: {kind}\n    rules:\n        - base_{n}\n    group-by:\n        - chain.run\n    timespan: 5m\n{condition}level: low\n"
    )
}

/// The shipped pack, filled up to 100 detection rules and 10 correlations.
fn rules() -> RuleSet {
    let mut files = builtin::files();
    let shipped = RuleSet::load(&files).unwrap();
    let mut rules = shipped.rules.len();
    let mut correlations = shipped.correlations.len();
    let mut n = 0;
    while correlations < 10 {
        files.push(RuleFile {
            name: format!("c{n}.yml"),
            text: generated_correlation(n),
        });
        correlations += 1;
        rules += 1;
        n += 1;
    }
    while rules < 100 {
        files.push(RuleFile {
            name: format!("g{n}.yml"),
            text: generated_rule(n),
        });
        rules += 1;
        n += 1;
    }
    let set = RuleSet::load(&files).unwrap();
    assert_eq!((set.rules.len(), set.correlations.len()), (100, 10));
    set
}

/// Long-lived worker threads, as a server's are: each run, every worker
/// copies its share of the events into batches of 100 on its own thread,
/// then all start together and the clock runs until the last is done.
struct Pool {
    jobs: Vec<std::sync::mpsc::Sender<Job>>,
}

/// One run for a worker: the engine, all the events, the start and end.
type Job = (Arc<Engine>, Arc<Vec<NewEvent>>, Arc<Barrier>);

impl Pool {
    fn new(threads: usize) -> Pool {
        let jobs = (0..threads)
            .map(|t| {
                let (send, receive) = std::sync::mpsc::channel::<Job>();
                std::thread::spawn(move || {
                    for (engine, events, barrier) in receive {
                        let mine: Vec<NewEvent> =
                            events.iter().skip(t).step_by(threads).cloned().collect();
                        let batches: Vec<Vec<NewEvent>> =
                            mine.chunks(100).map(<[NewEvent]>::to_vec).collect();
                        drop(mine);
                        barrier.wait();
                        for batch in batches {
                            std::hint::black_box(engine.ingest_batch(batch, Utc::now()).unwrap());
                        }
                        barrier.wait();
                    }
                });
                send
            })
            .collect();
        Pool { jobs }
    }

    /// Events/s through `engine`.
    fn run(&self, engine: &Arc<Engine>, events: &Arc<Vec<NewEvent>>) -> f64 {
        let barrier = Arc::new(Barrier::new(self.jobs.len() + 1));
        for job in &self.jobs {
            job.send((engine.clone(), events.clone(), barrier.clone()))
                .unwrap();
        }
        barrier.wait();
        let started = Instant::now();
        barrier.wait();
        events.len() as f64 / started.elapsed().as_secs_f64()
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(400_000);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("detection benchmark: {count} events, {threads} threads, {cpus} CPUs");

    // `DETECT_BENCH=alone` runs only the detect stage alone (for
    // profiling), `memory` only the memory measurement.
    let phase = std::env::var("DETECT_BENCH").unwrap_or_default();
    let set = rules();
    let events = Arc::new(events(count));
    if phase != "memory" {
        if phase != "alone" {
            engines(&set, &events, count, threads);
        }
        alone(&set, &events, count, threads);
    }
    if phase != "alone" {
        memory();
    }
}

fn engines(set: &RuleSet, events: &Arc<Vec<NewEvent>>, count: usize, threads: usize) {
    let plain = Arc::new(Engine::builder(Arc::new(Drop)).build());
    let pool = Pool::new(threads);
    // Warm up, then alternate five runs each; report the median.
    pool.run(&plain, &Arc::new(events[..count.min(20_000)].to_vec()));
    let _ = count;
    let mut rounds = Vec::new();
    for round in 0..5 {
        let baseline = pool.run(&plain, events);
        let sigma_round = Arc::new(Sigma::new(set, SigmaConfig::default()).unwrap());
        let engine = Arc::new(
            Engine::builder(Arc::new(Drop))
                .detect(sigma_round.clone())
                .build(),
        );
        let detecting = pool.run(&engine, events);
        let stats = sigma_round.stats();
        println!(
            "round {round} (resident {} MiB): no rules {baseline:>9.0} events/s   100 rules + 10 correlations {detecting:>9.0} events/s ({:.0}%)   matches {} correlations fired {} findings {}",
            resident_bytes() / (1024 * 1024),
            100.0 * detecting / baseline,
            stats.matches.load(std::sync::atomic::Ordering::Relaxed),
            stats
                .correlations
                .load(std::sync::atomic::Ordering::Relaxed),
            sigma_round
                .findings()
                .opened
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        rounds.push((baseline, detecting));
    }
    let median = |pick: fn(&(f64, f64)) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (baseline, detecting) = (median(|r| r.0), median(|r| r.1));
    println!(
        "median of 5: no rules {baseline:.0} events/s, with rules {detecting:.0} events/s ({:.0}% of no rules); slowest with rules {:.0}",
        100.0 * detecting / baseline,
        rounds.iter().map(|r| r.1).fold(f64::INFINITY, f64::min),
    );
}

/// The detect stage alone, on already-normalized events.
fn alone(set: &RuleSet, events: &[NewEvent], count: usize, threads: usize) {
    let normalized: Arc<Vec<custody_event::RuntimeEvent>> = Arc::new(
        events
            .iter()
            .map(|e| e.clone().into_event(Utc::now(), EventId::new_v7))
            .collect(),
    );
    let alone = Arc::new(Sigma::new(set, SigmaConfig::default()).unwrap());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (alone, normalized) = (alone.clone(), normalized.clone());
            scope.spawn(move || {
                for event in normalized.iter().skip(t).step_by(threads) {
                    std::hint::black_box(alone.detect(event));
                }
            });
        }
    });
    println!(
        "detect stage alone: {:.0} events/s",
        count as f64 / started.elapsed().as_secs_f64()
    );
}

/// Memory: one million live correlation groups (one run each).
fn memory() {
    let groups = 1_000_000;
    let memory_set = RuleSet::load(&[RuleFile {
        name: "memory.yml".into(),
        text: "title: Call\nid: call\nname: call\nlogsource:\n    product: custody\n    category: tool_call\ndetection:\n    s:\n        target.tool|exists: true\n    condition: s\n---\ntitle: Busy\nid: busy\ncorrelation:\n    type: event_count\n    rules:\n        - call\n    group-by:\n        - chain.run\n    timespan: 1h\n    condition:\n        gte: 1000\n".into(),
    }])
    .unwrap();
    let memory = Sigma::new(
        &memory_set,
        SigmaConfig {
            max_groups: groups * 2,
            ..SigmaConfig::default()
        },
    )
    .unwrap();
    let start = Utc::now() - Duration::minutes(30);
    let template = custody_event::decode_value(json!({
        "kind": "tool_call", "action": "tools/call", "observed_at": start,
        "source": {"type": "gateway"},
        "actor": {"current": {"type": "agent", "id": "coder", "run_id": "r"}},
        "target": {"tool": "read_file"}, "outcome": {"status": "success"},
    }))
    .unwrap()
    .into_event(Utc::now(), EventId::new_v7);
    let before = resident_bytes();
    let started = Instant::now();
    for i in 0..groups {
        let mut event = template.clone();
        event.id = EventId::new_v7();
        event.actor.current.run_id = Some(format!("run-{i:07}"));
        event.observed_at = start + Duration::milliseconds(i as i64);
        std::hint::black_box(memory.detect(&event));
    }
    let after = resident_bytes();
    let live = memory
        .stats()
        .groups
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "memory: {live} live correlation groups in {:.1} s, resident +{:.0} MiB ({:.0} bytes a group)",
        started.elapsed().as_secs_f64(),
        (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0),
        after.saturating_sub(before) as f64 / live.max(1) as f64,
    );
}
