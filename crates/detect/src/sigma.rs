//! The Sigma detect stage: rules routed by log source, correlations over
//! Custody's chain keys, findings de-duplicated per rule and group.
//!
//! Each rule's log source decides which events it sees and through which
//! face ([`crate::view`]): `product: aws` / `okta` / `github` rules read
//! the raw records of their source; every other rule reads the Custody face
//! of the events whose kind (`category`) and source (`service`) it names.
//! The routes are computed once per (event kind, source) pair, so an event
//! costs nothing for rules it cannot match.
//!
//! Detection is stateless and runs on the caller's thread. Only an event
//! that matched a rule a correlation names takes a correlation lock, where
//! rsigma's correlation engine counts it in its groups (read from the
//! Custody face, so `group-by: [chain.run]` works for every source). When
//! every correlation groups by run, the state is split by run over 16
//! engines (`correlation_shards`), each with its own lock. Correlation state is bounded by
//! [`SigmaConfig::max_groups`]; what eviction removes is counted.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use custody_engine::{Detect, Signal};
use custody_event::{
    Analytic, EventId, EventKind, FindingKind, RuntimeEvent, Severity, SourceKind,
};
use rsigma_eval::{
    CorrelationConfig, CorrelationEngine, CorrelationEventMode, EvaluationResult, ResultBody,
};
use rsigma_parser::{CorrelationType, Level, LogSource};

use crate::distinct::{Distinct, Groups};
use crate::findings::{Draft, OpenFindings, event_group, field};
use crate::rules::RuleSet;
use crate::view::{Face, Parsed, run_of};

/// Limits and windows of the Sigma stage.
#[derive(Debug, Clone)]
pub struct SigmaConfig {
    /// Live correlation groups kept, across all correlations; beyond it the
    /// stalest are evicted (and counted). When the state is split by run,
    /// each shard keeps its share, so eviction may start a little before
    /// the total is reached.
    pub max_groups: usize,
    /// A finding's repeats within this many seconds of it, for the same rule
    /// and group, are linked to it rather than opening another.
    pub dedup_window_secs: i64,
    /// Open findings remembered for de-duplication.
    pub max_open_findings: usize,
    /// Events a correlation finding keeps the ids of.
    pub max_finding_events: usize,
    /// Correlation engines the state is split over, by run, when every
    /// correlation groups by run (each compiles the rules correlations
    /// name: one is quicker to build, for a rule's examples).
    pub correlation_shards: usize,
    /// Entries one group keeps within its window (timestamps, or values
    /// for `value_count`); beyond, the oldest go, which can only
    /// under-count. Bounds a busy group's memory and the cost of checking
    /// it.
    pub max_group_entries: usize,
}

impl Default for SigmaConfig {
    fn default() -> Self {
        SigmaConfig {
            max_groups: 1_000_000,
            dedup_window_secs: 600,
            max_open_findings: 100_000,
            max_finding_events: 10,
            max_group_entries: 1000,
            correlation_shards: 16,
        }
    }
}

/// Counters of the Sigma stage, for metrics.
#[derive(Debug, Default)]
pub struct SigmaStats {
    /// Events evaluated.
    pub events: AtomicU64,
    /// Detection rule matches.
    pub matches: AtomicU64,
    /// Correlation firings.
    pub correlations: AtomicU64,
    /// Correlation groups evicted to stay within `max_groups`.
    pub groups_evicted: AtomicU64,
    /// Live correlation groups.
    pub groups: AtomicU64,
}

/// The rules one face of an event of some (kind, source) pairs sees, in an
/// rsigma engine of their own: its inverted index of the values rules
/// require skips the rules an event cannot match.
struct Bucket {
    face: Face,
    engine: rsigma_eval::Engine,
}

/// What a finding needs of a rule.
#[derive(Debug, Clone)]
struct Meta {
    analytic: Arc<Analytic>,
    /// Named by a correlation rsigma counts: its matches go through the
    /// correlation engine.
    correlated: bool,
    /// The `value_count` correlations counted here that name it.
    distinct: Vec<usize>,
    severity: Severity,
    /// A building block of correlations that do not `generate` its
    /// matches: it opens no finding of its own.
    correlation_only: bool,
    /// The distinct events a firing must rest on: a temporal correlation
    /// over several rules is several events, even when one event matches
    /// more than one of its rules.
    min_events: usize,
}

