//! Containment while the agent runs, end to end: the real binary with its
//! MCP gateway in front of a real `server-everything`, agents speaking
//! through the Python `mcp` SDK with their agent tokens. A run that
//! crosses a blast-radius threshold has its next call held, approved and
//! completed (and the one after refused); a run shown by CloudTrail
//! creating an access key is killed by a playbook, its sub-agent's next
//! call refused and its tokens no longer accepted.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Body, COMMAND_TIMEOUT, Peers, Server, call, call_ok, exchange_token, metrics, mint_agent_token,
    output_within, peers, post_event,
};
use serde_json::{Value, json};

/// An agent: the Python SDK's client in a process of its own, one step
/// per line.
struct Agent {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Agent {
    fn start(peers: &Peers, url: &str, token: &str) -> Agent {
        let mut child = Command::new(&peers.python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_agent.py"))
            .args(["--url", url, "--token", token])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the Python agent");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let mut agent = Agent {
            child,
            input,
            output,
        };
        let ready = agent.answer();
        assert_eq!(ready["op"], "ready", "{ready}");
        agent
    }

    /// Sends a step without waiting for its answer.
    fn send(&mut self, step: Value) {
        writeln!(self.input, "{step}").unwrap();
        self.input.flush().unwrap();
    }

    /// The next answer.
    fn answer(&mut self) -> Value {
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("the agent said {line:?}"))
    }

