//! Tests of the whole store on real SQLite databases in temporary
//! directories: recording, group commit, queries, pagination, tokens.

use chrono::{DateTime, Duration, Utc};
use custody_engine::{Decision, Evaluated, Reason, ReasonSource, Record, RecordError, Verdict};
use custody_event::{EventId, EventKind, decode_value};
use rusqlite::Connection;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::query::Cursor;
use crate::{EventQuery, NewToken, Order, Store, StoreOptions};

fn open() -> (TempDir, Store) {
    open_with(StoreOptions::default())
}

fn open_with(options: StoreOptions) -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options).unwrap();
    (dir, store)
}

/// The time `second` seconds into the test day.
fn at(second: i64) -> DateTime<Utc> {
    "2026-11-25T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::seconds(second)
}

/// A tool call by `coder` observed at `second`, named `label` (its
/// `source.record_id`), with `fields` replacing the defaults.
fn event(label: &str, second: i64, fields: Value) -> Evaluated {
    let mut json = json!({
        "kind": "tool_call",
        "action": "tools/call",
        "observed_at": at(second),
        "source": {"type": "gateway", "name": "gw-1", "record_id": label},
        "actor": {"current": {"type": "agent", "id": "coder"}},
        "outcome": {"status": "success"},
    });
    let Value::Object(fields) = fields else {
        panic!("fields must be an object")
    };
    json.as_object_mut().unwrap().extend(fields);
    Evaluated {
        event: decode_value(json)
            .unwrap()
            .into_event(at(second) + Duration::milliseconds(5), EventId::new_v7),
        signals: Vec::new(),
        decision: Decision::allow(),
        actions: Vec::new(),
    }
}

fn record(store: &Store, batch: Vec<Evaluated>) {
    store.record(batch).unwrap().blocking_durable().unwrap();
}

fn label(event: &crate::StoredEvent) -> String {
    event.event().unwrap().source.record_id.unwrap()
}

/// Every event matching `q`, page by page, by label.
fn walk(store: &Store, q: &EventQuery) -> Vec<String> {
    let mut q = q.clone();
    let mut labels = Vec::new();
    loop {
        let page = store.query(&q).unwrap();
        assert!(page.events.len() <= q.limit);
        labels.extend(page.events.iter().map(label));
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => return labels,
        }
    }
}

/// Five events of different kinds, chains and targets, one second apart.
fn scenario() -> Vec<Evaluated> {
    let mut write = event(
        "write",
        4,
        json!({
            "actor": {"root": {"type": "human", "id": "bob@example.com"},
                      "current": {"type": "agent", "id": "coder", "run_id": "run-2"}},
            "target": {"tool": "write_file", "server": "filesystem"},
        }),
    );
    write.decision = Decision {
        verdict: Verdict::Deny,
        reasons: vec![Reason {
            source: ReasonSource::Policy,
            id: "no-writes".into(),
            message: "writes need approval".into(),
        }],
    };
    vec![
        event(
            "read",
            0,
            json!({
                "actor": {"root": {"type": "human", "id": "alice@example.com"},
                          "agents": [{"type": "agent", "id": "planner", "run_id": "run-0"}],
                          "current": {"type": "agent", "id": "coder", "run_id": "run-1"}},
                "target": {"tool": "read_file", "server": "filesystem"},
            }),
        ),
        event(
            "s3",
            1,
            json!({
                "kind": "data_access", "action": "s3:GetObject",
                "source": {"type": "cloudtrail", "record_id": "s3"},
                "actor": {"root": {"type": "human", "id": "alice@example.com"},
                          "current": {"type": "role", "id": "arn:aws:iam::111122223333:role/agent"}},
                "target": {"resource": "arn:aws:s3:::payroll/q3.csv", "resource_type": "s3_object",
                           "system": "aws:111122223333"},
            }),
        ),
        event(
            "spawn",
            2,
            json!({
                "kind": "agent_spawn", "action": "agent.delegate",
                "actor": {"root": {"type": "human", "id": "alice@example.com"},
                          "current": {"type": "agent", "id": "planner", "run_id": "run-0"}},
                "target": {"principal": {"type": "agent", "id": "coder", "run_id": "run-1"}},
            }),
        ),
        event(
            "login",
            3,
            json!({
                "kind": "authentication", "action": "user.session.start",
                "source": {"type": "okta", "record_id": "login"},
                "actor": {"current": {"type": "human", "id": "bob@example.com"}},
                "target": {"system": "okta:acme"},
            }),
        ),
        write,
    ]
}

