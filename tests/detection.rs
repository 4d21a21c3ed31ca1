//! Detections through the real binary: rules loaded by `custody serve`,
//! findings stored, listed, streamed and exported, and users' rules
//! checked by `custody rules validate` and `custody rules test`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Body, Server, call, call_ok, custody, exchange_token, metrics, mint_agent_token, output_within,
    post_event,
};
use serde_json::{Value, json};

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// A rule that fires on a tool called `delete_repo`, and a correlation on
/// three calls of any tool in one run within a minute.
const RULES: &str = "title: Repository deleted by an agent
id: delete-repo
name: delete_repo
logsource:
    product: custody
    category: tool_call
detection:
    selection:
        target.tool: delete_repo
    condition: selection
level: high
tags:
    - attack.t1485
---
title: Any call
id: any-call
name: any_call
logsource:
    product: custody
    category: tool_call
detection:
    selection:
        target.tool|exists: true
    condition: selection
---
title: Busy run
id: busy-run
correlation:
    type: event_count
    rules:
        - any_call
    group-by:
        - chain.run
    timespan: 1m
    condition:
        gte: 3
level: medium
";

fn rules_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mine.yml"), text).unwrap();
    dir
}

fn call_tool(tool: &str) -> Value {
    json!({"kind": "tool_call", "action": "tools/call", "observed_at": now(),
           "source": {"type": "api"}, "actor": {"current": {"type": "agent", "id": "coder"}},
           "target": {"tool": tool, "server": "github"},
           "outcome": {"status": "success"}})
}

fn findings(server: &Server, query: &str) -> Value {
    call_ok(
        server,
        reqwest::Method::GET,
        &format!("/v1/findings{query}"),
        &server.token,
        Body::None,
    )
}

