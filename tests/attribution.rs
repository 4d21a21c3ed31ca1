//! The attribution scenario end to end, through the real binary: a human's
//! agent spawns two sub-agents by token exchange; one assumes an AWS role
//! and acts with the session; records of that session arriving later from
//! another source are attributed to that sub-agent under the human, records
//! of other sessions are not, and the lineage shows the whole chain.
//!
//! The session's records arrive as AWS delivers them: a CloudTrail log file
//! (`{"Records": [...]}`) posted to `POST /v1/ingest/cloudtrail`.

mod common;

use common::{
    Body, Server, call, call_ok, exchange_token, mint_agent_token, post_event, stored_event,
};
use serde_json::{Value, json};

/// The blast radius of a node, written `kind:id`.
fn blast_radius(server: &Server, node: &str) -> Value {
    let (status, answer) = call(
        server,
        reqwest::Method::GET,
        &format!("/v1/blast-radius/{node}"),
        &server.token,
        Body::None,
    );
    assert_eq!(status, 200, "{answer}");
    answer["blast_radius"].clone()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// A CloudTrail data event of an assumed-role session of the `deployer`
/// role, as AWS writes it.
fn session_record(session: &str, source_identity: &str, action: &str) -> Value {
    json!({
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": format!("AROA3EXAMPLEDEPLOYER:{session}"),
            "arn": format!("arn:aws:sts::111122223333:assumed-role/deployer/{session}"),
            "accountId": "111122223333",
            "accessKeyId": "ASIA3EXAMPLE7SESSION",
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": "AROA3EXAMPLEDEPLOYER",
                    "arn": "arn:aws:iam::111122223333:role/deployer",
                    "accountId": "111122223333",
                    "userName": "deployer"
                },
                "attributes": {"creationDate": now(), "mfaAuthenticated": "false"},
                "sourceIdentity": source_identity
            }
        },
        "eventTime": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "eventSource": "s3.amazonaws.com",
        "eventName": action,
        "awsRegion": "eu-west-1",
        "sourceIPAddress": "203.0.113.7",
        "userAgent": "[aws-sdk-rust/1.3.0 os/linux lang/rust/1.95.0]",
        "requestParameters": {
            "bucketName": "payroll",
            "Host": "payroll.s3.eu-west-1.amazonaws.com",
            "key": "q3.csv"
        },
        "responseElements": null,
        "additionalEventData": {"SignatureVersion": "SigV4", "bytesTransferredIn": 0},
        "requestID": "8E3J5Q1XHD0B2NRP",
        "eventID": uuid::Uuid::new_v4().to_string(),
        "readOnly": action == "GetObject",
        "resources": [
            {"type": "AWS::S3::Object", "ARN": "arn:aws:s3:::payroll/q3.csv"},
            {"accountId": "111122223333", "type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::payroll"}
        ],
        "eventType": "AwsApiCall",
        "managementEvent": false,
        "recipientAccountId": "111122223333",
        "eventCategory": "Data"
    })
}

/// Posts `record` in a CloudTrail log file and returns its event as stored.
fn import(server: &Server, record: Value) -> Value {
    let answer = call_ok(
        server,
        reqwest::Method::POST,
        "/v1/ingest/cloudtrail",
        &server.token,
        Body::Json(json!({"Records": [record]})),
    );
    stored_event(server, answer["ids"][0].as_str().unwrap())
}