#[test]
fn the_store_is_a_shareable_handle() {
    fn check<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
    check::<Store>();
}

#[test]
fn every_filter_finds_its_events() {
    let (_dir, store) = open();
    record(&store, scenario());
    let check = |q: EventQuery, expected: &[&str]| {
        assert_eq!(walk(&store, &q), expected, "{q:?}");
    };
    let q = EventQuery::default;
    let text = |s: &str| Some(s.to_owned());
    check(q(), &["write", "login", "spawn", "s3", "read"]);
    check(
        EventQuery {
            order: Order::Oldest,
            ..q()
        },
        &["read", "s3", "spawn", "login", "write"],
    );
    check(
        EventQuery {
            kinds: vec![EventKind::ToolCall],
            ..q()
        },
        &["write", "read"],
    );
    check(
        EventQuery {
            kinds: vec![EventKind::ToolCall, EventKind::Authentication],
            ..q()
        },
        &["write", "login", "read"],
    );
    check(
        EventQuery {
            kinds: vec![EventKind::Other],
            ..q()
        },
        &[],
    );
    check(
        EventQuery {
            actor: text("coder"),
            ..q()
        },
        &["write", "read"],
    );
    check(
        EventQuery {
            actor: text("planner"),
            ..q()
        },
        &["spawn"],
    );
    check(
        EventQuery {
            root: text("alice@example.com"),
            ..q()
        },
        &["spawn", "s3", "read"],
    );
    check(
        EventQuery {
            run: text("run-1"),
            ..q()
        },
        &["read"],
    );
    check(
        EventQuery {
            target: text("filesystem"),
            ..q()
        },
        &["write", "read"],
    );
    check(
        EventQuery {
            target: text("read_file"),
            ..q()
        },
        &["read"],
    );
    check(
        EventQuery {
            target: text("arn:aws:s3:::payroll/q3.csv"),
            ..q()
        },
        &["s3"],
    );
    check(
        EventQuery {
            target: text("aws:111122223333"),
            ..q()
        },
        &["s3"],
    );
    check(
        EventQuery {
            target: text("coder"),
            ..q()
        },
        &["spawn"],
    );
    check(
        EventQuery {
            target: text("okta:acme"),
            ..q()
        },
        &["login"],
    );
    check(
        EventQuery {
            since: Some(at(1)),
            until: Some(at(4)),
            ..q()
        },
        &["login", "spawn", "s3"],
    );
    check(
        EventQuery {
            actor: text("coder"),
            root: text("bob@example.com"),
            ..q()
        },
        &["write"],
    );
    check(
        EventQuery {
            target: text("filesystem"),
            kinds: vec![EventKind::ToolCall],
            since: Some(at(1)),
            ..q()
        },
        &["write"],
    );
    check(
        EventQuery {
            target: text("filesystem"),
            actor: text("planner"),
            ..q()
        },
        &[],
    );
}

