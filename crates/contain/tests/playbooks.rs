//! Playbooks as the act stage: what fires them, the order and failure
//! handling of their actions, de-duplication, and monitor mode.

use std::sync::Arc;

use custody_contain::playbook::{self, Mode};
use custody_contain::{Containment, MeasureKind, Playbooks, Scope, Step};
use custody_engine::{Act, Decision, FindingNote, Signal};
use custody_event::{
    Analytic, Finding, FindingId, FindingKind, PrincipalKind, RuntimeEvent, Severity,
};

/// A stored-form event: alice's planner (run-1) spawned a coder (run-2),
/// which acts.
fn event() -> RuntimeEvent {
    serde_json::from_value(serde_json::json!({
        "version": 1,
        "id": "01a2122b-fb59-736f-8580-28d6099950d8",
        "kind": "tool_call",
        "action": "tools/call",
        "observed_at": "2026-11-25T10:06:41.502Z",
        "received_at": "2026-11-25T10:06:42.009Z",
        "source": {"type": "gateway"},
        "actor": {
            "root": {"type": "human", "id": "alice@example.com"},
            "agents": [{"type": "agent", "id": "planner", "run_id": "run-1"}],
            "current": {"type": "agent", "id": "coder", "run_id": "run-2"},
            "credential": {"type": "aws_access_key", "id": "AKIAEXAMPLE"}
        },
        "target": {"tool": "post", "server": "web"},
        "outcome": {"status": "success"},
        "attribution": {"method": "authenticated"},
        "raw": {"responseElements": {"accessKey": {"accessKeyId": "AKIANEW"}}}
    }))
    .unwrap()
}

fn opens(rule: &str, severity: Severity, tags: &[&str], event: &RuntimeEvent) -> Signal {
    let finding = Finding {
        id: FindingId::new_v7(),
        kind: FindingKind::Correlation,
        analytic: Analytic {
            id: rule.into(),
            title: format!("Title of {rule}"),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        },
        severity,
        message: "something".into(),
        created_at: event.received_at,
        first_seen: event.observed_at,
        last_seen: event.observed_at,
        group: Vec::new(),
        chain: event.actor.clone(),
        events: vec![event.id],
    };
    Signal {
        id: rule.into(),
        message: "something".into(),
        finding: Some(FindingNote::Opens(Box::new(finding))),
    }
}

fn load(
    text: &str,
) -> (
    Playbooks,
    Arc<Containment>,
    tokio::sync::mpsc::Receiver<custody_contain::Job>,
) {
    let playbooks = playbook::parse("test.toml", text).unwrap();
    let containment = Arc::new(Containment::new());
    let (playbooks, jobs) = Playbooks::new(playbooks, containment.clone());
    (playbooks, containment, jobs)
}

#[test]
fn a_matching_finding_applies_its_measures_in_order_and_queues_the_rest() {
    let (playbooks, containment, mut jobs) = load(
        r#"
[[playbook]]
id = "exfil"
[playbook.when]
rules = ["exfil.*"]
severity = "high"
tags = ["attack.exfiltration"]
agent_types = ["coder"]
roots = ["alice@example.com"]
[[playbook.actions]]
do = "kill"
on = "root_run"
[[playbook.actions]]
do = "respond"
responder = "aws.deactivate_access_key"
target_field = "raw.responseElements.accessKey.accessKeyId"
[[playbook.actions]]
do = "quarantine"
on = "root"
"#,
    );
    let event = event();
    let signal = opens(
        "exfil.sink",
        Severity::Critical,
        &["attack.exfiltration"],
        &event,
    );
    let records = playbooks.act(&event, &[signal], &Decision::allow());
    let summary: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r.action.as_str(), r.target.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("kill", "run:run-1", "done"),
            ("respond.aws.deactivate_access_key", "AKIANEW", "queued"),
            ("quarantine", "principal:alice@example.com", "queued"),
        ]
    );
    // The kill is in force at once, over the run and its sub-agents.
    let measure = containment.check(&event.actor).unwrap();
    assert_eq!(measure.kind, MeasureKind::Kill);
    assert_eq!(measure.scope, Scope::Run("run-1".into()));
    assert_eq!(measure.by, "playbook:exfil");
    assert!(measure.finding.is_some());
    // What follows the first outside action waits for the executor, in order.
    let job = jobs.try_recv().unwrap();
    assert_eq!(job.playbook, "exfil");
    let steps: Vec<&Step> = job.steps.iter().map(|s| &s.step).collect();
    assert_eq!(
        steps,
        [
            &Step::Respond {
                responder: "aws.deactivate_access_key".into(),
                target: "AKIANEW".into(),
                dry_run: false
            },
            &Step::Measure(
                MeasureKind::Quarantine,
                Scope::Principal("alice@example.com".into())
            ),
        ]
    );
    assert_eq!(job.steps[0].id, records[1].id);

    // The same run again within the window: nothing.
    let again = opens(
        "exfil.sink",
        Severity::Critical,
        &["attack.exfiltration"],
        &event,
    );
    assert!(
        playbooks
            .act(&event, &[again], &Decision::allow())
            .is_empty()
    );
    let counts = &playbooks.counts()[0].1;
    assert_eq!((counts.fired, counts.deduplicated), (1, 1));
}

