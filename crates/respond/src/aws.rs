//! AWS IAM, through the official AWS SDK for Rust: deactivate an access
//! key, and revoke a role's sessions issued before now.

use std::future::Future;
use std::sync::{Arc, Mutex};

use aws_config::BehaviorVersion;
use aws_sdk_iam::Client;
use aws_sdk_iam::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_iam::config::{ConfigBag, Credentials, Intercept, Region, RuntimeComponents};
use aws_sdk_iam::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_iam::types::StatusType;
use aws_smithy_http_client::tls;
use tokio::sync::OnceCell;

use crate::config::{self, AwsConfig, Env};
use crate::error::Error;
use crate::record::{Outcome, ResponseRecord, SentRequest};
use crate::retry::{Attempts, RetryConfig, retryable_status};
use crate::secret::Secret;

/// The inline policy `aws.revoke_role_sessions` writes, unless configured.
pub const REVOKE_POLICY_NAME: &str = "CustodyRevokeOlderSessions";

/// IAM's global endpoint in the `aws` partition, shown in dry runs when no
/// endpoint is configured.
const IAM_ENDPOINT: &str = "https://iam.amazonaws.com/";

/// The IAM query API version every request names.
const IAM_VERSION: &str = "2010-05-08";

#[derive(Debug)]
pub(crate) struct Aws {
    config: AwsConfig,
    secret_access_key: Option<Secret>,
    client: OnceCell<Client>,
}

