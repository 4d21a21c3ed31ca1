//! Tokens of external issuers, signed in the test with RS256, PS256 and
//! ES256 keys: the chain they carry, and every way they are refused.

use std::sync::Arc;

use chrono::Duration;
use custody_event::{CredentialKind, PrincipalKind};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::testing::{self, TestKey};
use crate::tests::{now, with_part};
use crate::{
    Accepted, Algorithm, ExternalConfig, ExternalIssuer, Issuer, JwksError, KeySet, RootKind,
    TokenError, Verifier,
};

const IDP: &str = "https://idp.example.com";

fn jwks(keys: &[&TestKey]) -> KeySet {
    KeySet::from_jwks(testing::jwks(keys).to_string().as_bytes()).unwrap()
}

/// Alice's `auditor`, run `run-0.a`, spawned by her `release-bot` (run
/// `run-0`), for 10 minutes from [`now`], with `edit` applied.
fn claims(edit: impl FnOnce(&mut Value)) -> Value {
    let now = now().timestamp();
    let mut claims = json!({
        "iss": IDP, "sub": "alice@example.com", "aud": "custody",
        "iat": now, "nbf": now, "exp": now + 600, "jti": "tok-1",
        "scope": "repo:read",
        "act": {"sub": "auditor", "custody_run": "run-0.a",
                "act": {"sub": "release-bot", "custody_run": "run-0"}},
    });
    edit(&mut claims);
    claims
}

/// Custody's own issuer, holding the revocations.
fn custody() -> Issuer {
    Issuer::new("https://custody.example.com", "custody", Duration::hours(1))
}

fn trusting(config: ExternalConfig, keys: &[&TestKey]) -> Vec<Arc<ExternalIssuer>> {
    vec![Arc::new(ExternalIssuer::new(config, jwks(keys)))]
}

fn config() -> ExternalConfig {
    ExternalConfig::new(IDP, vec!["custody".into(), "api://custody".into()])
}

/// The chain of an accepted token as `root -> agent[run] -> ...`, or why
/// it was refused.
fn verdict(verifier: &Verifier<'_>, token: &str) -> Result<String, TokenError> {
    let Accepted { chain, .. } = verifier.verify(token, now())?;
    let hop =
        |p: &custody_event::Principal| format!("{}[{}]", p.id, p.run_id.as_deref().unwrap_or("-"));
    let mut hops: Vec<String> = chain.root.iter().map(|root| root.id.clone()).collect();
    hops.extend(chain.agents.iter().map(hop));
    hops.push(hop(&chain.current));
    Ok(hops.join(" -> "))
}

const ALICE_S_AUDITOR: &str = "alice@example.com -> release-bot[run-0] -> auditor[run-0.a]";

#[test]
fn an_external_act_chain_reads_as_custody_s_own() {
    let (rsa, ec) = (TestKey::rsa("rsa-1", Algorithm::RS256), TestKey::ec("ec-1"));
    let pss = TestKey::rsa("rsa-pss", Algorithm::PS256);
    let custody = custody();
    let trusted = trusting(config(), &[&rsa, &ec, &pss]);
    let verifier = Verifier::new(&custody, &trusted);
    for key in [&rsa, &ec, &pss] {
        let token = key.sign(&claims(|_| {}));
        assert_eq!(verdict(&verifier, &token).as_deref(), Ok(ALICE_S_AUDITOR));
    }

    let accepted = verifier.verify(&ec.sign(&claims(|_| {})), now()).unwrap();
    assert_eq!(accepted.token_id, "tok-1");
    assert_eq!(accepted.external_issuer.as_deref(), Some(IDP));
    let root = accepted.chain.root.unwrap();
    assert_eq!(root.kind, PrincipalKind::Human);
    let credential = accepted.chain.credential.unwrap();
    assert_eq!(credential.kind, CredentialKind::OauthToken);
    assert_eq!(
        (credential.id.as_str(), credential.issuer.as_deref()),
        ("tok-1", Some(IDP))
    );

    // Another of the accepted audiences, as a list.
    let token = rsa.sign(&claims(|c| {
        c["aud"] = json!(["elsewhere", "api://custody"])
    }));
    assert_eq!(verdict(&verifier, &token).as_deref(), Ok(ALICE_S_AUDITOR));
    // Custody's own tokens go through the same verifier.
    let own = crate::tests::alice_s_bot(&custody, "run-9");
    assert_eq!(
        verifier.verify(&own.token, now()).unwrap().external_issuer,
        None
    );
}

