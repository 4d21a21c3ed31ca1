//! Okta System Log and GitHub audit log records end to end, through the real
//! binary: an Okta API page and a GitHub NDJSON stream sent with `custody
//! ingest --format okta|github`, the same posted to `POST /v1/ingest/okta`
//! and `POST /v1/ingest/github`, and a record made by an OAuth client that a
//! declared binding gives to a run, attributed to that run.

mod common;

use common::{Body, Server, call, call_ok};
use serde_json::{Value, json};
use uuid::Uuid;

/// An Okta `LogEvent` of `event_type` by `actor`, its OAuth client `client`.
fn okta(uuid: &str, event_type: &str, client: Option<&str>, published: &str) -> Value {
    json!({
        "uuid": uuid,
        "published": published,
        "eventType": event_type,
        "displayMessage": "OAuth2 access token is granted",
        "severity": "INFO",
        "actor": {"id": "00u1", "type": "User", "alternateId": "alice@example.com",
                  "displayName": "Alice Chen"},
        "client": {"id": client, "ipAddress": "198.51.100.7",
                   "userAgent": {"rawUserAgent": "custody-test"}},
        "authenticationContext": {"externalSessionId": format!("session-{uuid}")},
        "outcome": {"result": "SUCCESS"},
        "debugContext": {"debugData": {"requestId": format!("req-{uuid}"),
                                       "url": "https://acme.okta.com/oauth2/v1/token?"}},
        "transaction": {"type": "WEB", "id": format!("tx-{uuid}")},
        "target": [{"id": "0oapayroll", "type": "AppInstance", "alternateId": "Payroll"}]
    })
}

/// A GitHub audit log entry of `action` at `millis`.
fn github(id: &str, action: &str, app: Option<u64>, millis: i64) -> Value {
    json!({
        "@timestamp": millis,
        "_document_id": id,
        "action": action,
        "actor": "release-bot[bot]",
        "org": "acme",
        "repo": "acme/payments",
        "oauth_application_id": app,
        "programmatic_access_type": "GitHub App server-to-server token",
        "hashed_token": format!("hash-{id}"),
    })
}

fn okta_id(uuid: &str) -> Uuid {
    Uuid::new_v5(&custody_import::okta::NAMESPACE, uuid.as_bytes())
}

fn github_id(id: &str) -> Uuid {
    Uuid::new_v5(&custody_import::github::NAMESPACE, id.as_bytes())
}

/// Posts `body` to `path` with the admin token, checking it is answered.
fn post(server: &Server, path: &str, body: Value) -> Value {
    call_ok(
        server,
        reqwest::Method::POST,
        path,
        &server.token,
        Body::Json(body),
    )
}

/// The stored event `id`, if there is one.
fn stored(server: &Server, id: Uuid) -> Option<Value> {
    let path = format!("/v1/events/{id}");
    let (status, answer) = call(
        server,
        reqwest::Method::GET,
        &path,
        &server.token,
        Body::None,
    );
    (status == 200).then(|| answer["event"].clone())
}

#[test]
fn ingest_sends_okta_pages_and_github_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let at = "2026-11-25T10:00:00.000Z";
    // An Okta API page, pretty-printed, as `GET /api/v1/logs` answers.
    let page = serde_json::to_string_pretty(&json!([
        okta("ok-1", "user.session.start", None, at),
        okta(
            "ok-2",
            "app.oauth2.as.token.grant.access_token",
            Some("0oaclient"),
            at
        ),
    ]))
    .unwrap();
    let okta_file = dir.path().join("okta-page.json");
    std::fs::write(&okta_file, page).unwrap();
    // A GitHub stream with a broken line.
    let stream = format!(
        "{}\n{{\"action\": \"repo.\n{}\n",
        github("gh-1", "git.clone", None, 1795600800000),
        github("gh-2", "org.add_member", None, 1795600860000),
    );
    let github_file = dir.path().join("github-stream.ndjson");
    std::fs::write(&github_file, stream).unwrap();

    let state = dir.path().join("state");
    let ingest = |format: &str, file: &std::path::Path| {
        server.cli(&[
            "ingest",
            "--format",
            format,
            "--state-dir",
            state.to_str().unwrap(),
            file.to_str().unwrap(),
        ])
    };
    let sent = ingest("okta", &okta_file);
    let errors = String::from_utf8_lossy(&sent.stderr).into_owned();
    assert!(sent.status.success(), "{errors}");
    assert!(
        errors.contains("sent 2 events from 1 files; 0 refused"),
        "{errors}"
    );
    let sent = ingest("github", &github_file);
    let errors = String::from_utf8_lossy(&sent.stderr).into_owned();
    assert_eq!(sent.status.code(), Some(2), "{errors}");
    assert!(
        errors.contains(&format!(
            "{}:2: record: invalid JSON",
            github_file.display()
        )),
        "{errors}"
    );
    assert!(
        errors.contains("sent 2 events from 1 files; 1 refused"),
        "{errors}"
    );

    let session = stored(&server, okta_id("ok-1")).expect("ok-1 is stored");
    assert_eq!(session["kind"], "authentication");
    assert_eq!(session["source"]["type"], "okta");
    assert_eq!(session["actor"]["current"]["id"], "alice@example.com");
    assert_eq!(session["actor"]["credential"]["type"], "okta_session");
    assert_eq!(session["target"]["system"], "okta:acme.okta.com");
    assert_eq!(session["raw"]["uuid"], "ok-1");
    let grant = stored(&server, okta_id("ok-2")).expect("ok-2 is stored");
    assert_eq!(grant["kind"], "credential_use");
    assert_eq!(grant["attributes"]["oauth.client_id"], "0oaclient");
    let clone = stored(&server, github_id("gh-1")).expect("gh-1 is stored");
    assert_eq!(clone["kind"], "data_access");
    assert_eq!(clone["source"]["type"], "github");
    assert_eq!(clone["actor"]["current"]["type"], "service");
    assert_eq!(clone["target"]["resource"], "acme/payments");
    assert_eq!(clone["target"]["system"], "github.com/acme");
    let member = stored(&server, github_id("gh-2")).expect("gh-2 is stored");
    assert_eq!(member["kind"], "privilege_change");
}

