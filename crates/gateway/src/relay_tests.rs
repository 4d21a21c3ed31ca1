//! The relay with both sides played by the test: ids, decisions, holds,
//! kills and failures while deciding or recording.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use custody_engine::{Decide, Decision, Signal};
use custody_event::{NewEvent, OutcomeStatus, RuntimeEvent};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::*;
use crate::approval;
use crate::outbox::Recording;
use crate::policy::ToolRules;

const WAIT: Duration = Duration::from_secs(5);

/// Keeps what it is given; refuses while `down` holds a failure.
#[derive(Default)]
struct Memory {
    events: Mutex<Vec<NewEvent>>,
    down: Mutex<Option<RecordFailure>>,
}

impl Recorder for Memory {
    fn record<'a>(&'a self, events: &'a [NewEvent]) -> Recording<'a> {
        Box::pin(async move {
            if let Some(failure) = self.down.lock().unwrap().clone() {
                return Err(failure);
            }
            self.events.lock().unwrap().extend_from_slice(events);
            Ok(())
        })
    }
}

struct Panics;

impl Decide for Panics {
    fn decide(&self, _event: &RuntimeEvent, _signals: &[Signal]) -> Decision {
        panic!("policy store corrupted")
    }
}

/// One end of a line-based stream.
struct End {
    write: tokio::io::WriteHalf<DuplexStream>,
    read: Lines<BufReader<tokio::io::ReadHalf<DuplexStream>>>,
}

impl End {
    fn new(stream: DuplexStream) -> End {
        let (read, write) = tokio::io::split(stream);
        End {
            write,
            read: BufReader::new(read).lines(),
        }
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        self.write.write_all(&line).await.unwrap();
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.read.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("a line before the end");
        serde_json::from_str(&line).unwrap()
    }

    async fn closed(&mut self) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.read.next_line()).await,
            Ok(Ok(None) | Err(_))
        )
    }
}

struct Harness {
    client: End,
    server: End,
    recorder: Arc<Memory>,
    held: mpsc::UnboundedReceiver<(HeldCall, oneshot::Sender<Approval>)>,
    ended: JoinHandle<Ended>,
}

impl Harness {
    fn start(decide: impl Decide + 'static, config: Config) -> Harness {
        let recorder = Arc::new(Memory::default());
        Harness::with_recorder(decide, config, recorder)
    }

    fn with_recorder(
        decide: impl Decide + 'static,
        config: Config,
        recorder: Arc<Memory>,
    ) -> Harness {
        let (approvals, held) = approval::channel();
        let identity =
            Identity::declared(Some("human:alice@example.com"), "coder", Some("run-7")).unwrap();
        let gateway = Gateway::new(
            decide,
            identity,
            Arc::new(approvals),
            recorder.clone(),
            config,
        );
        let (client, client_side) = tokio::io::duplex(1 << 20);
        let (server, server_side) = tokio::io::duplex(1 << 20);
        let (client_in, client_out) = tokio::io::split(client_side);
        let (server_out, server_in) = tokio::io::split(server_side);
        let ended = tokio::spawn(gateway.relay(
            client_in,
            client_out,
            server_in,
            server_out,
            Duration::from_secs(1),
        ));
        Harness {
            client: End::new(client),
            server: End::new(server),
            recorder,
            held,
            ended,
        }
    }

    /// Checks that a ping with `id` still reaches the server, and nothing
    /// sent before it did.
    async fn still_relays(&mut self, id: i64) {
        self.client
            .send(json!({"jsonrpc": "2.0", "id": id, "method": "ping"}))
            .await;
        let next = self.server.next().await;
        assert_eq!(
            (next["id"].clone(), next["method"].clone()),
            (json!(id), json!("ping"))
        );
    }

    /// The events recorded so far, once `n` of them are.
    async fn recorded(&self, n: usize) -> Vec<NewEvent> {
        for _ in 0..500 {
            let events = self.recorder.events.lock().unwrap().clone();
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} events were not recorded");
    }
}

fn rules(deny: &[&str], hold: &[&str], kill: &[&str]) -> ToolRules {
    let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
    ToolRules {
        deny: set(deny),
        hold: set(hold),
        kill: set(kill),
    }
}

/// Checks that `answer` is an error with `code` saying `fragment`.
fn refused_with(answer: &Value, code: i64, fragment: &str) {
    assert_eq!(answer["error"]["code"], code, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains(fragment), "{message}");
}

fn call(id: Value, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
}

