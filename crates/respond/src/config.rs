//! The `[responders]` section of Custody's configuration, and where each
//! secret comes from: the file itself or, by default, an environment
//! variable.

use serde::Deserialize;

use crate::error::Error;
use crate::retry::RetryConfig;
use crate::secret::Secret;

/// The `[responders]` section. Every responder is optional; one that is not
/// configured answers each of its actions with a failed record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub retry: RetryConfig,
    pub aws: Option<AwsConfig>,
    pub okta: Option<OktaConfig>,
    pub github: Option<GithubConfig>,
    pub entra: Option<EntraConfig>,
    pub webhook: Vec<WebhookConfig>,
}

/// `[responders.aws]`. Anything left out comes from the standard AWS
/// environment (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, web
/// identity, container and instance credentials, ...).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// The region to sign for; IAM is global, so `us-east-1` when unset
    /// and the environment names none.
    pub region: Option<String>,
    /// Another IAM endpoint (a test double such as moto, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// Static credentials; both or neither.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// An environment variable holding the secret access key, read when
    /// `access_key_id` is set and `secret_access_key` is not.
    pub secret_access_key_env: Option<String>,
    /// The policy name `aws.revoke_role_sessions` writes.
    pub revoke_policy_name: Option<String>,
}

/// `[responders.okta]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OktaConfig {
    /// The org URL, e.g. `https://example.okta.com`.
    pub base_url: String,
    /// The API token; else the variable `token_env` names.
    pub token: Option<Secret>,
    #[serde(default = "okta_token_env")]
    pub token_env: String,
    /// Whether clearing sessions also revokes the user's OAuth tokens.
    #[serde(default = "yes")]
    pub revoke_oauth_tokens: bool,
}

/// `[responders.github]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub
    /// Enterprise Server.
    #[serde(default = "github_api_url")]
    pub api_url: String,
    /// Sent as `Authorization: Bearer` only when set. GitHub.com answers an
    /// authenticated call to this endpoint with 403, so leave it unset
    /// there; GitHub Enterprise Server takes an authenticated one.
    pub token: Option<Secret>,
    /// A variable to read the token from, when `token` is unset.
    pub token_env: Option<String>,
}

/// `[responders.entra]`: an app registration allowed
/// `User.RevokeSessions.All` and `Application.ReadWrite.All`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// The tenant id or domain.
    pub tenant: String,
    pub client_id: String,
    /// The client secret; else the variable `client_secret_env` names.
    pub client_secret: Option<Secret>,
    #[serde(default = "entra_secret_env")]
    pub client_secret_env: String,
    #[serde(default = "entra_login_url")]
    pub login_url: String,
    #[serde(default = "entra_graph_url")]
    pub graph_url: String,
}

/// One `[[responders.webhook]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The name actions refer to it by.
    pub name: String,
    pub url: String,
    /// The HMAC key; else the variable `secret_env` names.
    pub secret: Option<Secret>,
    #[serde(default = "webhook_secret_env")]
    pub secret_env: String,
}

fn okta_token_env() -> String {
    "CUSTODY_OKTA_TOKEN".to_owned()
}
fn entra_secret_env() -> String {
    "CUSTODY_ENTRA_CLIENT_SECRET".to_owned()
}
fn webhook_secret_env() -> String {
    "CUSTODY_WEBHOOK_SECRET".to_owned()
}
fn github_api_url() -> String {
    "https://api.github.com".to_owned()
}
fn entra_login_url() -> String {
    "https://login.microsoftonline.com".to_owned()
}
fn entra_graph_url() -> String {
    "https://graph.microsoft.com".to_owned()
}
fn yes() -> bool {
    true
}

/// Where to read environment variables: the process, or a test's map.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The secret given in the file, else the one in the variable `var`.
pub(crate) fn resolve(
    given: Option<&Secret>,
    var: &str,
    what: &'static str,
    env: Env<'_>,
) -> Result<Secret, Error> {
    if let Some(secret) = given {
        return Ok(secret.clone());
    }
    match env(var) {
        Some(value) if !value.is_empty() => Ok(Secret::new(value)),
        _ => Err(Error::MissingSecret {
            what,
            var: var.to_owned(),
        }),
    }
}

pub(crate) fn parse_url(text: &str, field: &'static str) -> Result<reqwest::Url, Error> {
    let url = reqwest::Url::parse(text).map_err(|source| Error::Url {
        field,
        url: text.to_owned(),
        source,
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Scheme {
            field,
            url: text.to_owned(),
        });
    }
    Ok(url)
}
