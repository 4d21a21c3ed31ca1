//! The OTLP trace receivers end to end: the real Python OpenTelemetry SDK
//! exports an orchestrator agent's spans and its sub-agent's to a real
//! `custody serve`, with an `ingest` token, over OTLP/HTTP (protobuf,
//! `POST /v1/traces` on the API's port and on the OTLP/HTTP port) and over
//! OTLP/gRPC (gzip); a Rust gRPC client (tonic) checks the gRPC receiver's
//! refusals, and the listeners' ports are checked to stop a server that
//! cannot bind them.
//!
//! The SDK is installed by `tests/peers/install-otel.sh` (PyPI, into
//! `target/otel-peers`), which the test runs itself when it is missing. A
//! test whose SDK cannot be installed fails, saying why, unless
//! `CUSTODY_SKIP_OTEL_PEERS=1` asks to skip it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Body, Server, call, call_ok, custody, free_port, mint_agent_token, output_within};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::{Value, json};
use tonic::Code;

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

/// Runs `tests/peers/otel_agents.py`: the SDK exports the agent tree to
/// `endpoint` over `protocol` (`http` or `grpc`); returns its trace id.
fn sdk_export(python: &Path, endpoint: &str, token: &str, protocol: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/otel_agents.py");
    let output = output_within(
        Command::new(python)
            .arg(&script)
            .arg(endpoint)
            .arg(token)
            .arg(protocol),
        common::COMMAND_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "{protocol}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let trace = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(trace.len(), 32, "{trace}");
    trace
}

/// The events of the agent tree the SDK exported as `trace`: the agents'
/// spawns and their tool calls, each with its whole chain.
fn assert_agent_tree(server: &Server, trace: &str) {
    let events = events_of(server, trace);
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
fn the_opentelemetry_sdk_exports_an_agent_tree_over_otlp_http() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token = ingest_token(&server);
    let trace = sdk_export(
        &python,
        &format!("{}/v1/traces", server.url),
        &token,
        "http",
    );
    assert_agent_tree(&server, &trace);
}

#[test]
fn the_opentelemetry_sdk_exports_an_agent_tree_over_otlp_grpc_and_the_otlp_http_port() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_otlp(dir.path(), &[]);
    let token = ingest_token(&server);

    // OTLP/gRPC, gzip-compressed, on the gRPC listener.
    let grpc = format!("http://{}", server.otlp_grpc.as_ref().unwrap());
    let trace = sdk_export(&python, &grpc, &token, "grpc");
    assert_agent_tree(&server, &trace);

    // OTLP/HTTP on its own listener.
    let http = format!("{}/v1/traces", server.otlp_http.as_ref().unwrap());
    let again = sdk_export(&python, &http, &token, "http");
    assert_ne!(again, trace);
    assert_agent_tree(&server, &again);
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

/// A trace request with one tool call span and one span that cannot be
/// mapped (its span id is too short), as OTLP/JSON.
fn one_good_one_bad(trace: &str) -> ExportTraceServiceRequest {
    serde_json::from_value(json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "grpc-agent"}}]},
        "scopeSpans": [{"spans": [
            {"traceId": trace, "spanId": "eee19b7ec3c1b174", "name": "execute_tool grep",
             "startTimeUnixNano": "1790000000000000000", "endTimeUnixNano": "1790000000100000000",
             "attributes": [{"key": "gen_ai.tool.name", "value": {"stringValue": "grep"}},
                            {"key": "user.id", "value": {"stringValue": "bob"}}]},
            {"traceId": trace, "spanId": "ee", "name": "broken"}
        ]}]
    }]}))
    .unwrap()
}

/// A message on the wire where `ExportTraceServiceRequest.resource_spans`
/// (field 1) holds bytes that are no `ResourceSpans`.
#[derive(Clone, PartialEq, prost::Message)]
struct NotOtlp {
    #[prost(bytes = "vec", tag = "1")]
    resource_spans: Vec<u8>,
}