    fn step(&mut self, step: Value) -> Value {
        self.send(step);
        self.answer()
    }

    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        self.step(json!({"op": "call", "tool": tool, "arguments": arguments}))
    }

    fn read(&mut self, uri: &str) -> Value {
        self.step(json!({"op": "read", "uri": uri}))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to ten seconds for `f` to give something.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = f() {
            return found;
        }
        assert!(Instant::now() < deadline, "waited ten seconds for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn get(server: &Server, path: &str) -> Value {
    call_ok(
        server,
        reqwest::Method::GET,
        path,
        &server.token,
        Body::None,
    )
}

fn serve(dir: &Path, peers: &Peers, extra: &str, args: &[&str]) -> Server {
    let config = dir.join("custody.toml");
    std::fs::write(
        &config,
        format!(
            "{extra}\n[gateway]\nhold_timeout_seconds = 30\n\
             [[gateway.upstreams]]\nname = \"everything\"\ncommand = [\"node\", \"{}\", \"stdio\"]\n",
            peers.server.display()
        ),
    )
    .unwrap();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    Server::start(&dir.join("data"), &all)
}

/// The gateway's stored event of the call whose approval is `held`.
fn stored_call(server: &Server, event: &str) -> Value {
    eventually("the held call's event", || {
        let (status, stored) = call(
            server,
            reqwest::Method::GET,
            &format!("/v1/events/{event}"),
            &server.token,
            Body::None,
        );
        (status == 200).then_some(stored)
    })
}

#[test]
fn a_run_past_its_blast_radius_is_held_then_approved() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let playbooks = dir.path().join("playbooks.toml");
    std::fs::write(
        &playbooks,
        r#"
[[playbook]]
id = "hold-wide-runs"
description = "A run reaching more than two resources waits for a human on each call"
[playbook.when]
rules = ["threshold.reach"]
[[playbook.actions]]
do = "require_approval"

[[playbook]]
id = "watch-wide-runs"
mode = "monitor"
[playbook.when]
kinds = ["threshold"]
[[playbook.actions]]
do = "kill"
on = "root_run"
[[playbook.actions]]
do = "respond"
responder = "okta.suspend"
on = "root"
"#,
    )
    .unwrap();
    let server = serve(
        dir.path(),
        &peers,
        "[[thresholds]]\nname = \"reach\"\nmetric = \"distinct_resources\"\nlimit = 2\nper = \"run\"\nseverity = \"high\"\n",
        &["--playbooks", playbooks.to_str().unwrap()],
    );
    let url = format!("{}/mcp", server.url);
    let token = mint_agent_token(&server, "alice@example.com", "researcher", "run-wide");
    let mut agent = Agent::start(&peers, &url, &token);

    // Two resources, then a routine call: nothing is held.
    for n in 1..=2 {
        let read = agent.read(&format!("demo://resource/dynamic/text/{n}"));
        assert_eq!(read["contents"], 1, "{read}");
    }
    let echoed = agent.call("echo", json!({"message": "before"}));
    assert_eq!(echoed["text"], "Echo: before", "{echoed}");
    assert!(get(&server, "/v1/containment")["measures"] == json!([]));

    // The third resource crosses the threshold: the playbook holds the run.
    let read = agent.read("demo://resource/dynamic/text/3");
    assert_eq!(read["contents"], 1, "{read}");
    let measure = eventually("the hold on the run", || {
        let measures = get(&server, "/v1/containment")["measures"].clone();
        measures.as_array().unwrap().first().cloned()
    });
    assert_eq!(measure["kind"], "hold", "{measure}");
    assert_eq!(measure["scope"], "run:run-wide");
    assert_eq!(measure["by"], "playbook:hold-wide-runs");
    assert!(
        measure["reason"]
            .as_str()
            .unwrap()
            .starts_with("threshold.reach"),
        "{measure}"
    );

    // Its next call is held; the approver sees exactly what it is.
    agent.send(
        json!({"op": "call", "tool": "echo", "arguments": {"message": "wide", "token": "s3cr3t"}}),
    );
    let held = eventually("the held call", || {
        let held = get(&server, "/v1/approvals")["approvals"].clone();
        held.as_array().unwrap().first().cloned()
    });
    assert_eq!(held["method"], "tools/call");
    assert_eq!(held["target"], "echo");
    assert_eq!(held["server"], "everything");
    assert_eq!(held["chain"]["current"]["run_id"], "run-wide");
    assert_eq!(held["chain"]["root"]["id"], "alice@example.com");
    assert_eq!(held["arguments"]["message"], "wide");
    assert_eq!(held["arguments"]["token"], "[redacted]", "{held}");
    let digest = held["digest"].as_str().unwrap().to_owned();
    assert_eq!(digest.len(), 64);
    assert!(
        held["reason"]
            .as_str()
            .unwrap()
            .contains("run:run-wide is held for approval"),
        "{held}"
    );
    let id = held["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "a 128-bit nonce: {id}");
    let counted = metrics(&server);
    for line in [
        "custody_containment_measures 1",
        "custody_approvals_held 1",
        "custody_playbook_actions_done 1",
        "custody_playbook_actions_would 2",
    ] {
        assert!(counted.contains(line), "{line} in {counted}");
    }

    // An approval of other arguments is refused; the call stays held.
    let (status, refused) = call(
        &server,
        reqwest::Method::POST,
        &format!("/v1/approvals/{id}"),
        &server.token,
        Body::Json(json!({"decision": "approve", "digest": "0".repeat(64)})),
    );
    assert_eq!(status, 409, "{refused}");
    // A viewer may look, not answer.
    let viewer = server.cli(&["token", "create", "--role", "viewer", "--name", "v"]);
    assert!(viewer.status.success(), "{viewer:?}");
    let viewer = String::from_utf8(viewer.stdout).unwrap().trim().to_owned();
    let (status, _) = call(
        &server,
        reqwest::Method::POST,
        &format!("/v1/approvals/{id}"),
        &viewer,
        Body::Json(json!({"decision": "approve"})),
    );
    assert_eq!(status, 403);

    // Approved through the command line, the call completes with the
    // server's real answer.
    let approved = server.cli(&[
        "approvals",
        "approve",
        &id,
        "--digest",
        &digest,
        "--reason",
        "ticket 42",
    ]);
    assert!(approved.status.success(), "{approved:?}");
    let answered = agent.answer();
    assert_eq!(answered["text"], "Echo: wide", "{answered}");
    // The nonce is good once.
    let (status, _) = call(
        &server,
        reqwest::Method::POST,
        &format!("/v1/approvals/{id}"),
        &server.token,
        Body::Json(json!({"decision": "approve"})),
    );
    assert_eq!(status, 404);
    let stored = stored_call(&server, held["event"].as_str().unwrap());
    assert_eq!(
        stored["event"]["attributes"]["custody.approval"], "approved",
        "{stored}"
    );
    assert_eq!(stored["event"]["outcome"]["status"], "success");

    // The hold stays: the next call is held too, and refused.
    agent.send(json!({"op": "call", "tool": "echo", "arguments": {"message": "again"}}));
    let held = eventually("the second held call", || {
        let held = get(&server, "/v1/approvals")["approvals"].clone();
        held.as_array().unwrap().first().cloned()
    });
    let listed = server.cli(&["approvals", "list"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.contains(held["id"].as_str().unwrap())
            && table.contains("alice@example.com > researcher/run-wide"),
        "{table}"
    );
    let denied = server.cli(&[
        "approvals",
        "deny",
        held["id"].as_str().unwrap(),
        "--reason",
        "enough",
    ]);
    assert!(denied.status.success(), "{denied:?}");
    let refused = agent.answer();
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("held for approval and refused")),
        "{refused}"
    );

    // Lifted by a responder, the run goes on freely.
    let lifted = server.cli(&["contain", "lift", measure["id"].as_str().unwrap()]);
    assert!(lifted.status.success(), "{lifted:?}");
    let echoed = agent.call("echo", json!({"message": "free"}));
    assert_eq!(echoed["text"], "Echo: free", "{echoed}");

    // Everything is recorded: the playbook's action with the event that
    // crossed the threshold, both answers, the lift; the monitor-mode
    // playbook's actions as "would", nothing done.
    let actions = get(&server, "/v1/actions?limit=100")["actions"].clone();
    let actions = actions.as_array().unwrap();
    let of = |playbook: &str| -> Vec<&Value> {
        actions
            .iter()
            .filter(|a| a["playbook"] == playbook)
            .collect()
    };
    let hold = of("hold-wide-runs");
    assert_eq!(hold.len(), 1, "{actions:?}");
    assert_eq!(hold[0]["action"], "hold");
    assert_eq!(hold[0]["target"], "run:run-wide");
    assert_eq!(hold[0]["outcome"], "done");
    assert!(hold[0]["event"].is_string() && hold[0]["finding"].is_string());
    let answers: Vec<&str> = of("approvals")
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(answers, ["refuse", "approve"]);
    assert!(
        of("approvals")[1]["detail"]
            .as_str()
            .unwrap()
            .contains("ticket 42")
    );
    assert_eq!(of("api")[0]["action"], "lift.hold");
    let would = of("watch-wide-runs");
    assert_eq!(would.len(), 2, "{actions:?}");
    for action in &would {
        assert_eq!(action["monitor"], true);
        assert_eq!(action["outcome"], "would");
    }
    assert_eq!(would[1]["action"], "kill");
    assert_eq!(would[1]["target"], "run:run-wide");
    assert_eq!(would[0]["action"], "respond.okta.suspend");
    assert_eq!(would[0]["target"], "alice@example.com");
    let playbooks = get(&server, "/v1/playbooks")["playbooks"].clone();
    let watch = playbooks
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "watch-wide-runs")
        .unwrap();
    assert_eq!(watch["mode"], "monitor");
    assert_eq!(watch["counts"]["would"], 2, "{watch}");
    assert_eq!(watch["counts"]["fired"], 1);
    assert_eq!(watch["counts"]["done"], 0);
    let listed = server.cli(&["playbook", "list"]);
    let table = String::from_utf8_lossy(&listed.stdout).into_owned();
    let row = table
        .lines()
        .find(|l| l.starts_with("watch-wide-runs"))
        .unwrap_or_else(|| panic!("{table}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &columns[1..7],
        ["monitor", "1", "0", "0", "2", "0"],
        "{table}"
    );
    // Nothing the monitor would have done was done: no kill in force, and
    // the run still calls.
    assert_eq!(get(&server, "/v1/containment")["measures"], json!([]));
}

