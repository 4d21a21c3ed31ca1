//! Thresholds: counters kept per run, agent type, human or team, over a
//! sliding window, and a finding when one goes past its limit.
//!
//! ```toml
//! [[thresholds]]
//! name = "coder-reach"            # the finding's analytic: threshold.coder-reach
//! metric = "distinct_resources"   # see Metric
//! limit = 50                      # a finding once the count is above it
//! window = "10m"                  # sliding; depth ignores it
//! per = "run"                     # run | agent_type | human | team
//! agent_type = "coder"            # optional scope: the actor's agent type,
//! human = "alice@example.com"     #   the chain's root,
//! team = "platform"               #   or a root in `[teams]`
//! severity = "high"
//!
//! [teams]
//! platform = ["alice@example.com", "bob@example.com"]
//! ```
//!
//! Counting is incremental and bounded: each (threshold, group) keeps at
//! most `limit + 1` timestamps or distinct values, and at most
//! `max_groups` groups live per threshold (the least recently used
//! evicted first, and counted). While a count stays above its limit, the
//! finding stays open: further events are counted (`refired`), not written.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use custody_engine::{Detect, Signal};
use custody_event::{Analytic, EventId, EventKind, FindingKind, RuntimeEvent, Severity};
use custody_graph::{Sensitivity, Verb};
use hashlink::LruCache;
use serde::Deserialize;

use crate::findings::{Draft, OpenFindings, field};
use crate::view::{agent_type_of, run_of};

/// What a threshold counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Distinct `target.resource` values in the window.
    DistinctResources,
    /// Distinct `target.system` values in the window.
    DistinctSystems,
    /// Writes (or creations) of sensitive resources in the window, by the
    /// server's sensitivity patterns and tags.
    SensitiveWrites,
    /// The depth of the chain: agents between the root and the actor.
    Depth,
    /// Sub-agents spawned (`agent_spawn` events) in the window.
    FanOut,
    /// Credentials created or privileges changed (`privilege_change`
    /// events, and creations of credential resources) in the window.
    CredentialsCreated,
    /// Calls (`tool_call` and `mcp_request` events) in the window.
    CallRate,
}

impl Metric {
    fn as_str(self) -> &'static str {
        match self {
            Metric::DistinctResources => "distinct resources",
            Metric::DistinctSystems => "distinct systems",
            Metric::SensitiveWrites => "sensitive writes",
            Metric::Depth => "chain depth",
            Metric::FanOut => "sub-agents spawned",
            Metric::CredentialsCreated => "credentials created or privileges changed",
            Metric::CallRate => "calls",
        }
    }
}

/// What a threshold's counters are kept per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// Each run.
    #[default]
    Run,
    /// Each agent type.
    AgentType,
    /// Each human (the chain's root).
    Human,
    /// Each team of `[teams]`.
    Team,
}

/// One `[[thresholds]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Its name; the finding's analytic is `threshold.<name>`.
    pub name: String,
    /// What it counts.
    pub metric: Metric,
    /// The count it may reach; above it, a finding.
    pub limit: u64,
    /// The sliding window, `30s`, `10m`, `1h`, `1d` (default 10m).
    #[serde(default)]
    pub window: Option<String>,
    /// What the counters are kept per.
    #[serde(default)]
    pub per: Per,
    /// Only events by this agent type.
    #[serde(default)]
    pub agent_type: Option<String>,
    /// Only events whose chain has this root.
    #[serde(default)]
    pub human: Option<String>,
    /// Only events whose chain's root is in this team.
    #[serde(default)]
    pub team: Option<String>,
    /// The finding's severity (default medium).
    #[serde(default)]
    pub severity: Option<Severity>,
}

/// Reads `30s`, `10m`, `2h`, `1d` as seconds.
pub fn parse_window(text: &str) -> Result<i64, String> {
    let bad = || format!("\"{text}\" is not a window such as 30s, 10m, 2h or 1d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match number.checked_mul(unit) {
        Some(secs) if secs > 0 => Ok(secs),
        _ => Err(bad()),
    }
}

/// A threshold, checked.
#[derive(Debug)]
struct Threshold {
    config: ThresholdConfig,
    window_ms: i64,
    analytic: Arc<Analytic>,
    groups: Mutex<LruCache<String, Counter>>,
}

/// One group's window.
#[derive(Debug, Default)]
struct Counter {
    /// When each counted event happened (ms), oldest first, with its id.
    times: VecDeque<(i64, EventId)>,
    /// For distinct metrics: each value and when it was last seen (ms).
    values: HashMap<String, i64>,
}

