//! A real Rust MCP client (`rmcp`) against a real MCP server
//! (`@modelcontextprotocol/server-everything`): the scenario of
//! `tests/common/rmcp_client.rs` run directly and through `custody wrap`
//! (recording into a real `custody serve`) must read the same, and what
//! Custody recorded must say what happened. The same scenario over
//! streamable HTTP, directly against the server, proves the harness's HTTP
//! side, so that the HTTP gateway is tested by changing the URL.
//!
//! The peers come from `tests/peers/install.sh`, as for `tests/wrap.rs`;
//! `CUSTODY_SKIP_MCP_PEERS=1` skips these tests when they cannot be
//! installed.

mod common;
#[path = "common/rmcp_client.rs"]
mod rmcp_client;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Body, Peers, Server, call, custody, free_port, mint_agent_token, peers};
use rmcp::ClientLifecycleMode;
use rmcp::model::ProtocolVersion;
use rmcp_client::Target;
use serde_json::{Value, json};

/// The scenario against `target`, on a runtime of its own.
fn scenario(target: Target) -> rmcp_client::Run {
    scenario_with(target, ClientLifecycleMode::Initialize)
}

/// The scenario against `target`, starting as `lifecycle` says.
fn scenario_with(target: Target, lifecycle: ClientLifecycleMode) -> rmcp_client::Run {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(rmcp_client::run_with(target, lifecycle))
}

/// `node SERVER stdio`.
fn server_command(peers: &Peers) -> Command {
    let mut command = Command::new("node");
    command.arg(&peers.server).arg("stdio");
    command
}

/// The transcript of the scenario against the server alone over stdio,
/// run once for every test of this file.
fn direct(peers: &Peers) -> &'static [Value] {
    static DIRECT: OnceLock<Vec<Value>> = OnceLock::new();
    DIRECT.get_or_init(|| {
        let run = scenario(Target::Stdio(server_command(peers)));
        assert!(
            run.exit.is_some_and(|status| status.success()),
            "the server exited with {:?}",
            run.exit
        );
        check_transcript(&run.transcript);
        run.transcript
    })
}

