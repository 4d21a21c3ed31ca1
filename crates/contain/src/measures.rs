//! Containment in force: killed runs, quarantined identities, held runs.
//!
//! A measure applies to a [`Scope`] of the identity chain. A run's scope
//! covers the run and every run beneath it, because a sub-agent's chain
//! names the runs above it; an agent type's, principal's or credential's
//! covers every chain that names it, across runs. [`Containment::check`]
//! looks up only the scopes the call's chain names, so its cost is the
//! chain's depth, not the number of measures; with none in force it is one
//! atomic load.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};

use chrono::{DateTime, Utc};
use custody_engine::{Decide, Decision, Reason, ReasonSource, Signal, Verdict};
use custody_event::{Actor, PrincipalKind, RuntimeEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What part of the identity chain a measure covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// A run and every run beneath it (`run:ID`).
    Run(String),
    /// Every run of an agent type (`agent:ID`).
    Agent(String),
    /// A human or service, at the root or acting (`principal:ID`).
    Principal(String),
    /// A credential, by its id (`credential:ID`).
    Credential(String),
}

impl Scope {
    /// Whether `chain` falls under this scope.
    pub fn covers(&self, chain: &Actor) -> bool {
        scopes_of(chain).any(|scope| &scope == self)
    }

    /// The scope's kind, as written before the colon.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Run(_) => "run",
            Scope::Agent(_) => "agent",
            Scope::Principal(_) => "principal",
            Scope::Credential(_) => "credential",
        }
    }

    /// The id it names.
    pub fn id(&self) -> &str {
        match self {
            Scope::Run(id) | Scope::Agent(id) | Scope::Principal(id) | Scope::Credential(id) => id,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.id())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        let (kind, id) = s.split_once(':').ok_or_else(|| {
            format!("`{s}` is not a scope: write run:ID, agent:ID, principal:ID or credential:ID")
        })?;
        if id.is_empty() {
            return Err(format!("the scope `{s}` names no id"));
        }
        let id = id.to_owned();
        match kind {
            "run" => Ok(Scope::Run(id)),
            "agent" => Ok(Scope::Agent(id)),
            "principal" => Ok(Scope::Principal(id)),
            "credential" => Ok(Scope::Credential(id)),
            other => Err(format!(
                "unknown scope kind `{other}` in `{s}`: expected run, agent, principal or credential"
            )),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Scope, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Every scope `chain` falls under: the runs and agent types of its
/// agents, its root and acting principal, its credential.
pub fn scopes_of(chain: &Actor) -> impl Iterator<Item = Scope> + '_ {
    let agents = chain
        .agents
        .iter()
        .chain(std::iter::once(&chain.current).filter(|c| c.kind == PrincipalKind::Agent));
    let runs = agents
        .clone()
        .filter_map(|agent| agent.run_id.clone().map(Scope::Run));
    let types = agents.map(|agent| Scope::Agent(agent.id.clone()));
    let principals = chain
        .root
        .iter()
        .chain(std::iter::once(&chain.current).filter(|c| c.kind != PrincipalKind::Agent))
        .map(|principal| Scope::Principal(principal.id.clone()));
    let credential = chain
        .credential
        .iter()
        .map(|credential| Scope::Credential(credential.id.clone()));
    runs.chain(types).chain(principals).chain(credential)
}

/// What a measure does to the calls it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureKind {
    /// Each call is held until a human approves it.
    Hold,
    /// Every call is refused.
    Quarantine,
    /// Every call is refused, calls in flight fail, sessions end, and the
    /// run's agent tokens are revoked.
    Kill,
}

impl MeasureKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MeasureKind::Hold => "hold",
            MeasureKind::Quarantine => "quarantine",
            MeasureKind::Kill => "kill",
        }
    }

    /// The verdict a call under this measure gets.
    pub fn verdict(self) -> Verdict {
        match self {
            MeasureKind::Hold => Verdict::RequireApproval,
            MeasureKind::Quarantine => Verdict::Quarantine,
            MeasureKind::Kill => Verdict::Kill,
        }
    }
}

/// A measure in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measure {
    /// Its id (a UUIDv7), to lift it by.
    pub id: String,
    /// What it does.
    pub kind: MeasureKind,
    /// What it covers.
    pub scope: Scope,
    /// Why, for whoever is refused and whoever reviews it.
    pub reason: String,
    /// Who applied it: a playbook (`playbook:ID`) or a responder
    /// (`api:TOKEN NAME`).
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The finding that led to it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
}

/// A change to what is in force, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A measure came into force.
    Applied(Measure),
    /// A measure was lifted.
    Lifted(Measure),
}

/// The measures in force, shared by every decision point.
#[derive(Debug)]
pub struct Containment {
    by_scope: RwLock<HashMap<Scope, Vec<Measure>>>,
    count: AtomicUsize,
    changes: broadcast::Sender<Change>,
}

