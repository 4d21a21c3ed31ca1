//! Bounded retries with exponential backoff, shared by every responder:
//! transport errors, 429 and 5xx are retried, `Retry-After` is honoured,
//! and both the number of attempts and the total time are capped.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// How hard a responder tries. The defaults suit a live incident: up to
/// 5 attempts within 60 s, waits of 0.5 s, 1 s, 2 s, ... capped at 10 s.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles after each.
    pub initial_backoff_ms: u64,
    /// The longest wait between two attempts, `Retry-After` included.
    pub max_backoff_ms: u64,
    /// No attempt starts later than this after the first one.
    pub max_elapsed_ms: u64,
    /// The time one attempt may take, connection to last byte.
    pub request_timeout_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff_ms: 500,
            max_backoff_ms: 10_000,
            max_elapsed_ms: 60_000,
            request_timeout_ms: 15_000,
        }
    }
}

impl RetryConfig {
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
}

/// Whether an HTTP status is worth another attempt: 429 and 5xx.
pub(crate) fn retryable_status(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

/// The attempts of one request.
#[derive(Debug)]
pub(crate) struct Attempts {
    config: RetryConfig,
    started: Instant,
    made: u32,
}

impl Attempts {
    pub(crate) fn new(config: &RetryConfig) -> Self {
        Self {
            config: config.clone(),
            started: Instant::now(),
            made: 0,
        }
    }

    /// Counts an attempt about to be made.
    pub(crate) fn start(&mut self) {
        self.made += 1;
    }

    pub(crate) fn made(&self) -> u32 {
        self.made
    }

    /// After a failed attempt: how long to wait before the next one (the
    /// server's `Retry-After` when it gave one, else the backoff), or why
    /// there is no next one.
    pub(crate) fn next_delay(&self, retry_after: Option<Duration>) -> Result<Duration, String> {
        if self.made >= self.config.max_attempts.max(1) {
            return Err(format!("gave up after {} attempts", self.made));
        }
        let max_backoff = Duration::from_millis(self.config.max_backoff_ms);
        let exponent = self.made.saturating_sub(1).min(20);
        let backoff = Duration::from_millis(self.config.initial_backoff_ms)
            .saturating_mul(1 << exponent)
            .min(max_backoff);
        let delay = match retry_after {
            Some(asked) if asked > max_backoff => {
                return Err(format!(
                    "the server asked to retry after {} s, beyond the {} ms allowed between attempts",
                    asked.as_secs(),
                    self.config.max_backoff_ms
                ));
            }
            Some(asked) => asked,
            None => backoff,
        };
        let budget = Duration::from_millis(self.config.max_elapsed_ms);
        if self.started.elapsed() + delay > budget {
            return Err(format!(
                "gave up after {} attempts: the next would start past the {} ms allowed",
                self.made, self.config.max_elapsed_ms
            ));
        }
        Ok(delay)
    }
}

/// Reads `Retry-After` (delta seconds or an HTTP date), or else Okta's
/// `X-Rate-Limit-Reset` (the Unix time its window resets).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let now = chrono::Utc::now();
    if let Some(value) = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(date) = chrono::DateTime::parse_from_rfc2822(value) {
            return Some(
                (date.with_timezone(&chrono::Utc) - now)
                    .to_std()
                    .unwrap_or_default(),
            );
        }
    }
    let reset = headers
        .get("x-rate-limit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())?;
    let reset = chrono::DateTime::from_timestamp(reset, 0)?;
    Some((reset - now).to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            max_attempts: 4,
            initial_backoff_ms: 100,
            max_backoff_ms: 300,
            max_elapsed_ms: 10_000,
            request_timeout_ms: 1000,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_stops_at_max_attempts() {
        let mut attempts = Attempts::new(&config());
        let mut delays = Vec::new();
        loop {
            attempts.start();
            match attempts.next_delay(None) {
                Ok(delay) => delays.push(delay.as_millis()),
                Err(why) => {
                    assert_eq!(why, "gave up after 4 attempts");
                    break;
                }
            }
        }
        assert_eq!(delays, [100, 200, 300]);
    }

    #[test]
    fn retry_after_wins_within_the_cap() {
        let mut attempts = Attempts::new(&config());
        attempts.start();
        assert_eq!(
            attempts.next_delay(Some(Duration::from_millis(250))),
            Ok(Duration::from_millis(250))
        );
        assert!(attempts.next_delay(Some(Duration::from_secs(30))).is_err());
    }

    #[test]
    fn total_time_is_bounded() {
        let mut attempts = Attempts::new(&RetryConfig {
            max_elapsed_ms: 50,
            ..config()
        });
        attempts.start();
        assert!(attempts.next_delay(None).is_err());
    }

    #[test]
    fn reads_retry_after_and_okta_reset() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let mut headers = reqwest::header::HeaderMap::new();
        let reset = chrono::Utc::now().timestamp() + 5;
        headers.insert("x-rate-limit-reset", reset.to_string().parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait <= Duration::from_secs(5) && wait >= Duration::from_secs(3),
            "{wait:?}"
        );
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
    }
}
