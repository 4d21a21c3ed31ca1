//! Tokens of an external issuer Custody trusts: an identity provider that
//! signs agent tokens with keys it publishes as a JWKS, and nests the agent
//! chain in `act` claims as Custody does (RFC 8693, section 4.1).
//!
//! Such tokens carry none of Custody's private claims, so the issuer's
//! configuration says what they would: the kind of the root in `sub`
//! ([`RootKind`], human unless configured), the claim of each `act` naming
//! its run (`custody_run` unless configured), and, for tokens with no
//! `act`, which claim names the agent (none unless configured: such a token
//! is refused, since it names no agent). The chain's credential is the
//! token: its `jti`, or the SHA-256 of the whole token when it has none,
//! issued by the external `iss`.
//!
//! Keys change under a running server (fetched again from a URL), so an
//! issuer holds them behind a lock and the fetcher replaces them whole.

use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Duration, Utc};
use custody_event::{Actor, Credential, CredentialKind, PrincipalKind};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::checks::{self, Hop};
use crate::{Accepted, KeySet, TokenError};

/// The algorithms an external issuer's tokens may use unless configured:
/// the asymmetric ones identity providers sign with.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// The kind of principal an external token's `sub` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RootKind {
    /// A person: the default, as identity providers mostly sign for users.
    #[default]
    Human,
    /// A workload or service account.
    Service,
}

impl std::str::FromStr for RootKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "human" => Ok(RootKind::Human),
            "service" => Ok(RootKind::Service),
            other => Err(format!("`{other}` is neither `human` nor `service`")),
        }
    }
}

/// What Custody accepts of an external issuer's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The audiences accepted: a token's `aud` must name one.
    pub audiences: Vec<String>,
    /// The algorithms accepted, never `none` nor an HMAC one (see
    /// [`ExternalConfig::algorithm`]).
    pub algorithms: Vec<Algorithm>,
    /// How far the issuer's clock may be off when `exp` and `nbf` are
    /// checked.
    pub leeway: Duration,
    /// What its `sub` names.
    pub root: RootKind,
    /// The claim of an `act` (or, with `agent_claim`, of the token) naming
    /// the agent's run.
    pub run_claim: String,
    /// For a token without `act`: the claim naming the agent (such as
    /// `client_id` or `azp`), acting for `sub`; or for itself alone when it
    /// is `sub`. `None` refuses such tokens.
    pub agent_claim: Option<String>,
}

impl ExternalConfig {
    /// Tokens of `issuer` for any of `audiences`, with the defaults: the
    /// [`DEFAULT_ALGORITHMS`], a minute of leeway, a human root, runs in
    /// `custody_run`, and an `act` claim required.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> ExternalConfig {
        ExternalConfig {
            issuer: issuer.into(),
            audiences,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: Duration::seconds(60),
            root: RootKind::Human,
            run_claim: "custody_run".into(),
            agent_claim: None,
        }
    }

    /// The algorithm named `name`, if an external issuer may use it: an
    /// asymmetric one jsonwebtoken verifies. HMAC is refused because its
    /// key is a shared secret a JWKS cannot hold; `none` signs nothing.
    pub fn algorithm(name: &str) -> Result<Algorithm, String> {
        use jsonwebtoken::AlgorithmFamily;
        let accepted = [
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
        ]
        .iter()
        .flat_map(|family| family.algorithms().iter().copied())
        .collect::<Vec<_>>();
        name.parse::<Algorithm>()
            .ok()
            .filter(|alg| accepted.contains(alg))
            .ok_or_else(|| {
                format!(
                    "algorithm `{name}` is not accepted, only {}",
                    checks::names(&accepted)
                )
            })
    }
}

/// An external issuer Custody trusts: what it accepts of its tokens, and
/// its current keys.
pub struct ExternalIssuer {
    config: ExternalConfig,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for ExternalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalIssuer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An issuer's keys, or why it has none yet.
#[derive(Debug, Clone)]
enum Keys {
    Awaiting { url: String, why: String },
    Loaded(Arc<KeySet>),
}

impl ExternalIssuer {
    /// An issuer whose tokens verify with `keys`.
    pub fn new(config: ExternalConfig, keys: KeySet) -> ExternalIssuer {
        ExternalIssuer {
            config,
            keys: RwLock::new(Keys::Loaded(Arc::new(keys))),
        }
    }

    /// An issuer whose keys are to come from `url`, which has not given
    /// them (`why`): its tokens are refused, saying so, until
    /// [`ExternalIssuer::set_keys`].
    pub fn awaiting_keys(
        config: ExternalConfig,
        url: impl Into<String>,
        why: impl Into<String>,
    ) -> ExternalIssuer {
        ExternalIssuer {
            config,
            keys: RwLock::new(Keys::Awaiting {
                url: url.into(),
                why: why.into(),
            }),
        }
    }