#[test]
fn stored_events_round_trip_with_their_decisions() {
    let (_dir, store) = open();
    let events = scenario();
    record(&store, events.clone());
    for evaluated in &events {
        let stored = store.get(evaluated.event.id).unwrap().unwrap();
        assert_eq!(stored.event().unwrap(), evaluated.event);
        assert_eq!(
            stored.body,
            serde_json::to_string(&evaluated.event).unwrap()
        );
        assert_eq!(stored.decision().unwrap(), evaluated.decision);
        // The default allow is stored as no decision at all.
        assert_eq!(
            stored.decision.is_none(),
            evaluated.decision == Decision::allow()
        );
    }
    assert_eq!(store.get(EventId::new_v7()).unwrap(), None);
    assert_eq!(store.count().unwrap(), 5);
}

#[test]
fn pages_walk_every_event_once_when_timestamps_tie() {
    let (_dir, store) = open();
    // 300 events on 3 timestamps, recorded out of time order across several
    // batches, so that ties and arrival order both matter.
    let label = |i: usize| format!("e{i:03}");
    let second = |i: usize| [2, 0, 1][i % 3];
    let events: Vec<Evaluated> = (0..300)
        .map(|i| {
            let actor = if i % 2 == 0 { "coder" } else { "planner" };
            event(
                &label(i),
                second(i),
                json!({"actor": {"current": {"type": "agent", "id": actor}},
                       "target": {"tool": "read_file"}}),
            )
        })
        .collect();
    for batch in events.chunks(64) {
        record(&store, batch.to_vec());
    }
    let check = |q: EventQuery, selected: &dyn Fn(usize) -> bool| {
        let mut oldest: Vec<usize> = (0..300).filter(|&i| selected(i)).collect();
        oldest.sort_by_key(|&i| (second(i), i));
        let oldest: Vec<String> = oldest.into_iter().map(label).collect();
        let mut newest = oldest.clone();
        newest.reverse();
        for limit in [1, 7, 100, 1000] {
            let q = EventQuery { limit, ..q.clone() };
            assert_eq!(
                walk(
                    &store,
                    &EventQuery {
                        order: Order::Oldest,
                        ..q.clone()
                    }
                ),
                oldest
            );
            assert_eq!(
                walk(
                    &store,
                    &EventQuery {
                        order: Order::Newest,
                        ..q
                    }
                ),
                newest
            );
        }
    };
    check(EventQuery::default(), &|_| true);
    check(
        EventQuery {
            actor: Some("coder".into()),
            ..EventQuery::default()
        },
        &|i| i % 2 == 0,
    );
    check(
        EventQuery {
            target: Some("read_file".into()),
            ..EventQuery::default()
        },
        &|_| true,
    );
    check(
        EventQuery {
            since: Some(at(1)),
            ..EventQuery::default()
        },
        &|i| second(i) >= 1,
    );
}

#[test]
fn a_page_says_whether_more_follow() {
    let (_dir, store) = open();
    record(&store, scenario());
    let page = |limit| {
        store
            .query(&EventQuery {
                limit,
                ..EventQuery::default()
            })
            .unwrap()
    };
    assert!(page(4).next.is_some());
    assert_eq!(page(5).next, None);
    // A limit out of range is clamped rather than refused.
    assert_eq!(page(0).events.len(), 1);
    let cursor = page(2).next.unwrap();
    assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
}

#[test]
fn resubmitting_an_id_stores_the_event_once() {
    let (_dir, store) = open();
    let mut live = store.subscribe();
    let first = event("first", 0, json!({}));
    let mut again = event("again", 1, json!({}));
    again.event.id = first.event.id;
    record(&store, vec![first.clone(), again.clone()]);
    record(&store, vec![again]);
    assert_eq!(store.count().unwrap(), 1);
    let stored = store.get(first.event.id).unwrap().unwrap();
    assert_eq!(stored.event().unwrap(), first.event);
    assert_eq!(store.stats().committed_events, 1);
    assert_eq!(store.stats().commits, 2);
    assert_eq!(live.blocking_recv().unwrap().as_slice(), [stored]);
    assert!(live.try_recv().is_err(), "the duplicate was published");
}

