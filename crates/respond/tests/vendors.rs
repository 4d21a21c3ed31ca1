//! The HTTP responders (Okta, GitHub, Entra, webhooks) against scripted
//! peers on loopback: each checks the exact request (method, path, query,
//! headers, body), retries, idempotency, dry runs and that no secret leaks
//! into a record.

mod common;

use std::time::Duration;

use common::{Peer, assert_hidden, reply, responders, responders_with_env};
use custody_respond::{Config, Context, Outcome, Responders, Revocation, Secret};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const OKTA_TOKEN: &str = "00okta-secret-token-value";

fn okta(peer: &Peer) -> Responders {
    responders(&format!(
        "[responders.okta]\nbase_url = \"{}\"\ntoken = \"{OKTA_TOKEN}\"\n",
        peer.url
    ))
}

fn ctx() -> Context {
    Context {
        reason: "agent exfiltrated a secret".to_owned(),
        finding: Some("f-42".to_owned()),
        event: Some("0193e3c4-aaaa-7bbb-8ccc-000000000001".to_owned()),
        run: Some("run-7".to_owned()),
    }
}

fn clear(user: &str) -> Revocation {
    Revocation::OktaClearSessions {
        user: user.to_owned(),
    }
}

fn suspend(user: &str) -> Revocation {
    Revocation::OktaSuspend {
        user: user.to_owned(),
    }
}

#[tokio::test]
async fn okta_clears_sessions_and_oauth_tokens() {
    let peer = Peer::start(vec![reply(204, "")]).await;
    let record = okta(&peer).run(&clear("00u1abc"), &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::Done, "{record:?}");
    common::contract(&record);
    let seen = peer.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "DELETE");
    assert_eq!(request.path, "/api/v1/users/00u1abc/sessions");
    assert_eq!(request.query.as_deref(), Some("oauthTokens=true"));
    assert_eq!(
        request.header("authorization"),
        Some(&*format!("SSWS {OKTA_TOKEN}"))
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(request.body, "");
    assert_eq!((record.attempts, record.status), (1, Some(204)));
    assert_eq!(record.requests.len(), 1);
    assert_eq!(
        record.requests[0].url,
        format!(
            "{}/api/v1/users/00u1abc/sessions?oauthTokens=true",
            peer.url
        )
    );
    assert!(
        record.requests[0]
            .headers
            .contains(&("Authorization".to_owned(), "SSWS [redacted]".to_owned()))
    );
    assert_hidden(OKTA_TOKEN, &record);

    // Clearing again is harmless: Okta answers 204 again.
    let peer = Peer::start(vec![reply(204, "")]).await;
    let again = okta(&peer).run(&clear("00u1abc"), &ctx(), false).await;
    assert_eq!(again.outcome, Outcome::Done);
    common::contract(&again);
}

#[tokio::test]
async fn okta_ids_cannot_escape_their_path_segment() {
    let peer = Peer::start(vec![reply(204, "")]).await;
    okta(&peer)
        .run(&clear("alice@example.com/../../x?y=1"), &ctx(), false)
        .await;
    let seen = peer.seen();
    assert_eq!(seen[0].query.as_deref(), Some("oauthTokens=true"));
    assert!(
        seen[0]
            .path
            .starts_with("/api/v1/users/alice@example.com%2F..%2F..%2Fx%3Fy%3D1/"),
        "{}",
        seen[0].path
    );
}

#[tokio::test]
async fn okta_suspends_an_active_user() {
    let peer = Peer::start(vec![reply(200, "{}")]).await;
    let record = okta(&peer).run(&suspend("00u1abc"), &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::Done, "{record:?}");
    common::contract(&record);
    let seen = peer.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/api/v1/users/00u1abc/lifecycle/suspend");
    assert_eq!(seen[0].query, None);
    assert_eq!(
        seen[0].header("authorization"),
        Some(&*format!("SSWS {OKTA_TOKEN}"))
    );
    assert_eq!(seen[0].header("accept"), Some("application/json"));
    assert_eq!(seen[0].header("content-length"), Some("0"));
}

