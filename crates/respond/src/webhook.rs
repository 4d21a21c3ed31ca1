//! A generic webhook: POST a JSON description of the action, signed with
//! HMAC-SHA256 so the receiver can check it came from Custody.

use hmac::{Hmac, Mac};
use reqwest::{Method, Url};
use sha2::{Digest, Sha256};

use crate::config::{self, Env, WebhookConfig};
use crate::error::Error;
use crate::http::{self, Prepared};
use crate::record::{Outcome, ResponseRecord};
use crate::secret::Secret;
use crate::{Context, Http};

#[derive(Debug)]
pub(crate) struct Webhook {
    pub(crate) name: String,
    url: Url,
    secret: Secret,
}

impl Webhook {
    pub(crate) fn new(config: &WebhookConfig, env: Env<'_>) -> Result<Self, Error> {
        Ok(Self {
            name: config.name.clone(),
            url: config::parse_url(&config.url, "responders.webhook.url")?,
            secret: config::resolve(
                config.secret.as_ref(),
                &config.secret_env,
                "webhook signing secret",
                env,
            )?,
        })
    }

    /// Posts the action. 2xx is done; 409 Conflict means the receiver had
    /// already handled this delivery (same `X-Custody-Delivery`) and is
    /// reported already done.
    pub(crate) async fn post(
        &self,
        http: &Http,
        action: &str,
        target: &str,
        ctx: &Context,
        dry_run: bool,
    ) -> ResponseRecord {
        let responder = format!("webhook:{}", self.name);
        let mut record = ResponseRecord::new(&responder, action, target, dry_run);
        let now = chrono::Utc::now();
        let delivery = delivery_id(&self.name, action, target, ctx);
        let body = serde_json::json!({
            "delivery": delivery,
            "action": action,
            "target": target,
            "reason": ctx.reason,
            "finding": ctx.finding,
            "event": ctx.event,
            "run": ctx.run,
            "time": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
        .to_string();
        let timestamp = now.timestamp().to_string();
        let signature = match sign(&self.secret, &timestamp, &body) {
            Ok(signature) => signature,
            Err(why) => return record.failed(format!("webhook {}: {why}", self.name)),
        };
        let request = Prepared::new(Method::POST, self.url.clone())
            .header("X-Custody-Timestamp", timestamp)
            .header("X-Custody-Signature", format!("sha256={signature}"))
            .header("X-Custody-Delivery", delivery)
            .body("application/json", Secret::new(body.clone()), body);
        if dry_run {
            record.push(request.unsent());
            return record.finish(
                Outcome::DryRun,
                format!("would post to webhook {}", self.name),
            );
        }
        let exchange = request.send(&http.client, &http.retry).await;
        record.push(exchange.record);
        match exchange.result {
            Ok(response) if response.success() => record.finish(
                Outcome::Done,
                format!("webhook {} accepted the action", self.name),
            ),
            Ok(response) if response.status == 409 => record.finish(
                Outcome::AlreadyDone,
                format!("webhook {} had already handled this delivery", self.name),
            ),
            Ok(response) => record.failed(format!(
                "webhook {}: HTTP {}: {}",
                self.name,
                response.status,
                http::truncate(response.body)
            )),
            Err(why) => record.failed(format!("webhook {}: {why}", self.name)),
        }
    }
}

/// `hex(HMAC-SHA256(secret, "{timestamp}.{body}"))`.
pub fn sign(secret: &Secret, timestamp: &str, body: &str) -> Result<String, String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| "the signing secret is not a usable HMAC key".to_owned())?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// The same for the same action on the same target for the same event,
/// finding and run, so a receiver can drop repeats.
fn delivery_id(name: &str, action: &str, target: &str, ctx: &Context) -> String {
    let mut hash = Sha256::new();
    for part in [
        name,
        action,
        target,
        ctx.finding.as_deref().unwrap_or(""),
        ctx.event.as_deref().unwrap_or(""),
        ctx.run.as_deref().unwrap_or(""),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hex::encode(hash.finalize());
    digest.get(..32).unwrap_or(&digest).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_timestamp_dot_body() {
        // The well-known HMAC-SHA256 vector, split at its "." into
        // timestamp and body, shows the message is "{timestamp}.{body}".
        let signature = sign(
            &Secret::new("key"),
            "The quick brown fox jumps over the lazy dog",
            "",
        )
        .unwrap();
        assert_eq!(
            signature,
            hmac_of(b"key", b"The quick brown fox jumps over the lazy dog.")
        );
        assert_eq!(
            hmac_of(b"key", b"The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert_eq!(
            sign(&Secret::new("s3cret"), "1700000000", "{\"a\":1}").unwrap(),
            hmac_of(b"s3cret", b"1700000000.{\"a\":1}")
        );
    }

    fn hmac_of(key: &[u8], message: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(message);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        let ctx = Context::new("test");
        let a = delivery_id("soc", "disable", "alice", &ctx);
        assert_eq!(a, delivery_id("soc", "disable", "alice", &ctx));
        assert_ne!(a, delivery_id("soc", "disable", "bob", &ctx));
        assert_ne!(
            delivery_id("a", "bc", "", &ctx),
            delivery_id("ab", "c", "", &ctx)
        );
    }
}
