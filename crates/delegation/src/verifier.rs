//! One place every agent token is verified: Custody's own, and those of
//! the external issuers it trusts, against one set of revocations.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use custody_event::Actor;

use crate::{ExternalIssuer, Issuer, TokenError, checks};

/// A token Custody accepted, whoever issued it.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The chain it carries, root first; its credential is the token.
    pub chain: Actor,
    /// The token's `jti`; for an external token without one, the SHA-256
    /// of the token (`sha256:HEX`).
    pub token_id: String,
    /// The external issuer that vouched for it; `None` for Custody's own.
    pub external_issuer: Option<String>,
    /// When it stops being accepted (its `exp`, plus the issuer's leeway),
    /// in seconds since the epoch.
    pub expires_at: i64,
}

impl Accepted {
    /// Whether a token accepted before is still accepted at `now` by
    /// `custody`'s revocations and its own expiry: what may change about a
    /// token once its signature and claims were checked. A holder of a
    /// verified token (the gateway, per session) asks this instead of
    /// verifying the signature again.
    pub fn recheck(&self, custody: &Issuer, now: DateTime<Utc>) -> Result<(), TokenError> {
        if now.timestamp() >= self.expires_at {
            return Err(TokenError::Expired);
        }
        custody.refuse_revoked(&self.chain)
    }
}

/// Verifies tokens of Custody's issuer and of the external issuers it
/// trusts, routed by the `iss` each claims. Revocations are Custody's
/// issuer's (they are saved with its keys) and refuse any token whose chain
/// passes through a revoked node, whoever issued it.
#[derive(Debug, Clone, Copy)]
pub struct Verifier<'a> {
    custody: &'a Issuer,
    trusted: &'a [Arc<ExternalIssuer>],
}

impl<'a> Verifier<'a> {
    /// A verifier of `custody`'s tokens and those of the `trusted`
    /// issuers.
    pub fn new(custody: &'a Issuer, trusted: &'a [Arc<ExternalIssuer>]) -> Verifier<'a> {
        Verifier { custody, trusted }
    }

    /// The trusted issuer whose `iss` is `issuer`.
    pub fn trusted(&self, issuer: &str) -> Option<&'a Arc<ExternalIssuer>> {
        self.trusted
            .iter()
            .find(|trusted| trusted.issuer() == issuer)
    }

    /// Verifies `token` at `now` with the issuer it names, or says why it
    /// is refused; an `iss` neither Custody's nor trusted is refused as
    /// such.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Accepted, TokenError> {
        let issuer = checks::claimed_issuer(token)?;
        if issuer == self.custody.issuer() {
            let claims = self.custody.verify(token, now)?;
            return Ok(Accepted {
                chain: claims.chain()?,
                expires_at: claims.exp,
                token_id: claims.jti,
                external_issuer: None,
            });
        }
        let external = self
            .trusted
            .iter()
            .find(|trusted| trusted.issuer() == issuer)
            .ok_or(TokenError::UnknownIssuer(issuer))?;
        let accepted = external.verify(token, now)?;
        self.custody.refuse_revoked(&accepted.chain)?;
        Ok(accepted)
    }
}
