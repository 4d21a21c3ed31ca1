//! Keys made for tests, to sign tokens as an external issuer would (RS256,
//! PS256, ES256) and publish their JWKs. Built for this crate's tests and
//! with the `test-support` feature, which only tests enable: never in the
//! server.

// Test support: a key that cannot be made is a broken test set-up.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::sync::OnceLock;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::Algorithm;

/// A signing key and its public JWK.
#[derive(Clone)]
pub struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl TestKey {
    /// An RSA key for `alg` (RS* or PS*), named `kid`. Every RSA key of a
    /// test process is the same 2048-bit key, made once: making one takes
    /// a while, and a test needing two distinct keys can use an EC one.
    pub fn rsa(kid: &str, alg: Algorithm) -> TestKey {
        static DER: OnceLock<Vec<u8>> = OnceLock::new();
        let der = DER.get_or_init(|| {
            use rsa::pkcs1::EncodeRsaPrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .expect("making an RSA key");
            let der = key.to_pkcs1_der().expect("encoding an RSA key");
            der.as_bytes().to_vec()
        });
        TestKey::new(kid, alg, EncodingKey::from_rsa_der(der))
    }

    /// A fresh P-256 key for ES256, named `kid`.
    pub fn ec(kid: &str) -> TestKey {
        use p256::pkcs8::EncodePrivateKey as _;
        let der = p256::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng)
            .to_pkcs8_der()
            .expect("encoding a P-256 key");
        let encoding = EncodingKey::from_ec_der(der.as_bytes());
        TestKey::new(kid, Algorithm::ES256, encoding)
    }

    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> TestKey {
        let jwk = Jwk::from_encoding_key(&encoding, alg).expect("the public JWK of a key");
        let mut jwk = serde_json::to_value(jwk).expect("a JWK as JSON");
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        TestKey {
            kid: kid.into(),
            alg,
            encoding,
            jwk,
        }
    }

    /// Its public JWK, with `kid`, `use` and `alg`.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The same key with its JWK edited by `edit`.
    pub fn with_jwk(mut self, edit: impl FnOnce(&mut Value)) -> TestKey {
        edit(&mut self.jwk);
        self
    }

    /// `claims` signed by this key with its algorithm, its kid in the
    /// header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    /// `claims` signed by this key with `alg`, `kid` in the header.
    pub fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing a token")
    }
}

/// The JWKS document publishing `keys`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    let keys: Vec<&Value> = keys.iter().map(|key| key.jwk()).collect();
    json!({ "keys": keys })
}