    /// The `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The claim of each `act` naming its run.
    pub fn run_claim(&self) -> &str {
        &self.config.run_claim
    }

    /// Replaces its keys: tokens signed by a key no longer in `keys` are
    /// refused from now on.
    pub fn set_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Keys::Loaded(Arc::new(keys));
    }

    /// Records why fetching its keys failed. Keys it had stay in use: an
    /// identity provider being unreachable for a while is no reason to
    /// refuse tokens its keys still verify.
    pub fn keys_failed(&self, why: impl Into<String>) {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if let Keys::Awaiting { why: last, .. } = &mut *keys {
            *last = why.into();
        }
    }

    /// Verifies one of its tokens at `now`, but not against revocations:
    /// only a [`Verifier`](crate::Verifier), which holds them, calls this.
    pub(crate) fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Accepted, TokenError> {
        let config = &self.config;
        let (header, alg) = checks::read_header(token, &config.algorithms)?;
        let keys = self.keys()?;
        let key = keys.find(header.kid.as_deref())?;
        key.check_algorithm(alg)?;
        let claims: ForeignClaims = checks::decode(
            token,
            &key.decoding,
            alg,
            &config.issuer,
            &config.audiences,
            &["exp", "iss", "aud", "sub"],
        )?;
        checks::check_times(now, claims.exp, claims.nbf, config.leeway)?;
        let token_id = match claims.jti.as_deref() {
            Some(jti) if !jti.trim().is_empty() => jti.to_owned(),
            _ => digest(token),
        };
        let chain = self.chain(&claims, &token_id)?;
        Ok(Accepted {
            chain,
            token_id,
            external_issuer: Some(config.issuer.clone()),
            expires_at: claims.exp.saturating_add(config.leeway.num_seconds()),
        })
    }

    fn keys(&self) -> Result<Arc<KeySet>, TokenError> {
        match &*self.keys.read().unwrap_or_else(PoisonError::into_inner) {
            Keys::Loaded(keys) => Ok(keys.clone()),
            Keys::Awaiting { url, why } => Err(TokenError::NoKeys {
                url: url.clone(),
                why: why.clone(),
            }),
        }
    }

    /// The chain a verified token carries: its `act` chain under `sub`, or
    /// the agent its `agent_claim` names.
    fn chain(&self, claims: &ForeignClaims, token_id: &str) -> Result<Actor, TokenError> {
        if claims.sub.trim().is_empty() {
            return Err(TokenError::Claim("sub".into()));
        }
        let root_kind = match self.config.root {
            RootKind::Human => PrincipalKind::Human,
            RootKind::Service => PrincipalKind::Service,
        };
        let root = checks::principal(root_kind, &claims.sub, None);
        let credential = Credential {
            kind: CredentialKind::OauthToken,
            id: token_id.to_owned(),
            issuer: Some(claims.iss.clone()),
        };
        let run_claim = self.config.run_claim.as_str();
        match (&claims.act, &self.config.agent_claim) {
            (Some(act), _) => {
                let hops = checks::walk(
                    act,
                    |act| Hop {
                        agent: &act.sub,
                        run: text(&act.claims, run_claim),
                    },
                    |act| act.act.as_deref(),
                )?;
                checks::chain(Some(root), &hops, credential)
            }
            (None, Some(agent_claim)) => {
                let agent = text(&claims.other, agent_claim)
                    .ok_or_else(|| TokenError::Claim(agent_claim.clone()))?;
                let hop = Hop {
                    agent,
                    run: text(&claims.other, run_claim),
                };
                // A token an agent got for itself (client credentials) names
                // it in `sub` too: it acts for no one else.
                let root = (agent != claims.sub).then_some(root);
                checks::chain(root, &[hop], credential)
            }
            (None, None) => Err(TokenError::NoAgent),
        }
    }
}

/// The claims Custody reads of an external token. jsonwebtoken has checked
/// `aud`, and that `exp`, `iss`, `aud` and `sub` are present.
#[derive(Deserialize)]
struct ForeignClaims {
    iss: String,
    sub: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    act: Option<ForeignAct>,
    /// The rest, where the agent and run claims may be.
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// One actor of an external token's `act` chain.
#[derive(Deserialize)]
struct ForeignAct {
    sub: String,
    #[serde(default)]
    act: Option<Box<ForeignAct>>,
    /// The rest, where the run claim may be.
    #[serde(flatten)]
    claims: serde_json::Map<String, Value>,
}

/// The claim `name` of `claims`, if it is a string.
fn text<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// The id of a token without `jti`: its SHA-256, hex, so that the same
/// token always has the same id and can be revoked by it.
fn digest(token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}
