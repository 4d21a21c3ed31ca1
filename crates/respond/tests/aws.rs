//! The AWS responder against a real local IAM: moto's server, installed
//! from PyPI by `tests/peers/install-moto.sh` into `target/aws-peers` (the
//! test runs the script itself; it does nothing when moto is there). Setup
//! and read-back go through the same IAM API, with the AWS SDK. Skipped,
//! with a message, only when python3 with venv is not available.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_iam::Client;
use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iam::types::StatusType;
use aws_smithy_http_client::tls;
use custody_respond::{Context, Outcome, Responders, ResponseRecord, Revocation};

/// moto takes any credentials; this one must still never show up.
const SECRET_KEY: &str = "moto-secret-Access-Key-0123456789";

/// A moto server on a free loopback port, killed when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("aws-peers")
}

/// Installs moto if need be and starts it; `None` (after saying why) when
/// python3 or its venv module is missing.
async fn moto() -> Option<Moto> {
    let python_ok = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        eprintln!(
            "skipping: the AWS responder's tests need python3 with the venv module to install moto"
        );
        return None;
    }
    let dir = peers_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/install-moto.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("running install-moto.sh");
    assert!(
        output.status.success(),
        "moto is not installed in {} and installing it failed: {}; \
         `tests/peers/install-moto.sh` needs network access to PyPI",
        dir.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(dir.join("venv/bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    let http = reqwest::Client::new();
    loop {
        if http
            .get(format!("{}/moto-api/", moto.url))
            .send()
            .await
            .is_ok()
        {
            return Some(moto);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "moto_server did not answer on {} within 60 s",
            moto.url
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An IAM client of the test's own, for setup and read-back.
fn iam(moto: &Moto) -> Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_iam::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http_client)
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(Credentials::new("AKIAMOTO", SECRET_KEY, None, None, "test"))
        .build();
    Client::from_conf(config)
}

fn responders(moto: &Moto) -> Responders {
    common::responders(&format!(
        r#"
[responders.aws]
region = "us-east-1"
endpoint_url = "{}"
access_key_id = "AKIAMOTO"
secret_access_key = "{SECRET_KEY}"
"#,
        moto.url
    ))
}

fn ctx() -> Context {
    Context::new("agent key used from an unknown network")
}

async fn key_status(iam: &Client, user: &str, key: &str) -> StatusType {
    let listed = iam.list_access_keys().user_name(user).send().await.unwrap();
    listed
        .access_key_metadata()
        .iter()
        .find(|k| k.access_key_id() == Some(key))
        .and_then(|k| k.status().cloned())
        .unwrap()
}

fn actions(record: &ResponseRecord) -> Vec<String> {
    record
        .requests
        .iter()
        .map(|r| {
            let body = r.body.as_deref().unwrap_or("");
            let form = reqwest::Url::parse(&format!("http://x/?{body}")).unwrap();
            form.query_pairs()
                .find(|(k, _)| k == "Action")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect()
}

fn check_hidden(record: &ResponseRecord) {
    common::assert_hidden(SECRET_KEY, record);
}

#[tokio::test]
async fn deactivates_an_access_key_once() {
    let Some(moto) = moto().await else { return };
    let iam = iam(&moto);
    iam.create_user()
        .user_name("agent-bot")
        .send()
        .await
        .unwrap();
    let created = iam
        .create_access_key()
        .user_name("agent-bot")
        .send()
        .await
        .unwrap();
    let key = created.access_key().unwrap().access_key_id().to_owned();
    let agent_secret = created.access_key().unwrap().secret_access_key().to_owned();
    let responders = responders(&moto);
    let what = Revocation::AwsDeactivateAccessKey {
        access_key_id: key.clone(),
        user: None,
    };

    // A dry run changes nothing.
    let dry = responders.run(&what, &ctx(), true).await;
    assert_eq!(dry.outcome, Outcome::DryRun, "{dry:?}");
    common::contract(&dry);
    assert_eq!(
        actions(&dry),
        ["GetAccessKeyLastUsed", "ListAccessKeys", "UpdateAccessKey"]
    );
    assert_eq!(dry.attempts, 0);
    assert_eq!(
        key_status(&iam, "agent-bot", &key).await,
        StatusType::Active
    );

    // The user is looked up, the key read, then deactivated.
    let done = responders.run(&what, &ctx(), false).await;
    assert_eq!(done.outcome, Outcome::Done, "{done:?}");
    common::contract(&done);
    assert_eq!(
        actions(&done),
        ["GetAccessKeyLastUsed", "ListAccessKeys", "UpdateAccessKey"]
    );
    assert_eq!(done.attempts, 3);
    assert_eq!(done.status, Some(200));
    let update = &done.requests[2];
    assert_eq!(update.method, "POST");
    assert!(update.url.starts_with(&moto.url), "{}", update.url);
    let body = update.body.as_deref().unwrap();
    for part in [
        "Action=UpdateAccessKey",
        &format!("AccessKeyId={key}"),
        "Status=Inactive",
        "UserName=agent-bot",
        "Version=2010-05-08",
    ] {
        assert!(body.contains(part), "{part} not in {body}");
    }
    assert_eq!(
        key_status(&iam, "agent-bot", &key).await,
        StatusType::Inactive
    );

    // The dry run showed the very request the SDK then sent.
    let planned = responders
        .run(
            &Revocation::AwsDeactivateAccessKey {
                access_key_id: key.clone(),
                user: Some("agent-bot".to_owned()),
            },
            &ctx(),
            true,
        )
        .await;
    assert_eq!(planned.requests[1].body, update.body);
    assert_eq!(planned.requests[1].url, format!("{}/", moto.url));

    // Again: already inactive, and no update is sent.
    let again = responders.run(&what, &ctx(), false).await;
    assert_eq!(again.outcome, Outcome::AlreadyDone, "{again:?}");
    common::contract(&again);
    assert_eq!(actions(&again), ["GetAccessKeyLastUsed", "ListAccessKeys"]);
    // Given the user, no lookup.
    let given = responders
        .run(
            &Revocation::AwsDeactivateAccessKey {
                access_key_id: key.clone(),
                user: Some("agent-bot".to_owned()),
            },
            &ctx(),
            false,
        )
        .await;
    assert_eq!(given.outcome, Outcome::AlreadyDone, "{given:?}");
    common::contract(&given);
    assert_eq!(actions(&given), ["ListAccessKeys"]);

    for record in [&dry, &done, &again, &given] {
        check_hidden(record);
        common::assert_hidden(&agent_secret, record);
    }
    assert!(!format!("{responders:?}").contains(SECRET_KEY));
}

#[tokio::test]
async fn a_key_not_among_the_users_keys_fails_naming_it() {
    let Some(moto) = moto().await else { return };
    let iam = iam(&moto);
    iam.create_user().user_name("someone").send().await.unwrap();
    let record = responders(&moto)
        .run(
            &Revocation::AwsDeactivateAccessKey {
                access_key_id: "AKIADOESNOTEXIST0000".to_owned(),
                user: Some("someone".to_owned()),
            },
            &ctx(),
            false,
        )
        .await;
    assert_eq!(
        record.outcome,
        Outcome::Failed {
            reason: "aws: access key AKIADOESNOTEXIST0000 is not among user someone's keys"
                .to_owned()
        }
    );
    let record = responders(&moto)
        .run(
            &Revocation::AwsDeactivateAccessKey {
                access_key_id: "AKIADOESNOTEXIST0000".to_owned(),
                user: Some("nobody".to_owned()),
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
        reason.starts_with("aws: listing the access keys of user nobody: HTTP 404: NoSuchEntity"),
        "{reason}"
    );
    assert_eq!(record.attempts, 1, "a 404 is not retried");
    check_hidden(&record);
}

#[tokio::test]
async fn revokes_a_roles_older_sessions_with_an_inline_deny() {
    let Some(moto) = moto().await else { return };
    let iam = iam(&moto);
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    iam.create_role()
        .role_name("agent-role")
        .assume_role_policy_document(trust)
        .send()
        .await
        .unwrap();
    let responders = responders(&moto);
    let what = Revocation::AwsRevokeRoleSessions {
        role: "agent-role".to_owned(),
    };

    let dry = responders.run(&what, &ctx(), true).await;
    assert_eq!(dry.outcome, Outcome::DryRun, "{dry:?}");
    common::contract(&dry);
    assert_eq!(actions(&dry), ["PutRolePolicy"]);
    let listed = iam
        .list_role_policies()
        .role_name("agent-role")
        .send()
        .await
        .unwrap();
    assert!(listed.policy_names().is_empty(), "a dry run wrote a policy");

    let before = chrono::Utc::now().timestamp();
    let done = responders.run(&what, &ctx(), false).await;
    let after = chrono::Utc::now().timestamp();
    assert_eq!(done.outcome, Outcome::Done, "{done:?}");
    common::contract(&done);
    assert_eq!(actions(&done), ["PutRolePolicy"]);
    assert_eq!(done.status, Some(200));

    let policy = iam
        .get_role_policy()
        .role_name("agent-role")
        .policy_name("CustodyRevokeOlderSessions")
        .send()
        .await
        .unwrap();
    // IAM returns the document URL-encoded.
    let encoded = policy.policy_document();
    let decoded: String = reqwest::Url::parse(&format!("http://x/?d={encoded}"))
        .unwrap()
        .query_pairs()
        .next()
        .unwrap()
        .1
        .into_owned();
    let document: serde_json::Value = serde_json::from_str(&decoded).unwrap();
    assert_eq!(document["Version"], "2012-10-17");
    let statement = &document["Statement"][0];
    assert_eq!(statement["Effect"], "Deny");
    assert_eq!(statement["Action"], serde_json::json!(["*"]));
    assert_eq!(statement["Resource"], serde_json::json!(["*"]));
    let cutoff = statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
        .as_str()
        .unwrap();
    assert!(cutoff.ends_with('Z'), "{cutoff}");
    let cutoff = chrono::DateTime::parse_from_rfc3339(cutoff)
        .unwrap()
        .timestamp();
    assert!(
        before <= cutoff && cutoff <= after,
        "{before} <= {cutoff} <= {after}"
    );

    // Again: the same single policy, with a cutoff no earlier.
    let again = responders.run(&what, &ctx(), false).await;
    assert_eq!(again.outcome, Outcome::Done, "{again:?}");
    common::contract(&again);
    let listed = iam
        .list_role_policies()
        .role_name("agent-role")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.policy_names(), ["CustodyRevokeOlderSessions"]);
    for record in [&dry, &done, &again] {
        check_hidden(record);
    }
}

/// No moto needed: an endpoint nothing listens on.
#[tokio::test]
async fn transport_errors_are_retried_and_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let record = common::responders(&format!(
        "[responders.aws]\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\n\
         access_key_id = \"AKIAMOTO\"\nsecret_access_key = \"{SECRET_KEY}\"\n"
    ))
    .run(
        &Revocation::AwsRevokeRoleSessions {
            role: "r".to_owned(),
        },
        &ctx(),
        false,
    )
    .await;
    let Outcome::Failed { reason } = &record.outcome else {
        panic!("{record:?}")
    };
    common::contract(&record);
    assert_eq!(record.attempts, 3, "{record:?}");
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    check_hidden(&record);
}

#[tokio::test]
async fn a_missing_role_fails_with_iams_error() {
    let Some(moto) = moto().await else { return };
    let record = responders(&moto)
        .run(
            &Revocation::AwsRevokeRoleSessions {
                role: "no-such-role".to_owned(),
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
            "aws: writing inline policy CustodyRevokeOlderSessions on role no-such-role: HTTP 404: NoSuchEntity"
        ),
        "{reason}"
    );
    check_hidden(&record);
}
