//! Who acted: a CloudTrail `userIdentity` as the event's current actor and
//! credential, and the attributes attribution reads.
//!
//! | `userIdentity.type` | `actor.current` | `actor.credential` |
//! | --- | --- | --- |
//! | `Root` | `human`, the account root's ARN | `aws_access_key` when a key was used |
//! | `IAMUser` | `human`, the user's ARN | `aws_access_key` when a key was used |
//! | `AssumedRole` | `role`, the assumed-role session ARN, named after the session | `aws_role_session`, the session ARN |
//! | `FederatedUser` | `human`, the federated user's ARN | `aws_access_key` |
//! | `IdentityCenterUser`, `SAMLUser`, `WebIdentityUser` | `human`, the user's id at its identity provider | none |
//! | `AWSService` | `service`, the service (`invokedBy`) | none |
//! | `AWSAccount`, `Unknown`, absent | `unknown`, whatever id the record gives | none |
//!
//! An IAM user may be a person or a workload, and CloudTrail does not say
//! which. It is reported as `human`: workloads are meant to run as roles
//! (AWS's own guidance, and what `AssumedRole` records show), so a
//! long-lived IAM user is more often a person; a deployment that knows a
//! user is a workload says so by declaring a binding for its key, which puts
//! the key's records under the workload's chain.
//!
//! A temporary key (`ASIA...`) identifies one STS session, so it is also the
//! event's `context.session_id`: records of one session correlate even when
//! their session name is reused.

use custody_event::{Actor, Credential, CredentialKind, MAX_ID_LEN, PrincipalKind};
use custody_graph::{ATTR_AWS_ACCESS_KEY, ATTR_AWS_ROLE_SESSION, ATTR_AWS_SOURCE_IDENTITY};
use serde_json::Value;

use crate::Fields;
use crate::fields::{actor, clip};

/// The actor of a record, and what else its identity says.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) actor: Actor,
    pub(crate) session_id: Option<String>,
    pub(crate) attributes: Vec<(&'static str, Value)>,
}

/// The identity of `record`'s `userIdentity`.
pub(crate) fn identity(record: Fields<'_>) -> Identity {
    let Some(user) = record.object("userIdentity") else {
        let account = record.str("recipientAccountId");
        return Identity {
            actor: actor(
                unknown_id(None, account),
                PrincipalKind::Unknown,
                None,
                None,
            ),
            session_id: None,
            attributes: Vec::new(),
        };
    };
    let kind = user.str("type").unwrap_or("Unknown");
    let arn = user.str("arn");
    let account = user.str("accountId").or(record.str("recipientAccountId"));
    let key = user.str("accessKeyId");
    let mut attributes: Vec<(&'static str, Value)> = vec![("aws.identity_type", kind.into())];
    let mut text = |name: &'static str, path: &str| {
        if let Some(value) = user.str(path) {
            attributes.push((name, value.into()));
        }
    };
    text("aws.principal_id", "principalId");
    text("aws.account_id", "accountId");
    text("aws.user_name", "userName");
    text("aws.invoked_by", "invokedBy");
    text("aws.on_behalf_of", "onBehalfOf.userId");
    text("aws.identity_store", "onBehalfOf.identityStoreArn");
    text("aws.identity_provider", "identityProvider");
    text("aws.session_issuer", "sessionContext.sessionIssuer.arn");
    text(
        "aws.session_created",
        "sessionContext.attributes.creationDate",
    );
    text(ATTR_AWS_SOURCE_IDENTITY, "sessionContext.sourceIdentity");
    text(ATTR_AWS_ACCESS_KEY, "accessKeyId");
    if let Some(mfa) = user.bool("sessionContext.attributes.mfaAuthenticated") {
        attributes.push(("aws.mfa_authenticated", mfa.into()));
    }
    let issuer = account.map(|account| format!("aws:{account}"));
    let with_key = |kind| {
        key.map(|key| Credential {
            kind,
            id: clip(key, MAX_ID_LEN),
            issuer: issuer.clone(),
        })
    };
    let user_name = user.str("userName");
    let actor = match kind {
        "Root" => {
            let id = arn
                .map(str::to_owned)
                .or_else(|| account.map(|a| format!("arn:aws:iam::{a}:root")));
            let id = id.unwrap_or_else(|| unknown_id(user_name, account));
            actor(
                id,
                PrincipalKind::Human,
                Some("root"),
                with_key(CredentialKind::AwsAccessKey),
            )
        }
        "IAMUser" | "FederatedUser" => {
            let id = arn.map(str::to_owned).or_else(|| {
                let (account, name) = (account?, user_name?);
                Some(format!("arn:aws:iam::{account}:user/{name}"))
            });
            let name = user_name.or_else(|| arn.and_then(last_segment));
            let id = id.unwrap_or_else(|| unknown_id(user.str("principalId"), account));
            actor(
                id,
                PrincipalKind::Human,
                name,
                with_key(CredentialKind::AwsAccessKey),
            )
        }
        "AssumedRole" => {
            let session = arn
                .and_then(last_segment)
                .or_else(|| user.str("principalId")?.split_once(':').map(|(_, s)| s));
            if let Some(session) = session {
                attributes.push((ATTR_AWS_ROLE_SESSION, session.into()));
            }
            let credential =
                arn.filter(|arn| arn.contains(":assumed-role/"))
                    .map(|arn| Credential {
                        kind: CredentialKind::AwsRoleSession,
                        id: clip(arn, MAX_ID_LEN),
                        issuer: issuer.clone(),
                    });
            let id = arn
                .or(user.str("principalId"))
                .map_or_else(|| unknown_id(None, account), str::to_owned);
            actor(id, PrincipalKind::Role, session, credential)
        }
        "IdentityCenterUser" | "SAMLUser" | "WebIdentityUser" => {
            let id = user
                .str("onBehalfOf.userId")
                .or(user_name)
                .or(user.str("principalId"))
                .or(arn)
                .map_or_else(|| unknown_id(None, account), str::to_owned);
            actor(id, PrincipalKind::Human, user_name, None)
        }
        "AWSService" => {
            let id = user
                .str("invokedBy")
                .or(record
                    .str("sourceIPAddress")
                    .filter(|s| s.ends_with(".amazonaws.com")))
                .unwrap_or("aws-service");
            actor(id.to_owned(), PrincipalKind::Service, None, None)
        }
        _ => {
            let id = arn
                .or(user.str("principalId"))
                .map_or_else(|| unknown_id(user_name, account), str::to_owned);
            actor(id, PrincipalKind::Unknown, user_name, None)
        }
    };
    Identity {
        actor,
        session_id: key
            .filter(|key| key.starts_with("ASIA"))
            .map(|key| clip(key, MAX_ID_LEN)),
        attributes,
    }
}

/// The last `/` segment of an ARN: a user's, role's or session's name.
pub(crate) fn last_segment(arn: &str) -> Option<&str> {
    arn.rsplit_once('/')
        .map(|(_, last)| last)
        .filter(|last| !last.is_empty())
}

/// The id of an identity the record does not name.
fn unknown_id(name: Option<&str>, account: Option<&str>) -> String {
    match (name, account) {
        (Some(name), Some(account)) => format!("aws:{account}:{name}"),
        (Some(name), None) => name.to_owned(),
        (None, Some(account)) => format!("aws:{account}:unknown"),
        (None, None) => "aws:unknown".to_owned(),
    }
}
