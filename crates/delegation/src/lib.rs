//! Custody's delegation tokens: agent tokens minted for a human's (or a
//! service's) agent, exchanged down the chain for sub-agents (RFC 8693), and
//! verified strictly wherever Custody accepts them.
//!
//! A token's claims carry its chain in the RFC 8693 shape: the root in `sub`,
//! each agent a nested `act`, the current actor outermost. Custody adds the
//! run to each `act` (`custody_run`) and the root's kind (`custody_sub_type`).
//! Exchange narrows: a child's scopes are a subset of its parent's and it
//! expires no later. Revoking a node (a run, an agent or a token id) refuses
//! every token whose chain passes through it, at every check.
//!
//! Keys are Ed25519 (`EdDSA`), rotated by [`Issuer::rotate`]; retired keys
//! stay in the JWKS until the tokens they signed have expired.
//!
//! Custody also trusts tokens of external issuers ([`ExternalIssuer`]: an
//! identity provider whose keys are a JWKS) whose `act` claims nest a chain
//! the same way. A [`Verifier`] routes a token to its issuer by the `iss` it
//! claims; every token, Custody's or not, runs the same checks
//! (`checks.rs`) and is refused if its chain passes through a node Custody's
//! issuer revoked.
//!
//! *Invariant:* verification refuses before it trusts: the header's
//! algorithm and key id are checked before any claim is read (but the `iss`
//! a token claims, read only to pick the issuer that verifies it), and every
//! refusal says why ([`TokenError`]).

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod checks;
mod external;
mod jwks;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
mod verifier;

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use custody_event::{Actor, Principal, PrincipalKind};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};

pub use checks::claimed_issuer;
pub use external::{DEFAULT_ALGORITHMS, ExternalConfig, ExternalIssuer, RootKind};
pub use jsonwebtoken::Algorithm;
pub use jwks::{JwksError, KeySet};
pub use verifier::{Accepted, Verifier};

/// The token type of RFC 8693 exchange requests and responses.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The deepest chain a token may carry, in agents.
pub const MAX_CHAIN_DEPTH: usize = 32;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts with a JSON header.
    #[error("not a JWT: {0}")]
    Malformed(String),
    /// The header names an algorithm the issuer does not accept (`none`
    /// and the HMAC ones never are).
    #[error("algorithm `{alg}` is not accepted, only {accepted}")]
    Algorithm {
        /// The header's algorithm.
        alg: String,
        /// The issuer's, comma-separated.
        accepted: String,
    },
    /// The header names no key id. Custody's own tokens always name one; an
    /// external issuer's may not only when its JWKS has a single key.
    #[error("the header names no key id")]
    MissingKeyId,
    /// The header names a key id no key of the issuer has.
    #[error("unknown key id `{0}`")]
    UnknownKey(String),
    /// The key the header names is not for the header's algorithm: the
    /// JWKS gives the key another `alg`, or a key type that cannot verify
    /// it.
    #[error("key `{kid}` is not for algorithm `{alg}`")]
    KeyAlgorithm {
        /// The key's id.
        kid: String,
        /// The header's algorithm.
        alg: String,
    },
    /// The issuer's keys come from a URL that has not answered with a
    /// usable JWKS since the server started.
    #[error("no keys fetched yet from {url}: {why}")]
    NoKeys {
        /// Where the keys come from.
        url: String,
        /// Why the last fetch failed.
        why: String,
    },
    /// The signature does not verify: the token was altered or signed by
    /// another key.
    #[error("the signature does not verify")]
    Signature,
    /// Past its `exp`.
    #[error("expired")]
    Expired,
    /// Before its `nbf`.
    #[error("not valid yet")]
    NotYetValid,
    /// Its `aud` is none of the issuer's audiences.
    #[error("wrong audience, expected `{}`", .0.join("` or `"))]
    Audience(Vec<String>),
    /// Its `iss` is not this issuer.
    #[error("wrong issuer, expected `{0}`")]
    Issuer(String),
    /// Its `iss` is neither Custody's issuer nor one it trusts.
    #[error("issuer `{0}` is not trusted")]
    UnknownIssuer(String),
    /// A claim is missing or of the wrong shape.
    #[error("claim `{0}` is missing or malformed")]
    Claim(String),
    /// The `act` chain is empty, too deep or names an empty actor.
    #[error("the act chain is malformed: {0}")]
    Chain(String),
    /// It has no `act` claim, so it names no agent, and its issuer is not
    /// configured to read the agent from another claim.
    #[error("the token names no agent: it has no `act` claim")]
    NoAgent,
    /// A node of its chain, or the token itself, was revoked.
    #[error("revoked: `{0}` was revoked")]
    Revoked(String),
}

