//! Real MCP peers for end-to-end tests of Custody's gateways (installed as
//! `super::peers` says): the commands that start them, the parity client
//! (`tests/peers/mcp_parity.py`) run against a command or a URL, upstream
//! servers over streamable HTTP, and the MCP conformance suite
//! (`tests/peers/conformance.py`).
//!
//! A gateway is checked by running the same scenario directly against a
//! server and through Custody, and comparing the transcripts
//! ([`transcript`], [`assert_same_transcript`]); a streamable-HTTP gateway
//! also by the conformance scenarios that pass with and without it
//! ([`conformance`]).
//!
//! A test of the streamable-HTTP gateway would read, with `custody` a
//! `custody serve` fronting `upstream` and `token` an agent token:
//!
//! ```ignore
//! let upstream = HttpUpstream::everything(&peers);
//! let direct = transcript(&peers, "everything", era, &Upstream::Url {
//!     url: upstream.url.clone(), bearer: None });
//! let through = transcript(&peers, "everything", era, &Upstream::Url {
//!     url: format!("{}/mcp", custody.url), bearer: Some(token) });
//! assert_same_transcript(&direct, &through, "everything over HTTP");
//! assert_eq!(conformance(&peers, &format!("{}/mcp", custody.url)).passed,
//!            conformance(&peers, &upstream.url).passed);
//! ```
//!
//! (The conformance suite sends no `Authorization` header: the gateway
//! must let it through unauthenticated for that comparison, or the
//! comparison runs against a gateway configured to.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Peers, peers_dir};
use super::{custody, free_port, output_within};

/// How long one run of the parity client may take.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

/// A file of `tests/peers`.
pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

impl Peers {
    /// server-everything over stdio.
    pub fn everything_command(&self) -> Vec<String> {
        vec![
            "node".into(),
            self.server.display().to_string(),
            "stdio".into(),
        ]
    }

    /// server-filesystem over stdio, allowed `dir` only.
    pub fn filesystem_command(&self, dir: &Path) -> Vec<String> {
        let server = self
            .node_modules
            .join("@modelcontextprotocol/server-filesystem/dist/index.js");
        vec![
            "node".into(),
            server.display().to_string(),
            dir.display().to_string(),
        ]
    }

    /// The modern upstream (`tests/peers/modern_server.py`) over stdio.
    pub fn modern_command(&self) -> Vec<String> {
        vec![
            self.python.display().to_string(),
            peer_script("modern_server.py").display().to_string(),
        ]
    }
}

/// What the parity client talks to.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// A command started by the client, spoken to over stdio (a server, or
    /// `custody wrap ... -- server`).
    Command(Vec<String>),
    /// A streamable-HTTP endpoint, with a bearer token sent on every
    /// request when given.
    Url { url: String, bearer: Option<String> },
}

/// One run of the parity client.
pub struct Scenario<'a> {
    pub peers: &'a Peers,
    /// `everything`, `filesystem` or `modern` (see `mcp_parity.py`).
    pub scenario: &'a str,
    /// `2025-11-25`, `auto` or `2026-07-28`.
    pub era: &'a str,
    /// The filesystem scenario's directory (the server's allowed one).
    pub dir: Option<&'a Path>,
    /// Environment for the client, and so for the command it starts (the
    /// client starts with only `PATH`, `HOME` and [`custody`]'s settings).
    pub env: Vec<(&'static str, String)>,
}

impl<'a> Scenario<'a> {
    pub fn new(peers: &'a Peers, scenario: &'a str, era: &'a str) -> Scenario<'a> {
        Scenario {
            peers,
            scenario,
            era,
            dir: None,
            env: Vec::new(),
        }
    }

    /// Runs the scenario against `upstream`; returns its transcript, one
    /// JSON object per step. Fails the test if the client fails or does not
    /// reach its end.
    pub fn run(&self, upstream: &Upstream) -> Vec<Value> {
        let mut command = Command::new(&self.peers.python);
        command.arg(peer_script("mcp_parity.py")).args([
            "--scenario",
            self.scenario,
            "--era",
            self.era,
        ]);
        if let Some(dir) = self.dir {
            command.arg("--dir").arg(dir);
        }
        match upstream {
            Upstream::Command(argv) => {
                command.arg("--").args(argv);
            }
            Upstream::Url { url, bearer } => {
                command.args(["--url", url]);
                if let Some(token) = bearer {
                    command.args(["--header", &format!("Authorization: Bearer {token}")]);
                }
            }
        }
        command.env_clear();
        for (name, value) in custody().get_envs() {
            if let Some(value) = value {
                command.env(name, value);
            }
        }
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let output = output_within(&mut command, SCENARIO_TIMEOUT);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the parity client ({} scenario, {} era, {upstream:?}) failed ({}):\n{stdout}\n{}",
            self.scenario,
            self.era,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let steps: Vec<Value> = stdout
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).expect("a JSON step"))
            .collect();
        assert_eq!(
            steps.last().map(|s| &s["step"]),
            Some(&Value::from("end")),
            "the scenario did not reach its end:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        steps
    }
}

