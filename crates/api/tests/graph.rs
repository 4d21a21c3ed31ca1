//! The agent graph's queries, on a server that keeps the graph: a human's
//! agent spawns two sub-agents, which act; the graph answers who touched a
//! resource, what the agent's subtree touched, and exports as OpenGraph.

// Each test file uses part of the shared harness.
#[allow(dead_code)]
mod common;

use common::{Answer, Server, send};
use custody_api::{Role, TOKEN_EXCHANGE};
use reqwest::Method;
use serde_json::{Value, json};

const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn get(server: &Server, path: &str) -> Answer {
    send(
        server
            .request(Method::GET, path)
            .bearer_auth(server.token(Role::Viewer)),
    )
    .await
}

async fn exchange(server: &Server, parent: &str, actor: &str, run: &str) -> String {
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", parent),
        ("subject_token_type", ACCESS),
        ("custody_actor", actor),
        ("custody_run", run),
    ];
    let answer = send(server.request(Method::POST, "/oauth/token").form(&form)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["access_token"].as_str().unwrap().to_owned()
}

async fn act(server: &Server, token: &str, resource: &str) {
    let answer = send(
        server
            .request(Method::POST, "/v1/events")
            .bearer_auth(token)
            .json(&json!({
                "kind": "data_access", "action": "s3:GetObject",
                "observed_at": chrono::Utc::now(),
                "source": {"type": "api"},
                "actor": {"current": {"type": "agent", "id": "x"}},
                "target": {"resource": resource, "system": "aws:111122223333"},
                "outcome": {"status": "success"},
            })),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_answers_who_and_blast_radius_and_exports() {
    let server = Server::start_with_graph().await;
    let minted = send(
        server
            .request(Method::POST, "/v1/agent-tokens")
            .bearer_auth(server.token(Role::Admin))
            .json(
                &json!({"subject": {"type": "human", "id": "alice@example.com"},
                          "agent": {"id": "release-bot", "run_id": "run-0"}}),
            ),
    )
    .await;
    let root = minted.json()["access_token"].as_str().unwrap().to_owned();
    let auditor = exchange(&server, &root, "auditor", "run-0.a").await;
    let tester = exchange(&server, &root, "tester", "run-0.b").await;
    act(&server, &auditor, "arn:aws:s3:::payroll/q3.csv").await;
    act(&server, &tester, "arn:aws:s3:::releases/app.tar.gz").await;
    act(&server, &tester, "arn:aws:s3:::payroll/q3.csv").await;

    // The agent's blast radius counts what its sub-agents did.
    let radius = get(&server, "/v1/blast-radius/run:run-0").await;
    assert_eq!(radius.status, 200, "{}", radius.body);
    let radius = radius.json();
    assert_eq!(radius["name"], "release-bot");
    assert_eq!(
        radius["blast_radius"],
        json!({"systems": 1, "resources": 2, "sensitive_resources": 0, "identities_created": 2,
               "credentials_created": 0, "privileged_actions": 0, "depth": 1, "fan_out": 2})
    );
    let alice = get(&server, "/v1/blast-radius/human:alice@example.com")
        .await
        .json();
    assert_eq!(alice["blast_radius"]["depth"], 2);

    // Who touched the payroll file: both sub-agents, each under alice.
    let who = get(&server, "/v1/who?resource=arn:aws:s3:::payroll/q3.csv").await;
    assert_eq!(who.status, 200, "{}", who.body);
    let mut chains: Vec<String> = who.json()["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|chain| {
            chain
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    format!(
                        "{} -{}-> {}",
                        e["from"].as_str().unwrap(),
                        e["kind"].as_str().unwrap(),
                        e["to"].as_str().unwrap()
                    )
                })
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    chains.sort();
    assert_eq!(
        chains,
        [
            "human:alice@example.com -deployed-> run:run-0 | run:run-0 -delegated-> run:run-0.a | run:run-0.a -read-> resource:arn:aws:s3:::payroll/q3.csv",
            "human:alice@example.com -deployed-> run:run-0 | run:run-0 -delegated-> run:run-0.b | run:run-0.b -read-> resource:arn:aws:s3:::payroll/q3.csv",
        ]
    );

    // The subtree, as JSON and as OpenGraph.
    let graph = get(&server, "/v1/graph?root=human:alice@example.com&depth=2")
        .await
        .json();
    let nodes: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(&nodes[..2], ["human:alice@example.com", "run:run-0"]);
    assert!(
        nodes.contains(&"run:run-0.a") && nodes.contains(&"run:run-0.b"),
        "{nodes:?}"
    );
    // Nothing was seen after 2100: the root alone.
    let later = get(
        &server,
        "/v1/graph?root=human:alice@example.com&depth=2&since=2100-01-01T00:00:00Z",
    )
    .await
    .json();
    assert_eq!(later["nodes"].as_array().unwrap().len(), 1, "{later}");
    assert_eq!(later["edges"], json!([]));
    let exported = get(&server, "/v1/graph?root=run:run-0&depth=1&format=opengraph")
        .await
        .json();
    assert_eq!(exported["metadata"]["source_kind"], "Custody");
    let kinds: Vec<Value> = exported["graph"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert!(kinds.contains(&json!("CustodySpawned")), "{kinds:?}");

    // Bad and unknown nodes, and roles.
    for (path, status) in [
        ("/v1/blast-radius/run:nope", 404),
        ("/v1/blast-radius/planet:earth", 400),
        ("/v1/graph?root=run:run-0&depth=11", 400),
        ("/v1/graph?root=run:run-0&format=dot", 400),
        ("/v1/graph?depth=2", 400),
        ("/v1/graph?root=run:run-0&since=yesterday", 400),
    ] {
        assert_eq!(get(&server, path).await.status, status, "{path}");
    }
    let ingest = send(
        server
            .request(Method::GET, "/v1/who?resource=x")
            .bearer_auth(server.token(Role::Ingest)),
    )
    .await;
    assert_eq!(ingest.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_graph_says_so() {
    let server = Server::start().await;
    let answer = get(&server, "/v1/who?resource=x").await;
    assert_eq!(answer.status, 404);
    assert!(answer.body.contains("--no-graph"), "{}", answer.body);
}
