//! Microsoft Entra, through Microsoft Graph: revoke a user's sign-in
//! sessions and disable a service principal, with an app-only token from
//! the client credentials grant.

use std::time::{Duration, Instant};

use reqwest::{Method, Url};
use tokio::sync::Mutex;

use crate::Http;
use crate::config::{self, EntraConfig, Env};
use crate::error::Error;
use crate::http::{self, Prepared, Response};
use crate::record::{Outcome, ResponseRecord};
use crate::secret::{REDACTED, Secret};

/// A token is renewed this long before Entra says it expires.
const EARLY: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub(crate) struct Entra {
    token_url: Url,
    graph: Url,
    client_id: String,
    client_secret: Secret,
    token: Mutex<Option<(Secret, Instant)>>,
}

impl Entra {
    pub(crate) fn new(config: &EntraConfig, env: Env<'_>) -> Result<Self, Error> {
        let login = config::parse_url(&config.login_url, "responders.entra.login_url")?;
        Ok(Self {
            token_url: http::join(
                &login,
                &format!("/{}/oauth2/v2.0/token", http::segment(&config.tenant)),
            ),
            graph: config::parse_url(&config.graph_url, "responders.entra.graph_url")?,
            client_id: config.client_id.clone(),
            client_secret: config::resolve(
                config.client_secret.as_ref(),
                &config.client_secret_env,
                "Entra client secret",
                env,
            )?,
            token: Mutex::new(None),
        })
    }

    /// `POST {login}/{tenant}/oauth2/v2.0/token`, form-encoded.
    fn token_request(&self) -> Prepared {
        let form = |secret: &str| {
            let mut url = Url::parse("http://form/").unwrap_or_else(|_| self.token_url.clone());
            url.query_pairs_mut()
                .append_pair("client_id", &self.client_id)
                .append_pair("client_secret", secret)
                .append_pair("scope", "https://graph.microsoft.com/.default")
                .append_pair("grant_type", "client_credentials");
            url.query().unwrap_or_default().to_owned()
        };
        Prepared::new(Method::POST, self.token_url.clone())
            .header("Accept", "application/json")
            .body(
                "application/x-www-form-urlencoded",
                Secret::new(form(self.client_secret.expose())),
                form(REDACTED),
            )
    }

    /// A valid app-only token, cached until shortly before it expires.
    async fn token(&self, http: &Http, record: &mut ResponseRecord) -> Result<Secret, String> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let exchange = self.token_request().send(&http.client, &http.retry).await;
        record.push(exchange.record);
        let response = exchange
            .result
            .map_err(|why| format!("entra: getting a token: {why}"))?;
        let body = response.json();
        let token = body
            .as_ref()
            .filter(|_| response.success())
            .and_then(|b| b.get("access_token")?.as_str().map(Secret::new));
        let Some(token) = token else {
            let why = body
                .as_ref()
                .and_then(|b| {
                    let error = b.get("error")?.as_str()?;
                    let description = b
                        .get("error_description")
                        .and_then(|d| d.as_str())
                        .unwrap_or("");
                    Some(format!("{error}: {description}"))
                })
                .unwrap_or_else(|| http::truncate(response.body.clone()));
            return Err(format!(
                "entra: getting a token: HTTP {}: {}",
                response.status,
                why.trim_end_matches([' ', ':'])
            ));
        };
        let lifetime = body
            .as_ref()
            .and_then(|b| b.get("expires_in")?.as_u64())
            .map_or(Duration::ZERO, Duration::from_secs);
        *cached = Some((
            token.clone(),
            Instant::now() + lifetime.saturating_sub(EARLY),
        ));
        Ok(token)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    fn graph_request(&self, method: Method, path: &str, token: &Secret) -> Prepared {
        Prepared::new(method, http::join(&self.graph, path))
            .secret_header("Authorization", "Bearer ", token)
            .header("Accept", "application/json")
    }

