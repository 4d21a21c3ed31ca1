//! Identity-layer responders: revoke a misbehaving agent's credentials and
//! sessions at their issuer.
//!
//! [`Responders`] is built from the `[responders]` section of the
//! configuration ([`Config`]) and runs one [`Revocation`] at a time
//! ([`Responders::run`]), returning a [`ResponseRecord`]: every request it
//! sent (method, URL, Custody's headers, body), with secrets replaced by
//! `[redacted]`, the attempts made, the last HTTP status and the
//! [`Outcome`]: done, already done, dry run, or failed with a reason that
//! names what failed and where (the HTTP status and the vendor's error
//! summary). `run` never panics and never returns an error: a responder
//! that is not configured gives a failed record saying so.
//!
//! # Common contract
//!
//! - **Dry run**: `run(.., dry_run: true)` builds the exact requests that
//!   would be sent and returns them with [`Outcome::DryRun`]; nothing is
//!   sent, not even a read. Where a later request depends on an earlier
//!   answer, the dry run says so in place of the value.
//! - **Idempotent**: running an action twice leaves the issuer as running
//!   it once. Where the issuer tells, a second run is
//!   [`Outcome::AlreadyDone`]; where its API is idempotent and does not
//!   tell, it is `Done` again (each responder below says which).
//! - **Retries** ([`RetryConfig`]): transport errors, 429 and 5xx are
//!   retried with exponential backoff (`initial_backoff_ms`, doubling, at
//!   most `max_backoff_ms`); a `Retry-After` (seconds or HTTP date), or
//!   Okta's `X-Rate-Limit-Reset`, replaces the backoff, and a server asking
//!   for longer than `max_backoff_ms` ends the retries. Attempts are
//!   bounded by `max_attempts` and their start by `max_elapsed_ms`; other
//!   4xx are not retried.
//! - **Secrets** (API tokens, client secrets, signing keys, AWS secret
//!   keys, and a credential being revoked) are held as [`Secret`], whose
//!   `Debug`, `Display` and `Serialize` print `[redacted]`. They come from
//!   the configuration or, by default, an environment variable
//!   (`CUSTODY_OKTA_TOKEN`, `CUSTODY_ENTRA_CLIENT_SECRET`,
//!   `CUSTODY_WEBHOOK_SECRET`, AWS's standard environment), and never reach
//!   a log line, an error or a record.
//!
//! # What every record MUST say
//!
//! Whatever the responder (and `tests/common/mod.rs::contract` checks it
//! for all of them): the responder, action and target; every request in
//! the order sent, each with its attempts and last status; `attempts` the
//! sum over the requests and `status` the last one received; in a dry run,
//! [`Outcome::DryRun`], no attempt and the requests that would be sent;
//! a failure's reason; and no secret anywhere: headers that carry one
//! show `[redacted]` in its place (`SSWS [redacted]`, `Bearer [redacted]`),
//! as do bodies (`client_secret=%5Bredacted%5D`,
//! `{"credentials":["[redacted]"]}`). The AWS responder records each IAM
//! call as the SDK sent it (URL and form body, which hold no secret) but
//! none of its headers, which carry the signature and any session token.
//!
//! # AWS IAM (`[responders.aws]`)
//!
//! Through the official AWS SDK for Rust (IAM's query API, SigV4-signed).
//! Region, endpoint and credentials come from the configuration, else the
//! standard AWS environment and credential chain; `endpoint_url` points it
//! at another endpoint (tests use moto).
//!
//! - [`Revocation::AwsDeactivateAccessKey`]: `UpdateAccessKey` with
//!   `Status=Inactive`. The key's user is found with
//!   `GetAccessKeyLastUsed` when not given; the key's status is read first
//!   with `ListAccessKeys`, and an inactive key is already done.
//! - [`Revocation::AwsRevokeRoleSessions`]: `PutRolePolicy` writes the
//!   inline policy `CustodyRevokeOlderSessions` on the role:
//!   `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":["*"],
//!   "Resource":["*"],"Condition":{"DateLessThan":{"aws:TokenIssueTime":
//!   "<now>"}}}]}`, what the console's "Revoke active sessions" does:
//!   sessions issued before now can do nothing, new ones are unaffected.
//!   A repeat rewrites the same policy with a later cutoff, and is done.
//!
//! # Okta (`[responders.okta]`)
//!
//! Requests carry `Authorization: SSWS <token>` and
//! `Accept: application/json`.
//!
//! - [`Revocation::OktaClearSessions`]:
//!   `DELETE {base_url}/api/v1/users/{user}/sessions?oauthTokens=true`
//!   (`false` when `revoke_oauth_tokens = false`); Okta answers 204 with
//!   or without sessions, so a repeat is done again.
//! - [`Revocation::OktaSuspend`]:
//!   `POST {base_url}/api/v1/users/{user}/lifecycle/suspend`. Okta
//!   suspends only ACTIVE users and answers others with 400; after a 400
//!   the user is read (`GET /api/v1/users/{user}`) and one whose `status`
//!   is `SUSPENDED` is already done.
//!
//! # GitHub (`[responders.github]`)
//!
//! - [`Revocation::GithubRevokeCredential`]:
//!   `POST {api_url}/credentials/revoke` with
//!   `{"credentials":["<the credential>"]}`,
//!   `Accept: application/vnd.github+json` and
//!   `X-GitHub-Api-Version: 2022-11-28`. On GitHub.com the call is made
//!   without authentication (GitHub answers an authenticated one with
//!   403); a `token`, for GitHub Enterprise Server, is sent as
//!   `Authorization: Bearer`. GitHub answers 202 for any credential and
//!   cannot reactivate one, so a repeat is done again. The record names
//!   the credential by [`fingerprint`] and shows its body as
//!   `{"credentials":["[redacted]"]}`.
//!
//! # Microsoft Entra (`[responders.entra]`)
//!
//! An app-only token from the client credentials grant:
//! `POST {login_url}/{tenant}/oauth2/v2.0/token`, form `client_id`,
//! `client_secret`, `scope=https://graph.microsoft.com/.default`,
//! `grant_type=client_credentials`; it is kept until two minutes before it
//! expires. Graph requests carry `Authorization: Bearer <token>`.
//!
//! - [`Revocation::EntraRevokeSessions`]:
//!   `POST {graph_url}/v1.0/users/{user}/revokeSignInSessions`, which
//!   resets the user's `signInSessionsValidFromDateTime` to now; a repeat
//!   is done again.
//! - [`Revocation::EntraDisableServicePrincipal`]:
//!   `GET {graph_url}/v1.0/servicePrincipals/{id}?$select=accountEnabled`;
//!   already `false` is already done; else
//!   `PATCH {graph_url}/v1.0/servicePrincipals/{id}` with
//!   `{"accountEnabled":false}`.
//!
//! # Webhooks (`[[responders.webhook]]`)
//!
//! [`Revocation::Webhook`] POSTs to the named webhook's `url` a JSON body
//! `{"delivery", "action", "target", "reason", "finding", "event", "run",
//! "time"}` (`time` in RFC 3339 UTC; `finding`, `event` and `run` may be
//! null) with these headers:
//!
//! - `Content-Type: application/json`
//! - `X-Custody-Timestamp: <Unix seconds>`
//! - `X-Custody-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`
//! - `X-Custody-Delivery: <delivery>`, the same for the same action on the
//!   same target, finding, event and run.
//!
//! To verify, a receiver takes the raw body bytes as received, computes
//! HMAC-SHA256 with the shared secret over the timestamp header, a `.`,
//! and the body; compares its lowercase hex with the signature after
//! `sha256=` in constant time; and refuses a timestamp more than a few
//! minutes from its clock (replays). A 2xx answer is done; 409 Conflict
//! tells Custody the receiver had already handled that delivery, reported
//! already done. Retries resend the same body and signature.
//!
//! # Configuration
//!
//! ```toml
//! [responders.retry]
//! max_attempts = 5
//! initial_backoff_ms = 500
//! max_backoff_ms = 10000
//! max_elapsed_ms = 60000
//! request_timeout_ms = 15000
//!
//! [responders.aws]
//! region = "us-east-1"               # else AWS_REGION / profile / us-east-1
//! # endpoint_url = "http://127.0.0.1:5000"
//! # access_key_id = "AKIA..."        # else the standard credential chain
//! # secret_access_key_env = "AWS_SECRET_ACCESS_KEY"
//!
//! [responders.okta]
//! base_url = "https://example.okta.com"
//! token_env = "CUSTODY_OKTA_TOKEN"   # or token = "..."
//! revoke_oauth_tokens = true
//!
//! [responders.github]
//! api_url = "https://api.github.com"
//!
//! [responders.entra]
//! tenant = "contoso.onmicrosoft.com"
//! client_id = "00000000-0000-0000-0000-000000000000"
//! client_secret_env = "CUSTODY_ENTRA_CLIENT_SECRET"
//! # login_url = "https://login.microsoftonline.com"
//! # graph_url = "https://graph.microsoft.com"
//!
//! [[responders.webhook]]
//! name = "soar"
//! url = "https://soar.example.com/hooks/custody"
//! secret_env = "CUSTODY_WEBHOOK_SECRET"
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod aws;
mod config;
mod entra;
mod error;
mod github;
mod http;
mod okta;
mod record;
mod retry;
mod secret;
mod webhook;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use serde::{Deserialize, Serialize};