/// Okta suspends only ACTIVE users; a second suspend gets a 400, and the
/// user read back is SUSPENDED.
#[tokio::test]
async fn okta_suspend_of_a_suspended_user_is_already_done() {
    let error = r#"{"errorCode":"E0000001","errorSummary":"Api validation failed: suspend","errorLink":"E0000001","errorId":"oae1","errorCauses":[{"errorSummary":"Cannot suspend a user that is not active"}]}"#;
    let peer = Peer::start(vec![
        reply(400, error),
        reply(200, r#"{"id":"00u1abc","status":"SUSPENDED"}"#),
    ])
    .await;
    let record = okta(&peer).run(&suspend("00u1abc"), &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::AlreadyDone, "{record:?}");
    common::contract(&record);
    let seen = peer.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("GET", "/api/v1/users/00u1abc")
    );
    assert_eq!(
        seen[1].header("authorization"),
        Some(&*format!("SSWS {OKTA_TOKEN}"))
    );
    assert_eq!(record.requests.len(), 2);
    assert_eq!(record.attempts, 2);

    // A user in another state is a failure that says why.
    let peer = Peer::start(vec![
        reply(400, error),
        reply(200, r#"{"id":"00u1abc","status":"DEPROVISIONED"}"#),
    ])
    .await;
    let record = okta(&peer).run(&suspend("00u1abc"), &ctx(), false).await;
    let Outcome::Failed { reason } = &record.outcome else {
        panic!("{record:?}")
    };
    common::contract(&record);
    assert_eq!(
        reason,
        "okta: suspending the user: HTTP 400: Api validation failed: suspend: \
         Cannot suspend a user that is not active (E0000001); the user's status is DEPROVISIONED"
    );
}

#[tokio::test]
async fn retries_a_503_then_succeeds() {
    let peer = Peer::start(vec![reply(503, "busy"), reply(204, "")]).await;
    let record = okta(&peer).run(&clear("00u1"), &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::Done, "{record:?}");
    common::contract(&record);
    assert_eq!(peer.seen().len(), 2);
    assert_eq!(record.attempts, 2);
    assert_eq!(record.requests[0].attempts, 2);
    assert_eq!(record.status, Some(204));
}

#[tokio::test]
async fn honours_retry_after() {
    let peer = Peer::start(vec![
        reply(429, r#"{"errorCode":"E0000047","errorSummary":"API call exceeded rate limit due to too many requests."}"#)
            .with("Retry-After", "1"),
        reply(204, ""),
    ])
    .await;
    let record = okta(&peer).run(&clear("00u1"), &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::Done, "{record:?}");
    common::contract(&record);
    let seen = peer.seen();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    // The backoff alone would wait 20 ms.
    assert!(waited >= Duration::from_millis(950), "waited {waited:?}");
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let peer = Peer::start(vec![reply(502, "bad gateway"); 5]).await;
    let record = okta(&peer).run(&clear("00u1"), &ctx(), false).await;
    let Outcome::Failed { reason } = &record.outcome else {
        panic!("{record:?}")
    };
    common::contract(&record);
    assert_eq!(peer.seen().len(), 3);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.status, Some(502));
    assert!(
        reason.contains("HTTP 502") && reason.contains("gave up after 3 attempts"),
        "{reason}"
    );
}

#[tokio::test]
async fn does_not_retry_other_4xx() {
    let peer = Peer::start(vec![reply(
        404,
        r#"{"errorCode":"E0000007","errorSummary":"Not found: Resource not found: 00u404 (User)","errorId":"x","errorCauses":[]}"#,
    )])
    .await;
    let record = okta(&peer).run(&suspend("00u404"), &ctx(), false).await;
    assert_eq!(peer.seen().len(), 1);
    assert_eq!(record.attempts, 1);
    assert_eq!(
        record.outcome,
        Outcome::Failed {
            reason: "okta: suspending the user: HTTP 404: Not found: Resource not found: 00u404 (User) (E0000007)".to_owned()
        }
    );
}

#[tokio::test]
async fn transport_errors_are_retried_then_reported() {
    // A port nothing listens on: bind one, then drop it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let record = responders(&format!(
        "[responders.okta]\nbase_url = \"{url}\"\ntoken = \"{OKTA_TOKEN}\"\n"
    ))
    .run(&clear("00u1"), &ctx(), false)
    .await;
    let Outcome::Failed { reason } = &record.outcome else {
        panic!("{record:?}")
    };
    common::contract(&record);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.status, None);
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert_hidden(OKTA_TOKEN, &record);
}