#[test]
fn a_sub_agents_role_session_is_attributed_to_it_under_its_human() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sensitive", "*payroll*"]);

    // alice's agent, and its two sub-agents.
    let release_bot = mint_agent_token(&server, "alice@example.com", "release-bot", "run-0");
    let deployer = exchange_token(&server, &release_bot, "deployer", "run-0.d");
    let reviewer = exchange_token(&server, &release_bot, "reviewer", "run-0.r");

    // Both act through the JSON API with their own tokens.
    let reviewed = post_event(
        &server,
        &reviewer,
        json!({"kind": "tool_call", "action": "tools/call", "observed_at": now(),
               "source": {"type": "api"}, "actor": {"current": {"type": "agent", "id": "reviewer"}},
               "target": {"tool": "read_file", "resource": "file:///repo/deploy.yaml"},
               "outcome": {"status": "success"}}),
    );
    assert_eq!(reviewed["attribution"]["method"], "authenticated");
    assert_eq!(reviewed["actor"]["current"]["run_id"], "run-0.r");
    // The deployer assumes the role, naming the session after its run and
    // setting its run as the source identity.
    let assumed = post_event(
        &server,
        &deployer,
        json!({"kind": "credential_use", "action": "sts:AssumeRole", "observed_at": now(),
               "source": {"type": "api"}, "actor": {"current": {"type": "agent", "id": "deployer"}},
               "target": {"resource": "arn:aws:iam::111122223333:role/deployer",
                          "system": "aws:111122223333"},
               "outcome": {"status": "success"},
               "attributes": {"aws.role_session_name": "deploy-run-0.d",
                              "aws.source_identity": "run-0.d"}}),
    );
    assert_eq!(assumed["attribution"]["method"], "authenticated");

    // Later, the records of the session arrive, by session name, and by
    // source identity alone after the session was renamed.
    let by_name = import(
        &server,
        session_record("deploy-run-0.d", "run-0.d", "GetObject"),
    );
    let by_identity = import(&server, session_record("renamed", "run-0.d", "PutObject"));
    for record in [&by_name, &by_identity] {
        assert_eq!(record["attribution"]["method"], "bound", "{record}");
        assert_eq!(record["actor"]["root"]["id"], "alice@example.com");
        let agents: Vec<&str> = record["actor"]["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["run_id"].as_str().unwrap())
            .collect();
        assert_eq!(agents, ["run-0", "run-0.d"], "{record}");
        assert!(
            record["actor"]["current"]["id"]
                .as_str()
                .unwrap()
                .contains("assumed-role/deployer")
        );
    }
    let evidence = |record: &Value| {
        record["attribution"]["evidence"][0]["detail"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        evidence(&by_name).contains(
            "aws_role_session arn:aws:sts::111122223333:assumed-role/deployer/deploy-run-0.d"
        ),
        "{}",
        evidence(&by_name)
    );
    assert!(
        evidence(&by_identity).contains("aws_source_identity run-0.d"),
        "{}",
        evidence(&by_identity)
    );

    // Another session's records stay unattributed.
    let other = import(
        &server,
        session_record("someone-else", "nobody", "GetObject"),
    );
    assert_eq!(other["attribution"]["method"], "unattributed");
    // What nothing explains is listed as such, and only that.
    let (status, listed) = call(
        &server,
        reqwest::Method::GET,
        "/v1/events?attribution=unattributed",
        &server.token,
        Body::None,
    );
    assert_eq!(status, 200, "{listed}");
    let unexplained: Vec<&Value> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| &record["event"]["id"])
        .collect();
    assert_eq!(unexplained, [&other["id"]], "{listed}");

    // The lineage of a bound record: alice, her agent, the deployer, each
    // spawned through Custody, then the role session that acted.
    let id = by_name["id"].as_str().unwrap();
    let (status, lineage) = call(
        &server,
        reqwest::Method::GET,
        &format!("/v1/lineage/{id}"),
        &server.token,
        Body::None,
    );
    assert_eq!(status, 200, "{lineage}");
    let chain = lineage["chain"].as_array().unwrap();
    assert_eq!(chain[0]["principal"]["id"], "alice@example.com");
    assert_eq!(chain[1]["principal"]["run_id"], "run-0");
    assert_eq!(chain[1]["spawned"]["by"]["id"], "alice@example.com");
    assert_eq!(chain[2]["principal"]["run_id"], "run-0.d");
    assert_eq!(chain[2]["spawned"]["by"]["id"], "release-bot");
    assert_eq!(chain[3]["role"], "actor");
    assert_eq!(
        chain[3]["spawned"],
        Value::Null,
        "the role session was not spawned by Custody"
    );
    assert_eq!(lineage["attribution"]["method"], "bound");

    // The blast radius of alice's agent counts what its sub-agents touched:
    // the reviewer's file, the deployer's role and, through the bound
    // session, the payroll object (sensitive) in the AWS account; the
    // unattributed session's records count for no one.
    let expected = json!({
        "systems": 1, "resources": 3, "sensitive_resources": 1,
        "identities_created": 2, "credentials_created": 0, "privileged_actions": 0,
        "depth": 2, "fan_out": 2,
    });
    assert_eq!(blast_radius(&server, "run:run-0"), expected);
    let alice = blast_radius(&server, "human:alice@example.com");
    assert_eq!(
        (alice["resources"].clone(), alice["depth"].clone()),
        (json!(3), json!(3))
    );

    // Everything holds after a restart: the binding is learned again, and
    // the graph is rebuilt from the store.
    server.kill();
    let server = Server::start(dir.path(), &["--sensitive", "*payroll*"]);
    assert_eq!(blast_radius(&server, "run:run-0"), expected);
    let later = import(
        &server,
        session_record("deploy-run-0.d", "run-0.d", "DeleteObject"),
    );
    assert_eq!(later["attribution"]["method"], "bound", "{later}");
    assert_eq!(later["actor"]["root"]["id"], "alice@example.com");
}
