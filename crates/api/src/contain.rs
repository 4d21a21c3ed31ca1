//! Containment through the API: held calls waiting for approval, the
//! measures in force, what playbooks did, and the executor carrying out
//! what reaches outside Custody.
//!
//! - `GET /v1/approvals`, `POST /v1/approvals/{id}`: held calls, approved or
//!   refused by a responder. An approval is bound to the exact call (its
//!   chain, server, session, argument digest), to the policy version that
//!   held it, to an expiry, and to its id, a random nonce used once.
//! - `GET|POST /v1/containment`, `DELETE /v1/containment/{id}`: kill a run,
//!   quarantine an identity, hold a run's calls; lift them.
//! - `GET /v1/actions`, `GET /v1/playbooks`: what playbooks did (or would
//!   have done, in monitor mode), and their counts.
//! - `POST /v1/policies/reload`: reads the policy directory again; a set
//!   that does not load is refused with every error, and the running one
//!   stays.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use custody_contain::{Change, Containment, Job, MeasureKind, Playbooks, Scope, Step};
use custody_engine::ActionRecord;
use custody_gateway::{Approval, Approvals, HeldCall};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::query::read;

/// A playbook's counts for the metrics: fired, done, would, failed.
pub(crate) type PlaybookTotals = (u64, u64, u64, u64);

/// The most calls held at once; beyond, a new one is refused at once.
const MAX_HELD: usize = 10_000;

/// Reloads the policies and says which are in force.
pub trait PolicyControl: Send + Sync {
    /// Reads the policies again: how many are in force, or every error
    /// (`file:line: reason`), the running policies staying.
    fn reload(&self) -> Result<usize, Vec<String>>;
    /// The version of the policies in force.
    fn version(&self) -> String;
}

/// What a held call looks like to an approver.
#[derive(Debug, Clone, Serialize)]
pub struct HeldView {
    /// The approval's id: a random nonce, good once.
    pub id: String,
    /// The event that records the call.
    pub event: String,
    /// The MCP method.
    pub method: String,
    /// The tool, prompt or resource.
    pub target: Option<String>,
    /// The server.
    pub server: String,
    /// The gateway session.
    pub session: String,
    /// The chain calling.
    pub chain: custody_event::Actor,
    /// The SHA-256 of the arguments' canonical JSON.
    pub digest: Option<String>,
    /// The arguments, secrets redacted.
    pub arguments: Option<Value>,
    /// Why it is held.
    pub reason: String,
    /// The version of the policies that held it.
    pub policy_version: Option<String>,
    /// When it was held.
    pub held_at: DateTime<Utc>,
    /// When the approval expires (the call is then refused).
    pub expires_at: DateTime<Utc>,
}

struct Waiting {
    view: HeldView,
    answer: oneshot::Sender<Approval>,
}

/// Held calls waiting for a responder's answer through the API. Clones
/// share the queue.
#[derive(Clone)]
pub struct ApprovalQueue {
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
    ttl: Duration,
    version: Arc<Mutex<Option<Arc<dyn PolicyControl>>>>,
}

impl std::fmt::Debug for ApprovalQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalQueue")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// No call is held under that id (never, answered, or expired).
    Unknown,
    /// The digest given is not the held call's.
    DigestMismatch,
    /// The policies changed since the call was held.
    PolicyChanged,
}

impl ApprovalQueue {
    /// A queue whose approvals expire after `ttl`.
    pub fn new(ttl: Duration) -> ApprovalQueue {
        ApprovalQueue {
            waiting: Arc::default(),
            ttl,
            version: Arc::new(Mutex::new(None)),
        }
    }

    /// Binds approvals to the version of `policies`.
    pub fn bind_policies(&self, policies: Arc<dyn PolicyControl>) {
        *self.version.lock().unwrap_or_else(PoisonError::into_inner) = Some(policies);
    }

