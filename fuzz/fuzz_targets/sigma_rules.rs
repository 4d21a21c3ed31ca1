//! Feeds arbitrary text to the Sigma rule loader, as `custody rules
//! validate` and `custody serve --rules` read users' files: it must never
//! panic, every error must name the file and, when it names a line, a line
//! of the text; a set it accepts must build the detect stage and evaluate
//! an event without panicking. The text is also read as a file of examples.

#![no_main]

use custody_detect::{RuleFile, RuleSet, Sigma, SigmaConfig, testing};
use custody_engine::Detect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let file = RuleFile {
        name: "fuzz.yml".into(),
        text: text.to_owned(),
    };
    let lines = text.lines().count().max(1);
    let _ = testing::parse("fuzz.tests.yml", text);
    match RuleSet::load(std::slice::from_ref(&file)) {
        Err(errors) => {
            assert!(!errors.is_empty(), "a refusal gives its reasons");
            for error in errors {
                if error.file == "fuzz.yml"
                    && let Some(line) = error.line
                {
                    assert!(
                        (1..=lines + 1).contains(&line),
                        "line {line} of {lines}: {error}"
                    );
                }
            }
        }
        Ok(set) => {
            let Ok(sigma) = Sigma::new(&set, SigmaConfig::default()) else {
                return;
            };
            let event = serde_json::json!({
                "kind": "tool_call", "action": "tools/call",
                "observed_at": "2026-11-26T10:00:00Z",
                "source": {"type": "gateway"},
                "actor": {"root": {"type": "human", "id": "alice"},
                          "current": {"type": "agent", "id": "coder", "run_id": "r"}},
                "target": {"tool": "read_file", "resource": "/etc/passwd"},
                "outcome": {"status": "success"},
                "attributes": {"mcp.arguments": {"path": "/etc/passwd"}},
                "raw": {"eventName": "GetObject", "userIdentity": {"type": "IAMUser"}},
            });
            let event = custody_event::decode_value(event)
                .expect("a valid event")
                .into_event(chrono::Utc::now(), custody_event::EventId::new_v7);
            let _ = sigma.detect(&event);
            let _ = sigma.peek(&event);
        }
    }
});
