//! Parity: a real MCP client (`tests/peers/mcp_parity.py`, the Python `mcp`
//! SDK) runs a fixed scenario once directly against a real MCP server and
//! once through Custody, and the two transcripts (one normalized JSON line
//! per step) must be the same: what Custody allows passes through
//! unchanged, requests and answers, server-initiated requests (sampling,
//! elicitation), progress, cancellation, multi round-trip requests.
//!
//! Custody is `custody wrap` (stdio) or the streamable-HTTP gateway of
//! `custody serve` (`/mcp`), in front of stdio and HTTP upstreams; the HTTP
//! gateway is also put to the MCP conformance suite, which must find there
//! what it finds directly.
//!
//! The peers are installed by `tests/peers/install.sh` (see
//! `tests/common/mcp.rs`); `CUSTODY_SKIP_MCP_PEERS=1` skips these tests.

mod common;

use std::path::Path;
use std::thread;

use common::mcp::{HttpUpstream, Scenario, Upstream, assert_same_transcript, conformance};
use common::{Body, Server, call, mint_agent_token};
use common::{Peers, peers};
use serde_json::{Value, json};

/// The eras the client is run in: the 2025-11-25 handshake, and the SDK's
/// default (a 2026-07-28 `server/discover` first).
const ERAS: [&str; 2] = ["2025-11-25", "auto"];

/// `server` wrapped by `custody wrap`, a declared agent recorded into
/// `custody` (its admin token is in the scenario's environment).
fn wrapped(custody: &Server, name: &str, server: Vec<String>) -> Upstream {
    let mut argv = vec![
        env!("CARGO_BIN_EXE_custody").to_owned(),
        "wrap".into(),
        "--server".into(),
        custody.url.clone(),
        "--name".into(),
        name.into(),
        "--agent".into(),
        "parity".into(),
        "--".into(),
    ];
    argv.extend(server);
    Upstream::Command(argv)
}

/// Runs `direct` and `through` at once (they are mostly waiting); returns
/// their transcripts.
fn both(
    direct: Scenario<'_>,
    da: Upstream,
    through: Scenario<'_>,
    ta: Upstream,
) -> [Vec<Value>; 2] {
    thread::scope(|s| {
        let a = s.spawn(|| direct.run(&da));
        let b = s.spawn(|| through.run(&ta));
        [a.join().unwrap(), b.join().unwrap()]
    })
}

/// The tool calls the server recorded through `custody wrap`: tool,
/// outcome and reason.
fn recorded_calls(server: &Server) -> Vec<(String, String, String)> {
    let (status, body) = call(
        server,
        reqwest::Method::GET,
        "/v1/events?kind=tool_call&limit=500",
        &server.token,
        Body::None,
    );
    assert_eq!(status, 200, "{body}");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event"])
        .map(|e| {
            (
                text(&e["target"]["tool"]),
                text(&e["outcome"]["status"]),
                text(&e["outcome"]["reason"]),
            )
        })
        .collect()
}

/// The scenario `name` against the stdio server `command` directly and
/// through `custody wrap`, in both eras; the transcripts must match.
/// Returns the tool calls recorded.
fn wrap_parity(
    peers: &Peers,
    name: &str,
    server_name: &str,
    command: impl Fn(&Path) -> Vec<String>,
) -> Vec<(String, String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let custody = Server::start(&dir.path().join("data"), &[]);
    for era in ERAS {
        let (direct_dir, through_dir) = (
            dir.path().join(format!("direct-{era}")),
            dir.path().join(format!("through-{era}")),
        );
        std::fs::create_dir_all(&direct_dir).unwrap();
        std::fs::create_dir_all(&through_dir).unwrap();
        let mut direct = Scenario::new(peers, name, era);
        let mut through = Scenario::new(peers, name, era);
        if name == "filesystem" {
            direct.dir = Some(&direct_dir);
            through.dir = Some(&through_dir);
        }
        through.env.push(("CUSTODY_TOKEN", custody.token.clone()));
        let direct_upstream = Upstream::Command(command(&direct_dir));
        let through_upstream = wrapped(&custody, server_name, command(&through_dir));
        let [a, b] = both(direct, direct_upstream, through, through_upstream);
        assert_same_transcript(
            &a,
            &b,
            &format!("{name} in the {era} era, through custody wrap"),
        );
    }
    let recorded = recorded_calls(&custody);
    assert!(
        !recorded.is_empty(),
        "the calls went through custody wrap and were recorded"
    );
    recorded
}

/// Each era's cancelled call of `tool` was recorded as cancelled by the
/// client (not as timed out, nor left to the session's end).
fn cancelled_twice(recorded: &[(String, String, String)], tool: &str) {
    let cancelled = recorded
        .iter()
        .filter(|(t, status, reason)| {
            t == tool && status == "failure" && reason.starts_with("cancelled by the client")
        })
        .count();
    assert_eq!(cancelled, ERAS.len(), "{recorded:#?}");
}

