//! The checks every agent token goes through, whoever issued it: the
//! header's algorithm before anything else, then what jsonwebtoken validates
//! (signature, `iss`, `aud`, required claims), the times against the
//! caller's clock, and the chain its `act` claims nest.
//!
//! Custody's [`Issuer`](crate::Issuer) and every
//! [`ExternalIssuer`](crate::ExternalIssuer) run these same functions, so a
//! token is refused for the same reasons, in the same words, whichever
//! issuer it names.

use std::str::FromStr as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use custody_event::{Actor, Credential, Principal, PrincipalKind};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{MAX_CHAIN_DEPTH, TokenError};

/// The `iss` a token claims, unverified: it only picks the issuer that will
/// verify the token, and is trusted no further.
pub fn claimed_issuer(token: &str) -> Result<String, TokenError> {
    #[derive(Deserialize)]
    struct Iss {
        #[serde(default)]
        iss: Option<String>,
    }
    let [_, payload, _] = parts(token)?;
    let claims: Iss = decode_part(payload, "payload", "a JSON object")?;
    claims
        .iss
        .filter(|iss| !iss.trim().is_empty())
        .ok_or_else(|| TokenError::Claim("iss".into()))
}

/// The header fields checked before anything else.
#[derive(Deserialize)]
pub(crate) struct RawHeader {
    alg: String,
    #[serde(default)]
    pub(crate) kid: Option<String>,
}

/// Reads a token's header and refuses it unless its algorithm is one of
/// `accepted`; `none` never is, whatever `accepted` says, since jsonwebtoken
/// has no such algorithm. Returns the header and its algorithm.
pub(crate) fn read_header(
    token: &str,
    accepted: &[Algorithm],
) -> Result<(RawHeader, Algorithm), TokenError> {
    let [header, _, _] = parts(token)?;
    let header: RawHeader = decode_part(header, "header", "a JOSE header")?;
    match Algorithm::from_str(&header.alg) {
        Ok(alg) if accepted.contains(&alg) => Ok((header, alg)),
        _ => Err(TokenError::Algorithm {
            alg: header.alg,
            accepted: names(accepted),
        }),
    }
}

/// The claims of `token`, signed with `alg`, once jsonwebtoken has checked
/// its signature by `key`, its `iss` (`issuer`), its `aud` (one of
/// `audiences`) and that the `required` claims are there. Times are left to
/// [`check_times`], which uses the caller's clock rather than the system's.
/// Claims jsonwebtoken does not know are refused by their path
/// (`act.act.sub`).
pub(crate) fn decode<T: DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
    issuer: &str,
    audiences: &[String],
    required: &[&str],
) -> Result<T, TokenError> {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_audience(audiences);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(required);
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
        .map_err(|error| refusal(&error, issuer, audiences))?
        .claims;
    serde_path_to_error::deserialize(claims).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.inner().to_string();
        let claim = match inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            Some(field) if path == "." => field.to_owned(),
            Some(field) => format!("{path}.{field}"),
            None => path,
        };
        TokenError::Claim(claim)
    })
}

/// Why jsonwebtoken refused a token of `issuer` for `audiences`.
fn refusal(error: &jsonwebtoken::errors::Error, issuer: &str, audiences: &[String]) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAudience => TokenError::Audience(audiences.to_vec()),
        ErrorKind::InvalidIssuer => TokenError::Issuer(issuer.to_owned()),
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::Claim(claim.clone()),
        ErrorKind::Json(error) => TokenError::Claim(error.to_string()),
        ErrorKind::Base64(_) => TokenError::Malformed("a part is not base64url".into()),
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

/// Refuses a token at or past its `exp`, or before its `nbf`, at `now`,
/// allowing `leeway` for the issuer's clock being off.
pub(crate) fn check_times(
    now: DateTime<Utc>,
    exp: i64,
    nbf: Option<i64>,
    leeway: Duration,
) -> Result<(), TokenError> {
    let (now, leeway) = (now.timestamp(), leeway.num_seconds());
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| now < nbf.saturating_sub(leeway)) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// One agent of a chain, as a token's `act` claim names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop<'a> {
    pub(crate) agent: &'a str,
    pub(crate) run: Option<&'a str>,
}

/// The hops of an RFC 8693 `act` chain, the current actor (`outermost`)
/// first: `hop` reads one, `inner` steps to the actor it acts for. Stops at
/// a chain deeper than [`MAX_CHAIN_DEPTH`].
pub(crate) fn walk<'a, A>(
    outermost: &'a A,
    hop: impl Fn(&'a A) -> Hop<'a>,
    inner: impl Fn(&'a A) -> Option<&'a A>,
) -> Result<Vec<Hop<'a>>, TokenError> {
    let mut hops = Vec::new();
    let mut next = Some(outermost);
    while let Some(act) = next {
        if hops.len() >= MAX_CHAIN_DEPTH {
            return Err(TokenError::Chain(format!(
                "deeper than {MAX_CHAIN_DEPTH} agents"
            )));
        }
        hops.push(hop(act));
        next = inner(act);
    }
    Ok(hops)
}

/// The chain of `hops` (the current actor first) acting for `root`, made
/// with `credential`, as an event's actor: root first, then the agents from
/// the one nearest the root, then the current actor.
pub(crate) fn chain(
    root: Option<Principal>,
    hops: &[Hop<'_>],
    credential: Credential,
) -> Result<Actor, TokenError> {
    if hops.iter().any(|hop| hop.agent.trim().is_empty()) {
        return Err(TokenError::Chain("an actor has an empty `sub`".into()));
    }
    let agent = |hop: &Hop<'_>| principal(PrincipalKind::Agent, hop.agent, hop.run);
    let (current, above) = hops
        .split_first()
        .ok_or_else(|| TokenError::Chain("no actor".into()))?;
    Ok(Actor {
        root,
        agents: above.iter().rev().map(agent).collect(),
        current: agent(current),
        credential: Some(credential),
    })
}

/// Every node of a chain a revocation can name: the credential (the token
/// id), the root, and each agent and run.
pub(crate) fn nodes(chain: &Actor) -> impl Iterator<Item = &str> {
    let hops = chain.agents.iter().chain(std::iter::once(&chain.current));
    chain
        .credential
        .iter()
        .map(|credential| credential.id.as_str())
        .chain(chain.root.iter().map(|root| root.id.as_str()))
        .chain(hops.flat_map(|hop| std::iter::once(hop.id.as_str()).chain(hop.run_id.as_deref())))
}

/// A principal known by its id (and run) only, as tokens name them.
pub(crate) fn principal(kind: PrincipalKind, id: &str, run: Option<&str>) -> Principal {
    Principal {
        kind,
        id: id.to_owned(),
        name: None,
        version: None,
        run_id: run.map(str::to_owned),
    }
}

/// The three dot-separated parts of a compact JWS.
fn parts(token: &str) -> Result<[&str; 3], TokenError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => Ok([header, payload, signature]),
        _ => Err(TokenError::Malformed(
            "a JWT has three dot-separated parts".into(),
        )),
    }
}

/// Decodes the base64url JSON of a token's `part` (its name), which should
/// be `shape`.
fn decode_part<T: DeserializeOwned>(
    encoded: &str,
    part: &str,
    shape: &str,
) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenError::Malformed(format!("the {part} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|error| TokenError::Malformed(format!("the {part} is not {shape}: {error}")))
}

/// Algorithms as a token's header names them, for messages.
pub(crate) fn names(algorithms: &[Algorithm]) -> String {
    let names: Vec<String> = algorithms.iter().map(|alg| format!("{alg:?}")).collect();
    names.join(", ")
}