impl Aws {
    pub(crate) fn new(config: &AwsConfig, env: Env<'_>) -> Result<Self, Error> {
        let secret_access_key = match (&config.access_key_id, &config.secret_access_key) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(Error::Aws(
                    "secret_access_key is set without access_key_id".to_owned(),
                ));
            }
            (Some(_), given) => Some(config::resolve(
                given.as_ref(),
                config
                    .secret_access_key_env
                    .as_deref()
                    .unwrap_or("AWS_SECRET_ACCESS_KEY"),
                "AWS secret access key",
                env,
            )?),
        };
        if let Some(url) = &config.endpoint_url {
            config::parse_url(url, "responders.aws.endpoint_url")?;
        }
        Ok(Self {
            config: config.clone(),
            secret_access_key,
            client: OnceCell::new(),
        })
    }

    fn endpoint(&self) -> String {
        match &self.config.endpoint_url {
            Some(url) if url.ends_with('/') => url.clone(),
            Some(url) => format!("{url}/"),
            None => IAM_ENDPOINT.to_owned(),
        }
    }

    fn policy_name(&self) -> &str {
        self.config
            .revoke_policy_name
            .as_deref()
            .unwrap_or(REVOKE_POLICY_NAME)
    }

    /// The IAM client, built on first use: the SDK's own retries are off
    /// (the shared policy retries instead, and counts attempts), and its
    /// HTTPS client is rustls with ring.
    async fn client(&self, retry: &RetryConfig) -> &Client {
        self.client
            .get_or_init(|| async {
                let http_client = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .http_client(http_client)
                    .retry_config(aws_sdk_iam::config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_sdk_iam::config::timeout::TimeoutConfig::builder()
                            .operation_attempt_timeout(retry.request_timeout())
                            .build(),
                    );
                if let Some(region) = &self.config.region {
                    loader = loader.region(Region::new(region.clone()));
                }
                if let Some(url) = &self.config.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                if let (Some(id), Some(secret)) =
                    (&self.config.access_key_id, &self.secret_access_key)
                {
                    loader = loader.credentials_provider(Credentials::new(
                        id,
                        secret.expose(),
                        None,
                        None,
                        "custody-config",
                    ));
                }
                // The loader finds a region in the environment when none is
                // configured, through the HTTP client above (a region
                // provider built alone has none, and the SDK then panics).
                let shared = loader.load().await;
                let mut iam = aws_sdk_iam::config::Builder::from(&shared);
                if shared.region().is_none() {
                    iam = iam.region(Region::from_static("us-east-1"));
                }
                Client::from_conf(iam.build())
            })
            .await
    }

    /// Deactivates `access_key_id` (`UpdateAccessKey`, status `Inactive`).
    /// The owner is found with `GetAccessKeyLastUsed` when not given; the
    /// key's status is read first with `ListAccessKeys`, and a key already
    /// inactive is reported already done.
    pub(crate) async fn deactivate_access_key(
        &self,
        retry: &RetryConfig,
        access_key_id: &str,
        user: Option<&str>,
        dry_run: bool,
    ) -> ResponseRecord {
        let mut record =
            ResponseRecord::new("aws", "aws.deactivate_access_key", access_key_id, dry_run);
        if dry_run {
            let user = match user {
                Some(user) => user.to_owned(),
                None => {
                    record.push(self.unsent(&[
                        ("Action", "GetAccessKeyLastUsed"),
                        ("AccessKeyId", access_key_id),
                    ]));
                    "<the UserName GetAccessKeyLastUsed returns>".to_owned()
                }
            };
            record.push(self.unsent(&[("Action", "ListAccessKeys"), ("UserName", &user)]));
            record.push(self.unsent(&update_params(access_key_id, &user)));
            return record.finish(
                Outcome::DryRun,
                "would deactivate the access key unless it already is inactive",
            );
        }
        let client = self.client(retry).await;
        let user = match user {
            Some(user) => user.to_owned(),
            None => {
                let sent = self
                    .call(retry, &mut record, |capture| {
                        client
                            .get_access_key_last_used()
                            .access_key_id(access_key_id)
                            .customize()
                            .interceptor(capture)
                            .send()
                    })
                    .await;
                match sent {
                    Ok(found) => match found.user_name() {
                        Some(user) => user.to_owned(),
                        None => {
                            return record.failed(format!(
                                "aws: GetAccessKeyLastUsed named no user for access key {access_key_id}"
                            ));
                        }
                    },
                    Err(why) => {
                        return record
                            .failed(format!("aws: finding the owner of {access_key_id}: {why}"));
                    }
                }
            }
        };
        let listed = self
            .call(retry, &mut record, |capture| {
                client
                    .list_access_keys()
                    .user_name(&user)
                    .customize()
                    .interceptor(capture)
                    .send()
            })
            .await;
        let status = match listed {
            Ok(listed) => listed
                .access_key_metadata()
                .iter()
                .find(|key| key.access_key_id() == Some(access_key_id))
                .map(|key| key.status().cloned()),
            Err(why) => {
                return record.failed(format!(
                    "aws: listing the access keys of user {user}: {why}"
                ));
            }
        };
        match status {
            None => {
                return record.failed(format!(
                    "aws: access key {access_key_id} is not among user {user}'s keys"
                ));
            }
            Some(Some(StatusType::Inactive)) => {
                return record.finish(
                    Outcome::AlreadyDone,
                    format!("access key {access_key_id} of user {user} was already inactive"),
                );
            }
            Some(_) => {}
        }
        let updated = self
            .call(retry, &mut record, |capture| {
                client
                    .update_access_key()
                    .user_name(&user)
                    .access_key_id(access_key_id)
                    .status(StatusType::Inactive)
                    .customize()
                    .interceptor(capture)
                    .send()
            })
            .await;
        match updated {
            Ok(_) => record.finish(
                Outcome::Done,
                format!("deactivated access key {access_key_id} of user {user}"),
            ),
            Err(why) => record.failed(format!(
                "aws: deactivating access key {access_key_id}: {why}"
            )),
        }
    }

    /// Writes the role's inline policy `CustodyRevokeOlderSessions`
    /// (`PutRolePolicy`), denying every action to sessions whose
    /// `aws:TokenIssueTime` is before now: what the console's "Revoke
    /// active sessions" does. A repeat moves the cutoff to the new now,
    /// which is what a new revocation asks, and is reported done.
    pub(crate) async fn revoke_role_sessions(
        &self,
        retry: &RetryConfig,
        role: &str,
        dry_run: bool,
    ) -> ResponseRecord {
        let mut record = ResponseRecord::new("aws", "aws.revoke_role_sessions", role, dry_run);
        let cutoff = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let document = revoke_policy(&cutoff);
        let policy_name = self.policy_name();
        if dry_run {
            record.push(self.unsent(&[
                ("Action", "PutRolePolicy"),
                ("RoleName", role),
                ("PolicyName", policy_name),
                ("PolicyDocument", &document),
            ]));
            return record.finish(
                Outcome::DryRun,
                format!("would deny role {role}'s sessions issued before {cutoff}"),
            );
        }
        let client = self.client(retry).await;
        let put = self
            .call(retry, &mut record, |capture| {
                client
                    .put_role_policy()
                    .role_name(role)
                    .policy_name(policy_name)
                    .policy_document(&document)
                    .customize()
                    .interceptor(capture)
                    .send()
            })
            .await;
        match put {
            Ok(_) => record.finish(
                Outcome::Done,
                format!("denied every action to role {role}'s sessions issued before {cutoff} (inline policy {policy_name})"),
            ),
            Err(why) => record.failed(format!(
                "aws: writing inline policy {policy_name} on role {role}: {why}"
            )),
        }
    }

    /// The record of an IAM query API request not sent: `params` after
    /// `Action`, then `Version`, form-encoded as the SDK sends them.
    fn unsent(&self, params: &[(&str, &str)]) -> SentRequest {
        let mut body = String::new();
        for (i, (name, value)) in params.iter().enumerate() {
            if i > 0 {
                body.push('&');
            }
            body.push_str(name);
            body.push('=');
            body.push_str(&query_encode(value));
            if i == 0 {
                body.push_str("&Version=");
                body.push_str(IAM_VERSION);
            }
        }
        SentRequest {
            method: "POST".to_owned(),
            url: self.endpoint(),
            headers: vec![(
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            )],
            body: Some(body),
            attempts: 0,
            status: None,
        }
    }

    /// Runs one SDK operation under the shared retry policy, recording the
    /// request the SDK sent (its last attempt) and the attempts made.
    async fn call<T, E, F, Fut>(
        &self,
        retry: &RetryConfig,
        record: &mut ResponseRecord,
        mut operation: F,
    ) -> Result<T, String>
    where
        F: FnMut(Capture) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, aws_sdk_iam::config::http::HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut attempts = Attempts::new(retry);
        let capture = Capture::default();
        let result = loop {
            attempts.start();
            let error = match operation(capture.clone()).await {
                Ok(output) => break Ok(output),
                Err(error) => error,
            };
            let status = error.raw_response().map(|r| r.status().as_u16());
            let retryable = match &error {
                SdkError::DispatchFailure(_)
                | SdkError::TimeoutError(_)
                | SdkError::ResponseError(_) => true,
                SdkError::ServiceError(_) => {
                    status.is_some_and(retryable_status)
                        || error.code().is_some_and(|c| c.contains("Throttl"))
                }
                _ => false,
            };
            let hint = error
                .raw_response()
                .and_then(|r| r.headers().get("retry-after"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(std::time::Duration::from_secs);
            let why = describe(&error);
            if !retryable {
                break Err(why);
            }
            match attempts.next_delay(hint) {
                Ok(delay) => tokio::time::sleep(delay).await,
                Err(gave_up) => break Err(format!("{why} ({gave_up})")),
            }
        };
        let mut sent = capture
            .0
            .lock()
            .ok()
            .and_then(|mut c| c.take())
            .unwrap_or_else(|| self.unsent(&[]));
        sent.attempts = attempts.made();
        record.push(sent);
        result
    }
}

