//! Baselines: what each agent type does, learned, and what it does that it
//! never did.
//!
//! An agent type (its id, with its version when it has one: `coder@2`)
//! learns from its first event for a window of event time, and for at
//! least a number of events: the tools, servers, resources and systems it
//! uses, the consecutive pairs of tools within a run, and the most calls a
//! run of it made in one minute. Once learned it is enforced:
//!
//! - `baseline.first_seen`: a tool, server, resource, system or transition
//!   the type never used while learning;
//! - `baseline.rate`: a run calling more often in one minute than the
//!   learned peak times `rate_factor` (and at least 5 calls more).
//!
//! Nothing new is learned once enforced, so drift is reported rather than
//! absorbed; a reset starts learning again. Memory is bounded: at most
//! `max_types` types (least recently active forgotten first), `max_values`
//! values per dimension (a dimension that overflows while learning is
//! marked truncated and reports no first_seen), and `max_runs` runs of
//! live state. Baselines are plain data ([`TypeBaseline`]) for the store to
//! keep across restarts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, Utc};
use custody_engine::{Detect, Signal};
use custody_event::{Analytic, EventKind, FindingKind, RuntimeEvent, Severity};
use hashlink::LruCache;
use serde::{Deserialize, Serialize};

use crate::findings::{Draft, OpenFindings, field};
use crate::view::{agent_type_of, run_of};

/// How baselines learn and what they hold.
#[derive(Debug, Clone)]
pub struct BaselineConfig {
    /// Event time a type learns for, from its first event.
    pub learning: Duration,
    /// Events a type must have learned from before it is enforced.
    pub min_events: u64,
    /// A run calling more than the learned peak times this, in one
    /// minute, is a `rate` signal.
    pub rate_factor: f64,
    /// Values kept per dimension per type.
    pub max_values: usize,
    /// Agent types kept.
    pub max_types: usize,
    /// Runs whose last tool and current minute are kept.
    pub max_runs: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            learning: Duration::days(7),
            min_events: 100,
            rate_factor: 3.0,
            max_values: 10_000,
            max_types: 10_000,
            max_runs: 100_000,
        }
    }
}

/// What one agent type did while learning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeBaseline {
    /// The agent type.
    pub agent_type: String,
    /// When it started learning (its first event's time).
    pub learning_since: DateTime<Utc>,
    /// When it was enforced, once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_since: Option<DateTime<Utc>>,
    /// Events learned from.
    pub events: u64,
    /// Tools called.
    pub tools: BTreeSet<String>,
    /// MCP servers used.
    pub servers: BTreeSet<String>,
    /// Resources touched.
    pub resources: BTreeSet<String>,
    /// Systems used.
    pub systems: BTreeSet<String>,
    /// Consecutive tools within a run, `a -> b`.
    pub transitions: BTreeSet<String>,
    /// The most calls one run made in one minute.
    pub peak_calls_per_minute: u64,
    /// Dimensions that held `max_values` values before learning ended:
    /// they report no first_seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,
}

impl TypeBaseline {
    fn new(agent_type: String, since: DateTime<Utc>) -> TypeBaseline {
        TypeBaseline {
            agent_type,
            learning_since: since,
            enforced_since: None,
            events: 0,
            tools: BTreeSet::new(),
            servers: BTreeSet::new(),
            resources: BTreeSet::new(),
            systems: BTreeSet::new(),
            transitions: BTreeSet::new(),
            peak_calls_per_minute: 0,
            truncated: Vec::new(),
        }
    }

