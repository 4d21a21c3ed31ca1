//! Tests of the whole store on real SQLite databases in temporary
//! directories: recording, group commit, queries, pagination, tokens.

use chrono::{DateTime, Duration, Utc};
use custody_engine::{Decision, Evaluated, Reason, ReasonSource, Record, RecordError, Verdict};
use custody_event::{AttributionMethod, EventId, EventKind, decode_value};
use rusqlite::Connection;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::query::Cursor;
use crate::{ActionQuery, EventQuery, NewToken, Order, Store, StoreOptions};

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
fn events_are_listed_by_how_their_chain_is_known() {
    let (_dir, store) = open();
    let attributed = |label: &str, second: i64, method: &str| {
        event(
            label,
            second,
            json!({"attribution": {"method": method, "evidence": [{"type": "test", "detail": label}]}}),
        )
    };
    record(
        &store,
        vec![
            attributed("token", 1, "authenticated"),
            attributed("key", 2, "bound"),
            event("nothing", 3, json!({})),
            attributed("session", 4, "correlated"),
            event("nothing-either", 5, json!({})),
        ],
    );
    let check = |methods: &[AttributionMethod], actor: Option<&str>, expected: &[&str]| {
        let q = EventQuery {
            attributions: methods.to_vec(),
            actor: actor.map(str::to_owned),
            ..EventQuery::default()
        };
        assert_eq!(walk(&store, &q), expected, "{q:?}");
    };
    check(
        &[AttributionMethod::Unattributed],
        None,
        &["nothing-either", "nothing"],
    );
    check(
        &[AttributionMethod::Bound, AttributionMethod::Correlated],
        None,
        &["session", "key"],
    );
    // With an identifier's posting list driving the query.
    check(
        &[AttributionMethod::Authenticated],
        Some("coder"),
        &["token"],
    );
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

/// `n` events labelled `{name}0`, `{name}1`, ...
fn batch(name: &str, n: usize) -> Vec<Evaluated> {
    (0..n)
        .map(|i| event(&format!("{name}{i}"), 0, json!({})))
        .collect()
}

#[test]
fn a_full_queue_refuses_and_drops_nothing() {
    let (_dir, store) = open_with(StoreOptions {
        queue_capacity: 10,
        ..StoreOptions::default()
    });
    store.pause_writer(true);
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
fn room_reserved_counts_as_queued_until_filled_or_given_back() {
    let (_dir, store) = open_with(StoreOptions {
        queue_capacity: 10,
        ..StoreOptions::default()
    });
    store.pause_writer(true);
    let held = store.reserve(6).unwrap();
    let given_back = store.reserve(4).unwrap();
    assert_eq!(store.stats().queued_events, 10);
    assert!(matches!(
        store.reserve(1).unwrap_err(),
        RecordError::QueueFull { queued: 10, .. }
    ));
    assert!(store.record(batch("refused", 1)).is_err());
    drop(given_back);
    assert_eq!(store.stats().queued_events, 6);
    // The held room takes its batch without a second check, even a batch
    // one larger than the room, which was counted when it was taken.
    let filled = store.record_reserved(batch("held", 7), held).unwrap();
    assert_eq!(store.stats().queued_events, 7);
    store.pause_writer(false);
    filled.blocking_durable().unwrap();
    assert_eq!(store.stats().queued_events, 0);
    assert_eq!(store.count().unwrap(), 7);
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
    // The group's first row is inserted before its second fails: the
    // rollback must take it back out.
    Connection::open(store.path())
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON events
             WHEN (SELECT count(*) FROM events) >= 2
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        .unwrap();
    store.pause_writer(false);
    for receipt in [a, b] {
        let RecordError::Failed(message) = receipt.blocking_durable().unwrap_err() else {
            panic!("expected a write failure")
        };
        assert!(message.contains("refused by the test"), "{message}");
    }
    assert_eq!(store.count().unwrap(), 1);
    let stats = store.stats();
    assert_eq!(
        (stats.commits, stats.failed_commits, stats.queued_events),
        (1, 1, 0)
    );
}

#[test]
fn an_event_whose_raw_record_no_decoder_reads_is_found_by_its_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut odd = event("odd", 0, json!({"target": {"tool": "read_file"}}));
    odd.event.raw = Some(serde_json::from_str(r#"{"s":"\ud800x"}"#).unwrap());
    record(&store, vec![odd.clone()]);
    let by_actor = EventQuery {
        actor: Some("coder".into()),
        ..EventQuery::default()
    };
    assert_eq!(walk(&store, &by_actor), ["odd"]);
    // And after its postings are rebuilt from its body.
    store.close().unwrap();
    let conn = Connection::open(dir.path().join(crate::DATABASE_FILE)).unwrap();
    conn.execute_batch(
        "DELETE FROM postings; UPDATE meta SET value = 0 WHERE name = 'postings_through'",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let by_target = EventQuery {
        target: Some("read_file".into()),
        ..EventQuery::default()
    };
    assert_eq!(walk(&store, &by_target), ["odd"]);
    let stored = store.get(odd.event.id).unwrap().unwrap();
    assert_eq!(stored.event().unwrap(), odd.event);
}

#[test]
fn a_hash_collision_never_answers_for_another_identifier() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let by = |actor: &str, run: &str, tool: &str| {
        json!({"actor": {"current": {"type": "agent", "id": actor, "run_id": run}},
               "target": {"tool": tool}})
    };
    record(
        &store,
        vec![
            event("coder", 0, by("coder", "run-1", "read_file")),
            event("other", 1, by("other", "run-2", "write_file")),
        ],
    );
    store.close().unwrap();
    // Forge what a collision would look like: `other`'s row carries the
    // hashes of `coder`, `run-1` and `read_file`, so the postings rebuilt
    // from it list it under them.
    let conn = Connection::open(dir.path().join(crate::DATABASE_FILE)).unwrap();
    let hash = crate::schema::identifier_hash;
    conn.execute(
        "UPDATE events SET actor = ?1, run_id = ?2 WHERE seq = 2",
        rusqlite::params![hash("coder"), hash("run-1")],
    )
    .unwrap();
    conn.execute_batch(
        "DELETE FROM postings; UPDATE meta SET value = 0 WHERE name = 'postings_through'",
    )
    .unwrap();
    // Targets are rebuilt from the body, so list the row under `read_file`
    // by hand, as a segment of a run already written.
    let observed: i64 = conn
        .query_row("SELECT observed_at FROM events WHERE seq = 2", [], |row| {
            row.get(0)
        })
        .unwrap();
    let entries: Vec<u8> = [observed, 2].iter().flat_map(|n| n.to_le_bytes()).collect();
    conn.execute(
        "INSERT INTO postings (field, key, run, first_at, last_at, entries)
         VALUES (4, ?1, 0, ?2, ?2, ?3)",
        rusqlite::params![hash("read_file"), observed, entries],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let text = |s: &str| Some(s.to_owned());
    for q in [
        EventQuery {
            actor: text("coder"),
            ..EventQuery::default()
        },
        EventQuery {
            run: text("run-1"),
            ..EventQuery::default()
        },
        EventQuery {
            target: text("read_file"),
            ..EventQuery::default()
        },
        EventQuery {
            target: text("read_file"),
            actor: text("coder"),
            ..EventQuery::default()
        },
    ] {
        assert_eq!(walk(&store, &q), ["coder"], "{q:?}");
    }
    // The forged row is still found by what it really names.
    let q = EventQuery {
        target: text("write_file"),
        ..EventQuery::default()
    };
    assert_eq!(walk(&store, &q), ["other"]);
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

/// The plan SQLite makes for `sql`, its steps joined by "; ".
fn explain(conn: &Connection, sql: &str, values: &[rusqlite::types::Value]) -> String {
    let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let details = statement
        .query_map(rusqlite::params_from_iter(values), |row| {
            row.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    details.join("; ")
}

#[test]
fn every_filter_uses_its_index() {
    let (_dir, store) = open();
    record(&store, scenario());
    let q = EventQuery::default;
    let text = |s: &str| Some(s.to_owned());
    let cursor = Some(Cursor {
        observed_at: at(3).timestamp_micros(),
        seq: 4,
    });
    // Without an identifier filter, an index on the events gives the order.
    let check = |q: EventQuery, expected: &str| {
        let plan = store
            .read(|conn| {
                let plan = crate::query::plan(&q, 10);
                assert_eq!(plan.list, None, "{q:?}");
                Ok(explain(conn, &plan.sql, &plan.values))
            })
            .unwrap();
        assert!(
            plan.starts_with(expected),
            "{q:?}\nplan: {plan}\nexpected: {expected}"
        );
        // The order comes from the index, not from sorting every match.
        assert!(!plan.contains("TEMP B-TREE"), "{q:?}\nplan: {plan}");
    };
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
    // With one, its posting list drives, and its events are read by seq.
    for (q, list) in [
        (
            EventQuery {
                actor: text("coder"),
                cursor,
                ..q()
            },
            crate::postings::Field::Actor,
        ),
        (
            EventQuery {
                root: text("alice@example.com"),
                actor: text("coder"),
                ..q()
            },
            crate::postings::Field::Actor,
        ),
        (
            EventQuery {
                run: text("run-1"),
                actor: text("coder"),
                kinds: vec![EventKind::ToolCall],
                ..q()
            },
            crate::postings::Field::Run,
        ),
        (
            EventQuery {
                target: text("filesystem"),
                run: text("run-1"),
                ..q()
            },
            crate::postings::Field::Target,
        ),
    ] {
        store
            .read(|conn| {
                let plan = crate::query::plan(&q, 10);
                assert_eq!(plan.list.map(|list| list.0), Some(list as i64), "{q:?}");
                let segments = explain(
                    conn,
                    crate::postings::SEGMENTS_SQL,
                    &[list as i64, 1].map(rusqlite::types::Value::Integer),
                );
                assert_eq!(
                    segments,
                    "SEARCH postings USING INDEX sqlite_autoindex_postings_1 (field=? AND key=?)"
                );
                let mut values = vec![rusqlite::types::Value::Text("[1, 2]".into())];
                values.extend(plan.filter_values().iter().cloned());
                let fetch = explain(conn, &plan.fetch_sql, &values);
                assert!(
                    fetch.starts_with("SCAN j VIRTUAL TABLE")
                        && fetch.ends_with("; SEARCH e USING INTEGER PRIMARY KEY (rowid=?)"),
                    "{q:?}\nplan: {fetch}"
                );
                Ok(())
            })
            .unwrap();
    }
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

/// A generated event and what the queries filter on.
struct Generated {
    label: String,
    second: i64,
    kind: EventKind,
    actor: &'static str,
    root: Option<&'static str>,
    run: Option<&'static str>,
    targets: Vec<&'static str>,
}

/// Events with few distinct identifiers, shared timestamps and out-of-order
/// observation times, so lists are long and pages cross ties.
fn generated(from: usize, count: usize) -> Vec<(Generated, Evaluated)> {
    const ACTORS: [&str; 3] = ["coder", "planner", "reviewer"];
    const ROOTS: [Option<&str>; 3] = [None, Some("alice@example.com"), Some("bob@example.com")];
    const RUNS: [Option<&str>; 4] = [None, Some("run-1"), Some("run-2"), Some("run-3")];
    const TOOLS: [&str; 2] = ["read_file", "write_file"];
    const RESOURCES: [&str; 5] = ["file:///a", "file:///b", "file:///c", "s3://d", "s3://e"];
    (from..from + count)
        .map(|i| {
            let g = Generated {
                label: format!("e{i}"),
                second: ((i * 7) % 13) as i64,
                kind: if i % 3 == 0 {
                    EventKind::DataAccess
                } else {
                    EventKind::ToolCall
                },
                actor: ACTORS[i % 3],
                root: ROOTS[(i / 2) % 3],
                run: RUNS[(i / 3) % 4],
                targets: if i % 3 == 0 {
                    vec![RESOURCES[i % 5]]
                } else {
                    // A resource that is also the tool's name is one posting.
                    vec![TOOLS[i % 2], "filesystem", RESOURCES[(i / 5) % 5]]
                },
            };
            let mut actor = json!({"current": {"type": "agent", "id": g.actor}});
            if let Some(root) = g.root {
                actor["root"] = json!({"type": "human", "id": root});
            }
            if let Some(run) = g.run {
                actor["current"]["run_id"] = json!(run);
            }
            let target = if g.kind == EventKind::DataAccess {
                json!({"resource": g.targets[0]})
            } else {
                json!({"tool": g.targets[0], "server": g.targets[1], "resource": g.targets[2]})
            };
            let kind = if g.kind == EventKind::DataAccess {
                "data_access"
            } else {
                "tool_call"
            };
            let evaluated = event(
                &g.label,
                g.second,
                json!({"kind": kind, "actor": actor, "target": target}),
            );
            (g, evaluated)
        })
        .collect()
}

/// The queries to compare, each with the filter it applies to a generated
/// event.
#[allow(clippy::type_complexity)]
fn comparisons() -> Vec<(EventQuery, Box<dyn Fn(&Generated) -> bool>)> {
    let text = |s: &str| Some(s.to_owned());
    let mut all: Vec<(EventQuery, Box<dyn Fn(&Generated) -> bool>)> = Vec::new();
    for order in [Order::Newest, Order::Oldest] {
        let q = || EventQuery {
            order,
            limit: 4,
            ..EventQuery::default()
        };
        all.push((q(), Box::new(|_| true)));
        for actor in ["coder", "planner", "reviewer"] {
            all.push((
                EventQuery {
                    actor: text(actor),
                    ..q()
                },
                Box::new(move |g| g.actor == actor),
            ));
        }
        for root in ["alice@example.com", "bob@example.com"] {
            all.push((
                EventQuery {
                    root: text(root),
                    ..q()
                },
                Box::new(move |g| g.root == Some(root)),
            ));
        }
        for run in ["run-1", "run-3"] {
            all.push((
                EventQuery {
                    run: text(run),
                    kinds: vec![EventKind::ToolCall],
                    ..q()
                },
                Box::new(move |g| g.run == Some(run) && g.kind == EventKind::ToolCall),
            ));
        }
        for target in ["filesystem", "read_file", "file:///a", "s3://e"] {
            all.push((
                EventQuery {
                    target: text(target),
                    ..q()
                },
                Box::new(move |g| g.targets.contains(&target)),
            ));
        }
        all.push((
            EventQuery {
                target: text("file:///b"),
                actor: text("coder"),
                root: text("alice@example.com"),
                since: Some(at(2)),
                until: Some(at(11)),
                ..q()
            },
            Box::new(|g| {
                g.targets.contains(&"file:///b")
                    && g.actor == "coder"
                    && g.root == Some("alice@example.com")
                    && (2..11).contains(&g.second)
            }),
        ));
        all.push((
            EventQuery {
                run: text("run-2"),
                actor: text("planner"),
                since: Some(at(5)),
                ..q()
            },
            Box::new(|g| g.run == Some("run-2") && g.actor == "planner" && g.second >= 5),
        ));
    }
    all
}

/// Checks every comparison against the events recorded so far, in record
/// order (which is their sequence order).
fn compare(store: &Store, recorded: &[Generated], when: &str) {
    for (q, keep) in comparisons() {
        let mut expected: Vec<(i64, usize)> = recorded
            .iter()
            .enumerate()
            .filter(|(_, g)| keep(g))
            .map(|(seq, g)| (g.second, seq))
            .collect();
        expected.sort_unstable();
        if q.order == Order::Newest {
            expected.reverse();
        }
        let expected: Vec<&str> = expected
            .iter()
            .map(|&(_, seq)| recorded[seq].label.as_str())
            .collect();
        assert_eq!(walk(store, &q), expected, "{when}: {q:?}");
    }
}

#[test]
fn queries_agree_wherever_the_postings_are() {
    // A limit of 1 freezes a run after every group, 13 every few groups, and
    // the default never in this test: postings are then in memory, in a run
    // being written out, in the table, or spread over all three.
    for max_pending_postings in [1, 13, StoreOptions::default().max_pending_postings] {
        let options = StoreOptions {
            max_pending_postings,
            ..StoreOptions::default()
        };
        let (dir, store) = open_with(options.clone());
        let mut recorded = Vec::new();
        let mut next = 0;
        for size in [1, 4, 2, 7, 3, 1, 5, 9, 2, 6] {
            let batch = generated(next, size);
            next += size;
            let (gs, events): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            record(&store, events);
            recorded.extend(gs);
            compare(
                &store,
                &recorded,
                &format!("{max_pending_postings} after {next}"),
            );
        }
        assert!(
            store.stats().pending_postings > 0 || max_pending_postings == 1,
            "some postings wait in memory"
        );
        store.close().unwrap();
        let store = Store::open(dir.path(), options).unwrap();
        assert_eq!(store.stats().pending_postings, 0, "closing wrote them all");
        compare(
            &store,
            &recorded,
            &format!("{max_pending_postings} reopened"),
        );
    }
}

#[test]
fn postings_lost_in_a_crash_are_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(crate::DATABASE_FILE);
    let mut recorded = Vec::new();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let (gs, events): (Vec<_>, Vec<_>) = generated(0, 10).into_iter().unzip();
    record(&store, events);
    recorded.extend(gs);
    store.close().unwrap();

    // The same insert code the writer runs, stopped without writing its
    // memory out, as a killed process would be: some postings of these
    // events reached the table in chunks of a run, the rest did not.
    let options = StoreOptions {
        max_pending_postings: 7,
        ..StoreOptions::default()
    };
    let mut raw = crate::raw::open(&path, &options).unwrap();
    for chunk in generated(10, 30).chunks(3) {
        let prepared: Vec<_> = chunk
            .iter()
            .map(|(_, e)| crate::raw::PreparedEvent::new(e.clone()).unwrap())
            .collect();
        raw.insert(&prepared).unwrap();
    }
    drop(raw);
    recorded.extend(generated(10, 30).into_iter().map(|(g, _)| g));
    let (in_table, through): (i64, i64) = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT (SELECT count(*) FROM postings),
                    (SELECT value FROM meta WHERE name = 'postings_through')",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert!(
        through < 40,
        "the crash left postings unwritten ({through})"
    );
    assert!(in_table > 0);

    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.stats().pending_postings, 0);
    compare(&store, &recorded, "after the rebuild");
    let through: i64 = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT value FROM meta WHERE name = 'postings_through'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(through, 40);
}

#[test]
fn a_scan_pages_through_every_event_in_commit_order() {
    let (_dir, store) = open();
    let events = scenario();
    record(&store, events[..2].to_vec());
    record(&store, events[2..].to_vec());
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.scan(after, 2).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        seen.extend(page.iter().map(label));
    }
    assert_eq!(seen, ["read", "s3", "spawn", "login", "write"]);
}

/// A finding opened by `rule` on `evaluated`, resting also on `earlier`.
fn opening(evaluated: &mut Evaluated, rule: &str, earlier: &[EventId]) -> custody_event::FindingId {
    use custody_event::{Analytic, Finding, FindingId, FindingKind, Severity};
    let event = &evaluated.event;
    let finding = Finding {
        id: FindingId::new_v7(),
        kind: FindingKind::Correlation,
        analytic: Analytic {
            id: rule.into(),
            title: format!("{rule} title"),
            tags: vec!["attack.t1098".into()],
        },
        severity: Severity::High,
        message: "found".into(),
        created_at: event.received_at,
        first_seen: event.observed_at,
        last_seen: event.observed_at,
        group: Vec::new(),
        chain: event.actor.clone(),
        events: earlier.iter().copied().chain([event.id]).collect(),
    };
    let id = finding.id;
    evaluated.signals.push(custody_engine::Signal {
        id: rule.into(),
        message: "found".into(),
        finding: Some(custody_engine::FindingNote::Opens(Box::new(finding))),
    });
    id
}

fn repeating(evaluated: &mut Evaluated, rule: &str, finding: custody_event::FindingId) {
    evaluated.signals.push(custody_engine::Signal {
        id: rule.into(),
        message: "again".into(),
        finding: Some(custody_engine::FindingNote::Repeats(finding)),
    });
}

#[test]
fn findings_are_stored_with_their_events_and_repeats() {
    let (_dir, store) = open();
    let mut live = store.subscribe_findings();
    let run = json!({"actor": {"root": {"type": "human", "id": "alice"},
        "current": {"type": "agent", "id": "coder", "run_id": "run-1"}}});
    let read = event("read", 1, run.clone());
    let mut post = event("post", 2, run.clone());
    let id = opening(&mut post, "exfil", &[read.event.id]);
    record(&store, vec![read.clone(), post.clone()]);

    let opened = live.try_recv().expect("the commit published its finding");
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].finding.id, id);

    // A repeat in a later batch links its event and counts it.
    let mut again = event("again", 9, run.clone());
    repeating(&mut again, "exfil", id);
    record(&store, vec![again.clone()]);
    assert!(live.try_recv().is_err(), "a repeat opens nothing");

    let stored = store.finding(id).unwrap().expect("stored");
    assert_eq!(stored.repeats, 1);
    assert_eq!(stored.finding.last_seen, at(9));
    assert_eq!(
        stored.finding.events,
        vec![read.event.id, post.event.id, again.event.id],
        "every linked event, in observation order"
    );
    assert_eq!(store.findings_of_event(again.event.id).unwrap(), vec![id]);

    // Resubmitting an event stores neither it nor its finding again.
    let mut resent = post.clone();
    resent.signals.clear();
    opening(&mut resent, "exfil", &[]);
    record(&store, vec![resent]);

    let mut other = event(
        "other",
        20,
        json!({"actor": {"current": {"type": "agent", "id": "x", "run_id": "run-2"}}}),
    );
    opening(&mut other, "spawn-storm", &[]);
    record(&store, vec![other]);
    let all = store
        .findings(&crate::FindingQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        all.findings
            .iter()
            .map(|f| f.finding.analytic.id.as_str())
            .collect::<Vec<_>>(),
        ["spawn-storm", "exfil"],
        "newest first"
    );
    let by_run = store
        .findings(&crate::FindingQuery {
            run: Some("run-1".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_run.findings.len(), 1);
    assert_eq!(by_run.findings[0].repeats, 1);
    let by_rule = store
        .findings(&crate::FindingQuery {
            rule: Some("spawn-storm".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_rule.findings.len(), 1);
    let critical = store
        .findings(&crate::FindingQuery {
            min_severity: Some(custody_event::Severity::Critical),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(critical.findings.is_empty());

    // Pages of one, by cursor.
    let first = store
        .findings(&crate::FindingQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    let next = first.next.expect("a second page");
    let second = store
        .findings(&crate::FindingQuery {
            limit: 1,
            cursor: Some(next),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(second.findings[0].finding.id, id);
    assert!(second.next.is_none());
    let bad = store.findings(&crate::FindingQuery {
        limit: 1,
        cursor: Some("nope".into()),
        ..Default::default()
    });
    assert!(bad.is_err());
}

#[test]
fn detection_state_is_kept_by_name_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store
        .put_state(&[
            ("baseline:coder".into(), "{\"v\":1}".into()),
            ("baseline:reviewer".into(), "{\"v\":2}".into()),
            ("other:x".into(), "{}".into()),
        ])
        .unwrap();
    store
        .put_state(&[("baseline:coder".into(), "{\"v\":3}".into())])
        .unwrap();
    store.close().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        store.states("baseline:").unwrap(),
        [
            ("baseline:coder".to_owned(), "{\"v\":3}".to_owned()),
            ("baseline:reviewer".to_owned(), "{\"v\":2}".to_owned())
        ]
    );
    assert!(store.delete_state("baseline:coder").unwrap());
    assert!(!store.delete_state("baseline:coder").unwrap());
    assert_eq!(store.states("baseline:").unwrap().len(), 1);
}

fn action(id: &str, playbook: &str, monitor: bool, outcome: &str) -> custody_engine::ActionRecord {
    custody_engine::ActionRecord {
        id: id.into(),
        playbook: playbook.into(),
        action: "kill".into(),
        target: "run:run-1".into(),
        monitor,
        outcome: outcome.into(),
        detail: "why".into(),
        finding: None,
    }
}

#[test]
fn actions_are_stored_with_their_event_and_updated_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut triggering = event("t", 1, json!({}));
    triggering.actions = vec![
        action("a-1", "p", false, "done"),
        action("a-2", "p", false, "queued"),
        action("a-3", "watch", true, "would"),
    ];
    let id = triggering.event.id;
    record(&store, vec![triggering.clone()]);
    // Sent again, the event and its actions are stored once.
    record(&store, vec![triggering]);
    store
        .insert_action(&action("a-4", "api", false, "done"))
        .unwrap();
    let response = json!({"method": "POST", "status": 204});
    assert!(
        store
            .update_action("a-2", "done", "deactivated", Some(&response))
            .unwrap()
    );
    assert!(!store.update_action("nope", "done", "", None).unwrap());

    let all = store
        .actions(&ActionQuery {
            limit: 10,
            ..ActionQuery::default()
        })
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|a| a.action.id.as_str()).collect();
    assert_eq!(ids, ["a-4", "a-3", "a-2", "a-1"]);
    assert_eq!(all[3].event.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(all[0].event, None);
    assert_eq!(all[2].action.outcome, "done");
    assert_eq!(all[2].action.detail, "deactivated");
    assert_eq!(all[2].response.as_ref(), Some(&response));
    assert!(all[2].updated_at >= all[2].at);
    let monitor = store
        .actions(&ActionQuery {
            monitor: Some(true),
            limit: 10,
            ..ActionQuery::default()
        })
        .unwrap();
    assert_eq!(monitor.len(), 1);
    assert_eq!(monitor[0].action.outcome, "would");
    let page = store
        .actions(&ActionQuery {
            playbook: Some("p".into()),
            limit: 1,
            ..ActionQuery::default()
        })
        .unwrap();
    assert_eq!(page[0].action.id, "a-2");
    let next = store
        .actions(&ActionQuery {
            playbook: Some("p".into()),
            limit: 1,
            before: Some(page[0].seq),
            ..ActionQuery::default()
        })
        .unwrap();
    assert_eq!(next[0].action.id, "a-1");
    let counts: Vec<(String, bool, String, u64)> = store
        .action_counts()
        .unwrap()
        .into_iter()
        .map(|c| (c.playbook, c.monitor, c.outcome, c.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("api".into(), false, "done".into(), 1),
            ("p".into(), false, "done".into(), 2),
            ("watch".into(), true, "would".into(), 1),
        ]
    );
}