#[test]
fn a_full_queue_refuses_and_drops_nothing() {
    let (_dir, store) = open_with(StoreOptions {
        queue_capacity: 10,
        ..StoreOptions::default()
    });
    store.pause_writer(true);
    let batch = |name: &str, n: usize| -> Vec<Evaluated> {
        (0..n)
            .map(|i| event(&format!("{name}{i}"), 0, json!({})))
            .collect()
    };
    let a = store.record(batch("a", 4)).unwrap();
    let b = store.record(batch("b", 4)).unwrap();
    assert_eq!(
        store.record(batch("refused", 4)).unwrap_err(),
        RecordError::QueueFull {
            queued: 8,
            capacity: 10
        }
    );
    assert_eq!(
        store.record(batch("huge", 11)).unwrap_err(),
        RecordError::QueueFull {
            queued: 8,
            capacity: 10
        }
    );
    let c = store.record(batch("c", 2)).unwrap();
    assert_eq!(store.stats().queued_events, 10);
    store.pause_writer(false);
    for receipt in [a, b, c] {
        receipt.blocking_durable().unwrap();
    }
    assert_eq!(store.stats().queued_events, 0);
    let mut labels = walk(
        &store,
        &EventQuery {
            order: Order::Oldest,
            ..EventQuery::default()
        },
    );
    labels.sort();
    assert_eq!(
        labels,
        ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3", "c0", "c1"]
    );

    // An empty queue takes a batch larger than its capacity: otherwise that
    // batch would be refused forever.
    store.pause_writer(true);
    let huge = store.record(batch("huge", 11)).unwrap();
    assert_eq!(store.stats().queued_events, 11);
    assert!(matches!(
        store.record(batch("after", 1)).unwrap_err(),
        RecordError::QueueFull { queued: 11, .. }
    ));
    store.pause_writer(false);
    huge.blocking_durable().unwrap();
    assert_eq!(store.count().unwrap(), 21);
}

#[test]
fn queued_batches_commit_in_groups_of_at_most_max_group_events() {
    let (_dir, store) = open_with(StoreOptions {
        max_group_events: 5,
        ..StoreOptions::default()
    });
    store.pause_writer(true);
    let receipts: Vec<_> = (0..3)
        .map(|b| {
            let batch = (0..2)
                .map(|i| event(&format!("{b}-{i}"), 0, json!({})))
                .collect();
            store.record(batch).unwrap()
        })
        .collect();
    store.pause_writer(false);
    for receipt in receipts {
        receipt.blocking_durable().unwrap();
    }
    // Two batches (4 events) fit in the first group, the third waits for the next.
    let stats = store.stats();
    assert_eq!(
        (stats.commits, stats.last_group_size, stats.committed_events),
        (2, 2, 6)
    );
    // An empty batch is durable at once.
    store
        .record(Vec::new())
        .unwrap()
        .blocking_durable()
        .unwrap();
}

#[test]
fn a_failed_transaction_fails_every_batch_of_its_group_and_keeps_nothing() {
    let (_dir, store) = open();
    let target = json!({"target": {"tool": "read_file"}});
    record(&store, vec![event("before", 0, target.clone())]);
    store.pause_writer(true);
    let a = store
        .record(vec![
            event("a0", 1, target.clone()),
            event("a1", 1, target.clone()),
        ])
        .unwrap();
    let b = store.record(vec![event("b0", 1, target.clone())]).unwrap();
    // The events rows of the group are inserted before the target rows fail:
    // the rollback must take them back out.
    Connection::open(store.path())
        .unwrap()
        .execute_batch("DROP TABLE event_targets")
        .unwrap();
    store.pause_writer(false);
    for receipt in [a, b] {
        let RecordError::Failed(message) = receipt.blocking_durable().unwrap_err() else {
            panic!("expected a write failure")
        };
        assert!(message.contains("event_targets"), "{message}");
    }
    assert_eq!(store.count().unwrap(), 1);
    let stats = store.stats();
    assert_eq!(
        (stats.commits, stats.failed_commits, stats.queued_events),
        (1, 1, 0)
    );
}

