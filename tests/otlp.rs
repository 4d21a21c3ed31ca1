//! `POST /v1/traces` end to end: the real Python OpenTelemetry SDK exports
//! an orchestrator agent's spans and its sub-agent's over OTLP/HTTP
//! (protobuf) to a real `custody serve`, with an `ingest` token.
//!
//! The SDK is installed by `tests/peers/install-otel.sh` (PyPI, into
//! `target/otel-peers`), which the test runs itself when it is missing. A
//! test whose SDK cannot be installed fails, saying why, unless
//! `CUSTODY_SKIP_OTEL_PEERS=1` asks to skip it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Body, Server, call, call_ok, output_within};
use serde_json::{Value, json};

/// Where `tests/peers/install-otel.sh` puts the SDK: `target/otel-peers`.
fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("otel-peers")
}

/// The venv's Python, the SDK installed first if need be; `None` when
/// skipping was asked for.
fn python() -> Option<PathBuf> {
    if std::env::var_os("CUSTODY_SKIP_OTEL_PEERS").is_some_and(|v| v == "1") {
        eprintln!("skipping: CUSTODY_SKIP_OTEL_PEERS=1 asks to skip the OpenTelemetry SDK test");
        return None;
    }
    let dir = peers_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/install-otel.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("running install-otel.sh");
    assert!(
        output.status.success(),
        "the OpenTelemetry SDK is not installed in {} and installing it failed: {}; \
         `tests/peers/install-otel.sh` needs python3 with network access to PyPI; \
         CUSTODY_SKIP_OTEL_PEERS=1 skips this test",
        dir.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Some(dir.join("venv/bin/python"))
}

fn ingest_token(server: &Server) -> String {
    let created = server.cli(&["token", "create", "--role", "ingest", "--name", "otel"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    String::from_utf8(created.stdout).unwrap().trim().to_owned()
}

/// The stored events of trace `trace`, oldest first.
fn events_of(server: &Server, trace: &str) -> Vec<Value> {
    let page = call_ok(
        server,
        reqwest::Method::GET,
        "/v1/events?order=oldest&limit=1000",
        &server.token,
        Body::None,
    );
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stored| stored["event"].clone())
        .filter(|event| event["context"]["trace_id"] == trace)
        .collect()
}

/// An event's chain, root first, as `type:id`.
fn chain(event: &Value) -> Vec<String> {
    let actor = &event["actor"];
    let hop = |p: &Value| {
        format!(
            "{}:{}",
            p["type"].as_str().unwrap(),
            p["id"].as_str().unwrap()
        )
    };
    actor["root"]
        .as_object()
        .map(|_| hop(&actor["root"]))
        .into_iter()
        .chain(actor["agents"].as_array().into_iter().flatten().map(hop))
        .chain(std::iter::once(hop(&actor["current"])))
        .collect()
}

#[test]
fn the_opentelemetry_sdk_exports_an_agent_tree_over_otlp_http() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token = ingest_token(&server);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/otel_agents.py");
    let output = output_within(
        Command::new(&python)
            .arg(&script)
            .arg(format!("{}/v1/traces", server.url))
            .arg(&token),
        common::COMMAND_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let trace = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(trace.len(), 32, "{trace}");

    let events = events_of(&server, &trace);
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|event| {
            let what = event["target"]["tool"]
                .as_str()
                .or(event["target"]["principal"]["id"].as_str())
                .unwrap_or_default();
            (event["kind"].as_str().unwrap().to_owned(), what.to_owned())
        })
        .collect();
    let mut sorted = summary.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("agent_spawn".into(), "agent-orchestrator".into()),
            ("agent_spawn".into(), "agent-researcher".into()),
            ("tool_call".into(), "lookup_order".into()),
            ("tool_call".into(), "web_search".into()),
        ],
        "{events:#?}"
    );
    let find = |what: &str| {
        events
            .iter()
            .zip(&summary)
            .find(|(_, (_, w))| w == what)
            .map(|(event, _)| event)
            .unwrap()
    };
    // The sub-agent's tool call carries the whole chain.
    let web_search = find("web_search");
    assert_eq!(
        chain(web_search),
        [
            "human:alice@example.com",
            "agent:agent-orchestrator",
            "agent:agent-researcher"
        ]
    );
    assert_eq!(web_search["source"]["type"], "otlp");
    assert_eq!(web_search["source"]["name"], "support-desk");
    assert_eq!(web_search["context"]["tool_call_id"], "call-2");
    assert_eq!(web_search["raw"]["name"], "execute_tool web_search");
    assert_eq!(
        chain(find("lookup_order")),
        ["human:alice@example.com", "agent:agent-orchestrator"]
    );
    assert_eq!(
        chain(find("agent-researcher")),
        ["human:alice@example.com", "agent:agent-orchestrator"]
    );
    assert_eq!(
        chain(find("agent-orchestrator")),
        ["human:alice@example.com"]
    );
    assert_eq!(
        find("agent-researcher")["context"]["session_id"],
        "conv-e2e"
    );
}