pub use aws::{REVOKE_POLICY_NAME, revoke_policy};
pub use config::{AwsConfig, Config, EntraConfig, GithubConfig, OktaConfig, WebhookConfig};
pub use error::Error;
pub use github::fingerprint;
pub use record::{Outcome, ResponseRecord, SentRequest};
pub use retry::RetryConfig;
pub use secret::{REDACTED, Secret};
pub use webhook::sign;

/// One revocation a playbook asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Revocation {
    /// Set an IAM access key inactive; `user` is looked up when not given.
    AwsDeactivateAccessKey {
        access_key_id: String,
        #[serde(default)]
        user: Option<String>,
    },
    /// Deny everything to an IAM role's sessions issued before now.
    AwsRevokeRoleSessions { role: String },
    /// Clear an Okta user's sessions (and OAuth tokens).
    OktaClearSessions { user: String },
    /// Suspend an Okta user.
    OktaSuspend { user: String },
    /// Revoke an exposed GitHub token.
    GithubRevokeCredential { credential: Secret },
    /// Revoke an Entra user's sign-in sessions.
    EntraRevokeSessions { user: String },
    /// Disable an Entra service principal.
    EntraDisableServicePrincipal { id: String },
    /// Tell the named webhook to take `action` on `target`.
    Webhook {
        name: String,
        action: String,
        target: String,
    },
}

