//! The streamable-HTTP MCP gateway of `custody serve`, end to end: the real
//! binary in front of real `server-everything` upstreams (stdio children
//! and a streamable-HTTP server), checked message by message over HTTP.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::mcp_http::{McpHttp, text_of};
use common::{Body, Peers, Server, call_ok, free_port, mint_agent_token, peers};
use serde_json::{Value, json};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `custody serve` with `gateway` as the `[gateway]` section of its file.
fn serve_gateway(dir: &Path, gateway: &str) -> Server {
    let config = dir.join("custody.toml");
    std::fs::write(&config, gateway).unwrap();
    Server::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn stdio_upstream(peers: &Peers, name: &str, extra: &str) -> String {
    format!(
        "[[gateway.upstreams]]\nname = \"{name}\"\ncommand = [\"node\", \"{}\", \"stdio\"]\n{extra}\n",
        peers.server.display()
    )
}

/// The gateway's events, oldest first, once `ready` says they are all
/// there (they are recorded after the calls are answered), or after ten
/// seconds.
fn gateway_events_when(server: &Server, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = gateway_events(server);
        if ready(&events) || std::time::Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gateway's events, oldest first.
fn gateway_events(server: &Server) -> Vec<Value> {
    let answer = call_ok(
        server,
        reqwest::Method::GET,
        "/v1/events?kind=tool_call,mcp_request&order=oldest&limit=1000",
        &server.token,
        Body::None,
    );
    let events = answer["events"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{answer}"));
    events
        .into_iter()
        .map(|item| {
            // The stored decision is the one the gateway enforced.
            let mut event = item["event"].clone();
            event["stored_verdict"] = item["decision"]["verdict"].clone();
            event
        })
        .filter(|e| e["source"]["type"] == "gateway")
        .collect()
}

fn names(listed: &Value, key: &str) -> Vec<String> {
    let mut names: Vec<String> = listed["result"][key]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Two stdio upstreams behind one endpoint: tools and prompts namespaced
/// and merged, calls routed to their upstream by prefix and decided there
/// (allowed, denied, held then approved), every call an event with the
/// token's chain; and a kill ending every session of the agent.
#[test]
fn one_endpoint_in_front_of_two_upstreams() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let approvals = dir.path().join("approvals");
    let gateway = format!(
        "[gateway]\napprovals_dir = \"{}\"\nhold_timeout_seconds = 30\n{}{}",
        approvals.display(),
        stdio_upstream(
            &peers,
            "alpha",
            "prefix = \"a\"\ndeny_tools = [\"get-sum\"]"
        ),
        stdio_upstream(
            &peers,
            "beta",
            "prefix = \"b\"\nhold_tools = [\"get-sum\"]\nkill_tools = [\"get-env\"]"
        ),
    );
    let server = serve_gateway(dir.path(), &gateway);
    let token = mint_agent_token(&server, "alice@example.com", "coder", "run-gw-1");
    let other = mint_agent_token(&server, "bob@example.com", "coder", "run-gw-2");
    let url = format!("{}/mcp", server.url);
    let rt = runtime();
    rt.block_on(async {
        let mut client = McpHttp::new(&url, Some(&token));
        let initialized = client.initialize(json!({})).await;
        assert_eq!(initialized.status, 200, "{:?}", initialized.messages);
        let result = &initialized.answer()["result"];
        assert_eq!(result["serverInfo"]["name"], "custody-gateway");
        assert_eq!(result["protocolVersion"], "2025-11-25");
        assert!(result["capabilities"]["tools"].is_object(), "{result}");
        assert!(client.session.is_some(), "initialize gives a session id");

        // Tools: each upstream's under its prefix; get-sum hidden where it
        // is denied, listed where it is only held.
        let tools = client.request("tools/list", json!({})).await;
        let tools = names(tools.answer(), "tools");
        for expected in ["a__echo", "b__echo", "b__get-sum", "a__get-env"] {
            assert!(
                tools.contains(&expected.to_owned()),
                "{expected} in {tools:?}"
            );
        }
        assert!(!tools.contains(&"a__get-sum".to_owned()), "{tools:?}");
        assert!(
            !tools
                .iter()
                .any(|t| !t.starts_with("a__") && !t.starts_with("b__"))
        );
        let prompts = client.request("prompts/list", json!({})).await;
        let prompts = names(prompts.answer(), "prompts");
        assert!(
            prompts.contains(&"a__args-prompt".to_owned()),
            "{prompts:?}"
        );

        // Calls reach the upstream their prefix names, by its own name.
        let echoed = client
            .call("b__echo", json!({"message": "through beta"}))
            .await;
        assert_eq!(text_of(echoed.answer()), "Echo: through beta");
        let prompt = client
            .request(
                "prompts/get",
                json!({"name": "a__args-prompt", "arguments": {"city": "Lyon"}}),
            )
            .await;
        let prompt_text = prompt.answer()["result"]["messages"][0]["content"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(prompt_text.contains("Lyon"), "{:?}", prompt.answer());
        let resources = client.request("resources/list", json!({})).await;
        let uri = resources.answer()["result"]["resources"][0]["uri"]
            .as_str()
            .unwrap()
            .to_owned();
        let read = client.request("resources/read", json!({"uri": uri})).await;
        assert!(
            read.answer()["result"]["contents"].is_array(),
            "{:?}",
            read.answer()
        );
        let unknown = client.call("c__echo", json!({"message": "x"})).await;
        assert_eq!(unknown.answer()["error"]["code"], -32602);

        // Denied at alpha, with the reason and no policy internals.
        let denied = client.call("a__get-sum", json!({"a": 1, "b": 2})).await;
        let error = &denied.answer()["error"];
        assert_eq!(error["code"], -32001, "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("`get-sum` is not allowed"),
            "{error}"
        );

        // Held at beta until approved, then answered by the upstream.
        let approver = std::thread::spawn(move || approve_first(&approvals));
        let held = client.call("b__get-sum", json!({"a": 2, "b": 3})).await;
        assert_eq!(
            text_of(held.answer()),
            "The sum of 2 and 3 is 5.",
            "{:?}",
            held.answer()
        );
        approver.join().unwrap();

        // Another agent's token cannot use this session.
        let mut intruder = McpHttp::new(&url, Some(&other));
        intruder.session = client.session.clone();
        let refused = intruder.request("tools/list", json!({})).await;
        assert_eq!(refused.status, 403);

        // A kill at beta ends the session on both upstreams, and the agent
        // cannot start another; another agent can.
        let killed = client.call("b__get-env", json!({})).await;
        assert_eq!(
            killed.answer()["error"]["code"],
            -32002,
            "{:?}",
            killed.answer()
        );
        let after = client.call("a__echo", json!({"message": "after"})).await;
        assert_eq!(after.status, 403, "{:?}", after.messages);
        assert_eq!(after.answer()["error"]["code"], -32002);
        let mut again = McpHttp::new(&url, Some(&token));
        let refused = again
            .post(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "again", "version": "1"}}}),
            )
            .await;
        assert_eq!(refused.status, 403, "{:?}", refused.messages);
        assert_eq!(refused.answer()["error"]["code"], -32002);
        let mut bob = McpHttp::new(&url, Some(&other));
        assert_eq!(bob.initialize(json!({})).await.status, 200);
        let echoed = bob.call("a__echo", json!({"message": "bob"})).await;
        assert_eq!(text_of(echoed.answer()), "Echo: bob");
    });

    // Every call is an event: the chain of the token (authenticated), the
    // upstream as server, the upstream's own tool name, the outcome.
    let events = gateway_events_when(&server, |events| {
        events.iter().filter(|e| e["kind"] == "tool_call").count() >= 5
    });
    let calls: Vec<(String, String, String, String)> = events
        .iter()
        .filter(|e| e["kind"] == "tool_call")
        .map(|e| {
            (
                e["target"]["server"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["target"]["tool"].as_str().unwrap_or_default().to_owned(),
                e["outcome"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["stored_verdict"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("beta", "echo", "success", "allow"),
        ("alpha", "get-sum", "denied", "deny"),
        ("beta", "get-sum", "success", "require_approval"),
        ("beta", "get-env", "denied", "kill"),
        ("alpha", "echo", "success", "allow"),
    ];
    let expected: Vec<(String, String, String, String)> = expected
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(calls, expected, "{events:#?}");
    let alice: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "tool_call" && e["actor"]["root"]["id"] == "alice@example.com")
        .collect();
    assert_eq!(alice.len(), 4);
    for event in alice {
        assert_eq!(event["attribution"]["method"], "authenticated", "{event}");
        assert_eq!(
            event["stored_verdict"],
            event["attributes"]["custody.verdict"]
        );
        assert_eq!(event["actor"]["current"]["run_id"], "run-gw-1");
        assert_eq!(
            event["source"]["name"].as_str().unwrap().split(' ').next(),
            Some("custody")
        );
        assert!(
            event["context"]["session_id"]
                .as_str()
                .unwrap()
                .starts_with("gateway-")
        );
    }
    let prompt = events
        .iter()
        .find(|e| e["action"] == "prompts/get")
        .expect("the prompt's event");
    assert_eq!(prompt["target"]["resource"], "args-prompt");
    assert_eq!(prompt["target"]["server"], "alpha");
}

/// Approves the first call held in `dir`.
fn approve_first(dir: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".held") {
                    std::fs::write(dir.join(format!("{id}.approve")), "").unwrap();
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no call was held");
}

/// Authentication and hostile input at the door: 401 with the protected
/// resource's metadata, a refused API token, a foreign Origin, routing
/// headers that disagree with the body (-32020), duplicate keys, requests
/// without a session, an unknown session.
#[test]
fn the_door_refuses_what_it_must() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let gateway = format!(
        "[gateway]\nallowed_origins = [\"https://console.example.com\"]\nmax_sessions_per_caller = 3\n{}",
        stdio_upstream(&peers, "everything", "")
    );
    let server = serve_gateway(dir.path(), &gateway);
    let url = format!("{}/mcp", server.url);
    let token = mint_agent_token(&server, "alice@example.com", "coder", "run-door");
    let rt = runtime();
    rt.block_on(async {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "door", "version": "1"}}});
        // No token: 401, pointing at the metadata, which names the resource.
        let mut anonymous = McpHttp::new(&url, None);
        let refused = anonymous.post(&init).await;
        assert_eq!(refused.status, 401);
        let challenge = refused.header("www-authenticate").unwrap().to_owned();
        let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", server.url);
        assert!(
            challenge.starts_with(&format!("Bearer resource_metadata=\"{metadata_url}\"")),
            "{challenge}"
        );
        let metadata: Value = reqwest::get(&metadata_url).await.unwrap().json().await.unwrap();
        assert_eq!(metadata["resource"], json!(url));
        assert_eq!(metadata["authorization_servers"][0], json!(server.url));
        // A bad token and an API token: 401, saying why.
        let mut forged = McpHttp::new(&url, Some("eyJhbGciOiJub25lIn0.e30.x"));
        let refused = forged.post(&init).await;
        assert_eq!(refused.status, 401);
        assert!(refused.header("www-authenticate").unwrap().contains("invalid_token"));
        let mut api = McpHttp::new(&url, Some(&server.token));
        assert_eq!(api.post(&init).await.status, 401);

        // A foreign Origin is refused; a listed one is not.
        let mut client = McpHttp::new(&url, Some(&token));
        let foreign = client
            .post_with(&init, &[("origin", "https://evil.example")], &mut |_, _| json!({}))
            .await;
        assert_eq!(foreign.status, 403);
        let listed = client
            .post_with(&init, &[("origin", "https://console.example.com")], &mut |_, _| json!({}))
            .await;
        assert_eq!(listed.status, 200);

        // Without a session, a request that is not stateless is refused.
        let orphan = client
            .post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
            .await;
        assert_eq!(orphan.status, 400);
        client.initialize(json!({})).await;

        // The routing headers must say what the body says.
        let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "hi"}}});
        for headers in [
            vec![("mcp-method", "tools/list")],
            vec![("mcp-method", "tools/call"), ("mcp-name", "get-env")],
            vec![("mcp-method", "tools/call"), ("mcp-name", "=?base64?Z2V0LWVudg==?=")],
        ] {
            let mismatched = client.post_with(&call, &headers, &mut |_, _| json!({})).await;
            assert_eq!(mismatched.status, 400, "{headers:?}");
            assert_eq!(mismatched.answer()["error"]["code"], -32020, "{headers:?}");
            assert_eq!(mismatched.answer()["id"], 3);
        }
        let matching = client
            .post_with(
                &call,
                &[("mcp-method", "tools/call"), ("mcp-name", "=?base64?ZWNobw==?=")],
                &mut |_, _| json!({}),
            )
            .await;
        assert_eq!(text_of(matching.answer()), "Echo: hi");

        // Duplicate and case-variant keys are refused, not guessed at.
        for body in [
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","name":"get-env","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","Method":"tools/list","params":{"name":"echo"}}"#,
        ] {
            let raw = reqwest::Client::new()
                .post(&url)
                .bearer_auth(&token)
                .header("mcp-session-id", client.session.clone().unwrap())
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body)
                .send()
                .await
                .unwrap();
            let answer: Value = raw.json().await.unwrap();
            assert_eq!(answer["error"]["code"], -32600, "{body}: {answer}");
        }

        // A body that is not JSON, and one too large.
        let garbage = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&token)
            .header("mcp-session-id", client.session.clone().unwrap())
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(garbage.status().as_u16(), 400);
        let huge = format!(
            r#"{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"{}"}}}}}}"#,
            "x".repeat(5 << 20)
        );
        let too_large = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&token)
            .header("mcp-session-id", client.session.clone().unwrap())
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap();
        assert_eq!(too_large.status().as_u16(), 413);

        // The session still works; deleted, it is gone.
        let echoed = client.call("echo", json!({"message": "still here"})).await;
        assert_eq!(text_of(echoed.answer()), "Echo: still here");
        assert_eq!(client.delete().await, 204);
        let gone = client.call("echo", json!({"message": "gone"})).await;
        assert_eq!(gone.status, 404);

        // One caller opens at most 3 sessions at once (one is still open
        // from the Origin check above).
        for _ in 0..2 {
            let mut more = McpHttp::new(&url, Some(&token));
            assert_eq!(more.post(&init).await.status, 200);
        }
        let mut one_too_many = McpHttp::new(&url, Some(&token));
        assert_eq!(one_too_many.post(&init).await.status, 429);
    });

    // What the door refused from a known caller is recorded, denied.
    let refused = gateway_events_when(&server, |events| {
        events
            .iter()
            .filter(|e| e["action"] == "custody/header-mismatch")
            .count()
            >= 3
    });
    let actions: Vec<&str> = refused
        .iter()
        .filter(|e| e["outcome"]["status"] == "denied")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "custody/header-mismatch")
            .count(),
        3,
        "{actions:?}"
    );
    assert!(actions.contains(&"invalid_message"), "{actions:?}");
    let mismatch = refused
        .iter()
        .find(|e| e["action"] == "custody/header-mismatch")
        .unwrap();
    assert_eq!(mismatch["actor"]["current"]["run_id"], "run-door");
    assert_eq!(mismatch["attribution"]["method"], "authenticated");
}