#[test]
fn conditions_that_do_not_hold_fire_nothing() {
    let (playbooks, containment, _jobs) = load(
        r#"
[[playbook]]
id = "p"
[playbook.when]
rules = ["exfil.sink"]
severity = "high"
tags = ["attack.exfiltration"]
agent_types = ["coder"]
[[playbook.actions]]
do = "kill"
"#,
    );
    let event = event();
    for signal in [
        opens(
            "exfil.sink",
            Severity::Medium,
            &["attack.exfiltration"],
            &event,
        ),
        opens("exfil.sink", Severity::High, &["attack.discovery"], &event),
        opens("other", Severity::High, &["attack.exfiltration"], &event),
        // A signal that opens no finding has no severity or tags.
        Signal::new("exfil.sink", "plain"),
    ] {
        assert!(
            playbooks
                .act(&event, &[signal], &Decision::allow())
                .is_empty()
        );
    }
    let mut other = event.clone();
    other.actor.current.id = "reviewer".into();
    let signal = opens(
        "exfil.sink",
        Severity::High,
        &["attack.exfiltration"],
        &other,
    );
    assert!(
        playbooks
            .act(&other, &[signal], &Decision::allow())
            .is_empty()
    );
    // A repeat of an open finding was answered when it opened.
    let repeat = Signal {
        id: "exfil.sink".into(),
        message: "again".into(),
        finding: Some(FindingNote::Repeats(FindingId::new_v7())),
    };
    assert!(
        playbooks
            .act(&event, &[repeat], &Decision::allow())
            .is_empty()
    );
    assert!(containment.is_empty());
}

#[test]
fn monitor_mode_records_what_it_would_do_and_does_nothing() {
    let (playbooks, containment, mut jobs) = load(
        r#"
[[playbook]]
id = "watch"
mode = "monitor"
per = "finding"
[[playbook.actions]]
do = "kill"
[[playbook.actions]]
do = "respond"
responder = "webhook.soc"
"#,
    );
    assert_eq!(playbooks.counts()[0].0.mode, Mode::Monitor);
    let event = event();
    for _ in 0..3 {
        let signal = opens("any", Severity::Low, &[], &event);
        let records = playbooks.act(&event, &[signal], &Decision::allow());
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.monitor && r.outcome == "would"));
        assert_eq!(records[0].target, "run:run-2");
        assert_eq!(records[1].target, "AKIAEXAMPLE");
    }
    assert!(containment.is_empty());
    assert!(jobs.try_recv().is_err());
    let counts = &playbooks.counts()[0].1;
    assert_eq!((counts.fired, counts.would, counts.done), (3, 6, 0));
}

