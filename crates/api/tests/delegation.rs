//! The delegation service over HTTP: metadata and keys in the open, agent
//! tokens minted by an administrator, RFC 8693 exchange down the chain,
//! every mint recorded as an `agent_spawn` event, and revocation.

// Each test file uses part of the shared harness.
#[allow(dead_code)]
mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Answer, Server, send};
use custody_api::{Role, TOKEN_EXCHANGE};
use reqwest::Method;
use serde_json::{Value, json};

const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The claims of a token, unverified (the server verified them).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The chain a token's `act` claim nests, current actor first.
fn acts(token: &str) -> Vec<String> {
    let mut acts = Vec::new();
    let mut act = claims(token)["act"].clone();
    while act.is_object() {
        acts.push(format!(
            "{}[{}]",
            act["sub"].as_str().unwrap(),
            act["custody_run"].as_str().unwrap()
        ));
        act = act["act"].clone();
    }
    acts
}

async fn mint(server: &Server, role: Role, body: Value) -> Answer {
    send(
        server
            .request(Method::POST, "/v1/agent-tokens")
            .bearer_auth(server.token(role))
            .json(&body),
    )
    .await
}

/// Mints a token for alice's `release-bot` in run `run-0`, with `extra`
/// fields (scope, expiry) in the request; returns the token.
async fn alice_s_bot(server: &Server, extra: Value) -> String {
    let mut request = json!({"subject": {"type": "human", "id": "alice@example.com"},
                             "agent": {"id": "release-bot", "run_id": "run-0"}});
    if let (Some(request), Value::Object(extra)) = (request.as_object_mut(), extra) {
        request.extend(extra);
    }
    let minted = mint(server, Role::Admin, request).await;
    assert_eq!(minted.status, 200, "{}", minted.body);
    minted.json()["access_token"].as_str().unwrap().to_owned()
}

async fn exchange(server: &Server, form: &[(&str, &str)]) -> Answer {
    send(server.request(Method::POST, "/oauth/token").form(form)).await
}

/// Exchanges `parent` for a token of `actor` in `run`, which must succeed.
async fn exchanged(
    server: &Server,
    parent: &str,
    actor: &str,
    run: &str,
    scope: Option<&str>,
) -> String {
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", parent),
        ("subject_token_type", ACCESS),
        ("custody_actor", actor),
        ("custody_run", run),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let answer = exchange(server, &form).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["cache-control"], "no-store");
    let body = answer.json();
    assert_eq!(body["issued_token_type"], ACCESS);
    assert_eq!(body["token_type"], "Bearer");
    body["access_token"].as_str().unwrap().to_owned()
}