impl Default for Containment {
    fn default() -> Containment {
        Containment::new()
    }
}

impl Containment {
    /// Nothing in force.
    pub fn new() -> Containment {
        Containment {
            by_scope: RwLock::default(),
            count: AtomicUsize::new(0),
            changes: broadcast::Sender::new(1024),
        }
    }

    /// Puts `kind` in force over `scope`. The same kind over the same
    /// scope is in force once: applying it again returns the measure
    /// already in force and `false`.
    pub fn apply(
        &self,
        kind: MeasureKind,
        scope: Scope,
        reason: impl Into<String>,
        by: impl Into<String>,
        finding: Option<String>,
    ) -> (Measure, bool) {
        let mut by_scope = self
            .by_scope
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let measures = by_scope.entry(scope.clone()).or_default();
        if let Some(existing) = measures.iter().find(|m| m.kind == kind) {
            return (existing.clone(), false);
        }
        let measure = Measure {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            scope,
            reason: reason.into(),
            by: by.into(),
            at: Utc::now(),
            finding,
        };
        measures.push(measure.clone());
        self.count.fetch_add(1, Ordering::Release);
        drop(by_scope);
        let _ = self.changes.send(Change::Applied(measure.clone()));
        (measure, true)
    }

    /// Lifts the measure `id`; the measure, if it was in force.
    pub fn lift(&self, id: &str) -> Option<Measure> {
        let mut by_scope = self
            .by_scope
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let scope = by_scope
            .iter()
            .find(|(_, measures)| measures.iter().any(|m| m.id == id))
            .map(|(scope, _)| scope.clone())?;
        let measures = by_scope.get_mut(&scope)?;
        let index = measures.iter().position(|m| m.id == id)?;
        let lifted = measures.remove(index);
        if measures.is_empty() {
            by_scope.remove(&scope);
        }
        self.count.fetch_sub(1, Ordering::Release);
        drop(by_scope);
        let _ = self.changes.send(Change::Lifted(lifted.clone()));
        Some(lifted)
    }

    /// Every measure in force, oldest first.
    pub fn list(&self) -> Vec<Measure> {
        let mut all: Vec<Measure> = self
            .by_scope
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flatten()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
        all
    }

    /// How many measures are in force.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The strongest measure covering `chain`, if any.
    pub fn check(&self, chain: &Actor) -> Option<Measure> {
        if self.is_empty() {
            return None;
        }
        let by_scope = self.by_scope.read().unwrap_or_else(PoisonError::into_inner);
        scopes_of(chain)
            .filter_map(|scope| by_scope.get(&scope))
            .flatten()
            .max_by_key(|measure| measure.kind)
            .cloned()
    }

