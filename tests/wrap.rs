//! `custody wrap` end to end: a real MCP client (the Python `mcp` SDK)
//! talks to a real MCP server (`@modelcontextprotocol/server-everything`)
//! through the real binary, which records into a real `custody serve`.
//!
//! The peers are installed by `tests/peers/install.sh` (npm and PyPI, into
//! `target/mcp-peers`), which the tests run themselves when the peers are
//! missing, as `.ci/run` does before them. A test whose peers cannot be
//! installed fails, saying why, unless `CUSTODY_SKIP_MCP_PEERS=1` asks to
//! skip it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Body, Peers, Server, call, custody, output_within, peers};
use serde_json::{Value, json};

/// One run of the Python client through `custody wrap`.
struct Run<'a> {
    peers: &'a Peers,
    server: &'a Server,
    era: &'a str,
    /// The identity arguments of `custody wrap`.
    identity: Vec<String>,
    /// Environment for `custody wrap`.
    env: Vec<(&'static str, String)>,
    /// The tools called after `echo`, as `TOOL=JSON`.
    calls: Vec<String>,
    /// Policy flags of `custody wrap`.
    policy: Vec<String>,
    /// Where held calls wait.
    approvals: PathBuf,
    /// What the server received, line by line.
    received: PathBuf,
}

impl Run<'_> {
    /// Runs the client to its end; returns its steps and what the server
    /// received.
    fn go(&self) -> (Vec<Value>, String) {
        // The server's input is copied to a file on its way in, so the test
        // sees exactly which calls reached it.
        let server_command = format!(
            "tee {} | exec node {} stdio",
            self.received.display(),
            self.peers.server.display()
        );
        let mut command = Command::new(&self.peers.python);
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_client.py"))
            .args(["--era", self.era]);
        for call in &self.calls {
            command.args(["--call", call]);
        }
        command
            .args(["--", env!("CARGO_BIN_EXE_custody"), "wrap", "--server"])
            .arg(&self.server.url)
            .args(["--name", "everything", "--approvals"])
            .arg(&self.approvals)
            .args(&self.identity)
            .args(&self.policy)
            .args(["--", "sh", "-c", &server_command]);
        // The client hands its environment to `custody wrap`: only what
        // this run sets, as for the binary in every other test.
        let clean = custody();
        command.env_clear();
        for (name, value) in clean.get_envs() {
            if let Some(value) = value {
                command.env(name, value);
            }
        }
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let output = output_within(&mut command, Duration::from_secs(90));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the client failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let steps = stdout
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).expect("a JSON step"))
            .collect();
        let received = std::fs::read_to_string(&self.received).unwrap_or_default();
        (steps, received)
    }
}

/// Answers held calls in the order they are held: approve, refuse,
/// approve... until dropped.
struct Approver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Approver {
    fn start(dir: &Path) -> Approver {
        std::fs::create_dir_all(dir).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, stopping) = (dir.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut answered = std::collections::BTreeSet::new();
            while !stopping.load(Ordering::SeqCst) {
                let mut held: Vec<String> = std::fs::read_dir(&dir)
                    .unwrap()
                    .filter_map(|entry| {
                        let name = entry.unwrap().file_name().into_string().unwrap();
                        name.strip_suffix(".held").map(str::to_owned)
                    })
                    .filter(|id| !answered.contains(id))
                    .collect();
                // UUIDv7 ids sort by time.
                held.sort();
                for id in held {
                    let answer = if answered.len() % 2 == 0 {
                        "approve"
                    } else {
                        "refuse"
                    };
                    std::fs::write(dir.join(format!("{id}.{answer}")), "").unwrap();
                    answered.insert(id);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            answered.len()
        });
        Approver {
            stop,
            thread: Some(thread),
        }
    }

