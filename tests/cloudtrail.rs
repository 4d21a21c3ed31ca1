//! CloudTrail records end to end, through the real binary: a delivered
//! `.json.gz` file and an NDJSON export sent with `custody ingest --format
//! cloudtrail DIR`, and a gzip body posted to `POST /v1/ingest/cloudtrail`.
//! Broken records are reported with where and why; the rest is stored, each
//! as an event keeping its raw record, under an id derived from its
//! `eventID`.

mod common;

use std::io::Write as _;

use std::process::Output;
use std::time::Duration;

use common::{Body, Server, call, call_ok, mint_agent_token};
use serde_json::{Value, json};

/// A CloudTrail record of `name` by an assumed-role session.
fn record(id: &str, name: &str, key: &str) -> Value {
    json!({
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": "AROAEXAMPLE:deploy-run-0.d",
            "arn": "arn:aws:sts::111122223333:assumed-role/deployer/deploy-run-0.d",
            "accountId": "111122223333",
            "accessKeyId": "ASIAEXAMPLE",
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "arn": "arn:aws:iam::111122223333:role/deployer"},
                "attributes": {"creationDate": "2026-11-25T10:00:00Z", "mfaAuthenticated": "false"},
                "sourceIdentity": "run-0.d"
            }
        },
        "eventTime": "2026-11-25T10:05:12Z",
        "eventSource": "s3.amazonaws.com",
        "eventName": name,
        "awsRegion": "us-east-1",
        "requestParameters": {"bucketName": "payroll", "key": key},
        "responseElements": null,
        "requestID": format!("req-{id}"),
        "eventID": id,
        "readOnly": true,
        "eventType": "AwsApiCall",
        "managementEvent": false,
        "recipientAccountId": "111122223333",
        "eventCategory": "Data"
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The stored event imported from the record whose `eventID` is `id`.
fn stored(server: &Server, id: &str) -> Option<Value> {
    let uuid = uuid::Uuid::new_v5(&custody_import::cloudtrail::NAMESPACE, id.as_bytes());
    let (status, answer) = call(
        server,
        reqwest::Method::GET,
        &format!("/v1/events/{uuid}"),
        &server.token,
        Body::None,
    );
    (status == 200).then(|| answer["event"].clone())
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn ingest_sends_delivered_files_and_reports_broken_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let logs = dir
        .path()
        .join("AWSLogs/111122223333/CloudTrail/us-east-1/2026/11/25");
    std::fs::create_dir_all(&logs).unwrap();

    // A delivered file: one line, gzipped; its second record is no object.
    let delivered = format!(
        "{{\"Records\":[{},[\"not a record\"],{}]}}",
        record("ev-1", "GetObject", "q3.csv"),
        record("ev-2", "PutObject", "q4.csv"),
    );
    let file = logs.join("111122223333_CloudTrail_us-east-1_20261125T1005Z_a.json.gz");
    std::fs::write(&file, gzip(delivered.as_bytes())).unwrap();
    // An NDJSON export with a broken line.
    let export = format!(
        "{}\n{{\"eventName\": \n{}\n",
        record("ev-3", "GetObject", "a.csv"),
        record("ev-4", "DeleteObject", "b.csv"),
    );
    let ndjson = dir.path().join("AWSLogs/export.ndjson");
    std::fs::write(&ndjson, export).unwrap();
    // A delivered file cut short: the records before the cut are sent.
    let many: Vec<String> = (0..200)
        .map(|i| record(&format!("cut-{i:03}"), "GetObject", &format!("{i}.csv")).to_string())
        .collect();
    let whole = gzip(format!("{{\"Records\":[{}]}}", many.join(",")).as_bytes());
    let cut = logs.join("111122223333_CloudTrail_us-east-1_20261125T1010Z_b.json.gz");
    std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).unwrap();

    let state = dir.path().join("state");
    let ingest = || {
        server.cli(&[
            "ingest",
            "--format",
            "cloudtrail",
            "--state-dir",
            state.to_str().unwrap(),
            dir.path().join("AWSLogs").to_str().unwrap(),
        ])
    };
    let first = ingest();
    let errors = stderr(&first);
    assert_eq!(first.status.code(), Some(2), "{errors}");
    assert!(
        errors.contains(&format!(
            "{}:1: record 1: record: a record is a JSON object",
            file.display()
        )),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{}:2: record: truncated JSON", ndjson.display())),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{}: the gzip stream is truncated", cut.display())),
        "{errors}"
    );

    for (id, action) in [
        ("ev-1", "s3:GetObject"),
        ("ev-2", "s3:PutObject"),
        ("ev-3", "s3:GetObject"),
        ("ev-4", "s3:DeleteObject"),
    ] {
        let event = stored(&server, id).unwrap_or_else(|| panic!("{id} is not stored"));
        assert_eq!(event["action"], action);
        assert_eq!(event["kind"], "data_access");
        assert_eq!(event["source"]["type"], "cloudtrail");
        assert_eq!(event["source"]["record_id"], id);
        assert_eq!(event["raw"]["eventID"], id);
        assert_eq!(event["actor"]["credential"]["type"], "aws_role_session");
        assert_eq!(event["target"]["system"], "aws:111122223333");
        assert_eq!(event["attributes"]["aws.source_identity"], "run-0.d");
    }
    let kept = (0..200)
        .filter(|i| stored(&server, &format!("cut-{i:03}")).is_some())
        .count();
    assert!(
        kept > 0 && kept < 200,
        "{kept} records of the cut file stored"
    );
    assert!(
        errors.ends_with(&format!(
            "sent {} events from 3 files; 4 refused; 0 skipped as already sent\n",
            4 + kept
        )),
        "{errors}"
    );

    // Sending everything again stores nothing twice.
    let again = server.cli(&[
        "ingest",
        "--format",
        "cloudtrail",
        "--restart",
        "--state-dir",
        state.to_str().unwrap(),
        dir.path().join("AWSLogs").to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    let (status, listed) = call(
        &server,
        reqwest::Method::GET,
        "/v1/events?limit=1000",
        &server.token,
        Body::None,
    );
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["events"].as_array().unwrap().len(), 4 + kept);
}