/// Why an exchange was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The subject token does not verify.
    #[error("the subject token is refused: {0}")]
    SubjectToken(#[from] TokenError),
    /// The requested scopes are not all the subject token's.
    #[error("scope `{0}` is not granted to the subject token")]
    Scope(String),
    /// The new actor is not an agent in a run.
    #[error("the actor must be an agent with a run id")]
    Actor,
    /// The chain would grow past [`MAX_CHAIN_DEPTH`].
    #[error("the chain would exceed {MAX_CHAIN_DEPTH} agents")]
    TooDeep,
    /// Signing failed.
    #[error("signing the token: {0}")]
    Signing(String),
}

/// One actor of a chain in a token's `act` claim, the current one
/// outermost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    /// The agent's id.
    pub sub: String,
    /// The run it acts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custody_run: Option<String>,
    /// The actor it acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Act>>,
}

/// The claims of a Custody agent token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer URL.
    pub iss: String,
    /// The root of the chain: a human or a service.
    pub sub: String,
    /// Whether `sub` is a `human` or a `service`.
    pub custody_sub_type: String,
    /// Who the token is for.
    pub aud: String,
    /// Seconds since the epoch.
    pub iat: i64,
    /// Seconds since the epoch.
    pub nbf: i64,
    /// Seconds since the epoch.
    pub exp: i64,
    /// The token's id.
    pub jti: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// The agents, current outermost.
    pub act: Act,
}

impl Claims {
    /// The chain the token carries, root first.
    pub fn chain(&self) -> Result<Actor, TokenError> {
        let root_kind = match self.custody_sub_type.as_str() {
            "human" => PrincipalKind::Human,
            "service" => PrincipalKind::Service,
            other => {
                return Err(TokenError::Claim(format!("custody_sub_type ({other})")));
            }
        };
        let hops = checks::walk(
            &self.act,
            |act| checks::Hop {
                agent: &act.sub,
                run: act.custody_run.as_deref(),
            },
            |act| act.act.as_deref(),
        )?;
        checks::chain(
            Some(checks::principal(root_kind, &self.sub, None)),
            &hops,
            custody_event::Credential {
                kind: custody_event::CredentialKind::CustodyToken,
                id: self.jti.clone(),
                issuer: Some(self.iss.clone()),
            },
        )
    }

    /// The scopes, as a set.
    pub fn scopes(&self) -> BTreeSet<&str> {
        self.scope.split_whitespace().collect()
    }
}

/// A token and its claims, as minted.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The compact JWS.
    pub token: String,
    /// What it says.
    pub claims: Claims,
}

/// One signing key.
struct Key {
    kid: String,
    /// The Ed25519 seed, for saving the key; never logged.
    seed: [u8; 32],
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public key, base64url, as the JWKS publishes it.
    x: String,
    /// Once retired, it signs nothing more and is dropped from the JWKS when
    /// the tokens it signed have expired.
    retired_at: Option<DateTime<Utc>>,
}

/// Custody's token issuer: its keys, its policy and its revocations.
pub struct Issuer {
    issuer: String,
    audience: String,
    max_lifetime: Duration,
    keys: Vec<Key>,
    revoked: HashMap<String, DateTime<Utc>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What an issuer must keep across restarts: its keys (secret) and its
/// revocations. Saved by the caller, readable only by its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerState {
    /// The keys, oldest first.
    pub keys: Vec<SavedKey>,
    /// Revoked nodes, with when.
    pub revoked: std::collections::BTreeMap<String, DateTime<Utc>>,
}

/// A key as saved.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedKey {
    /// Its key id.
    pub kid: String,
    /// Its Ed25519 seed, base64url.
    pub seed: String,
    /// When it stopped signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SavedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("SavedKey")
            .field("kid", &self.kid)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// Why a saved state could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A key's seed is not 32 bytes of base64url.
    #[error("key `{0}`: the seed is not 32 bytes of base64url")]
    Seed(String),
    /// No key can sign.
    #[error("no key is active")]
    NoActiveKey,
}