#[test]
fn the_configuration_says_what_custody_s_private_claims_would() {
    let key = TestKey::ec("ec-1");
    let custody = custody();
    let mut config = config();
    config.root = RootKind::Service;
    config.run_claim = "run".into();
    let trusted = trusting(config, &[&key]);
    let verifier = Verifier::new(&custody, &trusted);
    let token = key.sign(&claims(|c| {
        c["sub"] = "ci-pipeline".into();
        c["act"] = json!({"sub": "deployer", "run": "build-42", "custody_run": "ignored"});
        c["jti"] = "".into();
    }));
    let accepted = verifier.verify(&token, now()).unwrap();
    assert_eq!(accepted.chain.root.unwrap().kind, PrincipalKind::Service);
    assert_eq!(accepted.chain.current.run_id.as_deref(), Some("build-42"));
    // Without a `jti` (here an empty one), the token is known by its digest,
    // and revocable by it.
    assert!(
        accepted.token_id.starts_with("sha256:"),
        "{}",
        accepted.token_id
    );
    assert_eq!(accepted.token_id.len(), "sha256:".len() + 64);
    assert_eq!(accepted.chain.credential.unwrap().id, accepted.token_id);
    let without = key.sign(&claims(|c| {
        c.as_object_mut().unwrap().remove("jti");
    }));
    let digest = verifier.verify(&without, now()).unwrap().token_id;
    assert!(digest.starts_with("sha256:") && digest != accepted.token_id);
    let mut custody = custody;
    custody.revoke(accepted.token_id.clone(), now());
    let verifier = Verifier::new(&custody, &trusted);
    assert_eq!(
        verdict(&verifier, &token),
        Err(TokenError::Revoked(accepted.token_id))
    );
    assert!(verdict(&verifier, &without).is_ok(), "another token");
}

#[test]
fn a_token_without_act_names_no_agent_unless_a_claim_is_configured_to() {
    let key = TestKey::ec("ec-1");
    let custody = custody();
    let direct = claims(|c| {
        c.as_object_mut().unwrap().remove("act");
        c["client_id"] = "release-bot".into();
        c["custody_run"] = "run-0".into();
    });
    let trusted = trusting(config(), &[&key]);
    assert_eq!(
        verdict(&Verifier::new(&custody, &trusted), &key.sign(&direct)),
        Err(TokenError::NoAgent)
    );

    let mut config = config();
    config.agent_claim = Some("client_id".into());
    let trusted = trusting(config, &[&key]);
    let verifier = Verifier::new(&custody, &trusted);
    assert_eq!(
        verdict(&verifier, &key.sign(&direct)).as_deref(),
        Ok("alice@example.com -> release-bot[run-0]")
    );
    // An agent's own token (client credentials): no one else behind it.
    let mut own = direct.clone();
    own["sub"] = "release-bot".into();
    assert_eq!(
        verdict(&verifier, &key.sign(&own)).as_deref(),
        Ok("release-bot[run-0]")
    );
    let nameless = key.sign(&claims(|c| {
        c.as_object_mut().unwrap().remove("act");
    }));
    assert_eq!(
        verdict(&verifier, &nameless),
        Err(TokenError::Claim("client_id".into()))
    );
}