#[test]
fn findings_carry_the_chain_and_repeat_rather_than_multiply() {
    let data = tempfile::tempdir().unwrap();
    let rules = rules_dir(RULES);
    let server = Server::start(
        data.path(),
        &[
            "--no-builtin-rules",
            "--rules",
            rules.path().to_str().unwrap(),
        ],
    );
    let planner = mint_agent_token(&server, "alice@example.com", "planner", "run-1");
    let coder = exchange_token(&server, &planner, "coder", "run-2");

    let first = post_event(&server, &coder, call_tool("delete_repo"));
    let second = post_event(&server, &coder, call_tool("delete_repo"));
    let third = post_event(&server, &coder, call_tool("read_file"));

    let listed = findings(&server, "");
    let all = listed["findings"].as_array().unwrap();
    let by_rule = |rule: &str| {
        all.iter()
            .filter(|f| f["finding"]["analytic"]["id"] == rule)
            .collect::<Vec<_>>()
    };
    // Two matches of one rule in one run are one finding, counted twice.
    let deleted = by_rule("delete-repo");
    assert_eq!(deleted.len(), 1, "{listed}");
    assert_eq!(deleted[0]["repeats"], 1);
    let finding = &deleted[0]["finding"];
    assert_eq!(finding["severity"], "high");
    assert_eq!(finding["kind"], "rule");
    assert_eq!(finding["chain"]["root"]["id"], "alice@example.com");
    assert_eq!(finding["chain"]["agents"][0]["id"], "planner");
    assert_eq!(finding["chain"]["current"]["run_id"], "run-2");
    assert_eq!(
        finding["group"],
        json!([{"field": "chain.run", "value": "run-2"}])
    );
    assert_eq!(finding["events"], json!([first["id"]]));

    // The third call of the run completes the correlation, resting on all
    // three.
    let busy = by_rule("busy-run");
    assert_eq!(busy.len(), 1, "{listed}");
    assert_eq!(
        busy[0]["finding"]["events"],
        json!([first["id"], second["id"], third["id"]])
    );
    assert_eq!(busy[0]["finding"]["kind"], "correlation");

    // One finding, read alone, lists every event linked to it.
    let id = finding["id"].as_str().unwrap();
    let alone = findings(&server, &format!("/{id}"));
    assert_eq!(
        alone["finding"]["events"],
        json!([first["id"], second["id"]])
    );

    // Filters, OCSF, and the errors of bad parameters.
    assert_eq!(
        findings(&server, "?rule=busy-run")["findings"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        findings(&server, "?run=run-9")["findings"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        findings(&server, "?severity=high")["findings"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let ocsf = findings(&server, &format!("/{id}?format=ocsf"));
    assert_eq!(ocsf["class_uid"], 2004);
    assert_eq!(ocsf["finding_info"]["analytic"]["uid"], "delete-repo");
    assert_eq!(
        ocsf["finding_info"]["attacks"][0]["technique"]["uid"],
        "T1485"
    );
    assert_eq!(ocsf["finding_info"]["count"], 2);
    assert_eq!(ocsf["actor"]["user"]["uid"], "alice@example.com");
    for (query, needle) in [
        ("?severity=dire", "severity"),
        ("?cursor=zzz", "cursor"),
        ("?format=csv", "format"),
        ("?limit=0", "limit"),
    ] {
        let (status, answer) = call(
            &server,
            reqwest::Method::GET,
            &format!("/v1/findings{query}"),
            &server.token,
            Body::None,
        );
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer.to_string().contains(needle), "{query}: {answer}");
    }
    let (status, _) = call(
        &server,
        reqwest::Method::GET,
        "/v1/findings",
        "",
        Body::None,
    );
    assert_eq!(status, 401, "findings need a token");

    // The command line lists them too.
    let out = server.cli(&["findings", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let table = server.cli(&["findings", "--severity", "high"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("Repository deleted by an agent"), "{table}");
    assert!(
        table.contains("alice@example.com > coder > run-2"),
        "{table}"
    );

    // And the metrics count them.
    let metrics = metrics(&server);
    assert!(metrics.contains("custody_findings_opened 2"), "{metrics}");
    assert!(metrics.contains("custody_findings_repeated 1"), "{metrics}");
}

#[test]
fn new_findings_reach_followers_as_they_are_stored() {
    let data = tempfile::tempdir().unwrap();
    let rules = rules_dir(RULES);
    let server = Server::start(
        data.path(),
        &[
            "--no-builtin-rules",
            "--rules",
            rules.path().to_str().unwrap(),
        ],
    );
    let mut follower = custody()
        .args(["findings", "--follow", "--json", "--rule", "delete-repo"])
        .env("CUSTODY_SERVER", &server.url)
        .env("CUSTODY_TOKEN", &server.token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // Keep posting until the follower is connected and sees one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        post_event(&server, &server.token, call_tool("read_file"));
        let deleted = post_event(
            &server,
            &server.token,
            json!({"kind": "tool_call", "action": "tools/call", "observed_at": now(),
                   "source": {"type": "api"},
                   "actor": {"current": {"type": "agent", "id": "coder",
                             "run_id": format!("run-{}", Instant::now().elapsed().as_nanos())}},
                   "target": {"tool": "delete_repo"}, "outcome": {"status": "success"}}),
        );
        if let Ok(line) = received.recv_timeout(Duration::from_millis(500)) {
            break (line, deleted);
        }
        assert!(Instant::now() < deadline, "no finding reached the follower");
    };
    let (line, _) = line;
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        record["finding"]["analytic"]["id"], "delete-repo",
        "{record}"
    );
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn a_rule_that_does_not_load_stops_the_server_naming_file_and_line() {
    let data = tempfile::tempdir().unwrap();
    let rules =
        rules_dir(&RULES.replace("target.tool: delete_repo", "target.tool|sartswith: delete"));
    let out = output_within(
        custody()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(["--rules", rules.path().to_str().unwrap()])
            .stdout(Stdio::null()),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mine.yml:9"), "{stderr}");
    assert!(stderr.contains("target.tool|sartswith"), "{stderr}");
    assert!(
        !data.path().join("custody.db").exists(),
        "the store is not touched before the rules load"
    );
}

fn cli(args: &[&str]) -> std::process::Output {
    output_within(custody().args(args), Duration::from_secs(60))
}

#[test]
fn rules_validate_names_every_error_and_passes_good_rules() {
    let good = rules_dir(RULES);
    let out = cli(&["rules", "validate", good.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 detection rule(s) and 1 correlation(s)")
    );

    let bad = rules_dir(
        &RULES
            .replace("target.tool: delete_repo", "target.tool|sartswith: delete")
            .replace("        - any_call", "        - no_such_rule"),
    );
    let out = cli(&["rules", "validate", bad.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = bad.path().join("mine.yml");
    let file = file.display();
    assert!(
        stderr.contains(&format!("{file}:9: `target.tool|sartswith`")),
        "{stderr}"
    );
    assert!(stderr.contains("no_such_rule"), "{stderr}");
    assert!(stderr.contains("2 error(s)"), "{stderr}");

    let missing = cli(&["rules", "validate", "/no/such/dir"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/dir"));
}

#[test]
fn rules_test_runs_the_examples_beside_the_rules() {
    let dir = rules_dir(RULES);
    let examples = |expect_quiet_fires: bool| {
        format!(
            "rule: busy-run
cases:
  - name: three calls in one run
    expect: fire
    events:
{calls}
  - name: three calls in three runs
    expect: {quiet}
    events:
{spread}
",
            calls = (0..3)
                .map(|i| format!("      - {}", event_json("run-1", i)))
                .collect::<Vec<_>>()
                .join("\n"),
            spread = (0..3)
                .map(|i| format!("      - {}", event_json(&format!("run-{i}"), i)))
                .collect::<Vec<_>>()
                .join("\n"),
            quiet = if expect_quiet_fires { "fire" } else { "quiet" },
        )
    };
    std::fs::write(dir.path().join("mine.tests.yml"), examples(false)).unwrap();
    let out = cli(&["rules", "test", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 case(s), 0 failure(s)"), "{stdout}");

    // A wrong expectation fails, naming the case.
    std::fs::write(dir.path().join("mine.tests.yml"), examples(true)).unwrap();
    let out = cli(&["rules", "test", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL  busy-run :: three calls in three runs: expected the rule to fire"),
        "{stdout}"
    );
}

fn event_json(run: &str, second: usize) -> String {
    json!({"kind": "tool_call", "action": "tools/call",
           "observed_at": format!("2026-11-26T10:00:0{second}Z"),
           "source": {"type": "api"},
           "actor": {"current": {"type": "agent", "id": "coder", "run_id": run}},
           "target": {"tool": "read_file"}, "outcome": {"status": "success"}})
    .to_string()
}

/// The shipped pack passes its own examples through the command line, as
/// a user's copy of `rules/` would.
#[test]
fn the_shipped_pack_passes_rules_test() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let out = cli(&["rules", "test", rules.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failure(s)"), "{stdout}");
}

/// The scenario with the shipped pack: a sub-agent's run reads a
/// secret, then posts to a paste site; the ordered correlation fires with
/// the whole chain, alice -> planner -> coder, and both events.
#[test]
fn a_secret_read_then_an_external_post_opens_a_finding_with_the_whole_chain() {
    const RULE: &str = "caeceded-a6c8-4866-8708-07912cfd1e5a";
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let planner = mint_agent_token(&server, "alice@example.com", "planner", "run-1");
    let coder = exchange_token(&server, &planner, "coder", "run-2");
    let tool = |tool: &str, resource: &str| {
        json!({"kind": "tool_call", "action": "tools/call", "observed_at": now(),
               "source": {"type": "api"}, "actor": {"current": {"type": "agent", "id": "coder"}},
               "target": {"tool": tool, "server": "ops", "resource": resource},
               "outcome": {"status": "success"}})
    };
    // The post alone, and another run's read, are not the sequence.
    let other_run = exchange_token(&server, &planner, "coder", "run-3");
    post_event(&server, &other_run, tool("get_secret", "vault:kv/prod/db"));
    post_event(
        &server,
        &coder,
        tool("http_post", "https://example.com/status"),
    );
    let quiet = findings(&server, &format!("?rule={RULE}"));
    assert_eq!(quiet["findings"].as_array().unwrap().len(), 0, "{quiet}");

    let read = post_event(&server, &coder, tool("get_secret", "vault:kv/prod/db"));
    let post = post_event(
        &server,
        &coder,
        tool("http_post", "https://pastebin.com/api"),
    );
    let found = findings(&server, &format!("?rule={RULE}"));
    let found = found["findings"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let finding = &found[0]["finding"];
    assert_eq!(finding["kind"], "correlation");
    assert_eq!(finding["severity"], "high");
    assert_eq!(finding["chain"]["root"]["id"], "alice@example.com");
    assert_eq!(finding["chain"]["agents"][0]["id"], "planner");
    assert_eq!(finding["chain"]["agents"][0]["run_id"], "run-1");
    assert_eq!(finding["chain"]["current"]["id"], "coder");
    assert_eq!(finding["chain"]["current"]["run_id"], "run-2");
    assert_eq!(
        finding["group"],
        json!([{"field": "chain.run", "value": "run-2"}])
    );
    let events = finding["events"].as_array().unwrap();
    assert!(events.contains(&read["id"]), "{finding}");
    assert_eq!(events.last(), Some(&post["id"]), "{finding}");
    assert!(
        finding["analytic"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "owasp.asi02"),
        "{finding}"
    );
    // The building blocks opened no finding of their own.
    let all = findings(&server, "?limit=100");
    for record in all["findings"].as_array().unwrap() {
        assert_ne!(
            record["finding"]["analytic"]["id"],
            "43b67473-d272-4000-9b87-8ffc8c2b8097"
        );
    }
}

/// A type learns on ten runs two hours ago; now, runs like those are
/// nothing and a run using a tool it never used is a `first_seen`. The
/// baseline is shown, survives a restart, and a reset starts it over.
#[test]
fn a_learned_type_flags_a_never_used_tool_and_keeps_its_baseline() {
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--no-builtin-rules",
        "--baseline-learning",
        "1h",
        "--baseline-min-events",
        "20",
    ];
    let server = Server::start(data.path(), &args);
    let call = |run: &str, tool: &str, at: chrono::DateTime<chrono::Utc>| {
        json!({"kind": "tool_call", "action": "tools/call", "observed_at": at,
               "source": {"type": "api"},
               "actor": {"root": {"type": "human", "id": "alice@example.com"},
                         "current": {"type": "agent", "id": "coder", "run_id": run}},
               "target": {"tool": tool, "server": "github"},
               "outcome": {"status": "success"}})
    };
    let then = chrono::Utc::now() - chrono::Duration::hours(2);
    for run in 0..10 {
        for (i, tool) in ["read_file", "edit_file", "run_tests"]
            .into_iter()
            .enumerate()
        {
            let at = then + chrono::Duration::seconds(run * 60 + i as i64 * 5);
            post_event(
                &server,
                &server.token,
                call(&format!("learn-{run}"), tool, at),
            );
        }
    }
    let first_seen = |server: &Server| {
        findings(server, "?rule=baseline.first_seen")["findings"]
            .as_array()
            .unwrap()
            .clone()
    };
    let now = chrono::Utc::now();
    for (i, tool) in ["read_file", "edit_file", "run_tests"]
        .into_iter()
        .enumerate()
    {
        post_event(
            &server,
            &server.token,
            call(
                "like-before",
                tool,
                now + chrono::Duration::milliseconds(i as i64),
            ),
        );
    }
    assert!(first_seen(&server).is_empty(), "{:?}", first_seen(&server));

    // `read_file` first, as learned; then a tool it never used.
    post_event(&server, &server.token, call("odd", "read_file", now));
    let odd = post_event(
        &server,
        &server.token,
        call(
            "odd",
            "delete_repo",
            now + chrono::Duration::milliseconds(5),
        ),
    );
    let found = first_seen(&server);
    let tools: Vec<&Value> = found
        .iter()
        .filter(|f| f["finding"]["group"][1]["field"] == "tool")
        .collect();
    assert_eq!(tools.len(), 1, "{found:?}");
    assert_eq!(tools[0]["finding"]["group"][1]["value"], "delete_repo");
    assert_eq!(tools[0]["finding"]["events"], json!([odd["id"]]));
    assert_eq!(tools[0]["finding"]["kind"], "baseline");

    let shown = server.cli(&["baseline", "show", "coder"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(text.contains("state:           enforced"), "{text}");
    assert!(text.contains("events learned:  30"), "{text}");
    assert!(text.contains("  read_file -> edit_file"), "{text}");

    // A restart keeps what was learned.
    server.stop();
    let server = Server::start(data.path(), &args);
    let listed = server.cli(&["baseline", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["baselines"][0]["agent_type"], "coder");
    assert_eq!(listed["baselines"][0]["events"], 30);
    assert_eq!(listed["baselines"][0]["state"], "enforced");

    // A reset forgets it, here and in the store.
    let reset = server.cli(&["baseline", "reset", "coder"]);
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    let gone = server.cli(&["baseline", "show", "coder"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no baseline"));
    server.stop();
    let server = Server::start(data.path(), &args);
    let listed = server.cli(&["baseline", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["baselines"], json!([]));
}

/// A threshold from the TOML file: a run reaching more distinct resources
/// than allowed opens one finding, and a bad threshold stops the server.
#[test]
fn thresholds_from_the_configuration_file() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("custody.toml");
    std::fs::write(
        &config,
        "[[thresholds]]\nname = \"reach\"\nmetric = \"distinct_resources\"\nlimit = 3\nwindow = \"5m\"\nseverity = \"high\"\n",
    )
    .unwrap();
    let server = Server::start(
        data.path(),
        &["--no-builtin-rules", "--config", config.to_str().unwrap()],
    );
    for i in 0..6 {
        post_event(
            &server,
            &server.token,
            json!({"kind": "data_access", "action": "s3:GetObject", "observed_at": now(),
                   "source": {"type": "api"},
                   "actor": {"current": {"type": "agent", "id": "coder", "run_id": "run-1"}},
                   "target": {"resource": format!("s3://bucket/{i}")},
                   "outcome": {"status": "success"}}),
        );
    }
    let found = findings(&server, "?rule=threshold.reach");
    let found = found["findings"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0]["repeats"], 0,
        "one finding; the 5th and 6th resources are counted, not written"
    );
    assert_eq!(found[0]["finding"]["kind"], "threshold");
    assert_eq!(found[0]["finding"]["severity"], "high");
    drop(server);

    std::fs::write(
        &config,
        "[[thresholds]]\nname = \"reach\"\nmetric = \"distinct_resources\"\nlimit = 3\nwindow = \"five\"\n",
    )
    .unwrap();
    let out = output_within(
        custody()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .stdout(Stdio::null()),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("thresholds[0] (`reach`): window"),
        "{stderr}"
    );
}
