//! External token issuers the server trusts, and their keys: read once
//! from a file at start, or fetched from a URL at start, then every refresh
//! interval, and again when a token names a key the issuer lacks.
//!
//! A fetch never holds a request for long. A token naming an unknown key
//! waits at most [`UNKNOWN_KEY_WAIT`] for a refresh, then is verified again
//! with whatever keys there are; the fetch goes on if the wait ends first,
//! so the next token finds the new keys. Such refreshes happen at most once
//! per [`ON_DEMAND_INTERVAL`] per issuer, so tokens naming made-up keys
//! cannot make the server hammer an identity provider. A failed fetch is
//! logged (never with a token) and the keys fetched before stay in use.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use custody_delegation::{ExternalConfig, ExternalIssuer, KeySet};

/// How long one fetch of a JWKS may take, connecting included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JWKS accepted; identity providers publish a few keys, a few
/// KiB.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// How long a token naming an unknown key waits for the refresh it starts.
pub const UNKNOWN_KEY_WAIT: Duration = Duration::from_secs(2);

/// The least time between two refreshes started by tokens, per issuer.
pub const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(30);

/// An external issuer the server trusts, and where its keys come from.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub(crate) issuer: Arc<ExternalIssuer>,
    pub(crate) fetcher: Option<Arc<JwksFetcher>>,
}

impl TrustedIssuer {
    /// An issuer whose keys never change while the server runs, as read
    /// from a file at start.
    pub fn with_keys(config: ExternalConfig, keys: KeySet) -> TrustedIssuer {
        TrustedIssuer {
            issuer: Arc::new(ExternalIssuer::new(config, keys)),
            fetcher: None,
        }
    }

    /// An issuer whose keys are fetched from `url`: now, waited for (at
    /// most [`FETCH_TIMEOUT`]), then every `refresh` by a task that ends
    /// when the issuer is dropped. If this first fetch fails, the failure
    /// is logged and the issuer's tokens are refused, saying why, until a
    /// fetch succeeds.
    pub async fn fetching(
        config: ExternalConfig,
        url: reqwest::Url,
        refresh: Duration,
    ) -> Result<TrustedIssuer, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            // A redirect could lead from https to http; the configured URL
            // must answer itself.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let issuer = Arc::new(ExternalIssuer::awaiting_keys(
            config,
            url.as_str(),
            "not fetched yet",
        ));
        let fetcher = Arc::new(JwksFetcher {
            issuer: issuer.clone(),
            url,
            client,
            last_on_demand: tokio::sync::Mutex::new(None),
        });
        fetcher.refresh().await;
        // A zero period would make the timer panic.
        let refresh = refresh.max(Duration::from_secs(1));
        tokio::spawn(refresh_every(Arc::downgrade(&fetcher), refresh));
        Ok(TrustedIssuer {
            issuer,
            fetcher: Some(fetcher),
        })
    }

    /// The `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        self.issuer.issuer()
    }
}

/// Fetches an issuer's JWKS from its URL and gives the issuer its keys.
#[derive(Debug)]
pub(crate) struct JwksFetcher {
    issuer: Arc<ExternalIssuer>,
    url: reqwest::Url,
    client: reqwest::Client,
    /// When a token last started a refresh. Every fetch holds this lock,
    /// so fetches of one issuer never overlap and an older answer never
    /// replaces a newer one.
    last_on_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksFetcher {
    /// The `iss` of the issuer it fetches for.
    pub(crate) fn issuer(&self) -> &str {
        self.issuer.issuer()
    }

    /// Refreshes the keys because a token named a key the issuer lacks,
    /// unless a token did so less than [`ON_DEMAND_INTERVAL`] ago; waits
    /// for it at most `wait`.
    pub(crate) async fn refresh_on_demand(self: &Arc<Self>, wait: Duration) {
        let fetcher = self.clone();
        let refresh = tokio::spawn(async move {
            let mut last = fetcher.last_on_demand.lock().await;
            if last.is_some_and(|at| at.elapsed() < ON_DEMAND_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
            fetcher.fetch_and_apply().await;
        });
        // Past the wait the refresh carries on by itself.
        let _ = tokio::time::timeout(wait, refresh).await;
    }

    /// Fetches the keys and gives them to the issuer, after any fetch in
    /// flight.
    async fn refresh(&self) {
        let _serial = self.last_on_demand.lock().await;
        self.fetch_and_apply().await;
    }

    async fn fetch_and_apply(&self) {
        match self.fetch().await {
            Ok(keys) => {
                for why in keys.left_out() {
                    tracing::warn!(issuer = self.issuer(), url = %self.url, %why, "left a JWKS key out");
                }
                tracing::info!(
                    issuer = self.issuer(),
                    url = %self.url,
                    kids = ?keys.kids().collect::<Vec<_>>(),
                    "fetched the issuer's keys"
                );
                self.issuer.set_keys(keys);
            }
            Err(why) => {
                tracing::warn!(
                    issuer = self.issuer(),
                    url = %self.url,
                    %why,
                    "fetching the issuer's keys failed; the keys fetched before stay in use"
                );
                self.issuer.keys_failed(why);
            }
        }
    }

    /// The keys at the URL, or why there are none.
    async fn fetch(&self) -> Result<KeySet, String> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| describe(&error))?;
        let status = response.status();
        if status.is_redirection() {
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|to| to.to_str().ok())
                .unwrap_or("elsewhere");
            return Err(format!(
                "answered {status}, a redirect to {to}: configure the URL it names"
            ));
        }
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let too_large = || format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| describe(&error))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::from_jwks(&body).map_err(|error| error.to_string())
    }
}

/// Refreshes the keys every `every` until the fetcher is dropped.
async fn refresh_every(fetcher: Weak<JwksFetcher>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; the keys were just fetched.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(fetcher) = fetcher.upgrade() else {
            return;
        };
        fetcher.refresh().await;
    }
}

/// A failed request, with its causes: reqwest's own message rarely says
/// what went wrong underneath.
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        format!("timed out after {}s", FETCH_TIMEOUT.as_secs())
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