#[test]
fn identifiers_interned_by_a_failed_group_are_forgotten() {
    let (_dir, store) = open();
    let by = |actor: &str| json!({"actor": {"current": {"type": "agent", "id": actor}}, "target": {"tool": "t"}});
    record(&store, vec![event("before", 0, by("coder"))]);
    store.pause_writer(true);
    let failing = store.record(vec![event("lost", 1, by("ghost"))]).unwrap();
    let conn = Connection::open(store.path()).unwrap();
    conn.execute_batch("DROP TABLE event_targets").unwrap();
    store.pause_writer(false);
    failing.blocking_durable().unwrap_err();
    conn.execute_batch(
        "CREATE TABLE event_targets (target INTEGER NOT NULL, observed_at INTEGER NOT NULL,
         seq INTEGER NOT NULL, PRIMARY KEY (target, observed_at, seq)) STRICT, WITHOUT ROWID",
    )
    .unwrap();
    // `other` now takes the key id `ghost` had in the rolled-back group; a
    // writer that still remembered it would file `ghost` under `other`.
    record(&store, vec![event("other", 2, by("other"))]);
    record(&store, vec![event("ghost", 3, by("ghost"))]);
    for actor in ["coder", "other", "ghost"] {
        let q = EventQuery {
            actor: Some(actor.to_owned()),
            ..EventQuery::default()
        };
        let expected = if actor == "coder" { "before" } else { actor };
        assert_eq!(walk(&store, &q), [expected], "events by {actor}");
    }
    let unknown = EventQuery {
        target: Some("never-seen".to_owned()),
        ..EventQuery::default()
    };
    assert!(walk(&store, &unknown).is_empty());
}

#[test]
fn reopening_after_close_sees_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let handle = store.clone();
    record(&store, scenario());
    // Queued but not yet written: closing must drain it.
    store.pause_writer(true);
    let pending = store.record(vec![event("pending", 9, json!({}))]).unwrap();
    store.close().unwrap();
    pending.blocking_durable().unwrap();
    assert_eq!(
        handle
            .record(vec![event("late", 9, json!({}))])
            .unwrap_err(),
        RecordError::Closed
    );
    assert_eq!(handle.count().unwrap(), 6, "reads work after close");
    drop(handle);

    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        walk(&store, &EventQuery::default()),
        ["pending", "write", "login", "spawn", "s3", "read"]
    );
    // Dropping the last handle commits what is queued, too.
    store.pause_writer(true);
    let dropped = store.record(vec![event("dropped", 10, json!({}))]).unwrap();
    drop(store);
    dropped.blocking_durable().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.count().unwrap(), 7);
}

#[test]
fn subscribers_receive_committed_events() {
    let (_dir, store) = open();
    let mut live = store.subscribe();
    let events = scenario();
    record(&store, events[..2].to_vec());
    record(&store, events[2..].to_vec());
    let first = live.blocking_recv().unwrap();
    let second = live.blocking_recv().unwrap();
    let stored: Vec<_> = events
        .iter()
        .map(|e| store.get(e.event.id).unwrap().unwrap())
        .collect();
    assert_eq!(first.as_slice(), &stored[..2]);
    assert_eq!(second.as_slice(), &stored[2..]);
}

