//! OTLP benchmark: GenAI agent spans exported to the real server, over
//! OTLP/HTTP (protobuf, `POST /v1/traces`) and OTLP/gRPC
//! (`TraceService/Export`), each span mapped to an event, attributed and
//! stored, against the same events posted as NDJSON to `POST /v1/events`
//! and against the mapper alone, measured in the same run.
//!
//! ```sh
//! cargo bench -p custody-api --bench otlp -- [SPANS] [CLIENTS]
//! ```
//!
//! A request holds 50 traces of 10 spans: an agent's `invoke_agent` span
//! (with its human's `user.id`) and 9 `execute_tool` spans under it. The
//! NDJSON baseline posts exactly the events the mapper makes of each
//! request, one body per request, so the difference is the price of OTLP:
//! decoding protobuf and mapping spans (in the request, under the mapper's
//! lock) instead of decoding JSON events. Every figure covers what a client
//! waits for: sending, decoding, the engine's stages (attribution and the
//! graph, as `custody serve` runs them), group commit with fsync, and the
//! answer. Bodies are encoded beforehand; client and server share this
//! machine's cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use chrono::Utc;
use custody_api::{AppState, Limits, Listeners};
use custody_engine::Engine;
use custody_store::{Durability, Store, StoreOptions};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};
use prost::Message as _;

/// Spans in one trace: one agent span, the rest its tool calls.
const TRACE_SPANS: usize = 10;
/// Traces in one request.
const REQUEST_TRACES: usize = 50;