#[tokio::test]
async fn dry_runs_send_nothing() {
    let peer = Peer::start(vec![]).await;
    let hook_secret = "whsec-dry";
    let all = responders(&format!(
        r#"
[responders.okta]
base_url = "{url}"
token = "{OKTA_TOKEN}"
[responders.github]
api_url = "{url}"
[responders.entra]
tenant = "t1"
client_id = "c1"
client_secret = "entra-secret-dry"
login_url = "{url}"
graph_url = "{url}"
[[responders.webhook]]
name = "soar"
url = "{url}/hook"
secret = "{hook_secret}"
"#,
        url = peer.url
    ));
    let credential = "ghp_dryrunCredential0000000000000000000";
    for (what, requests) in [
        (clear("00u1"), 1),
        (suspend("00u1"), 1),
        (
            Revocation::GithubRevokeCredential {
                credential: Secret::new(credential),
            },
            1,
        ),
        (
            Revocation::EntraRevokeSessions {
                user: "u1".to_owned(),
            },
            2,
        ),
        (
            Revocation::EntraDisableServicePrincipal {
                id: "sp1".to_owned(),
            },
            3,
        ),
        (
            Revocation::Webhook {
                name: "soar".to_owned(),
                action: "disable_agent".to_owned(),
                target: "run-7".to_owned(),
            },
            1,
        ),
    ] {
        let record = all.run(&what, &ctx(), true).await;
        assert_eq!(record.outcome, Outcome::DryRun, "{record:?}");
        common::contract(&record);
        assert!(record.dry_run);
        assert_eq!(record.attempts, 0);
        assert_eq!(record.requests.len(), requests, "{record:?}");
        assert!(
            record
                .requests
                .iter()
                .all(|r| r.attempts == 0 && r.status.is_none())
        );
        for secret in [OKTA_TOKEN, credential, "entra-secret-dry", hook_secret] {
            assert_hidden(secret, &record);
        }
    }
    assert!(peer.seen().is_empty(), "{:?}", peer.seen());

    let record = all.run(&suspend("00u1"), &ctx(), true).await;
    let request = &record.requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.url,
        format!("{}/api/v1/users/00u1/lifecycle/suspend", peer.url)
    );
    assert_eq!(
        request.headers,
        [
            ("Authorization".to_owned(), "SSWS [redacted]".to_owned()),
            ("Accept".to_owned(), "application/json".to_owned())
        ]
    );
}

#[tokio::test]
async fn secrets_can_come_from_the_environment() {
    let peer = Peer::start(vec![reply(204, "")]).await;
    let responders = responders_with_env(
        &format!("[responders.okta]\nbase_url = \"{}\"\n", peer.url),
        &[("CUSTODY_OKTA_TOKEN", "env-token-123")],
    );
    let record = responders.run(&clear("00u1"), &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::Done);
    common::contract(&record);
    assert_eq!(
        peer.seen()[0].header("authorization"),
        Some("SSWS env-token-123")
    );
    assert_hidden("env-token-123", &record);
    assert!(!format!("{responders:?}").contains("env-token-123"));
}

#[tokio::test]
async fn a_missing_secret_is_a_configuration_error_naming_the_variable() {
    let config: Config =
        toml::from_str("[okta]\nbase_url = \"https://example.okta.com\"\n").unwrap();
    let error = Responders::with_env(&config, &|_| None).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the Okta API token is not set: give it in the configuration or in the environment variable `CUSTODY_OKTA_TOKEN`"
    );
}

/// The configuration example in the crate's documentation.
const EXAMPLE: &str = r#"
[responders.retry]
max_attempts = 5
initial_backoff_ms = 500
max_backoff_ms = 10000
max_elapsed_ms = 60000
request_timeout_ms = 15000

[responders.aws]
region = "us-east-1"