#[test]
fn an_action_that_cannot_resolve_fails_and_stop_skips_the_rest() {
    let (playbooks, containment, _jobs) = load(
        r#"
[[playbook]]
id = "strict"
[[playbook.actions]]
do = "respond"
responder = "okta.suspend"
target_field = "raw.no.such.field"
on_failure = "stop"
[[playbook.actions]]
do = "kill"

[[playbook]]
id = "lenient"
[[playbook.actions]]
do = "quarantine"
on = "credential"
[[playbook.actions]]
do = "kill"
"#,
    );
    let event = event();
    let signal = opens("any", Severity::Low, &[], &event);
    let records = playbooks.act(&event, &[signal], &Decision::allow());
    let outcomes: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.playbook.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("strict", "failed"),
            ("strict", "skipped"),
            ("lenient", "done"),
            ("lenient", "done")
        ]
    );
    assert!(
        records[0].detail.contains("raw.no.such.field"),
        "{}",
        records[0].detail
    );
    assert_eq!(containment.len(), 2);
    let mut without_credential = event.clone();
    without_credential.actor.credential = None;
    without_credential.actor.current.kind = PrincipalKind::Agent;
    assert_eq!(
        containment.check(&without_credential.actor).unwrap().kind,
        MeasureKind::Kill
    );
}

#[test]
fn bad_playbooks_are_refused_with_where_and_why() {
    let cases = [
        ("[[playbook]]\nid = \"x\"\nactions = []\n", "has no actions"),
        (
            "[[playbook]]\nid = \"x\"\n[[playbook.actions]]\ndo = \"explode\"\n",
            "test.toml:4",
        ),
        (
            "[[playbook]]\nid = \"x\"\n[[playbook.actions]]\ndo = \"kill\"\non = \"agent\"\n",
            "acts on a run",
        ),
        (
            "[[playbook]]\nid = \"x\"\n[[playbook.actions]]\ndo = \"respond\"\n",
            "needs a `responder`",
        ),
        (
            "[[playbook]]\nid = \"x\"\n[[playbook.actions]]\ndo = \"respond\"\nresponder = \"pager.duty\"\n",
            "unknown responder `pager.duty`",
        ),
        (
            "[[playbook]]\nid = \"x\"\nmode = \"dry\"\n[[playbook.actions]]\ndo = \"kill\"\n",
            "test.toml:3",
        ),
    ];
    for (text, expected) in cases {
        let error = playbook::parse("test.toml", text).unwrap_err();
        assert!(error.contains(expected), "{expected:?} in {error:?}");
    }
    let two = playbook::parse(
        "a.toml",
        "[[playbook]]\nid = \"x\"\n[[playbook.actions]]\ndo = \"kill\"\n",
    )
    .unwrap();
    let both: Vec<_> = two.iter().chain(two.iter()).cloned().collect();
    assert!(
        playbook::check_unique(&both)
            .unwrap_err()
            .contains("two playbooks have the id `x`")
    );
}

#[test]
fn signals_are_noted_by_run_for_the_policies_even_without_playbooks() {
    let (playbooks, _containment, _jobs) = load("");
    let event = event();
    let signals = [
        opens("exfil.sink", Severity::High, &[], &event),
        Signal::new("baseline.first_seen", "a new tool"),
    ];
    assert!(
        playbooks
            .act(&event, &signals, &Decision::allow())
            .is_empty()
    );
    let noted = playbooks.signals();
    // The run itself, and a sub-agent beneath it, see what was raised.
    let raised = noted.raised(&event.actor);
    assert_eq!(raised.findings, ["exfil.sink"]);
    assert_eq!(raised.baseline, ["baseline.first_seen"]);
    let mut beneath = event.actor.clone();
    beneath.agents.push(beneath.current.clone());
    beneath.current.id = "tester".into();
    beneath.current.run_id = Some("run-3".into());
    assert_eq!(noted.raised(&beneath).findings, ["exfil.sink"]);
    // The run above does not.
    let mut above = event.actor.clone();
    above.current = above.agents.pop().unwrap();
    assert_eq!(noted.raised(&above), custody_contain::Raised::default());
}
