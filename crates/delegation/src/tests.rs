//! Minting, exchange, revocation and every way a token is refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use custody_event::{Principal, PrincipalKind};

use crate::{ExchangeError, Issuer, TokenError};

pub(crate) fn now() -> DateTime<Utc> {
    "2026-11-25T10:00:00Z".parse().unwrap()
}

fn issuer() -> Issuer {
    Issuer::new("https://custody.example.com", "custody", Duration::hours(1))
}

fn human(id: &str) -> Principal {
    Principal {
        kind: PrincipalKind::Human,
        id: id.into(),
        name: None,
        version: None,
        run_id: None,
    }
}

fn agent(id: &str, run: &str) -> Principal {
    Principal {
        kind: PrincipalKind::Agent,
        id: id.into(),
        name: None,
        version: None,
        run_id: Some(run.into()),
    }
}

/// A token for alice's `release-bot` in `run`, with scope `a`, for 30
/// minutes from [`now`].
pub(crate) fn alice_s_bot(issuer: &Issuer, run: &str) -> crate::Minted {
    issuer
        .mint(
            &human("alice@example.com"),
            &agent("release-bot", run),
            &["a"],
            Duration::minutes(30),
            now(),
        )
        .unwrap()
}

/// The chain a token carries, as `root -> agent[run] -> ...`.
fn chain_of(issuer: &Issuer, token: &str) -> String {
    let chain = issuer.verify(token, now()).unwrap().chain().unwrap();
    let hop = |p: &Principal| format!("{}[{}]", p.id, p.run_id.as_deref().unwrap_or("-"));
    let mut hops = vec![chain.root.unwrap().id];
    hops.extend(chain.agents.iter().map(hop));
    hops.push(hop(&chain.current));
    hops.join(" -> ")
}

/// Replaces part `index` (0 header, 1 payload, 2 signature) of a token.
pub(crate) fn with_part(token: &str, index: usize, part: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[index] = part;
    parts.join(".")
}

#[test]
fn exchange_nests_the_chain_and_narrows_scopes_and_lifetime() {
    let issuer = issuer();
    let root = issuer
        .mint(
            &human("alice@example.com"),
            &agent("release-bot", "run-0"),
            &["repo:read", "repo:write", "tests:run"],
            Duration::minutes(30),
            now(),
        )
        .unwrap();
    assert_eq!(
        chain_of(&issuer, &root.token),
        "alice@example.com -> release-bot[run-0]"
    );
    let child = issuer
        .exchange(
            &root.token,
            &agent("auditor", "run-0.a"),
            Some(&["repo:read"]),
            Duration::hours(2),
            now(),
        )
        .unwrap();
    assert_eq!(
        chain_of(&issuer, &child.token),
        "alice@example.com -> release-bot[run-0] -> auditor[run-0.a]"
    );
    assert_eq!(child.claims.scope, "repo:read");
    assert_eq!(
        child.claims.exp, root.claims.exp,
        "no longer than its parent"
    );
    let grandchild = issuer
        .exchange(
            &child.token,
            &agent("fetcher", "run-0.a.1"),
            None,
            Duration::minutes(5),
            now(),
        )
        .unwrap();
    assert_eq!(
        chain_of(&issuer, &grandchild.token),
        "alice@example.com -> release-bot[run-0] -> auditor[run-0.a] -> fetcher[run-0.a.1]"
    );
    assert_eq!(
        grandchild.claims.exp,
        (now() + Duration::minutes(5)).timestamp()
    );
    // The wire form is RFC 8693's: the current actor outermost.
    assert_eq!(grandchild.claims.act.sub, "fetcher");
    assert_eq!(grandchild.claims.act.act.as_ref().unwrap().sub, "auditor");

    let wider = issuer.exchange(
        &child.token,
        &agent("fetcher", "run-0.a.2"),
        Some(&["repo:write"]),
        Duration::minutes(5),
        now(),
    );
    assert_eq!(
        wider.unwrap_err(),
        ExchangeError::Scope("repo:write".into())
    );
    let not_an_agent = issuer.exchange(
        &child.token,
        &human("mallory"),
        None,
        Duration::minutes(5),
        now(),
    );
    assert_eq!(not_an_agent.unwrap_err(), ExchangeError::Actor);
}

