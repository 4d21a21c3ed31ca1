//! Baselines: a type learns on one set of runs; afterwards a run using a
//! tool it never used is a `first_seen`, runs like the learned ones are
//! nothing, and a run far faster than learned is a `rate`.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use custody_detect::findings::OpenFindings;
use custody_detect::{BaselineConfig, Baselines};
use custody_engine::{Detect, FindingNote, Signal};
use custody_event::{EventId, RuntimeEvent};
use serde_json::json;

fn at(millis: i64) -> DateTime<Utc> {
    "2026-11-26T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::milliseconds(millis)
}

fn call(agent: &str, run: &str, tool: &str, millis: i64) -> RuntimeEvent {
    custody_event::decode_value(json!({
        "kind": "tool_call", "action": "tools/call", "observed_at": at(millis),
        "source": {"type": "gateway"},
        "actor": {"root": {"type": "human", "id": "alice"},
                  "current": {"type": "agent", "id": agent, "version": "2", "run_id": run}},
        "target": {"tool": tool, "server": "github", "resource": format!("repo/{tool}")},
        "outcome": {"status": "success"},
    }))
    .unwrap()
    .into_event(Utc::now(), EventId::new_v7)
}

fn baselines(min_events: u64) -> Baselines {
    Baselines::new(
        BaselineConfig {
            learning: Duration::hours(1),
            min_events,
            ..BaselineConfig::default()
        },
        Arc::new(OpenFindings::new(1000, 600)),
    )
}

/// Ten runs of the learned routine: read, edit, test, a few seconds apart.
fn learn(stage: &Baselines) {
    for run in 0..10 {
        for (i, tool) in ["read_file", "edit_file", "run_tests"].iter().enumerate() {
            let millis = run * 60_000 + i as i64 * 5_000;
            assert!(
                stage
                    .detect(&call("coder", &format!("learn-{run}"), tool, millis))
                    .is_empty()
            );
        }
    }
}

fn ids(signals: &[Signal]) -> Vec<&str> {
    signals.iter().map(|s| s.id.as_str()).collect()
}

#[test]
fn a_never_used_tool_is_first_seen_and_the_routine_is_nothing() {
    let stage = baselines(10);
    learn(&stage);
    let learned = stage.get("coder@2").unwrap();
    assert!(
        learned.enforced_since.is_none(),
        "still within the learning hour"
    );
    assert_eq!(learned.tools.len(), 3);
    assert!(learned.transitions.contains("read_file -> edit_file"));

    // Two hours on: the routine is quiet.
    let later = 2 * 3_600_000;
    for (i, tool) in ["read_file", "edit_file", "run_tests"].iter().enumerate() {
        let signals = stage.detect(&call("coder", "same", tool, later + i as i64 * 5_000));
        assert!(signals.is_empty(), "{tool}: {signals:?}");
    }
    assert!(stage.get("coder@2").unwrap().enforced_since.is_some());

    // A never-used tool: first_seen for the tool, its resource, and the
    // transition into it.
    let signals = stage.detect(&call("coder", "odd", "read_file", later + 60_000));
    assert!(signals.is_empty());
    let signals = stage.detect(&call("coder", "odd", "delete_repo", later + 61_000));
    assert_eq!(ids(&signals), ["baseline.first_seen"; 3], "{signals:?}");
    let Some(FindingNote::Opens(finding)) = &signals[0].finding else {
        panic!("{signals:?}")
    };
    assert_eq!(finding.group[0].value, "coder@2");
    assert_eq!(finding.group[1].field, "tool");
    assert_eq!(finding.group[1].value, "delete_repo");
    assert!(
        finding
            .message
            .contains("never used by coder@2 in 30 events"),
        "{}",
        finding.message
    );
    // A known pair of tools in a new order is a new transition only.
    let signals = stage.detect(&call("coder", "odd2", "run_tests", later + 62_000));
    assert!(signals.is_empty());
    let signals = stage.detect(&call("coder", "odd2", "read_file", later + 63_000));
    assert_eq!(ids(&signals), ["baseline.first_seen"]);

    // Another type learns on its own.
    assert!(
        stage
            .detect(&call("reviewer", "r", "delete_repo", later))
            .is_empty()
    );
}

#[test]
fn a_type_is_enforced_only_after_enough_events() {
    let stage = baselines(1000);
    learn(&stage);
    let signals = stage.detect(&call("coder", "odd", "delete_repo", 3 * 3_600_000));
    assert!(signals.is_empty(), "30 events are not enough to judge by");
}

#[test]
fn a_run_far_faster_than_learned_is_a_rate_signal() {
    let stage = baselines(10);
    learn(&stage);
    let later = 2 * 3_600_000;
    let mut fired = Vec::new();
    for i in 0..12 {
        let signals = stage.detect(&call("coder", "fast", "read_file", later + i * 100));
        fired.extend(signals.into_iter().map(|s| s.id));
    }
    // The peak was 3 calls a minute: the limit is max(3 * 3, 3 + 5) = 9,
    // passed by the 10th, 11th and 12th calls. (Calling read_file after
    // read_file is also a transition it never made.)
    let rate: Vec<_> = fired.iter().filter(|id| *id == "baseline.rate").collect();
    assert_eq!(
        rate.len(),
        1,
        "one finding, the later calls counted: {fired:?}"
    );
}

#[test]
fn baselines_persist_reset_and_stay_bounded() {
    let stage = baselines(10);
    learn(&stage);
    let changed = stage.take_changed();
    assert_eq!(changed.len(), 1);
    assert!(stage.take_changed().is_empty(), "taken once");

    // Restored into a fresh stage, it is the same baseline.
    let copy = baselines(10);
    copy.restore(changed.clone());
    assert_eq!(copy.get("coder@2"), Some(changed[0].clone()));
    let json = serde_json::to_string(&changed[0]).unwrap();
    assert_eq!(
        serde_json::from_str::<custody_detect::TypeBaseline>(&json).unwrap(),
        changed[0]
    );

    // Reset: it learns again.
    assert!(copy.reset("coder@2"));
    assert!(copy.get("coder@2").is_none());
    assert!(
        copy.detect(&call("coder", "x", "delete_repo", 10 * 3_600_000))
            .is_empty()
    );

    // At most max_values values per dimension: beyond, truncated.
    let small = Baselines::new(
        BaselineConfig {
            learning: Duration::hours(1),
            min_events: 1,
            max_values: 2,
            max_types: 2,
            ..BaselineConfig::default()
        },
        Arc::new(OpenFindings::new(10, 600)),
    );
    for (i, tool) in ["a", "b", "c"].iter().enumerate() {
        small.detect(&call("coder", "r", tool, i as i64));
    }
    let baseline = small.get("coder@2").unwrap();
    assert_eq!(baseline.tools.len(), 2);
    assert!(baseline.truncated.contains(&"tool".to_owned()));
    // A truncated dimension reports nothing new.
    let late = small.detect(&call("coder", "r2", "z", 2 * 3_600_000));
    assert!(
        late.iter().all(|s| !s.message.contains("tool `z`")),
        "{late:?}"
    );
    for agent in ["x", "y", "z"] {
        small.detect(&call(agent, "r", "a", 0));
    }
    assert_eq!(small.list().len(), 2);
    assert_eq!(
        small
            .types_evicted
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}