/// The inline policy that denies everything to sessions issued before
/// `cutoff` (RFC 3339, UTC).
pub fn revoke_policy(cutoff: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Deny",
            "Action": ["*"],
            "Resource": ["*"],
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": cutoff}}
        }]
    })
    .to_string()
}

/// Percent-encodes all but RFC 3986's unreserved characters, as the SDK
/// encodes the query protocol's values.
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn update_params<'a>(access_key_id: &'a str, user: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("Action", "UpdateAccessKey"),
        ("UserName", user),
        ("AccessKeyId", access_key_id),
        ("Status", "Inactive"),
    ]
}

/// "HTTP 404: NoSuchEntity: The user with name x cannot be found." for an
/// IAM error; the SDK's full error chain for anything else.
fn describe<E>(error: &SdkError<E, aws_sdk_iam::config::http::HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let status = service.raw().status().as_u16();
            format!(
                "HTTP {status}: {}: {}",
                inner.code().unwrap_or("error"),
                inner.message().unwrap_or("no message")
            )
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.ends_with(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

/// An interceptor that keeps the request the SDK signed and sent (method,
/// URL, body, and the status that came back), but none of its headers:
/// they carry the signature and any session token.
#[derive(Debug, Clone, Default)]
struct Capture(Arc<Mutex<Option<SentRequest>>>);

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "CustodyCapture"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let sent = SentRequest {
            method: request.method().to_owned(),
            url: request.uri().to_owned(),
            headers: vec![(
                "Content-Type".to_owned(),
                request
                    .headers()
                    .get("content-type")
                    .unwrap_or("application/x-www-form-urlencoded")
                    .to_owned(),
            )],
            body: request
                .body()
                .bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            attempts: 0,
            status: None,
        };
        if let Ok(mut captured) = self.0.lock() {
            *captured = Some(sent);
        }
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let status = context.response().status().as_u16();
        if let Ok(mut captured) = self.0.lock()
            && let Some(sent) = captured.as_mut()
        {
            sent.status = Some(status);
        }
        Ok(())
    }
}