/// The thresholds stage.
#[derive(Debug)]
pub struct Thresholds {
    thresholds: Vec<Threshold>,
    teams: BTreeMap<String, Vec<String>>,
    sensitivity: Sensitivity,
    open: Arc<OpenFindings>,
    /// Groups evicted to stay within `max_groups`, since start.
    pub groups_evicted: AtomicU64,
}

/// The events a finding of a threshold names, at most.
const MAX_EVENTS: usize = 32;

impl Thresholds {
    /// The stage for `configs`, with `teams`, reading sensitivity as
    /// `sensitivity` does, keeping at most `max_groups` groups per
    /// threshold, opening findings in `open`. Every error names the
    /// threshold.
    pub fn new(
        configs: Vec<ThresholdConfig>,
        teams: BTreeMap<String, Vec<String>>,
        sensitivity: Sensitivity,
        max_groups: usize,
        open: Arc<OpenFindings>,
    ) -> Result<Thresholds, String> {
        let mut thresholds = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (index, config) in configs.into_iter().enumerate() {
            let at = format!("thresholds[{index}] (`{}`)", config.name);
            if config.name.is_empty() {
                return Err(format!("thresholds[{index}]: name: must not be empty"));
            }
            if !names.insert(config.name.clone()) {
                return Err(format!("{at}: name: used by an earlier threshold"));
            }
            if let Some(team) = &config.team
                && !teams.contains_key(team)
            {
                return Err(format!("{at}: team: `{team}` is not in [teams]"));
            }
            if config.per == Per::Team && config.team.is_none() && teams.is_empty() {
                return Err(format!("{at}: per: `team` needs [teams]"));
            }
            let window_ms = match &config.window {
                Some(window) => {
                    parse_window(window).map_err(|why| format!("{at}: window: {why}"))?
                }
                None => 600,
            } * 1000;
            let analytic = Arc::new(Analytic {
                id: format!("threshold.{}", config.name),
                title: format!(
                    "Threshold {}: more than {} {} in {}",
                    config.name,
                    config.limit,
                    config.metric.as_str(),
                    config.window.as_deref().unwrap_or("10m")
                ),
                tags: Vec::new(),
            });
            thresholds.push(Threshold {
                config,
                window_ms,
                analytic,
                groups: Mutex::new(LruCache::new(max_groups.max(1))),
            });
        }
        Ok(Thresholds {
            thresholds,
            teams,
            sensitivity,
            open,
            groups_evicted: AtomicU64::new(0),
        })
    }

    /// How many thresholds are configured.
    pub fn len(&self) -> usize {
        self.thresholds.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.thresholds.is_empty()
    }

    fn team_of(&self, root: Option<&str>) -> Option<&str> {
        let root = root?;
        self.teams
            .iter()
            .find(|(_, members)| members.iter().any(|m| m == root))
            .map(|(team, _)| team.as_str())
    }

    /// Whether `threshold` applies to `event`, and the group it counts in.
    fn group(&self, threshold: &Threshold, event: &RuntimeEvent) -> Option<(String, String)> {
        let config = &threshold.config;
        let agent_type = agent_type_of(event);
        let root = event.actor.root_id();
        if let Some(wanted) = &config.agent_type
            && agent_type.as_deref() != Some(wanted.as_str())
            && event.actor.current.id != *wanted
        {
            return None;
        }
        if let Some(wanted) = &config.human
            && root != Some(wanted.as_str())
        {
            return None;
        }
        if let Some(team) = &config.team {
            let members = self.teams.get(team)?;
            if !root.is_some_and(|root| members.iter().any(|m| m == root)) {
                return None;
            }
        }
        let (name, value) = match config.per {
            Per::Run => ("chain.run", run_of(event)?.to_owned()),
            Per::AgentType => ("chain.agent_type", agent_type?.into_owned()),
            Per::Human => ("chain.root", root?.to_owned()),
            Per::Team => (
                "team",
                config
                    .team
                    .clone()
                    .or_else(|| self.team_of(root).map(str::to_owned))?,
            ),
        };
        Some((name.to_owned(), value))
    }