#[tokio::test]
async fn the_two_directions_id_spaces_never_meet() {
    let mut h = Harness::start(ToolRules::default(), Config::new("everything"));
    // The client's request 1 and the server's request 1 are both in flight.
    h.client
        .send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .await;
    assert_eq!(h.server.next().await["method"], "tools/list");
    h.server
        .send(json!({"jsonrpc": "2.0", "id": 1, "method": "sampling/createMessage", "params": {}}))
        .await;
    assert_eq!(h.client.next().await["method"], "sampling/createMessage");
    // A client reusing an id still in flight is refused, not forwarded.
    h.client
        .send(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .await;
    let refused = h.client.next().await;
    refused_with(&refused, decode::INVALID_REQUEST, "in flight");
    // Each answer goes to the side waiting for it.
    h.client
        .send(json!({"jsonrpc": "2.0", "id": 1, "result": {"role": "assistant"}}))
        .await;
    assert_eq!(h.server.next().await["result"]["role"], "assistant");
    h.server
        .send(json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}))
        .await;
    assert_eq!(h.client.next().await["result"]["tools"], json!([]));
    // An answer nobody waits for goes nowhere: the next line the client
    // sees is the pong.
    h.server
        .send(json!({"jsonrpc": "2.0", "id": 1, "result": {"stale": true}}))
        .await;
    h.still_relays(2).await;
    h.server
        .send(json!({"jsonrpc": "2.0", "id": 2, "result": {}}))
        .await;
    assert_eq!(h.client.next().await["id"], 2);
}

#[tokio::test]
async fn an_allowed_call_is_forwarded_canonically_and_recorded() {
    let mut h = Harness::start(ToolRules::default(), Config::new("everything"));
    h.client
        .write_raw(br#"{"params":{"arguments":{"password":"hunter2","message":"hi"},"name":"echo"},"method":"tools/call","id":"c1","jsonrpc":"2.0"}"#)
        .await;
    let forwarded = h.server.next().await;
    assert_eq!(
        forwarded["params"]["arguments"]["password"], "hunter2",
        "the server gets the real arguments"
    );
    h.server
        .send(json!({"jsonrpc": "2.0", "id": "c1", "result": {"content": [{"type": "text", "text": "hi"}]}}))
        .await;
    assert_eq!(h.client.next().await["result"]["content"][0]["text"], "hi");
    let events = h.recorded(1).await;
    let event = &events[0];
    assert_eq!(event.kind, custody_event::EventKind::ToolCall);
    assert_eq!(event.action, "tools/call");
    assert_eq!(event.target.tool.as_deref(), Some("echo"));
    assert_eq!(event.target.server.as_deref(), Some("everything"));
    assert_eq!(event.outcome.status, OutcomeStatus::Success);
    assert!(event.outcome.duration_ms.is_some());
    assert_eq!(event.actor.root_id(), Some("alice@example.com"));
    assert_eq!(event.attribution, None, "a declared chain is only reported");
    assert_eq!(
        event.attributes["custody.arguments"],
        json!({"password": "[redacted]", "message": "hi"})
    );
    assert_eq!(
        event.attributes["gen_ai.tool.call.arguments.sha256"],
        redact::digest(&json!({"message": "hi", "password": "hunter2"}))
    );
    assert_eq!(event.context.request_id.as_deref(), Some("\"c1\""));
}

#[tokio::test]
async fn a_denied_call_is_answered_and_never_forwarded() {
    let mut h = Harness::start(rules(&["rm"], &[], &[]), Config::new("fs"));
    h.client
        .send(call(json!(5), "rm", json!({"path": "/"})))
        .await;
    let answer = h.client.next().await;
    assert_eq!(answer["id"], 5);
    assert_eq!(answer["error"]["code"], DENIED);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the tool `rm` is not allowed"),
        "{message}"
    );
    assert!(!message.contains("wrap.deny"), "no policy ids: {message}");
    // The server's next line is the ping that followed, not the call.
    h.still_relays(6).await;
    let events = h.recorded(1).await;
    assert_eq!(events[0].outcome.status, OutcomeStatus::Denied);
    assert_eq!(events[0].attributes["custody.verdict"], "deny");
}