[responders.okta]
base_url = "https://example.okta.com"
token_env = "CUSTODY_OKTA_TOKEN"
revoke_oauth_tokens = true

[responders.github]
api_url = "https://api.github.com"

[responders.entra]
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret_env = "CUSTODY_ENTRA_CLIENT_SECRET"

[[responders.webhook]]
name = "soar"
url = "https://soar.example.com/hooks/custody"
secret_env = "CUSTODY_WEBHOOK_SECRET"
"#;

#[tokio::test]
async fn the_documented_configuration_loads() {
    #[derive(serde::Deserialize)]
    struct File {
        responders: Config,
    }
    let file: File = toml::from_str(EXAMPLE).unwrap();
    assert_eq!(
        file.responders.retry,
        custody_respond::RetryConfig::default()
    );
    let entra = file.responders.entra.as_ref().unwrap();
    assert_eq!(entra.login_url, "https://login.microsoftonline.com");
    assert_eq!(entra.graph_url, "https://graph.microsoft.com");
    let env = |name: &str| {
        [
            ("CUSTODY_OKTA_TOKEN", "t1"),
            ("CUSTODY_ENTRA_CLIENT_SECRET", "t2"),
            ("CUSTODY_WEBHOOK_SECRET", "t3"),
        ]
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| (*v).to_owned())
    };
    let built = Responders::with_env(&file.responders, &env).unwrap();
    let debug = format!("{built:?}");
    for secret in ["\"t1\"", "\"t2\"", "\"t3\""] {
        assert!(!debug.contains(secret), "{debug}");
    }
    // Unknown keys are refused, so a typo is not silently ignored.
    let typo =
        toml::from_str::<File>("[responders.okta]\nbase_url = \"https://x\"\ntokn = \"t\"\n");
    assert!(typo.is_err());
}

/// The playbook executor runs actions on tokio tasks of their own.
#[tokio::test]
async fn runs_on_a_spawned_task() {
    let peer = Peer::start(vec![reply(204, "")]).await;
    let responders = std::sync::Arc::new(okta(&peer));
    let task = {
        let responders = responders.clone();
        tokio::spawn(async move { responders.run(&clear("00u1"), &ctx(), false).await })
    };
    assert_eq!(task.await.unwrap().outcome, Outcome::Done);
}

#[tokio::test]
async fn unconfigured_responders_fail_clearly() {
    let none = Responders::new(&Config::default()).unwrap();
    for (what, reason) in [
        (suspend("00u1"), "the okta responder is not configured"),
        (
            Revocation::AwsRevokeRoleSessions {
                role: "r".to_owned(),
            },
            "the aws responder is not configured",
        ),
        (
            Revocation::GithubRevokeCredential {
                credential: Secret::new("ghp_x"),
            },
            "the github responder is not configured",
        ),
        (
            Revocation::EntraRevokeSessions {
                user: "u".to_owned(),
            },
            "the entra responder is not configured",
        ),
        (
            Revocation::Webhook {
                name: "soar".to_owned(),
                action: "a".to_owned(),
                target: "t".to_owned(),
            },
            "no webhook named `soar` is configured",
        ),
    ] {
        let record = none.run(&what, &ctx(), false).await;
        assert_eq!(
            record.outcome,
            Outcome::Failed {
                reason: reason.to_owned()
            }
        );
        assert!(record.requests.is_empty());
        assert!(!record.detail.is_empty());
    }
}

// GitHub.

const GITHUB_CREDENTIAL: &str = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";

fn revoke_credential() -> Revocation {
    Revocation::GithubRevokeCredential {
        credential: Secret::new(GITHUB_CREDENTIAL),
    }
}