/// A CloudTrail record of the run's role session creating an access key.
fn create_access_key(run: &str) -> Value {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    json!({
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": format!("AROA3EXAMPLEBUILDER:{run}"),
            "arn": format!("arn:aws:sts::111122223333:assumed-role/builder/{run}"),
            "accountId": "111122223333",
            "accessKeyId": "ASIA3EXAMPLE7BUILDER",
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": "AROA3EXAMPLEBUILDER",
                    "arn": "arn:aws:iam::111122223333:role/builder",
                    "accountId": "111122223333",
                    "userName": "builder"
                },
                "attributes": {"creationDate": now, "mfaAuthenticated": "false"},
                "sourceIdentity": run
            }
        },
        "eventTime": now,
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateAccessKey",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "203.0.113.9",
        "userAgent": "aws-cli/2.15.0",
        "requestParameters": {"userName": "backdoor"},
        "responseElements": {"accessKey": {
            "accessKeyId": "AKIA3EXAMPLEBACKDOOR",
            "status": "Active",
            "userName": "backdoor",
            "createDate": now
        }},
        "requestID": "6b2f7e0c-5c4d-4a1b-9b8f-0d1e2f3a4b5c",
        "eventID": "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6",
        "readOnly": false,
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": "111122223333",
        "eventCategory": "Management"
    })
}