#[test]
fn otlp_json_gzip_partial_success_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token = ingest_token(&server);
    let trace = "5b8efff798038103d269b633813fc60c";
    let request = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-agent"}}]},
        "scopeSpans": [{"spans": [
            {"traceId": trace, "spanId": "eee19b7ec3c1b174", "name": "execute_tool grep",
             "startTimeUnixNano": "1790000000000000000", "endTimeUnixNano": "1790000000100000000",
             "attributes": [{"key": "gen_ai.tool.name", "value": {"stringValue": "grep"}},
                            {"key": "user.id", "value": {"stringValue": "bob"}}],
             "status": {"code": 2, "message": "exit 2"}},
            {"traceId": trace, "spanId": "ee", "name": "broken"}
        ]}]
    }]});

    // OTLP/JSON, gzip-compressed: one span stored, one refused.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(request.to_string().as_bytes()).unwrap();
    let body = gz.finish().unwrap();
    let post = |content_type, encoding, bytes, token: &str| {
        call(
            &server,
            reqwest::Method::POST,
            "/v1/traces",
            token,
            Body::Bytes {
                content_type,
                encoding,
                bytes,
            },
        )
    };
    let (status, answer) = post("application/json", Some("gzip"), body, &token);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], 1, "{answer}");
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("span 1"),
        "{answer}"
    );
    let events = events_of(&server, trace);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kind"], "tool_call");
    assert_eq!(events[0]["outcome"]["status"], "failure");
    assert_eq!(events[0]["actor"]["current"]["id"], "bob");

    // A body that is not OTLP: 400; no token: 401; a viewer: 403; an
    // unknown media type: 415.
    let (status, _) = post(
        "application/x-protobuf",
        None,
        b"\xff\xff\xff".to_vec(),
        &token,
    );
    assert_eq!(status, 400);
    let (status, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/traces",
        "",
        Body::Json(request.clone()),
    );
    assert_eq!(status, 401);
    let viewer = server.cli(&["token", "create", "--role", "viewer", "--name", "v"]);
    let viewer = String::from_utf8(viewer.stdout).unwrap();
    let (status, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/traces",
        viewer.trim(),
        Body::Json(request),
    );
    assert_eq!(status, 403);
    let (status, _) = post("text/plain", None, b"x".to_vec(), &token);
    assert_eq!(status, 415);
}

/// A sub-agent's spans exported before its orchestrator's (two processes,
/// one trace): stored at once with what they show, then, when the
/// orchestrator's span arrives, stored again below it with the whole chain,
/// naming the events they supersede.
#[test]
fn spans_exported_before_their_parent_are_linked_when_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token = ingest_token(&server);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let span = |id: &str, parent: &str, name: &str, attributes: Value| {
        json!({"traceId": trace, "spanId": id, "parentSpanId": parent, "name": name,
               "startTimeUnixNano": "1790000000000000000", "endTimeUnixNano": "1790000000100000000",
               "attributes": attributes})
    };
    let attr = |key: &str, value: &str| json!({"key": key, "value": {"stringValue": value}});
    let request = |service: &str, spans: Vec<Value>| {
        Body::Json(json!({"resourceSpans": [{
            "resource": {"attributes": [attr("service.name", service)]},
            "scopeSpans": [{"spans": spans}]}]}))
    };
    let post = |body| {
        let (status, answer) = call(&server, reqwest::Method::POST, "/v1/traces", &token, body);
        assert_eq!(status, 200, "{answer}");
    };
    // The researcher's process: its agent span and a tool, whose parent
    // (the orchestrator's span) is not sent yet.
    post(request(
        "researcher",
        vec![
            span(
                "b7ad6b7169203331",
                "00f067aa0ba902b7",
                "invoke_agent researcher",
                json!([
                    attr("gen_ai.operation.name", "invoke_agent"),
                    attr("gen_ai.agent.id", "researcher")
                ]),
            ),
            span(
                "c7ad6b7169203332",
                "b7ad6b7169203331",
                "execute_tool fetch",
                json!([
                    attr("gen_ai.operation.name", "execute_tool"),
                    attr("gen_ai.tool.name", "fetch")
                ]),
            ),
        ],
    ));
    let first = events_of(&server, trace);
    assert_eq!(first.len(), 2);
    assert!(
        first
            .iter()
            .all(|e| e["attributes"]["otlp.parent_missing"] == true)
    );
    // The orchestrator's process, later.
    post(request(
        "orchestrator",
        vec![span(
            "00f067aa0ba902b7",
            "",
            "invoke_agent orchestrator",
            json!([
                attr("gen_ai.operation.name", "invoke_agent"),
                attr("gen_ai.agent.id", "orchestrator"),
                attr("user.id", "alice@example.com")
            ]),
        )],
    ));
    let events = events_of(&server, trace);
    assert_eq!(events.len(), 5, "{events:#?}");
    let linked: Vec<&Value> = events
        .iter()
        .filter(|e| e["attributes"]["otlp.supersedes"].is_string())
        .collect();
    assert_eq!(linked.len(), 2);
    let tool = linked.iter().find(|e| e["kind"] == "tool_call").unwrap();
    assert_eq!(
        chain(tool),
        [
            "human:alice@example.com",
            "agent:orchestrator",
            "agent:researcher"
        ]
    );
    let first_tool = first.iter().find(|e| e["kind"] == "tool_call").unwrap();
    assert_eq!(tool["attributes"]["otlp.supersedes"], first_tool["id"]);
    let spawn = linked.iter().find(|e| e["kind"] == "agent_spawn").unwrap();
    assert_eq!(
        chain(spawn),
        ["human:alice@example.com", "agent:orchestrator"]
    );
    assert_eq!(spawn["target"]["principal"]["id"], "researcher");
}
