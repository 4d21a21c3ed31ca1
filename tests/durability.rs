//! An event acknowledged to a client is durable: the server is loaded,
//! killed with SIGKILL mid-load, restarted, and every acknowledged event must
//! be there, while no batch is visible in part.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, tool_call};

const CLIENTS: usize = 4;
const BATCH: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();

    // Every batch sent, by a client-chosen id of its first event, with its
    // ids; and the batches the server acknowledged.
    let sent: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (http, url, token) = (http.clone(), server.url.clone(), server.token.clone());
        let (sent, acknowledged, stop) = (sent.clone(), acknowledged.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..BATCH)
                    .map(|_| uuid::Uuid::now_v7().to_string())
                    .collect();
                let body: String = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| tool_call(id, &format!("run-{client}"), n + i) + "\n")
                    .collect();
                n += BATCH;
                sent.lock().unwrap().insert(ids[0].clone(), ids.clone());
                let answer = http
                    .post(format!("{url}/v1/events"))
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status() == 200 => {
                        let answer: serde_json::Value = response.json().await.unwrap();
                        let stored: Vec<String> = answer["ids"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_str().unwrap().to_owned())
                            .collect();
                        assert_eq!(
                            stored, ids,
                            "the server acknowledged other ids than were sent"
                        );
                        acknowledged.lock().unwrap().extend(stored);
                    }
                    Ok(response) if response.status() == 429 => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Ok(response) => panic!("unexpected answer {}", response.status()),
                    // The server was killed: this batch may or may not have
                    // been stored, but it was never acknowledged.
                    Err(_) => break,
                }
            }
        }));
    }

    // Let the load run until a good number of batches are acknowledged, then
    // kill the server while requests are in flight.
    while acknowledged.lock().unwrap().len() < 40 * BATCH {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();

    let server = Server::start(dir.path(), &[]);
    let stored = all_ids(&http, &server, &[]).await;
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are missing after kill -9, e.g. {}",
        missing.len(),
        missing[0]
    );
    for ids in sent.values() {
        let present = ids.iter().filter(|id| stored.contains_key(*id)).count();
        assert!(
            present == 0 || present == ids.len(),
            "a batch is stored in part: {present} of {}",
            ids.len()
        );
    }
    assert!(stored.len() >= acknowledged.len());
    // The postings index was in memory when the server died: the restart
    // rebuilt it, and queries by identifier find exactly what is stored.
    for client in 0..CLIENTS {
        let run = format!("run-{client}");
        let by_run = all_ids(&http, &server, &[("run", &run)]).await;
        let expected = stored
            .values()
            .filter(|event| event.actor.run_id() == Some(run.as_str()))
            .count();
        assert_eq!(by_run.len(), expected, "events of {run} after the restart");
        assert!(by_run.keys().all(|id| stored.contains_key(id)));
    }
    let first = acknowledged.first().unwrap();
    let resource = stored[first].target.resource.clone().unwrap();
    let by_target = all_ids(&http, &server, &[("target", &resource)]).await;
    assert!(by_target.contains_key(first), "{resource} finds its event");
    eprintln!(
        "acknowledged {} events in {} batches sent; {} stored after restart",
        acknowledged.len(),
        sent.len(),
        stored.len()
    );
}

/// Every stored event matching `filters`, by id, walking the pages, each
/// event fully decodable.
async fn all_ids(
    http: &reqwest::Client,
    server: &Server,
    filters: &[(&str, &str)],
) -> HashMap<String, custody_event::RuntimeEvent> {
    let mut stored = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = http
            .get(format!("{}/v1/events", server.url))
            .bearer_auth(&server.token)
            .query(&[("limit", "1000")])
            .query(filters);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page: serde_json::Value = request
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        for record in page["events"].as_array().unwrap() {
            let event: custody_event::RuntimeEvent =
                serde_json::from_value(record["event"].clone())
                    .unwrap_or_else(|error| panic!("a stored event does not decode: {error}"));
            assert!(
                stored.insert(event.id.to_string(), event).is_none(),
                "an event is listed twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return stored,
        }
    }
}