#[test]
fn an_audit_log_finding_kills_the_run_at_the_gateway() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let playbooks = dir.path().join("playbooks.toml");
    std::fs::write(
        &playbooks,
        r#"
[[playbook]]
id = "kill-on-new-credentials"
[playbook.when]
# The agent pack's "Agent Created Credentials Or Granted Privileges".
rules = ["64c6dd81-1920-4ac2-b79a-2c7f1d8ae413"]
severity = "high"
[[playbook.actions]]
do = "kill"
on = "root_run"
[[playbook.actions]]
do = "respond"
responder = "webhook.soc"
on = "root"
"#,
    )
    .unwrap();
    let (soc, delivered) = webhook_receiver();
    let responders = format!(
        "[[responders.webhook]]\nname = \"soc\"\nurl = \"{soc}\"\nsecret = \"s3cret-hmac-key\"\n"
    );
    let server = serve(
        dir.path(),
        &peers,
        &responders,
        &["--playbooks", playbooks.to_str().unwrap()],
    );
    let url = format!("{}/mcp", server.url);
    // bob's builder, its sub-agent, and a bystander of another human.
    let builder = mint_agent_token(&server, "bob@example.com", "builder", "run-b");
    let helper = exchange_token(&server, &builder, "helper", "run-b.1");
    let bystander = mint_agent_token(&server, "carol@example.com", "builder", "run-c");
    let mut builder_agent = Agent::start(&peers, &url, &builder);
    let mut helper_agent = Agent::start(&peers, &url, &helper);
    let mut bystander_agent = Agent::start(&peers, &url, &bystander);
    let echoed = helper_agent.call("echo", json!({"message": "working"}));
    assert_eq!(echoed["text"], "Echo: working", "{echoed}");
    // The builder has a long call in flight when the kill comes.
    builder_agent.send(
        json!({"op": "call", "tool": "trigger-long-running-operation",
                              "arguments": {"duration": 20, "steps": 4}}),
    );
    // Nothing is recorded of it until it ends: give it time to reach the
    // server.
    std::thread::sleep(Duration::from_millis(500));

    // The builder assumes its AWS role as its run; then CloudTrail shows
    // that session creating an access key: attributed to the run, a
    // finding, the playbook kills the run.
    post_event(
        &server,
        &builder,
        json!({"kind": "credential_use", "action": "sts:AssumeRole",
               "observed_at": chrono::Utc::now().to_rfc3339(),
               "source": {"type": "api"}, "actor": {"current": {"type": "agent", "id": "builder"}},
               "target": {"resource": "arn:aws:iam::111122223333:role/builder",
                          "system": "aws:111122223333"},
               "outcome": {"status": "success"},
               "attributes": {"aws.role_session_name": "run-b", "aws.source_identity": "run-b"}}),
    );
    let imported = call_ok(
        &server,
        reqwest::Method::POST,
        "/v1/ingest/cloudtrail",
        &server.token,
        Body::Json(json!({"Records": [create_access_key("run-b")]})),
    );
    assert_eq!(imported["accepted"], 1, "{imported}");
    // In force as soon as the record is accepted: no wait.
    let measures = get(&server, "/v1/containment")["measures"].clone();
    assert_eq!(measures[0]["kind"], "kill", "{measures}");
    assert_eq!(measures[0]["scope"], "run:run-b");
    assert_eq!(measures[0]["by"], "playbook:kill-on-new-credentials");

    // The call in flight fails at once, its session ended by the kill.
    let started = Instant::now();
    let failed = builder_agent.answer();
    assert!(started.elapsed() < Duration::from_secs(10), "{failed}");
    assert!(failed.get("text").is_none(), "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("run:run-b kill")),
        "{failed}"
    );
    // The sub-agent's next call is refused: by the kill, or by its token
    // revoked with the run, whichever the call meets first.
    let refused = helper_agent.call("echo", json!({"message": "more"}));
    let why = refused["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("`run-b` was revoked") || why.contains("run:run-b"),
        "{refused}"
    );
    // Its tokens, and its parent's, are no longer accepted.
    for token in [&helper, &builder] {
        let whoami = eventually("the run's tokens revoked", || {
            let (status, answer) = call(
                &server,
                reqwest::Method::GET,
                "/v1/whoami",
                token,
                Body::None,
            );
            (status == 401).then_some(answer)
        });
        assert!(whoami.to_string().contains("revoked"), "{whoami}");
    }
    let agent = Agent::start_refused(&peers, &url, &helper);
    assert!(agent.contains("`run-b` was revoked"), "{agent}");
    // Another human's run goes on.
    let echoed = bystander_agent.call("echo", json!({"message": "still here"}));
    assert_eq!(echoed["text"], "Echo: still here", "{echoed}");

    // The failed call is recorded, naming the kill.
    let long = eventually("the failed call's event", || {
        let events = get(&server, "/v1/events?run=run-b&limit=100")["events"].clone();
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"]["target"]["tool"] == "trigger-long-running-operation")
            .cloned()
    });
    assert_eq!(long["event"]["outcome"]["status"], "failure", "{long}");
    assert!(
        long["event"]["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("session ended"),
        "{long}"
    );
    // The webhook is told, signed; its action's record says so.
    let (headers, body) = delivered
        .recv_timeout(Duration::from_secs(10))
        .expect("the webhook delivery");
    assert!(
        headers.contains("x-custody-signature: sha256="),
        "{headers}"
    );
    assert!(!headers.contains("s3cret-hmac-key") && !body.contains("s3cret-hmac-key"));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["action"], "playbook:kill-on-new-credentials");
    assert_eq!(body["target"], "bob@example.com");
    assert!(body["finding"].is_string(), "{body}");
    let actions = eventually("the webhook's outcome recorded", || {
        let actions =
            get(&server, "/v1/actions?playbook=kill-on-new-credentials")["actions"].clone();
        (actions[0]["outcome"] == "done").then_some(actions)
    });
    assert_eq!(actions[0]["action"], "respond.webhook.soc");
    assert_eq!(actions[0]["response"]["status"], 204, "{actions}");
    assert!(!actions.to_string().contains("s3cret-hmac-key"));
    assert_eq!(actions[1]["action"], "kill");
    assert_eq!(actions[1]["target"], "run:run-b");
    assert_eq!(actions[1]["outcome"], "done");

    // The kill outlives a restart.
    drop((builder_agent, helper_agent, bystander_agent));
    server.stop();
    let server = serve(
        dir.path(),
        &peers,
        &responders,
        &["--playbooks", playbooks.to_str().unwrap()],
    );
    let measures = get(&server, "/v1/containment")["measures"].clone();
    assert_eq!(measures.as_array().unwrap().len(), 1, "{measures}");
    assert_eq!(measures[0]["scope"], "run:run-b");
    assert_eq!(measures[0]["kind"], "kill");

    // Its tokens stay refused: one minted for the run now is too.
    let url = format!("{}/mcp", server.url);
    let builder = mint_agent_token(&server, "bob@example.com", "builder", "run-b");
    let whoami = |token: &str| {
        call(
            &server,
            reqwest::Method::GET,
            "/v1/whoami",
            token,
            Body::None,
        )
    };
    let (status, refused) = whoami(&builder);
    assert_eq!(status, 401, "{refused}");
    assert!(
        refused.to_string().contains("`run-b` was revoked"),
        "{refused}"
    );

    // A responder lifts it: the run's tokens are accepted again, and its
    // sub-agent works again.
    let lifted = server.cli(&["contain", "lift", measures[0]["id"].as_str().unwrap()]);
    assert!(lifted.status.success(), "{lifted:?}");
    eventually("the run's tokens reinstated", || {
        (whoami(&builder).0 == 200).then_some(())
    });
    let helper = exchange_token(&server, &builder, "helper", "run-b.1");
    let mut helper_agent = Agent::start(&peers, &url, &helper);
    let echoed = helper_agent.call("echo", json!({"message": "reinstated"}));
    assert_eq!(echoed["text"], "Echo: reinstated", "{echoed}");
}

