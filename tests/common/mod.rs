//! Starting and stopping the real `custody` binary for end-to-end tests.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `custody serve`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub token: String,
}

impl Server {
    /// Starts `custody serve` on `data_dir` and a free loopback port, and
    /// waits until it answers.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_custody"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("CUSTODY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting custody serve");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if probe::get_ok(&format!("{url}/healthz")) {
                break;
            }
            assert!(Instant::now() < deadline, "custody serve did not answer on {url} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = std::fs::read_to_string(data_dir.join("admin.token")).expect("reading admin.token").trim().to_owned();
        Server { child, url, data_dir: data_dir.to_owned(), token }
    }

    /// Runs the `custody` binary as a client of this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_custody"))
            .args(args)
            .env("CUSTODY_SERVER", &self.url)
            .env("CUSTODY_TOKEN", &self.token)
            .env("CUSTODY_DATA_DIR", &self.data_dir)
            .stdin(Stdio::null())
            .output()
            .expect("running custody")
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        self.child.kill().expect("killing custody serve");
        self.child.wait().expect("reaping custody serve");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A realistic tool-call event with a client-chosen id, as one NDJSON line.
pub fn tool_call(id: &str, run: &str, n: usize) -> String {
    serde_json::json!({
        "version": 1,
        "id": id,
        "kind": "tool_call",
        "action": "tools/call",
        "observed_at": chrono_like_now(n),
        "source": {"type": "gateway", "name": "gw-test"},
        "actor": {
            "root": {"type": "human", "id": "alice@example.com"},
            "agents": [{"type": "agent", "id": "release-bot", "run_id": "run-root"}],
            "current": {"type": "agent", "id": "dependency-auditor", "run_id": run},
            "credential": {"type": "custody_token", "id": format!("tok-{run}")}
        },
        "target": {"tool": "read_file", "server": "filesystem", "resource": format!("file:///repo/src/{n}.rs")},
        "outcome": {"status": "success", "duration_ms": 12},
        "context": {"session_id": "sess-1", "request_id": n.to_string()},
        "raw": {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "read_file", "arguments": {"path": format!("/repo/src/{n}.rs")}}}
    })
    .to_string()
}

fn chrono_like_now(n: usize) -> String {
    format!("2026-11-25T10:{:02}:{:02}.{:06}Z", (n / 60) % 60, n % 60, n % 1_000_000)
}

mod probe {
    /// Whether a GET of `url` answers 200, without an async runtime.
    pub fn get_ok(url: &str) -> bool {
        let Some(rest) = url.strip_prefix("http://") else { return false };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(mut stream) = std::net::TcpStream::connect(host) else { return false };
        use std::io::{Read, Write};
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }
}
