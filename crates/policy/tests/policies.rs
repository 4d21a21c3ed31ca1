//! Cedar policies over the identity chain: who a policy covers, forbid
//! over permit, holds, the context (the event's and its run's facts),
//! errors with file and line, versions, and reloads (of files or a
//! directory) that keep the running policies when the new ones do not
//! load.

use std::sync::Arc;

use chrono::Utc;
use custody_engine::{Decide, Signal, Verdict};
use custody_event::{EventId, RuntimeEvent};
use custody_policy::{Blast, Cedar, Policies, RunFacts, read_dir};
use serde_json::json;

/// A call by alice's planner's sub-agent `coder` (run-2), or by bob's.
fn call(root: &str, tool: &str) -> RuntimeEvent {
    custody_event::decode_value(json!({
        "kind": "tool_call", "action": "tools/call", "observed_at": "2026-11-26T10:00:00Z",
        "source": {"type": "gateway"},
        "actor": {"root": {"type": "human", "id": root},
                  "agents": [{"type": "agent", "id": "planner", "run_id": "run-1"}],
                  "current": {"type": "agent", "id": "coder", "run_id": "run-2"}},
        "target": {"tool": tool, "server": "github"},
        "outcome": {"status": "success"},
        "attributes": {"mcp.arguments": {"repo": "acme/payments"}},
    }))
    .unwrap()
    .into_event(Utc::now(), EventId::new_v7)
}

fn load(text: &str) -> Policies {
    Policies::load(&[("base.cedar".into(), text.into())])
        .unwrap_or_else(|errors| panic!("{errors:?}"))
}

const BASE: &str = r#"
@id("allow-all")
permit(principal, action, resource);

@id("no-deletes-for-alice-agents")
@reason("alice's agents may not delete repositories")
forbid(principal in User::"alice@example.com", action == Action::"tools/call", resource == Tool::"delete_repo");

@id("hold-pushes")
@hold("pushes by a coder wait for a human")
forbid(principal in Agent::"coder", action, resource == Tool::"git_push");
"#;

#[test]
fn a_policy_on_a_human_covers_the_sub_agents_of_their_agents() {
    let policies = load(BASE);
    let denied = policies.decide(&call("alice@example.com", "delete_repo"), &[]);
    assert_eq!(denied.verdict, Verdict::Deny);
    assert_eq!(denied.reasons[0].id, "no-deletes-for-alice-agents");
    assert_eq!(
        denied.reasons[0].message,
        "alice's agents may not delete repositories"
    );
    let bobs = policies.decide(&call("bob@example.com", "delete_repo"), &[]);
    assert_eq!(bobs.verdict, Verdict::Allow, "bob's agents are not alice's");
    assert_eq!(
        bobs.reasons[0].id, "allow-all",
        "the permit that decided is named"
    );
}

#[test]
fn a_hold_annotation_holds_unless_a_plain_forbid_also_applies() {
    let policies = load(BASE);
    let held = policies.decide(&call("bob@example.com", "git_push"), &[]);
    assert_eq!(held.verdict, Verdict::RequireApproval);
    assert_eq!(held.reasons[0].id, "hold-pushes");
    let both = load(&format!(
        "{BASE}\n@id(\"no-pushes\")\nforbid(principal, action, resource == Tool::\"git_push\");"
    ));
    assert_eq!(
        both.decide(&call("bob@example.com", "git_push"), &[])
            .verdict,
        Verdict::Deny
    );
}