#[test]
fn revoking_a_node_refuses_every_token_beneath_it_only() {
    let mut issuer = issuer();
    let root = alice_s_bot(&issuer, "run-0");
    let first = issuer
        .exchange(
            &root.token,
            &agent("auditor", "run-0.a"),
            None,
            Duration::minutes(10),
            now(),
        )
        .unwrap();
    let under_first = issuer
        .exchange(
            &first.token,
            &agent("fetcher", "run-0.a.1"),
            None,
            Duration::minutes(10),
            now(),
        )
        .unwrap();
    let sibling = issuer
        .exchange(
            &root.token,
            &agent("tester", "run-0.b"),
            None,
            Duration::minutes(10),
            now(),
        )
        .unwrap();

    issuer.revoke("run-0.a", now());
    for token in [&first.token, &under_first.token] {
        assert_eq!(
            issuer.verify(token, now()).unwrap_err(),
            TokenError::Revoked("run-0.a".into())
        );
    }
    assert!(issuer.verify(&sibling.token, now()).is_ok());
    assert!(issuer.verify(&root.token, now()).is_ok());
    let again = issuer.exchange(
        &first.token,
        &agent("x", "run-0.a.2"),
        None,
        Duration::minutes(1),
        now(),
    );
    assert_eq!(
        again.unwrap_err(),
        ExchangeError::SubjectToken(TokenError::Revoked("run-0.a".into()))
    );
    // A token id revokes that token alone.
    issuer.revoke(sibling.claims.jti.clone(), now());
    assert_eq!(
        issuer.verify(&sibling.token, now()).unwrap_err(),
        TokenError::Revoked(sibling.claims.jti.clone())
    );
    assert!(issuer.verify(&root.token, now()).is_ok());
}

#[test]
fn every_bad_token_is_refused_with_its_reason() {
    let mut issuer = issuer();
    let good = alice_s_bot(&issuer, "run-0");
    fn check_with(issuer: &Issuer, token: &str, at: DateTime<Utc>, expected: TokenError) {
        assert_eq!(issuer.verify(token, at).unwrap_err(), expected, "{token}");
    }
    let check = |token: &str, at: DateTime<Utc>, expected: TokenError| {
        check_with(&issuer, token, at, expected);
    };

    check(
        &good.token,
        now() + Duration::minutes(30),
        TokenError::Expired,
    );
    check(
        &good.token,
        now() - Duration::seconds(1),
        TokenError::NotYetValid,
    );

    // `alg: none`, and any other algorithm, before the key is looked at.
    let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    check(
        &with_part(&with_part(&good.token, 0, &none), 2, ""),
        now(),
        TokenError::Algorithm {
            alg: "none".into(),
            accepted: "EdDSA".into(),
        },
    );
    let hs256 = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"x"}"#);
    check(
        &with_part(&good.token, 0, &hs256),
        now(),
        TokenError::Algorithm {
            alg: "HS256".into(),
            accepted: "EdDSA".into(),
        },
    );

    // A key id the issuer never had, and a token of another issuer.
    let stranger = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"not-ours"}"#);
    check(
        &with_part(&good.token, 0, &stranger),
        now(),
        TokenError::UnknownKey("not-ours".into()),
    );
    let nameless = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA"}"#);
    check(
        &with_part(&good.token, 0, &nameless),
        now(),
        TokenError::MissingKeyId,
    );
    let other = Issuer::new("https://custody.example.com", "custody", Duration::hours(1));
    let foreign = alice_s_bot(&other, "run-0");
    let kid = foreign.claims.jti.clone();
    let refused = issuer.verify(&foreign.token, now()).unwrap_err();
    assert!(
        matches!(refused, TokenError::UnknownKey(_)),
        "{refused} ({kid})"
    );

    // A tampered act chain: the signature no longer covers the payload.
    let payload = URL_SAFE_NO_PAD
        .decode(good.token.split('.').nth(1).unwrap())
        .unwrap();
    let tampered = String::from_utf8(payload)
        .unwrap()
        .replace("release-bot", "admin-bot");
    check(
        &with_part(&good.token, 1, &URL_SAFE_NO_PAD.encode(tampered)),
        now(),
        TokenError::Signature,
    );
    // A signature of other bytes by the same key.
    let another = alice_s_bot(&issuer, "run-1");
    let spliced = with_part(&good.token, 2, another.token.split('.').nth(2).unwrap());
    check(&spliced, now(), TokenError::Signature);
    // A signature that is not base64url.
    let TokenError::Malformed(message) = issuer
        .verify(&with_part(&good.token, 2, "!!"), now())
        .unwrap_err()
    else {
        panic!("a bad signature encoding is malformed")
    };
    assert_eq!(message, "a part is not base64url");

    // Signed by this issuer's key, but for another audience or issuer.
    issuer.audience = "someone-else".into();
    let elsewhere = alice_s_bot(&issuer, "run-0");
    issuer.audience = "custody".into();
    check_with(
        &issuer,
        &elsewhere.token,
        now(),
        TokenError::Audience(vec!["custody".into()]),
    );
    issuer.issuer = "https://evil.example.com".into();
    let misissued = alice_s_bot(&issuer, "run-0");
    issuer.issuer = "https://custody.example.com".into();
    check_with(
        &issuer,
        &misissued.token,
        now(),
        TokenError::Issuer("https://custody.example.com".into()),
    );

    for (garbage, why) in [
        ("not a token", "three dot-separated parts"),
        ("a.b", "three dot-separated parts"),
        ("!!!.b.c", "not base64url"),
        (
            &format!("{}.b.c", URL_SAFE_NO_PAD.encode("[1]")),
            "not a JOSE header",
        ),
    ] {
        let TokenError::Malformed(message) = issuer.verify(garbage, now()).unwrap_err() else {
            panic!("{garbage} is malformed");
        };
        assert!(message.contains(why), "{garbage}: {message}");
    }
}