#[test]
fn server_everything_through_wrap_is_the_same_as_directly() {
    let Some(peers) = peers() else { return };
    let recorded = wrap_parity(&peers, "everything", "everything", |_| {
        peers.everything_command()
    });
    cancelled_twice(&recorded, "trigger-long-running-operation");
}

#[test]
fn server_filesystem_through_wrap_is_the_same_as_directly() {
    let Some(peers) = peers() else { return };
    wrap_parity(&peers, "filesystem", "filesystem", |dir| {
        peers.filesystem_command(dir)
    });
}

#[test]
fn a_modern_upstream_through_wrap_is_the_same_as_directly() {
    let Some(peers) = peers() else { return };
    let recorded = wrap_parity(&peers, "modern", "modern", |_| peers.modern_command());
    cancelled_twice(&recorded, "countdown");
    // The modern era really was spoken: the server/discover was answered,
    // and the multi round-trip request started with input_required.
    let steps =
        Scenario::new(&peers, "modern", "auto").run(&Upstream::Command(peers.modern_command()));
    assert_eq!(steps[0]["version"], "2026-07-28", "{}", steps[0]);
    let first = steps
        .iter()
        .find(|s| s["step"] == "mrtr-first-round")
        .unwrap();
    assert_eq!(first["result_type"], "input_required", "{first}");
    assert_eq!(first["input_requests"], json!(["elicitation/create"]));
}

/// The parity client's URL path gives the transcripts of its stdio path,
/// so that an HTTP gateway can be checked against either.
#[test]
fn the_parity_client_says_the_same_over_streamable_http_as_over_stdio() {
    let Some(peers) = peers() else { return };
    let everything = HttpUpstream::everything(&peers);
    let modern = HttpUpstream::modern(&peers);
    thread::scope(|s| {
        let runs: Vec<_> = [
            (
                "everything",
                "auto",
                peers.everything_command(),
                &everything.url,
            ),
            ("modern", "auto", peers.modern_command(), &modern.url),
            ("modern", "2025-11-25", peers.modern_command(), &modern.url),
        ]
        .into_iter()
        .map(|(name, era, command, url)| {
            let peers = &peers;
            s.spawn(move || {
                let stdio = Scenario::new(peers, name, era).run(&Upstream::Command(command));
                let http = Scenario::new(peers, name, era).run(&Upstream::Url {
                    url: url.clone(),
                    bearer: Some("unused-by-these-servers".into()),
                });
                assert_same_transcript(
                    &stdio,
                    &http,
                    &format!("{name} in the {era} era over HTTP"),
                );
            })
        })
        .collect();
        for run in runs {
            run.join().unwrap();
        }
    });
}

/// The conformance suite's scenarios that server-everything 2026.8.31 passes
/// directly (13 checks pass, 19 fail: most scenarios expect the suite's own
/// test tools): the baseline a gateway in front of it must keep.
#[test]
fn the_conformance_suite_against_server_everything_directly() {
    let Some(peers) = peers() else { return };
    let everything = HttpUpstream::everything(&peers);
    let found = conformance(&peers, &everything.url);
    let passed: Vec<&str> = found.passed.iter().map(String::as_str).collect();
    assert_eq!(
        passed,
        [
            "logging-set-level",
            "ping",
            "prompts-list",
            "resources-list",
            "resources-subscribe",
            "resources-unsubscribe",
            "server-initialize",
            "server-sse-multiple-streams",
            "tools-call-error",
            "tools-call-simple-text",
            "tools-list",
        ],
        "{:#}",
        found.report
    );
    assert_eq!(found.failed.len(), 19, "{:#}", found.report);
    assert_eq!(found.report["checks"], json!({"passed": 13, "failed": 19}));
}

/// `custody serve` with the streamable-HTTP gateway in front of one
/// upstream (`upstream`: its `url = ...` or `command = [...]` line), and
/// an anonymous caller declared (for the conformance suite, which sends no
/// token).
fn http_gateway(dir: &Path, upstream: &str) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("custody.toml");
    std::fs::write(
        &config,
        format!(
            // The conformance suite opens a session per scenario, all as
            // the one anonymous caller.
            "[gateway]\nmax_sessions_per_caller = 64\n[gateway.anonymous]\nagent = \"conformance\"\n\
             [[gateway.upstreams]]\nname = \"upstream\"\n{upstream}\n"
        ),
    )
    .unwrap();
    Server::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