    /// Changes from now on. A subscriber that falls more than 1,024
    /// changes behind misses the oldest (`RecvError::Lagged`) and should
    /// re-read [`Containment::list`].
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Replaces every measure in force with `measures` (a copy of another
    /// process's, fetched again), without telling subscribers.
    pub fn replace_all(&self, measures: impl IntoIterator<Item = Measure>) {
        let mut fresh = HashMap::new();
        let count = add_new(&mut fresh, measures);
        let mut by_scope = self
            .by_scope
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *by_scope = fresh;
        self.count.store(count, Ordering::Release);
    }

    /// Puts `measures` back in force (kept from before a restart), without
    /// telling subscribers; how many were not already.
    pub fn restore(&self, measures: impl IntoIterator<Item = Measure>) -> usize {
        let mut by_scope = self
            .by_scope
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let restored = add_new(&mut by_scope, measures);
        self.count.fetch_add(restored, Ordering::Release);
        restored
    }
}

/// Adds to `by_scope` each of `measures` whose id, or whose kind over its
/// scope, is not there yet; how many were added.
fn add_new(
    by_scope: &mut HashMap<Scope, Vec<Measure>>,
    measures: impl IntoIterator<Item = Measure>,
) -> usize {
    let mut added = 0;
    for measure in measures {
        let kept = by_scope.entry(measure.scope.clone()).or_default();
        if !kept
            .iter()
            .any(|m| m.id == measure.id || m.kind == measure.kind)
        {
            kept.push(measure);
            added += 1;
        }
    }
    added
}

/// The decide stage enforcing what is in force: a killed run's calls get
/// `kill`, a quarantined identity's `quarantine` (refused), a held run's
/// `require_approval`. Combine it with the policies (`Strictest`).
#[derive(Debug, Clone)]
pub struct Contained(pub std::sync::Arc<Containment>);

impl Decide for Contained {
    fn decide(&self, event: &RuntimeEvent, _signals: &[Signal]) -> Decision {
        match self.0.check(&event.actor) {
            None => Decision::allow(),
            Some(measure) => Decision {
                verdict: measure.kind.verdict(),
                reasons: vec![Reason {
                    source: ReasonSource::Containment,
                    id: format!("containment.{}", measure.kind.as_str()),
                    message: format!(
                        "{} {} by {}: {}",
                        measure.scope,
                        match measure.kind {
                            MeasureKind::Kill => "was killed",
                            MeasureKind::Quarantine => "is quarantined",
                            MeasureKind::Hold => "is held for approval",
                        },
                        measure.by,
                        measure.reason
                    ),
                }],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_event::{Credential, CredentialKind, Principal};

    fn agent(id: &str, run: &str) -> Principal {
        Principal {
            kind: PrincipalKind::Agent,
            id: id.into(),
            name: None,
            version: None,
            run_id: Some(run.into()),
        }
    }

    fn chain(runs: &[(&str, &str)]) -> Actor {
        let mut agents: Vec<Principal> = runs.iter().map(|(id, run)| agent(id, run)).collect();
        let current = agents.pop().unwrap();
        Actor {
            root: Some(Principal {
                kind: PrincipalKind::Human,
                id: "alice@example.com".into(),
                name: None,
                version: None,
                run_id: None,
            }),
            agents,
            current,
            credential: Some(Credential {
                kind: CredentialKind::CustodyToken,
                id: "tok-1".into(),
                issuer: None,
            }),
        }
    }

    #[test]
    fn a_killed_run_covers_its_descendants_and_no_sibling() {
        let containment = Containment::new();
        let (kill, fresh) = containment.apply(
            MeasureKind::Kill,
            Scope::Run("run-1".into()),
            "spawn storm",
            "playbook:p",
            None,
        );
        assert!(fresh);
        let parent = chain(&[("planner", "run-1")]);
        let child = chain(&[("planner", "run-1"), ("coder", "run-2")]);
        let sibling = chain(&[("planner", "run-9"), ("coder", "run-2b")]);
        assert_eq!(containment.check(&parent).unwrap().id, kill.id);
        assert_eq!(containment.check(&child).unwrap().id, kill.id);
        assert!(!Scope::Run("run-1".into()).covers(&sibling));
        let mut sibling_cred = sibling.clone();
        sibling_cred.credential = None;
        assert!(containment.check(&sibling_cred).is_none());
        // Applying it again changes nothing.
        let (again, fresh) = containment.apply(
            MeasureKind::Kill,
            Scope::Run("run-1".into()),
            "again",
            "playbook:p",
            None,
        );
        assert!(!fresh);
        assert_eq!(again.id, kill.id);
        assert_eq!(containment.len(), 1);
        // Lifted, nothing is in force.
        assert_eq!(containment.lift(&kill.id).unwrap().id, kill.id);
        assert!(containment.check(&child).is_none());
        assert!(containment.lift(&kill.id).is_none());
    }

    #[test]
    fn the_strongest_measure_wins_and_measures_are_restored_once() {
        let containment = Containment::new();
        containment.apply(
            MeasureKind::Hold,
            Scope::Run("run-2".into()),
            "blast radius",
            "playbook:p",
            None,
        );
        containment.apply(
            MeasureKind::Quarantine,
            Scope::Agent("coder".into()),
            "baseline",
            "api:oncall",
            None,
        );
        let child = chain(&[("planner", "run-1"), ("coder", "run-2")]);
        assert_eq!(
            containment.check(&child).unwrap().kind,
            MeasureKind::Quarantine
        );
        let restored = Containment::new();
        assert_eq!(restored.restore(containment.list()), 2);
        assert_eq!(restored.list(), containment.list());
        assert_eq!(restored.restore(containment.list()), 0);
        // A credential and a principal are scopes too.
        restored.apply(
            MeasureKind::Quarantine,
            "credential:tok-1".parse().unwrap(),
            "leaked",
            "api:oncall",
            None,
        );
        let other = chain(&[("reviewer", "run-5")]);
        assert_eq!(
            restored.check(&other).unwrap().scope,
            Scope::Credential("tok-1".into())
        );
        assert!(
            "team:x"
                .parse::<Scope>()
                .unwrap_err()
                .contains("unknown scope kind")
        );
    }

    #[test]
    fn subscribers_hear_of_each_change() {
        let containment = Containment::new();
        let mut changes = containment.subscribe();
        let (measure, _) = containment.apply(
            MeasureKind::Kill,
            Scope::Principal("alice@example.com".into()),
            "why",
            "api:x",
            None,
        );
        containment.lift(&measure.id);
        assert_eq!(
            changes.try_recv().unwrap(),
            Change::Applied(measure.clone())
        );
        assert_eq!(changes.try_recv().unwrap(), Change::Lifted(measure));
    }
}