#[test]
fn every_filter_uses_its_index() {
    let (_dir, store) = open();
    record(&store, scenario());
    let check = |q: EventQuery, expected: &str| {
        let plan = store
            .read(|conn| {
                let (sql, values) = crate::query::sql(conn, &q, 10)
                    .unwrap()
                    .expect("every key is known");
                let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
                let details = statement
                    .query_map(rusqlite::params_from_iter(values), |row| {
                        row.get::<_, String>(3)
                    })
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                Ok(details.join("; "))
            })
            .unwrap();
        assert!(
            plan.starts_with(expected),
            "{q:?}\nplan: {plan}\nexpected: {expected}"
        );
        // The order comes from the index, not from sorting every match.
        assert!(!plan.contains("TEMP B-TREE"), "{q:?}\nplan: {plan}");
    };
    let q = EventQuery::default;
    let text = |s: &str| Some(s.to_owned());
    let cursor = Some(Cursor {
        observed_at: at(3).timestamp_micros(),
        seq: 4,
    });
    check(q(), "SCAN e USING INDEX events_time");
    check(
        EventQuery {
            since: Some(at(1)),
            ..q()
        },
        "SEARCH e USING INDEX events_time (observed_at>?)",
    );
    check(
        EventQuery { cursor, ..q() },
        "SEARCH e USING INDEX events_time (observed_at<?)",
    );
    check(
        EventQuery {
            kinds: vec![EventKind::ToolCall],
            ..q()
        },
        "SEARCH e USING INDEX events_kind (kind=?)",
    );
    check(
        EventQuery {
            actor: text("coder"),
            ..q()
        },
        "SEARCH e USING INDEX events_actor (actor=?)",
    );
    check(
        EventQuery {
            actor: text("coder"),
            cursor,
            ..q()
        },
        "SEARCH e USING INDEX events_actor (actor=? AND observed_at<?)",
    );
    check(
        EventQuery {
            root: text("alice@example.com"),
            ..q()
        },
        "SEARCH e USING INDEX events_root (chain_root=?)",
    );
    check(
        EventQuery {
            run: text("run-1"),
            ..q()
        },
        "SEARCH e USING INDEX events_run (run_id=?)",
    );
    check(
        EventQuery {
            run: text("run-1"),
            order: Order::Oldest,
            since: Some(at(1)),
            ..q()
        },
        "SEARCH e USING INDEX events_run (run_id=? AND observed_at>?)",
    );
    check(
        EventQuery {
            target: text("filesystem"),
            ..q()
        },
        "SEARCH t USING PRIMARY KEY (target=?)",
    );
    check(
        EventQuery {
            target: text("filesystem"),
            cursor,
            ..q()
        },
        "SEARCH t USING PRIMARY KEY (target=? AND observed_at<?)",
    );
}

#[test]
fn tokens_are_found_by_hash_and_revoked_once() {
    let (_dir, store) = open();
    let token = |id: &str, byte: u8| NewToken {
        id: id.into(),
        name: Some(format!("{id} token")),
        role: "admin".into(),
        hash: [byte; 32],
    };
    assert_eq!(store.token_count().unwrap(), 0);
    let admin = store.insert_token(&token("tok_admin", 1)).unwrap();
    store.insert_token(&token("tok_ci", 2)).unwrap();
    assert_eq!(store.token_by_hash(&[1; 32]).unwrap(), Some(admin.clone()));
    assert_eq!(store.token_by_hash(&[3; 32]).unwrap(), None);
    let error = store
        .insert_token(&token("tok_other", 1))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "storing token `tok_other`: UNIQUE constraint failed: tokens.hash"
    );
    assert_eq!(store.token_count().unwrap(), 2);

    assert!(store.revoke_token("tok_admin").unwrap());
    assert!(!store.revoke_token("tok_admin").unwrap(), "revoked twice");
    assert!(!store.revoke_token("tok_unknown").unwrap());
    assert_eq!(store.token_count().unwrap(), 1);
    let revoked = store.token_by_hash(&[1; 32]).unwrap().unwrap();
    assert!(revoked.revoked_at.is_some_and(|at| at >= admin.created_at));
    let listed: Vec<_> = store
        .list_tokens()
        .unwrap()
        .into_iter()
        .map(|t| (t.id, t.revoked_at.is_some()))
        .collect();
    assert_eq!(
        listed,
        [("tok_admin".to_owned(), true), ("tok_ci".to_owned(), false)]
    );
}
