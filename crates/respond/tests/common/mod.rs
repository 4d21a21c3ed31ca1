//! A scripted HTTP peer on loopback: it keeps every request it receives
//! and answers each with the next scripted reply.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use custody_respond::{Config, Responders, RetryConfig};

/// A request as the peer saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: String,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

pub fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_owned(),
    }
}

impl Reply {
    pub fn with(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

pub struct Peer {
    pub url: String,
    script: Arc<Script>,
}

impl Peer {
    /// Starts a peer on 127.0.0.1 with a free port, answering in order
    /// with `replies` (then 599 "unscripted").
    pub async fn start(replies: Vec<Reply>) -> Peer {
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into()),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(answer).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Peer { url, script }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().unwrap().clone()
    }

    pub fn unanswered(&self) -> usize {
        self.script.replies.lock().unwrap().len()
    }
}

async fn answer(State(script): State<Arc<Script>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    script.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
        at: Instant::now(),
    });
    let next = script.replies.lock().unwrap().pop_front();
    let next = next.unwrap_or_else(|| reply(599, "unscripted"));
    let mut response = Response::builder().status(StatusCode::from_u16(next.status).unwrap());
    for (name, value) in next.headers {
        response = response.header(name, value);
    }
    response.body(Body::from(next.body)).unwrap()
}

/// Retries short enough for tests.
pub fn quick_retry() -> RetryConfig {
    RetryConfig {
        max_attempts: 3,
        initial_backoff_ms: 20,
        max_backoff_ms: 2_000,
        max_elapsed_ms: 5_000,
        request_timeout_ms: 5_000,
    }
}

/// Responders from a TOML `[responders]` section, with no environment.
pub fn responders(toml_text: &str) -> Responders {
    responders_with_env(toml_text, &[])
}

pub fn responders_with_env(toml_text: &str, env: &[(&str, &str)]) -> Responders {
    #[derive(serde::Deserialize)]
    struct File {
        responders: Config,
    }
    let mut file: File = toml::from_str(toml_text).unwrap();
    if file.responders.retry == RetryConfig::default() {
        file.responders.retry = quick_retry();
    }
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Responders::with_env(&file.responders, &move |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
    .unwrap()
}

/// Asserts `secret` appears nowhere in the record (Debug and JSON), and
/// that the record keeps the contract every responder's does (see
/// [`contract`]).
pub fn assert_hidden(secret: &str, record: &custody_respond::ResponseRecord) {
    contract(record);
    let debug = format!("{record:?}");
    let json = serde_json::to_string(record).unwrap();
    assert!(!debug.contains(secret), "secret in Debug: {debug}");
    assert!(!json.contains(secret), "secret in JSON: {json}");
}

/// What every record MUST say, whatever the responder: who acted on what;
/// a dry run sent nothing and says so; attempts add up over the requests;
/// the status is the last one received; a failure gives its reason; no
/// header shows a credential (those that carry one show `[redacted]`).
pub fn contract(record: &custody_respond::ResponseRecord) {
    use custody_respond::Outcome;
    assert!(
        !record.responder.is_empty() && !record.action.is_empty(),
        "{record:?}"
    );
    assert!(!record.target.is_empty(), "{record:?}");
    assert!(!record.detail.is_empty(), "{record:?}");
    assert_eq!(
        record.attempts,
        record.requests.iter().map(|r| r.attempts).sum::<u32>(),
        "{record:?}"
    );
    assert_eq!(
        record.status,
        record.requests.iter().rev().find_map(|r| r.status),
        "{record:?}"
    );
    if record.dry_run {
        assert_eq!(record.outcome, Outcome::DryRun, "{record:?}");
        assert_eq!(record.attempts, 0);
        assert!(!record.requests.is_empty(), "a dry run shows its requests");
    } else {
        assert_ne!(record.outcome, Outcome::DryRun, "{record:?}");
        assert!(
            record.requests.iter().all(|r| r.attempts >= 1),
            "{record:?}"
        );
    }
    if let Outcome::Failed { reason } = &record.outcome {
        assert!(!reason.is_empty());
    }
    for request in &record.requests {
        for (name, value) in &request.headers {
            if name.eq_ignore_ascii_case("authorization") {
                assert!(value.ends_with("[redacted]"), "{name}: {value}");
            }
        }
    }
}