fn oauth_error(answer: &Answer) -> (u16, String, String) {
    let body = answer.json();
    (
        answer.status,
        body["error"].as_str().unwrap_or_default().to_owned(),
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_keys_are_public() {
    let server = Server::start().await;
    let metadata =
        send(server.request(Method::GET, "/.well-known/oauth-authorization-server")).await;
    assert_eq!(metadata.status, 200, "{}", metadata.body);
    let metadata = metadata.json();
    assert_eq!(metadata["issuer"], server.url);
    assert_eq!(
        metadata["token_endpoint"],
        format!("{}/oauth/token", server.url)
    );
    assert_eq!(metadata["grant_types_supported"], json!([TOKEN_EXCHANGE]));
    let jwks = send(
        server.request(
            Method::GET,
            metadata["jwks_uri"]
                .as_str()
                .unwrap()
                .trim_start_matches(&server.url),
        ),
    )
    .await;
    assert_eq!(jwks.status, 200);
    let keys = jwks.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0]["kty"].as_str(), keys[0]["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert!(keys[0].get("d").is_none(), "no private part");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_is_minted_and_exchanged_down_and_every_mint_is_recorded() {
    let server = Server::start().await;
    let request = json!({
        "subject": {"type": "human", "id": "alice@example.com"},
        "agent": {"id": "release-bot", "run_id": "run-0"},
        "scope": ["repo:read", "repo:write"],
        "expires_in": 600,
    });
    for (role, status) in [
        (Role::Ingest, 403),
        (Role::Viewer, 403),
        (Role::Responder, 403),
    ] {
        assert_eq!(
            mint(&server, role, request.clone()).await.status,
            status,
            "{role}"
        );
    }
    let anonymous = send(
        server
            .request(Method::POST, "/v1/agent-tokens")
            .json(&request),
    )
    .await;
    assert_eq!(anonymous.status, 401);
    let minted = mint(&server, Role::Admin, request).await;
    assert_eq!(minted.status, 200, "{}", minted.body);
    let root = minted.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&root)["sub"], "alice@example.com");
    assert_eq!(claims(&root)["scope"], "repo:read repo:write");

    let auditor = exchanged(&server, &root, "auditor", "run-0.a", Some("repo:read")).await;
    let tester = exchanged(&server, &root, "tester", "run-0.b", None).await;
    let fetcher = exchanged(&server, &auditor, "fetcher", "run-0.a.1", None).await;
    assert_eq!(
        acts(&fetcher),
        [
            "fetcher[run-0.a.1]",
            "auditor[run-0.a]",
            "release-bot[run-0]"
        ]
    );
    assert_eq!(claims(&fetcher)["sub"], "alice@example.com");
    assert_eq!(claims(&fetcher)["scope"], "repo:read");
    assert_eq!(claims(&tester)["scope"], "repo:read repo:write");

    // Four agent_spawn events, each by the chain that minted.
    let listed = send(
        server
            .request(Method::GET, "/v1/events?kind=agent_spawn&order=oldest")
            .bearer_auth(server.token(Role::Viewer)),
    )
    .await
    .json();
    let spawns: Vec<(String, String)> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| {
            let event = &record["event"];
            (
                event["actor"]["current"]["id"].as_str().unwrap().to_owned(),
                event["target"]["principal"]["run_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        spawns,
        [
            ("alice@example.com".to_owned(), "run-0".to_owned()),
            ("release-bot".to_owned(), "run-0.a".to_owned()),
            ("release-bot".to_owned(), "run-0.b".to_owned()),
            ("auditor".to_owned(), "run-0.a.1".to_owned()),
        ]
    );
    let last = &listed["events"][3]["event"];
    assert_eq!(last["actor"]["root"]["id"], "alice@example.com");
    assert_eq!(last["actor"]["credential"]["id"], claims(&auditor)["jti"]);
    assert_eq!(
        last["attributes"]["custody.minted_token"],
        claims(&fetcher)["jti"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_exchanges_are_refused_with_oauth_errors() {
    let server = Server::start().await;
    let root = alice_s_bot(&server, json!({"scope": ["repo:read"]})).await;
    let good = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", root.as_str()),
        ("subject_token_type", ACCESS),
        ("custody_actor", "auditor"),
        ("custody_run", "run-0.a"),
    ];
    let with = |name: &str, value: &'static str| -> Vec<(String, String)> {
        good.iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    if *k == name {
                        value.to_owned()
                    } else {
                        v.to_string()
                    },
                )
            })
            .collect()
    };
    let without = |name: &str| -> Vec<(String, String)> {
        good.iter()
            .filter(|(k, _)| *k != name)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let tampered = {
        let mut parts: Vec<String> = root.split('.').map(str::to_owned).collect();
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        parts[1] = URL_SAFE_NO_PAD.encode(payload.replace("release-bot", "admin-bot"));
        parts.join(".")
    };
    let tampered: &'static str = Box::leak(tampered.into_boxed_str());
    // (the form, the OAuth error code, what its description says)
    type Case = (Vec<(String, String)>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (
            with("grant_type", "client_credentials"),
            "unsupported_grant_type",
            "client_credentials",
        ),
        (
            without("grant_type"),
            "invalid_request",
            "`grant_type` is missing",
        ),
        (
            without("subject_token"),
            "invalid_request",
            "`subject_token` is missing",
        ),
        (
            without("custody_run"),
            "invalid_request",
            "`custody_run` is missing",
        ),
        (
            with("subject_token_type", "urn:x:saml"),
            "invalid_request",
            "not supported",
        ),
        (
            with("subject_token", tampered),
            "invalid_grant",
            "the signature does not verify",
        ),
        (
            with("subject_token", "not.a.token"),
            "invalid_grant",
            "not a JWT",
        ),
    ];
    for (form, code, says) in cases {
        let answer = send(server.request(Method::POST, "/oauth/token").form(&form)).await;
        let (status, error, description) = oauth_error(&answer);
        assert_eq!(
            (status, error.as_str()),
            (400, code),
            "{form:?}: {}",
            answer.body
        );
        assert!(description.contains(says), "{form:?}: {description}");
        assert_eq!(answer.headers["cache-control"], "no-store");
    }
    let mut wider = good.to_vec();
    wider.push(("scope", "repo:write"));
    let (status, error, description) = oauth_error(&exchange(&server, &wider).await);
    assert_eq!((status, error.as_str()), (400, "invalid_scope"));
    assert!(description.contains("repo:write"), "{description}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_run_refuses_its_tokens_and_those_beneath_only() {
    let server = Server::start().await;
    let root = alice_s_bot(&server, json!({})).await;
    let first = exchanged(&server, &root, "auditor", "run-0.a", None).await;
    let under_first = exchanged(&server, &first, "fetcher", "run-0.a.1", None).await;
    let sibling = exchanged(&server, &root, "tester", "run-0.b", None).await;

    let revoke = |role: Role| {
        server
            .request(Method::POST, "/v1/revocations")
            .bearer_auth(server.token(role))
            .json(&json!({"node": "run-0.a"}))
    };
    assert_eq!(send(revoke(Role::Viewer)).await.status, 403);
    assert_eq!(send(revoke(Role::Responder)).await.status, 200);
    let saved = server.saved.lock().unwrap().last().cloned().unwrap();
    assert!(
        saved.revoked.contains_key("run-0.a"),
        "the revocation is saved"
    );

    for token in [&first, &under_first] {
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", token.as_str()),
            ("subject_token_type", ACCESS),
            ("custody_actor", "x"),
            ("custody_run", "run-x"),
        ];
        let (status, error, description) = oauth_error(&exchange(&server, &form).await);
        assert_eq!((status, error.as_str()), (400, "invalid_grant"));
        assert!(description.contains("revoked: `run-0.a`"), "{description}");
    }
    exchanged(&server, &sibling, "fetcher", "run-0.b.1", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_token_posts_its_own_authenticated_events() {
    let server = Server::start().await;
    let root = alice_s_bot(&server, json!({})).await;
    let auditor = exchanged(&server, &root, "auditor", "run-0.a", None).await;
    // The event claims another chain; the token says whose action it is.
    let claimed = json!({
        "kind": "tool_call", "action": "tools/call",
        "observed_at": chrono::Utc::now(),
        "source": {"type": "api"},
        "actor": {"root": {"type": "human", "id": "mallory@example.com"},
                  "current": {"type": "agent", "id": "impostor"}},
        "target": {"tool": "read_file"},
        "outcome": {"status": "success"},
        "attribution": {"method": "authenticated"},
    });
    let posted = send(
        server
            .request(Method::POST, "/v1/events")
            .bearer_auth(&auditor)
            .json(&claimed),
    )
    .await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    let id = posted.json()["ids"][0].as_str().unwrap().to_owned();
    let stored = send(
        server
            .request(Method::GET, &format!("/v1/events/{id}"))
            .bearer_auth(server.token(Role::Viewer)),
    )
    .await
    .json();
    let event = &stored["event"];
    assert_eq!(event["actor"]["root"]["id"], "alice@example.com");
    assert_eq!(event["actor"]["agents"][0]["run_id"], "run-0");
    assert_eq!(event["actor"]["current"]["run_id"], "run-0.a");
    assert_eq!(event["actor"]["credential"]["id"], claims(&auditor)["jti"]);
    assert_eq!(event["attribution"]["method"], "authenticated");
    assert_eq!(
        event["attribution"]["evidence"][0]["detail"],
        claims(&auditor)["jti"]
    );

    // An agent token may post, not read.
    let read = send(
        server
            .request(Method::GET, "/v1/events")
            .bearer_auth(&auditor),
    )
    .await;
    assert_eq!(read.status, 403);
    // A forged one is refused with its reason.
    let mut parts: Vec<&str> = auditor.split('.').collect();
    let root_signature = root.split('.').nth(2).unwrap();
    parts[2] = root_signature;
    let forged = parts.join(".");
    let refused = send(
        server
            .request(Method::POST, "/v1/events")
            .bearer_auth(&forged)
            .json(&claimed),
    )
    .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(
        refused.json()["error"]["message"],
        "agent token refused: the signature does not verify"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_declares_bindings() {
    let server = Server::start().await;
    let body = json!({"key": {"type": "aws_access_key", "value": "AKIAEXAMPLE000000009"},
                      "holder": {"current": {"type": "agent", "id": "deployer", "run_id": "run-1"}}});
    for (role, status) in [
        (Role::Ingest, 403),
        (Role::Viewer, 403),
        (Role::Responder, 403),
        (Role::Admin, 201),
    ] {
        let answer = send(
            server
                .request(Method::POST, "/v1/bindings")
                .bearer_auth(server.token(role))
                .json(&body),
        )
        .await;
        assert_eq!(answer.status, status, "{role}: {}", answer.body);
    }
    let anonymous = send(server.request(Method::POST, "/v1/bindings").json(&body)).await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lineage_of_an_action_names_who_spawned_each_agent() {
    let server = Server::start().await;
    let root = alice_s_bot(&server, json!({"scope": ["repo:read"]})).await;
    let auditor = exchanged(&server, &root, "auditor", "run-0.a", None).await;
    let posted = send(
        server
            .request(Method::POST, "/v1/events")
            .bearer_auth(&auditor)
            .json(&json!({
                "kind": "data_access", "action": "s3:GetObject",
                "observed_at": chrono::Utc::now(),
                "source": {"type": "api"},
                "actor": {"current": {"type": "agent", "id": "auditor"}},
                "target": {"resource": "arn:aws:s3:::payroll/q3.csv"},
                "outcome": {"status": "success"},
            })),
    )
    .await;
    let id = posted.json()["ids"][0].as_str().unwrap().to_owned();
    let lineage = send(
        server
            .request(Method::GET, &format!("/v1/lineage/{id}"))
            .bearer_auth(server.token(Role::Viewer)),
    )
    .await;
    assert_eq!(lineage.status, 200, "{}", lineage.body);
    let lineage = lineage.json();
    assert_eq!(lineage["attribution"]["method"], "authenticated");
    let chain = lineage["chain"].as_array().unwrap();
    let roles: Vec<&str> = chain.iter().map(|l| l["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["root", "agent", "actor", "credential"]);
    assert_eq!(chain[0]["principal"]["id"], "alice@example.com");
    assert_eq!(chain[1]["principal"]["run_id"], "run-0");
    assert_eq!(chain[1]["spawned"]["by"]["id"], "alice@example.com");
    assert_eq!(chain[1]["spawned"]["token"], claims(&root)["jti"]);
    assert_eq!(chain[2]["principal"]["run_id"], "run-0.a");
    assert_eq!(chain[2]["spawned"]["by"]["id"], "release-bot");
    assert_eq!(chain[2]["spawned"]["token"], claims(&auditor)["jti"]);
    assert_eq!(chain[2]["spawned"]["scope"], "repo:read");
    assert_eq!(chain[3]["credential"]["id"], claims(&auditor)["jti"]);

    let missing = send(
        server
            .request(
                Method::GET,
                "/v1/lineage/01a21539-0000-7000-8000-000000000000",
            )
            .bearer_auth(server.token(Role::Viewer)),
    )
    .await;
    assert_eq!(missing.status, 404);
    let bad = send(
        server
            .request(Method::GET, "/v1/lineage/not-an-id")
            .bearer_auth(server.token(Role::Viewer)),
    )
    .await;
    assert_eq!(bad.status, 400);
    let ingest = send(
        server
            .request(Method::GET, &format!("/v1/lineage/{id}"))
            .bearer_auth(server.token(Role::Ingest)),
    )
    .await;
    assert_eq!(ingest.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_agent_tokens_are_recorded_with_their_reason() {
    let server = Server::start().await;
    let root = alice_s_bot(&server, json!({})).await;
    let mut parts: Vec<String> = root.split('.').map(str::to_owned).collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    parts[1] = URL_SAFE_NO_PAD.encode(payload.replace("release-bot", "admin-bot"));
    let tampered = parts.join(".");

    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", tampered.as_str()),
        ("subject_token_type", ACCESS),
        ("custody_actor", "x"),
        ("custody_run", "run-x"),
    ];
    assert_eq!(exchange(&server, &form).await.status, 400);
    let posted = send(
        server
            .request(Method::POST, "/v1/events")
            .bearer_auth(&tampered)
            .json(&json!({})),
    )
    .await;
    assert_eq!(posted.status, 401);

    let listed = send(
        server
            .request(Method::GET, "/v1/events?kind=authentication&order=oldest")
            .bearer_auth(server.token(Role::Viewer)),
    )
    .await
    .json();
    let refusals: Vec<&Value> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| &record["event"])
        .collect();
    assert_eq!(refusals.len(), 2, "{listed}");
    for (event, at) in refusals.iter().zip(["/oauth/token", "/v1/events"]) {
        assert_eq!(event["action"], "custody/agent-token-refused");
        assert_eq!(event["target"]["system"], at);
        assert_eq!(event["outcome"]["status"], "denied");
        assert_eq!(event["outcome"]["reason"], "the signature does not verify");
        // What the token claims is kept, unverified, and is not the chain.
        assert_eq!(
            event["attributes"]["custody.unverified_sub"],
            "alice@example.com"
        );
        assert_eq!(event["attributes"]["custody.unverified_actor"], "admin-bot");
        assert_eq!(event["actor"]["current"]["id"], "unverified agent token");
        assert!(event["actor"].get("root").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_answers_a_token_s_chain_and_refuses_a_revoked_one() {
    let server = Server::start().await;
    let whoami = |token: &str| {
        send(
            server
                .request(Method::GET, "/v1/whoami")
                .bearer_auth(token.to_owned()),
        )
    };
    let api = whoami(server.token(Role::Viewer)).await;
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(api.json()["role"], "viewer");
    assert_eq!(api.json()["chain"], Value::Null);

    let token = alice_s_bot(&server, json!({})).await;
    let agent = whoami(&token).await;
    assert_eq!(agent.status, 200, "{}", agent.body);
    let agent = agent.json();
    assert_eq!(agent["role"], "ingest");
    assert_eq!(agent["token_id"], claims(&token)["jti"]);
    assert_eq!(agent["chain"]["root"]["id"], "alice@example.com");
    assert_eq!(agent["chain"]["current"]["id"], "release-bot");
    assert_eq!(agent["chain"]["credential"]["id"], claims(&token)["jti"]);

    let revoked = send(
        server
            .request(Method::POST, "/v1/revocations")
            .bearer_auth(server.token(Role::Responder))
            .json(&json!({"node": "run-0"})),
    )
    .await;
    assert_eq!(revoked.status, 200);
    let refused = whoami(&token).await;
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("revoked"), "{}", refused.body);
    assert_eq!(whoami("cst_nonsense").await.status, 401);
}