#[tokio::test]
async fn held_calls_go_on_when_approved_and_are_refused_otherwise() {
    let mut h = Harness::start(rules(&[], &["deploy"], &[]), Config::new("ops"));
    h.client
        .send(call(json!(1), "deploy", json!({"env": "prod"})))
        .await;
    let (held, answer) = h.held.recv().await.unwrap();
    assert_eq!(held.target.as_deref(), Some("deploy"));
    // While it is held the relay goes on.
    h.still_relays(2).await;
    answer.send(Approval::Approved).unwrap();
    let forwarded = h.server.next().await;
    assert_eq!(
        (forwarded["id"].clone(), forwarded["params"]["name"].clone()),
        (json!(1), json!("deploy"))
    );
    h.server
        .send(json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}))
        .await;
    assert_eq!(h.client.next().await["id"], 1);

    h.client.send(call(json!(3), "deploy", json!({}))).await;
    let (_, answer) = h.held.recv().await.unwrap();
    answer.send(Approval::Refused).unwrap();
    let refused = h.client.next().await;
    assert_eq!(refused["id"], 3);
    refused_with(&refused, DENIED, "refused");
    let events = h.recorded(2).await;
    let approvals: Vec<_> = events
        .iter()
        .map(|e| (e.attributes["custody.approval"].clone(), e.outcome.status))
        .collect();
    assert_eq!(
        approvals,
        [
            (json!("approved"), OutcomeStatus::Success),
            (json!("refused"), OutcomeStatus::Denied)
        ]
    );
}

#[tokio::test]
async fn a_hold_is_bounded() {
    let mut config = Config::new("ops");
    config.hold_timeout = Duration::from_millis(50);
    let mut h = Harness::start(rules(&[], &["deploy"], &[]), config);
    h.client.send(call(json!(1), "deploy", json!({}))).await;
    let (_held, _unanswered) = h.held.recv().await.unwrap();
    let refused = h.client.next().await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no answer came in time")
    );
}

#[tokio::test]
async fn a_kill_fails_calls_in_flight_and_ends_the_session() {
    let mut h = Harness::start(rules(&[], &[], &["exfiltrate"]), Config::new("fs"));
    h.client.send(call(json!(1), "slow", json!({}))).await;
    assert_eq!(h.server.next().await["id"], 1);
    h.client.send(call(json!(2), "exfiltrate", json!({}))).await;
    let mut answers = [h.client.next().await, h.client.next().await];
    answers.sort_by_key(|a| a["id"].as_i64());
    assert_eq!(
        answers[0]["error"]["code"], KILLED,
        "the call in flight fails"
    );
    assert_eq!(
        answers[1]["error"]["code"], KILLED,
        "the killing call fails"
    );
    let ended = tokio::time::timeout(WAIT, h.ended).await.unwrap().unwrap();
    assert!(matches!(ended, Ended::Killed(why) if why.contains("exfiltrate")));
    assert!(h.client.closed().await);
    assert!(h.server.closed().await, "the server's input is closed");
    let events = h.recorder.events.lock().unwrap().clone();
    let outcomes: Vec<_> = events.iter().map(|e| e.outcome.status).collect();
    assert_eq!(outcomes.len(), 2, "{events:?}");
    assert!(
        outcomes.contains(&OutcomeStatus::Denied) && outcomes.contains(&OutcomeStatus::Failure)
    );
}

#[tokio::test]
async fn a_panic_while_deciding_denies_that_call_and_the_relay_goes_on() {
    let mut h = Harness::start(Panics, Config::new("fs"));
    h.client.send(call(json!(1), "echo", json!({}))).await;
    let answer = h.client.next().await;
    assert_eq!(answer["error"]["code"], DENIED);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(!message.contains("corrupted"), "no internals: {message}");
    h.still_relays(2).await;
}

#[tokio::test]
async fn calls_are_refused_while_recording_fails_unless_failing_open() {
    for fail_open in [false, true] {
        let recorder = Arc::new(Memory::default());
        *recorder.down.lock().unwrap() =
            Some(RecordFailure::Unavailable("connection refused".into()));
        let mut config = Config::new("fs");
        config.fail_open = fail_open;
        let mut h = Harness::with_recorder(ToolRules::default(), config, recorder.clone());
        // The first call is decided while recording still looks healthy;
        // its record fails once it is answered.
        h.client.send(call(json!(1), "echo", json!({}))).await;
        assert_eq!(h.server.next().await["id"], 1);
        h.server
            .send(json!({"jsonrpc": "2.0", "id": 1, "result": {}}))
            .await;
        assert_eq!(h.client.next().await["id"], 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.client.send(call(json!(2), "echo", json!({}))).await;
        if fail_open {
            assert_eq!(h.server.next().await["id"], 2);
            h.server
                .send(json!({"jsonrpc": "2.0", "id": 2, "result": {}}))
                .await;
            assert_eq!(h.client.next().await["id"], 2);
        } else {
            let answer = h.client.next().await;
            assert_eq!(answer["error"]["code"], DENIED, "{answer}");
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("could not decide or record")
            );
        }
        // Once the recorder is back, what waited is recorded and calls
        // go through.
        *recorder.down.lock().unwrap() = None;
        let events = h.recorded(2).await;
        assert_eq!(events[0].outcome.status, OutcomeStatus::Success);
    }
}

