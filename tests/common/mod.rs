//! Starting and stopping the real `custody` binary for end-to-end tests.

#![allow(dead_code)]

pub mod mcp;
pub mod mcp_http;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client command may run before a test gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `custody serve`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub token: String,
    /// The OTLP/gRPC receiver's address (`127.0.0.1:PORT`), when started
    /// with [`Server::start_with_otlp`].
    pub otlp_grpc: Option<String>,
    /// The OTLP/HTTP receiver's URL (`http://127.0.0.1:PORT`), likewise.
    pub otlp_http: Option<String>,
}

impl Server {
    /// Starts `custody serve` on `data_dir` and a free loopback port, and
    /// waits until it answers.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let child = custody()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting custody serve");
        Server::attach(child, &format!("http://127.0.0.1:{port}"), data_dir)
    }

    /// [`Server::start`] with the OTLP receivers on, each on a free
    /// loopback port of its own (`custody()` turns them off otherwise).
    pub fn start_with_otlp(data_dir: &Path, extra: &[&str]) -> Server {
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--otlp-grpc-listen", &grpc, "--otlp-http-listen", &http];
        args.extend_from_slice(extra);
        let mut server = Server::start(data_dir, &args);
        server.otlp_grpc = Some(grpc.clone());
        server.otlp_http = Some(format!("http://{http}"));
        server
    }

    /// Takes charge of a `custody serve` spawned by the caller: waits until
    /// it answers on `url`, then reads the admin token from `data_dir`. The
    /// server is killed when the result is dropped, or if it never answers.
    pub fn attach(child: Child, url: &str, data_dir: &Path) -> Server {
        let mut server = Server {
            child,
            url: url.to_owned(),
            data_dir: data_dir.to_owned(),
            token: String::new(),
            otlp_grpc: None,
            otlp_http: None,
        };
        wait_until_up(&mut server.child, url);
        server.token = std::fs::read_to_string(data_dir.join("admin.token"))
            .expect("reading admin.token")
            .trim()
            .to_owned();
        server
    }

    /// Runs the `custody` binary as a client of this server, with its admin
    /// token.
    pub fn cli(&self, args: &[&str]) -> Output {
        output_within(
            custody()
                .args(args)
                .env("CUSTODY_SERVER", &self.url)
                .env("CUSTODY_TOKEN", &self.token)
                .env("CUSTODY_DATA_DIR", &self.data_dir),
            COMMAND_TIMEOUT,
        )
    }

    /// Stops the server with SIGTERM, as an operator would, and waits for it
    /// to finish shutting down.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = wait_within(&mut self.child, Duration::from_secs(30));
        assert!(status.success(), "custody serve stopped with {status}");
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

/// The `custody` binary, with none of the `CUSTODY_*` settings of the
/// environment the tests run in, quiet logs and no stdin. The OTLP
/// receivers are off (`CUSTODY_OTLP_*_LISTEN=off`): by default `serve`
/// takes the standard ports 4317 and 4318, which servers run in parallel
/// cannot share. A test wanting them passes the flags, which win over the
/// environment ([`Server::start_with_otlp`]), or removes the variables.
pub fn custody() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_custody"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CUSTODY_") {
            command.env_remove(name);
        }
    }
    command
        .env("CUSTODY_LOG", "warn")
        .env("CUSTODY_OTLP_GRPC_LISTEN", "off")
        .env("CUSTODY_OTLP_HTTP_LISTEN", "off")
        .stdin(Stdio::null());
    command
}

/// Runs `command` to its end, capturing its output; kills it and fails the
/// test if it runs longer than `timeout`.
pub fn output_within(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the custody binary");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_within(&mut child, timeout);
    Output {
        status,
        stdout: stdout.join().expect("reading stdout"),
        stderr: stderr.join().expect("reading stderr"),
    }
}

/// Reads everything from `from` on a thread of its own.
pub fn drain(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        bytes
    })
}

