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

/// The baselines stage.
#[derive(Debug)]
pub struct Baselines {
    state: Mutex<State>,
    config: BaselineConfig,
    open: Arc<OpenFindings>,
    /// Types forgotten to stay within `max_types`, since start.
    pub types_evicted: AtomicU64,
}

const FIRST_SEEN: &str = "baseline.first_seen";
const RATE: &str = "baseline.rate";

impl Baselines {
    /// Empty baselines, opening findings in `open`.
    pub fn new(config: BaselineConfig, open: Arc<OpenFindings>) -> Baselines {
        Baselines {
            state: Mutex::new(State {
                types: LruCache::new(config.max_types.max(1)),
                runs: LruCache::new(config.max_runs.max(1)),
                changed: BTreeSet::new(),
            }),
            config,
            open,
            types_evicted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts back baselines kept from before.
    pub fn restore(&self, baselines: impl IntoIterator<Item = TypeBaseline>) {
        let mut state = self.lock();
        for baseline in baselines {
            state.types.insert(baseline.agent_type.clone(), baseline);
        }
    }

    /// One type's baseline.
    pub fn get(&self, agent_type: &str) -> Option<TypeBaseline> {
        self.lock().types.peek(agent_type).cloned()
    }

    /// Every type's baseline, by type.
    pub fn list(&self) -> Vec<TypeBaseline> {
        let state = self.lock();
        let mut all: Vec<TypeBaseline> = state.types.iter().map(|(_, b)| b.clone()).collect();
        all.sort_by(|a, b| a.agent_type.cmp(&b.agent_type));
        all
    }

    /// Forgets a type's baseline: it learns again from its next event.
    pub fn reset(&self, agent_type: &str) -> bool {
        let mut state = self.lock();
        state.changed.remove(agent_type);
        state.types.remove(agent_type).is_some()
    }

    /// The baselines changed since the last call, to be kept.
    pub fn take_changed(&self) -> Vec<TypeBaseline> {
        let mut state = self.lock();
        let changed = std::mem::take(&mut state.changed);
        changed
            .into_iter()
            .filter_map(|t| state.types.peek(&t).cloned())
            .collect()
    }

    fn learn_or_check(&self, event: &RuntimeEvent) -> Vec<Draft> {
        let Some(agent_type) = agent_type_of(event).map(|t| t.into_owned()) else {
            return Vec::new();
        };
        let at = event.observed_at;
        let call = matches!(event.kind, EventKind::ToolCall | EventKind::McpRequest);
        let mut state = self.lock();
        // The run: its previous tool, and its calls this minute.
        let run = run_of(event).map(str::to_owned);
        let (previous, calls) = match &run {
            Some(run) => {
                if state.runs.get(run).is_none() {
                    state.runs.insert(run.clone(), RunState::default());
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
                                live.last_tool.replace(tool.clone())
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
        let mut values: Vec<(Dimension, String)> = [
            (Dimension::Tool, &event.target.tool),
            (Dimension::Server, &event.target.server),
            (Dimension::Resource, &event.target.resource),
            (Dimension::System, &event.target.system),
        ]
        .into_iter()
        .filter_map(|(dimension, value)| value.clone().map(|v| (dimension, v)))
        .collect();
        if let (Some(previous), Some(tool)) = (previous, &event.target.tool) {
            values.push((Dimension::Transition, format!("{previous} -> {tool}")));
        }
        if state.types.get(&agent_type).is_none() {
            if state.types.len() >= self.config.max_types.max(1) {
                self.types_evicted.fetch_add(1, Ordering::Relaxed);
            }
            state.types.insert(
                agent_type.clone(),
                TypeBaseline::new(agent_type.clone(), at),
            );
        }
        let config = &self.config;
        let Some(baseline) = state.types.get_mut(&agent_type) else {
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
                let full = baseline.dimension(dimension).len() >= config.max_values;
                if !full {
                    baseline.dimension(dimension).insert(value);
                } else if !baseline.dimension(dimension).contains(&value)
                    && !baseline.truncated.iter().any(|d| d == dimension.as_str())
                {
                    baseline.truncated.push(dimension.as_str().to_owned());
                }
            }
            baseline.peak_calls_per_minute = baseline.peak_calls_per_minute.max(calls);
            state.changed.insert(agent_type);
            return drafts;
        }
        for (dimension, value) in values {
            if baseline.truncated.iter().any(|d| d == dimension.as_str())
                || baseline.dimension(dimension).contains(&value)
            {
                continue;
            }
            drafts.push(Draft {
                kind: FindingKind::Baseline,
                analytic: Arc::new(Analytic {
                    id: FIRST_SEEN.into(),
                    title: "Agent type used something it never used while learning".into(),
                    tags: vec!["owasp.asi10".into(), "nist_csf.de.ae-02".into()],
                }),
                severity: Severity::Low,
                group: vec![
                    field("chain.agent_type", &agent_type),
                    field(dimension.as_str(), &value),
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
                analytic: Arc::new(Analytic {
                    id: RATE.into(),
                    title: "Agent run calling far faster than its type learned".into(),
                    tags: vec!["owasp.asi10".into(), "nist_csf.de.ae-02".into()],
                }),
                severity: Severity::Medium,
                group: vec![
                    field("chain.agent_type", &agent_type),
                    field("chain.run", run.as_deref().unwrap_or("")),
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
        self.learn_or_check(event)
            .into_iter()
            .map(|draft| self.open.signal(event, draft))
            .collect()
    }

    /// Learning is counting; a preview counts nothing.
    fn peek(&self, _event: &RuntimeEvent) -> Vec<Signal> {
        Vec::new()
    }
}