/// What the scenario must read against server-everything, whatever is in
/// between.
fn check_transcript(transcript: &[Value]) {
    let step = |name: &str| -> &Value {
        transcript
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {transcript:#?}"))
    };
    assert_eq!(
        step("initialize")["server"]["serverInfo"]["name"],
        "mcp-servers/everything"
    );
    let tools: Vec<&str> = step("tools/list")["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for tool in [
        "echo",
        "get-sum",
        "trigger-long-running-operation",
        "trigger-sampling-request",
        "trigger-elicitation-request",
    ] {
        assert!(tools.contains(&tool), "{tool} listed: {tools:?}");
    }
    assert_eq!(
        step("echo")["result"]["content"][0]["text"],
        format!("Echo: {}", rmcp_client::ECHOED)
    );
    assert!(
        step("resources/list")["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["uri"] == rmcp_client::RESOURCE),
        "{RESOURCE} listed",
        RESOURCE = rmcp_client::RESOURCE
    );
    assert_eq!(
        step("resources/read")["result"]["contents"][0]["uri"],
        rmcp_client::RESOURCE
    );
    assert_eq!(
        step("prompts/get")["result"]["messages"][0]["content"]["text"],
        "What's weather in Lisbon, Lisboa?"
    );

    let sampling = step("sampling");
    assert_eq!(
        sampling["server_asked"][0]["method"], "sampling/createMessage",
        "{sampling:#}"
    );
    let sampled = sampling["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        sampled.contains(rmcp_client::SAMPLED_TEXT)
            && sampled.contains(rmcp_client::SAMPLING_MODEL),
        "the server read this client's answer: {sampled}"
    );

    let elicitation = step("elicitation");
    assert_eq!(
        elicitation["server_asked"][0]["method"], "elicitation/create",
        "{elicitation:#}"
    );
    let elicited = elicitation["result"]["content"][1]["text"]
        .as_str()
        .unwrap();
    assert!(
        elicited.contains("- Name: Ada Lovelace"),
        "the server read the accepted content: {elicitation:#}"
    );

    let progress = step("progress");
    assert_eq!(
        progress["notifications"],
        json!([
            [1.0, 4.0, null],
            [2.0, 4.0, null],
            [3.0, 4.0, null],
            [4.0, 4.0, null]
        ])
    );
    assert_eq!(
        progress["result"]["content"][0]["text"],
        "Long running operation completed. Duration: 1 seconds, Steps: 4."
    );

    let cancellation = step("cancellation");
    assert_eq!(cancellation["first_progress"], json!([1.0, 6.0]));
    assert_eq!(
        cancellation["next_call"]["content"][0]["text"],
        "The sum of 1 and 2 is 3."
    );
}

/// Fails with the steps that differ, rather than two whole transcripts.
fn assert_same(direct: &[Value], through: &[Value], what: &str) {
    let differing: Vec<String> = direct
        .iter()
        .zip(through)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("directly: {a:#}\n{what}: {b:#}"))
        .collect();
    assert!(
        differing.is_empty() && direct.len() == through.len(),
        "the transcript {what} differs ({} steps directly, {} {what}):\n{}",
        direct.len(),
        through.len(),
        differing.join("\n\n")
    );
}

/// `custody wrap` of server-everything as a stdio command, recording into
/// `server`, with `identity` flags and `env`.
fn wrapped(peers: &Peers, server: &Server, identity: &[&str], env: (&str, &str)) -> Command {
    let mut command = custody();
    command
        .args(["wrap", "--server", &server.url, "--name", "everything"])
        .args(identity)
        .arg("--")
        .arg("node")
        .arg(&peers.server)
        .arg("stdio")
        .env(env.0, env.1);
    command
}

/// The events of `kind` the server stored, oldest first, once `count` are
/// there (the last ones are delivered as the session ends).
fn events(server: &Server, kind: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = call(
            server,
            reqwest::Method::GET,
            &format!("/v1/events?kind={kind}&limit=100"),
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
        if events.len() >= count || Instant::now() >= deadline {
            events.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            return events;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks what Custody recorded for the scenario: a `tool_call` for each
/// call and an `mcp_request` for the read and the prompt, in order, with
/// their outcomes, by the chain `coder` (run `run-7`) of
/// `alice@example.com`, nothing refused.
fn check_events(server: &Server) -> (Vec<Value>, Vec<Value>) {
    let calls = events(server, "tool_call", 6);
    let summary: Vec<Value> = calls
        .iter()
        .map(|e| {
            json!([
                e["action"],
                e["target"]["tool"],
                e["outcome"]["status"],
                e["outcome"]["reason"]
            ])
        })
        .collect();
    assert_eq!(
        summary,
        [
            json!(["tools/call", "echo", "success", null]),
            json!(["tools/call", "trigger-sampling-request", "success", null]),
            json!(["tools/call", "trigger-elicitation-request", "success", null]),
            json!([
                "tools/call",
                "trigger-long-running-operation",
                "success",
                null
            ]),
            json!([
                "tools/call",
                "trigger-long-running-operation",
                "failure",
                "cancelled by the client: the rmcp scenario cancels it"
            ]),
            json!(["tools/call", "get-sum", "success", null]),
        ],
        "{calls:#?}"
    );
    let requests = events(server, "mcp_request", 2);
    let summary: Vec<Value> = requests
        .iter()
        .map(|e| {
            json!([
                e["action"],
                e["target"]["resource"],
                e["target"]["resource_type"],
                e["outcome"]["status"]
            ])
        })
        .collect();
    assert_eq!(
        summary,
        [
            json!([
                "resources/read",
                rmcp_client::RESOURCE,
                "mcp_resource",
                "success"
            ]),
            json!(["prompts/get", "args-prompt", "mcp_prompt", "success"]),
        ],
        "{requests:#?}"
    );
    let session = &calls[0]["context"]["session_id"];
    assert!(session.as_str().unwrap().starts_with("wrap-"), "{session}");
    for event in calls.iter().chain(&requests) {
        assert_eq!(event["source"]["type"], "gateway", "{event}");
        assert_eq!(event["target"]["server"], "everything", "{event}");
        assert_eq!(
            &event["context"]["session_id"], session,
            "one session: {event}"
        );
        assert_eq!(event["actor"]["root"]["id"], "alice@example.com", "{event}");
        assert_eq!(event["actor"]["current"]["id"], "coder", "{event}");
        assert_eq!(event["actor"]["current"]["run_id"], "run-7", "{event}");
    }
    assert_eq!(
        calls[0]["attributes"]["custody.arguments"],
        json!({"message": rmcp_client::ECHOED})
    );
    (calls, requests)
}

#[test]
fn rmcp_reads_the_same_through_wrap_with_an_agent_token() {
    let Some(peers) = peers() else { return };
    let direct = direct(&peers);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let token = mint_agent_token(&server, "alice@example.com", "coder", "run-7");
    let through = scenario(Target::Stdio(wrapped(
        &peers,
        &server,
        &[],
        ("CUSTODY_AGENT_TOKEN", &token),
    )));
    assert!(
        through.exit.is_some_and(|status| status.success()),
        "custody wrap exited with {:?}",
        through.exit
    );
    assert_same(direct, &through.transcript, "through custody wrap");
    let (calls, requests) = check_events(&server);
    for event in calls.iter().chain(&requests) {
        assert_eq!(event["attribution"]["method"], "authenticated", "{event}");
    }
}

#[test]
fn rmcp_reads_the_same_through_wrap_with_a_declared_identity() {
    let Some(peers) = peers() else { return };
    let direct = direct(&peers);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let through = scenario(Target::Stdio(wrapped(
        &peers,
        &server,
        &[
            "--root",
            "human:alice@example.com",
            "--agent",
            "coder",
            "--run",
            "run-7",
        ],
        ("CUSTODY_TOKEN", &server.token),
    )));
    assert!(
        through.exit.is_some_and(|status| status.success()),
        "custody wrap exited with {:?}",
        through.exit
    );
    assert_same(direct, &through.transcript, "through custody wrap");
    let (calls, requests) = check_events(&server);
    for event in calls.iter().chain(&requests) {
        assert_ne!(
            event["attribution"]["method"], "authenticated",
            "a declared chain is never authenticated: {event}"
        );
    }
}

/// server-everything over streamable HTTP on a free port, killed on drop.
struct HttpServer {
    child: std::process::Child,
    url: String,
}

impl HttpServer {
    fn start(peers: &Peers) -> HttpServer {
        let port = free_port();
        let child = Command::new("node")
            .arg(&peers.server)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting server-everything over streamable HTTP");
        let mut server = HttpServer {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("server-everything exited with {status} before listening");
            }
            assert!(
                Instant::now() < deadline,
                "server-everything did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rmcp_over_streamable_http_reads_as_over_stdio() {
    let Some(peers) = peers() else { return };
    let direct = direct(&peers);
    let server = HttpServer::start(&peers);
    let over_http = scenario(Target::Http {
        url: server.url.clone(),
        bearer: None,
    })
    .transcript;
    check_transcript(&over_http);
    assert_same(direct, &over_http, "over streamable HTTP");
}

#[test]
fn rmcp_probing_with_server_discover_reads_the_same_through_wrap() {
    let Some(peers) = peers() else { return };
    let auto = || ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    };
    // server-everything answers the 2026-07-28 probe with an error; the
    // client falls back to the handshake, through the gateway as without.
    let alone = scenario_with(Target::Stdio(server_command(&peers)), auto());
    check_transcript(&alone.transcript);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    // What reaches the server is copied to a file on its way in.
    let received = dir.path().join("received.jsonl");
    let mut command = custody();
    command
        .args(["wrap", "--server", &server.url, "--name", "everything"])
        .args(["--root", "human:alice@example.com", "--agent", "coder"])
        .args(["--run", "run-7", "--", "sh", "-c"])
        .arg(format!(
            "tee {} | exec node {} stdio",
            received.display(),
            peers.server.display()
        ))
        .env("CUSTODY_TOKEN", &server.token);
    let through = scenario_with(Target::Stdio(command), auto());
    assert!(
        through.exit.is_some_and(|status| status.success()),
        "custody wrap exited with {:?}",
        through.exit
    );
    assert_same(
        &alone.transcript,
        &through.transcript,
        "through custody wrap",
    );
    let received = std::fs::read_to_string(&received).unwrap();
    let first = received.lines().next().unwrap_or_default();
    assert!(
        first.contains(r#""method":"server/discover""#)
            && first.contains(r#""io.modelcontextprotocol/protocolVersion":"2026-07-28""#),
        "the probe came first, its _meta through: {first}"
    );
    assert!(
        received.contains(r#""method":"initialize""#),
        "then the handshake: {received}"
    );
    check_events(&server);
}

/// The scenario over streamable HTTP through the MCP gateway of `custody
/// serve`, in front of server-everything as a stdio upstream (a child per
/// session): the same transcript as directly; every call recorded with the
/// agent token's chain, the upstream as server, in one gateway session.
#[test]
fn rmcp_reads_the_same_through_the_http_gateway() {
    let Some(peers) = peers() else { return };
    let direct = direct(&peers);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("custody.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\n[[gateway.upstreams]]\nname = \"everything\"\ncommand = [\"node\", {:?}, \"stdio\"]\n",
            peers.server.display().to_string()
        ),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let token = mint_agent_token(&server, "alice@example.com", "coder", "run-7");
    let through = scenario(Target::Http {
        url: format!("{}/mcp", server.url),
        bearer: Some(token),
    })
    .transcript;
    check_transcript(&through);
    assert_same(direct, &through, "through the HTTP gateway");
    let calls = events(&server, "tool_call", 6);
    assert_eq!(calls.len(), 6, "{calls:#?}");
    let sessions: std::collections::BTreeSet<&str> = calls
        .iter()
        .map(|e| e["context"]["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(sessions.iter().all(|s| s.starts_with("gateway-")));
    for call in &calls {
        assert_eq!(call["target"]["server"], "everything");
        assert_eq!(call["attribution"]["method"], "authenticated");
        assert_eq!(call["actor"]["root"]["id"], "alice@example.com");
        assert_eq!(call["actor"]["current"]["run_id"], "run-7");
    }
}
