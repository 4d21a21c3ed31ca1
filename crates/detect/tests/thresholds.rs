//! Thresholds counted per run, agent type, human or team over a sliding
//! window, each crossing a finding.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use custody_detect::findings::OpenFindings;
use custody_detect::{ThresholdConfig, Thresholds};
use custody_engine::{Detect, FindingNote};
use custody_event::{EventId, RuntimeEvent};
use custody_graph::Sensitivity;
use serde_json::{Value, json};

fn at(secs: i64) -> DateTime<Utc> {
    "2026-11-26T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::seconds(secs)
}

fn event(root: &str, agent: &str, run: &str, secs: i64, fields: Value) -> RuntimeEvent {
    let mut event = json!({
        "kind": "tool_call", "action": "tools/call", "observed_at": at(secs),
        "source": {"type": "gateway"},
        "actor": {"root": {"type": "human", "id": root},
                  "current": {"type": "agent", "id": agent, "run_id": run}},
        "outcome": {"status": "success"},
    });
    event
        .as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    custody_event::decode_value(event)
        .unwrap()
        .into_event(Utc::now(), EventId::new_v7)
}

fn stage(toml: &str) -> Thresholds {
    #[derive(serde::Deserialize)]
    struct File {
        thresholds: Vec<ThresholdConfig>,
        #[serde(default)]
        teams: BTreeMap<String, Vec<String>>,
    }
    let file: File = toml::from_str(toml).unwrap();
    Thresholds::new(
        file.thresholds,
        file.teams,
        Sensitivity::new(["*payroll*"]),
        1000,
        Arc::new(OpenFindings::new(1000, 600)),
    )
    .unwrap()
}

/// For each event, whether it opened a finding (`o`), repeated one (`r`)
/// or neither (`.`).
fn trace(stage: &Thresholds, events: &[RuntimeEvent]) -> String {
    events
        .iter()
        .map(
            |event| match stage.detect(event).first().and_then(|s| s.finding.as_ref()) {
                Some(FindingNote::Opens(_)) => 'o',
                Some(FindingNote::Repeats(_)) => 'r',
                None => '.',
            },
        )
        .collect()
}

fn resource(run: &str, secs: i64, name: &str) -> RuntimeEvent {
    event(
        "alice",
        "coder",
        run,
        secs,
        json!({"target": {"resource": name}}),
    )
}

#[test]
fn distinct_resources_per_run_within_the_window() {
    let stage = stage(
        "[[thresholds]]\nname = \"reach\"\nmetric = \"distinct_resources\"\nlimit = 3\nwindow = \"1m\"\n",
    );
    let events = [
        resource("run-1", 0, "a"),
        resource("run-1", 1, "a"),
        resource("run-2", 2, "b"),
        resource("run-1", 3, "b"),
        resource("run-1", 4, "c"),
        resource("run-1", 5, "d"),
        resource("run-1", 6, "e"),
        resource("run-2", 7, "c"),
    ];
    assert_eq!(
        trace(&stage, &events),
        ".....o..",
        "above the limit, one finding"
    );
    // Far later, the window has emptied.
    let later = [resource("run-1", 600, "f"), resource("run-1", 601, "g")];
    assert_eq!(trace(&stage, &later), "..");
}