    fn answered(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// The tool-call events the server stored for the session, oldest first.
fn tool_calls(server: &Server) -> Vec<Value> {
    let (status, body) = call(
        server,
        reqwest::Method::GET,
        "/v1/events?kind=tool_call&limit=100",
        &server.token,
        Body::None,
    );
    assert_eq!(status, 200, "{body}");
    let mut events: Vec<Value> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    events.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    events
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a session's steps and records: `get-env` not listed, `echo`
/// allowed, the first `get-sum` held and approved, `get-env` (called anyway)
/// denied, the second `get-sum` held and refused; what was refused never
/// reached the server.
fn check_session(steps: &[Value], received: &str, events: &[Value], era_version: &str) {
    assert_eq!(
        steps[0],
        json!({"step": "handshake", "version": era_version})
    );
    let tools = steps[1]["names"].as_array().unwrap();
    for tool in ["echo", "get-sum"] {
        assert!(tools.contains(&json!(tool)), "{tool} listed: {tools:?}");
    }
    assert!(
        !tools.contains(&json!("get-env")),
        "a denied tool is not listed: {tools:?}"
    );
    assert_eq!(
        steps[2],
        json!({"step": "echo", "text": "Echo: hello through custody", "is_error": false})
    );
    assert_eq!(
        steps[3],
        json!({"step": "call", "tool": "get-sum", "text": "The sum of 1 and 2 is 3.", "is_error": false})
    );
    assert_eq!(steps[4]["error_code"], -32001, "{}", steps[4]);
    assert_eq!(
        steps[4]["error"],
        "custody refused this call: the tool `get-env` is not allowed in this session"
    );
    assert_eq!(steps[5]["error_code"], -32001, "{}", steps[5]);
    assert!(
        steps[5]["error"]
            .as_str()
            .unwrap()
            .contains("held for approval and refused"),
        "{}",
        steps[5]
    );
    assert!(received.contains(r#""name":"echo""#), "{received}");
    assert!(
        received.contains(r#""arguments":{"a":1,"b":2}"#),
        "{received}"
    );
    assert!(
        !received.contains("get-env"),
        "a denied call reached the server"
    );
    assert!(
        !received.contains(r#""a":2"#),
        "a refused call reached the server"
    );

    let by_tool = |tool: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["target"]["tool"] == tool)
            .collect()
    };
    let echo = by_tool("echo");
    assert_eq!(echo.len(), 1, "{events:#?}");
    let echo = echo[0];
    assert_eq!(echo["action"], "tools/call");
    assert_eq!(echo["source"]["type"], "gateway");
    assert_eq!(echo["target"]["server"], "everything");
    assert_eq!(echo["outcome"]["status"], "success");
    assert!(echo["outcome"]["duration_ms"].is_u64());
    assert_eq!(echo["actor"]["root"]["id"], "alice@example.com");
    assert_eq!(echo["actor"]["current"]["id"], "coder");
    assert_eq!(echo["actor"]["current"]["run_id"], "run-7");
    assert_eq!(
        echo["attributes"]["gen_ai.tool.call.arguments.sha256"],
        sha256_hex(br#"{"message":"hello through custody"}"#)
    );
    assert_eq!(
        echo["attributes"]["custody.arguments"],
        json!({"message": "hello through custody"})
    );
    let env = by_tool("get-env");
    assert_eq!(env.len(), 1);
    assert_eq!(env[0]["outcome"]["status"], "denied");
    let sums: Vec<(&Value, &Value)> = by_tool("get-sum")
        .iter()
        .map(|e| {
            (
                &e["outcome"]["status"],
                &e["attributes"]["custody.approval"],
            )
        })
        .collect();
    assert_eq!(
        sums,
        [
            (&json!("success"), &json!("approved")),
            (&json!("denied"), &json!("refused"))
        ]
    );
}

/// The session `check_session` checks, in `era`, `custody wrap` given
/// `identity` and `env`: `get-env` denied, `get-sum` held (approved, then
/// refused).
fn session(
    peers: &Peers,
    server: &Server,
    dir: &Path,
    era: &str,
    identity: &[&str],
    env: (&'static str, String),
) -> (Vec<Value>, String) {
    let approvals = dir.join("approvals");
    let approver = Approver::start(&approvals);
    let ran = Run {
        peers,
        server,
        era,
        identity: identity.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![env],
        calls: vec![
            r#"get-sum={"a":1,"b":2}"#.into(),
            "get-env".into(),
            r#"get-sum={"a":2,"b":2}"#.into(),
        ],
        policy: ["--deny-tool", "get-env", "--hold-tool", "get-sum"]
            .map(String::from)
            .to_vec(),
        approvals,
        received: dir.join("received.jsonl"),
    }
    .go();
    assert_eq!(approver.answered(), 2);
    ran
}

#[test]
fn a_real_client_and_server_through_wrap_with_an_agent_token() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (status, minted) = call(
        &server,
        reqwest::Method::POST,
        "/v1/agent-tokens",
        &server.token,
        Body::Json(json!({
            "subject": {"type": "human", "id": "alice@example.com"},
            "agent": {"id": "coder", "run_id": "run-7"},
            "scope": ["mcp"], "expires_in": 900
        })),
    );
    assert_eq!(status, 200, "{minted}");
    let token = minted["access_token"].as_str().unwrap().to_owned();
    // The server says who the token is, as `custody wrap` asks it.
    let (status, whoami) = call(
        &server,
        reqwest::Method::GET,
        "/v1/whoami",
        &token,
        Body::None,
    );
    assert_eq!(status, 200, "{whoami}");
    assert_eq!(whoami["role"], "ingest");
    assert_eq!(whoami["chain"]["current"]["id"], "coder");

    let (steps, received) = session(
        &peers,
        &server,
        dir.path(),
        "2025-11-25",
        &[],
        ("CUSTODY_AGENT_TOKEN", token),
    );
    let events = tool_calls(&server);
    check_session(&steps, &received, &events, "2025-11-25");
    for event in &events {
        assert_eq!(event["attribution"]["method"], "authenticated", "{event}");
        assert_eq!(
            event["actor"]["credential"]["id"], whoami["token_id"],
            "{event}"
        );
    }
}

#[test]
fn a_real_client_negotiating_by_default_through_wrap_with_a_declared_identity() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    // The SDK's default starts with a stateless 2026-07-28
    // `server/discover`; the server does not know it, and the client falls
    // back to the initialize handshake, through the gateway as without it.
    let (steps, received) = session(
        &peers,
        &server,
        dir.path(),
        "auto",
        &[
            "--root",
            "human:alice@example.com",
            "--agent",
            "coder",
            "--run",
            "run-7",
        ],
        ("CUSTODY_TOKEN", server.token.clone()),
    );
    let discover = received
        .lines()
        .find(|line| line.contains(r#""method":"server/discover""#))
        .expect("the discover probe reached the server");
    assert!(
        discover.contains(r#""io.modelcontextprotocol/protocolVersion":"2026-07-28""#),
        "its _meta passed through: {discover}"
    );
    let events = tool_calls(&server);
    check_session(&steps, &received, &events, "2025-11-25");
    for event in &events {
        assert_ne!(
            event["attribution"]["method"], "authenticated",
            "a declared chain is never authenticated: {event}"
        );
    }
}

/// A run in the 2025-11-25 era by the declared agent `coder`, recorded
/// with the admin token, calling `calls` under `policy`.
fn declared<'a>(
    peers: &'a Peers,
    server: &'a Server,
    dir: &Path,
    calls: &[&str],
    policy: &[&str],
) -> Run<'a> {
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect();
    Run {
        peers,
        server,
        era: "2025-11-25",
        identity: ["--agent", "coder"].map(String::from).to_vec(),
        env: vec![("CUSTODY_TOKEN", server.token.clone())],
        calls: owned(calls),
        policy: owned(policy),
        approvals: dir.join("approvals"),
        received: dir.join("received.jsonl"),
    }
}

#[test]
fn a_kill_fails_the_call_and_ends_the_session() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (steps, received) = declared(
        &peers,
        &server,
        dir.path(),
        &[r#"get-sum={"a":1,"b":2}"#, "get-env"],
        &["--kill-tool", "get-sum"],
    )
    .go();
    assert_eq!(steps[2]["text"], "Echo: hello through custody");
    assert_eq!(steps[3]["error_code"], -32002, "{}", steps[3]);
    assert!(
        steps[3]["error"]
            .as_str()
            .unwrap()
            .contains("the tool `get-sum` ends the session"),
        "{}",
        steps[3]
    );
    assert_eq!(steps.len(), 4, "nothing passes after the kill: {steps:?}");
    assert!(
        !received.contains("get-sum"),
        "the killing call reached the server"
    );
    let events = tool_calls(&server);
    let killed: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"]["tool"] == "get-sum")
        .collect();
    assert_eq!(killed.len(), 1, "{events:#?}");
    assert_eq!(killed[0]["outcome"]["status"], "denied");
    assert_eq!(killed[0]["attributes"]["custody.verdict"], "kill");
}

#[test]
fn a_call_the_server_does_not_answer_in_time_fails_and_the_session_goes_on() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (steps, _received) = declared(
        &peers,
        &server,
        dir.path(),
        &[
            r#"trigger-long-running-operation={"duration":3,"steps":3}"#,
            r#"get-sum={"a":1,"b":2}"#,
        ],
        &["--call-timeout", "1"],
    )
    .go();
    assert_eq!(steps[3]["error_code"], -32004, "{}", steps[3]);
    assert!(
        steps[3]["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 1 s"),
        "{}",
        steps[3]
    );
    assert_eq!(steps[4]["text"], "The sum of 1 and 2 is 3.", "{steps:?}");
    let events = tool_calls(&server);
    let slow: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"]["tool"] == "trigger-long-running-operation")
        .collect();
    assert_eq!(slow.len(), 1, "{events:#?}");
    assert_eq!(slow[0]["outcome"]["status"], "failure");
    assert!(
        slow[0]["outcome"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("timeout"),
        "{}",
        slow[0]
    );
}

/// `custody wrap --policies DIR`: Cedar policies decide each call, the
/// forbidden tool hidden from the list and refused with its reason, the
/// deciding policy recorded; a directory that does not load stops wrap
/// before the server starts, naming the file and line.
#[test]
fn policies_decide_each_call_through_wrap() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("wrap.cedar"),
        r#"@id("work") permit(principal, action, resource);
@id("no-env") @reason("the environment holds secrets")
forbid(principal in Agent::"coder", action == Action::"tools/call", resource == Tool::"get-env");
"#,
    )
    .unwrap();
    let (steps, received) = Run {
        peers: &peers,
        server: &server,
        era: "2025-11-25",
        identity: [
            "--agent",
            "coder",
            "--run",
            "run-w",
            "--root",
            "human:alice@example.com",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![("CUSTODY_TOKEN", server.token.clone())],
        calls: vec!["get-env".into()],
        policy: vec!["--policies".into(), policies.display().to_string()],
        approvals: dir.path().join("approvals"),
        received: dir.path().join("received.jsonl"),
    }
    .go();
    let tools = steps[1]["names"].as_array().unwrap();
    assert!(
        tools.contains(&json!("echo")) && !tools.contains(&json!("get-env")),
        "{tools:?}"
    );
    assert_eq!(steps[2]["text"], "Echo: hello through custody", "{steps:?}");
    let refused = &steps[3];
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("the environment holds secrets")),
        "{refused}"
    );
    assert!(!received.contains("get-env"), "{received}");
    let stored = call_ok_events(&server);
    let denied = stored
        .iter()
        .find(|e| e["event"]["target"]["tool"] == "get-env")
        .unwrap_or_else(|| panic!("{stored:?}"));
    // wrap reports its decision with the event.
    let attributes = &denied["event"]["attributes"];
    assert_eq!(attributes["custody.verdict"], "deny", "{denied}");
    assert_eq!(attributes["custody.reasons"][0]["id"], "no-env", "{denied}");

    // A broken directory stops wrap before it starts the server.
    std::fs::write(
        policies.join("broken.cedar"),
        "permit(principal, action);\n",
    )
    .unwrap();
    let output = output_within(
        custody()
            .args([
                "wrap",
                "--server",
                &server.url,
                "--agent",
                "coder",
                "--policies",
            ])
            .arg(&policies)
            .args(["--", "sh", "-c", "echo started > started.txt"])
            .current_dir(dir.path())
            .env("CUSTODY_TOKEN", &server.token),
        Duration::from_secs(30),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.cedar:1"), "{stderr}");
    assert!(!dir.path().join("started.txt").exists());
}

/// Every stored tool call, as the API lists them (with decisions).
fn call_ok_events(server: &Server) -> Vec<Value> {
    let (status, body) = call(
        server,
        reqwest::Method::GET,
        "/v1/events?kind=tool_call&limit=100",
        &server.token,
        Body::None,
    );
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

/// The server's containment reaches `custody wrap`: a quarantined agent
/// type's calls are refused (its tools hidden) through wrap; lifted, they
/// pass again.
#[test]
fn the_servers_containment_holds_through_wrap() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let token = common::mint_agent_token(&server, "alice@example.com", "coder", "run-c");
    let (status, applied) = call(
        &server,
        reqwest::Method::POST,
        "/v1/containment",
        &server.token,
        Body::Json(json!({"kind": "quarantine", "scope": "agent:coder", "reason": "under review"})),
    );
    assert_eq!(status, 200, "{applied}");
    // The token sees the measures over its own chain, and only those.
    let (status, mine) = call(
        &server,
        reqwest::Method::GET,
        "/v1/containment/mine",
        &token,
        Body::None,
    );
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["measures"][0]["scope"], "agent:coder", "{mine}");
    let session = |name: &str| {
        Run {
            peers: &peers,
            server: &server,
            era: "2025-11-25",
            identity: Vec::new(),
            env: vec![("CUSTODY_AGENT_TOKEN", token.clone())],
            calls: Vec::new(),
            policy: Vec::new(),
            approvals: dir.path().join("approvals"),
            received: dir.path().join(name),
        }
        .go()
    };
    let (steps, received) = session("quarantined.jsonl");
    let tools = steps[1]["names"].as_array().unwrap();
    assert!(
        tools.is_empty(),
        "a quarantined agent sees no tools: {tools:?}"
    );
    assert!(
        steps[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("agent:coder is quarantined")),
        "{steps:?}"
    );
    assert!(!received.contains("tools/call"), "{received}");

    let id = applied["measure"]["id"].as_str().unwrap();
    let (status, _) = call(
        &server,
        reqwest::Method::DELETE,
        &format!("/v1/containment/{id}"),
        &server.token,
        Body::None,
    );
    assert_eq!(status, 200);
    let (steps, _) = session("lifted.jsonl");
    assert_eq!(steps[2]["text"], "Echo: hello through custody", "{steps:?}");
}
