//! Playbooks: what to do, in order, when detection finds something.
//!
//! A playbook file is TOML: each `[[playbook]]` says which signals it
//! answers (`[playbook.when]`: rule or signal ids, finding kinds, a least
//! severity, tags, agent types, roots) and its `[[playbook.actions]]`, in
//! order. Containment actions (`kill`, `quarantine`, `require_approval`)
//! take effect in memory while the triggering event is processed, so the
//! gateway enforces them on the run's very next call; actions that reach
//! outside (`revoke_tokens`, `respond` through a responder) are queued as a
//! [`Job`] for the server's executor, with the rest of the playbook after
//! them, so order and `on_failure` hold. A playbook fires once per
//! de-duplication key (the run, by default) within its window. In
//! `mode = "monitor"` nothing is done: every action is recorded as
//! `would`, and counted.
//!
//! ```toml
//! [[playbook]]
//! id = "contain-exfiltration"
//! [playbook.when]
//! rules = ["agent.secret_read_then_external_sink"]
//! [[playbook.actions]]
//! do = "kill"
//! on = "root_run"
//! [[playbook.actions]]
//! do = "respond"
//! responder = "okta.clear_sessions"
//! target = "root"
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use custody_engine::{Act, ActionRecord, Decision, FindingNote, Signal};
use custody_event::{Actor, FindingKind, PrincipalKind, RuntimeEvent, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::measures::{Containment, MeasureKind, Scope};
use crate::signals::{RunSignals, acting_run};

/// The most de-duplication keys remembered; beyond, the oldest go.
const MAX_DEDUP_KEYS: usize = 100_000;
/// The most jobs waiting for the executor.
pub const JOB_QUEUE: usize = 4096;

/// A playbook file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookFile {
    /// Its playbooks.
    #[serde(default)]
    pub playbook: Vec<Playbook>,
}

/// One playbook.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// Its id, unique among the playbooks loaded.
    pub id: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// `enforce` (the default) or `monitor`.
    #[serde(default)]
    pub mode: Mode,
    /// What it answers.
    #[serde(default)]
    pub when: When,
    /// What the de-duplication key is: `run` (default), `root`, `agent`
    /// (type) or `finding` (every finding fires).
    #[serde(default)]
    pub per: Per,
    /// How long a key is remembered after the playbook fired for it.
    #[serde(default = "default_dedup_secs")]
    pub dedup_secs: u64,
    /// Its actions, in order.
    pub actions: Vec<Action>,
}

fn default_dedup_secs() -> u64 {
    600
}

/// Whether a playbook acts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// It acts.
    #[default]
    Enforce,
    /// It records what it would have done, and does nothing.
    Monitor,
}

/// De-duplication keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// The acting run.
    #[default]
    Run,
    /// The chain's root.
    Root,
    /// The acting agent type.
    Agent,
    /// Each finding.
    Finding,
}

/// What a playbook answers. Every condition given must hold; a list holds
/// when any of its items does.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Rule ids as findings name them (a Sigma rule's `id`,
    /// `threshold.NAME`, `baseline.first_seen`), a trailing `*` matching a
    /// prefix (`threshold.*`); or a rule's title, whole.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Finding kinds: `rule`, `correlation`, `threshold`, `baseline`.
    #[serde(default)]
    pub kinds: Vec<FindingKind>,
    /// The least severity.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Tags of the rule (`attack.t1078`, `owasp.asi03`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Agent types acting.
    #[serde(default)]
    pub agent_types: Vec<String>,
    /// Roots of the chain (humans or services).
    #[serde(default)]
    pub roots: Vec<String>,
}