#[tokio::test]
async fn a_refused_token_refuses_every_request() {
    let recorder = Arc::new(Memory::default());
    *recorder.down.lock().unwrap() = Some(RecordFailure::Refused("revoked".into()));
    let mut h = Harness::with_recorder(ToolRules::default(), Config::new("fs"), recorder);
    h.client.send(call(json!(1), "echo", json!({}))).await;
    h.server.next().await;
    h.server
        .send(json!({"jsonrpc": "2.0", "id": 1, "result": {}}))
        .await;
    h.client.next().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.client
        .send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await;
    let answer = h.client.next().await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{answer}"
    );
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_answered() {
    let mut config = Config::new("fs");
    config.max_message = 200;
    let mut h = Harness::start(ToolRules::default(), config);
    let big = call(json!(1), "echo", json!({"m": "x".repeat(300)}));
    h.client.send(big).await;
    let answer = h.client.next().await;
    refused_with(&answer, decode::INVALID_REQUEST, "exceeds 200 bytes");
    h.client
        .write_raw(br#"{"jsonrpc":"2.0","id":2,"method":"ping","Method":"tools/call"}"#)
        .await;
    let answer = h.client.next().await;
    assert_eq!(answer["id"], 2);
    // The relay is still up.
    h.still_relays(3).await;
}

#[tokio::test]
async fn notifications_pass_through_untouched_and_cancel_held_calls() {
    let mut h = Harness::start(rules(&[], &["deploy"], &[]), Config::new("ops"));
    let untouched = br#"{"method":"notifications/initialized", "jsonrpc":"2.0"}"#;
    h.client.write_raw(untouched).await;
    let line = tokio::time::timeout(WAIT, h.server.read.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(line.as_bytes(), untouched);
    h.client.send(call(json!(9), "deploy", json!({}))).await;
    let (_held, answer) = h.held.recv().await.unwrap();
    h.client
        .send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}}))
        .await;
    // The cancellation is not relayed (the server never saw the call),
    // and approving afterwards forwards nothing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = answer.send(Approval::Approved);
    h.still_relays(10).await;
    h.server
        .send(json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}))
        .await;
    assert_eq!(h.client.next().await["method"], "notifications/progress");
    let events = h.recorded(1).await;
    assert_eq!(events[0].outcome.status, OutcomeStatus::Failure);
    assert_eq!(
        events[0].outcome.reason.as_deref(),
        Some("cancelled by the client while held")
    );
}

impl End {
    async fn write_raw(&mut self, line: &[u8]) {
        self.write.write_all(line).await.unwrap();
        self.write.write_all(b"\n").await.unwrap();
    }
}

#[tokio::test]
async fn calls_left_unanswered_when_the_client_leaves_are_recorded() {
    let mut h = Harness::start(rules(&[], &["deploy"], &[]), Config::new("ops"));
    h.client.send(call(json!(1), "deploy", json!({}))).await;
    let (_held, _unanswered) = h.held.recv().await.unwrap();
    h.client.send(call(json!(2), "slow", json!({}))).await;
    assert_eq!(h.server.next().await["id"], 2);
    // The client leaves; the server sees its input end, and exits.
    h.client.write.shutdown().await.unwrap();
    assert!(h.server.closed().await);
    h.server.write.shutdown().await.unwrap();
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(WAIT, h.ended).await.unwrap().unwrap();
    assert_eq!(ended, Ended::ClientClosed);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "a held call does not keep the session up"
    );
    let events = h.recorder.events.lock().unwrap().clone();
    let outcomes: Vec<_> = events
        .iter()
        .map(|e| (e.target.tool.clone().unwrap(), e.outcome.status))
        .collect();
    assert_eq!(outcomes.len(), 2, "{events:?}");
    assert!(outcomes.contains(&("deploy".into(), OutcomeStatus::Failure)));
    assert!(outcomes.contains(&("slow".into(), OutcomeStatus::Failure)));
}
