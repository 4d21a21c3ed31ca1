//! Agent tokens of external issuers, end to end: `custody serve` trusts one
//! issuer whose JWKS is a file and one whose JWKS a small HTTP server in
//! the test serves on a loopback port. Events posted with their tokens are
//! the actions of the `act` chains the tokens carry; bad tokens are refused
//! and recorded; revoking an agent refuses its next token; a JWKS rotated at
//! its URL is fetched again when a token names the new key.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{Body, Server, call, exchange_form, stored_event};
use custody_delegation::Algorithm;
use custody_delegation::testing::{TestKey, jwks};
use reqwest::Method;
use serde_json::{Value, json};

/// The issuer whose JWKS is a file.
const FILE_IDP: &str = "https://idp.example.com";
/// The issuer whose JWKS is served at a URL.
const URL_IDP: &str = "https://login.example.org";

#[test]
fn external_tokens_vouch_for_their_act_chains_and_are_refused_as_custody_s_are() {
    let dir = tempfile::tempdir().unwrap();
    let file_key = TestKey::rsa("file-1", Algorithm::RS256);
    let jwks_file = dir.path().join("idp-jwks.json");
    std::fs::write(&jwks_file, jwks(&[&file_key]).to_string()).unwrap();
    let url_key = TestKey::ec("url-1");
    let served = JwksServer::start(jwks(&[&url_key]));
    let config = dir.path().join("custody.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [[issuers]]
            issuer = "{FILE_IDP}"
            audience = "custody"
            jwks_file = "{}"

            [[issuers]]
            issuer = "{URL_IDP}"
            audience = ["custody", "api://custody"]
            jwks_url = "{}"
            algorithms = ["ES256"]
            run_claim = "run"
            "#,
            jwks_file.display(),
            served.url,
        ),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(served.hits(), 1, "the URL's JWKS is fetched at start");

    // Alice's auditor, spawned by her release-bot, through the file's
    // issuer; Bob's deployer through the URL's.
    let alice_s = file_key.sign(&claims(FILE_IDP, "alice@example.com", "file-tok-1", |c| {
        c["act"] = json!({"sub": "auditor", "custody_run": "run-1.a",
                          "act": {"sub": "release-bot", "custody_run": "run-1"}});
    }));
    let event = stored_event(&server, &post(&server, &alice_s).unwrap());
    assert_eq!(
        chain(&event),
        "alice@example.com -> release-bot[run-1] -> auditor[run-1.a]"
    );
    assert_eq!(
        event["actor"]["credential"],
        json!({"type": "oauth_token", "id": "file-tok-1", "issuer": FILE_IDP})
    );
    assert_eq!(event["attribution"]["method"], "authenticated");
    assert_eq!(
        event["attribution"]["evidence"][0]["detail"],
        format!("file-tok-1 issued by {FILE_IDP}")
    );
    let bob_s = |agent: &str, jti: &str, key: &TestKey| {
        key.sign(&claims(URL_IDP, "bob@example.com", jti, |c| {
            c["aud"] = "api://custody".into();
            c["act"] = json!({"sub": agent, "run": format!("run-{jti}")});
        }))
    };
    let event = stored_event(
        &server,
        &post(&server, &bob_s("deployer", "url-tok-1", &url_key)).unwrap(),
    );
    assert_eq!(chain(&event), "bob@example.com -> deployer[run-url-tok-1]");
    assert_eq!(event["attribution"]["method"], "authenticated");
    let (_, alice_s_events) = call(
        &server,
        Method::GET,
        "/v1/events?root=alice@example.com",
        &server.token,
        Body::None,
    );
    let methods: Vec<&Value> = alice_s_events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| &record["event"]["attribution"]["method"])
        .collect();
    assert_eq!(methods, [&json!("authenticated")], "{alice_s_events}");

    // Only Custody's own tokens are exchanged for a sub-agent's.
    let (status, refused) = call(
        &server,
        Method::POST,
        "/oauth/token",
        "",
        exchange_form(&alice_s, "fetcher", "run-1.a.1"),
    );
    assert_eq!(status, 400);
    assert_eq!(
        refused["error_description"],
        format!(
            "the subject token is refused: wrong issuer, expected `{}`",
            server.url
        )
    );

    // An issuer nobody trusts, and a signature by a key not the issuer's.
    let stranger = file_key.sign(&claims(
        "https://stranger.example.com",
        "eve",
        "x-1",
        |_| {},
    ));
    let forged = bob_s("deployer", "url-tok-2", &TestKey::ec("url-1"));
    let refusals = [
        (
            stranger,
            "issuer `https://stranger.example.com` is not trusted",
        ),
        (forged, "the signature does not verify"),
    ];
    for (token, reason) in &refusals {
        assert_eq!(
            post(&server, token),
            Err(format!("agent token refused: {reason}"))
        );
    }
    let (_, recorded) = call(
        &server,
        Method::GET,
        "/v1/events?kind=authentication&order=oldest",
        &server.token,
        Body::None,
    );
    // What the refused token claimed is kept, read as its issuer's
    // configuration says: Bob's issuer names runs `run`.
    let forged_claims = recorded["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| &record["event"]["attributes"])
        .find(|attributes| attributes["custody.unverified_jti"] == "url-tok-2")
        .unwrap();
    assert_eq!(forged_claims["custody.unverified_run"], "run-url-tok-2");
    let recorded: Vec<(&Value, &Value, &Value)> = recorded["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| {
            let event = &record["event"];
            (
                &event["target"]["system"],
                &event["outcome"]["reason"],
                &event["attributes"]["custody.unverified_iss"],
            )
        })
        .collect();
    let wrong_issuer = format!("wrong issuer, expected `{}`", server.url);
    assert_eq!(
        recorded,
        [
            (
                &json!("/oauth/token"),
                &json!(wrong_issuer),
                &json!(FILE_IDP)
            ),
            (
                &json!("/v1/events"),
                &json!(refusals[0].1),
                &json!("https://stranger.example.com")
            ),
            (&json!("/v1/events"), &json!(refusals[1].1), &json!(URL_IDP)),
        ]
    );

    // Revoking the deployer refuses its next token, whoever issued it.
    let (status, _) = call(
        &server,
        Method::POST,
        "/v1/revocations",
        &server.token,
        Body::Json(json!({"node": "deployer"})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        post(&server, &bob_s("deployer", "url-tok-3", &url_key)),
        Err("agent token refused: revoked: `deployer` was revoked".into())
    );

    // The URL now publishes another key: a token naming it makes the
    // server fetch the JWKS again, once; the retired key is refused.
    let rotated = TestKey::ec("url-2");
    served.serve(jwks(&[&rotated]));
    let event = stored_event(
        &server,
        &post(&server, &bob_s("tester", "url-tok-4", &rotated)).unwrap(),
    );
    assert_eq!(chain(&event), "bob@example.com -> tester[run-url-tok-4]");
    assert_eq!(served.hits(), 2);
    assert_eq!(
        post(&server, &bob_s("tester", "url-tok-5", &url_key)),
        Err("agent token refused: unknown key id `url-1`".into())
    );
    assert_eq!(
        served.hits(),
        2,
        "another unknown key within 30 s does not fetch again"
    );
}