    fn dimension(&mut self, name: Dimension) -> &mut BTreeSet<String> {
        match name {
            Dimension::Tool => &mut self.tools,
            Dimension::Server => &mut self.servers,
            Dimension::Resource => &mut self.resources,
            Dimension::System => &mut self.systems,
            Dimension::Transition => &mut self.transitions,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dimension {
    Tool,
    Server,
    Resource,
    System,
    Transition,
}

impl Dimension {
    fn as_str(self) -> &'static str {
        match self {
            Dimension::Tool => "tool",
            Dimension::Server => "server",
            Dimension::Resource => "resource",
            Dimension::System => "system",
            Dimension::Transition => "transition",
        }
    }
}

/// A run's live state.
#[derive(Debug, Default, Clone)]
struct RunState {
    last_tool: Option<String>,
    minute: i64,
    calls: u64,
}

#[derive(Debug)]
struct State {
    types: LruCache<String, TypeBaseline>,
    runs: LruCache<String, RunState>,
    /// Types changed since the last [`Baselines::take_changed`].
    changed: BTreeSet<String>,
}

/// The baselines stage. Its state is split in shards by agent type (a run
/// has one type), so that callers on several threads rarely wait on one
/// another.
#[derive(Debug)]
pub struct Baselines {
    shards: Vec<Mutex<State>>,
    config: BaselineConfig,
    open: Arc<OpenFindings>,
    first_seen: Arc<Analytic>,
    rate: Arc<Analytic>,
    /// Types forgotten to stay within `max_types`, since start.
    pub types_evicted: AtomicU64,
}

/// Shards of the state, at most.
const SHARDS: usize = 16;

const FIRST_SEEN: &str = "baseline.first_seen";
const RATE: &str = "baseline.rate";

impl Baselines {
    /// Empty baselines, opening findings in `open`.
    pub fn new(config: BaselineConfig, open: Arc<OpenFindings>) -> Baselines {
        // Each shard holds its share of the caps, so that together they
        // hold no more than the caps.
        let count = SHARDS.min(config.max_types.max(1));
        let share = |cap: usize| (cap / count).max(1);
        let shards = (0..count)
            .map(|_| {
                Mutex::new(State {
                    types: LruCache::new(share(config.max_types)),
                    runs: LruCache::new(share(config.max_runs)),
                    changed: BTreeSet::new(),
                })
            })
            .collect();
        let tags = vec!["owasp.asi10".into(), "nist_csf.de.ae-02".into()];
        Baselines {
            shards,
            config,
            open,
            first_seen: Arc::new(Analytic {
                id: FIRST_SEEN.into(),
                title: "Agent type used something it never used while learning".into(),
                tags: tags.clone(),
            }),
            rate: Arc::new(Analytic {
                id: RATE.into(),
                title: "Agent run calling far faster than its type learned".into(),
                tags,
            }),
            types_evicted: AtomicU64::new(0),
        }
    }

    fn shard(&self, agent_type: &str) -> std::sync::MutexGuard<'_, State> {
        use std::hash::BuildHasher as _;
        let hash = foldhash::fast::FixedState::with_seed(0).hash_one(agent_type);
        // There is at least one shard, and the index is below their count.
        let index = (hash % self.shards.len() as u64) as usize;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn each_shard(&self) -> impl Iterator<Item = std::sync::MutexGuard<'_, State>> {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back baselines kept from before.
    pub fn restore(&self, baselines: impl IntoIterator<Item = TypeBaseline>) {
        for baseline in baselines {
            let mut shard = self.shard(&baseline.agent_type);
            shard.types.insert(baseline.agent_type.clone(), baseline);
        }
    }

    /// One type's baseline.
    pub fn get(&self, agent_type: &str) -> Option<TypeBaseline> {
        self.shard(agent_type).types.peek(agent_type).cloned()
    }

    /// Every type's baseline, by type.
    pub fn list(&self) -> Vec<TypeBaseline> {
        let mut all: Vec<TypeBaseline> = self
            .each_shard()
            .flat_map(|shard| {
                shard
                    .types
                    .iter()
                    .map(|(_, b)| b.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.agent_type.cmp(&b.agent_type));
        all
    }

    /// Forgets a type's baseline: it learns again from its next event.
    pub fn reset(&self, agent_type: &str) -> bool {
        let mut shard = self.shard(agent_type);
        shard.changed.remove(agent_type);
        shard.types.remove(agent_type).is_some()
    }

    /// The baselines changed since the last call, to be kept.
    pub fn take_changed(&self) -> Vec<TypeBaseline> {
        self.each_shard()
            .flat_map(|mut shard| {
                let changed = std::mem::take(&mut shard.changed);
                changed
                    .into_iter()
                    .filter_map(|t| shard.types.peek(&t).cloned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn learn_or_check(&self, event: &RuntimeEvent) -> Vec<Draft> {
        let Some(agent_type) = agent_type_of(event) else {
            return Vec::new();
        };
        let agent_type: &str = &agent_type;
        let at = event.observed_at;
        let call = matches!(event.kind, EventKind::ToolCall | EventKind::McpRequest);
        let mut shard = self.shard(agent_type);
        let state = &mut *shard;
        // The run: its previous tool, and its calls this minute.
        let run = run_of(event);
        let (previous, calls) = match run {
            Some(run) => {
                if state.runs.get(run).is_none() {
                    state.runs.insert(run.to_owned(), RunState::default());
                }
                let minute = at.timestamp().div_euclid(60);
                match state.runs.get_mut(run) {
                    Some(live) => {
                        if live.minute != minute {
                            live.minute = minute;
                            live.calls = 0;
                        }
                        if call {
                            live.calls += 1;
                        }
                        let previous = match (&event.target.tool, event.kind) {
                            (Some(tool), EventKind::ToolCall) => {
                                if live.last_tool.as_deref() == Some(tool.as_str()) {
                                    live.last_tool.clone()
                                } else {
                                    live.last_tool.replace(tool.clone())
                                }
                            }
                            _ => None,
                        };
                        (previous, live.calls)
                    }
                    None => (None, 0),
                }
            }
            None => (None, 0),
        };
        let transition = match (previous, &event.target.tool) {
            (Some(previous), Some(tool)) => Some(format!("{previous} -> {tool}")),
            _ => None,
        };
        let values: [(Dimension, Option<&str>); 5] = [
            (Dimension::Tool, event.target.tool.as_deref()),
            (Dimension::Server, event.target.server.as_deref()),
            (Dimension::Resource, event.target.resource.as_deref()),
            (Dimension::System, event.target.system.as_deref()),
            (Dimension::Transition, transition.as_deref()),
        ];
        if state.types.get(agent_type).is_none() {
            if state.types.len() >= state.types.capacity() {
                self.types_evicted.fetch_add(1, Ordering::Relaxed);
            }
            state.types.insert(
                agent_type.to_owned(),
                TypeBaseline::new(agent_type.to_owned(), at),
            );
        }
        let config = &self.config;
        let Some(baseline) = state.types.get_mut(agent_type) else {
            return Vec::new();
        };
        if baseline.enforced_since.is_none()
            && at >= baseline.learning_since + config.learning
            && baseline.events >= config.min_events
        {
            baseline.enforced_since = Some(at);
        }
        let mut drafts = Vec::new();
        if baseline.enforced_since.is_none() {
            baseline.events += 1;
            for (dimension, value) in values {
                let Some(value) = value else { continue };
                let set = baseline.dimension(dimension);
                if set.contains(value) {
                    continue;
                }
                if set.len() < config.max_values {
                    set.insert(value.to_owned());
                } else if !baseline.truncated.iter().any(|d| d == dimension.as_str()) {
                    baseline.truncated.push(dimension.as_str().to_owned());
                }
            }
            baseline.peak_calls_per_minute = baseline.peak_calls_per_minute.max(calls);
            if !state.changed.contains(agent_type) {
                state.changed.insert(agent_type.to_owned());
            }
            return drafts;
        }
        for (dimension, value) in values {
            let Some(value) = value else { continue };
            if baseline.truncated.iter().any(|d| d == dimension.as_str())
                || baseline.dimension(dimension).contains(value)
            {
                continue;
            }
            drafts.push(Draft {
                kind: FindingKind::Baseline,
                analytic: self.first_seen.clone(),
                severity: Severity::Low,
                group: vec![
                    field("chain.agent_type", agent_type),
                    field(dimension.as_str(), value),
                ],
                events: vec![event.id],
                first_seen: at,
                detail: format!(
                    ": {} `{value}` was never used by {agent_type} in {} events learned from {}",
                    dimension.as_str(),
                    baseline.events,
                    baseline.learning_since.to_rfc3339(),
                ),
            });
        }
        let peak = baseline.peak_calls_per_minute;
        let limit = ((peak as f64) * config.rate_factor).ceil() as u64;
        let limit = limit.max(peak + 5);
        if call && calls > limit {
            drafts.push(Draft {
                kind: FindingKind::Baseline,
                analytic: self.rate.clone(),
                severity: Severity::Medium,
                group: vec![
                    field("chain.agent_type", agent_type),
                    field("chain.run", run.unwrap_or("")),
                ],
                events: vec![event.id],
                first_seen: at,
                detail: format!(
                    ": {calls} calls this minute; {agent_type} peaked at {peak} a minute while learning (limit {limit})"
                ),
            });
        }
        drafts
    }
}

impl Detect for Baselines {
    fn detect(&self, event: &RuntimeEvent) -> Vec<Signal> {
        // A never-used value links each use to its finding; a run past its
        // rate says so once a window.
        self.learn_or_check(event)
            .into_iter()
            .filter_map(|draft| match draft.analytic.id.as_str() {
                RATE => self.open.signal_once(event, draft),
                _ => Some(self.open.signal(event, draft)),
            })
            .collect()
    }

    /// Learning is counting; a preview counts nothing.
    fn peek(&self, _event: &RuntimeEvent) -> Vec<Signal> {
        Vec::new()
    }
}
