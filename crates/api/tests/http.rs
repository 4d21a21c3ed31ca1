//! End-to-end tests of the HTTP API: each test serves the real router on a
//! loopback port over a store in a temporary directory and talks to it with
//! a real HTTP client, checking statuses, headers and bodies.

// Each test file uses part of the shared harness.
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use common::{
    Answer, Server, example, examples, gzip, id, minimal, ndjson, send, store_options, wait_until,
    with, within, without,
};
use custody_api::{Limits, Role};
use custody_store::StoreOptions;
use futures_util::StreamExt as _;
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

/// Query parameters, as a table row gives them.
type Params = &'static [(&'static str, &'static str)];

// ---------------------------------------------------------------------------
// Authentication and roles.

/// Who presents what in a request.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// No `Authorization` header.
    Anonymous,
    /// This `Authorization` header, verbatim.
    Header(&'static str),
    /// An `Authorization` header that is not text.
    NotText,
    /// The bearer token of a revoked token.
    Revoked,
    /// The bearer token of a live token of this role.
    Role(Role),
}

/// A syntactically valid token that was never issued.
const NEVER_ISSUED: &str = "Bearer cst_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_healthz_needs_a_token_of_the_right_role() {
    use Role::{Admin, Ingest, Responder, Viewer};
    use Who::{Anonymous, Header, NotText, Revoked};
    const GET: Method = Method::GET;
    const POST: Method = Method::POST;
    const EVENTS: &str = "/v1/events";
    const ONE: &str = "/v1/events/{id}";
    const STREAM: &str = "/v1/events/stream";
    const OCSF: &str = "/v1/export/ocsf";
    const METRICS: &str = "/metrics";
    const HEALTHZ: &str = "/healthz";
    let table: &[(Who, Method, &str, u16)] = &[
        // No usable token: 401, whatever the route.
        (Anonymous, GET, EVENTS, 401),
        (Anonymous, POST, EVENTS, 401),
        (Anonymous, GET, ONE, 401),
        (Anonymous, GET, STREAM, 401),
        (Anonymous, GET, OCSF, 401),
        (Anonymous, GET, METRICS, 401),
        (Header("Bearer not-a-custody-token"), GET, EVENTS, 401),
        (Header("Bearer not-a-custody-token"), POST, EVENTS, 401),
        (Header("Basic Y3N0X3NlY3JldDpzZWNyZXQ="), GET, EVENTS, 401),
        (
            Header("cst_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            GET,
            EVENTS,
            401,
        ),
        (Header("Bearer "), GET, EVENTS, 401),
        (Header(NEVER_ISSUED), GET, EVENTS, 401),
        (Header(NEVER_ISSUED), POST, EVENTS, 401),
        (Header(NEVER_ISSUED), GET, METRICS, 401),
        (NotText, GET, EVENTS, 401),
        (Revoked, GET, EVENTS, 401),
        (Revoked, POST, EVENTS, 401),
        (Revoked, GET, STREAM, 401),
        // A token whose role does not allow the route: 403.
        (Who::Role(Ingest), GET, EVENTS, 403),
        (Who::Role(Ingest), GET, ONE, 403),
        (Who::Role(Ingest), GET, STREAM, 403),
        (Who::Role(Ingest), GET, OCSF, 403),
        (Who::Role(Ingest), GET, METRICS, 403),
        (Who::Role(Viewer), POST, EVENTS, 403),
        (Who::Role(Responder), POST, EVENTS, 403),
        // The roles that may: ingest and admin submit; viewer, responder
        // and admin read.
        (Who::Role(Ingest), POST, EVENTS, 200),
        (Who::Role(Admin), POST, EVENTS, 200),
        (Who::Role(Viewer), GET, EVENTS, 200),
        (Who::Role(Viewer), GET, ONE, 200),
        (Who::Role(Viewer), GET, STREAM, 200),
        (Who::Role(Viewer), GET, OCSF, 200),
        (Who::Role(Viewer), GET, METRICS, 200),
        (Who::Role(Responder), GET, EVENTS, 200),
        (Who::Role(Responder), GET, ONE, 200),
        (Who::Role(Responder), GET, STREAM, 200),
        (Who::Role(Responder), GET, OCSF, 200),
        (Who::Role(Responder), GET, METRICS, 200),
        (Who::Role(Admin), GET, EVENTS, 200),
        (Who::Role(Admin), GET, ONE, 200),
        (Who::Role(Admin), GET, STREAM, 200),
        (Who::Role(Admin), GET, OCSF, 200),
        (Who::Role(Admin), GET, METRICS, 200),
        // Health needs nothing and ignores what it is given.
        (Anonymous, GET, HEALTHZ, 200),
        (Header(NEVER_ISSUED), GET, HEALTHZ, 200),
        (Revoked, GET, HEALTHZ, 200),
        (Who::Role(Ingest), GET, HEALTHZ, 200),
    ];

    let server = Server::start().await;
    let event = example("tool_call");
    let event_id = event["id"].as_str().unwrap().to_owned();
    server.ingest(std::slice::from_ref(&event)).await;
    let revoked =
        custody_api::issue_token(&server.store, Role::Viewer, Some("revoked".into())).unwrap();
    assert!(server.store.revoke_token(&revoked.record.id).unwrap());

    let mut failures = Vec::new();
    for (who, method, path, expected) in table {
        let route = path.replace("{id}", &event_id);
        let mut request = server.request(method.clone(), &route);
        let secret = match who {
            Who::Anonymous => None,
            Who::Header(header) => {
                request = request.header("authorization", *header);
                Some(
                    header
                        .trim_start_matches("Bearer ")
                        .trim_start_matches("Basic ")
                        .to_owned(),
                )
            }
            Who::NotText => {
                request = request.header(
                    "authorization",
                    HeaderValue::from_bytes(b"Bearer cst_\xff\xfe").unwrap(),
                );
                None
            }
            Who::Revoked => {
                request = request.bearer_auth(&revoked.secret);
                Some(revoked.secret.clone())
            }
            Who::Role(role) => {
                request = request.bearer_auth(server.token(*role));
                Some(server.token(*role).to_owned())
            }
        };
        if *method == Method::POST {
            request = request
                .header("content-type", "application/json")
                .body(event.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        // A stream that was let in never ends: its status and headers are
        // the whole answer to check.
        let body = if route == STREAM && status == 200 {
            String::new()
        } else {
            response.text().await.unwrap()
        };
        let answer = Answer {
            status,
            headers,
            body,
        };
        let row = format!("{who:?} {method} {path}");
        if answer.status != *expected {
            failures.push(format!("{row}: expected {expected}, got {answer:?}"));
            continue;
        }
        if let Some(secret) = secret.filter(|secret| secret.len() > 4)
            && answer.body.contains(&secret)
        {
            failures.push(format!("{row}: the answer repeats the token: {answer:?}"));
        }
        let code = match expected {
            401 => Some("unauthenticated"),
            403 => Some("forbidden"),
            _ => None,
        };
        if let Some(code) = code
            && answer.json()["error"]["code"] != code
        {
            failures.push(format!("{row}: expected error code {code}, got {answer:?}"));
        }
        let challenge = answer.header("www-authenticate");
        if (*expected == 401) != (challenge == Some("Bearer")) {
            failures.push(format!("{row}: WWW-Authenticate is {challenge:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Submitting events: body shapes, ids, idempotence.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_arrays_objects_or_ndjson_optionally_gzipped() {
    let server = Server::start().await;
    let m = minimal;
    // (what, content type, gzip?, body, the ids answered)
    let table: Vec<(&str, &str, bool, String, Vec<String>)> = vec![
        (
            "array",
            "application/json",
            false,
            json!([m(1), m(2), m(3)]).to_string(),
            vec![id(1), id(2), id(3)],
        ),
        (
            "array, any content type",
            "application/x-ndjson",
            false,
            format!("\n  {}", json!([m(4), m(5)])),
            vec![id(4), id(5)],
        ),
        (
            "one object",
            "application/json",
            false,
            serde_json::to_string_pretty(&m(6)).unwrap(),
            vec![id(6)],
        ),
        (
            "one object, with parameters",
            "Application/JSON; charset=utf-8",
            false,
            m(7).to_string(),
            vec![id(7)],
        ),
        (
            "ndjson",
            "application/x-ndjson",
            false,
            format!("{}\n\n{}\n", m(8), m(9)),
            vec![id(8), id(9)],
        ),
        (
            "ndjson, crlf, no final newline",
            "text/plain",
            false,
            format!("{}\r\n{}", m(10), m(11)),
            vec![id(10), id(11)],
        ),
        (
            "gzip ndjson",
            "application/x-ndjson",
            true,
            ndjson(&[m(12), m(13), m(14)]),
            vec![id(12), id(13), id(14)],
        ),
        (
            "gzip array",
            "application/json",
            true,
            json!([m(15)]).to_string(),
            vec![id(15)],
        ),
    ];
    let mut expected_ids = Vec::new();
    for (what, content_type, gzipped, body, ids) in table {
        let mut request = server
            .request(Method::POST, "/v1/events")
            .bearer_auth(server.token(Role::Ingest))
            .header("content-type", content_type);
        request = if gzipped {
            request
                .header("content-encoding", "gzip")
                .body(gzip(body.as_bytes()))
        } else {
            request.body(body)
        };
        let answer = send(request).await;
        assert_eq!(answer.status, 200, "{what}: {answer:?}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        assert_eq!(
            answer.json(),
            json!({"accepted": ids.len(), "rejected": 0, "ids": ids}),
            "{what}"
        );
        expected_ids.extend(ids);
    }

    // Without an id, each event gets a fresh UUIDv7, in item order.
    let fresh = without(minimal(0), "id");
    let answer = server
        .post_events("application/x-ndjson", ndjson(&[fresh.clone(), fresh]))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let ids: Vec<uuid::Uuid> = answer.json()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| id.get_version_num() == 7), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    expected_ids.extend(ids.iter().map(ToString::to_string));

    // Every answered id is stored, and nothing else.
    let mut listed = server.listed_ids(&[("order", "oldest")]).await;
    listed.sort();
    expected_ids.sort();
    assert_eq!(listed, expected_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_ids_make_resubmission_idempotent() {
    let server = Server::start().await;
    let original = server.ingest(&[minimal(1), minimal(2)]).await;
    assert_eq!(original, [id(1), id(2)]);
    let first = server
        .get(&format!("/v1/events/{}", id(1)), &[])
        .await
        .json();

    // Resent as an array, as NDJSON, gzipped, and twice within one batch;
    // and once more with other content under the same id.
    let changed = with(minimal(1), "/action", json!("changed"));
    let resends: Vec<(&str, Vec<u8>, Vec<String>)> = vec![
        (
            "application/json",
            json!([minimal(1), minimal(2)]).to_string().into_bytes(),
            vec![id(1), id(2)],
        ),
        (
            "application/x-ndjson",
            ndjson(&[minimal(2), minimal(1)]).into_bytes(),
            vec![id(2), id(1)],
        ),
        (
            "application/json",
            json!([minimal(1), minimal(1), minimal(3)])
                .to_string()
                .into_bytes(),
            vec![id(1), id(1), id(3)],
        ),
        (
            "application/json",
            changed.to_string().into_bytes(),
            vec![id(1)],
        ),
    ];
    for (content_type, body, ids) in resends {
        let answer = server.post_events(content_type, body).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["ids"], json!(ids), "{answer:?}");
    }

    let mut listed = server.listed_ids(&[]).await;
    listed.sort();
    assert_eq!(listed, [id(1), id(2), id(3)], "each id is stored once");
    // The first submission stays, received_at included.
    assert_eq!(
        server
            .get(&format!("/v1/events/{}", id(1)), &[])
            .await
            .json(),
        first
    );
}

// ---------------------------------------------------------------------------
// Refused items and refused bodies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_cost_only_themselves() {
    let server = Server::start().await;
    let empty_actor = with(minimal(2), "/actor/current/id", json!(""));
    let bad_kind = with(minimal(3), "/kind", json!("bogus"));
    let agent_root = with(
        minimal(6),
        "/actor/root",
        json!({"type": "agent", "id": "planner"}),
    );
    let no_actor = without(minimal(7), "actor");
    let unknown_kind_message = "unknown variant `bogus`, expected one of `tool_call`, `mcp_request`, \
                                `data_access`, `agent_spawn`, `credential_use`, `authentication`, \
                                `privilege_change`, `other`";
    // (what, content type, body, status, answer)
    let table: Vec<(&str, &str, String, u16, Value)> = vec![
        (
            "array with two bad items",
            "application/json",
            json!([minimal(1), empty_actor, bad_kind, minimal(4)]).to_string(),
            200,
            json!({
                "accepted": 2,
                "rejected": 2,
                "ids": [id(1), null, null, id(4)],
                "errors": [
                    {"index": 1, "path": "actor.current.id", "message": "must not be empty"},
                    {"index": 2, "path": "kind", "message": unknown_kind_message},
                ],
            }),
        ),
        (
            "ndjson with a blank line, a syntax error and a bad chain",
            "application/x-ndjson",
            format!(
                "{}\n\n{{\"kind\": \n{}\n{}\n",
                minimal(5),
                agent_root,
                minimal(8)
            ),
            200,
            json!({
                "accepted": 2,
                "rejected": 2,
                "ids": [id(5), null, null, id(8)],
                "errors": [
                    {"index": 1, "line": 3, "path": "", "message": "truncated JSON: EOF while parsing a value at line 1 column 9"},
                    {"index": 2, "line": 4, "path": "actor.root.type", "message": "the root of a chain is a human or a service, not \"agent\""},
                ],
            }),
        ),
        (
            "array with only bad items",
            "application/json",
            json!([bad_kind, no_actor]).to_string(),
            422,
            json!({
                "error": {"code": "all_rejected", "message": "no event in the batch was accepted"},
                "rejected": [
                    {"index": 0, "path": "kind", "message": unknown_kind_message},
                    {"index": 1, "path": "", "message": "missing field `actor`"},
                ],
            }),
        ),
        (
            "ndjson with only bad items",
            "application/x-ndjson",
            format!("\n{empty_actor}\n42\n"),
            422,
            json!({
                "error": {"code": "all_rejected", "message": "no event in the batch was accepted"},
                "rejected": [
                    {"index": 0, "line": 2, "path": "actor.current.id", "message": "must not be empty"},
                    {"index": 1, "line": 3, "path": "", "message": "an event is a JSON object"},
                ],
            }),
        ),
        (
            "one bad object",
            "application/json",
            agent_root.to_string(),
            422,
            json!({
                "error": {"code": "all_rejected", "message": "no event in the batch was accepted"},
                "rejected": [
                    {"index": 0, "path": "actor.root.type", "message": "the root of a chain is a human or a service, not \"agent\""},
                ],
            }),
        ),
    ];
    for (what, content_type, body, status, expected) in table {
        let answer = server.post_events(content_type, body).await;
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        assert_eq!(answer.json(), expected, "{what}");
    }
    let mut listed = server.listed_ids(&[]).await;
    listed.sort();
    assert_eq!(listed, [id(1), id(4), id(5), id(8)]);
}

/// How a body is refused as a whole.
#[derive(Debug, Clone, Copy)]
struct Refused {
    content_type: &'static str,
    encoding: Option<&'static str>,
    status: u16,
    code: &'static str,
    /// The start of the error message.
    message: &'static str,
}

const NOT_AN_ARRAY: Refused = Refused {
    content_type: "application/json",
    encoding: None,
    status: 400,
    code: "bad_request",
    message: "the body is not a valid JSON array",
};

const NO_EVENTS: Refused = Refused {
    message: "the body holds no events",
    ..NOT_AN_ARRAY
};

const UNSUPPORTED: Refused = Refused {
    status: 415,
    code: "unsupported",
    ..NOT_AN_ARRAY
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_bodies_are_refused_whole() {
    let server = Server::start().await;
    let event = minimal(1).to_string();
    let table: Vec<(&str, Vec<u8>, Refused)> = vec![
        (
            "truncated array",
            format!("[{event}, ").into_bytes(),
            NOT_AN_ARRAY,
        ),
        ("array of garbage", b"[nope]".to_vec(), NOT_AN_ARRAY),
        ("empty body", Vec::new(), NO_EVENTS),
        (
            "blank ndjson",
            b"\n  \r\n\n".to_vec(),
            Refused {
                content_type: "application/x-ndjson",
                ..NO_EVENTS
            },
        ),
        ("empty array", b"[]".to_vec(), NO_EVENTS),
        (
            "empty gzip",
            gzip(b""),
            Refused {
                encoding: Some("gzip"),
                ..NO_EVENTS
            },
        ),
        (
            "corrupt gzip",
            b"\x1f\x8b\x08\x00garbage".to_vec(),
            Refused {
                encoding: Some("gzip"),
                message: "the gzip body cannot be decompressed",
                ..NOT_AN_ARRAY
            },
        ),
        (
            "brotli",
            event.clone().into_bytes(),
            Refused {
                encoding: Some("br"),
                message: "content encoding \"br\" is not supported, send identity or gzip",
                ..UNSUPPORTED
            },
        ),
        (
            "gzip twice",
            gzip(&gzip(event.as_bytes())),
            Refused {
                encoding: Some("gzip, gzip"),
                message: "content encoding \"gzip, gzip\" is not supported",
                ..UNSUPPORTED
            },
        ),
    ];
    for (what, body, refused) in table {
        let Refused {
            content_type,
            encoding,
            status,
            code,
            message,
        } = refused;
        let mut request = server
            .request(Method::POST, "/v1/events")
            .bearer_auth(server.token(Role::Ingest))
            .header("content-type", content_type);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        let answer = send(request.body(body)).await;
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        let error = &answer.json()["error"];
        assert_eq!(error["code"], code, "{what}: {answer:?}");
        assert!(
            error["message"].as_str().unwrap().starts_with(message),
            "{what}: {answer:?}"
        );
    }
    assert_eq!(server.store.count().unwrap(), 0);
}

// ---------------------------------------------------------------------------
// Size limits.

const MAX_BODY: usize = 64 << 10;
const MAX_DECOMPRESSED: usize = 256 << 10;

/// How a body goes over the wire.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// With `Content-Length`.
    Length,
    /// With `Transfer-Encoding: chunked`, no length announced.
    Chunked,
    /// Gzip-compressed, with `Content-Length`.
    Gzip,
}

/// A body that sends `bytes` in 4 KiB chunks and then waits forever.
///
/// A server refusing a body closes the connection without reading the rest
/// of it; a client still writing then fails with a broken pipe (or a reset)
/// instead of reading the answer, depending on timing. A client that has
/// nothing left to write reads the answer every time.
fn stalled(bytes: &[u8]) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(4096).map(|chunk| Ok(chunk.to_vec())).collect();
    reqwest::Body::wrap_stream(
        futures_util::stream::iter(chunks).chain(futures_util::stream::pending()),
    )
}

/// An NDJSON body of one valid event padded with blanks to exactly `size`
/// bytes.
fn padded(n: usize, size: usize) -> Vec<u8> {
    let mut body = format!("{}\n", minimal(n)).into_bytes();
    assert!(body.len() < size);
    body.resize(size - 1, b' ');
    body.push(b'\n');
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_bounded_before_and_after_decompression() {
    let limits = Limits {
        max_body_bytes: MAX_BODY,
        max_decompressed_bytes: MAX_DECOMPRESSED,
    };
    let server = Server::start_with(store_options(), limits).await;
    let too_large = |what: &str, limit: usize| {
        let message = format!("{what} exceeds the limit of {limit} bytes");
        json!({"error": {"code": "too_large", "message": message}})
    };
    // (framing, body size before compression, expected status, expected error)
    let table = [
        (Framing::Length, MAX_BODY, 200, None),
        (
            Framing::Length,
            MAX_BODY + 1,
            413,
            Some(too_large("the request body", MAX_BODY)),
        ),
        (
            Framing::Length,
            1 << 30,
            413,
            Some(too_large("the request body", MAX_BODY)),
        ),
        (Framing::Chunked, MAX_BODY, 200, None),
        (
            Framing::Chunked,
            MAX_BODY + 1,
            413,
            Some(too_large("the request body", MAX_BODY)),
        ),
        (Framing::Gzip, MAX_DECOMPRESSED, 200, None),
        (
            Framing::Gzip,
            MAX_DECOMPRESSED + 1,
            413,
            Some(too_large("the decompressed request body", MAX_DECOMPRESSED)),
        ),
    ];
    let mut accepted = Vec::new();
    for (n, (framing, size, status, error)) in table.into_iter().enumerate() {
        let body = padded(n, size.min(4 * MAX_DECOMPRESSED));
        let request = server
            .request(Method::POST, "/v1/events")
            .bearer_auth(server.token(Role::Ingest))
            .header("content-type", "application/x-ndjson");
        let request = match (framing, status) {
            (Framing::Length, 200) => request.body(body),
            // Only the announced length is over the limit: nothing of the
            // body is sent, the server must not wait for it.
            (Framing::Length, _) => request.header("content-length", size).body(stalled(&[])),
            (Framing::Chunked, 200) => {
                request.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    body.chunks(4096)
                        .map(|chunk| Ok::<_, std::io::Error>(chunk.to_vec()))
                        .collect::<Vec<_>>(),
                )))
            }
            // One byte over the limit, sent, and then nothing more.
            (Framing::Chunked, _) => request.body(stalled(&body[..MAX_BODY + 1])),
            (Framing::Gzip, _) => {
                let compressed = gzip(&body);
                assert!(
                    compressed.len() < MAX_BODY / 8,
                    "the compressed body is small"
                );
                request.header("content-encoding", "gzip").body(compressed)
            }
        };
        let answer = send(request).await;
        let row = format!("{framing:?} body of {size} bytes");
        assert_eq!(answer.status, status, "{row}: {answer:?}");
        match error {
            Some(error) => assert_eq!(answer.json(), error, "{row}"),
            None => {
                assert_eq!(answer.json()["ids"], json!([id(n)]), "{row}");
                accepted.push(id(n));
            }
        }
    }
    let mut listed = server.listed_ids(&[]).await;
    listed.sort();
    assert_eq!(listed, accepted);
}

// ---------------------------------------------------------------------------
// Back-pressure.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_answered_429_and_stores_nothing_of_the_batch() {
    let options = StoreOptions {
        queue_capacity: 50,
        ..store_options()
    };
    let server = Server::start_with(options, Limits::default()).await;
    let first: Vec<Value> = (0..40).map(minimal).collect();
    let refused: Vec<Value> = (100..140).map(minimal).collect();

    // Another connection holds the database's write lock, so the writer
    // blocks on its first transaction and the first batch stays queued.
    let blocker = rusqlite::Connection::open(server.store.path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let pending = tokio::spawn({
        let request = server
            .request(Method::POST, "/v1/events")
            .bearer_auth(server.token(Role::Ingest))
            .header("content-type", "application/json")
            .body(Value::from(first.clone()).to_string());
        async move { send(request).await }
    });
    wait_until("the first batch to be queued", || {
        server.store.stats().queued_events == 40
    })
    .await;
    let health = server.get("/healthz", &[]).await;
    assert_eq!(health.json(), json!({"status": "ok", "queued_events": 40}));

    // 40 queued + 40 more is over the capacity of 50.
    let answer = server
        .post_events("application/json", Value::from(refused.clone()).to_string())
        .await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("1"));
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "busy", "{answer:?}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("the ingest queue is full, retry after 1 s"),
        "{message}"
    );
    // So are spans sent to the OTLP receiver.
    let spans: Vec<Value> = (0..20)
        .map(|n| json!({"traceId": "5b8efff798038103d269b633813fc60c", "spanId": format!("{n:016x}"), "name": "execute_tool grep"}))
        .collect();
    let answer = send(
        server
            .request(Method::POST, "/v1/traces")
            .bearer_auth(server.token(Role::Ingest))
            .header("content-type", "application/json")
            .body(json!({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).to_string()),
    )
    .await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(
        !pending.is_finished(),
        "the first batch was acknowledged before it was durable"
    );

    // Let the writer go: the first batch becomes durable and is answered.
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let answer = within("the first batch's answer", pending).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let first_ids: Vec<String> = (0..40).map(id).collect();
    assert_eq!(answer.json()["ids"], json!(first_ids));

    let mut listed = server.listed_ids(&[]).await;
    listed.sort();
    assert_eq!(listed, first_ids, "nothing of the refused batch is stored");
    let lost = server.get(&format!("/v1/events/{}", id(100)), &[]).await;
    assert_eq!(lost.status, 404);

    let metrics = server.metrics().await;
    // The events' batch and the spans' request.
    assert_eq!(metrics["custody_ingest_batches_throttled_total"], 2.0);
    assert_eq!(metrics["custody_ingest_events_accepted_total"], 40.0);

    // Once there is room again, the same batch goes through.
    assert_eq!(server.ingest(&refused).await.len(), 40);
    assert_eq!(server.store.count().unwrap(), 80);
}

// ---------------------------------------------------------------------------
// Queries.

const KINDS: [&str; 5] = [
    "tool_call",
    "data_access",
    "mcp_request",
    "authentication",
    "privilege_change",
];

/// One synthetic event of the query tests: what the filters look at.
#[derive(Debug, Clone)]
struct Spec {
    n: usize,
    kind: &'static str,
    /// Seconds after 2026-11-25T10:00:00Z.
    second: usize,
    actor: String,
    root: Option<&'static str>,
    run: Option<String>,
    tool: Option<String>,
    server: Option<String>,
    resource: Option<String>,
    system: Option<&'static str>,
    principal: Option<String>,
}

impl Spec {
    /// The `n`th of 50 events. They are posted in `n` order, so their `seq`
    /// follows `n`, while their observation times are shuffled against it
    /// and each shared by five events.
    fn new(n: usize) -> Spec {
        let kind = KINDS[n % KINDS.len()];
        Spec {
            n,
            kind,
            second: (n * 7) % 50 / 5,
            actor: format!("agent-{}", n % 3),
            root: match n % 4 {
                0 => None,
                2 => Some("alice@example.com"),
                _ => Some("bob@example.com"),
            },
            run: (n % 6 != 5).then(|| format!("run-{}", n % 4)),
            tool: (kind == "tool_call").then(|| format!("tool-{}", n % 2)),
            server: matches!(kind, "tool_call" | "mcp_request")
                .then(|| format!("server-{}", n % 3)),
            resource: matches!(kind, "data_access" | "mcp_request")
                .then(|| format!("res-{}", n % 4)),
            system: n.is_multiple_of(2).then_some("system-a"),
            // The identity acted on shares its id with other events' actors:
            // a target filter must not match actors, nor an actor filter
            // targets.
            principal: (kind == "privilege_change").then(|| format!("agent-{}", n % 2)),
        }
    }

    fn observed_at(&self) -> String {
        format!("2026-11-25T10:00:{:02}Z", self.second)
    }

    fn targets(&self) -> Vec<&str> {
        [&self.tool, &self.server, &self.resource, &self.principal]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .chain(self.system)
            .collect()
    }

    fn event(&self) -> Value {
        let mut current = json!({"type": "agent", "id": self.actor});
        if let Some(run) = &self.run {
            current["run_id"] = json!(run);
        }
        let mut actor = json!({"current": current});
        if let Some(root) = self.root {
            actor["root"] = json!({"type": "human", "id": root});
        }
        let mut target = serde_json::Map::new();
        for (field, value) in [
            ("tool", &self.tool),
            ("server", &self.server),
            ("resource", &self.resource),
            ("system", &self.system.map(str::to_owned)),
        ] {
            if let Some(value) = value {
                target.insert(field.into(), json!(value));
            }
        }
        if let Some(principal) = &self.principal {
            target.insert(
                "principal".into(),
                json!({"type": "agent", "id": principal}),
            );
        }
        json!({
            "id": id(self.n),
            "kind": self.kind,
            "action": "act",
            "observed_at": self.observed_at(),
            "source": {"type": "gateway"},
            "actor": actor,
            "target": target,
            "outcome": {"status": "success"},
        })
    }
}

/// The 50 events of the query tests, stored in `n` order.
async fn with_specs() -> (Server, Vec<Spec>) {
    let server = Server::start().await;
    let specs: Vec<Spec> = (0..50).map(Spec::new).collect();
    let events: Vec<Value> = specs.iter().map(Spec::event).collect();
    server.ingest(&events).await;
    (server, specs)
}

/// Ids of the specs that `keep`, newest first: latest observation first,
/// ties broken by the later arrival.
fn newest_first(specs: &[Spec], keep: impl Fn(&Spec) -> bool) -> Vec<String> {
    let mut kept: Vec<&Spec> = specs.iter().filter(|spec| keep(spec)).collect();
    kept.sort_by_key(|spec| std::cmp::Reverse((spec.second, spec.n)));
    kept.iter().map(|spec| id(spec.n)).collect()
}

/// Checks that records are in `(observed_at, seq)` order, descending when
/// `newest` is set.
fn check_order(records: &[Value], newest: bool) {
    let keys: Vec<(DateTime<Utc>, i64)> = records
        .iter()
        .map(|record| {
            (
                record["event"]["observed_at"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
                record["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    for pair in keys.windows(2) {
        let in_order = if newest {
            pair[0] > pair[1]
        } else {
            pair[0] < pair[1]
        };
        assert!(in_order, "out of order: {pair:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_and_pages_walk_every_match_once_in_order() {
    let (server, specs) = with_specs().await;
    type Keep = fn(&Spec) -> bool;
    let table: &[(Params, Keep)] = &[
        (&[], |_| true),
        (&[("kind", "data_access")], |s| s.kind == "data_access"),
        (&[("kind", "tool_call,privilege_change")], |s| {
            matches!(s.kind, "tool_call" | "privilege_change")
        }),
        (&[("kind", " mcp_request , authentication,")], |s| {
            matches!(s.kind, "mcp_request" | "authentication")
        }),
        (&[("actor", "agent-1")], |s| s.actor == "agent-1"),
        (&[("root", "alice@example.com")], |s| {
            s.root == Some("alice@example.com")
        }),
        (&[("run", "run-2")], |s| s.run.as_deref() == Some("run-2")),
        (&[("target", "tool-1")], |s| {
            s.tool.as_deref() == Some("tool-1")
        }),
        (&[("target", "server-2")], |s| {
            s.server.as_deref() == Some("server-2")
        }),
        (&[("target", "res-3")], |s| {
            s.resource.as_deref() == Some("res-3")
        }),
        (&[("target", "system-a")], |s| s.system == Some("system-a")),
        (&[("target", "agent-1")], |s| {
            s.principal.as_deref() == Some("agent-1")
        }),
        (
            &[
                ("since", "2026-11-25T10:00:03Z"),
                ("until", "2026-11-25T10:00:07Z"),
            ],
            |s| (3..7).contains(&s.second),
        ),
        (&[("since", "2026-11-25T11:00:04.5+01:00")], |s| {
            s.second >= 5
        }),
        (&[("until", "2026-11-25T10:00:02Z")], |s| s.second < 2),
        (
            &[
                ("kind", "tool_call,mcp_request"),
                ("root", "bob@example.com"),
                ("since", "2026-11-25T10:00:02Z"),
            ],
            |s| {
                matches!(s.kind, "tool_call" | "mcp_request")
                    && s.root == Some("bob@example.com")
                    && s.second >= 2
            },
        ),
        (
            &[
                ("actor", "agent-0"),
                ("target", "system-a"),
                ("until", "2026-11-25T10:00:08Z"),
            ],
            |s| s.actor == "agent-0" && s.targets().contains(&"system-a") && s.second < 8,
        ),
        (
            &[
                ("run", "run-1"),
                ("target", "server-1"),
                ("kind", "tool_call"),
            ],
            |s| {
                s.run.as_deref() == Some("run-1")
                    && s.server.as_deref() == Some("server-1")
                    && s.kind == "tool_call"
            },
        ),
        // Nothing matches.
        (&[("actor", "nobody")], |_| false),
        (&[("kind", "other")], |_| false),
        (&[("kind", "data_access"), ("target", "tool-1")], |_| false),
        (&[("since", "2026-11-25T10:00:10Z")], |_| false),
    ];
    for (query, keep) in table {
        let expected = newest_first(&specs, keep);
        assert!(
            query.is_empty() || expected.len() < specs.len(),
            "{query:?} filters nothing out"
        );
        for (order, limit) in [("newest", "7"), ("oldest", "7"), ("newest", "1000")] {
            let mut query = query.to_vec();
            query.extend([("order", order), ("limit", limit)]);
            let records = server.walk("/v1/events", &query).await;
            check_order(&records, order == "newest");
            let ids: Vec<&str> = records
                .iter()
                .map(|record| record["event"]["id"].as_str().unwrap())
                .collect();
            let mut expected = expected.clone();
            if order == "oldest" {
                expected.reverse();
            }
            assert_eq!(ids, expected, "{query:?}");
        }
    }

    // Without `order` and `limit`: newest first, 100 a page.
    let page = server.get("/v1/events", &[]).await.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 50);
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(
        page["events"][0]["event"]["id"],
        json!(newest_first(&specs, |_| true)[0])
    );
    let page = server.get("/v1/events", &[("limit", "50")]).await.json();
    assert_eq!(
        page["next_cursor"],
        Value::Null,
        "a page that ends exactly at the last event is the last"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_may_be_ages_before_now() {
    let server = Server::start().await;
    let now = Utc::now();
    let ages = [
        ("3d", chrono::Duration::days(3)),
        ("2h", chrono::Duration::hours(2)),
        ("10m", chrono::Duration::minutes(10)),
        ("10s", chrono::Duration::seconds(10)),
        ("-1h", chrono::Duration::hours(-1)),
    ];
    let events: Vec<Value> = ages
        .iter()
        .enumerate()
        .map(|(n, (_, age))| {
            let observed_at = (now - *age).to_rfc3339_opts(SecondsFormat::Millis, true);
            with(minimal(n), "/observed_at", json!(observed_at))
        })
        .collect();
    server.ingest(&events).await;
    let label = |id: &str| ages[events.iter().position(|event| event["id"] == id).unwrap()].0;
    let table: &[(Params, &[&str])] = &[
        (&[("since", "1h")], &["-1h", "10s", "10m"]),
        (&[("since", "300s")], &["-1h", "10s"]),
        (&[("since", "4d"), ("until", "1h")], &["2h", "3d"]),
        (&[("until", "30s")], &["10m", "2h", "3d"]),
        (
            &[("since", "7d"), ("until", "1m"), ("order", "oldest")],
            &["3d", "2h", "10m"],
        ),
        (&[("since", "90m"), ("until", "5m")], &["10m"]),
    ];
    for (query, expected) in table {
        let listed = server.listed_ids(query).await;
        let labels: Vec<&str> = listed.iter().map(|id| label(id)).collect();
        assert_eq!(labels, *expected, "{query:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_survives_events_arriving_during_the_walk() {
    let (server, specs) = with_specs().await;
    let late = |n: usize, observed_at: &str| with(minimal(n), "/observed_at", json!(observed_at));
    for order in ["newest", "oldest"] {
        let query = [("order", order), ("limit", "7")];
        let mut records = Vec::new();
        let first = server.get("/v1/events", &query).await.json();
        records.extend(first["events"].as_array().unwrap().iter().cloned());
        let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();

        // Arrivals observed before, among and after the events already
        // stored, some at the same instant as the page's last event.
        let base = if order == "newest" { 1000 } else { 2000 };
        let boundary = records.last().unwrap()["event"]["observed_at"]
            .as_str()
            .unwrap()
            .to_owned();
        server
            .ingest(&[
                late(base, "2026-11-25T09:00:00Z"),
                late(base + 1, "2026-11-25T10:00:04Z"),
                late(base + 2, &boundary),
                late(base + 3, "2026-11-25T11:00:00Z"),
            ])
            .await;

        loop {
            let page = server
                .get("/v1/events", &[query[0], query[1], ("cursor", &cursor)])
                .await
                .json();
            records.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => break,
            }
        }
        check_order(&records, order == "newest");
        let ids: Vec<&str> = records
            .iter()
            .map(|record| record["event"]["id"].as_str().unwrap())
            .collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{order}: an event came twice");
        for spec in &specs {
            assert!(
                unique.contains(id(spec.n).as_str()),
                "{order}: event {} was lost",
                spec.n
            );
        }
        // Keyset pagination: an arrival is met when it sorts after the
        // cursor, and never when it sorts before.
        let (met, missed) = if order == "newest" {
            (base, base + 3)
        } else {
            (base + 3, base)
        };
        assert!(
            unique.contains(id(met).as_str()),
            "{order}: the arrival after the cursor was not listed"
        );
        assert!(
            !unique.contains(id(missed).as_str()),
            "{order}: the arrival before the cursor was listed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_refused_naming_them() {
    let server = Server::start().await;
    let table: &[(Params, &str)] = &[
        (&[("kind", "bogus")], "kind: unknown event kind \"bogus\""),
        (
            &[("kind", "tool_call,Tool_Call")],
            "kind: unknown event kind \"Tool_Call\"",
        ),
        (&[("limit", "0")], "limit: 0 is not between 1 and 1000"),
        (
            &[("limit", "1001")],
            "limit: 1001 is not between 1 and 1000",
        ),
        (
            &[("order", "up")],
            "order: \"up\" is neither \"newest\" nor \"oldest\"",
        ),
        (
            &[("cursor", "!!")],
            "cursor: invalid cursor `!!`: not base64url",
        ),
        (
            &[("cursor", "djI6MToy")],
            "cursor: invalid cursor `djI6MToy`: not a version 1 cursor",
        ),
        (
            &[("since", "yesterday")],
            "since: \"yesterday\" is neither an RFC 3339 time nor an age",
        ),
        (
            &[("until", "5y")],
            "until: \"5y\" is neither an RFC 3339 time nor an age",
        ),
        (
            &[("since", "2026-11-25 10:00:00")],
            "since: \"2026-11-25 10:00:00\" is neither",
        ),
    ];
    for path in ["/v1/events", "/v1/export/ocsf"] {
        for (query, message) in table {
            let answer = server.get(path, query).await;
            assert_eq!(answer.status, 400, "{path} {query:?}: {answer:?}");
            let error = &answer.json()["error"];
            assert_eq!(error["code"], "bad_request", "{path} {query:?}");
            assert!(
                error["message"].as_str().unwrap().starts_with(message),
                "{path} {query:?}: {answer:?}"
            );
        }
    }
    // The stream checks the filters it takes in the same way.
    let answer = server.get("/v1/events/stream", &[("kind", "bogus")]).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("kind: "),
        "{answer:?}"
    );
}

/// Every error answer is JSON `{"error": {"code", "message"}}` (docs/api.md),
/// including refusals of the query string itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_that_do_not_parse_are_refused_as_json_errors() {
    let server = Server::start().await;
    let table: &[(&str, Params, &str)] = &[
        ("/v1/events", &[("unknown", "1")], "unknown"),
        ("/v1/events", &[("limit", "ten")], "limit"),
        ("/v1/events", &[("limit", "-1")], "limit"),
        ("/v1/export/ocsf", &[("kinds", "tool_call")], "kinds"),
        ("/v1/events/stream", &[("since", "1h")], "since"),
    ];
    let mut failures = Vec::new();
    for (path, query, parameter) in table {
        let answer = server.get(path, query).await;
        let error = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .map(|body| body["error"].clone());
        let named = error
            .as_ref()
            .and_then(|error| error["message"].as_str())
            .is_some_and(|m| m.contains(parameter));
        if answer.status != 400
            || error.as_ref().map(|error| &error["code"]) != Some(&json!("bad_request"))
            || !named
        {
            failures.push(format!("{path} {query:?}: {answer:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "not JSON errors naming the parameter:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// One event.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_found_by_its_id() {
    let server = Server::start().await;
    let examples = examples();
    let before = Utc::now();
    server.ingest(&examples).await;
    let after = Utc::now();
    for posted in &examples {
        let answer = server
            .get(
                &format!("/v1/events/{}", posted["id"].as_str().unwrap()),
                &[],
            )
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let record = answer.json();
        // Custody stamps its own receipt time over the client's.
        let received_at: DateTime<Utc> = record["event"]["received_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            before <= received_at && received_at <= after,
            "received_at {received_at}"
        );
        let expected = with(
            posted.clone(),
            "/received_at",
            record["event"]["received_at"].clone(),
        );
        assert_eq!(record["event"], expected, "{}", posted["kind"]);
        assert_eq!(record["decision"], json!({"verdict": "allow"}));
        assert!(record["seq"].as_i64().unwrap() > 0);
        assert_eq!(record.as_object().unwrap().len(), 3, "{record}");
    }

    // (id, status, error code)
    let table = [
        ("0193a5b0-0000-7000-8000-000000000000", 404, "not_found"),
        ("00000000-0000-0000-0000-000000000000", 404, "not_found"),
        ("not-a-uuid", 400, "bad_request"),
        ("01a2122b-fb59-736f-8580-28d6099950d", 400, "bad_request"),
    ];
    for (id, status, code) in table {
        let answer = server.get(&format!("/v1/events/{id}"), &[]).await;
        assert_eq!(answer.status, status, "{id}: {answer:?}");
        let error = &answer.json()["error"];
        assert_eq!(error["code"], code, "{id}: {answer:?}");
        assert!(
            error["message"].as_str().unwrap().contains(id),
            "{id}: {answer:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// OCSF export.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_exports_as_a_complete_ocsf_event() {
    let server = Server::start().await;
    let examples = examples();
    server.ingest(&examples).await;

    let page = server.get("/v1/export/ocsf", &[]).await.json();
    assert_eq!(page["ocsf_version"], custody_event::ocsf::OCSF_VERSION);
    assert_eq!(page["next_cursor"], Value::Null);
    let exported = page["events"].as_array().unwrap();
    assert_eq!(exported.len(), examples.len());
    let kinds: BTreeMap<&str, &str> = examples
        .iter()
        .map(|event| {
            (
                event["id"].as_str().unwrap(),
                event["kind"].as_str().unwrap(),
            )
        })
        .collect();
    for ocsf in exported {
        let uid = ocsf["metadata"]["uid"].as_str().unwrap();
        let kind: custody_event::EventKind = kinds[uid].parse().unwrap();
        let class_uid = custody_event::ocsf::class_uid(kind);
        assert_eq!(ocsf["class_uid"], class_uid, "{kind}");
        for field in custody_event::ocsf::required_fields(class_uid) {
            assert!(
                !ocsf[field].is_null(),
                "{kind}: required {field} is missing from {ocsf:#}"
            );
        }
        let activity_id = ocsf["activity_id"].as_u64().unwrap();
        assert_eq!(
            ocsf["type_uid"].as_u64().unwrap(),
            u64::from(class_uid) * 100 + activity_id,
            "{kind}"
        );
        assert_eq!(
            ocsf["category_uid"].as_u64().unwrap(),
            u64::from(class_uid / 1000),
            "{kind}"
        );
    }

    // Newest first, like the listing, and paginated the same way.
    let listed = server.listed_ids(&[]).await;
    let uids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|ocsf| ocsf["metadata"]["uid"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(uids(exported), listed);
    assert_eq!(
        uids(&server.walk("/v1/export/ocsf", &[("limit", "3")]).await),
        listed
    );
    let mut oldest = listed.clone();
    oldest.reverse();
    assert_eq!(
        uids(
            &server
                .walk("/v1/export/ocsf", &[("limit", "3"), ("order", "oldest")])
                .await
        ),
        oldest
    );

    // Filters apply too.
    let only = server
        .get("/v1/export/ocsf", &[("kind", "data_access")])
        .await
        .json();
    assert_eq!(
        uids(only["events"].as_array().unwrap()),
        [example("data_access")["id"].as_str().unwrap()]
    );
    assert_eq!(only["events"][0]["class_uid"], 6005);
}

// ---------------------------------------------------------------------------
// Live stream.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_carries_durable_events_that_pass_its_filter() {
    let server = Server::start().await;
    let mut everything = server.stream(&[]).await;
    let mut data_access = server.stream(&[("kind", "data_access")]).await;
    let mut by_target = server.stream(&[("target", "github-mcp")]).await;

    let posted = [
        example("tool_call"),
        example("data_access"),
        example("mcp_request"),
    ];
    for event in &posted {
        server.ingest(std::slice::from_ref(event)).await;
    }

    let check = |message: common::SseMessage, expected: &Value| {
        assert_eq!(message.event, "event", "{message:?}");
        let record: Value = serde_json::from_str(&message.data).unwrap();
        let stamped = with(
            expected.clone(),
            "/received_at",
            record["event"]["received_at"].clone(),
        );
        assert_eq!(record["event"], stamped);
        assert_eq!(record["decision"], json!({"verdict": "allow"}));
        assert_eq!(
            message.id,
            Some(record["seq"].to_string()),
            "the message id is the seq"
        );
    };
    for expected in &posted {
        check(everything.next().await, expected);
    }
    // The first message a filtered stream gets is the first match: the
    // events before it were skipped.
    check(data_access.next().await, &posted[1]);
    check(by_target.next().await, &posted[0]);
    check(by_target.next().await, &posted[2]);
}

/// `custody serve` stops on SIGTERM by resolving the shutdown future; a
/// `custody tail` connected at that moment must not keep it alive forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_up_by_a_live_stream() {
    let server = Server::start().await;
    let stream = server.stream(&[]).await;
    let stopped = server.stop(Duration::from_secs(2)).await;
    drop(stream);
    assert!(
        stopped,
        "the server was still serving 2 s after shutdown because a stream was open"
    );
}

// ---------------------------------------------------------------------------
// Metrics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_ingest_did() {
    let server = Server::start().await;
    let bad = with(minimal(0), "/kind", json!("bogus"));
    // 2 accepted + 1 refused; 2 refused (422); 3 accepted, gzipped.
    let answer = server
        .post_events(
            "application/json",
            json!([minimal(1), bad, minimal(2)]).to_string(),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = server
        .post_events("application/json", json!([bad, bad]).to_string())
        .await;
    assert_eq!(answer.status, 422, "{answer:?}");
    let answer = send(
        server
            .request(Method::POST, "/v1/events")
            .bearer_auth(server.token(Role::Ingest))
            .header("content-encoding", "gzip")
            .body(gzip(
                ndjson(&[minimal(3), minimal(4), minimal(5)]).as_bytes(),
            )),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");

    let answer = server.get("/metrics", &[]).await;
    assert_eq!(
        answer.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
    for family in [
        "# TYPE custody_ingest_events_accepted counter",
        "# TYPE custody_ingest_events_rejected counter",
        "# TYPE custody_ingest_batches_throttled counter",
        "# TYPE custody_ingest_ack_latency_seconds histogram",
        "# TYPE custody_store_queued_events gauge",
    ] {
        assert!(
            answer.body.contains(family),
            "no {family:?} in\n{}",
            answer.body
        );
    }
    let metrics = common::parse_metrics(&answer.body);
    let expected = [
        ("custody_ingest_events_accepted_total", 5.0),
        ("custody_ingest_events_rejected_total", 3.0),
        ("custody_ingest_batches_throttled_total", 0.0),
        ("custody_ingest_ack_latency_seconds_count", 2.0),
        (
            "custody_ingest_ack_latency_seconds_bucket{le=\"+Inf\"}",
            2.0,
        ),
        ("custody_store_queued_events", 0.0),
        ("custody_store_committed_events", 5.0),
        ("custody_store_commits", 2.0),
        ("custody_store_failed_commits", 0.0),
        ("custody_otlp_spans_held", 0.0),
        ("custody_otlp_spans_parent_missing", 0.0),
    ];
    for (name, value) in expected {
        assert_eq!(
            metrics.get(name),
            Some(&value),
            "{name} in\n{}",
            answer.body
        );
    }
    // Each of the 5 events has at least its actor's posting, still in memory.
    assert!(
        metrics["custody_store_pending_postings"] >= 5.0,
        "{}",
        answer.body
    );
    let latency = metrics["custody_ingest_ack_latency_seconds_sum"];
    assert!(latency > 0.0 && latency < 10.0, "latency sum {latency}");
    let buckets: Vec<f64> = metrics
        .iter()
        .filter(|(name, _)| name.starts_with("custody_ingest_ack_latency_seconds_bucket"))
        .map(|(_, count)| *count)
        .collect();
    assert_eq!(buckets.len(), 12, "11 bounds and +Inf");
    assert!(buckets.iter().all(|count| *count <= 2.0));
}