    fn policy_version(&self) -> Option<String> {
        self.version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| p.version())
    }

    /// The calls held now, oldest first.
    pub fn list(&self) -> Vec<HeldView> {
        let mut held: Vec<HeldView> = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|w| w.view.clone())
            .collect();
        held.sort_by(|a, b| a.held_at.cmp(&b.held_at).then_with(|| a.id.cmp(&b.id)));
        held
    }

    /// Answers the held call `id`: approves it only if `digest` (when
    /// given) is its own and the policies are still those that held it;
    /// refuses it in any case.
    pub fn answer(
        &self,
        id: &str,
        approve: bool,
        digest: Option<&str>,
    ) -> Result<HeldView, AnswerError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let held = waiting.get(id).ok_or(AnswerError::Unknown)?;
        if held.view.expires_at <= Utc::now() {
            if let Some(expired) = waiting.remove(id) {
                let _ = expired.answer.send(Approval::Expired);
            }
            return Err(AnswerError::Unknown);
        }
        if approve {
            if digest.is_some_and(|d| Some(d) != held.view.digest.as_deref()) {
                return Err(AnswerError::DigestMismatch);
            }
            if held.view.policy_version.is_some()
                && held.view.policy_version != self.policy_version()
            {
                return Err(AnswerError::PolicyChanged);
            }
        }
        let held = waiting.remove(id).ok_or(AnswerError::Unknown)?;
        let _ = held.answer.send(if approve {
            Approval::Approved
        } else {
            Approval::Refused
        });
        Ok(held.view)
    }
}

impl Approvals for ApprovalQueue {
    fn ask(&self, call: HeldCall) -> oneshot::Receiver<Approval> {
        let (answer, receiver) = oneshot::channel();
        let now = Utc::now();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let view = HeldView {
            id: id.clone(),
            event: call.event.to_string(),
            method: call.method,
            target: call.target,
            server: call.server,
            session: call.session,
            chain: call.chain,
            digest: call.digest,
            arguments: call.arguments,
            reason: call.reason,
            policy_version: self.policy_version(),
            held_at: now,
            expires_at: now + chrono::Duration::from_std(self.ttl).unwrap_or_default(),
        };
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if waiting.len() >= MAX_HELD {
                // Too many held: refused at once (the sender drops).
                tracing::warn!("{MAX_HELD} calls are held already; a new one is refused");
                return receiver;
            }
            tracing::info!(approval = %id, event = %view.event, "a call is held for approval");
            waiting.insert(id.clone(), Waiting { view, answer });
        }
        let queue = self.clone();
        let ttl = self.ttl;
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let expired = queue
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            if let Some(expired) = expired {
                let _ = expired.answer.send(Approval::Expired);
            }
        });
        receiver
    }
}

/// Runs a responder's action; implemented by the server over
/// `custody-respond`.
pub trait Respond: Send + Sync {
    /// Carries out `responder` on `target`; the outcome (`done`,
    /// `already_done`, `dry_run`, `failed`), a sentence, and the record of
    /// what was sent and received.
    fn respond<'a>(
        &'a self,
        responder: &'a str,
        target: &'a str,
        context: &'a RespondContext,
        dry_run: bool,
    ) -> Pin<Box<dyn Future<Output = Responded> + Send + 'a>>;
}

/// Why a responder is called.
#[derive(Debug, Clone, Serialize)]
pub struct RespondContext {
    /// The playbook calling it.
    pub playbook: String,
    /// The rule and message.
    pub reason: String,
    /// The finding, if one.
    pub finding: Option<String>,
    /// The triggering event.
    pub event: String,
    /// The acting run.
    pub run: Option<String>,
}

/// What a responder did.
#[derive(Debug, Clone)]
pub struct Responded {
    /// Whether it failed.
    pub failed: bool,
    /// `done`, `already_done`, `dry_run` or `failed`.
    pub outcome: String,
    /// A sentence.
    pub detail: String,
    /// What was sent and received, secrets removed.
    pub record: Value,
}

/// No responders configured: every `respond` fails, saying so.
#[derive(Debug, Default)]
pub struct NoResponders;

impl Respond for NoResponders {
    fn respond<'a>(
        &'a self,
        responder: &'a str,
        _target: &'a str,
        _context: &'a RespondContext,
        _dry_run: bool,
    ) -> Pin<Box<dyn Future<Output = Responded> + Send + 'a>> {
        Box::pin(async move {
            Responded {
                failed: true,
                outcome: "failed".into(),
                detail: format!("the responder `{responder}` is not configured"),
                record: Value::Null,
            }
        })
    }
}