/// Calls `TraceService/Export` at `address` with `message`, gzip-compressed,
/// `token` as the bearer (none if empty), as a gRPC client does.
async fn grpc_export<M: prost::Message + Send + 'static>(
    address: &str,
    token: &str,
    message: M,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connecting to the gRPC listener");
    let mut grpc = tonic::client::Grpc::new(channel)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(message);
    if !token.is_empty() {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let codec = tonic_prost::ProstCodec::<M, ExportTraceServiceResponse>::default();
    grpc.unary(request, path, codec)
        .await
        .map(tonic::Response::into_inner)
}

#[test]
fn otlp_grpc_answers_and_refuses_with_grpc_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_otlp(dir.path(), &["--max-body-bytes", "65536"]);
    let address = server.otlp_grpc.clone().unwrap();
    let token = ingest_token(&server);
    let viewer = server.cli(&["token", "create", "--role", "viewer", "--name", "v"]);
    let viewer = String::from_utf8(viewer.stdout).unwrap().trim().to_owned();
    let agent = mint_agent_token(&server, "carol@example.com", "grpc-bot", "run-g");
    let trace = "6c8efff798038103d269b633813fc60c";
    let agent_trace = "7d8efff798038103d269b633813fc60c";
    let runtime = tokio::runtime::Runtime::new().unwrap();

    runtime.block_on(async {
        // An ingest token: the good span stored, the bad one counted and
        // named, as over HTTP.
        let answer = grpc_export(&address, &token, one_good_one_bad(trace))
            .await
            .expect("an ingest token may export");
        let partial = answer.partial_success.expect("a partial success");
        assert_eq!(partial.rejected_spans, 1);
        assert!(partial.error_message.contains("span 1"), "{partial:?}");

        // An agent token is accepted as over HTTP.
        grpc_export(&address, &agent, one_good_one_bad(agent_trace))
            .await
            .expect("an agent token may export its own spans");

        // No token, a token that is no token, a forged agent token.
        for bad in ["", "cst_nothing", "e30.e30.c2ln"] {
            let refused = grpc_export(&address, bad, one_good_one_bad(trace))
                .await
                .unwrap_err();
            assert_eq!(
                refused.code(),
                Code::Unauthenticated,
                "{bad:?}: {refused:?}"
            );
        }
        // A viewer may read, not export.
        let refused = grpc_export(&address, &viewer, one_good_one_bad(trace))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("viewer"), "{refused:?}");
        // Bytes that are not OTLP.
        let garbage = NotOtlp {
            resource_spans: vec![0xff, 0xff, 0xff],
        };
        let refused = grpc_export(&address, &token, garbage).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        // Over the body limit once decompressed (it is sent gzipped).
        let mut large = one_good_one_bad(trace);
        large.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(100_000);
        let refused = grpc_export(&address, &token, large).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("65536"), "{refused:?}");
        assert!(
            refused
                .metadata()
                .get_bin("google.rpc.retryinfo-bin")
                .is_none()
        );
    });

    let events = events_of(&server, trace);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["kind"], "tool_call");
    assert_eq!(events[0]["actor"]["current"]["id"], "bob");
    assert_eq!(events[0]["source"]["name"], "grpc-agent");
    assert_eq!(events_of(&server, agent_trace).len(), 1);

    // The OTLP/HTTP listener serves `/v1/traces`, with the same
    // authentication, and nothing else.
    let otlp_http = server.otlp_http.clone().unwrap();
    let admin = server.token.clone();
    let (refused, elsewhere) = runtime.block_on(async move {
        let http = reqwest::Client::new();
        let refused = http
            .post(format!("{otlp_http}/v1/traces"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap()
            .status();
        let elsewhere = http
            .get(format!("{otlp_http}/v1/events"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .status();
        (refused, elsewhere)
    });
    assert_eq!(refused, 401);
    assert_eq!(elsewhere, 404);
}

/// Runs `custody serve` on a free API port and a fresh data directory with
/// `configure` applied; returns its stderr, failing unless it exits with 1
/// without creating the data directory.
fn serve_fails(configure: impl FnOnce(&mut Command)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = custody();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(&data);
    configure(&mut command);
    let output = output_within(&mut command, common::COMMAND_TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!data.exists(), "a store was created: {stderr}");
    stderr
}

#[test]
fn a_busy_otlp_port_stops_the_server_naming_the_flag() {
    // A second server on the ports a first one holds.
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start_with_otlp(dir.path(), &[]);
    let grpc = first.otlp_grpc.clone().unwrap();
    let stderr = serve_fails(|c| _ = c.args(["--otlp-grpc-listen", &grpc]));
    assert!(
        stderr.contains(&format!("listening on {grpc} for OTLP/gRPC"))
            && stderr.contains("--otlp-grpc-listen off"),
        "{stderr}"
    );
    let http = first.otlp_http.clone().unwrap().replace("http://", "");
    let stderr = serve_fails(|c| _ = c.args(["--otlp-http-listen", &http]));
    assert!(
        stderr.contains(&format!("listening on {http} for OTLP/HTTP"))
            && stderr.contains("--otlp-http-listen off"),
        "{stderr}"
    );
    assert!(common::answers(&first.url));

    // By default the receivers take the standard ports. Whether this test
    // holds them or another program does, `serve` cannot bind them: the
    // test never needs them to be free.
    let _held = std::net::TcpListener::bind("127.0.0.1:4317");
    let stderr = serve_fails(|c| _ = c.env_remove("CUSTODY_OTLP_GRPC_LISTEN"));
    assert!(
        stderr.contains("listening on 127.0.0.1:4317 for OTLP/gRPC (--otlp-grpc-listen"),
        "{stderr}"
    );
    let _held = std::net::TcpListener::bind("127.0.0.1:4318");
    let stderr = serve_fails(|c| _ = c.env_remove("CUSTODY_OTLP_HTTP_LISTEN"));
    assert!(
        stderr.contains("listening on 127.0.0.1:4318 for OTLP/HTTP (--otlp-http-listen"),
        "{stderr}"
    );
}

/// `google.rpc.RetryInfo`, as the trailer `google.rpc.retryinfo-bin`
/// carries it.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<Delay>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct Delay {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

#[test]
fn a_full_queue_is_resource_exhausted_over_grpc_with_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    // A queue of one event: a request arriving while another's events wait
    // for their commit finds it full.
    let server = Server::start_with_otlp(dir.path(), &["--queue-capacity", "1"]);
    let address = server.otlp_grpc.clone().unwrap();
    let token = ingest_token(&server);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let busy = runtime.block_on(async {
        for round in 0..50u32 {
            let exports: Vec<_> = (0..16u32)
                .map(|i| {
                    let (address, token) = (address.clone(), token.clone());
                    let trace = format!("{:016x}{:016x}", round + 1, i + 1);
                    tokio::spawn(async move {
                        grpc_export(&address, &token, one_good_one_bad(&trace)).await
                    })
                })
                .collect();
            for export in exports {
                if let Err(status) = export.await.unwrap()
                    && status.code() == Code::ResourceExhausted
                {
                    return Some(status);
                }
            }
        }
        None
    });
    let busy = busy.expect("a full queue within 50 rounds of 16 concurrent exports");
    assert!(busy.message().contains("queue is full"), "{busy:?}");
    // The exporters' cue to retry, and when: in the status details (Go,
    // Java) and in the trailer the Python exporter reads.
    assert!(!busy.details().is_empty(), "{busy:?}");
    let trailer = busy
        .metadata()
        .get_bin("google.rpc.retryinfo-bin")
        .expect("a RetryInfo trailer")
        .to_bytes()
        .unwrap();
    let info = <RetryInfo as prost::Message>::decode(trailer.as_ref()).unwrap();
    assert_eq!(info.retry_delay.unwrap().seconds, 1);
}