/// A webhook receiver on a loopback port: its URL, and each delivery's
/// headers (lower-cased) and body, answered `204`.
fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/custody", listener.local_addr().unwrap());
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                headers.push_str(&line.to_ascii_lowercase());
            }
            let length: usize = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .unwrap();
            let _ = sender.send((headers, String::from_utf8(body).unwrap()));
        }
    });
    (url, receiver)
}

impl Agent {
    /// Starts an agent whose session should be refused; what it said.
    fn start_refused(peers: &Peers, url: &str, token: &str) -> String {
        let output = output_within(
            Command::new(&peers.python)
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_agent.py"))
                .args(["--url", url, "--token", token]),
            COMMAND_TIMEOUT,
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

const POLICIES: &str = r#"
@id("agents-may-work")
permit(principal, action, resource);

@id("no-env")
@reason("reading the environment leaks secrets")
forbid(principal, action == Action::"tools/call", resource == Tool::"get-env");

@id("hold-wide-runs")
@hold("a run this wide needs a human")
forbid(principal, action == Action::"tools/call", resource)
when { context.blast.resources > 2 };
"#;

#[test]
fn policies_decide_at_the_gateway_and_a_broken_reload_keeps_them() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("agents.cedar"), POLICIES).unwrap();
    let server = serve(
        dir.path(),
        &peers,
        "",
        &["--policies", policies.to_str().unwrap()],
    );
    let url = format!("{}/mcp", server.url);
    let token = mint_agent_token(&server, "alice@example.com", "researcher", "run-p");
    let mut agent = Agent::start(&peers, &url, &token);

    // Permitted; forbidden with the policy's reason, named.
    let echoed = agent.call("echo", json!({"message": "hi"}));
    assert_eq!(echoed["text"], "Echo: hi", "{echoed}");
    let denied = agent.call("get-env", json!({}));
    let why = denied["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("reading the environment leaks secrets"),
        "{denied}"
    );
    let refused = eventually("the refused call's event", || {
        let events = get(&server, "/v1/events?run=run-p&limit=100")["events"].clone();
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"]["target"]["tool"] == "get-env")
            .cloned()
    });
    assert_eq!(refused["decision"]["verdict"], "deny");
    assert_eq!(
        refused["decision"]["reasons"][0]["id"], "no-env",
        "{refused}"
    );

    // Three resources read: the run's blast radius holds its next call.
    for n in 1..=3 {
        agent.read(&format!("demo://resource/dynamic/text/{n}"));
    }
    eventually("the run's blast radius", || {
        let radius = get(&server, "/v1/blast-radius/run:run-p");
        (radius["blast_radius"]["resources"] == 3).then_some(())
    });
    agent.send(json!({"op": "call", "tool": "echo", "arguments": {"message": "wide"}}));
    let held = eventually("the held call", || {
        let held = get(&server, "/v1/approvals")["approvals"].clone();
        held.as_array().unwrap().first().cloned()
    });
    assert!(
        held["reason"]
            .as_str()
            .unwrap()
            .contains("a run this wide needs a human"),
        "{held}"
    );
    let version = held["policy_version"].as_str().unwrap().to_owned();
    assert_eq!(version.len(), 16, "{held}");
    call_ok(
        &server,
        reqwest::Method::POST,
        &format!("/v1/approvals/{}", held["id"].as_str().unwrap()),
        &server.token,
        Body::Json(json!({"decision": "approve"})),
    );
    assert_eq!(agent.answer()["text"], "Echo: wide");

    // A broken file is refused with its line; the running policies stay.
    std::fs::write(
        policies.join("broken.cedar"),
        "permit(principal, action, resource);\nforbid(principal, action, resource) when { context.nope };\n",
    )
    .unwrap();
    let (status, refused) = call(
        &server,
        reqwest::Method::POST,
        "/v1/policies/reload",
        &server.token,
        Body::None,
    );
    assert_eq!(status, 400, "{refused}");
    let message = refused.to_string();
    assert!(message.contains("broken.cedar:2"), "{message}");
    assert!(message.contains(&version), "{message}");
    let other = mint_agent_token(&server, "bob@example.com", "researcher", "run-q");
    let mut other = Agent::start(&peers, &url, &other);
    assert!(
        other.call("get-env", json!({}))["error"]
            .as_str()
            .is_some_and(|e| e.contains("leaks secrets"))
    );
    // Fixed (no-env dropped), the reload takes: a new version, get-env
    // allowed.
    std::fs::remove_file(policies.join("broken.cedar")).unwrap();
    std::fs::write(
        policies.join("agents.cedar"),
        POLICIES.replace(
            "@id(\"no-env\")\n@reason(\"reading the environment leaks secrets\")\n\
             forbid(principal, action == Action::\"tools/call\", resource == Tool::\"get-env\");",
            "",
        ),
    )
    .unwrap();
    // Reloaded on SIGHUP, as an operator would.
    let hangup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    eventually("the policies reloaded", || {
        let answer = other.call("get-env", json!({}));
        answer["text"].is_string().then_some(())
    });
    let reloaded = call_ok(
        &server,
        reqwest::Method::POST,
        "/v1/policies/reload",
        &server.token,
        Body::None,
    );
    assert_eq!(reloaded["policies"], 2, "{reloaded}");
    assert_ne!(reloaded["version"], version);
    let allowed = other.call("get-env", json!({}));
    assert!(allowed["text"].is_string(), "{allowed}");

    // A responder quarantines the agent type: every run of it is refused,
    // until the quarantine is lifted.
    let quarantined = server.cli(&[
        "contain",
        "quarantine",
        "agent:researcher",
        "--reason",
        "under review",
    ]);
    assert!(quarantined.status.success(), "{quarantined:?}");
    let refused = other.call("echo", json!({"message": "x"}));
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("agent:researcher is quarantined")),
        "{refused}"
    );
    let listed = server.cli(&["contain", "list"]);
    let table = String::from_utf8_lossy(&listed.stdout).into_owned();
    let id = table
        .lines()
        .find(|l| l.contains("agent:researcher"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{table}"))
        .to_owned();
    assert!(server.cli(&["contain", "lift", &id]).status.success());
    let echoed = other.call("echo", json!({"message": "back"}));
    assert_eq!(echoed["text"], "Echo: back", "{echoed}");
    let actions = server.cli(&["actions", "--playbook", "api"]);
    let table = String::from_utf8_lossy(&actions.stdout);
    assert!(
        table.contains("lift.quarantine") && table.contains("quarantine"),
        "{table}"
    );
}

#[test]
fn playbook_files_are_checked_with_their_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[playbook]]\nid = \"a\"\nmode = \"monitor\"\n[[playbook.actions]]\ndo = \"kill\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[playbook]]\nid = \"b\"\n[[playbook.actions]]\ndo = \"explode\"\n",
    )
    .unwrap();
    let checked = output_within(
        common::custody().args(["playbook", "validate"]).arg(&good),
        COMMAND_TIMEOUT,
    );
    assert!(checked.status.success(), "{checked:?}");
    assert_eq!(
        String::from_utf8_lossy(&checked.stdout),
        "ok: 1 playbook(s) in 1 file(s), 1 in monitor mode\n"
    );
    let refused = output_within(
        common::custody()
            .args(["playbook", "validate"])
            .arg(&good)
            .arg(&bad)
            .arg(&good),
        COMMAND_TIMEOUT,
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("bad.toml:4"), "{stderr}");
    assert!(stderr.contains("two playbooks have the id `a`"), "{stderr}");
}
