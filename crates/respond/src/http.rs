//! One HTTP request as a responder builds it, its redacted view for the
//! record, and sending it with retries.

use reqwest::{Method, Url};

use crate::record::SentRequest;
use crate::retry::{self, Attempts, RetryConfig};
use crate::secret::{REDACTED, Secret};

/// The most of a response body kept to explain a failure.
const ERROR_BODY_LIMIT: usize = 2048;

/// A request ready to send. Header values and bodies that hold a secret
/// keep a redacted twin for the record.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) method: Method,
    pub(crate) url: Url,
    headers: Vec<Header>,
    body: Option<Body>,
}

#[derive(Debug, Clone)]
struct Header {
    name: &'static str,
    value: HeaderValue,
}

#[derive(Debug, Clone)]
enum HeaderValue {
    Plain(String),
    /// `prefix` then the secret, e.g. `SSWS ` and the token.
    Secret {
        prefix: &'static str,
        secret: Secret,
    },
}

#[derive(Debug, Clone)]
struct Body {
    content_type: &'static str,
    /// What is sent; may hold a secret, so it never reaches a record.
    sent: Secret,
    shown: String,
}

/// What came back from sending a [`Prepared`].
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) record: SentRequest,
    pub(crate) result: Result<Response, String>,
}

/// A final response: success or a status that is not worth retrying (or
/// that retrying could not get past).
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub(crate) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

impl Prepared {
    pub(crate) fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            headers: Vec::new(),
            body: None,
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push(Header {
            name,
            value: HeaderValue::Plain(value.into()),
        });
        self
    }

    pub(crate) fn secret_header(
        mut self,
        name: &'static str,
        prefix: &'static str,
        secret: &Secret,
    ) -> Self {
        self.headers.push(Header {
            name,
            value: HeaderValue::Secret {
                prefix,
                secret: secret.clone(),
            },
        });
        self
    }

    /// A JSON body with no secret in it.
    pub(crate) fn json(self, body: &serde_json::Value) -> Self {
        let text = body.to_string();
        self.body("application/json", Secret::new(text.clone()), text)
    }

    /// A body whose record shows `shown` instead of the text sent.
    pub(crate) fn body(mut self, content_type: &'static str, sent: Secret, shown: String) -> Self {
        self.body = Some(Body {
            content_type,
            sent,
            shown,
        });
        self
    }

    /// The record of this request, not (yet) sent.
    pub(crate) fn unsent(&self) -> SentRequest {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|h| {
                let value = match &h.value {
                    HeaderValue::Plain(v) => v.clone(),
                    HeaderValue::Secret { prefix, .. } => format!("{prefix}{REDACTED}"),
                };
                (h.name.to_owned(), value)
            })
            .collect();
        if let Some(body) = &self.body {
            headers.push(("Content-Type".to_owned(), body.content_type.to_owned()));
        }
        SentRequest {
            method: self.method.to_string(),
            url: self.url.to_string(),
            headers,
            body: self.body.as_ref().map(|b| b.shown.clone()),
            attempts: 0,
            status: None,
        }
    }

    fn build(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut request = client.request(self.method.clone(), self.url.clone());
        for header in &self.headers {
            request = match &header.value {
                HeaderValue::Plain(v) => request.header(header.name, v),
                HeaderValue::Secret { prefix, secret } => {
                    request.header(header.name, format!("{prefix}{}", secret.expose()))
                }
            };
        }
        if let Some(body) = &self.body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, body.content_type)
                .body(body.sent.expose().to_owned());
        } else if matches!(self.method, Method::POST | Method::PUT | Method::PATCH) {
            // An empty body still says `Content-Length: 0`: some APIs (Graph
            // among them) answer a POST without it with 411.
            request = request
                .header(reqwest::header::CONTENT_LENGTH, "0")
                .body("");
        }
        request
    }

    /// Sends the request, retrying transport errors, 429 and 5xx within
    /// `policy`. A final 4xx or exhausted retries come back as a `Response`
    /// or an error text; either way the record counts every attempt.
    pub(crate) async fn send(&self, client: &reqwest::Client, policy: &RetryConfig) -> Exchange {
        let mut record = self.unsent();
        let mut attempts = Attempts::new(policy);
        let result = loop {
            attempts.start();
            let (failure, wait_hint) = match self.build(client).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    record.status = Some(status);
                    let hint = retry::retry_after(response.headers());
                    let body = response.text().await.unwrap_or_default();
                    if !retry::retryable_status(status) {
                        break Ok(Response { status, body });
                    }
                    (
                        Err(Response {
                            status,
                            body: truncate(body),
                        }),
                        hint,
                    )
                }
                // The error text names the URL but never a header or body.
                Err(error) => (Ok(describe(&error)), None),
            };
            match attempts.next_delay(wait_hint) {
                Ok(delay) => tokio::time::sleep(delay).await,
                Err(why) => {
                    break match failure {
                        Err(response) => Err(format!(
                            "HTTP {} ({why}): {}",
                            response.status, response.body
                        )),
                        Ok(transport) => Err(format!("{transport} ({why})")),
                    };
                }
            }
        };
        record.attempts = attempts.made();
        Exchange { record, result }
    }
}

fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) fn truncate(mut body: String) -> String {
    if body.len() > ERROR_BODY_LIMIT {
        let mut end = ERROR_BODY_LIMIT;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
        body.push('…');
    }
    body
}

/// Joins `path` (starting with `/`) onto a configured base URL, keeping any
/// path the base already has (`https://host/api/v3` + `/credentials/revoke`).
pub(crate) fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

/// One path segment, percent-encoded, for ids put into a URL path: all
/// but RFC 3986's unreserved characters and `@` are escaped, so an id can
/// never add a segment or a query.
pub(crate) fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