#[tokio::test]
async fn github_revokes_a_credential_unauthenticated() {
    let peer = Peer::start(vec![reply(202, "")]).await;
    let record = responders(&format!(
        "[responders.github]\napi_url = \"{}\"\n",
        peer.url
    ))
    .run(&revoke_credential(), &ctx(), false)
    .await;
    assert_eq!(record.outcome, Outcome::Done, "{record:?}");
    common::contract(&record);
    let seen = peer.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/credentials/revoke")
    );
    assert_eq!(
        seen[0].header("accept"),
        Some("application/vnd.github+json")
    );
    assert_eq!(seen[0].header("x-github-api-version"), Some("2022-11-28"));
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(
        seen[0].json(),
        serde_json::json!({"credentials": [GITHUB_CREDENTIAL]})
    );
    assert_eq!(
        record.requests[0].body.as_deref(),
        Some(r#"{"credentials":["[redacted]"]}"#)
    );
    assert!(
        record.target.starts_with("ghp sha256:"),
        "{}",
        record.target
    );
    assert_hidden(GITHUB_CREDENTIAL, &record);
    assert!(!format!("{:?}", revoke_credential()).contains(GITHUB_CREDENTIAL));
}

#[tokio::test]
async fn github_enterprise_server_takes_a_token_under_its_api_path() {
    let peer = Peer::start(vec![reply(202, "")]).await;
    let record = responders(&format!(
        "[responders.github]\napi_url = \"{}/api/v3\"\ntoken = \"ghes-admin-token\"\n",
        peer.url
    ))
    .run(&revoke_credential(), &ctx(), false)
    .await;
    assert_eq!(record.outcome, Outcome::Done, "{record:?}");
    common::contract(&record);
    let seen = peer.seen();
    assert_eq!(seen[0].path, "/api/v3/credentials/revoke");
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer ghes-admin-token")
    );
    assert_hidden("ghes-admin-token", &record);
    assert_hidden(GITHUB_CREDENTIAL, &record);
}

#[tokio::test]
async fn github_validation_errors_are_not_retried() {
    let peer = Peer::start(vec![reply(
        422,
        r#"{"message":"Validation Failed","errors":[{"resource":"Credentials","code":"invalid"}],"documentation_url":"https://docs.github.com/rest"}"#,
    )])
    .await;
    let record = responders(&format!(
        "[responders.github]\napi_url = \"{}\"\n",
        peer.url
    ))
    .run(&revoke_credential(), &ctx(), false)
    .await;
    assert_eq!(peer.seen().len(), 1);
    let Outcome::Failed { reason } = &record.outcome else {
        panic!("{record:?}")
    };
    common::contract(&record);
    assert!(
        reason.starts_with("github: revoking the credential: HTTP 422: Validation Failed"),
        "{reason}"
    );
    assert_hidden(GITHUB_CREDENTIAL, &record);
}

#[tokio::test]
async fn github_errors_that_echo_the_credential_are_scrubbed() {
    let peer = Peer::start(vec![reply(
        422,
        &format!(r#"{{"message":"Validation Failed: {GITHUB_CREDENTIAL} is malformed"}}"#),
    )])
    .await;
    let record = responders(&format!(
        "[responders.github]\napi_url = \"{}\"\n",
        peer.url
    ))
    .run(&revoke_credential(), &ctx(), false)
    .await;
    assert!(
        matches!(record.outcome, Outcome::Failed { .. }),
        "{record:?}"
    );
    assert_hidden(GITHUB_CREDENTIAL, &record);
}

// Microsoft Entra.

const ENTRA_SECRET: &str = "entra~client~secret~value";
const ACCESS_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.graph-access-token";

fn entra(peer: &Peer) -> Responders {
    responders_with_env(
        &format!(
            r#"
[responders.entra]
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
login_url = "{url}/login"
graph_url = "{url}/graph"
"#,
            url = peer.url
        ),
        &[("CUSTODY_ENTRA_CLIENT_SECRET", ENTRA_SECRET)],
    )
}

fn token_reply() -> common::Reply {
    reply(
        200,
        &format!(
            r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"{ACCESS_TOKEN}"}}"#
        ),
    )
}

fn check_token_request(seen: &common::Seen) {
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.path,
        "/login/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        seen.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{}", seen.body))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        field("client_id"),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(field("client_secret"), Some(ENTRA_SECRET));
    assert_eq!(field("scope"), Some("https://graph.microsoft.com/.default"));
    assert_eq!(field("grant_type"), Some("client_credentials"));
}

