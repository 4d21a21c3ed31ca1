//! Authentication of Custody's own API: bearer tokens with roles.
//!
//! A token is `cst_` followed by 43 base64url characters (32 random bytes).
//! Only its SHA-256 is stored: tokens are high-entropy secrets, so a plain
//! hash is enough to make a stolen database useless for calling the API, and
//! lookup by hash needs no comparison of secrets at all.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use custody_store::{NewToken, Store, TokenRecord};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Submit events, nothing else.
    Ingest,
    /// Read events, the graph, findings and metrics.
    Viewer,
    /// What a viewer may, and act on findings: approve, kill, revoke.
    Responder,
    /// Everything, including managing tokens.
    Admin,
}

impl Role {
    /// Every role, least to most privileged.
    pub const ALL: [Role; 4] = [Role::Ingest, Role::Viewer, Role::Responder, Role::Admin];

    /// The role's name, as stored and as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Viewer => "viewer",
            Role::Responder => "responder",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may use an endpoint that needs `needed`.
    /// Ingest is a separate lane: a collector's token reads nothing, and
    /// readers cannot inject events.
    pub fn permits(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Admin, _) => true,
            (Role::Responder, Role::Viewer | Role::Responder) => true,
            (have, needed) => have == needed,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role \"{s}\", expected one of: ingest, viewer, responder, admin")
            })
    }
}

/// The identity behind an authenticated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The token's id (never its secret). For an agent token of an external
    /// issuer, `ID issued by ISS`: token ids are unique only within their
    /// issuer, and the events the token vouches for keep this as evidence.
    pub token_id: String,
    /// The token's role.
    pub role: Role,
    /// When the caller presented an agent token (of the delegation service
    /// or a trusted external issuer) rather than an API token: the chain it
    /// carries. Such a caller has the `ingest` role, and the events it posts
    /// are its own actions.
    pub agent: Option<custody_event::Actor>,
}

impl Caller {
    /// The holder of an accepted agent token: it may post its own events.
    pub fn agent(accepted: custody_delegation::Accepted) -> Caller {
        let token_id = match accepted.external_issuer {
            Some(issuer) => format!("{} issued by {issuer}", accepted.token_id),
            None => accepted.token_id,
        };
        Caller {
            token_id,
            role: Role::Ingest,
            agent: Some(accepted.chain),
        }
    }

    /// Refuses the request unless the caller's role permits `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.permits(needed) {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                have: self.role,
                needed,
            })
        }
    }
}

/// A freshly created token: its record and its secret, shown once.
#[derive(Debug)]
pub struct IssuedToken {
    /// The stored record.
    pub record: TokenRecord,
    /// The secret the client presents; it is not stored anywhere.
    pub secret: String,
}

/// Prefix of every token secret, so leaked tokens are easy to scan for.
pub const TOKEN_PREFIX: &str = "cst_";

/// Creates a token with `role` and stores its hash.
pub fn issue_token(
    store: &Store,
    role: Role,
    name: Option<String>,
) -> Result<IssuedToken, ApiError> {
    let secret = new_secret();
    let record = register_token(store, role, name, &secret)?;
    Ok(IssuedToken { record, secret })
}

/// A new token secret: `cst_` and 32 random bytes in base64url. Nothing
/// accepts it until [`register_token`] stores it.
pub fn new_secret() -> String {
    let mut secret_bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut secret_bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret_bytes))
}

/// Stores the hash of `secret` as a token with `role`.
pub fn register_token(
    store: &Store,
    role: Role,
    name: Option<String>,
    secret: &str,
) -> Result<TokenRecord, ApiError> {
    let mut id_bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut id_bytes);
    Ok(store.insert_token(&NewToken {
        id: format!("tok_{}", hex(&id_bytes)),
        name,
        role: role.as_str().to_owned(),
        hash: hash(secret),
    })?)
}

/// Resolves an `Authorization` header value to the caller, or says why not.
/// The error never repeats the presented secret.
pub fn authenticate(store: &Store, authorization: Option<&str>) -> Result<Caller, ApiError> {
    authenticate_secret(store, bearer(authorization)?)
}

/// [`authenticate`] for a bearer secret already taken from its header.
pub(crate) fn authenticate_secret(store: &Store, secret: &str) -> Result<Caller, ApiError> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Err(ApiError::Unauthenticated("malformed bearer token"));
    }
    let record = store
        .token_by_hash(&hash(secret))?
        .ok_or(ApiError::Unauthenticated("unknown bearer token"))?;
    if record.revoked_at.is_some() {
        return Err(ApiError::Unauthenticated("revoked bearer token"));
    }
    let role = record.role.parse().map_err(|why| {
        ApiError::Internal(format!("token {} has a bad stored role: {why}", record.id))
    })?;
    Ok(Caller {
        token_id: record.id,
        role,
        agent: None,
    })
}

/// The bearer secret of an `Authorization` header.
pub(crate) fn bearer(authorization: Option<&str>) -> Result<&str, ApiError> {
    let header = authorization.ok_or(ApiError::Unauthenticated("missing bearer token"))?;
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, secret)| secret.trim())
        .ok_or(ApiError::Unauthenticated(
            "the Authorization header must be `Bearer TOKEN`",
        ))
}

/// The SHA-256 of a token secret, as stored.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_permit_as_documented() {
        let table = [
            // (have, needed, permitted)
            (Role::Ingest, Role::Ingest, true),
            (Role::Ingest, Role::Viewer, false),
            (Role::Viewer, Role::Ingest, false),
            (Role::Viewer, Role::Viewer, true),
            (Role::Viewer, Role::Responder, false),
            (Role::Responder, Role::Viewer, true),
            (Role::Responder, Role::Ingest, false),
            (Role::Responder, Role::Admin, false),
            (Role::Admin, Role::Ingest, true),
            (Role::Admin, Role::Admin, true),
        ];
        for (have, needed, permitted) in table {
            assert_eq!(have.permits(needed), permitted, "{have} for {needed}");
        }
    }

    #[test]
    fn issued_tokens_authenticate_and_revoked_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let issued = issue_token(&store, Role::Viewer, Some("grafana".into())).unwrap();
        assert!(issued.secret.starts_with(TOKEN_PREFIX));
        assert_eq!(issued.secret.len(), TOKEN_PREFIX.len() + 43);
        let header = format!("Bearer {}", issued.secret);
        let caller = authenticate(&store, Some(&header)).unwrap();
        let shouted = format!("BEARER {}", issued.secret);
        assert_eq!(
            authenticate(&store, Some(&shouted)).unwrap(),
            caller,
            "the scheme is case-insensitive"
        );
        assert_eq!(
            caller,
            Caller {
                token_id: issued.record.id.clone(),
                role: Role::Viewer,
                agent: None,
            }
        );

        for (header, why) in [
            (None, "missing bearer token"),
            (Some("Basic abc"), "must be `Bearer TOKEN`"),
            (Some("Bearer nope"), "malformed bearer token"),
            (Some("Bearer cst_AAAA"), "unknown bearer token"),
        ] {
            let error = authenticate(&store, header).unwrap_err();
            assert!(error.to_string().contains(why), "{error}");
        }

        assert!(store.revoke_token(&issued.record.id).unwrap());
        let error = authenticate(&store, Some(&header)).unwrap_err();
        assert!(error.to_string().contains("revoked"), "{error}");
        assert!(!error.to_string().contains(&issued.secret));
    }
}
