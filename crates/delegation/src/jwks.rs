//! An external issuer's public keys, read from its JSON Web Key Set
//! (RFC 7517), and which algorithms each may verify.
//!
//! Identity providers publish keys Custody has no use for (encryption keys,
//! curves jsonwebtoken lacks): those are left out, each with the reason, so
//! one odd key does not cost the issuer's others. Symmetric (`oct`) keys are
//! always left out: a secret published in a JWKS verifies nothing.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;

use crate::TokenError;

/// Why a JWKS document gives no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or not an object with a `keys` array.
    #[error("not a JWKS (a JSON object with a `keys` array): {0}")]
    NotJwks(String),
    /// Every key was left out; the reasons, one a key.
    #[error("no key verifies signatures: {}", describe(.0))]
    NoUsableKey(Vec<String>),
}

/// The signature keys of a JWKS, each with the algorithms it may verify.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<PublicKey>,
    left_out: Vec<String>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.kids().collect::<Vec<_>>())
            .field("left_out", &self.left_out)
            .finish()
    }
}

impl KeySet {
    /// The keys of a JWKS document. A key is left out when its `use` is
    /// not `sig`, it is symmetric, its type or curve is one jsonwebtoken
    /// cannot verify with, or its `alg` does not fit its type; a document
    /// with no key left is an error.
    pub fn from_jwks(document: &[u8]) -> Result<KeySet, JwksError> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(document)
            .map_err(|error| JwksError::NotJwks(error.to_string()))?;
        let (mut keys, mut left_out) = (Vec::new(), Vec::new());
        for (index, key) in document.keys.into_iter().enumerate() {
            match PublicKey::read(index, key) {
                Ok(key) => keys.push(key),
                Err(why) => left_out.push(why),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(left_out));
        }
        Ok(KeySet { keys, left_out })
    }

    /// The ids of the keys kept (a key without one is not listed).
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|key| key.kid.as_deref())
    }

    /// Why each key left out was, for the log.
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }

    /// The key a token's header names by `kid`. A header without one may
    /// only use the set's single key: with several, guessing which signed
    /// would mean trying each.
    pub(crate) fn find(&self, kid: Option<&str>) -> Result<&PublicKey, TokenError> {
        match (kid, self.keys.as_slice()) {
            (Some(kid), keys) => keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid))
                .ok_or_else(|| TokenError::UnknownKey(kid.to_owned())),
            (None, [only]) => Ok(only),
            (None, _) => Err(TokenError::MissingKeyId),
        }
    }
}

/// One public key of an external issuer.
#[derive(Clone)]
pub(crate) struct PublicKey {
    kid: Option<String>,
    /// What it may verify: its `alg` alone when the JWKS gives one,
    /// otherwise every algorithm of its type (and curve).
    algorithms: Vec<Algorithm>,
    pub(crate) decoding: DecodingKey,
}

impl PublicKey {
    /// Refuses `alg` unless this key may verify it: a token cannot choose
    /// how the issuer's key is used.
    pub(crate) fn check_algorithm(&self, alg: Algorithm) -> Result<(), TokenError> {
        if self.algorithms.contains(&alg) {
            Ok(())
        } else {
            Err(TokenError::KeyAlgorithm {
                kid: self.kid.clone().unwrap_or_default(),
                alg: format!("{alg:?}"),
            })
        }
    }

    /// The key at `index` of a JWKS, or why it is left out.
    fn read(index: usize, value: serde_json::Value) -> Result<PublicKey, String> {
        let kid = value
            .get("kid")
            .and_then(|kid| kid.as_str())
            .map(str::to_owned);
        let name = match &kid {
            Some(kid) => format!("key `{kid}`"),
            None => format!("key {index}"),
        };
        let jwk: Jwk = serde_json::from_value(value).map_err(|error| format!("{name}: {error}"))?;
        if let Some(usage) = jwk.common.public_key_use.as_ref()
            && *usage != PublicKeyUse::Signature
        {
            return Err(format!("{name}: its `use` is not `sig`"));
        }
        let mut algorithms = algorithms_of(&jwk).map_err(|why| format!("{name}: {why}"))?;
        if let Some(declared) = jwk.common.key_algorithm {
            let alg = Algorithm::try_from(declared)
                .ok()
                .filter(|alg| algorithms.contains(alg))
                .ok_or_else(|| format!("{name}: its `alg` {declared} does not fit its key type"))?;
            algorithms = vec![alg];
        }
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|error| format!("{name}: {error}"))?;
        Ok(PublicKey {
            kid,
            algorithms,
            decoding,
        })
    }
}

/// The asymmetric algorithms a key of this type and curve can verify.
fn algorithms_of(jwk: &Jwk) -> Result<Vec<Algorithm>, &'static str> {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(AlgorithmFamily::Rsa.algorithms().to_vec()),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => Ok(vec![Algorithm::ES256]),
            EllipticCurve::P384 => Ok(vec![Algorithm::ES384]),
            _ => Err("its curve is not P-256 or P-384"),
        },
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
            Ok(vec![Algorithm::EdDSA])
        }
        AlgorithmParameters::OctetKey(_) => Err("a symmetric key is never trusted"),
        _ => Err("its key type is not RSA, EC or Ed25519"),
    }
}

fn describe(reasons: &[String]) -> String {
    if reasons.is_empty() {
        "the set is empty".to_owned()
    } else {
        reasons.join("; ")
    }
}
