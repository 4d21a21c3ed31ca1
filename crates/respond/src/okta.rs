//! Okta: clear a user's sessions and suspend a user, through the Users API
//! with an SSWS API token.

use reqwest::{Method, Url};

use crate::Http;
use crate::config::{self, Env, OktaConfig};
use crate::error::Error;
use crate::http::{self, Prepared, Response};
use crate::record::{Outcome, ResponseRecord};
use crate::secret::Secret;

#[derive(Debug)]
pub(crate) struct Okta {
    base: Url,
    token: Secret,
    revoke_oauth_tokens: bool,
}

impl Okta {
    pub(crate) fn new(config: &OktaConfig, env: Env<'_>) -> Result<Self, Error> {
        Ok(Self {
            base: config::parse_url(&config.base_url, "responders.okta.base_url")?,
            token: config::resolve(
                config.token.as_ref(),
                &config.token_env,
                "Okta API token",
                env,
            )?,
            revoke_oauth_tokens: config.revoke_oauth_tokens,
        })
    }

    fn request(&self, method: Method, path: &str) -> Prepared {
        Prepared::new(method, http::join(&self.base, path))
            .secret_header("Authorization", "SSWS ", &self.token)
            .header("Accept", "application/json")
    }

    /// `DELETE /api/v1/users/{id}/sessions?oauthTokens=...`: 204 whether or
    /// not the user had sessions, so a repeat is harmless and reported done.
    pub(crate) async fn clear_sessions(
        &self,
        http: &Http,
        user: &str,
        dry_run: bool,
    ) -> ResponseRecord {
        let mut record = ResponseRecord::new("okta", "okta.clear_sessions", user, dry_run);
        let mut request = self.request(
            Method::DELETE,
            &format!("/api/v1/users/{}/sessions", http::segment(user)),
        );
        request.url.query_pairs_mut().append_pair(
            "oauthTokens",
            if self.revoke_oauth_tokens {
                "true"
            } else {
                "false"
            },
        );
        if dry_run {
            record.push(request.unsent());
            return record.finish(Outcome::DryRun, "would clear the user's Okta sessions");
        }
        let exchange = request.send(&http.client, &http.retry).await;
        record.push(exchange.record);
        match exchange.result {
            Ok(response) if response.success() => record.finish(
                Outcome::Done,
                if self.revoke_oauth_tokens {
                    "cleared the user's Okta sessions and revoked their OAuth tokens"
                } else {
                    "cleared the user's Okta sessions"
                },
            ),
            Ok(response) => record.failed(failure("clearing sessions", &response)),
            Err(why) => record.failed(format!("okta: clearing sessions: {why}")),
        }
    }

    /// `POST /api/v1/users/{id}/lifecycle/suspend`. Okta suspends only
    /// ACTIVE users and answers 400 otherwise; on a 400 the user is read
    /// back (`GET /api/v1/users/{id}`) and one already SUSPENDED is
    /// reported already done.
    pub(crate) async fn suspend(&self, http: &Http, user: &str, dry_run: bool) -> ResponseRecord {
        let mut record = ResponseRecord::new("okta", "okta.suspend_user", user, dry_run);
        let path = format!("/api/v1/users/{}", http::segment(user));
        let request = self.request(Method::POST, &format!("{path}/lifecycle/suspend"));
        if dry_run {
            record.push(request.unsent());
            return record.finish(Outcome::DryRun, "would suspend the Okta user");
        }
        let exchange = request.send(&http.client, &http.retry).await;
        record.push(exchange.record);
        let response = match exchange.result {
            Ok(response) if response.success() => {
                return record.finish(Outcome::Done, "suspended the Okta user");
            }
            Ok(response) => response,
            Err(why) => return record.failed(format!("okta: suspending the user: {why}")),
        };
        if response.status != 400 {
            return record.failed(failure("suspending the user", &response));
        }
        let read = self
            .request(Method::GET, &path)
            .send(&http.client, &http.retry)
            .await;
        record.push(read.record);
        let status = match &read.result {
            Ok(user) if user.success() => user
                .json()
                .and_then(|u| u.get("status")?.as_str().map(str::to_owned)),
            _ => None,
        };
        match status.as_deref() {
            Some("SUSPENDED") => {
                record.finish(Outcome::AlreadyDone, "the Okta user was already suspended")
            }
            Some(other) => record.failed(format!(
                "{}; the user's status is {other}",
                failure("suspending the user", &response)
            )),
            None => record.failed(failure("suspending the user", &response)),
        }
    }
}

/// "okta: suspending the user: HTTP 404: Not found: Resource not found: x
/// (E0000007)", from Okta's error object when it sent one.
fn failure(doing: &str, response: &Response) -> String {
    let summary = response.json().and_then(|error| {
        let summary = error.get("errorSummary")?.as_str()?.to_owned();
        let causes: Vec<&str> = error
            .get("errorCauses")
            .and_then(|c| c.as_array())
            .map(|causes| {
                causes
                    .iter()
                    .filter_map(|c| c.get("errorSummary")?.as_str())
                    .collect()
            })
            .unwrap_or_default();
        let code = error
            .get("errorCode")
            .and_then(|c| c.as_str())
            .unwrap_or("");
        let mut text = summary;
        if !causes.is_empty() {
            text = format!("{text}: {}", causes.join("; "));
        }
        if !code.is_empty() {
            text = format!("{text} ({code})");
        }
        Some(text)
    });
    let detail = summary.unwrap_or_else(|| http::truncate(response.body.clone()));
    format!("okta: {doing}: HTTP {}: {detail}", response.status)
}
