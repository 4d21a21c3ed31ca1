//! Who acted in an Okta event, with what, and the keys attribution reads.
//!
//! | `actor.type` | `actor.current` |
//! | --- | --- |
//! | `User` | `human`: `alternateId` (the login, an email), named `displayName` |
//! | `PublicClientApp`, `SystemPrincipal`, `App`, `AppInstance`, `Client` | `service`: `id`, else `alternateId`, named `displayName` |
//! | anything else, absent | `unknown`: `alternateId` or `id`, else `okta:unknown` |
//!
//! The credential is the OAuth token the event names
//! (`debugContext.debugData.tokenId`, `oauth_token`), else the Okta session
//! (`authenticationContext.externalSessionId`, `okta_session`). The OAuth
//! client (`client.id`, else `debugData.clientId`, else an app actor's id)
//! is the attribute `oauth.client_id`, the token the attribute
//! `oauth.token_id`: the binding keys attribution reads.

use custody_event::{Actor, Credential, CredentialKind, MAX_ID_LEN, PrincipalKind};
use custody_graph::{ATTR_OAUTH_CLIENT, ATTR_OAUTH_TOKEN};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::Fields;
use crate::fields::{actor, clip, put_text};

/// The actor of `record`, issued by `issuer` (`okta:{host}`), adding the
/// binding keys to `attributes`.
pub(crate) fn actor_of(
    record: Fields<'_>,
    issuer: &str,
    attributes: &mut BTreeMap<String, Value>,
) -> Actor {
    let who = record.object("actor");
    let field = |key: &str| who.and_then(|who| who.str(key));
    let kind = field("type").unwrap_or_default();
    let (alternate, id, name) = (
        field("alternateId").filter(|id| *id != "unknown"),
        field("id"),
        field("displayName").filter(|name| *name != "unknown"),
    );
    put_text(attributes, "okta.actor_id", id);
    put_text(attributes, "okta.actor_type", field("type"));
    let debug = |key: &str| record.str(&format!("debugContext.debugData.{key}"));
    let is_app = matches!(
        kind,
        "PublicClientApp" | "SystemPrincipal" | "App" | "AppInstance" | "Client"
    );
    let client = record
        .str("client.id")
        .or_else(|| debug("clientId"))
        .or_else(|| if kind == "PublicClientApp" { id } else { None });
    put_text(attributes, ATTR_OAUTH_CLIENT, client);
    let token = debug("tokenId").or_else(|| debug("accessTokenId"));
    put_text(attributes, ATTR_OAUTH_TOKEN, token);
    let session = session_id(record);
    let credential = match (token, session) {
        (Some(token), _) => Some((CredentialKind::OauthToken, token)),
        (None, Some(session)) => Some((CredentialKind::OktaSession, session)),
        (None, None) => None,
    }
    .map(|(kind, id)| Credential {
        kind,
        id: clip(id, MAX_ID_LEN),
        issuer: Some(issuer.to_owned()),
    });
    let (kind, id) = if kind == "User" {
        (PrincipalKind::Human, alternate.or(id))
    } else if is_app {
        (PrincipalKind::Service, id.or(alternate))
    } else {
        (PrincipalKind::Unknown, alternate.or(id))
    };
    match id {
        Some(id) => actor(id.to_owned(), kind, name, credential),
        None => actor(
            "okta:unknown".to_owned(),
            PrincipalKind::Unknown,
            name,
            credential,
        ),
    }
}

/// The Okta session the event happened in, unless Okta says it is unknown.
pub(crate) fn session_id<'r>(record: Fields<'r>) -> Option<&'r str> {
    record
        .str("authenticationContext.externalSessionId")
        .filter(|id| *id != "unknown")
}