/// What the server contains with: the measures in force, the playbooks,
/// the approval queue and the policies.
#[derive(Clone)]
pub struct Containing {
    /// The measures in force.
    pub containment: Arc<Containment>,
    /// The act stage's playbooks, if any are loaded.
    pub playbooks: Option<Arc<Playbooks>>,
    /// Held calls.
    pub approvals: ApprovalQueue,
    /// The policies, when loaded from a directory.
    pub policies: Option<Arc<dyn PolicyControl>>,
}

impl std::fmt::Debug for Containing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containing")
            .field("measures", &self.containment.len())
            .finish_non_exhaustive()
    }
}

fn containing(state: &AppState) -> Result<&Containing, ApiError> {
    state
        .containing
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("containment is not enabled on this server".into()))
}

/// The record of an action a responder took through the API (`playbook`
/// names the route: `approvals`, `api`), stored without an event.
fn taken_by_hand(
    playbook: &str,
    action: &str,
    target: String,
    outcome: &str,
    detail: String,
) -> ActionRecord {
    ActionRecord {
        id: uuid::Uuid::now_v7().to_string(),
        playbook: playbook.into(),
        action: action.into(),
        target,
        monitor: false,
        outcome: outcome.into(),
        detail,
        finding: None,
    }
}

/// `GET /v1/approvals`.
pub(crate) async fn list_approvals(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let held = containing(&state)?.approvals.list();
    Ok(Json(json!({ "approvals": held })).into_response())
}