/// A TOML array of strings.
fn toml_array(argv: &[String]) -> String {
    let quoted: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The scenario `name` directly against `direct` and through `gateway`
/// (with an agent token), in both eras; the transcripts must match.
fn http_gateway_parity(peers: &Peers, name: &str, direct: &Upstream, gateway: &Server) {
    let token = mint_agent_token(gateway, "alice@example.com", "coder", "run-parity");
    let through = Upstream::Url {
        url: format!("{}/mcp", gateway.url),
        bearer: Some(token),
    };
    for era in ERAS {
        let [a, b] = both(
            Scenario::new(peers, name, era),
            direct.clone(),
            Scenario::new(peers, name, era),
            through.clone(),
        );
        assert_same_transcript(
            &a,
            &b,
            &format!("{name} in the {era} era, through the HTTP gateway"),
        );
    }
    let recorded = recorded_calls(gateway);
    assert!(!recorded.is_empty(), "the calls were recorded");
}

/// The scenario `name` through the HTTP gateway in front of `upstream`
/// (served over HTTP, compared with itself directly), then in front of
/// `command` (a stdio child per session, compared with a child of the
/// client's).
fn through_the_http_gateway(
    peers: &Peers,
    name: &str,
    upstream: &HttpUpstream,
    command: Vec<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let gateway = http_gateway(
        &dir.path().join("http"),
        &format!("url = {:?}", upstream.url),
    );
    let direct = Upstream::Url {
        url: upstream.url.clone(),
        bearer: None,
    };
    http_gateway_parity(peers, name, &direct, &gateway);
    let gateway = http_gateway(
        &dir.path().join("stdio"),
        &format!("command = {}", toml_array(&command)),
    );
    http_gateway_parity(peers, name, &Upstream::Command(command), &gateway);
}

#[test]
fn server_everything_through_the_http_gateway_is_the_same_as_directly() {
    let Some(peers) = peers() else { return };
    let upstream = HttpUpstream::everything(&peers);
    through_the_http_gateway(&peers, "everything", &upstream, peers.everything_command());
}

/// server-filesystem as a stdio upstream of the HTTP gateway, in each era
/// against a directory of its own, compared with the server run directly
/// against another.
#[test]
fn server_filesystem_through_the_http_gateway_is_the_same_as_directly() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    for era in ERAS {
        let (direct_dir, through_dir) = (
            dir.path().join(format!("direct-{era}")),
            dir.path().join(format!("through-{era}")),
        );
        std::fs::create_dir_all(&direct_dir).unwrap();
        std::fs::create_dir_all(&through_dir).unwrap();
        let gateway = http_gateway(
            &dir.path().join(format!("gateway-{era}")),
            &format!(
                "command = {}",
                toml_array(&peers.filesystem_command(&through_dir))
            ),
        );
        let token = mint_agent_token(&gateway, "alice@example.com", "coder", "run-files");
        let mut direct = Scenario::new(&peers, "filesystem", era);
        direct.dir = Some(&direct_dir);
        let mut through = Scenario::new(&peers, "filesystem", era);
        through.dir = Some(&through_dir);
        let [a, b] = both(
            direct,
            Upstream::Command(peers.filesystem_command(&direct_dir)),
            through,
            Upstream::Url {
                url: format!("{}/mcp", gateway.url),
                bearer: Some(token),
            },
        );
        assert_same_transcript(
            &a,
            &b,
            &format!("filesystem in the {era} era, through the HTTP gateway"),
        );
        let recorded = recorded_calls(&gateway);
        assert!(
            recorded.iter().any(|(tool, _, _)| tool == "write_file"),
            "{recorded:?}"
        );
    }
}

#[test]
fn a_modern_upstream_through_the_http_gateway_is_the_same_as_directly() {
    let Some(peers) = peers() else { return };
    let upstream = HttpUpstream::modern(&peers);
    through_the_http_gateway(&peers, "modern", &upstream, peers.modern_command());
}

/// The conformance suite finds through the HTTP gateway what it finds
/// directly at server-everything: the same scenarios pass, and the same
/// checks fail with the same messages, except that the gateway refuses a
/// foreign `Origin` (DNS rebinding) where server-everything does not.
#[test]
fn the_http_gateway_passes_the_conformance_scenarios_of_its_upstream() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let upstream = HttpUpstream::everything(&peers);
    let gateway = http_gateway(dir.path(), &format!("url = {:?}", upstream.url));
    let direct = conformance(&peers, &upstream.url);
    let through = conformance(&peers, &format!("{}/mcp", gateway.url));
    let rebinding = "dns-rebinding-protection";
    let mut expected = direct.passed.clone();
    expected.insert(rebinding.to_owned());
    assert_eq!(through.passed, expected, "{:#}", through.report);
    let mut failures = direct.report["failures"].clone();
    failures.as_object_mut().unwrap().remove(rebinding);
    assert_eq!(through.report["failures"], failures, "{:#}", through.report);
    eprintln!(
        "conformance: {:.1} s directly, {:.1} s through the gateway",
        direct.seconds, through.seconds
    );
}