/// A streamable-HTTP upstream (server-everything over HTTP), one upstream
/// without a prefix: the gateway is transparent. Progress reaches the
/// stream of the call it is about, a long call is cancelled, the GET stream
/// carries what the upstream sends outside requests, and batches work.
#[test]
fn an_http_upstream_behind_the_gateway() {
    let Some(peers) = peers() else { return };
    let port = free_port();
    let upstream = start_http_everything(&peers, port);
    let dir = tempfile::tempdir().unwrap();
    let gateway = format!(
        "[gateway]\n[[gateway.upstreams]]\nname = \"everything\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n"
    );
    let server = serve_gateway(dir.path(), &gateway);
    let url = format!("{}/mcp", server.url);
    let token = mint_agent_token(&server, "alice@example.com", "coder", "run-http");
    let rt = runtime();
    rt.block_on(async {
        let mut client = McpHttp::new(&url, Some(&token));
        let initialized = client.initialize(json!({})).await;
        // Transparent: the upstream's own answer.
        assert_eq!(
            initialized.answer()["result"]["serverInfo"]["name"],
            "mcp-servers/everything"
        );
        let tools = client.request("tools/list", json!({})).await;
        assert!(names(tools.answer(), "tools").contains(&"echo".to_owned()));
        let echoed = client.call("echo", json!({"message": "over http"})).await;
        assert_eq!(text_of(echoed.answer()), "Echo: over http");

        // A large call and its large result pass whole (the arguments are
        // kept in the event only up to their limit, with their digest).
        let large = "large ".repeat(300_000);
        let echoed = client.call("echo", json!({"message": large})).await;
        assert_eq!(text_of(echoed.answer()), format!("Echo: {large}"));

        // Progress arrives on the call's own stream, before its answer.
        let id = client.next_id();
        let long = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "trigger-long-running-operation",
            "arguments": {"duration": 1, "steps": 4},
            "_meta": {"progressToken": "tok-1"}}});
        let answered = client.post_with(&long, &[], &mut |_, _| json!({})).await;
        assert!(answered.streamed);
        let progress: Vec<&Value> = answered
            .messages
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .collect();
        assert_eq!(progress.len(), 4, "{:?}", answered.messages);
        assert!(
            progress
                .iter()
                .all(|p| p["params"]["progressToken"] == "tok-1")
        );
        assert!(text_of(answered.answer()).contains("Long running operation completed"));

        // A batch: each answer, in one response.
        let batch = json!([
            {"jsonrpc": "2.0", "id": "b1", "method": "ping"},
            {"jsonrpc": "2.0", "id": "b2", "method": "tools/call",
             "params": {"name": "echo", "arguments": {"message": "in a batch"}}},
        ]);
        let answered = client.post(&batch).await;
        let ids: Vec<&Value> = answered.messages.iter().map(|m| &m["id"]).collect();
        assert_eq!(ids.len(), 2, "{:?}", answered.messages);
        assert!(ids.contains(&&json!("b1")) && ids.contains(&&json!("b2")));
    });

    // Cancelling a long call: the upstream stops, the session goes on.
    rt.block_on(async {
        let mut client = McpHttp::new(&url, Some(&token));
        client.initialize(json!({})).await;
        let session = client.session.clone().unwrap();
        let url2 = url.clone();
        let token2 = token.clone();
        let cancel = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let mut canceller = McpHttp::new(&url2, Some(&token2));
            canceller.session = Some(session);
            canceller
                .post(
                    &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": 99, "reason": "changed my mind"}}),
                )
                .await
                .status
        });
        let long = json!({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {
            "name": "trigger-long-running-operation",
            "arguments": {"duration": 30, "steps": 30},
            "_meta": {"progressToken": "tok-99"}}});
        // The cancelled call's stream ends without an answer (the upstream
        // stops, and answers nothing), long before the call would have.
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            client.post_with(&long, &[], &mut |_, _| json!({})),
        )
        .await
        .expect("the cancelled call's stream ends");
        assert_eq!(cancel.await.unwrap(), 202);
        assert!(
            answered.messages.iter().all(|m| m.get("result").is_none()),
            "{:?}",
            answered.messages
        );
        let echoed = client
            .call("echo", json!({"message": "after cancel"}))
            .await;
        assert_eq!(text_of(echoed.answer()), "Echo: after cancel");
    });
    let events = gateway_events_when(&server, |events| {
        events.iter().any(|e| e["outcome"]["status"] == "failure")
    });
    let cancelled = events
        .iter()
        .find(|e| {
            e["target"]["tool"] == "trigger-long-running-operation"
                && e["outcome"]["status"] == "failure"
        })
        .unwrap_or_else(|| panic!("the cancelled call's event: {events:#?}"));
    let large = events
        .iter()
        .find(|e| e["attributes"]["custody.arguments"]["custody.truncated"] == true)
        .unwrap_or_else(|| panic!("the large call's event: {events:#?}"));
    assert_eq!(large["target"]["tool"], "echo");
    assert_eq!(large["outcome"]["status"], "success");
    assert!(large["attributes"]["gen_ai.tool.call.arguments.sha256"].is_string());
    assert!(
        cancelled["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("cancelled by the client"),
        "{cancelled}"
    );
    drop(upstream);
}

struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_http_everything(peers: &Peers, port: u16) -> Upstream {
    let child = std::process::Command::new("node")
        .arg(&peers.server)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting server-everything over HTTP");
    let upstream = Upstream(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "server-everything never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    upstream
}