/// The allocator the `custody` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    /// The mapper's events as NDJSON to `POST /v1/events`.
    Ndjson,
    /// OTLP/HTTP protobuf to `POST /v1/traces`.
    OtlpHttp,
    /// OTLP/gRPC `TraceService/Export`.
    OtlpGrpc,
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let spans: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let durability = match std::env::var("CUSTODY_BENCH_DURABILITY").as_deref() {
        Ok("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let per_request = TRACE_SPANS * REQUEST_TRACES;
    let requests: Vec<ExportTraceServiceRequest> = (0..spans.div_ceil(per_request))
        .map(|r| request(r, spans.min((r + 1) * per_request) - r * per_request))
        .collect();
    let protobuf: Vec<Bytes> = requests
        .iter()
        .map(|r| Bytes::from(r.encode_to_vec()))
        .collect();
    let protobuf_bytes: usize = protobuf.iter().map(Bytes::len).sum();
    println!(
        "spans: {spans} in {} requests of {per_request}, {} bytes of protobuf a span on average",
        requests.len(),
        protobuf_bytes / spans
    );
    println!(
        "durability: {durability:?}, clients: {clients}, cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // The mapper alone, one thread: decode and map, as the handler does.
    let mut mapper = custody_otlp::Mapper::default();
    let now = Utc::now();
    let started = Instant::now();
    let mut mapped = Vec::with_capacity(protobuf.len());
    for body in &protobuf {
        let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("decoding");
        let events = mapper.map(&request, now);
        assert!(events.errors.is_empty(), "{:?}", events.errors.first());
        mapped.push(events.events);
    }
    let mapper_rate = spans as f64 / started.elapsed().as_secs_f64();
    println!(
        "baseline  mapper alone (decode protobuf and map), one thread: {mapper_rate:>9.0} spans/s"
    );
    let ndjson: Vec<Bytes> = mapped
        .iter()
        .map(|events| {
            let lines: Vec<String> = events
                .iter()
                .map(|e| serde_json::to_string(e).expect("serializing an event"))
                .collect();
            Bytes::from(lines.join("\n"))
        })
        .collect();
    let ndjson_bytes: usize = ndjson.iter().map(Bytes::len).sum();
    println!(
        "          the same events as NDJSON: {} bytes an event on average",
        ndjson_bytes / spans
    );
    drop(mapped);

    let mut rates = Vec::new();
    for (transport, bodies, label) in [
        (
            Transport::Ndjson,
            &ndjson,
            "baseline  the same events, NDJSON to /v1/events",
        ),
        (
            Transport::OtlpHttp,
            &protobuf,
            "measured  OTLP/HTTP protobuf to /v1/traces     ",
        ),
        (
            Transport::OtlpGrpc,
            &protobuf,
            "measured  OTLP/gRPC TraceService/Export        ",
        ),
    ] {
        let (rate, p50, p99) = drive(transport, bodies, spans, clients, durability);
        println!(
            "{label}: {rate:>9.0} spans/s   ack latency p50 {:.1} ms, p99 {:.1} ms (a request of {per_request})",
            ms(p50),
            ms(p99)
        );
        rates.push(rate);
    }
    println!(
        "ratio     OTLP/HTTP / NDJSON: {:.0}%, OTLP/gRPC / NDJSON: {:.0}%",
        100.0 * rates[1] / rates[0],
        100.0 * rates[2] / rates[0]
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// Request `r`, of `count` spans: traces of an agent span and its tool
/// calls, from a mix of services, agents, humans and tools.
fn request(r: usize, count: usize) -> ExportTraceServiceRequest {
    let humans = [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dan@example.com",
        "erin@example.com",
    ];
    let tools = [
        "read_file",
        "write_file",
        "search_code",
        "run_tests",
        "git_commit",
        "http_fetch",
        "sql_query",
    ];
    let start = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    let mut spans = Vec::with_capacity(count);
    for i in 0..count {
        let trace = r * REQUEST_TRACES + i / TRACE_SPANS;
        let position = i % TRACE_SPANS;
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&(trace as u64 + 1).to_be_bytes());
        trace_id[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
        let span_id = |p: usize| {
            ((trace * TRACE_SPANS + p) as u64 + 1)
                .to_be_bytes()
                .to_vec()
        };
        let agent = format!("agent-{}", trace % 40);
        let at = start + (trace * TRACE_SPANS + position) as u64 * 1_000_000;
        let (name, parent, attributes) = if position == 0 {
            (
                format!("invoke_agent {agent}"),
                Vec::new(),
                vec![
                    kv("gen_ai.operation.name", "invoke_agent"),
                    kv("gen_ai.provider.name", "openai"),
                    kv("gen_ai.agent.id", agent.clone()),
                    kv("gen_ai.agent.name", agent.clone()),
                    kv("gen_ai.conversation.id", format!("conv-{:05}", trace % 500)),
                    kv("user.id", humans[trace % humans.len()]),
                ],
            )
        } else {
            let tool = tools[(trace + position) % tools.len()];
            (
                format!("execute_tool {tool}"),
                span_id(0),
                vec![
                    kv("gen_ai.operation.name", "execute_tool"),
                    kv("gen_ai.tool.name", tool),
                    kv("gen_ai.tool.call.id", format!("call-{trace}-{position}")),
                    kv("gen_ai.tool.type", "function"),
                ],
            )
        };
        spans.push(Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id(position),
            parent_span_id: parent,
            name,
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: at,
            end_time_unix_nano: at + 5_000_000,
            attributes,
            ..Span::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", format!("support-desk-{}", r % 4))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// Runs the real server in-process on a fresh store and sends every body
/// over `transport` from `clients` concurrent clients; returns spans (events)
/// per second and the answers' p50 and p99 latency.
fn drive(
    transport: Transport,
    bodies: &[Bytes],
    spans: usize,
    clients: usize,
    durability: Durability,
) -> (f64, Duration, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("CUSTODY_BENCH_WORKERS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            durability,
            ..StoreOptions::default()
        },
    )
    .expect("store");
    let token = custody_api::issue_token(&store, custody_api::Role::Ingest, None)
        .expect("token")
        .secret;
    // The attribute stage `custody serve` runs: attribution and the graph.
    let engine = Arc::new(
        Engine::builder(Arc::new(store.clone()))
            .attribute(custody_graph::Live::new(
                custody_graph::Attributor::default(),
                custody_graph::Graph::default(),
            ))
            .build(),
    );
    let bodies: Arc<Vec<Bytes>> = Arc::new(bodies.to_vec());

    let (elapsed, mut latencies) = runtime.block_on(async {
        let api = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listening");
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listening");
        let api_url = format!("http://{}", api.local_addr().expect("address"));
        let grpc_url = format!("http://{}", grpc.local_addr().expect("address"));
        let state = AppState::new(engine, store.clone(), Limits::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listeners = Listeners {
            api,
            otlp_http: None,
            otlp_grpc: Some(grpc),
        };
        let server = tokio::spawn(custody_api::serve_all(listeners, state, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (http, token, bodies, next) =
                (http.clone(), token.clone(), bodies.clone(), next.clone());
            let (api_url, grpc_url) = (api_url.clone(), grpc_url.clone());
            tasks.push(tokio::spawn(async move {
                // A gRPC client of its own, with one HTTP/2 connection.
                let mut grpc = match transport {
                    Transport::OtlpGrpc => Some(tonic::client::Grpc::new(
                        tonic::transport::Endpoint::from_shared(grpc_url)
                            .expect("endpoint")
                            .connect()
                            .await
                            .expect("connecting"),
                    )),
                    _ => None,
                };
                let mut latencies = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(index) else { break };
                    loop {
                        let sent = Instant::now();
                        let busy = match (&mut grpc, transport) {
                            (Some(grpc), _) => export(grpc, &token, body.clone()).await,
                            (None, transport) => {
                                let (path, content_type) = match transport {
                                    Transport::Ndjson => ("/v1/events", "application/x-ndjson"),
                                    _ => ("/v1/traces", "application/x-protobuf"),
                                };
                                let response = http
                                    .post(format!("{api_url}{path}"))
                                    .bearer_auth(&token)
                                    .header("content-type", content_type)
                                    .body(body.clone())
                                    .send()
                                    .await
                                    .expect("posting a batch");
                                let status = response.status();
                                let _ = response.bytes().await;
                                assert!(
                                    status == 200 || status == 429,
                                    "a batch was refused: {status}"
                                );
                                status == 429
                            }
                        };
                        if busy {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                        latencies.push(sent.elapsed());
                        break;
                    }
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("client task"));
        }
        let elapsed = started.elapsed();
        let _ = stop.send(());
        let _ = server.await;
        (elapsed, latencies)
    });
    let stored = store.count().expect("counting");
    assert_eq!(stored as usize, spans, "every acknowledged span is stored");
    store.close().expect("closing the store");
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len() - 1))
            .copied()
            .unwrap_or_default()
    };
    (spans as f64 / elapsed.as_secs_f64(), at(0.5), at(0.99))
}

/// Calls `Export` with an encoded request; whether the queue was full.
async fn export(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    token: &str,
    body: Bytes,
) -> bool {
    grpc.ready().await.expect("the channel is ready");
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    match grpc.unary(request, path, Encoded).await {
        Ok(answer) => {
            assert!(answer.get_ref().partial_success.is_none(), "spans refused");
            false
        }
        Err(status) if status.code() == tonic::Code::ResourceExhausted => true,
        Err(status) => panic!("an export was refused: {status:?}"),
    }
}

/// Sends a request already encoded, as an exporter holding its batch would
/// have encoded it outside the measured section; decodes the answer.
#[derive(Debug, Clone, Copy)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Encoded;
    type Decoder = tonic_prost::ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        Encoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}