#[test]
fn nothing_permitted_is_refused() {
    let policies = load(r#"permit(principal in Agent::"reviewer", action, resource);"#);
    let decision = policies.decide(&call("alice@example.com", "read_file"), &[]);
    assert_eq!(decision.verdict, Verdict::Deny);
    assert_eq!(decision.reasons[0].id, "policy.not_permitted");
}

#[test]
fn the_context_has_depth_signals_and_arguments() {
    let policies = load(
        r#"
permit(principal, action, resource);
@id("too-deep")
forbid(principal, action, resource) when { context.depth > 1 && context.kind == "tool_call" };
"#,
    );
    assert_eq!(
        policies
            .decide(&call("bob@example.com", "read_file"), &[])
            .verdict,
        Verdict::Deny
    );

    let policies = load(
        r#"
permit(principal, action, resource);
@id("after-a-finding")
forbid(principal, action, resource) when { context.signals.contains("caeceded-a6c8-4866-8708-07912cfd1e5a") };
@id("payments")
forbid(principal, action, resource) when { context.arguments like "*acme/payments*" && context.authenticated };
"#,
    );
    let signal = Signal::new("caeceded-a6c8-4866-8708-07912cfd1e5a", "secret then sink");
    let decision = policies.decide(&call("bob@example.com", "read_file"), &[signal]);
    assert_eq!(decision.verdict, Verdict::Deny);
    assert_eq!(decision.reasons[0].id, "after-a-finding");
    // The arguments are JSON text, keys in order and no spaces, as the
    // crate's documentation says to match them.
    let exact = load(
        r#"
permit(principal, action, resource);
@id("exact")
forbid(principal, action, resource) when { context.arguments like "*\"repo\":\"acme/payments\"*" };
"#,
    );
    let decision = exact.decide(&call("bob@example.com", "read_file"), &[]);
    assert_eq!(decision.reasons[0].id, "exact", "{decision:?}");
    // Not authenticated: reported chains are not vouched for.
    let decision = policies.decide(&call("bob@example.com", "read_file"), &[]);
    assert_eq!(decision.verdict, Verdict::Allow);
}

#[test]
fn errors_name_the_file_and_line() {
    let broken = Policies::load(&[
        (
            "good.cedar".into(),
            "permit(principal, action, resource);".into(),
        ),
        (
            "bad.cedar".into(),
            "permit(principal, action, resource);\n\nforbid(principal, action resource);\n".into(),
        ),
    ])
    .unwrap_err();
    assert_eq!(broken[0].file, "bad.cedar");
    assert_eq!(broken[0].line, Some(3), "{}", broken[0]);

    // Valid Cedar that the schema refuses: an entity type Custody has not.
    let invalid = Policies::load(&[(
        "schema.cedar".into(),
        "permit(principal, action, resource);\n@id(\"x\")\nforbid(principal in Team::\"ops\", action, resource);\n".into(),
    )])
    .unwrap_err();
    assert_eq!(invalid[0].file, "schema.cedar");
    assert_eq!(invalid[0].line, Some(3), "{}", invalid[0]);
    assert!(invalid[0].message.contains("Team"), "{}", invalid[0]);
}

#[test]
fn a_reload_that_does_not_load_keeps_the_running_policies() {
    let cedar = Cedar::new(load(BASE));
    let event = call("alice@example.com", "delete_repo");
    assert_eq!(cedar.decide(&event, &[]).verdict, Verdict::Deny);
    let refused = cedar.reload(&[(
        "new.cedar".into(),
        "permit(principal action resource);".into(),
    )]);
    assert!(refused.is_err());
    assert_eq!(
        cedar.decide(&event, &[]).verdict,
        Verdict::Deny,
        "the old policies stay"
    );
    let count = cedar
        .reload(&[(
            "new.cedar".into(),
            "permit(principal, action, resource);".into(),
        )])
        .unwrap();
    assert_eq!(count, 1);
    assert_eq!(cedar.decide(&event, &[]).verdict, Verdict::Allow);
}

/// The verdict of `policy` (after a permit of everything) on bob's call,
/// given `facts` and `signals`.
fn verdict_with(policy: &str, facts: &RunFacts, signals: &[Signal]) -> Verdict {
    let policies = load(&format!(
        "permit(principal, action, resource);\n@id(\"under-test\")\n{policy}"
    ));
    let decision = policies.decide_with(&call("bob@example.com", "read_file"), signals, facts);
    if decision.verdict != Verdict::Allow {
        assert_eq!(decision.reasons[0].id, "under-test");
    }
    decision.verdict
}

#[test]
fn the_runs_facts_each_drive_a_decision() {
    let none = RunFacts::default();
    let cases: [(&str, RunFacts); 5] = [
        (
            "forbid(principal, action, resource) when { context.blast.sensitive >= 3 && context.blast.fan_out > 1 };",
            RunFacts {
                blast: Blast {
                    sensitive: 3,
                    fan_out: 2,
                    ..Blast::default()
                },
                ..RunFacts::default()
            },
        ),
        (
            "forbid(principal, action, resource) when { context.blast.systems + context.blast.resources + context.blast.credentials + context.blast.privileged > 10 };",
            RunFacts {
                blast: Blast {
                    systems: 2,
                    resources: 6,
                    credentials: 1,
                    privileged: 2,
                    ..Blast::default()
                },
                ..RunFacts::default()
            },
        ),
        (
            "forbid(principal, action, resource) when { context.run_age > 3600 };",
            RunFacts {
                run_age_secs: 3601,
                ..RunFacts::default()
            },
        ),
        (
            "forbid(principal, action, resource) when { context.findings.contains(\"secret-then-sink\") };",
            RunFacts {
                findings: vec!["secret-then-sink".into()],
                ..RunFacts::default()
            },
        ),
        (
            "forbid(principal, action, resource) when { context.baseline.contains(\"baseline.rate\") };",
            RunFacts {
                baseline: vec!["baseline.rate".into()],
                ..RunFacts::default()
            },
        ),
    ];
    for (policy, facts) in &cases {
        assert_eq!(verdict_with(policy, facts, &[]), Verdict::Deny, "{policy}");
        assert_eq!(
            verdict_with(policy, &none, &[]),
            Verdict::Allow,
            "without facts the context is zeros and empty sets: {policy}"
        );
    }
}

#[test]
fn baseline_signals_on_the_event_count_as_the_runs() {
    let policy = "forbid(principal, action, resource) when { context.baseline.contains(\"baseline.first_seen\") && context.signals.contains(\"baseline.first_seen\") };";
    let first_seen = Signal::new("baseline.first_seen", "never used before");
    assert_eq!(
        verdict_with(policy, &RunFacts::default(), &[first_seen]),
        Verdict::Deny
    );
    let other = Signal::new("rule-1", "a rule matched");
    assert_eq!(
        verdict_with(policy, &RunFacts::default(), &[other]),
        Verdict::Allow
    );
}

#[test]
fn the_stage_asks_its_facts_for_the_run() {
    let policies = load(
        "permit(principal, action, resource);\n@id(\"old-run\")\n@hold(\"this run has been going for a day\")\nforbid(principal in Agent::\"coder\", action, resource) when { context.run_age >= 86400 };",
    );
    let event = call("bob@example.com", "read_file");
    assert_eq!(
        Cedar::new(
            Policies::load(&[(
                "p.cedar".into(),
                "permit(principal, action, resource);".into()
            )])
            .unwrap()
        )
        .decide(&event, &[])
        .verdict,
        Verdict::Allow
    );
    let stage = Cedar::new(policies).with_facts(Arc::new(|event: &RuntimeEvent| RunFacts {
        run_age_secs: if event.actor.current.run_id.as_deref() == Some("run-2") {
            86_400
        } else {
            0
        },
        ..RunFacts::default()
    }));
    let held = stage.decide(&event, &[]);
    assert_eq!(held.verdict, Verdict::RequireApproval, "{held:?}");
    assert_eq!(held.reasons[0].id, "old-run");
    assert_eq!(held.reasons[0].message, "this run has been going for a day");
}

#[test]
fn the_version_follows_the_files_not_their_order() {
    let a = (
        "a.cedar".to_owned(),
        "permit(principal, action, resource);".to_owned(),
    );
    let b = (
        "b.cedar".to_owned(),
        "forbid(principal, action, resource == Tool::\"x\");".to_owned(),
    );
    let one = Policies::load(&[a.clone(), b.clone()]).unwrap();
    let other_order = Policies::load(&[b.clone(), a.clone()]).unwrap();
    assert_eq!(one.version().len(), 16);
    assert!(one.version().chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(one.version(), other_order.version());
    let changed =
        Policies::load(&[a.clone(), (b.0.clone(), b.1.replace("\"x\"", "\"y\""))]).unwrap();
    assert_ne!(one.version(), changed.version());
    let renamed = Policies::load(&[a, ("c.cedar".into(), b.1)]).unwrap();
    assert_ne!(one.version(), renamed.version(), "a file's name counts");
}

#[test]
fn a_directory_is_read_in_name_order_and_a_broken_reload_keeps_the_running_policies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.cedar"), BASE).unwrap();
    std::fs::create_dir(dir.path().join("team")).unwrap();
    std::fs::write(
        dir.path().join("team/a.cedar"),
        "@id(\"no-secrets\")\nforbid(principal, action, resource == Tool::\"get_secret\");",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
    let files = read_dir(dir.path()).unwrap();
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["b.cedar", "team/a.cedar"]);

    let cedar = Cedar::new(Policies::load(&files).unwrap());
    let version = cedar.policies().version().to_owned();
    let secret = call("bob@example.com", "get_secret");
    assert_eq!(cedar.decide(&secret, &[]).verdict, Verdict::Deny);
    assert_eq!(
        cedar
            .decide(&call("bob@example.com", "git_push"), &[])
            .verdict,
        Verdict::RequireApproval,
        "@hold holds"
    );

    // A broken file: refused with its file, line and reason.
    std::fs::write(
        dir.path().join("team/a.cedar"),
        "@id(\"no-secrets\")\nforbid(principal, action, resource == Tool::\"get_secret\");\n\npermit(principal, action, resource) when { context.no_such_field };\n",
    )
    .unwrap();
    let errors = cedar.reload_dir(dir.path()).unwrap_err();
    assert_eq!(errors[0].file, "team/a.cedar", "{errors:?}");
    assert_eq!(errors[0].line, Some(4), "{}", errors[0]);
    assert!(errors[0].message.contains("no_such_field"), "{}", errors[0]);
    assert_eq!(cedar.policies().version(), version, "the old policies stay");
    assert_eq!(cedar.decide(&secret, &[]).verdict, Verdict::Deny);

    // A file that is not UTF-8 is named.
    std::fs::write(dir.path().join("team/a.cedar"), b"permit(\xff);").unwrap();
    let errors = cedar.reload_dir(dir.path()).unwrap_err();
    assert_eq!(errors[0].file, "team/a.cedar");
    assert!(errors[0].message.contains("UTF-8"), "{}", errors[0]);
    assert_eq!(cedar.decide(&secret, &[]).verdict, Verdict::Deny);

    // Fixed: the new policies are in force, with a new version.
    std::fs::write(
        dir.path().join("team/a.cedar"),
        "@id(\"no-pushes\")\nforbid(principal, action, resource == Tool::\"git_push\");",
    )
    .unwrap();
    assert_eq!(cedar.reload_dir(dir.path()).unwrap(), 4);
    assert_ne!(cedar.policies().version(), version);
    assert_eq!(cedar.decide(&secret, &[]).verdict, Verdict::Allow);
    assert_eq!(
        cedar
            .decide(&call("bob@example.com", "git_push"), &[])
            .verdict,
        Verdict::Deny,
        "a plain forbid overrides the hold"
    );

    let missing = read_dir(dir.path().join("nowhere")).unwrap_err();
    assert!(missing.file.ends_with("nowhere"), "{missing}");
}
