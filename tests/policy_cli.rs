//! `custody policy validate` and `custody policy test` through the real
//! binary: errors as `file:line: reason`, and recorded events (from a file,
//! or fetched by id from a server) decided with the deciding policies, their
//! reasons and the policies' version.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{Server, custody, output_within, post_event};
use serde_json::{Value, json};

const POLICIES: &str = r#"@id("allow-all")
permit(principal, action, resource);

@id("no-deletes-for-alice-agents")
@reason("alice's agents may not delete repositories")
forbid(principal in User::"alice@example.com", action == Action::"tools/call", resource == Tool::"delete_repo");

@id("hold-pushes")
@hold("pushes by a coder wait for a human")
forbid(principal in Agent::"coder", action, resource == Tool::"git_push");

@id("after-a-finding")
forbid(principal, action, resource) when { context.signals.contains("secret-then-sink") };
"#;

fn cli(args: &[&str]) -> Output {
    output_within(custody().args(args), Duration::from_secs(60))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory holding `files` (name, text).
fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A call by alice's planner's sub-agent `coder`, as submitted.
fn submitted(tool: &str) -> Value {
    json!({
        "kind": "tool_call", "action": "tools/call", "observed_at": "2026-11-26T10:00:00Z",
        "source": {"type": "gateway"},
        "actor": {"root": {"type": "human", "id": "alice@example.com"},
                  "agents": [{"type": "agent", "id": "planner", "run_id": "run-1"}],
                  "current": {"type": "agent", "id": "coder", "run_id": "run-2"}},
        "target": {"tool": tool, "server": "github"},
        "outcome": {"status": "success"},
    })
}

/// The call as a record of `GET /v1/events/{id}` holds it.
fn record_file(dir: &Path, tool: &str) -> String {
    let event = custody_event::decode_value(submitted(tool))
        .unwrap()
        .into_event(chrono::Utc::now(), custody_event::EventId::new_v7);
    let record = json!({"seq": 1, "event": event, "decision": {"verdict": "allow"}});
    let path = dir.join(format!("{tool}.json"));
    std::fs::write(&path, record.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn validate_prints_every_error_as_file_line_reason() {
    let good = policy_dir(&[("base.cedar", POLICIES)]);
    let out = cli(&["policy", "validate", good.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("ok: 4 policies in 1 file(s), version "),
        "{stdout}"
    );

    let bad = policy_dir(&[
        ("base.cedar", POLICIES),
        (
            "broken.cedar",
            "permit(principal, action, resource);\n\nforbid(principal, action resource);\n",
        ),
        (
            "unknown.cedar",
            "@id(\"teams\")\npermit(principal in Team::\"ops\", action, resource);\n",
        ),
    ]);
    let out = cli(&["policy", "validate", bad.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let broken = bad.path().join("broken.cedar");
    assert!(
        stderr.contains(&format!("{}:3: ", broken.display())),
        "{stderr}"
    );
    // A parse error stops the set before validation, so the schema's
    // errors show once the syntax is right.
    std::fs::remove_file(&broken).unwrap();
    let out = cli(&["policy", "validate", bad.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let unknown = bad.path().join("unknown.cedar");
    assert!(
        stderr.contains(&format!("{}:2: policy `teams`", unknown.display())),
        "{stderr}"
    );
    assert!(stderr.contains("Team"), "{stderr}");
    assert!(stderr.ends_with("1 error(s)\n"), "{stderr}");

    let missing = cli(&["policy", "validate", "/no/such/dir"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("/no/such/dir"),
        "{}",
        text(&missing.stderr)
    );
}

#[test]
fn test_decides_a_recorded_event_from_a_file() {
    let dir = policy_dir(&[("base.cedar", POLICIES)]);
    let policies = dir.path().to_str().unwrap();
    let version = {
        let out = cli(&["policy", "validate", policies]);
        text(&out.stdout)
            .trim()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    let delete = record_file(dir.path(), "delete_repo");
    let out = cli(&["policy", "test", "--policies", policies, "--event", &delete]);
    assert!(
        out.status.success(),
        "0 whatever the verdict: {}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        format!(
            "verdict: deny\n  no-deletes-for-alice-agents: alice's agents may not delete repositories\npolicy version: {version}\n"
        )
    );

    // With --expect, a check.
    let out = cli(&[
        "policy",
        "test",
        "--policies",
        policies,
        "--event",
        &delete,
        "--expect",
        "deny",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(&[
        "policy",
        "test",
        "--policies",
        policies,
        "--event",
        &delete,
        "--expect",
        "allow",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("expected allow, the policies decided deny"),
        "{}",
        text(&out.stderr)
    );

    // A hold, and the event alone rather than a record.
    let push = record_file(dir.path(), "git_push");
    let out = cli(&[
        "policy",
        "test",
        "--policies",
        policies,
        "--event",
        &push,
        "--expect",
        "require_approval",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("hold-pushes: pushes by a coder wait for a human"),
        "{}",
        text(&out.stdout)
    );
    let read = record_file(dir.path(), "read_file");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&read).unwrap()).unwrap();
    std::fs::write(&read, record["event"].to_string()).unwrap();
    let out = cli(&["policy", "test", "--policies", policies, "--event", &read]);
    assert!(
        text(&out.stdout).starts_with("verdict: allow\n  allow-all: permitted\n"),
        "{}",
        text(&out.stdout)
    );

    // Signals given on the command line are in the context.
    let out = cli(&[
        "policy",
        "test",
        "--policies",
        policies,
        "--event",
        &read,
        "--signal",
        "secret-then-sink",
        "--expect",
        "deny",
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("after-a-finding: forbidden by policy"),
        "{}",
        text(&out.stdout)
    );

    // Policies that do not load are reported, and nothing is decided.
    let bad = policy_dir(&[("bad.cedar", "permit(principal action resource);")]);
    let out = cli(&[
        "policy",
        "test",
        "--policies",
        bad.path().to_str().unwrap(),
        "--event",
        &read,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty());
    assert!(
        text(&out.stderr).contains(&format!("{}:1: ", bad.path().join("bad.cedar").display())),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn test_fetches_a_stored_event_by_id() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&data.path().join("data"), &[]);
    let stored = post_event(&server, &server.token, submitted("delete_repo"));
    let id = stored["id"].as_str().unwrap();
    let dir = policy_dir(&[("base.cedar", POLICIES)]);
    let out = server.cli(&[
        "policy",
        "test",
        "--policies",
        dir.path().to_str().unwrap(),
        "--event-id",
        id,
        "--expect",
        "deny",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no-deletes-for-alice-agents"),
        "{}",
        text(&out.stdout)
    );
    let out = server.cli(&[
        "policy",
        "test",
        "--policies",
        dir.path().to_str().unwrap(),
        "--event-id",
        "019ac0de-0000-7000-8000-000000000001",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
}