#[test]
fn the_cloudtrail_endpoint_takes_a_gzipped_records_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let body = format!(
        "{{\"Records\": [\n{},\n{{}},\n{}\n]}}",
        record("api-1", "GetObject", "q3.csv"),
        record("api-2", "GetObject", "q4.csv"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let post = |token: &str, body: Vec<u8>| {
        runtime.block_on(async {
            let response = reqwest::Client::new()
                .post(format!("{}/v1/ingest/cloudtrail", server.url))
                .bearer_auth(token)
                .header("content-encoding", "gzip")
                .body(body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    let (status, answer) = post(&server.token, gzip(body.as_bytes()));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"], 1);
    assert_eq!(
        answer["errors"],
        json!([{"index": 1, "line": 3, "path": "eventName",
                "message": "a CloudTrail record names its call in `eventName`"}])
    );
    assert_eq!(answer["ids"][1], Value::Null);
    for (n, id) in [(0, "api-1"), (2, "api-2")] {
        let event = stored(&server, id).unwrap();
        assert_eq!(answer["ids"][n], event["id"]);
        assert_eq!(event["attribution"]["method"], "unattributed");
        assert_eq!(
            event["actor"]["current"]["id"],
            "arn:aws:sts::111122223333:assumed-role/deployer/deploy-run-0.d"
        );
    }

    // A viewer may not ingest; a body without records is refused.
    let viewer = server.cli(&["token", "create", "--role", "viewer", "--name", "v"]);
    assert!(viewer.status.success(), "{}", stderr(&viewer));
    let viewer = String::from_utf8(viewer.stdout).unwrap();
    assert_eq!(post(viewer.trim(), gzip(body.as_bytes())).0, 403);
    assert_eq!(post(&server.token, gzip(b"  ")).0, 400);
}

/// Posts `body` to `POST /v1/ingest/cloudtrail` with `token`.
fn post_records(server: &Server, token: &str, body: Value) -> Value {
    let path = "/v1/ingest/cloudtrail";
    call_ok(server, reqwest::Method::POST, path, token, Body::Json(body))
}

#[test]
fn records_of_a_role_session_an_agent_opened_are_bound_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let agent = &mint_agent_token(&server, "alice@example.com", "deployer", "run-0.d");

    // The agent reports its own sts:AssumeRole record, as CloudTrail wrote
    // it, with its token.
    let now = chrono::Utc::now();
    let time = |minutes: i64| (now + chrono::Duration::minutes(minutes)).to_rfc3339();
    let expiration = (now + chrono::Duration::hours(1))
        .format("%b %-d, %Y, %-I:%M:%S %p")
        .to_string();
    let assume = json!({
        "eventVersion": "1.08",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLE",
                         "arn": "arn:aws:iam::111122223333:user/ci", "accountId": "111122223333",
                         "accessKeyId": "AKIAEXAMPLE", "userName": "ci"},
        "eventTime": time(-10),
        "eventSource": "sts.amazonaws.com",
        "eventName": "AssumeRole",
        "awsRegion": "us-east-1",
        "requestParameters": {"roleArn": "arn:aws:iam::111122223333:role/deployer",
                              "roleSessionName": "deploy-run-0.d", "sourceIdentity": "run-0.d"},
        "responseElements": {"credentials": {"accessKeyId": "ASIAEXAMPLE", "expiration": expiration},
                             "sourceIdentity": "run-0.d"},
        "eventID": "assume-1",
        "recipientAccountId": "111122223333"
    });
    let answer = post_records(&server, agent, assume);
    assert_eq!(answer["accepted"], 1, "{answer}");
    let assumed = stored(&server, "assume-1").unwrap();
    assert_eq!(
        assumed["attribution"]["method"], "authenticated",
        "{assumed}"
    );

    // The session's records, from the account's trail, are bound to the
    // agent under its human; another session's are not.
    let mut session = record("read-1", "GetObject", "q3.csv");
    session["eventTime"] = json!(time(-5));
    let mut other = record("read-2", "GetObject", "q4.csv");
    other["eventTime"] = json!(time(-5));
    other["userIdentity"]["arn"] = json!("arn:aws:sts::111122223333:assumed-role/deployer/other");
    other["userIdentity"]["accessKeyId"] = json!("ASIAOTHER");
    other["userIdentity"]["sessionContext"]["sourceIdentity"] = json!("someone-else");
    let answer = post_records(&server, &server.token, json!({"Records": [session, other]}));
    assert_eq!(answer["accepted"], 2, "{answer}");
    let bound = stored(&server, "read-1").unwrap();
    assert_eq!(bound["attribution"]["method"], "bound", "{bound}");
    assert_eq!(bound["actor"]["root"]["id"], "alice@example.com");
    assert_eq!(bound["actor"]["agents"][0]["run_id"], "run-0.d");
    let unbound = stored(&server, "read-2").unwrap();
    assert_eq!(
        unbound["attribution"]["method"], "unattributed",
        "{unbound}"
    );
}