#[test]
fn a_finding_names_its_events_group_and_count() {
    let stage = stage(
        "[[thresholds]]\nname = \"busy\"\nmetric = \"call_rate\"\nlimit = 2\nwindow = \"10s\"\nseverity = \"high\"\n",
    );
    let events: Vec<_> = (0..3).map(|i| resource("run-1", i, "x")).collect();
    let signals: Vec<_> = events.iter().flat_map(|e| stage.detect(e)).collect();
    let Some(FindingNote::Opens(finding)) = &signals[0].finding else {
        panic!("{signals:?}")
    };
    assert_eq!(finding.analytic.id, "threshold.busy");
    assert_eq!(finding.group[0].field, "chain.run");
    assert_eq!(finding.group[0].value, "run-1");
    assert_eq!(
        finding.events,
        events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(finding.first_seen, at(0));
    assert!(
        finding.message.contains("3 calls (limit 2)"),
        "{}",
        finding.message
    );
    assert_eq!(finding.severity, custody_event::Severity::High);
}

#[test]
fn scopes_pick_their_events() {
    let stage = stage(
        "[[thresholds]]\nname = \"coder\"\nmetric = \"call_rate\"\nlimit = 1\nper = \"agent_type\"\nagent_type = \"coder\"\n\
         [[thresholds]]\nname = \"team\"\nmetric = \"call_rate\"\nlimit = 1\nper = \"team\"\nteam = \"platform\"\n\
         [teams]\nplatform = [\"bob\", \"carol\"]\n",
    );
    let ids = |events: &[RuntimeEvent]| -> Vec<String> {
        events
            .iter()
            .flat_map(|e| stage.detect(e))
            .filter(|s| matches!(s.finding, Some(FindingNote::Opens(_))))
            .map(|s| s.id)
            .collect()
    };
    // alice's coder, in two runs: the per-type counter sees both.
    let alice = [
        event("alice", "coder", "run-1", 0, json!({})),
        event("alice", "coder", "run-2", 1, json!({})),
    ];
    assert_eq!(ids(&alice), ["threshold.coder"]);
    // bob and carol are one team; dave is not in it.
    let team = [
        event("bob", "writer", "run-3", 2, json!({})),
        event("dave", "writer", "run-4", 3, json!({})),
        event("carol", "writer", "run-5", 4, json!({})),
    ];
    assert_eq!(ids(&team), ["threshold.team"]);
}

#[test]
fn depth_fan_out_sensitive_writes_and_credentials() {
    let stage = stage(
        "[[thresholds]]\nname = \"deep\"\nmetric = \"depth\"\nlimit = 2\n\
         [[thresholds]]\nname = \"spawns\"\nmetric = \"fan_out\"\nlimit = 1\n\
         [[thresholds]]\nname = \"payroll\"\nmetric = \"sensitive_writes\"\nlimit = 0\n\
         [[thresholds]]\nname = \"keys\"\nmetric = \"credentials_created\"\nlimit = 0\n",
    );
    let fired = |event: RuntimeEvent| -> Vec<String> {
        stage.detect(&event).into_iter().map(|s| s.id).collect()
    };
    let deep = event(
        "alice",
        "c",
        "run-9",
        0,
        json!({"actor": {"root": {"type": "human", "id": "alice"},
        "agents": [{"type": "agent", "id": "a", "run_id": "r1"}, {"type": "agent", "id": "b", "run_id": "r2"}],
        "current": {"type": "agent", "id": "c", "run_id": "run-9"}}}),
    );
    assert_eq!(fired(deep), ["threshold.deep"]);
    let spawn = |secs| {
        event(
            "alice",
            "p",
            "run-1",
            secs,
            json!({"kind": "agent_spawn", "action": "spawn"}),
        )
    };
    assert!(fired(spawn(0)).is_empty());
    assert_eq!(fired(spawn(1)), ["threshold.spawns"]);
    let read = event(
        "alice",
        "p",
        "run-1",
        2,
        json!({"kind": "data_access", "action": "s3:GetObject",
        "target": {"resource": "s3://payroll/2026.csv"}}),
    );
    assert!(fired(read).is_empty(), "a read is not a write");
    let write = event(
        "alice",
        "p",
        "run-1",
        3,
        json!({"kind": "data_access", "action": "s3:PutObject",
        "target": {"resource": "s3://payroll/2026.csv"}}),
    );
    assert_eq!(fired(write), ["threshold.payroll"]);
    let key = event(
        "alice",
        "p",
        "run-1",
        4,
        json!({"kind": "privilege_change", "action": "iam:CreateAccessKey",
        "target": {"resource": "AKIAEXAMPLE", "resource_type": "aws_access_key"}}),
    );
    assert_eq!(fired(key), ["threshold.keys"]);
}

#[test]
fn bad_thresholds_are_refused_by_name() {
    let refused = |toml: &str| {
        #[derive(serde::Deserialize)]
        struct File {
            thresholds: Vec<ThresholdConfig>,
        }
        let file: File = toml::from_str(toml).unwrap();
        Thresholds::new(
            file.thresholds,
            BTreeMap::new(),
            Sensitivity::default(),
            10,
            Arc::new(OpenFindings::new(10, 600)),
        )
        .unwrap_err()
    };
    let error = refused(
        "[[thresholds]]\nname = \"x\"\nmetric = \"call_rate\"\nlimit = 1\nwindow = \"ten minutes\"\n",
    );
    assert!(error.contains("thresholds[0] (`x`): window"), "{error}");
    let error = refused(
        "[[thresholds]]\nname = \"x\"\nmetric = \"call_rate\"\nlimit = 1\nteam = \"nobody\"\n",
    );
    assert!(
        error.contains("team: `nobody` is not in [teams]"),
        "{error}"
    );
    let error = refused(
        "[[thresholds]]\nname = \"x\"\nmetric = \"call_rate\"\nlimit = 1\n[[thresholds]]\nname = \"x\"\nmetric = \"depth\"\nlimit = 1\n",
    );
    assert!(error.contains("thresholds[1] (`x`): name"), "{error}");
}

#[test]
fn groups_are_bounded() {
    let configs: Vec<ThresholdConfig> = toml::from_str::<toml::Table>(
        "[[thresholds]]\nname = \"reach\"\nmetric = \"distinct_resources\"\nlimit = 5\n",
    )
    .unwrap()["thresholds"]
        .clone()
        .try_into()
        .unwrap();
    let stage = Thresholds::new(
        configs,
        BTreeMap::new(),
        Sensitivity::default(),
        3,
        Arc::new(OpenFindings::new(10, 600)),
    )
    .unwrap();
    for run in 0..10 {
        stage.detect(&resource(&format!("run-{run}"), run, "x"));
    }
    assert_eq!(
        stage
            .groups_evicted
            .load(std::sync::atomic::Ordering::Relaxed),
        7
    );
}