    /// What `event` adds to a counter of `metric`: a count, a distinct
    /// value, or (for depth) the value itself.
    fn contribution(&self, metric: Metric, event: &RuntimeEvent) -> Option<Contribution> {
        let target = &event.target;
        match metric {
            Metric::DistinctResources => target.resource.clone().map(Contribution::Value),
            Metric::DistinctSystems => target.system.clone().map(Contribution::Value),
            Metric::SensitiveWrites => {
                let resource = target.resource.as_deref()?;
                let verb = match (Verb::of(&event.action), &target.tool) {
                    (Verb::Other, Some(tool)) => Verb::of(tool),
                    (verb, _) => verb,
                };
                let writes = matches!(verb, Verb::Write | Verb::Create);
                let sensitive =
                    self.sensitivity.is_sensitive(resource) || self.sensitivity.tags(event);
                (writes && sensitive).then_some(Contribution::Count)
            }
            Metric::Depth => Some(Contribution::Level(event.actor.depth() as u64)),
            Metric::FanOut => (event.kind == EventKind::AgentSpawn).then_some(Contribution::Count),
            Metric::CredentialsCreated => {
                let created_credential =
                    custody_graph::is_credential(target.resource_type.as_deref())
                        && matches!(Verb::of(&event.action), Verb::Create);
                (event.kind == EventKind::PrivilegeChange || created_credential)
                    .then_some(Contribution::Count)
            }
            Metric::CallRate => matches!(event.kind, EventKind::ToolCall | EventKind::McpRequest)
                .then_some(Contribution::Count),
        }
    }
}

enum Contribution {
    Count,
    Value(String),
    Level(u64),
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

impl Detect for Thresholds {
    fn detect(&self, event: &RuntimeEvent) -> Vec<Signal> {
        let mut signals = Vec::new();
        let now = millis(event.observed_at);
        for threshold in &self.thresholds {
            let config = &threshold.config;
            let Some(contribution) = self.contribution(config.metric, event) else {
                continue;
            };
            let Some((group_field, group_value)) = self.group(threshold, event) else {
                continue;
            };
            let (count, events, first) = match contribution {
                Contribution::Level(level) => (level, vec![event.id], now),
                contribution => {
                    let mut groups = threshold.groups.lock().unwrap_or_else(|e| e.into_inner());
                    if groups.get(&group_value).is_none() {
                        if groups.len() >= groups.capacity() {
                            self.groups_evicted.fetch_add(1, Ordering::Relaxed);
                        }
                        groups.insert(group_value.clone(), Counter::default());
                    }
                    let Some(counter) = groups.get_mut(&group_value) else {
                        continue;
                    };
                    let since = now - threshold.window_ms;
                    while counter.times.front().is_some_and(|(t, _)| *t < since) {
                        counter.times.pop_front();
                    }
                    counter.times.push_back((now, event.id));
                    // Enough to say the limit is passed, and the events.
                    let keep = usize::try_from(config.limit)
                        .unwrap_or(usize::MAX)
                        .saturating_add(1)
                        .max(MAX_EVENTS);
                    while counter.times.len() > keep {
                        counter.times.pop_front();
                    }
                    let count = match contribution {
                        Contribution::Value(value) => {
                            counter.values.retain(|_, seen| *seen >= since);
                            counter.values.insert(value, now);
                            // Bounded like the times: past the limit, the
                            // stalest values go.
                            let cap = usize::try_from(config.limit)
                                .unwrap_or(usize::MAX)
                                .saturating_add(1);
                            if counter.values.len() > cap {
                                let mut by_age: Vec<(String, i64)> =
                                    counter.values.drain().collect();
                                by_age.sort_by_key(|(_, seen)| std::cmp::Reverse(*seen));
                                by_age.truncate(cap);
                                counter.values.extend(by_age);
                            }
                            counter.values.len() as u64
                        }
                        _ => counter.times.len() as u64,
                    };
                    let events: Vec<EventId> = counter
                        .times
                        .iter()
                        .rev()
                        .take(MAX_EVENTS)
                        .rev()
                        .map(|(_, id)| *id)
                        .collect();
                    let first = counter.times.front().map_or(now, |(t, _)| *t);
                    (count, events, first)
                }
            };
            if count <= config.limit {
                continue;
            }
            let first_seen = DateTime::from_timestamp_millis(first).unwrap_or(event.observed_at);
            let draft = Draft {
                kind: FindingKind::Threshold,
                analytic: threshold.analytic.clone(),
                severity: config.severity.unwrap_or(Severity::Medium),
                group: vec![field(&group_field, &group_value)],
                events,
                first_seen,
                detail: format!(
                    ": {count} {} (limit {})",
                    config.metric.as_str(),
                    config.limit
                ),
            };
            // Above its limit, every further event would say the same: one
            // finding a window, the rest counted.
            signals.extend(self.open.signal_once(event, draft));
        }
        signals
    }

    /// Counting is the point of a threshold; a preview counts nothing.
    fn peek(&self, _event: &RuntimeEvent) -> Vec<Signal> {
        Vec::new()
    }
}