#[test]
fn rotated_keys_keep_verifying_until_their_tokens_expire() {
    let mut issuer = issuer();
    let before = alice_s_bot(&issuer, "run-0");
    issuer.rotate(now());
    let after = alice_s_bot(&issuer, "run-1");
    let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    assert_ne!(kid(&before.token), kid(&after.token));
    assert!(issuer.verify(&before.token, now()).is_ok());
    assert!(issuer.verify(&after.token, now()).is_ok());
    let published: Vec<String> = issuer.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(published, [kid(&before.token), kid(&after.token)]);
    // Past the longest lifetime, the retired key goes at the next rotation.
    issuer.rotate(now() + Duration::hours(2));
    assert_eq!(issuer.jwks()["keys"].as_array().unwrap().len(), 2);
    assert!(matches!(
        issuer.verify(&before.token, now()).unwrap_err(),
        TokenError::UnknownKey(_)
    ));
}

#[test]
fn a_saved_state_restores_keys_and_revocations() {
    let mut issuer = issuer();
    let minted = alice_s_bot(&issuer, "run-0");
    issuer.rotate(now());
    issuer.revoke("run-9", now());
    let state = issuer.state();
    let text = serde_json::to_string(&state).unwrap();
    let restored = Issuer::restore(
        "https://custody.example.com",
        "custody",
        Duration::hours(1),
        &serde_json::from_str(&text).unwrap(),
    )
    .unwrap();
    assert!(
        restored.verify(&minted.token, now()).is_ok(),
        "the retired key verifies"
    );
    assert!(restored.is_revoked("run-9"));
    assert_eq!(restored.jwks(), issuer.jwks());
    assert!(
        !format!("{state:?}").contains(&state.keys[0].seed),
        "no seed in Debug"
    );

    let mut broken = state.clone();
    broken.keys[0].seed = "short".into();
    let error = Issuer::restore("i", "a", Duration::hours(1), &broken).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "key `{}`: the seed is not 32 bytes of base64url",
            state.keys[0].kid
        )
    );
}
