//! Generated policies and calls of the shapes a deployment has, shared by
//! the decide benchmark and the test that the index decides as the whole
//! set does.
//!
//! The policies scope by human (`principal in User::"..."`), agent type
//! (`principal in Agent::"..."`), run (a quarantine, `principal in
//! Run::"..."`), tool (`resource == Tool::"..."`), server (`resource in
//! Server::"..."`) and action, with conditions on depth, blast radius, run
//! age, arguments (`like`), open findings, baseline deviations and
//! signals; a few are unscoped. The calls come from 200 humans through
//! chains of one to four agents of 40 types, in 5,000 runs, on 24 tools
//! of 6 servers.

#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use custody_engine::Signal;
use custody_event::{AttributionMethod, EventId, RuntimeEvent};
use custody_policy::{Blast, RunFacts};
use serde_json::json;

pub const HUMANS: usize = 200;
pub const AGENT_TYPES: usize = 40;
pub const RUNS: usize = 5000;

pub const TOOLS: [&str; 24] = [
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
pub const SERVERS: [&str; 6] = [
    "filesystem",
    "github",
    "postgres",
    "aws",
    "slack",
    "browser",
];

/// The server a tool is on.
pub fn server_of(tool: usize) -> &'static str {
    SERVERS[tool % SERVERS.len()]
}

/// The policy set's files: `count` policies, ten files of a tenth each.
/// The first three are the broad ones every deployment starts from.
pub fn policies(count: usize) -> Vec<(String, String)> {
    let mut texts: Vec<String> = vec![String::new(); 10];
    for n in 0..count {
        let text = policy(n);
        texts[n % 10].push_str(&text);
        texts[n % 10].push('\n');
    }
    texts
        .into_iter()
        .enumerate()
        .filter(|(_, text)| !text.is_empty())
        .map(|(i, text)| (format!("policies-{i}.cedar"), text))
        .collect()
}

fn policy(n: usize) -> String {
    let human = format!("user{}@example.com", (n * 7) % HUMANS);
    let agent = format!("agent-type-{}", (n * 3) % AGENT_TYPES);
    let tool_index = n % TOOLS.len();
    let tool = TOOLS[tool_index];
    let server = server_of(tool_index);
    let id = format!("@id(\"p{n}\")");
    match n {
        0 => format!("{id}\npermit(principal, action, resource) when {{ context.depth <= 4 }};"),
        1 => format!(
            "{id}\n@reason(\"too deep\")\nforbid(principal, action, resource) when {{ context.depth > 3 && context.blast.fan_out > 20 }};"
        ),
        2 => format!(
            "{id}\n@hold(\"a new tool for this agent type\")\nforbid(principal, action == Action::\"tools/call\", resource) when {{ context.baseline.contains(\"baseline.first_seen\") && context.blast.sensitive > 0 }};"
        ),
        _ => match n % 10 {
            0 => format!(
                "{id}\npermit(principal in User::\"{human}\", action == Action::\"tools/call\", resource in Server::\"{server}\");"
            ),
            1 => format!(
                "{id}\n@reason(\"{agent} may not {tool} from deep chains\")\nforbid(principal in Agent::\"{agent}\", action == Action::\"tools/call\", resource == Tool::\"{tool}\") when {{ context.depth > 2 }};"
            ),
            2 => format!(
                "{id}\nforbid(principal, action, resource == Tool::\"{tool}\") when {{ context.arguments like \"*secret-{n}*\" }};"
            ),
            3 => format!(
                "{id}\n@hold(\"sensitive reach\")\nforbid(principal in User::\"{human}\", action, resource in Server::\"{server}\") when {{ context.blast.sensitive > {} }};",
                n % 5
            ),
            4 => format!(
                "{id}\nforbid(principal in Agent::\"{agent}\", action, resource) when {{ context.findings.contains(\"rule-{}\") }};",
                n % 50
            ),
            5 => format!(
                "{id}\npermit(principal in Agent::\"{agent}\", action in [Action::\"tools/call\", Action::\"resources/read\"], resource in Server::\"{server}\") when {{ context.run_age < {} }};",
                600 + n
            ),
            6 => format!(
                "{id}\nforbid(principal, action == Action::\"tools/call\", resource == Tool::\"{tool}-{n}\") when {{ context.baseline.contains(\"baseline.rate\") && context.blast.systems > 3 }};"
            ),
            7 if n % 20 == 7 => format!(
                "{id}\npermit(principal in User::\"{human}\", action, resource is Tool) unless {{ context.signals.contains(\"signal-{}\") }};",
                n % 30
            ),
            7 => format!(
                "{id}\n@hold(\"a long-lived run\")\nforbid(principal is Run in User::\"{human}\", action, resource is Tool in Server::\"{server}\") when {{ context.run_age > {} }};",
                3000 + n
            ),
            8 => format!(
                "{id}\n@reason(\"quarantined run\")\nforbid(principal in Run::\"run-{}\", action, resource);",
                (n * 13) % RUNS
            ),
            _ => format!(
                "{id}\npermit(principal, action == Action::\"resources/read\", resource in Server::\"{server}\") when {{ context.authenticated && context.blast.credentials == 0 }};"
            ),
        },
    }
}