/// The transcript of `scenario` in `era` against `upstream`: a command line
/// or a URL (and bearer token).
pub fn transcript(peers: &Peers, scenario: &str, era: &str, upstream: &Upstream) -> Vec<Value> {
    Scenario::new(peers, scenario, era).run(upstream)
}

/// Fails the test, showing each differing step, unless `through` (the
/// transcript through a gateway) is `direct` step for step.
pub fn assert_same_transcript(direct: &[Value], through: &[Value], what: &str) {
    if direct == through {
        return;
    }
    let mut report = String::new();
    for i in 0..direct.len().max(through.len()) {
        let (a, b) = (direct.get(i), through.get(i));
        if a != b {
            report.push_str(&format!(
                "step {i}:\n  direct:  {}\n  through: {}\n",
                a.map_or("(none)".into(), Value::to_string),
                b.map_or("(none)".into(), Value::to_string)
            ));
        }
    }
    panic!("{what}: the transcripts differ\n{report}");
}

/// A server over streamable HTTP, killed when dropped.
pub struct HttpUpstream {
    pub child: Child,
    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub url: String,
}

impl HttpUpstream {
    /// server-everything's streamable-HTTP transport on a free port.
    pub fn everything(peers: &Peers) -> HttpUpstream {
        let port = free_port();
        let mut command = Command::new("node");
        command
            .arg(&peers.server)
            .arg("streamableHttp")
            .env("PORT", port.to_string());
        HttpUpstream::start(command, port)
    }

    /// The modern upstream (`modern_server.py --http PORT`).
    pub fn modern(peers: &Peers) -> HttpUpstream {
        let port = free_port();
        let mut command = Command::new(&peers.python);
        command
            .arg(peer_script("modern_server.py"))
            .args(["--http", &port.to_string()]);
        HttpUpstream::start(command, port)
    }

    /// Starts `command`, and waits (30 s at most) until `port` accepts
    /// connections.
    pub fn start(mut command: Command, port: u16) -> HttpUpstream {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting an MCP server");
        let mut upstream = HttpUpstream {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = upstream.child.try_wait().expect("waiting for a server") {
                panic!("the MCP server exited with {status} before listening on {port}");
            }
            assert!(
                Instant::now() < deadline,
                "the MCP server did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        upstream
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the MCP conformance suite found at one URL.
#[derive(Debug)]
pub struct Conformance {
    pub passed: BTreeSet<String>,
    pub failed: BTreeSet<String>,
    /// How long the suite ran.
    pub seconds: f64,
    /// The whole report of `tests/peers/conformance.py` (with each failed
    /// scenario's messages).
    pub report: Value,
}

/// Runs the MCP conformance suite's server scenarios against `url` (see
/// `tests/peers/conformance.py`).
pub fn conformance(peers: &Peers, url: &str) -> Conformance {
    let mut command = Command::new(&peers.python);
    command
        .arg(peer_script("conformance.py"))
        .args(["--url", url, "--peers"])
        .arg(peers_dir());
    let output = output_within(&mut command, Duration::from_secs(600));
    assert!(
        output.status.success(),
        "the conformance suite did not run ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("the runner's JSON report");
    let names = |key: &str| -> BTreeSet<String> {
        report[key]
            .as_array()
            .expect("a list of scenarios")
            .iter()
            .map(|name| name.as_str().expect("a scenario name").to_owned())
            .collect()
    };
    Conformance {
        passed: names("passed"),
        failed: names("failed"),
        seconds: report["seconds"].as_f64().unwrap_or_default(),
        report,
    }
}
