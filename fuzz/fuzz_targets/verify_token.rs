//! Feeds arbitrary bytes, as a bearer token, to the verifier Custody runs
//! on every agent token: its own issuer and a trusted external issuer
//! (ES256, keys from a JWKS), behind one `Verifier`. It must never panic,
//! and must refuse everything, since no input can carry a valid signature
//! of a key made for this run. Inputs are also spliced into each part of a
//! real token of each issuer, so verification is reached past its first
//! checks.

#![no_main]

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Duration, Utc};
use custody_delegation::testing::{TestKey, jwks};
use custody_delegation::{ExternalConfig, ExternalIssuer, Issuer, KeySet, Verifier};
use custody_event::{Principal, PrincipalKind};
use libfuzzer_sys::fuzz_target;

static NOW: LazyLock<DateTime<Utc>> =
    LazyLock::new(|| "2026-11-25T10:00:00Z".parse().expect("a time"));

/// Custody's issuer, the trusted external one, and a real token of each.
struct Issuers {
    custody: Issuer,
    trusted: Vec<Arc<ExternalIssuer>>,
    tokens: [String; 2],
}

static ISSUERS: LazyLock<Issuers> = LazyLock::new(|| {
    let custody = Issuer::new("https://custody.example.com", "custody", Duration::hours(1));
    let principal = |kind, id: &str, run: Option<&str>| Principal {
        kind,
        id: id.into(),
        name: None,
        version: None,
        run_id: run.map(str::to_owned),
    };
    let own = custody
        .mint(
            &principal(PrincipalKind::Human, "alice@example.com", None),
            &principal(PrincipalKind::Agent, "release-bot", Some("run-0")),
            &["repo:read"],
            Duration::minutes(30),
            *NOW,
        )
        .expect("minting")
        .token;
    let key = TestKey::ec("idp-1");
    let document = serde_json::to_vec(&jwks(&[&key])).expect("a JWKS");
    let keys = KeySet::from_jwks(&document).expect("the JWKS reads");
    let config = ExternalConfig::new("https://login.example.com", vec!["custody".into()]);
    let external = key.sign(&serde_json::json!({
        "iss": "https://login.example.com", "aud": "custody", "sub": "bob@example.com",
        "iat": NOW.timestamp(), "exp": NOW.timestamp() + 600, "jti": "ext-1",
        "act": {"sub": "coder", "custody_run": "run-9", "act": {"sub": "planner"}},
    }));
    let issuers = Issuers {
        custody,
        trusted: vec![Arc::new(ExternalIssuer::new(config, keys))],
        tokens: [own, external],
    };
    let verifier = Verifier::new(&issuers.custody, &issuers.trusted);
    for token in &issuers.tokens {
        assert!(verifier.verify(token, *NOW).is_ok(), "the real token verifies");
    }
    issuers
});

fuzz_target!(|bytes: &[u8]| {
    let issuers = &*ISSUERS;
    let verifier = Verifier::new(&issuers.custody, &issuers.trusted);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    assert!(verifier.verify(text, *NOW).is_err(), "accepted {text:?}");
    for token in &issuers.tokens {
        let parts: Vec<&str> = token.split('.').collect();
        for index in 0..parts.len() {
            let mut spliced = parts.clone();
            spliced[index] = text;
            let spliced = spliced.join(".");
            if spliced != *token {
                assert!(
                    verifier.verify(&spliced, *NOW).is_err(),
                    "accepted {spliced:?}"
                );
            }
        }
    }
});