#[tokio::test]
async fn entra_revokes_sign_in_sessions_with_an_app_token() {
    let peer = Peer::start(vec![
        token_reply(),
        reply(200, r#"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean","value":true}"#),
        reply(200, r#"{"value":true}"#),
    ])
    .await;
    let entra = entra(&peer);
    let what = Revocation::EntraRevokeSessions {
        user: "87d349ed-44d7-43e1-9a83-5f2406dee5bd".to_owned(),
    };
    let record = entra.run(&what, &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::Done, "{record:?}");
    common::contract(&record);
    let seen = peer.seen();
    assert_eq!(seen.len(), 2);
    check_token_request(&seen[0]);
    assert_eq!(seen[1].method, "POST");
    assert_eq!(
        seen[1].path,
        "/graph/v1.0/users/87d349ed-44d7-43e1-9a83-5f2406dee5bd/revokeSignInSessions"
    );
    assert_eq!(
        seen[1].header("authorization"),
        Some(&*format!("Bearer {ACCESS_TOKEN}"))
    );
    assert_eq!(seen[1].header("content-length"), Some("0"));
    assert_eq!(record.requests.len(), 2);
    assert!(
        record.requests[0]
            .body
            .as_deref()
            .unwrap()
            .contains("client_secret=%5Bredacted%5D")
    );
    assert_hidden(ENTRA_SECRET, &record);
    assert_hidden(ACCESS_TOKEN, &record);

    // The token is reused: a second revocation is one Graph call.
    let record = entra.run(&what, &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::Done);
    common::contract(&record);
    assert_eq!(peer.seen().len(), 3);
    assert_eq!(record.requests.len(), 1);
}

#[tokio::test]
async fn entra_disables_a_service_principal_once() {
    let peer = Peer::start(vec![
        token_reply(),
        reply(200, r#"{"accountEnabled":true}"#),
        reply(204, ""),
        reply(200, r#"{"accountEnabled":false}"#),
    ])
    .await;
    let entra = entra(&peer);
    let what = Revocation::EntraDisableServicePrincipal {
        id: "sp-0001".to_owned(),
    };
    let record = entra.run(&what, &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::Done, "{record:?}");
    common::contract(&record);
    let seen = peer.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].method, "GET");
    assert_eq!(seen[1].path, "/graph/v1.0/servicePrincipals/sp-0001");
    assert_eq!(seen[1].query.as_deref(), Some("%24select=accountEnabled"));
    assert_eq!(seen[2].method, "PATCH");
    assert_eq!(seen[2].path, "/graph/v1.0/servicePrincipals/sp-0001");
    assert_eq!(
        seen[2].header("authorization"),
        Some(&*format!("Bearer {ACCESS_TOKEN}"))
    );
    assert_eq!(seen[2].header("content-type"), Some("application/json"));
    assert_eq!(seen[2].json(), serde_json::json!({"accountEnabled": false}));

    let again = entra.run(&what, &ctx(), false).await;
    assert_eq!(again.outcome, Outcome::AlreadyDone, "{again:?}");
    common::contract(&again);
    assert_eq!(peer.seen().len(), 4, "no second PATCH");
}

#[tokio::test]
async fn entra_token_errors_name_the_cause() {
    let peer = Peer::start(vec![reply(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#,
    )])
    .await;
    let record = entra(&peer)
        .run(
            &Revocation::EntraRevokeSessions {
                user: "u1".to_owned(),
            },
            &ctx(),
            false,
        )
        .await;
    assert_eq!(
        record.outcome,
        Outcome::Failed {
            reason: "entra: getting a token: HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided.".to_owned()
        }
    );
    assert_eq!(peer.seen().len(), 1);
    assert_hidden(ENTRA_SECRET, &record);
}

#[tokio::test]
async fn entra_graph_errors_name_the_cause() {
    let peer = Peer::start(vec![
        token_reply(),
        reply(404, r#"{"error":{"code":"Request_ResourceNotFound","message":"Resource 'u404' does not exist or one of its queried reference-property objects are not present.","innerError":{}}}"#),
    ])
    .await;
    let record = entra(&peer)
        .run(
            &Revocation::EntraRevokeSessions {
                user: "u404".to_owned(),
            },
            &ctx(),
            false,
        )
        .await;
    let Outcome::Failed { reason } = &record.outcome else {
        panic!("{record:?}")
    };
    common::contract(&record);
    assert!(
        reason.starts_with(
            "entra: revoking sign-in sessions: HTTP 404: Request_ResourceNotFound: Resource 'u404'"
        ),
        "{reason}"
    );
}

// Webhooks.

const HOOK_SECRET: &str = "whsec_5f2a9c0e7d";

fn hook(peer: &Peer) -> Responders {
    responders_with_env(
        &format!(
            "[[responders.webhook]]\nname = \"soar\"\nurl = \"{}/hooks/custody\"\n",
            peer.url
        ),
        &[("CUSTODY_WEBHOOK_SECRET", HOOK_SECRET)],
    )
}

fn notify() -> Revocation {
    Revocation::Webhook {
        name: "soar".to_owned(),
        action: "disable_agent".to_owned(),
        target: "run-7".to_owned(),
    }
}

/// What a receiver does: HMAC-SHA256 over "{timestamp}.{raw body}".
fn verify(seen: &common::Seen, secret: &str) -> bool {
    let timestamp = seen.header("x-custody-timestamp").unwrap();
    let signature = seen.header("x-custody-signature").unwrap();
    let Some(hex_mac) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{}", seen.body).as_bytes());
    mac.verify_slice(&hex::decode(hex_mac).unwrap()).is_ok()
}

#[tokio::test]
async fn webhooks_post_a_signed_description_of_the_action() {
    let peer = Peer::start(vec![reply(200, "ok")]).await;
    let record = hook(&peer).run(&notify(), &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::Done, "{record:?}");
    common::contract(&record);
    assert_eq!(record.responder, "webhook:soar");
    let seen = peer.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/hooks/custody")
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert!(
        verify(request, HOOK_SECRET),
        "the signature does not verify"
    );
    assert!(!verify(request, "another secret"));
    let timestamp: i64 = request
        .header("x-custody-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    let body = request.json();
    assert_eq!(body["action"], "disable_agent");
    assert_eq!(body["target"], "run-7");
    assert_eq!(body["reason"], "agent exfiltrated a secret");
    assert_eq!(body["finding"], "f-42");
    assert_eq!(body["event"], "0193e3c4-aaaa-7bbb-8ccc-000000000001");
    assert_eq!(body["run"], "run-7");
    assert_eq!(
        body["delivery"],
        request.header("x-custody-delivery").unwrap()
    );
    let time = chrono::DateTime::parse_from_rfc3339(body["time"].as_str().unwrap()).unwrap();
    assert_eq!(time.timestamp(), timestamp);
    assert_eq!(
        record.requests[0].body.as_deref(),
        Some(request.body.as_str())
    );
    assert_hidden(HOOK_SECRET, &record);
}

#[tokio::test]
async fn webhook_409_is_already_done_and_retries_resend_the_same_signature() {
    let peer = Peer::start(vec![reply(500, "oops"), reply(409, "seen it")]).await;
    let record = hook(&peer).run(&notify(), &ctx(), false).await;
    assert_eq!(record.outcome, Outcome::AlreadyDone, "{record:?}");
    common::contract(&record);
    assert_eq!(record.attempts, 2);
    let seen = peer.seen();
    assert_eq!(seen[0].body, seen[1].body);
    assert_eq!(
        seen[0].header("x-custody-signature"),
        seen[1].header("x-custody-signature")
    );
    assert!(verify(&seen[1], HOOK_SECRET));
}

#[tokio::test]
async fn revocations_read_from_playbook_json() {
    let what: Revocation = serde_json::from_str(
        r#"{"type":"aws_deactivate_access_key","access_key_id":"AKIAEXAMPLE"}"#,
    )
    .unwrap();
    assert_eq!(
        what,
        Revocation::AwsDeactivateAccessKey {
            access_key_id: "AKIAEXAMPLE".to_owned(),
            user: None
        }
    );
    let what: Revocation =
        serde_json::from_str(r#"{"type":"github_revoke_credential","credential":"ghp_zzz"}"#)
            .unwrap();
    assert_eq!(
        serde_json::to_string(&what).unwrap(),
        r#"{"type":"github_revoke_credential","credential":"[redacted]"}"#
    );
}