impl Revocation {
    /// The responder, action and target a record names.
    fn describe(&self) -> (&'static str, &'static str, String) {
        match self {
            Revocation::AwsDeactivateAccessKey { access_key_id, .. } => {
                ("aws", "aws.deactivate_access_key", access_key_id.clone())
            }
            Revocation::AwsRevokeRoleSessions { role } => {
                ("aws", "aws.revoke_role_sessions", role.clone())
            }
            Revocation::OktaClearSessions { user } => ("okta", "okta.clear_sessions", user.clone()),
            Revocation::OktaSuspend { user } => ("okta", "okta.suspend_user", user.clone()),
            Revocation::GithubRevokeCredential { credential } => (
                "github",
                "github.revoke_credential",
                fingerprint(credential),
            ),
            Revocation::EntraRevokeSessions { user } => {
                ("entra", "entra.revoke_sessions", user.clone())
            }
            Revocation::EntraDisableServicePrincipal { id } => {
                ("entra", "entra.disable_service_principal", id.clone())
            }
            Revocation::Webhook { target, .. } => ("webhook", "webhook", target.clone()),
        }
    }
}

/// Why a revocation runs: the reason and the ids that tie it to Custody's
/// finding, event and agent run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub reason: String,
    pub finding: Option<String>,
    pub event: Option<String>,
    pub run: Option<String>,
}

impl Context {
    /// A context with a reason and no ids.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            ..Self::default()
        }
    }
}

/// The HTTP client and retry policy every HTTP responder shares.
#[derive(Debug)]
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
    pub(crate) retry: RetryConfig,
}

/// The configured responders. Cheap to share (`Arc`) between tasks; `run`
/// takes `&self`.
#[derive(Debug)]
pub struct Responders {
    http: Http,
    aws: Option<aws::Aws>,
    okta: Option<okta::Okta>,
    github: Option<github::Github>,
    entra: Option<entra::Entra>,
    webhooks: HashMap<String, webhook::Webhook>,
}

impl Responders {
    /// Builds the responders `config` configures, reading secrets not given
    /// in it from the process environment.
    pub fn new(config: &Config) -> Result<Self, Error> {
        Self::with_env(config, &|name| std::env::var(name).ok())
    }

