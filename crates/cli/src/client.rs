//! A client of a running server's API, for the `ingest`, `events` and `tail`
//! commands.

use anyhow::Context as _;
use reqwest::{StatusCode, header};

use crate::ServerArgs;
use crate::serve::ADMIN_TOKEN_FILE;

/// A server and the token to call it with.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An answer the server gave with an error status.
#[derive(Debug)]
pub struct Refusal {
    /// The status.
    pub status: StatusCode,
    /// Seconds the server asked to wait, for 429.
    pub retry_after: Option<u64>,
    /// The body, as JSON when it is.
    pub body: serde_json::Value,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.body.pointer("/error/message").and_then(|m| m.as_str());
        match message {
            Some(message) => write!(f, "the server answered {}: {message}", self.status),
            None => write!(f, "the server answered {}", self.status),
        }
    }
}

impl Client {
    /// A client for the server `args` name, with the token they give or, by
    /// default, the admin token from the data directory.
    pub fn new(args: &ServerArgs) -> anyhow::Result<Client> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let path = args.data_dir.join(ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no token given (--token or CUSTODY_TOKEN) and `{}` is not readable",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("custody/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            http,
            base: args.server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// GETs `path` with `query` and returns the JSON answer.
    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query)
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.base))?;
        Ok(answer(response).await?)
    }

    /// POSTs `body` as JSON to `path` and returns the JSON answer.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.base))?;
        Ok(answer(response).await?)
    }

    /// DELETEs `path` and returns the JSON answer.
    pub async fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.base))?;
        Ok(answer(response).await?)
    }

    /// POSTs an NDJSON body of events; `Err` carries the server's refusal.
    pub async fn post_events(
        &self,
        ndjson: Vec<u8>,
    ) -> anyhow::Result<Result<serde_json::Value, Refusal>> {
        let response = self
            .http
            .post(format!("{}/v1/events", self.base))
            .bearer_auth(&self.token)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(ndjson)
            .send()
            .await
            .with_context(|| format!("sending events to {}", self.base))?;
        Ok(answer(response).await)
    }

    /// Opens the live stream at `path`.
    pub async fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "text/event-stream")
            .query(query)
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.base))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(answer(response).await.unwrap_err().into())
        }
    }
}

impl std::error::Error for Refusal {}

async fn answer(response: reqwest::Response) -> Result<serde_json::Value, Refusal> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(
        |_| serde_json::json!({"error": {"message": String::from_utf8_lossy(&bytes)}}),
    );
    if status.is_success() {
        Ok(body)
    } else {
        Err(Refusal {
            status,
            retry_after,
            body,
        })
    }
}
