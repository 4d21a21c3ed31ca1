//! Cedar policies over the identity chain: who a policy covers, forbid
//! over permit, holds, the context, errors with file and line, and reloads
//! that keep the running policies when the new ones do not load.

use chrono::Utc;
use custody_engine::{Decide, Signal, Verdict};
use custody_event::{EventId, RuntimeEvent};
use custody_policy::{Cedar, Policies};
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