#[test]
fn every_bad_external_token_is_refused_with_its_reason() {
    let rsa = TestKey::rsa("rsa-1", Algorithm::RS256);
    let ec = TestKey::ec("ec-1");
    // An RSA key whose JWK names no algorithm: any the issuer accepts
    // that RSA can do.
    let bare_rsa = TestKey::rsa("rsa-bare", Algorithm::RS256).with_jwk(|jwk| {
        jwk.as_object_mut().unwrap().remove("alg");
    });
    let mut custody = custody();
    custody.revoke("run-0.a", now());
    let trusted = trusting(config(), &[&rsa, &ec, &bare_rsa]);
    let verifier = Verifier::new(&custody, &trusted);
    let good = claims(|c| {
        c["act"] = json!({"sub": "tester", "custody_run": "run-0.b",
                          "act": {"sub": "release-bot", "custody_run": "run-0"}});
    });
    assert!(verdict(&verifier, &rsa.sign(&good)).is_ok());
    let at = now().timestamp();
    let signed = |edit: fn(&mut Value)| {
        let mut claims = good.clone();
        edit(&mut claims);
        rsa.sign(&claims)
    };
    let payload_of = |token: &str| -> String {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        String::from_utf8(bytes).unwrap()
    };
    let encoded = |text: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    };
    let accepted = "RS256, ES256, PS256, EdDSA";
    let algorithm = |alg: &str| TokenError::Algorithm {
        alg: alg.into(),
        accepted: accepted.into(),
    };
    let tampered = {
        let token = rsa.sign(&good);
        let payload = payload_of(&token).replace("tester", "admin-bot");
        with_part(&token, 1, &encoded(&payload))
    };
    // HS256 keyed with the issuer's public key, as an attacker who read
    // the JWKS would sign: refused for its algorithm before any key is
    // looked at.
    let confused = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &good,
        &EncodingKey::from_secret(rsa.jwk()["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    let none = with_part(
        &with_part(
            &rsa.sign(&good),
            0,
            &encoded(r#"{"alg":"none","kid":"rsa-1"}"#),
        ),
        2,
        "",
    );
    let other_ec = TestKey::ec("ec-1");
    let cases: Vec<(&str, String, TokenError)> = vec![
        (
            "expired past the leeway",
            signed(|c| c["exp"] = (c["iat"].as_i64().unwrap() - 61).into()),
            TokenError::Expired,
        ),
        (
            "not valid for two minutes",
            signed(|c| c["nbf"] = (c["iat"].as_i64().unwrap() + 120).into()),
            TokenError::NotYetValid,
        ),
        (
            "for another audience",
            signed(|c| c["aud"] = "someone-else".into()),
            TokenError::Audience(vec!["custody".into(), "api://custody".into()]),
        ),
        (
            "of an issuer nobody trusts",
            signed(|c| c["iss"] = "https://stranger.example.com".into()),
            TokenError::UnknownIssuer("https://stranger.example.com".into()),
        ),
        (
            "signed by another key under a known kid",
            other_ec.sign(&good),
            TokenError::Signature,
        ),
        ("with its act chain edited", tampered, TokenError::Signature),
        (
            "under a kid the JWKS lacks",
            rsa.sign_as(Algorithm::RS256, Some("rsa-9"), &good),
            TokenError::UnknownKey("rsa-9".into()),
        ),
        (
            "without a kid, when the JWKS has several keys",
            rsa.sign_as(Algorithm::RS256, None, &good),
            TokenError::MissingKeyId,
        ),
        ("alg none", none, algorithm("none")),
        (
            "HS256 with the public key as secret",
            confused,
            algorithm("HS256"),
        ),
        (
            "PS256 with a key the JWKS gives for RS256",
            rsa.sign_as(Algorithm::PS256, Some("rsa-1"), &good),
            TokenError::KeyAlgorithm {
                kid: "rsa-1".into(),
                alg: "PS256".into(),
            },
        ),
        (
            "ES256 naming an RSA key",
            ec.sign_as(Algorithm::ES256, Some("rsa-bare"), &good),
            TokenError::KeyAlgorithm {
                kid: "rsa-bare".into(),
                alg: "ES256".into(),
            },
        ),
        (
            "through a revoked run",
            rsa.sign(&claims(|_| {})),
            TokenError::Revoked("run-0.a".into()),
        ),
        (
            "without act",
            signed(|c| {
                c.as_object_mut().unwrap().remove("act");
            }),
            TokenError::NoAgent,
        ),
        (
            "with an empty sub",
            signed(|c| c["sub"] = "".into()),
            TokenError::Claim("sub".into()),
        ),
        (
            "without exp",
            signed(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            TokenError::Claim("exp".into()),
        ),
        (
            "with an actor without sub",
            signed(|c| {
                c["act"]["act"].as_object_mut().unwrap().remove("sub");
            }),
            TokenError::Claim("act.act.sub".into()),
        ),
        (
            "with an empty actor",
            signed(|c| c["act"]["act"]["sub"] = "".into()),
            TokenError::Chain("an actor has an empty `sub`".into()),
        ),
    ];
    for (what, token, expected) in cases {
        assert_eq!(verdict(&verifier, &token), Err(expected), "{what}");
    }
    // Within the leeway, a token just expired or not quite valid passes.
    let mut late = good.clone();
    late["exp"] = (at - 30).into();
    late["nbf"] = (at + 30).into();
    assert!(verdict(&verifier, &rsa.sign(&late)).is_ok());
    // An issuer's own check refuses another `iss`, as Custody's does.
    let elsewhere = signed(|c| c["iss"] = "https://stranger.example.com".into());
    assert_eq!(
        trusted[0].verify(&elsewhere, now()).unwrap_err(),
        TokenError::Issuer(IDP.into())
    );
    // A JWKS of one key serves a token without a kid.
    let single = trusting(config(), &[&ec]);
    let token = ec.sign_as(Algorithm::ES256, None, &good);
    assert!(verdict(&Verifier::new(&custody, &single), &token).is_ok());
    // HMAC is not configurable either.
    assert!(
        ExternalConfig::algorithm("HS256")
            .unwrap_err()
            .contains("not accepted")
    );
    assert_eq!(ExternalConfig::algorithm("ES256"), Ok(Algorithm::ES256));
}

#[test]
fn tokens_wait_for_keys_a_url_has_not_given_yet() {
    let key = TestKey::ec("ec-1");
    let custody = custody();
    let issuer = Arc::new(ExternalIssuer::awaiting_keys(
        config(),
        "https://idp.example.com/jwks",
        "connection refused",
    ));
    let trusted = vec![issuer.clone()];
    let verifier = Verifier::new(&custody, &trusted);
    let token = key.sign(&claims(|_| {}));
    let unavailable = |why: &str| TokenError::NoKeys {
        url: "https://idp.example.com/jwks".into(),
        why: why.into(),
    };
    assert_eq!(
        verdict(&verifier, &token),
        Err(unavailable("connection refused"))
    );
    issuer.keys_failed("timed out");
    assert_eq!(
        verdict(&verifier, &token).unwrap_err().to_string(),
        "no keys fetched yet from https://idp.example.com/jwks: timed out"
    );
    issuer.set_keys(jwks(&[&key]));
    assert_eq!(verdict(&verifier, &token).as_deref(), Ok(ALICE_S_AUDITOR));
    // A later failure keeps the keys fetched before.
    issuer.keys_failed("connection refused");
    assert!(verdict(&verifier, &token).is_ok());
    // A rotation drops the old key.
    issuer.set_keys(jwks(&[&TestKey::ec("ec-2")]));
    assert_eq!(
        verdict(&verifier, &token),
        Err(TokenError::UnknownKey("ec-1".into()))
    );
}

#[test]
fn a_jwks_keeps_only_keys_that_verify_signatures() {
    let rsa = TestKey::rsa("rsa-1", Algorithm::RS256);
    let ec = TestKey::ec("ec-1");
    let document = json!({"keys": [
        rsa.jwk(),
        ec.clone().with_jwk(|jwk| jwk["use"] = "enc".into()).jwk(),
        {"kty": "oct", "kid": "shared", "k": "c2VjcmV0"},
        ec.clone().with_jwk(|jwk| jwk["alg"] = "RS256".into()).jwk(),
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
    ]});
    let keys = KeySet::from_jwks(document.to_string().as_bytes()).unwrap();
    assert_eq!(keys.kids().collect::<Vec<_>>(), ["rsa-1"]);
    assert_eq!(
        keys.left_out(),
        [
            "key `ec-1`: its `use` is not `sig`",
            "key `shared`: a symmetric key is never trusted",
            "key `ec-1`: its `alg` RS256 does not fit its key type",
            "key `p521`: its curve is not P-256 or P-384",
        ]
    );

    for (document, expected) in [
        ("[]", "not a JWKS (a JSON object with a `keys` array)"),
        ("{\"keys\": {}}", "not a JWKS"),
        (
            "{\"keys\": []}",
            "no key verifies signatures: the set is empty",
        ),
        (
            "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
            "no key verifies signatures: key 0: a symmetric key is never trusted",
        ),
    ] {
        let error: JwksError = KeySet::from_jwks(document.as_bytes()).unwrap_err();
        assert!(
            error.to_string().starts_with(expected),
            "{document}: {error}"
        );
    }
}
