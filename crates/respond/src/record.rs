//! What every responder returns: the requests it sent (or, in a dry run,
//! would have sent), with secrets replaced by `[redacted]`, and the outcome.

use serde::Serialize;

/// The record of one revocation: what was asked, what was sent, what came
/// back. It holds no secret: bodies and headers that carry one show
/// `[redacted]` in its place, and a credential being revoked is named by a
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseRecord {
    /// The responder that acted: `aws`, `okta`, `github`, `entra` or
    /// `webhook:<name>`.
    pub responder: String,
    /// The action, e.g. `okta.suspend_user`.
    pub action: String,
    /// What the action was aimed at: a user, role, key id or fingerprint.
    pub target: String,
    /// Whether this was a dry run (nothing sent).
    pub dry_run: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// HTTP attempts over all the requests, retries included; 0 in a dry run.
    pub attempts: u32,
    /// The HTTP status of the last response received, if any.
    pub status: Option<u16>,
    /// Every request, in order: sent ones with their status, or in a dry
    /// run the ones that would be sent.
    pub requests: Vec<SentRequest>,
    /// A sentence saying what happened, for people.
    pub detail: String,
}

/// How a revocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The issuer accepted the revocation.
    Done,
    /// The issuer already had it so: nothing needed changing.
    AlreadyDone,
    /// Nothing was sent; `requests` shows what would have been.
    DryRun,
    /// It did not happen; `reason` says what failed and where.
    Failed { reason: String },
}

impl Outcome {
    /// True for `Done` and `AlreadyDone`.
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Done | Outcome::AlreadyDone)
    }
}

/// One request as it went on the wire (or would have), secrets redacted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SentRequest {
    pub method: String,
    pub url: String,
    /// Headers Custody sets (not those the HTTP client adds); values that
    /// carry a secret show `[redacted]` in its place.
    pub headers: Vec<(String, String)>,
    /// The body, as text, secrets redacted.
    pub body: Option<String>,
    /// Attempts made; 0 when not sent.
    pub attempts: u32,
    /// The final HTTP status, when a response came.
    pub status: Option<u16>,
}

impl ResponseRecord {
    pub(crate) fn new(responder: &str, action: &str, target: &str, dry_run: bool) -> Self {
        Self {
            responder: responder.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            dry_run,
            outcome: Outcome::DryRun,
            attempts: 0,
            status: None,
            requests: Vec::new(),
            detail: String::new(),
        }
    }

    /// Adds a request to the record and counts its attempts.
    pub(crate) fn push(&mut self, request: SentRequest) {
        self.attempts += request.attempts;
        if request.status.is_some() {
            self.status = request.status;
        }
        self.requests.push(request);
    }

    pub(crate) fn finish(mut self, outcome: Outcome, detail: impl Into<String>) -> Self {
        self.outcome = outcome;
        self.detail = detail.into();
        match &self.outcome {
            Outcome::Failed { reason } => tracing::warn!(
                responder = %self.responder, action = %self.action, target = %self.target,
                attempts = self.attempts, %reason, "revocation failed"
            ),
            outcome => tracing::info!(
                responder = %self.responder, action = %self.action, target = %self.target,
                attempts = self.attempts, ?outcome, "revocation"
            ),
        }
        self
    }

    pub(crate) fn failed(self, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let detail = reason.clone();
        self.finish(Outcome::Failed { reason }, detail)
    }
}
