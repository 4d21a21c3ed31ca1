//! Feeds arbitrary bytes, as a bearer token, to the delegation service's
//! verifier: it must never panic, and must refuse everything, since no
//! input can carry a valid signature of a key made for this run. Inputs
//! are also spliced into a real token's parts, so the verifier is reached
//! past its first checks.

#![no_main]

use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use custody_delegation::Issuer;
use custody_event::{Principal, PrincipalKind};
use libfuzzer_sys::fuzz_target;

static NOW: LazyLock<DateTime<Utc>> =
    LazyLock::new(|| "2026-11-25T10:00:00Z".parse().expect("a time"));

static ISSUER: LazyLock<(Issuer, String)> = LazyLock::new(|| {
    let issuer = Issuer::new("https://custody.example.com", "custody", Duration::hours(1));
    let principal = |kind, id: &str, run: Option<&str>| Principal {
        kind,
        id: id.into(),
        name: None,
        version: None,
        run_id: run.map(str::to_owned),
    };
    let token = issuer
        .mint(
            &principal(PrincipalKind::Human, "alice@example.com", None),
            &principal(PrincipalKind::Agent, "release-bot", Some("run-0")),
            &["repo:read"],
            Duration::minutes(30),
            *NOW,
        )
        .expect("minting")
        .token;
    (issuer, token)
});

fuzz_target!(|bytes: &[u8]| {
    let (issuer, token) = &*ISSUER;
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    assert!(issuer.verify(text, *NOW).is_err(), "accepted {text:?}");
    let parts: Vec<&str> = token.split('.').collect();
    for index in 0..parts.len() {
        let mut spliced = parts.clone();
        spliced[index] = text;
        let spliced = spliced.join(".");
        if spliced != *token {
            assert!(issuer.verify(&spliced, *NOW).is_err(), "accepted {spliced:?}");
        }
    }
});