#[test]
fn the_okta_and_github_endpoints_map_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let at = "2026-11-25T10:00:00.000Z";
    let answer = post(
        &server,
        "/v1/ingest/okta",
        json!([
            okta("api-ok-1", "user.account.privilege.grant", None, at),
            7
        ]),
    );
    assert_eq!(
        (answer["accepted"].clone(), answer["rejected"].clone()),
        (json!(1), json!(1)),
        "{answer}"
    );
    assert_eq!(answer["errors"][0]["message"], "a record is a JSON object");
    let granted = stored(&server, okta_id("api-ok-1")).unwrap();
    assert_eq!(granted["kind"], "privilege_change");
    assert_eq!(granted["attribution"]["method"], "unattributed");

    let answer = post(
        &server,
        "/v1/ingest/github",
        json!([
            github("api-gh-1", "repo.create", None, 1795600800000),
            {"actor": "nobody"}
        ]),
    );
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["errors"][0]["path"], "action");
    assert_eq!(
        stored(&server, github_id("api-gh-1")).unwrap()["action"],
        "repo.create"
    );
}

#[test]
fn records_of_a_bound_oauth_client_are_attributed_to_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let declare = |client: &str, run: &str| {
        let (status, answer) = call(
            &server,
            reqwest::Method::POST,
            "/v1/bindings",
            &server.token,
            Body::Json(json!({
                "key": {"type": "oauth_client", "value": client},
                "holder": {"root": {"type": "human", "id": "alice@example.com"},
                           "current": {"type": "agent", "id": "release-agent", "run_id": run}},
                "valid_from": "2026-01-01T00:00:00Z"
            })),
        );
        assert_eq!(status, 201, "{answer}");
    };
    declare("0oaagent", "run-okta");
    declare("845120", "run-github");
    let at = "2026-11-25T10:00:00.000Z";
    let answer = post(
        &server,
        "/v1/ingest/okta",
        json!([
            okta(
                "bind-ok-1",
                "app.oauth2.as.token.grant.access_token",
                Some("0oaagent"),
                at
            ),
            okta(
                "bind-ok-2",
                "app.oauth2.as.token.grant.access_token",
                Some("0oaother"),
                at
            ),
        ]),
    );
    assert_eq!(answer["accepted"], 2, "{answer}");
    let answer = post(
        &server,
        "/v1/ingest/github",
        json!([github(
            "bind-gh-1",
            "git.clone",
            Some(845120),
            1795600800000
        )]),
    );
    assert_eq!(answer["accepted"], 1, "{answer}");

    let bound = stored(&server, okta_id("bind-ok-1")).unwrap();
    assert_eq!(bound["attribution"]["method"], "bound", "{bound}");
    assert_eq!(bound["actor"]["agents"][0]["run_id"], "run-okta", "{bound}");
    assert_eq!(bound["actor"]["root"]["id"], "alice@example.com");
    let other = stored(&server, okta_id("bind-ok-2")).unwrap();
    assert_eq!(other["attribution"]["method"], "unattributed", "{other}");
    let clone = stored(&server, github_id("bind-gh-1")).unwrap();
    assert_eq!(clone["attribution"]["method"], "bound", "{clone}");
    assert_eq!(
        clone["actor"]["agents"][0]["run_id"], "run-github",
        "{clone}"
    );
}