/// One action of a playbook.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What to do: `kill`, `quarantine`, `require_approval`,
    /// `revoke_tokens` or `respond`.
    #[serde(rename = "do")]
    pub what: ActionKind,
    /// What it acts on: `run` (the acting run), `root_run` (the top run of
    /// the chain), `agent` (the acting agent type), `root` (the human or
    /// service at the root), `credential` (the credential used). Defaults:
    /// `run` for kill, require_approval and revoke_tokens; `agent` for
    /// quarantine; `credential` for respond.
    #[serde(default)]
    pub on: Option<On>,
    /// For `respond`: the responder's action (`aws.deactivate_access_key`,
    /// `aws.revoke_role_sessions`, `okta.clear_sessions`, `okta.suspend`,
    /// `github.revoke_credential`, `entra.revoke_sessions`,
    /// `entra.disable_service_principal`, `webhook.NAME`).
    #[serde(default)]
    pub responder: Option<String>,
    /// For `respond`: a field of the triggering event to take the target
    /// from instead of `on` (`raw.responseElements.accessKey.accessKeyId`).
    #[serde(default)]
    pub target_field: Option<String>,
    /// For `respond`: send nothing, record the request it would send.
    #[serde(default)]
    pub dry_run: bool,
    /// When it fails: `continue` (default) with the next action, or `stop`
    /// the playbook.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// The actions there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// End the run and everything beneath it.
    Kill,
    /// Refuse every call of an identity.
    Quarantine,
    /// Hold each call of the run for approval.
    RequireApproval,
    /// Revoke the run's Custody agent tokens.
    RevokeTokens,
    /// Call a responder.
    Respond,
}

impl ActionKind {
    fn as_str(self) -> &'static str {
        match self {
            ActionKind::Kill => "kill",
            ActionKind::Quarantine => "quarantine",
            ActionKind::RequireApproval => "require_approval",
            ActionKind::RevokeTokens => "revoke_tokens",
            ActionKind::Respond => "respond",
        }
    }
}

/// What an action acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// The acting run.
    Run,
    /// The top run of the chain.
    RootRun,
    /// The acting agent type.
    Agent,
    /// The human or service at the root.
    Root,
    /// The credential used.
    Credential,
}

/// When an action fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Go on with the next action.
    #[default]
    Continue,
    /// Stop the playbook.
    Stop,
}

/// The responder actions a `respond` may name.
pub const RESPONDERS: &[&str] = &[
    "aws.deactivate_access_key",
    "aws.revoke_role_sessions",
    "okta.clear_sessions",
    "okta.suspend",
    "github.revoke_credential",
    "entra.revoke_sessions",
    "entra.disable_service_principal",
];

/// Parses and checks a playbook file; errors name the file and, where
/// TOML knows it, the line.
pub fn parse(name: &str, text: &str) -> Result<Vec<Playbook>, String> {
    let file: PlaybookFile = toml::from_str(text).map_err(|error| {
        let line = error.span().map(|span| {
            text.get(..span.start)
                .map_or(1, |t| t.matches('\n').count() + 1)
        });
        match line {
            Some(line) => format!("{name}:{line}: {}", error.message()),
            None => format!("{name}: {}", error.message()),
        }
    })?;
    for (index, playbook) in file.playbook.iter().enumerate() {
        let at = |what: String| format!("{name}: playbook[{index}] `{}`: {what}", playbook.id);
        if playbook.id.trim().is_empty() {
            return Err(format!("{name}: playbook[{index}] has no id"));
        }
        if playbook.actions.is_empty() {
            return Err(at("has no actions".into()));
        }
        for (a, action) in playbook.actions.iter().enumerate() {
            let on = action.on.unwrap_or_else(|| default_on(action.what));
            let fits = match action.what {
                ActionKind::Kill | ActionKind::RequireApproval | ActionKind::RevokeTokens => {
                    matches!(on, On::Run | On::RootRun)
                }
                ActionKind::Quarantine | ActionKind::Respond => true,
            };
            if !fits {
                return Err(at(format!(
                    "actions[{a}]: `{}` acts on a run (`run` or `root_run`), not `{on:?}`",
                    action.what.as_str()
                )));
            }
            match (&action.what, &action.responder) {
                (ActionKind::Respond, None) => {
                    return Err(at(format!(
                        "actions[{a}]: `respond` needs a `responder`, one of {} or webhook.NAME",
                        RESPONDERS.join(", ")
                    )));
                }
                (ActionKind::Respond, Some(responder))
                    if !RESPONDERS.contains(&responder.as_str())
                        && !responder.starts_with("webhook.") =>
                {
                    return Err(at(format!(
                        "actions[{a}]: unknown responder `{responder}`, expected one of {} or webhook.NAME",
                        RESPONDERS.join(", ")
                    )));
                }
                (ActionKind::Respond, Some(_)) => {}
                (_, Some(_)) => {
                    return Err(at(format!(
                        "actions[{a}]: only `respond` takes a `responder`"
                    )));
                }
                (_, None) => {}
            }
        }
    }
    Ok(file.playbook)
}