/// `count` calls, chains one to four agents deep.
pub fn events(count: usize) -> Vec<RuntimeEvent> {
    let at = Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap();
    (0..count)
        .map(|i| {
            let depth = 1 + i % 4;
            let human = format!("user{}@example.com", (i * 11) % HUMANS);
            let run = (i * 17) % RUNS;
            let mut agents: Vec<serde_json::Value> = (0..depth - 1)
                .map(|level| {
                    json!({"type": "agent", "id": format!("agent-type-{}", (run + level * 5) % AGENT_TYPES),
                           "run_id": format!("run-{}-{level}", run / 4)})
                })
                .collect();
            let current = json!({"type": "agent", "id": format!("agent-type-{}", run % AGENT_TYPES),
                                 "run_id": format!("run-{run}")});
            if depth == 1 {
                agents.clear();
            }
            let tool_index = (i * 5) % TOOLS.len();
            let (kind, action, target) = match i % 10 {
                0 => (
                    "mcp_request",
                    "resources/read",
                    json!({"server": server_of(tool_index), "resource": format!("repo://acme/payments/issues/{i}")}),
                ),
                1 => (
                    "data_access",
                    "s3:GetObject",
                    json!({"resource": format!("s3://exports/part-{i}.parquet"), "system": "aws:123456789012"}),
                ),
                _ => (
                    "tool_call",
                    "tools/call",
                    json!({"tool": TOOLS[tool_index], "server": server_of(tool_index)}),
                ),
            };
            let secret = if i.is_multiple_of(7) {
                format!("secret-{}", i % 1000)
            } else {
                "public".into()
            };
            let mut event = custody_event::decode_value(json!({
                "kind": kind, "action": action, "observed_at": at,
                "source": {"type": "gateway"},
                "actor": {"root": {"type": "human", "id": human}, "agents": agents, "current": current},
                "target": target,
                "outcome": {"status": "success"},
                "attributes": {"mcp.arguments": {"path": format!("/repo/{secret}/file{i}.rs"), "query": "fn main"}},
            }))
            .unwrap()
            .into_event(at, EventId::new_v7);
            if i.is_multiple_of(2) {
                event.attribution.method = AttributionMethod::Authenticated;
            }
            event
        })
        .collect()
}

/// The facts of call `i`'s run.
pub fn facts(i: usize) -> RunFacts {
    RunFacts {
        blast: Blast {
            systems: (i % 6) as u64,
            resources: (i % 40) as u64,
            sensitive: (i % 9) as u64 / 3,
            credentials: u64::from(i.is_multiple_of(13)),
            privileged: (i % 3) as u64,
            fan_out: (i % 30) as u64,
        },
        run_age_secs: (i % 4000) as i64,
        findings: if i.is_multiple_of(5) {
            vec![format!("rule-{}", i % 50)]
        } else {
            Vec::new()
        },
        baseline: match i % 11 {
            0 => vec!["baseline.first_seen".into()],
            1 => vec!["baseline.rate".into()],
            _ => Vec::new(),
        },
    }
}

/// The signals raised on call `i`.
pub fn signals(i: usize) -> Vec<Signal> {
    match i % 8 {
        0 => vec![Signal::new(format!("signal-{}", i % 30), "a rule matched")],
        1 => vec![Signal::new("baseline.first_seen", "never used before")],
        _ => Vec::new(),
    }
}