    /// `POST /v1.0/users/{id}/revokeSignInSessions`. Graph resets the
    /// user's `signInSessionsValidFromDateTime` to now each time, so a
    /// repeat is harmless and reported done.
    pub(crate) async fn revoke_sessions(
        &self,
        http: &Http,
        user: &str,
        dry_run: bool,
    ) -> ResponseRecord {
        let mut record = ResponseRecord::new("entra", "entra.revoke_sessions", user, dry_run);
        let path = format!("/v1.0/users/{}/revokeSignInSessions", http::segment(user));
        if dry_run {
            record.push(self.token_request().unsent());
            record.push(
                self.graph_request(Method::POST, &path, &Secret::new(""))
                    .unsent(),
            );
            return record.finish(
                Outcome::DryRun,
                "would revoke the user's Entra sign-in sessions",
            );
        }
        let token = match self.token(http, &mut record).await {
            Ok(token) => token,
            Err(why) => return record.failed(why),
        };
        let exchange = self
            .graph_request(Method::POST, &path, &token)
            .send(&http.client, &http.retry)
            .await;
        record.push(exchange.record);
        match exchange.result {
            Ok(response) if response.success() => {
                record.finish(Outcome::Done, "revoked the user's Entra sign-in sessions")
            }
            Ok(response) => {
                self.forget_if_unauthorized(&response).await;
                record.failed(failure("revoking sign-in sessions", &response))
            }
            Err(why) => record.failed(format!("entra: revoking sign-in sessions: {why}")),
        }
    }

    /// Reads `accountEnabled` (`GET /v1.0/servicePrincipals/{id}
    /// ?$select=accountEnabled`): already false is already done; else
    /// `PATCH /v1.0/servicePrincipals/{id}` with `{"accountEnabled": false}`.
    pub(crate) async fn disable_service_principal(
        &self,
        http: &Http,
        id: &str,
        dry_run: bool,
    ) -> ResponseRecord {
        let mut record =
            ResponseRecord::new("entra", "entra.disable_service_principal", id, dry_run);
        let path = format!("/v1.0/servicePrincipals/{}", http::segment(id));
        let read = |token: &Secret| {
            let mut request = self.graph_request(Method::GET, &path, token);
            request
                .url
                .query_pairs_mut()
                .append_pair("$select", "accountEnabled");
            request
        };
        let patch = |token: &Secret| {
            self.graph_request(Method::PATCH, &path, token)
                .json(&serde_json::json!({ "accountEnabled": false }))
        };
        if dry_run {
            let placeholder = Secret::new("");
            record.push(self.token_request().unsent());
            record.push(read(&placeholder).unsent());
            record.push(patch(&placeholder).unsent());
            return record.finish(
                Outcome::DryRun,
                "would disable the Entra service principal unless it already is",
            );
        }
        let token = match self.token(http, &mut record).await {
            Ok(token) => token,
            Err(why) => return record.failed(why),
        };
        let exchange = read(&token).send(&http.client, &http.retry).await;
        record.push(exchange.record);
        match exchange.result {
            Ok(response) if response.success() => {
                let enabled = response
                    .json()
                    .and_then(|sp| sp.get("accountEnabled")?.as_bool());
                if enabled == Some(false) {
                    return record.finish(
                        Outcome::AlreadyDone,
                        "the Entra service principal was already disabled",
                    );
                }
            }
            Ok(response) => {
                self.forget_if_unauthorized(&response).await;
                return record.failed(failure("reading the service principal", &response));
            }
            Err(why) => {
                return record.failed(format!("entra: reading the service principal: {why}"));
            }
        }
        let exchange = patch(&token).send(&http.client, &http.retry).await;
        record.push(exchange.record);
        match exchange.result {
            Ok(response) if response.success() => {
                record.finish(Outcome::Done, "disabled the Entra service principal")
            }
            Ok(response) => {
                self.forget_if_unauthorized(&response).await;
                record.failed(failure("disabling the service principal", &response))
            }
            Err(why) => record.failed(format!("entra: disabling the service principal: {why}")),
        }
    }

    async fn forget_if_unauthorized(&self, response: &Response) {
        if response.status == 401 {
            self.forget_token().await;
        }
    }
}

/// "entra: ...: HTTP 404: Request_ResourceNotFound: Resource 'x' does not
/// exist ...", from Graph's error object when it sent one.
fn failure(doing: &str, response: &Response) -> String {
    let summary = response.json().and_then(|body| {
        let error = body.get("error")?;
        let code = error.get("code")?.as_str()?;
        let message = error.get("message").and_then(|m| m.as_str()).unwrap_or("");
        Some(format!("{code}: {message}"))
    });
    format!(
        "entra: {doing}: HTTP {}: {}",
        response.status,
        summary.unwrap_or_else(|| http::truncate(response.body.clone()))
    )
}
