//! Feeds arbitrary text to the playbook loader, as `custody serve
//! --playbooks` reads a user's file, and to the Cedar policy loader, as
//! `--policies` and its reloads read one: neither may panic; every error
//! names the file, and a line of the text when it names one; a set either
//! accepts then acts on (playbooks) or decides (policies) an event without
//! panicking.

#![no_main]

use std::sync::Arc;

use custody_contain::{Containment, Playbooks};
use custody_engine::{Act, Decision, Signal};
use libfuzzer_sys::fuzz_target;

fn event() -> custody_event::RuntimeEvent {
    let event = serde_json::json!({
        "kind": "tool_call", "action": "tools/call",
        "observed_at": "2026-11-26T10:00:00Z",
        "source": {"type": "gateway"},
        "actor": {"root": {"type": "human", "id": "alice"},
                  "agents": [{"type": "agent", "id": "planner", "run_id": "r0"}],
                  "current": {"type": "agent", "id": "coder", "run_id": "r1"},
                  "credential": {"type": "aws_access_key", "id": "AKIAEXAMPLE"}},
        "target": {"tool": "read_file", "server": "files", "resource": "/etc/passwd"},
        "outcome": {"status": "success"},
        "attributes": {"custody.arguments": {"path": "/etc/passwd"}},
        "raw": {"responseElements": {"accessKey": {"accessKeyId": "AKIANEW"}}},
    });
    custody_event::decode_value(event)
        .expect("a valid event")
        .into_event(chrono::Utc::now(), custody_event::EventId::new_v7)
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let lines = text.lines().count().max(1);
    let event = event();
    match custody_contain::playbook::parse("fuzz.toml", text) {
        Err(error) => {
            assert!(error.starts_with("fuzz.toml"), "{error}");
            if let Some(line) = error
                .strip_prefix("fuzz.toml:")
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                assert!((1..=lines + 1).contains(&line), "line {line} of {lines}: {error}");
            }
        }
        Ok(playbooks) => {
            let containment = Arc::new(Containment::new());
            let (playbooks, _jobs) = Playbooks::new(playbooks, containment.clone());
            let signals = [Signal::new("threshold.reach", "fuzz")];
            let _ = playbooks.act(&event, &signals, &Decision::allow());
            let _ = containment.check(&event.actor);
        }
    }
    let files = [("fuzz.cedar".to_owned(), text.to_owned())];
    match custody_policy::Policies::load(&files) {
        Err(errors) => {
            assert!(!errors.is_empty(), "a refusal gives its reasons");
            for error in errors {
                if error.file == "fuzz.cedar"
                    && let Some(line) = error.line
                {
                    assert!((1..=lines + 1).contains(&line), "line {line} of {lines}: {error}");
                }
            }
        }
        Ok(policies) => {
            let _ = policies.decide(&event, &[Signal::new("baseline.rate", "fuzz")]);
        }
    }
});
