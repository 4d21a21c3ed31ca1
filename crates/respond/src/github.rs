//! GitHub: revoke an exposed credential through the REST API's "Revoke a
//! list of credentials" (`POST /credentials/revoke`).

use reqwest::{Method, Url};
use sha2::{Digest, Sha256};

use crate::Http;
use crate::config::{self, Env, GithubConfig};
use crate::error::Error;
use crate::http::{self, Prepared, Response};
use crate::record::{Outcome, ResponseRecord};
use crate::secret::{REDACTED, Secret};

#[derive(Debug)]
pub(crate) struct Github {
    api: Url,
    token: Option<Secret>,
}

impl Github {
    pub(crate) fn new(config: &GithubConfig, env: Env<'_>) -> Result<Self, Error> {
        let token = match (&config.token, &config.token_env) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(var)) => Some(config::resolve(None, var, "GitHub token", env)?),
            (None, None) => None,
        };
        Ok(Self {
            api: config::parse_url(&config.api_url, "responders.github.api_url")?,
            token,
        })
    }

    /// Sends `{"credentials": [credential]}`. GitHub answers 202 Accepted
    /// whether or not the credential was still valid (and cannot
    /// reactivate one), so a repeat is harmless and reported done.
    pub(crate) async fn revoke(
        &self,
        http: &Http,
        credential: &Secret,
        dry_run: bool,
    ) -> ResponseRecord {
        let target = fingerprint(credential);
        let mut record =
            ResponseRecord::new("github", "github.revoke_credential", &target, dry_run);
        let body = serde_json::json!({ "credentials": [credential.expose()] });
        let shown = serde_json::json!({ "credentials": [REDACTED] });
        let mut request = Prepared::new(Method::POST, http::join(&self.api, "/credentials/revoke"))
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(token) = &self.token {
            request = request.secret_header("Authorization", "Bearer ", token);
        }
        let request = request.body(
            "application/json",
            Secret::new(body.to_string()),
            shown.to_string(),
        );
        if dry_run {
            record.push(request.unsent());
            return record.finish(Outcome::DryRun, "would ask GitHub to revoke the credential");
        }
        let exchange = request.send(&http.client, &http.retry).await;
        record.push(exchange.record);
        match exchange.result {
            Ok(response) if response.success() => record.finish(
                Outcome::Done,
                "GitHub accepted the credential for revocation",
            ),
            // GitHub's answer is not expected to echo the credential, but
            // the record must not hold it even if it does.
            Ok(response) => record.failed(scrub(failure(&response), credential)),
            Err(why) => record.failed(scrub(
                format!("github: revoking the credential: {why}"),
                credential,
            )),
        }
    }
}

/// Names a credential without revealing it: its type prefix (`ghp`,
/// `github_pat`, ...) and the first 12 hex digits of its SHA-256.
pub fn fingerprint(credential: &Secret) -> String {
    let value = credential.expose();
    let kind = if value.starts_with("github_pat_") {
        "github_pat"
    } else {
        value
            .find('_')
            .filter(|&end| end <= 4)
            .and_then(|end| value.get(..end))
            .filter(|p| p.bytes().all(|b| b.is_ascii_alphanumeric()))
            .unwrap_or("credential")
    };
    let digest = hex::encode(Sha256::digest(value.as_bytes()));
    format!("{kind} sha256:{}", digest.get(..12).unwrap_or(&digest))
}

fn scrub(text: String, credential: &Secret) -> String {
    if credential.expose().is_empty() {
        return text;
    }
    text.replace(credential.expose(), REDACTED)
}

fn failure(response: &Response) -> String {
    let message = response.json().and_then(|e| {
        let message = e.get("message")?.as_str()?.to_owned();
        let errors = e
            .get("errors")
            .map(|errors| format!(" {errors}"))
            .unwrap_or_default();
        Some(format!("{message}{errors}"))
    });
    format!(
        "github: revoking the credential: HTTP {}: {}",
        response.status,
        message.unwrap_or_else(|| http::truncate(response.body.clone()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_keep_the_type_and_hide_the_value() {
        let print = fingerprint(&Secret::new("ghp_abcdefghijklmnopqrstuvwxyz0123456789"));
        assert!(print.starts_with("ghp sha256:"), "{print}");
        assert!(!print.contains("abcdef"));
        let print = fingerprint(&Secret::new("github_pat_11ABCDEFG_xyz"));
        assert!(print.starts_with("github_pat sha256:"), "{print}");
        let print = fingerprint(&Secret::new("opaque"));
        assert!(print.starts_with("credential sha256:"), "{print}");
    }
}