fn default_on(what: ActionKind) -> On {
    match what {
        ActionKind::Kill | ActionKind::RequireApproval | ActionKind::RevokeTokens => On::Run,
        ActionKind::Quarantine => On::Agent,
        ActionKind::Respond => On::Credential,
    }
}

/// Checks that playbook ids are unique across files.
pub fn check_unique(playbooks: &[Playbook]) -> Result<(), String> {
    for (index, playbook) in playbooks.iter().enumerate() {
        if playbooks.iter().take(index).any(|p| p.id == playbook.id) {
            return Err(format!("two playbooks have the id `{}`", playbook.id));
        }
    }
    Ok(())
}

/// What triggered a playbook, as the actions need it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trigger {
    /// The rule, threshold or baseline.
    pub rule: String,
    /// The finding, if the signal opened one.
    pub finding: Option<String>,
    /// The signal's message.
    pub message: String,
    /// The chain the finding is about.
    pub chain: Actor,
    /// The triggering event's id.
    pub event: String,
    /// The triggering event, for `target_field`.
    #[serde(skip)]
    pub source: Arc<RuntimeEvent>,
}

/// Work for the server's executor: the rest of a playbook from its first
/// action that reaches outside Custody.
#[derive(Debug, Clone)]
pub struct Job {
    /// The playbook.
    pub playbook: String,
    /// What triggered it.
    pub trigger: Trigger,
    /// The actions left, in order.
    pub steps: Vec<JobStep>,
}

/// An action left for the executor.
#[derive(Debug, Clone)]
pub struct JobStep {
    /// The id its record was stored under (as `queued`).
    pub id: String,
    /// What to do.
    pub step: Step,
    /// Whether the playbook stops if it fails.
    pub stop_on_failure: bool,
}

/// One resolved action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Put a measure in force (in the executor only when an earlier action
    /// reached outside).
    Measure(MeasureKind, Scope),
    /// Revoke the Custody agent tokens beneath a run.
    RevokeTokens(String),
    /// Call a responder's action on a target.
    Respond {
        /// The responder's action.
        responder: String,
        /// What it acts on.
        target: String,
        /// Send nothing.
        dry_run: bool,
    },
    /// The action could not be resolved (no run in the chain...).
    Unresolved(String),
}

impl Step {
    /// The action's name as recorded.
    pub fn name(&self) -> String {
        match self {
            Step::Measure(kind, _) => kind.as_str().to_owned(),
            Step::RevokeTokens(_) => "revoke_tokens".into(),
            Step::Respond { responder, .. } => format!("respond.{responder}"),
            Step::Unresolved(_) => "unresolved".into(),
        }
    }

    /// What it acts on, as recorded.
    pub fn target(&self) -> String {
        match self {
            Step::Measure(_, scope) => scope.to_string(),
            Step::RevokeTokens(run) => format!("run:{run}"),
            Step::Respond { target, .. } => target.clone(),
            Step::Unresolved(_) => String::new(),
        }
    }
}

/// Counts per playbook since the server started.
#[derive(Debug, Default, Serialize, Clone, PartialEq, Eq)]
pub struct PlaybookCounts {
    /// Times it fired.
    pub fired: u64,
    /// Times it matched but its key had fired within the window.
    pub deduplicated: u64,
    /// Actions done (or queued).
    pub done: u64,
    /// Actions it would have taken, in monitor mode.
    pub would: u64,
    /// Actions that failed.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    fired: AtomicU64,
    deduplicated: AtomicU64,
    done: AtomicU64,
    would: AtomicU64,
    failed: AtomicU64,
}

/// The act stage running playbooks.
pub struct Playbooks {
    playbooks: Vec<(Playbook, Counters)>,
    containment: Arc<Containment>,
    jobs: mpsc::Sender<Job>,
    fired: Mutex<HashMap<(usize, String), DateTime<Utc>>>,
    signals: Arc<RunSignals>,
}

impl std::fmt::Debug for Playbooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playbooks")
            .field("playbooks", &self.playbooks.len())
            .finish_non_exhaustive()
    }
}