    /// As [`Responders::new`], reading environment variables through `env`.
    pub fn with_env(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("custody-respond/", env!("CARGO_PKG_VERSION")))
            .timeout(config.retry.request_timeout())
            .build()
            .map_err(Error::Client)?;
        let mut webhooks = HashMap::new();
        for hook in &config.webhook {
            let built = webhook::Webhook::new(hook, env)?;
            if webhooks.insert(built.name.clone(), built).is_some() {
                return Err(Error::DuplicateWebhook(hook.name.clone()));
            }
        }
        Ok(Self {
            http: Http {
                client,
                retry: config.retry.clone(),
            },
            aws: config
                .aws
                .as_ref()
                .map(|c| aws::Aws::new(c, env))
                .transpose()?,
            okta: config
                .okta
                .as_ref()
                .map(|c| okta::Okta::new(c, env))
                .transpose()?,
            github: config
                .github
                .as_ref()
                .map(|c| github::Github::new(c, env))
                .transpose()?,
            entra: config
                .entra
                .as_ref()
                .map(|c| entra::Entra::new(c, env))
                .transpose()?,
            webhooks,
        })
    }

    /// Runs one revocation (or, with `dry_run`, builds its requests without
    /// sending them) and returns its record.
    pub async fn run(&self, what: &Revocation, ctx: &Context, dry_run: bool) -> ResponseRecord {
        // A panic in a vendor's SDK must not take the playbook's task down
        // with it: it becomes a failed record like any other failure.
        let record = match AssertUnwindSafe(self.dispatch(what, ctx, dry_run))
            .catch_unwind()
            .await
        {
            Ok(record) => record,
            Err(_) => {
                let (responder, action, target) = what.describe();
                ResponseRecord::new(responder, action, &target, dry_run).failed(format!(
                    "the {responder} responder panicked; nothing is known to have been revoked"
                ))
            }
        };
        tracing::debug!(reason = %ctx.reason, finding = ?ctx.finding, event = ?ctx.event, "responded");
        record
    }

    async fn dispatch(&self, what: &Revocation, ctx: &Context, dry_run: bool) -> ResponseRecord {
        let retry = &self.http.retry;
        match what {
            Revocation::AwsDeactivateAccessKey {
                access_key_id,
                user,
            } => match &self.aws {
                Some(aws) => {
                    aws.deactivate_access_key(retry, access_key_id, user.as_deref(), dry_run)
                        .await
                }
                None => not_configured(what, dry_run),
            },
            Revocation::AwsRevokeRoleSessions { role } => match &self.aws {
                Some(aws) => aws.revoke_role_sessions(retry, role, dry_run).await,
                None => not_configured(what, dry_run),
            },
            Revocation::OktaClearSessions { user } => match &self.okta {
                Some(okta) => okta.clear_sessions(&self.http, user, dry_run).await,
                None => not_configured(what, dry_run),
            },
            Revocation::OktaSuspend { user } => match &self.okta {
                Some(okta) => okta.suspend(&self.http, user, dry_run).await,
                None => not_configured(what, dry_run),
            },
            Revocation::GithubRevokeCredential { credential } => match &self.github {
                Some(github) => github.revoke(&self.http, credential, dry_run).await,
                None => not_configured(what, dry_run),
            },
            Revocation::EntraRevokeSessions { user } => match &self.entra {
                Some(entra) => entra.revoke_sessions(&self.http, user, dry_run).await,
                None => not_configured(what, dry_run),
            },
            Revocation::EntraDisableServicePrincipal { id } => match &self.entra {
                Some(entra) => {
                    entra
                        .disable_service_principal(&self.http, id, dry_run)
                        .await
                }
                None => not_configured(what, dry_run),
            },
            Revocation::Webhook {
                name,
                action,
                target,
            } => match self.webhooks.get(name) {
                Some(hook) => hook.post(&self.http, action, target, ctx, dry_run).await,
                None => ResponseRecord::new(&format!("webhook:{name}"), action, target, dry_run)
                    .failed(format!("no webhook named `{name}` is configured")),
            },
        }
    }
}

fn not_configured(what: &Revocation, dry_run: bool) -> ResponseRecord {
    let (responder, action, target) = what.describe();
    ResponseRecord::new(responder, action, &target, dry_run)
        .failed(format!("the {responder} responder is not configured"))
}