/// The Sigma detect stage.
pub struct Sigma {
    rules: usize,
    buckets: Vec<Bucket>,
    /// For each (kind, source) pair, its buckets.
    routes: Vec<Vec<usize>>,
    meta: HashMap<String, Meta, foldhash::fast::RandomState>,
    /// The correlation state: one engine, or one per shard of runs.
    correlation: Vec<Mutex<CorrelationEngine>>,
    /// The `value_count` correlations counted incrementally.
    distinct: Vec<Distinct>,
    open: Arc<OpenFindings>,
    config: SigmaConfig,
    stats: SigmaStats,
}

impl std::fmt::Debug for Sigma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sigma")
            .field("rules", &self.rules)
            .field("buckets", &self.buckets.len())
            .field("correlation_shards", &self.correlation.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

const SOURCES: [SourceKind; 7] = [
    SourceKind::Gateway,
    SourceKind::Otlp,
    SourceKind::Api,
    SourceKind::Cloudtrail,
    SourceKind::Okta,
    SourceKind::Github,
    SourceKind::Custody,
];

fn route_index(kind: EventKind, source: SourceKind) -> usize {
    let kind = EventKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    let source = SOURCES.iter().position(|s| *s == source).unwrap_or(0);
    kind * SOURCES.len() + source
}

/// The product and service of a source's native records, as stock Sigma
/// rules name them.
fn native_logsource(source: SourceKind) -> Option<(&'static str, &'static [&'static str])> {
    match source {
        SourceKind::Cloudtrail => Some(("aws", &["cloudtrail"])),
        SourceKind::Okta => Some(("okta", &["okta"])),
        SourceKind::Github => Some(("github", &["audit", "github"])),
        _ => None,
    }
}

/// The face through which a rule of `logsource` reads events of `kind` from
/// `source`, if it reads them at all.
fn face_for(logsource: &LogSource, kind: EventKind, source: SourceKind) -> Option<Face> {
    let field = |value: &Option<String>| value.as_deref().map(str::to_ascii_lowercase);
    let (product, service, category) = (
        field(&logsource.product),
        field(&logsource.service),
        field(&logsource.category),
    );
    match product.as_deref() {
        None | Some("custody") => {
            let service_ok = service.as_deref().is_none_or(|s| s == source.as_str());
            let category_ok = category.as_deref().is_none_or(|c| c == kind.as_str());
            (service_ok && category_ok).then_some(Face::Custody)
        }
        Some(product) => {
            let (native, services) = native_logsource(source)?;
            let service_ok = service.as_deref().is_none_or(|s| services.contains(&s));
            (product == native && service_ok && category.is_none()).then_some(Face::Native)
        }
    }
}

fn severity(level: Option<Level>) -> Severity {
    match level {
        Some(Level::Informational) => Severity::Informational,
        Some(Level::Low) => Severity::Low,
        Some(Level::Medium) | None => Severity::Medium,
        Some(Level::High) => Severity::High,
        Some(Level::Critical) => Severity::Critical,
    }
}

impl Sigma {
    /// The stage for `set`, with findings of its own.
    pub fn new(set: &RuleSet, config: SigmaConfig) -> Result<Sigma, String> {
        let open = Arc::new(OpenFindings::new(
            config.max_open_findings,
            config.dedup_window_secs,
        ));
        Sigma::sharing(set, config, open)
    }

    /// The stage for `set`, opening findings in `open`, shared with the
    /// other detections.
    pub fn sharing(
        set: &RuleSet,
        config: SigmaConfig,
        open: Arc<OpenFindings>,
    ) -> Result<Sigma, String> {
        // Which rules each face of each (kind, source) pair sees; pairs
        // seeing the same rules share a bucket.
        let mut routes = vec![Vec::new(); EventKind::ALL.len() * SOURCES.len()];
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut known: HashMap<(Face, Vec<usize>), usize> = HashMap::new();
        for kind in EventKind::ALL {
            for source in SOURCES {
                for face in [Face::Custody, Face::Native] {
                    let seen: Vec<usize> = set
                        .rules
                        .iter()
                        .enumerate()
                        .filter(|(_, rule)| {
                            face_for(&rule.sigma.logsource, kind, source) == Some(face)
                        })
                        .map(|(index, _)| index)
                        .collect();
                    if seen.is_empty() {
                        continue;
                    }
                    let bucket = *known.entry((face, seen.clone())).or_insert_with(|| {
                        let mut engine = rsigma_eval::Engine::new();
                        // Skips substring matchers whose needles the
                        // field cannot hold (measured: about 5% faster on
                        // the benchmark's events).
                        engine.set_bloom_prefilter(true);
                        engine.extend_compiled_rules(
                            seen.iter().map(|&index| set.rules[index].compiled.clone()),
                        );
                        buckets.push(Bucket { face, engine });
                        buckets.len() - 1
                    });
                    routes[route_index(kind, source)].push(bucket);
                }
            }
        }
        // Sigma v2: a correlation's rules report their own matches only
        // when it says `generate: true`.
        // Plain `value_count` correlations are counted here, the rest by
        // rsigma.
        let named: std::collections::HashSet<&str> = set
            .correlations
            .iter()
            .flat_map(|c| c.sigma.rules.iter().map(String::as_str))
            .collect();
        let mut distinct = Vec::new();
        let mut by_rsigma = Vec::new();
        for correlation in &set.correlations {
            let named_by_others = [
                correlation.sigma.id.as_deref(),
                correlation.sigma.name.as_deref(),
            ]
            .into_iter()
            .flatten()
            .any(|key| named.contains(key));
            match Distinct::of(
                correlation.key(),
                &correlation.sigma,
                named_by_others,
                config.max_groups,
                config.max_group_entries,
                config.max_finding_events,
            ) {
                Some(counted) => distinct.push(counted),
                None => by_rsigma.push(correlation),
            }
        }
        let correlated: std::collections::HashSet<&str> = by_rsigma
            .iter()
            .flat_map(|c| c.sigma.rules.iter().map(String::as_str))
            .collect();
        let quiet: std::collections::HashSet<&str> = set
            .correlations
            .iter()
            .filter(|c| !c.sigma.generate)
            .flat_map(|c| c.sigma.rules.iter().map(String::as_str))
            .collect();
        let mut meta: HashMap<String, Meta, foldhash::fast::RandomState> = HashMap::default();
        for rule in &set.rules {
            let analytic = Analytic {
                id: rule.key().to_owned(),
                title: rule.sigma.title.clone(),
                tags: rule.sigma.tags.clone(),
            };
            let correlation_only = [rule.sigma.id.as_deref(), rule.sigma.name.as_deref()]
                .into_iter()
                .flatten()
                .any(|key| quiet.contains(key));
            let keys = [rule.sigma.id.as_deref(), rule.sigma.name.as_deref()];
            let entry = Meta {
                analytic: Arc::new(analytic),
                correlated: keys
                    .into_iter()
                    .flatten()
                    .any(|key| correlated.contains(key)),
                distinct: distinct
                    .iter()
                    .enumerate()
                    .filter(|(_, counted)| {
                        keys.into_iter()
                            .flatten()
                            .any(|key| counted.rules.iter().any(|r| r == key))
                    })
                    .map(|(index, _)| index)
                    .collect(),
                severity: severity(rule.sigma.level),
                correlation_only,
                min_events: 1,
            };
            for key in [rule.sigma.id.as_deref(), Some(rule.sigma.title.as_str())]
                .into_iter()
                .flatten()
            {
                meta.entry(key.to_owned()).or_insert_with(|| entry.clone());
            }
        }
        for correlation in &set.correlations {
            let temporal = matches!(
                correlation.sigma.correlation_type,
                CorrelationType::Temporal | CorrelationType::TemporalOrdered
            );
            let entry = Meta {
                analytic: Arc::new(Analytic {
                    id: correlation.key().to_owned(),
                    title: correlation.sigma.title.clone(),
                    tags: correlation.sigma.tags.clone(),
                }),
                correlated: false,
                distinct: Vec::new(),
                severity: severity(correlation.sigma.level),
                correlation_only: false,
                min_events: if temporal {
                    correlation.sigma.rules.len().min(2)
                } else {
                    1
                },
            };
            for key in [
                correlation.sigma.id.as_deref(),
                Some(correlation.sigma.title.as_str()),
                Some(correlation.key()),
            ]
            .into_iter()
            .flatten()
            {
                meta.entry(key.to_owned()).or_insert_with(|| entry.clone());
            }
        }
        // When every correlation groups by run, the groups of one run never
        // meet another run's: the correlation state is split by run over
        // several engines, so callers on several threads rarely wait on one
        // another. Otherwise one engine holds it all.
        let by_run = by_rsigma.iter().all(|c| {
            c.sigma.aliases.is_empty() && c.sigma.group_by.iter().any(|g| g == "chain.run")
        });
        let shards = match (by_rsigma.is_empty(), by_run) {
            (true, _) => 0,
            (false, true) => config.correlation_shards.max(1),
            (false, false) => 1,
        };
        let mut correlation = Vec::with_capacity(shards);
        for _ in 0..shards {
            let mut engine = CorrelationEngine::new(CorrelationConfig {
                max_state_entries: (config.max_groups / shards).max(1),
                correlation_event_mode: CorrelationEventMode::Refs,
                max_correlation_events: config.max_finding_events,
                max_group_entries: Some(config.max_group_entries.max(1)),
                ..CorrelationConfig::default()
            });
            // Only the rules correlations name: the engine looks a match's
            // rule up among its rules one by one.
            let named = |rule: &&crate::rules::Rule| {
                [rule.sigma.id.as_deref(), rule.sigma.name.as_deref()]
                    .into_iter()
                    .flatten()
                    .any(|key| correlated.contains(key))
            };
            for rule in set.rules.iter().filter(named) {
                engine
                    .add_rule(&rule.sigma)
                    .map_err(|e| format!("{}: {e}", rule.origin.file))?;
            }
            for correlation in &by_rsigma {
                engine
                    .add_correlation(&in_milliseconds(
                        &correlation.sigma,
                        config.dedup_window_secs,
                    ))
                    .map_err(|e| format!("{}: {e}", correlation.origin.file))?;
            }
            correlation.push(Mutex::new(engine));
        }
        Ok(Sigma {
            rules: set.rules.len(),
            buckets,
            routes,
            meta,
            correlation,
            distinct,
            open,
            config,
            stats: SigmaStats::default(),
        })
    }

    /// The stage's counters.
    pub fn stats(&self) -> &SigmaStats {
        &self.stats
    }

    /// The findings it opens, and their counters.
    pub fn findings(&self) -> &OpenFindings {
        &self.open
    }

    /// Counts `event` in the `value_count` correlations its matches feed,
    /// once each; the signals of those whose condition holds.
    fn count_distinct(
        &self,
        event: &RuntimeEvent,
        parsed: &Parsed<'_>,
        matched: &[EvaluationResult],
    ) -> Vec<Signal> {
        let mut fed: Vec<usize> = matched
            .iter()
            .flat_map(|result| self.meta(result).distinct.clone())
            .collect();
        if fed.is_empty() {
            return Vec::new();
        }
        fed.sort_unstable();
        fed.dedup();
        let view = parsed.face(Face::Custody);
        let now = engine_time(event.observed_at);
        let mut groups = Groups::default();
        let mut signals = Vec::new();
        for index in fed {
            let Some(counted) = self.distinct.get(index) else {
                continue;
            };
            let Some(fired) = counted.count(&view, event.id, now, &mut groups) else {
                continue;
            };
            let Some(meta) = self.meta.get(&counted.key) else {
                continue;
            };
            let draft = Draft {
                kind: FindingKind::Correlation,
                analytic: meta.analytic.clone(),
                severity: meta.severity,
                group: fired.group,
                events: fired.events,
                first_seen: Utc
                    .timestamp_millis_opt(fired.first_ms)
                    .single()
                    .unwrap_or(event.observed_at),
                detail: format!(
                    " (value_count {} within {}s)",
                    fired.count, fired.timespan_secs
                ),
            };
            if let Some(signal) = self.open.signal_once(event, draft) {
                self.stats.correlations.fetch_add(1, Ordering::Relaxed);
                signals.push(signal);
            }
        }
        self.stats.groups.fetch_add(groups.added, Ordering::Relaxed);
        self.stats
            .groups_evicted
            .fetch_add(groups.evicted, Ordering::Relaxed);
        signals
    }

    /// The correlation engine holding `event`'s groups.
    fn shard(&self, event: &RuntimeEvent) -> Option<&Mutex<CorrelationEngine>> {
        use std::hash::BuildHasher as _;
        let count = self.correlation.len();
        if count <= 1 {
            return self.correlation.first();
        }
        let run = run_of(event).unwrap_or("");
        let hash = foldhash::fast::FixedState::with_seed(0).hash_one(run);
        self.correlation.get((hash % count as u64) as usize)
    }

    /// The detection rules `event` matches, statelessly.
    fn matches(&self, parsed: &Parsed<'_>) -> Vec<EvaluationResult> {
        let event = parsed.event();
        let mut found = Vec::new();
        for &bucket in &self.routes[route_index(event.kind, event.source.kind)] {
            if let Some(bucket) = self.buckets.get(bucket) {
                found.extend(bucket.engine.evaluate(&parsed.face(bucket.face)));
            }
        }
        found
    }

    fn meta(&self, result: &EvaluationResult) -> Cow<'_, Meta> {
        let header = &result.header;
        match header
            .rule_id
            .as_deref()
            .and_then(|id| self.meta.get(id))
            .or_else(|| self.meta.get(&header.rule_title))
        {
            Some(meta) => Cow::Borrowed(meta),
            None => Cow::Owned(Meta {
                analytic: Arc::new(Analytic {
                    id: header
                        .rule_id
                        .clone()
                        .unwrap_or_else(|| header.rule_title.clone()),
                    title: header.rule_title.clone(),
                    tags: header.tags.clone(),
                }),
                correlated: false,
                distinct: Vec::new(),
                severity: severity(header.level),
                correlation_only: false,
                min_events: 1,
            }),
        }
    }

    /// Whether a result makes a signal: building blocks of correlations
    /// do not, nor a temporal correlation resting on fewer distinct events
    /// than it needs (rsigma counts one event matching both steps of an
    /// ordered pair as the pair).
    fn reported(&self, result: &EvaluationResult, meta: &Meta) -> bool {
        match &result.body {
            ResultBody::Detection(_) => !meta.correlation_only,
            ResultBody::Correlation(body) => {
                let refs = body.event_refs.as_deref().unwrap_or_default();
                let mut ids: Vec<&str> = refs.iter().filter_map(|r| r.id.as_deref()).collect();
                ids.sort_unstable();
                ids.dedup();
                ids.len() >= meta.min_events
            }
        }
    }

    /// A result as a signal: a new finding, or a repeat of an open one
    /// (none for a correlation whose finding is open).
    fn signal(
        &self,
        event: &RuntimeEvent,
        result: &EvaluationResult,
        meta: &Meta,
    ) -> Option<Signal> {
        let at = event.observed_at;
        let draft = match &result.body {
            ResultBody::Detection(_) => Draft {
                kind: FindingKind::Rule,
                analytic: meta.analytic.clone(),
                severity: meta.severity,
                group: event_group(event),
                events: vec![event.id],
                first_seen: at,
                detail: String::new(),
            },
            ResultBody::Correlation(body) => {
                let refs = body.event_refs.as_deref().unwrap_or_default();
                let mut events: Vec<EventId> = refs
                    .iter()
                    .filter_map(|r| r.id.as_deref()?.parse().ok())
                    .collect();
                if !events.contains(&event.id) {
                    events.push(event.id);
                }
                Draft {
                    kind: FindingKind::Correlation,
                    analytic: meta.analytic.clone(),
                    severity: meta.severity,
                    group: body
                        .group_key
                        .iter()
                        .map(|(name, value)| field(name, value))
                        .collect(),
                    events,
                    first_seen: refs
                        .iter()
                        .map(|r| r.timestamp)
                        .min()
                        .and_then(|millis| Utc.timestamp_millis_opt(millis).single())
                        .unwrap_or(at),
                    detail: format!(
                        " ({} {} within {}s)",
                        body.correlation_type.as_str(),
                        body.aggregated_value,
                        body.timespan_secs / 1000
                    ),
                }
            }
        };
        // A group past a correlation's condition fires again on each
        // further event; while its finding is open, those firings add
        // nothing the finding does not hold (its events, up to the cap),
        // so they are counted, not written.
        match result.body {
            ResultBody::Correlation(_) => self.open.signal_once(event, draft),
            ResultBody::Detection(_) => Some(self.open.signal(event, draft)),
        }
    }
}

/// The correlation engine counts time in whole "seconds"; Custody gives it
/// milliseconds, so that the order of an agent's calls within one second is
/// kept (a secret read and the post after it are often milliseconds apart),
/// and scales the correlation's windows to match.
///
/// A counting correlation (`event_count`, `value_count`, ...) past its
/// condition would fire again on every further event of its group; it is
/// held quiet for the de-duplication window after it fires, when its
/// finding is open anyway (the rule's own `rsigma.suppress` wins). Temporal
/// correlations are not: a firing on one event matching two steps is
/// refused afterwards (see `reported`), and must not hold back the real one.
fn in_milliseconds(
    rule: &rsigma_parser::CorrelationRule,
    dedup_window_secs: i64,
) -> rsigma_parser::CorrelationRule {
    let mut rule = rule.clone();
    rule.timespan.seconds = rule.timespan.seconds.saturating_mul(1000);
    if let Some(gap) = &mut rule.gap {
        gap.seconds = gap.seconds.saturating_mul(1000);
    }
    let temporal = matches!(
        rule.correlation_type,
        CorrelationType::Temporal | CorrelationType::TemporalOrdered
    );
    // The engine counts a group's distinct values anew on every event, so
    // the cost of a `value_count` event grows with its group's window: keep
    // what the condition needs, four times over (at least 200 entries).
    if rule.correlation_type == CorrelationType::ValueCount
        && !rule
            .custom_attributes
            .contains_key("rsigma.max_group_entries")
    {
        let needed = match &rule.condition {
            rsigma_parser::CorrelationCondition::Threshold { predicates, .. } => predicates
                .iter()
                .map(|(_, value)| *value)
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        let keep = needed.saturating_mul(4).max(200);
        rule.custom_attributes.insert(
            "rsigma.max_group_entries".into(),
            yaml_serde::Value::String(keep.to_string()),
        );
    }
    if !temporal && !rule.custom_attributes.contains_key("rsigma.suppress") {
        let millis = dedup_window_secs.max(0).saturating_mul(1000);
        rule.custom_attributes.insert(
            "rsigma.suppress".into(),
            yaml_serde::Value::String(format!("{millis}s")),
        );
    }
    rule
}

/// An event's time as the correlation engine counts it (see
/// [`in_milliseconds`]).
fn engine_time(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

impl Detect for Sigma {
    fn detect(&self, event: &RuntimeEvent) -> Vec<Signal> {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let parsed = Parsed::new(event);
        let matched = self.matches(&parsed);
        if matched.is_empty() {
            return Vec::new();
        }
        self.stats
            .matches
            .fetch_add(matched.len() as u64, Ordering::Relaxed);
        let mut signals = self.count_distinct(event, &parsed, &matched);
        // Only matches of rules a correlation rsigma counts names take its
        // lock.
        let (correlated, mut results): (Vec<_>, Vec<_>) =
            matched.into_iter().partition(|r| self.meta(r).correlated);
        if let (Some(engine), false) = (self.shard(event), correlated.is_empty()) {
            {
                let mut engine = engine.lock().unwrap_or_else(|e| e.into_inner());
                let before = engine.state_count();
                let fired = engine.process_with_detections(
                    &parsed.face(Face::Custody),
                    correlated,
                    engine_time(event.observed_at),
                );
                let after = engine.state_count();
                drop(engine);
                // Each event adds at most one group per correlation; fewer
                // groups after it than before means eviction ran.
                if after < before {
                    self.stats
                        .groups_evicted
                        .fetch_add((before - after) as u64, Ordering::Relaxed);
                }
                // The shards' counts add up: each shard moves the total by
                // its own change (wrapping, as atomics add).
                self.stats.groups.fetch_add(
                    (after as u64).wrapping_sub(before as u64),
                    Ordering::Relaxed,
                );
                results.extend(fired);
            }
        }
        for result in &results {
            let meta = self.meta(result);
            if !self.reported(result, &meta) {
                continue;
            }
            if result.is_correlation() {
                self.stats.correlations.fetch_add(1, Ordering::Relaxed);
            }
            signals.extend(self.signal(event, result, &meta));
        }
        signals
    }

    /// Detection rules only, no finding opened: correlations and
    /// de-duplication are state a preview must not touch.
    fn peek(&self, event: &RuntimeEvent) -> Vec<Signal> {
        let parsed = Parsed::new(event);
        self.matches(&parsed)
            .iter()
            .filter_map(|result| {
                let meta = self.meta(result);
                (!meta.correlation_only)
                    .then(|| Signal::new(meta.analytic.id.clone(), meta.analytic.title.clone()))
            })
            .collect()
    }
}