impl Issuer {
    /// An issuer restored from `state`, as [`Issuer::state`] saved it.
    pub fn restore(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        max_lifetime: Duration,
        state: &IssuerState,
    ) -> Result<Issuer, StateError> {
        let mut keys = Vec::with_capacity(state.keys.len());
        for saved in &state.keys {
            let seed: [u8; 32] = URL_SAFE_NO_PAD
                .decode(&saved.seed)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| StateError::Seed(saved.kid.clone()))?;
            keys.push(key_from(saved.kid.clone(), seed, saved.retired_at));
        }
        if !keys.iter().any(|key| key.retired_at.is_none()) {
            return Err(StateError::NoActiveKey);
        }
        Ok(Issuer {
            issuer: issuer.into(),
            audience: audience.into(),
            max_lifetime,
            keys,
            revoked: state.revoked.clone().into_iter().collect(),
        })
    }

    /// What to save so that [`Issuer::restore`] brings this issuer back.
    pub fn state(&self) -> IssuerState {
        IssuerState {
            keys: self
                .keys
                .iter()
                .map(|key| SavedKey {
                    kid: key.kid.clone(),
                    seed: URL_SAFE_NO_PAD.encode(key.seed),
                    retired_at: key.retired_at,
                })
                .collect(),
            revoked: self.revoked.clone().into_iter().collect(),
        }
    }

    /// Whether `node` is revoked.
    pub fn is_revoked(&self, node: &str) -> bool {
        self.revoked.contains_key(node)
    }

    /// An issuer at `issuer` (its URL) minting tokens for `audience`, with a
    /// fresh key; no token lives longer than `max_lifetime`.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        max_lifetime: Duration,
    ) -> Issuer {
        let mut issuer = Issuer {
            issuer: issuer.into(),
            audience: audience.into(),
            max_lifetime,
            keys: Vec::new(),
            revoked: HashMap::new(),
        };
        issuer.keys.push(new_key());
        issuer
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Starts signing with a new key; the previous one keeps verifying the
    /// tokens it signed until they expire.
    pub fn rotate(&mut self, now: DateTime<Utc>) {
        let max_lifetime = self.max_lifetime;
        self.keys
            .retain(|key| key.retired_at.is_none_or(|at| at + max_lifetime > now));
        for key in &mut self.keys {
            key.retired_at.get_or_insert(now);
        }
        self.keys.push(new_key());
    }

    /// The public keys, as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|key| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": key.kid, "x": key.x,
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Mints an agent token: `root` (a human or service) runs `agent` (an
    /// agent with a run id) with `scopes`, for `lifetime` (at most the
    /// issuer's maximum).
    pub fn mint(
        &self,
        root: &Principal,
        agent: &Principal,
        scopes: &[&str],
        lifetime: Duration,
        now: DateTime<Utc>,
    ) -> Result<Minted, ExchangeError> {
        let sub_type = match root.kind {
            PrincipalKind::Service => "service",
            _ => "human",
        };
        let act = act_of(agent, None)?;
        let exp = now + lifetime.min(self.max_lifetime);
        self.sign(
            root.id.clone(),
            sub_type.into(),
            act,
            scopes.join(" "),
            exp,
            now,
        )
    }

    /// RFC 8693 token exchange: the holder of `subject_token` mints a token
    /// for `actor`, a sub-agent in a run, acting for it. The scopes are
    /// `requested` (all of the subject's when `None`), which must be the
    /// subject's; the new token expires no later than the subject's.
    pub fn exchange(
        &self,
        subject_token: &str,
        actor: &Principal,
        requested: Option<&[&str]>,
        lifetime: Duration,
        now: DateTime<Utc>,
    ) -> Result<Minted, ExchangeError> {
        let parent = self.verify(subject_token, now)?;
        let granted = parent.scopes();
        let scopes: Vec<&str> = match requested {
            Some(requested) => {
                if let Some(extra) = requested.iter().find(|s| !granted.contains(*s)) {
                    return Err(ExchangeError::Scope((*extra).to_owned()));
                }
                requested.to_vec()
            }
            None => granted.into_iter().collect(),
        };
        if parent.chain()?.agents.len() + 1 >= MAX_CHAIN_DEPTH {
            return Err(ExchangeError::TooDeep);
        }
        let act = act_of(actor, Some(parent.act.clone()))?;
        let exp = (now + lifetime.min(self.max_lifetime))
            .min(DateTime::from_timestamp(parent.exp, 0).unwrap_or(now));
        self.sign(
            parent.sub.clone(),
            parent.custody_sub_type.clone(),
            act,
            scopes.join(" "),
            exp,
            now,
        )
    }

    /// Revokes a node: a token id, a root, an agent or a run. Every token
    /// whose chain passes through it is refused from now on.
    pub fn revoke(&mut self, node: impl Into<String>, now: DateTime<Utc>) {
        self.revoked.entry(node.into()).or_insert(now);
    }

    /// Lifts the revocation of `node` (a kill undone by a responder);
    /// whether it was revoked.
    pub fn reinstate(&mut self, node: &str) -> bool {
        self.revoked.remove(node).is_some()
    }

    /// Verifies a token and returns its claims, or why it is refused.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        let (header, alg) = checks::read_header(token, &[Algorithm::EdDSA])?;
        let kid = header.kid.ok_or(TokenError::MissingKeyId)?;
        let key = self
            .keys
            .iter()
            .find(|key| key.kid == kid)
            .ok_or(TokenError::UnknownKey(kid))?;
        let claims: Claims = checks::decode(
            token,
            &key.decoding,
            alg,
            &self.issuer,
            std::slice::from_ref(&self.audience),
            &["exp", "nbf", "iat", "iss", "aud", "sub", "jti"],
        )?;
        checks::check_times(now, claims.exp, Some(claims.nbf), Duration::zero())?;
        self.refuse_revoked(&claims.chain()?)?;
        Ok(claims)
    }

    /// Refuses a chain that passes through a revoked node: its token, its
    /// root, an agent or a run. The chain may be of any issuer's token.
    pub(crate) fn refuse_revoked(&self, chain: &Actor) -> Result<(), TokenError> {
        match checks::nodes(chain).find(|node| self.revoked.contains_key(*node)) {
            Some(node) => Err(TokenError::Revoked(node.to_owned())),
            None => Ok(()),
        }
    }

    fn sign(
        &self,
        sub: String,
        custody_sub_type: String,
        act: Act,
        scope: String,
        exp: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Minted, ExchangeError> {
        let key = self
            .keys
            .iter()
            .rev()
            .find(|key| key.retired_at.is_none())
            .ok_or_else(|| ExchangeError::Signing("no active key".into()))?;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub,
            custody_sub_type,
            aud: self.audience.clone(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: exp.timestamp(),
            jti: uuid::Uuid::now_v7().to_string(),
            scope,
            act,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|error| ExchangeError::Signing(error.to_string()))?;
        Ok(Minted { token, claims })
    }
}

/// The `act` of an agent in a run, acting for `parent`.
fn act_of(agent: &Principal, parent: Option<Act>) -> Result<Act, ExchangeError> {
    match (&agent.kind, &agent.run_id) {
        (PrincipalKind::Agent, Some(run)) if !agent.id.trim().is_empty() => Ok(Act {
            sub: agent.id.clone(),
            custody_run: Some(run.clone()),
            act: parent.map(Box::new),
        }),
        _ => Err(ExchangeError::Actor),
    }
}

/// A fresh Ed25519 key with a random key id.
fn new_key() -> Key {
    key_from(
        uuid::Uuid::new_v4().simple().to_string(),
        rand::random(),
        None,
    )
}

/// The key of `seed`, named `kid`.
fn key_from(kid: String, seed: [u8; 32], retired_at: Option<DateTime<Utc>>) -> Key {
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = signing.verifying_key().to_bytes();
    // PKCS#8 encoding of a valid key cannot fail; should it, the key is
    // unusable and signing says so.
    let der = signing
        .to_pkcs8_der()
        .map(|doc| doc.as_bytes().to_vec())
        .unwrap_or_default();
    let x = URL_SAFE_NO_PAD.encode(public);
    Key {
        kid,
        seed,
        encoding: EncodingKey::from_ed_der(&der),
        decoding: DecodingKey::from_ed_components(&x)
            .unwrap_or_else(|_| DecodingKey::from_ed_der(&public)),
        x,
        retired_at,
    }
}

#[cfg(test)]
mod external_tests;
#[cfg(test)]
mod tests;