/// `POST /v1/approvals/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnswerRequest {
    /// `approve` or `deny`.
    decision: String,
    /// The argument digest the approver saw; approving checks it.
    #[serde(default)]
    digest: Option<String>,
    /// Why, for the record.
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/approvals/{id}`: approves or refuses a held call.
pub(crate) async fn answer_approval(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<AnswerRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Responder)?;
    let Json(request) = body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let approve = match request.decision.as_str() {
        "approve" => true,
        "deny" | "refuse" => false,
        other => {
            return Err(ApiError::BadRequest(format!(
                "decision: `{other}` is neither `approve` nor `deny`"
            )));
        }
    };
    let containing = containing(&state)?;
    let held = containing
        .approvals
        .answer(&id, approve, request.digest.as_deref())
        .map_err(|error| match error {
            AnswerError::Unknown => ApiError::NotFound(format!(
                "no call is held under `{id}` (answered, expired, or never held)"
            )),
            AnswerError::DigestMismatch => ApiError::Conflict(format!(
                "the held call's arguments have another digest than `{}`: approve what you saw",
                request.digest.as_deref().unwrap_or_default()
            )),
            AnswerError::PolicyChanged => ApiError::Conflict(
                "the policies changed since the call was held; it can only be refused, or expire"
                    .into(),
            ),
        })?;
    let verdict = if approve { "approved" } else { "refused" };
    let record = taken_by_hand(
        "approvals",
        if approve { "approve" } else { "refuse" },
        format!("event:{}", held.event),
        "done",
        format!(
            "{verdict} by {}{}",
            caller.token_id,
            request
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
    );
    read(&state, move |store| store.insert_action(&record)).await?;
    tracing::info!(approval = %id, event = %held.event, by = %caller.token_id, verdict, "held call answered");
    Ok(Json(json!({ "id": id, "event": held.event, "decision": verdict })).into_response())
}

/// `GET /v1/containment`.
pub(crate) async fn list_measures(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let measures = containing(&state)?.containment.list();
    Ok(Json(json!({ "measures": measures })).into_response())
}

/// `GET /v1/containment/mine`: the measures covering the calling agent
/// token's own chain, for a gateway outside the server (`custody wrap`)
/// to enforce.
pub(crate) async fn my_measures(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let Some(chain) = &caller.agent else {
        return Err(ApiError::BadRequest(
            "this is for agent tokens: the measures covering the token's own chain; \
             API tokens read GET /v1/containment"
                .into(),
        ));
    };
    let measures: Vec<_> = containing(&state)?
        .containment
        .list()
        .into_iter()
        .filter(|measure| measure.scope.covers(chain))
        .collect();
    Ok(Json(json!({ "measures": measures })).into_response())
}

/// `POST /v1/containment` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MeasureRequest {
    /// `kill`, `quarantine` or `hold`.
    kind: MeasureKind,
    /// `run:ID`, `agent:ID`, `principal:ID` or `credential:ID`.
    scope: String,
    /// Why.
    reason: String,
}

/// `POST /v1/containment`: puts a measure in force.
pub(crate) async fn apply_measure(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<MeasureRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Responder)?;
    let Json(request) = body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let scope: Scope = request
        .scope
        .parse()
        .map_err(|why| ApiError::BadRequest(format!("scope: {why}")))?;
    if request.reason.trim().is_empty() {
        return Err(ApiError::BadRequest("reason must not be empty".into()));
    }
    let by = format!("api:{}", caller.token_id);
    let (measure, fresh) =
        containing(&state)?
            .containment
            .apply(request.kind, scope, request.reason, by, None);
    let record = taken_by_hand(
        "api",
        measure.kind.as_str(),
        measure.scope.to_string(),
        if fresh { "done" } else { "already_done" },
        format!(
            "measure {} by {}: {}",
            measure.id, measure.by, measure.reason
        ),
    );
    read(&state, move |store| store.insert_action(&record)).await?;
    Ok(Json(json!({ "measure": measure, "applied": fresh })).into_response())
}

/// `DELETE /v1/containment/{id}`: lifts a measure.
pub(crate) async fn lift_measure(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Responder)?;
    let measure = containing(&state)?
        .containment
        .lift(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no measure `{id}` is in force")))?;
    let record = taken_by_hand(
        "api",
        &format!("lift.{}", measure.kind.as_str()),
        measure.scope.to_string(),
        "done",
        format!("measure {} lifted by {}", measure.id, caller.token_id),
    );
    read(&state, move |store| store.insert_action(&record)).await?;
    Ok(Json(json!({ "lifted": measure })).into_response())
}

/// `GET /v1/actions` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionParams {
    playbook: Option<String>,
    target: Option<String>,
    monitor: Option<bool>,
    limit: Option<usize>,
    before: Option<i64>,
}

/// `GET /v1/actions`: newest first.
pub(crate) async fn list_actions(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ActionParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(params) = params.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let query = custody_store::ActionQuery {
        playbook: params.playbook,
        target: params.target,
        monitor: params.monitor,
        limit: params.limit.unwrap_or(100),
        before: params.before,
    };
    let actions = read(&state, move |store| store.actions(&query)).await?;
    Ok(Json(json!({ "actions": actions })).into_response())
}

/// `GET /v1/playbooks`: each playbook with its counts since the server
/// started, and its stored action counts by mode and outcome.
pub(crate) async fn list_playbooks(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let containing = containing(&state)?;
    let stored = read(&state, |store| store.action_counts()).await?;
    let playbooks: Vec<Value> = containing
        .playbooks
        .iter()
        .flat_map(|p| p.counts())
        .map(|(playbook, counts)| {
            let recorded: Vec<&custody_store::ActionCount> = stored
                .iter()
                .filter(|c| c.playbook == playbook.id)
                .collect();
            json!({
                "id": playbook.id,
                "description": playbook.description,
                "mode": playbook.mode,
                "counts": counts,
                "recorded": recorded,
            })
        })
        .collect();
    Ok(Json(json!({ "playbooks": playbooks })).into_response())
}

/// `POST /v1/policies/reload`.
pub(crate) async fn reload_policies(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let policies = containing(&state)?
        .policies
        .clone()
        .ok_or_else(|| ApiError::NotFound("no policy directory is configured".into()))?;
    match policies.reload() {
        Ok(count) => {
            tracing::info!(policies = count, version = %policies.version(), "policies reloaded");
            Ok(Json(json!({ "policies": count, "version": policies.version() })).into_response())
        }
        Err(errors) => {
            tracing::warn!(
                errors = errors.len(),
                "policy reload refused; the running policies stay"
            );
            Err(ApiError::BadRequest(format!(
                "the policies do not load, the running ones (version {}) stay:\n  {}",
                policies.version(),
                errors.join("\n  ")
            )))
        }
    }
}

/// Carries out what reaches outside Custody: the jobs playbooks queue
/// (revoking a run's tokens, calling responders), and what a measure
/// brings with it (a kill ends the gateway sessions it covers and revokes
/// the run's tokens; lifted, it undoes both). The measures in
/// force are kept in the store on every change. Runs until the job queue
/// and the containment's changes both end.
pub async fn execute(state: AppState, mut jobs: mpsc::Receiver<Job>, responders: Arc<dyn Respond>) {
    let Some(containing) = state.containing.clone() else {
        return;
    };
    let mut changes = containing.containment.subscribe();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => run_job(&state, &containing, responders.as_ref(), job).await,
                None => break,
            },
            change = changes.recv() => match change {
                Ok(change) => enforce(&state, change).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "containment changes were missed; re-reading what is in force");
                    for measure in containing.containment.list() {
                        enforce(&state, Change::Applied(measure)).await;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

/// What a change of containment brings with it outside the decision path.
async fn enforce(state: &AppState, change: Change) {
    match &change {
        // A kill ends the sessions it covers (calls in flight fail) and
        // revokes the run's tokens; a quarantine or a hold refuses or holds
        // each call as it comes, and is lifted as simply.
        Change::Applied(measure) if measure.kind == MeasureKind::Kill => {
            if let Some(gateway) = &state.gateway {
                let why = format!(
                    "{} {}: {}",
                    measure.scope,
                    measure.kind.as_str(),
                    measure.reason
                );
                let scope = measure.scope.clone();
                let ended = gateway.kill_where(|chain| scope.covers(chain), &why);
                if ended > 0 {
                    tracing::info!(scope = %measure.scope, sessions = ended, "gateway sessions ended");
                }
            }
            if let (Scope::Run(run), Some(delegation)) = (&measure.scope, &state.delegation) {
                if let Err(error) = delegation.revoke_node(run) {
                    tracing::error!(%error, run, "revoking a killed run's tokens failed");
                } else {
                    tracing::info!(run, "a killed run's agent tokens are revoked");
                }
            }
        }
        Change::Lifted(measure) if measure.kind == MeasureKind::Kill => {
            if let Some(gateway) = &state.gateway {
                let scope = measure.scope.clone();
                gateway.pardon_where(|chain| scope.covers(chain));
            }
            if let (Scope::Run(run), Some(delegation)) = (&measure.scope, &state.delegation)
                && let Err(error) = delegation.reinstate_node(run)
            {
                tracing::error!(%error, run, "reinstating a run's tokens failed");
            }
        }
        Change::Lifted(_) => {}
        Change::Applied(_) => {}
    }
    // Each measure is kept under its own name, so a change writes one.
    let kept = match change {
        Change::Applied(measure) => match serde_json::to_string(&measure) {
            Ok(body) => {
                read(state, move |store| {
                    store.put_state(&[(format!("containment:{}", measure.id), body)])
                })
                .await
            }
            Err(error) => Err(ApiError::Internal(error.to_string())),
        },
        Change::Lifted(measure) => {
            read(state, move |store| {
                store
                    .delete_state(&format!("containment:{}", measure.id))
                    .map(|_| ())
            })
            .await
        }
    };
    if let Err(error) = kept {
        tracing::error!(%error, "keeping the containment in force failed");
    }
}

async fn run_job(state: &AppState, containing: &Containing, responders: &dyn Respond, job: Job) {
    let context = RespondContext {
        playbook: job.playbook.clone(),
        reason: format!("{}: {}", job.trigger.rule, job.trigger.message),
        finding: job.trigger.finding.clone(),
        event: job.trigger.event.clone(),
        run: job.trigger.chain.run_id().map(str::to_owned),
    };
    let mut stopped = false;
    for step in job.steps {
        let (outcome, detail, record, failed) = if stopped {
            (
                "skipped".to_owned(),
                "an earlier action failed and the playbook stops on it".to_owned(),
                None,
                false,
            )
        } else {
            match &step.step {
                Step::Measure(kind, scope) => {
                    let (measure, fresh) = containing.containment.apply(
                        *kind,
                        scope.clone(),
                        context.reason.clone(),
                        format!("playbook:{}", job.playbook),
                        context.finding.clone(),
                    );
                    let detail = if fresh {
                        format!("measure {} in force", measure.id)
                    } else {
                        format!("already in force as measure {}", measure.id)
                    };
                    ("done".to_owned(), detail, None, false)
                }
                Step::RevokeTokens(run) => match &state.delegation {
                    Some(delegation) => match delegation.revoke_node(run) {
                        Ok(()) => (
                            "done".to_owned(),
                            format!("every agent token beneath run {run} is refused"),
                            None,
                            false,
                        ),
                        Err(error) => ("failed".to_owned(), error, None, true),
                    },
                    None => (
                        "failed".to_owned(),
                        "the delegation service is not enabled".to_owned(),
                        None,
                        true,
                    ),
                },
                Step::Respond {
                    responder,
                    target,
                    dry_run,
                } => {
                    let responded = responders
                        .respond(responder, target, &context, *dry_run)
                        .await;
                    (
                        responded.outcome,
                        responded.detail,
                        Some(responded.record),
                        responded.failed,
                    )
                }
                Step::Unresolved(what) => ("failed".to_owned(), what.clone(), None, true),
            }
        };
        if let Some(playbooks) = &containing.playbooks
            && outcome != "skipped"
        {
            playbooks.count_outcome(&job.playbook, failed);
        }
        if failed && step.stop_on_failure {
            stopped = true;
        }
        // The action was stored as `queued` with its event, which may
        // still be on its way to the store: wait for it, briefly.
        let mut attempts = 0;
        loop {
            let (id, outcome, detail, record) = (
                step.id.clone(),
                outcome.clone(),
                detail.clone(),
                record.clone(),
            );
            let updated = read(state, move |store| {
                store.update_action(&id, &outcome, &detail, record.as_ref())
            })
            .await;
            match updated {
                Ok(true) => break,
                Ok(false) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(false) => {
                    tracing::error!(action = %step.id, "an action's outcome has no stored action to update");
                    break;
                }
                Err(error) => {
                    tracing::error!(%error, action = %step.id, "recording an action's outcome failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_event::{Actor, EventId, Principal, PrincipalKind};

    fn held(digest: &str) -> HeldCall {
        HeldCall {
            event: EventId::new_v7(),
            method: "tools/call".into(),
            target: Some("deploy".into()),
            reason: "held".into(),
            chain: Actor {
                root: None,
                agents: Vec::new(),
                current: Principal {
                    kind: PrincipalKind::Agent,
                    id: "coder".into(),
                    name: None,
                    version: None,
                    run_id: Some("run-1".into()),
                },
                credential: None,
            },
            server: "ops".into(),
            session: "gateway-1".into(),
            digest: Some(digest.into()),
            arguments: None,
        }
    }

    struct Version(Mutex<String>);

    impl PolicyControl for Version {
        fn reload(&self) -> Result<usize, Vec<String>> {
            Ok(0)
        }
        fn version(&self) -> String {
            self.0.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn an_approval_is_bound_to_its_call_and_its_policies_and_expires() {
        let queue = ApprovalQueue::new(Duration::from_millis(200));
        let policies = Arc::new(Version(Mutex::new("v1".into())));
        queue.bind_policies(policies.clone());

        // Approved with the digest the approver saw.
        let answer = queue.ask(held("abc"));
        let id = queue.list()[0].id.clone();
        assert_eq!(queue.list()[0].policy_version.as_deref(), Some("v1"));
        assert_eq!(
            queue.answer(&id, true, Some("xyz")).unwrap_err(),
            AnswerError::DigestMismatch
        );
        queue.answer(&id, true, Some("abc")).unwrap();
        assert_eq!(answer.await.unwrap(), Approval::Approved);
        assert_eq!(
            queue.answer(&id, true, None).unwrap_err(),
            AnswerError::Unknown
        );

        // The policies changed: it can only be refused.
        let answer = queue.ask(held("abc"));
        let id = queue.list()[0].id.clone();
        *policies.0.lock().unwrap() = "v2".into();
        assert_eq!(
            queue.answer(&id, true, None).unwrap_err(),
            AnswerError::PolicyChanged
        );
        queue.answer(&id, false, None).unwrap();
        assert_eq!(answer.await.unwrap(), Approval::Refused);

        // Unanswered, it expires and is refused as expired.
        let answer = queue.ask(held("abc"));
        let id = queue.list()[0].id.clone();
        assert_eq!(answer.await.unwrap(), Approval::Expired);
        assert!(queue.list().is_empty());
        assert_eq!(
            queue.answer(&id, true, None).unwrap_err(),
            AnswerError::Unknown
        );
    }
}