/// Waits for `child` to exit; kills it and fails the test after `timeout`.
pub fn wait_within(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a custody process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `custody serve` answers `/healthz` on `url`; fails the test
/// if it exits first or does not answer within 30 s.
pub fn wait_until_up(child: &mut Child, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if answers(url) {
            return;
        }
        if let Some(status) = child.try_wait().expect("waiting for custody serve") {
            panic!("custody serve exited with {status} before answering on {url}");
        }
        assert!(
            Instant::now() < deadline,
            "custody serve did not answer on {url} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a server answers `GET /healthz` on `url` with 200.
pub fn answers(url: &str) -> bool {
    probe::get_ok(&format!("{url}/healthz"))
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// The real MCP peers, installed by `tests/peers/install.sh` (npm and PyPI,
// into `target/mcp-peers`), which the tests run themselves when the peers
// are missing. A test whose peers cannot be installed fails, saying why,
// unless `CUSTODY_SKIP_MCP_PEERS=1` asks to skip it.

/// Where `tests/peers/install.sh` puts the peers: `target/mcp-peers`.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("mcp-peers")
}

/// The real MCP peers: the Python `mcp` SDK's interpreter and
/// server-everything's entry point (`node SERVER stdio`, or
/// `PORT=N node SERVER streamableHttp`).
pub struct Peers {
    pub python: PathBuf,
    pub server: PathBuf,
    /// The npm packages (server-filesystem, the conformance suite's own
    /// prefix is beside it).
    pub node_modules: PathBuf,
}

/// The installed peers, installed first if need be (once per test run),
/// `None` when skipping was asked for; fails the test when they cannot be
/// installed.
pub fn peers() -> Option<Peers> {
    let dir = peers_dir();
    let peers = Peers {
        python: dir.join("venv/bin/python"),
        server: dir.join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
        node_modules: dir.join("node/node_modules"),
    };
    if std::env::var_os("CUSTODY_SKIP_MCP_PEERS").is_some_and(|v| v == "1") {
        eprintln!("skipping: CUSTODY_SKIP_MCP_PEERS=1 asks to skip the tests of real MCP peers");
        return None;
    }
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| install(&dir));
    if let Err(why) = installed {
        panic!(
            "the MCP peers are not installed in {} and installing them failed ({why}): \
             `tests/peers/install.sh` needs npm and python3 with network access to npmjs.org \
             and PyPI; CUSTODY_SKIP_MCP_PEERS=1 skips the tests that need them",
            dir.display()
        );
    }
    Some(peers)
}

/// Runs `tests/peers/install.sh` into `dir`; it leaves what is installed at
/// the pinned versions alone.
fn install(dir: &Path) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/install.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .output()
        .map_err(|error| format!("running {}: {error}", script.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {}: {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
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
    format!(
        "2026-11-25T10:{:02}:{:02}.{:06}Z",
        (n / 60) % 60,
        n % 60,
        n % 1_000_000
    )
}

mod probe {
    /// Whether a GET of `url` answers 200, without an async runtime.
    pub fn get_ok(url: &str) -> bool {
        let Some(rest) = url.strip_prefix("http://") else {
            return false;
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(mut stream) = std::net::TcpStream::connect(host) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
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

/// Calls the API with `token` (none when empty): a JSON body, or a form.
pub fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Body,
) -> (u16, serde_json::Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", server.url))
            .timeout(Duration::from_secs(30));
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Form(form) => request.form(&form),
            Body::Bytes {
                content_type,
                encoding,
                bytes,
            } => {
                let request = request.header("content-type", content_type).body(bytes);
                match encoding {
                    Some(encoding) => request.header("content-encoding", encoding),
                    None => request,
                }
            }
        };
        let response = request.send().await.expect("calling the server");
        let status = response.status().as_u16();
        let value = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, value)
    })
}

/// Calls the API like [`call`], and returns the answer after checking it is
/// a `200`.
pub fn call_ok(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Body,
) -> serde_json::Value {
    let (status, answer) = call(server, method, path, token, body);
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

/// Posts one event with `token` as the bearer and returns it as stored.
pub fn post_event(server: &Server, token: &str, event: serde_json::Value) -> serde_json::Value {
    let answer = call_ok(
        server,
        reqwest::Method::POST,
        "/v1/events",
        token,
        Body::Json(event),
    );
    stored_event(server, answer["ids"][0].as_str().unwrap())
}

/// The event stored under `id`, read back with the server's admin token.
pub fn stored_event(server: &Server, id: &str) -> serde_json::Value {
    let stored = call_ok(
        server,
        reqwest::Method::GET,
        &format!("/v1/events/{id}"),
        &server.token,
        Body::None,
    );
    stored["event"].clone()
}

/// Mints an agent token for `agent` in `run`, deployed by the human `human`,
/// with the server's admin token.
pub fn mint_agent_token(server: &Server, human: &str, agent: &str, run: &str) -> String {
    let minted = call_ok(
        server,
        reqwest::Method::POST,
        "/v1/agent-tokens",
        &server.token,
        Body::Json(serde_json::json!({
            "subject": {"type": "human", "id": human},
            "agent": {"id": agent, "run_id": run},
            "expires_in": 3600,
        })),
    );
    minted["access_token"].as_str().unwrap().to_owned()
}

/// Exchanges `parent` (RFC 8693) for the token of its sub-agent `actor` in
/// `run`.
pub fn exchange_token(server: &Server, parent: &str, actor: &str, run: &str) -> String {
    let answer = call_ok(
        server,
        reqwest::Method::POST,
        "/oauth/token",
        "",
        exchange_form(parent, actor, run),
    );
    answer["access_token"].as_str().unwrap().to_owned()
}

/// The form of an RFC 8693 exchange of `subject` for a token of its
/// sub-agent `actor` in `run`.
pub fn exchange_form(subject: &str, actor: &str, run: &str) -> Body {
    Body::Form(vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".into(),
        ),
        ("subject_token", subject.to_owned()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token".into(),
        ),
        ("custody_actor", actor.to_owned()),
        ("custody_run", run.to_owned()),
    ])
}

/// What a request carries.
pub enum Body {
    /// Nothing.
    None,
    /// A JSON body.
    Json(serde_json::Value),
    /// A form body.
    Form(Vec<(&'static str, String)>),
    /// Bytes of a media type, with a content encoding or none.
    Bytes {
        content_type: &'static str,
        encoding: Option<&'static str>,
        bytes: Vec<u8>,
    },
}

/// The server's `/metrics` text.
pub fn metrics(server: &Server) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/metrics", server.url))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}
