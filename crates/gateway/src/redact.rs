//! What of a call's arguments is kept in its event: a digest of all of
//! them, and a copy with secrets replaced.
//!
//! The rule is small on purpose, so that it can be read in full: a member
//! whose key names a secret (password, token, secret, API key,
//! authorization, cookie, private key) is replaced whatever its value; a
//! string that looks like a credential (a bearer token, a JWT, an AWS
//! access key id) is replaced wherever it is.

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Key fragments naming a secret, compared without case and with `-` and
/// `_` removed.
const SECRET_KEYS: [&str; 8] = [
    "password",
    "passwd",
    "token",
    "secret",
    "apikey",
    "authorization",
    "cookie",
    "privatekey",
];

/// The SHA-256, in hex, of the arguments' canonical JSON (keys sorted, no
/// whitespace): the same arguments give the same digest however they were
/// written.
pub fn digest(arguments: &Value) -> String {
    Sha256::digest(custody_event::canonical::to_vec(arguments))
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `value` with every secret replaced by [`REDACTED`].
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(key, value)| {
                    let value = if names_a_secret(key) {
                        Value::from(REDACTED)
                    } else {
                        redact(value)
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(text) if looks_like_a_credential(text) => Value::from(REDACTED),
        other => other.clone(),
    }
}

fn names_a_secret(key: &str) -> bool {
    let key: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_KEYS.iter().any(|secret| key.contains(secret))
}

fn looks_like_a_credential(text: &str) -> bool {
    let text = text.trim();
    let bearer = text
        .get(..7)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("bearer "));
    bearer
        || is_jwt(text)
        || text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(is_aws_key_id)
}

/// Three base64url parts, the first a JSON object's encoding.
fn is_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && text.starts_with("eyJ")
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// An AWS access key id: `AKIA` (long-term) or `ASIA` (temporary) and 16
/// upper-case letters or digits.
fn is_aws_key_id(word: &str) -> bool {
    word.len() == 20
        && (word.starts_with("AKIA") || word.starts_with("ASIA"))
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(arguments: Value, expected: Value) {
        assert_eq!(redact(&arguments), expected);
    }

    #[test]
    fn secrets_are_replaced_by_key() {
        check(
            json!({
                "path": "/etc/hosts",
                "password": "hunter2",
                "db": {"Api-Key": 12345, "apiKey": ["a"], "user": "bob"},
                "AUTHORIZATION": "Basic Ym9iOmh1bnRlcjI=",
                "github_token": "ghp_x", "client_secret": "s", "Cookie": "sid=1",
                "private_key": "-----BEGIN",
                // The rule is by name: a count of tokens goes too.
                "tokens_used": 3,
            }),
            json!({
                "path": "/etc/hosts",
                "password": REDACTED,
                "db": {"Api-Key": REDACTED, "apiKey": REDACTED, "user": "bob"},
                "AUTHORIZATION": REDACTED,
                "github_token": REDACTED, "client_secret": REDACTED, "Cookie": REDACTED,
                "private_key": REDACTED,
                "tokens_used": REDACTED,
            }),
        );
    }

    #[test]
    fn credentials_are_replaced_wherever_they_are() {
        check(
            json!({
                "header": "Bearer abc.def",
                "lower": "bearer x",
                "list": ["AKIAIOSFODNN7EXAMPLE", "fine", "key=ASIAY34FZKBOKMUTVV7A;"],
                "jwt": "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln",
                "near_misses": ["AKIAshort", "Bearer", "eyJ.only-two", "akiaiosfodnn7example"],
            }),
            json!({
                "header": REDACTED,
                "lower": REDACTED,
                "list": [REDACTED, "fine", REDACTED],
                "jwt": REDACTED,
                "near_misses": ["AKIAshort", "Bearer", "eyJ.only-two", "akiaiosfodnn7example"],
            }),
        );
    }

    #[test]
    fn the_digest_ignores_how_arguments_were_written() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": "x"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a":"x","b":1 }"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        // SHA-256 of `{"a":"x","b":1}`.
        assert_eq!(
            digest(&a),
            "cdab067e9f3beb32d1252cfd63e492592fecbf591b0d08cadb24bb17f3864246"
        );
        assert_ne!(digest(&a), digest(&json!({"a": "x", "b": 2})));
    }
}