#[test]
fn serve_starts_without_a_jwks_url_s_keys_and_refuses_its_tokens_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("http://127.0.0.1:{}/jwks", common::free_port());
    let config = dir.path().join("custody.toml");
    std::fs::write(
        &config,
        format!("[[issuers]]\nissuer = \"{URL_IDP}\"\naudience = \"custody\"\njwks_url = \"{nowhere}\"\n"),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let token = TestKey::ec("url-1").sign(&claims(URL_IDP, "bob@example.com", "t-1", |_| {}));
    let refused = post(&server, &token).unwrap_err();
    assert!(
        refused.starts_with(&format!(
            "agent token refused: no keys fetched yet from {nowhere}: "
        )),
        "{refused}"
    );

    // A JWKS file that is not one stops the server, naming the file.
    std::fs::write(dir.path().join("bad.json"), "{\"keys\": 1}").unwrap();
    std::fs::write(
        &config,
        format!(
            "[[issuers]]\nissuer = \"{FILE_IDP}\"\naudience = \"custody\"\njwks_file = \"{}\"\n",
            dir.path().join("bad.json").display()
        ),
    )
    .unwrap();
    drop(server);
    let output = common::output_within(
        common::custody()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", common::free_port()),
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config),
        common::COMMAND_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("the JWKS of issuer `{FILE_IDP}`"))
            && stderr.contains("bad.json")
            && stderr.contains("not a JWKS"),
        "{stderr}"
    );
}

/// An agent token's claims: `sub` for `audience` `custody`, valid ten
/// minutes, with `edit` applied.
fn claims(issuer: &str, sub: &str, jti: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": issuer, "sub": sub, "aud": "custody", "jti": jti,
        "iat": now, "nbf": now, "exp": now + 600,
        "act": {"sub": "release-bot", "custody_run": "run-0"},
    });
    edit(&mut claims);
    claims
}

/// Posts a tool call with `token` as the bearer: the id it was stored
/// under, or the refusal's message.
fn post(server: &Server, token: &str) -> Result<String, String> {
    let (status, answer) = call(
        server,
        Method::POST,
        "/v1/events",
        token,
        Body::Json(json!({
            "kind": "tool_call", "action": "tools/call",
            "observed_at": chrono::Utc::now().to_rfc3339(),
            "source": {"type": "api"},
            "actor": {"current": {"type": "agent", "id": "whoever"}},
            "target": {"tool": "read_file"},
            "outcome": {"status": "success"},
        })),
    );
    match status {
        200 => Ok(answer["ids"][0].as_str().unwrap().to_owned()),
        401 => Err(answer["error"]["message"].as_str().unwrap().to_owned()),
        other => panic!("{other}: {answer}"),
    }
}

/// An event's chain as `root -> agent[run] -> ...`.
fn chain(event: &Value) -> String {
    let actor = &event["actor"];
    let hop = |p: &Value| {
        format!(
            "{}[{}]",
            p["id"].as_str().unwrap(),
            p["run_id"].as_str().unwrap()
        )
    };
    let mut hops = vec![actor["root"]["id"].as_str().unwrap().to_owned()];
    hops.extend(actor["agents"].as_array().into_iter().flatten().map(hop));
    hops.push(hop(&actor["current"]));
    hops.join(" -> ")
}

/// A JWKS served over HTTP on a loopback port, as an identity provider
/// publishes one: what it serves can be replaced, and it counts requests.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(document: Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let served = JwksServer {
            url,
            document: Arc::new(Mutex::new(document.to_string())),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let (document, hits) = (served.document.clone(), served.hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                // The request's head, up to its blank line; a GET has no
                // body.
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                    line.clear();
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let body = document.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        served
    }

    /// Serves `document` from now on.
    fn serve(&self, document: Value) {
        *self.document.lock().unwrap() = document.to_string();
    }

    /// How many requests it has answered.
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