impl Playbooks {
    /// Playbooks applying measures to `containment` and queueing jobs for
    /// the executor on the returned receiver.
    pub fn new(
        playbooks: Vec<Playbook>,
        containment: Arc<Containment>,
    ) -> (Playbooks, mpsc::Receiver<Job>) {
        let (jobs, receiver) = mpsc::channel(JOB_QUEUE);
        let playbooks = Playbooks {
            playbooks: playbooks
                .into_iter()
                .map(|p| (p, Counters::default()))
                .collect(),
            containment,
            jobs,
            fired: Mutex::default(),
            signals: Arc::new(RunSignals::new(Duration::from_secs(600))),
        };
        (playbooks, receiver)
    }

    /// What detection raised on each run lately (noted here, as every
    /// event's signals pass through), for the policies' context.
    pub fn signals(&self) -> Arc<RunSignals> {
        self.signals.clone()
    }

    /// The playbooks, with their counts.
    pub fn counts(&self) -> Vec<(Playbook, PlaybookCounts)> {
        self.playbooks
            .iter()
            .map(|(playbook, c)| {
                (
                    playbook.clone(),
                    PlaybookCounts {
                        fired: c.fired.load(Ordering::Relaxed),
                        deduplicated: c.deduplicated.load(Ordering::Relaxed),
                        done: c.done.load(Ordering::Relaxed),
                        would: c.would.load(Ordering::Relaxed),
                        failed: c.failed.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }

    /// Counts an action a job finished, for its playbook.
    pub fn count_outcome(&self, playbook: &str, failed: bool) {
        if let Some((_, counters)) = self.playbooks.iter().find(|(p, _)| p.id == playbook) {
            if failed {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether the playbook `index` fires for `key` now; remembers it.
    fn first_within_window(&self, index: usize, key: String, window: Duration) -> bool {
        let now = Utc::now();
        let mut fired = self.fired.lock().unwrap_or_else(PoisonError::into_inner);
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        if let Some(at) = fired.get(&(index, key.clone()))
            && now.signed_duration_since(*at) < window
        {
            return false;
        }
        if fired.len() >= MAX_DEDUP_KEYS {
            // Keys past their window go first; if none has, the map is
            // cleared rather than grown: a repeat may fire again.
            fired.retain(|_, at| now.signed_duration_since(*at) < window);
            if fired.len() >= MAX_DEDUP_KEYS {
                fired.clear();
            }
        }
        fired.insert((index, key), now);
        true
    }

    fn run(&self, index: usize, trigger: Trigger) -> Vec<ActionRecord> {
        let (playbook, counters) = match self.playbooks.get(index) {
            Some(entry) => entry,
            None => return Vec::new(),
        };
        counters.fired.fetch_add(1, Ordering::Relaxed);
        let monitor = playbook.mode == Mode::Monitor;
        let mut records = Vec::new();
        let mut steps: Vec<(String, Step, OnFailure)> = playbook
            .actions
            .iter()
            .map(|action| {
                (
                    uuid::Uuid::now_v7().to_string(),
                    resolve(action, &trigger),
                    action.on_failure,
                )
            })
            .collect();
        let record = |id: &str, step: &Step, outcome: &str, detail: String| ActionRecord {
            id: id.to_owned(),
            playbook: playbook.id.clone(),
            action: step.name(),
            target: step.target(),
            monitor,
            outcome: outcome.to_owned(),
            detail,
            finding: trigger.finding.clone(),
        };
        let why = format!("{}: {}", trigger.rule, trigger.message);
        let mut queue_from = None;
        for (position, (id, step, on_failure)) in steps.iter().enumerate() {
            if monitor {
                counters.would.fetch_add(1, Ordering::Relaxed);
                let detail = match step {
                    Step::Unresolved(what) => format!("would fail: {what}"),
                    _ => format!("would {} {} ({why})", step.name(), step.target()),
                };
                records.push(record(id, step, "would", detail));
                continue;
            }
            match step {
                Step::Measure(kind, scope) => {
                    let (measure, fresh) = self.containment.apply(
                        *kind,
                        scope.clone(),
                        why.clone(),
                        format!("playbook:{}", playbook.id),
                        trigger.finding.clone(),
                    );
                    counters.done.fetch_add(1, Ordering::Relaxed);
                    let detail = if fresh {
                        format!("measure {} in force ({why})", measure.id)
                    } else {
                        format!("already in force as measure {}", measure.id)
                    };
                    records.push(record(id, step, "done", detail));
                }
                Step::Unresolved(what) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    records.push(record(id, step, "failed", what.clone()));
                    if *on_failure == OnFailure::Stop {
                        for (id, step, _) in steps.iter().skip(position + 1) {
                            records.push(record(
                                id,
                                step,
                                "skipped",
                                "an earlier action failed and the playbook stops on it".into(),
                            ));
                        }
                        return records;
                    }
                }
                Step::RevokeTokens(_) | Step::Respond { .. } => {
                    queue_from = Some(position);
                    break;
                }
            }
        }
        if let Some(from) = queue_from {
            let rest: Vec<(String, Step, OnFailure)> = steps.split_off(from);
            for (id, step, _) in &rest {
                records.push(record(
                    id,
                    step,
                    "queued",
                    "waiting for the executor".into(),
                ));
            }
            let job = Job {
                playbook: playbook.id.clone(),
                trigger,
                steps: rest
                    .into_iter()
                    .map(|(id, step, on_failure)| JobStep {
                        id,
                        step,
                        stop_on_failure: on_failure == OnFailure::Stop,
                    })
                    .collect(),
            };
            if let Err(error) = self.jobs.try_send(job) {
                let why = match error {
                    mpsc::error::TrySendError::Full(_) => "the executor's queue is full",
                    mpsc::error::TrySendError::Closed(_) => "no executor is running",
                };
                for queued in records.iter_mut().filter(|r| r.outcome == "queued") {
                    queued.outcome = "failed".into();
                    queued.detail = why.into();
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        records
    }
}

/// The step `action` is for `trigger`.
fn resolve(action: &Action, trigger: &Trigger) -> Step {
    let chain = &trigger.chain;
    let on = action.on.unwrap_or_else(|| default_on(action.what));
    let run_of = |on: On| -> Option<String> {
        match on {
            On::RootRun => chain
                .agents
                .iter()
                .chain(std::iter::once(&chain.current))
                .find_map(|a| a.run_id.clone()),
            // The acting run; for a role or key acting for an agent (a
            // CloudTrail record bound to a run), the run nearest it.
            _ => acting_run(chain).map(str::to_owned),
        }
    };
    let scope = |on: On| -> Option<Scope> {
        match on {
            On::Run | On::RootRun => run_of(on).map(Scope::Run),
            On::Agent => (chain.current.kind == PrincipalKind::Agent)
                .then(|| Scope::Agent(chain.current.id.clone())),
            On::Root => chain.root_id().map(|id| Scope::Principal(id.to_owned())),
            On::Credential => chain
                .credential
                .as_ref()
                .map(|c| Scope::Credential(c.id.clone())),
        }
    };
    let missing = |on: On| {
        Step::Unresolved(format!(
            "`{}` on {on:?}: the chain of {} has none",
            action.what.as_str(),
            trigger.event
        ))
    };
    match action.what {
        ActionKind::Kill | ActionKind::Quarantine | ActionKind::RequireApproval => {
            let kind = match action.what {
                ActionKind::Kill => MeasureKind::Kill,
                ActionKind::Quarantine => MeasureKind::Quarantine,
                _ => MeasureKind::Hold,
            };
            scope(on).map_or_else(|| missing(on), |scope| Step::Measure(kind, scope))
        }
        ActionKind::RevokeTokens => run_of(on).map_or_else(|| missing(on), Step::RevokeTokens),
        ActionKind::Respond => {
            let responder = action.responder.clone().unwrap_or_default();
            let target = match &action.target_field {
                Some(field) => field_value(&trigger.source, field),
                None => scope(on).map(|scope| scope.id().to_owned()),
            };
            match target {
                Some(target) => Step::Respond {
                    responder,
                    target,
                    dry_run: action.dry_run,
                },
                None => Step::Unresolved(format!(
                    "`respond` with {responder}: event {} has no {}",
                    trigger.event,
                    action
                        .target_field
                        .clone()
                        .unwrap_or_else(|| format!("{on:?}"))
                )),
            }
        }
    }
}

/// A string field of `event` by dotted path (`raw.a.b`, `actor.current.id`).
fn field_value(event: &RuntimeEvent, path: &str) -> Option<String> {
    let mut value = if let Some(rest) = path.strip_prefix("raw.") {
        let raw: serde_json::Value = serde_json::from_str(event.raw.as_ref()?.get()).ok()?;
        return lookup(&raw, rest);
    } else {
        serde_json::to_value(event).ok()?
    };
    for part in path.split('.') {
        value = value.get(part)?.clone();
    }
    value.as_str().map(str::to_owned)
}

fn lookup(value: &serde_json::Value, path: &str) -> Option<String> {
    let mut value = value;
    for part in path.split('.') {
        value = value.get(part)?;
    }
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether `pattern` (a trailing `*` for a prefix) matches `id`.
fn id_matches(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => pattern == id,
    }
}

impl When {
    fn matches(
        &self,
        rule: &str,
        title: &str,
        kind: Option<FindingKind>,
        severity: Option<Severity>,
        tags: &[String],
        chain: &Actor,
    ) -> bool {
        (self.rules.is_empty()
            || self.rules.iter().any(|p| {
                id_matches(p, rule) || (!title.is_empty() && p.eq_ignore_ascii_case(title))
            }))
            && (self.kinds.is_empty() || kind.is_some_and(|k| self.kinds.contains(&k)))
            && self
                .severity
                .is_none_or(|least| severity.is_some_and(|s| s >= least))
            && (self.tags.is_empty()
                || self
                    .tags
                    .iter()
                    .any(|t| tags.iter().any(|have| have.eq_ignore_ascii_case(t))))
            && (self.agent_types.is_empty()
                || (chain.current.kind == PrincipalKind::Agent
                    && self.agent_types.contains(&chain.current.id)))
            && (self.roots.is_empty()
                || chain
                    .root_id()
                    .is_some_and(|root| self.roots.iter().any(|r| r == root)))
    }
}

impl Act for Playbooks {
    fn act(
        &self,
        event: &RuntimeEvent,
        signals: &[Signal],
        _decision: &Decision,
    ) -> Vec<ActionRecord> {
        if signals.is_empty() {
            return Vec::new();
        }
        self.signals.note(event, signals);
        if self.playbooks.is_empty() {
            return Vec::new();
        }
        let mut records = Vec::new();
        // The event is copied for the actions only when a playbook fires.
        let mut source: Option<Arc<RuntimeEvent>> = None;
        for signal in signals {
            let (rule, title, finding, kind, severity, tags, chain) = match &signal.finding {
                // A repeat of an open finding was answered when it opened.
                Some(FindingNote::Repeats(_)) => continue,
                Some(FindingNote::Opens(finding)) => (
                    finding.analytic.id.as_str(),
                    finding.analytic.title.as_str(),
                    Some(finding.id.to_string()),
                    Some(finding.kind),
                    Some(finding.severity),
                    finding.analytic.tags.as_slice(),
                    &finding.chain,
                ),
                None => (
                    signal.id.as_str(),
                    "",
                    None,
                    None,
                    None,
                    &[][..],
                    &event.actor,
                ),
            };
            for (index, (playbook, counters)) in self.playbooks.iter().enumerate() {
                if !playbook
                    .when
                    .matches(rule, title, kind, severity, tags, chain)
                {
                    continue;
                }
                let key = match playbook.per {
                    Per::Run => acting_run(chain).unwrap_or_default().to_owned(),
                    Per::Root => chain.root_id().unwrap_or_default().to_owned(),
                    Per::Agent => chain.current.id.clone(),
                    Per::Finding => finding
                        .clone()
                        .unwrap_or_else(|| format!("{}:{}", event.id, signal.id)),
                };
                if !self.first_within_window(index, key, Duration::from_secs(playbook.dedup_secs)) {
                    counters.deduplicated.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let trigger = Trigger {
                    rule: rule.to_owned(),
                    finding: finding.clone(),
                    message: signal.message.clone(),
                    chain: chain.clone(),
                    event: event.id.to_string(),
                    source: source
                        .get_or_insert_with(|| Arc::new(event.clone()))
                        .clone(),
                };
                records.extend(self.run(index, trigger));
            }
        }
        records
    }
}
