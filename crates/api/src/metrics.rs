//! Prometheus metrics: `GET /metrics`.

use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;

/// The API's own metrics; the store's are read at scrape time.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events acknowledged to clients (durable).
    pub events_accepted: Counter,
    /// Items refused as invalid.
    pub events_rejected: Counter,
    /// Batches answered 429 because the ingest queue was full.
    pub throttled_batches: Counter,
    /// Seconds from receiving a batch to acknowledging it.
    pub ack_latency: Histogram,
    queued_events: Gauge,
    committed_events: Gauge<u64, AtomicU64>,
    commits: Gauge<u64, AtomicU64>,
    failed_commits: Gauge<u64, AtomicU64>,
    pending_postings: Gauge<u64, AtomicU64>,
    /// The OTLP mapper's memory of recent spans: held, linked,
    /// parent_missing, evicted, expired, orphans held, relinked, orphans
    /// dropped (`custody_otlp::Stats`).
    otlp_spans: [Gauge<u64, AtomicU64>; 8],
    /// The detect stage's counters (`custody_detect::SigmaStats`).
    detections: [Gauge<u64, AtomicU64>; 10],
    containment: [Gauge<u64, AtomicU64>; 6],
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("custody");
        let events_accepted = Counter::default();
        let events_rejected = Counter::default();
        let throttled_batches = Counter::default();
        let ack_latency = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        let queued_events = Gauge::default();
        let committed_events = Gauge::default();
        let commits = Gauge::default();
        let failed_commits = Gauge::default();
        let pending_postings = Gauge::default();
        registry.register(
            "ingest_events_accepted",
            "Events acknowledged to clients",
            events_accepted.clone(),
        );
        registry.register(
            "ingest_events_rejected",
            "Submitted items refused as invalid",
            events_rejected.clone(),
        );
        registry.register(
            "ingest_batches_throttled",
            "Batches answered 429 because the ingest queue was full",
            throttled_batches.clone(),
        );
        registry.register(
            "ingest_ack_latency_seconds",
            "Time from receiving a batch to acknowledging it durable",
            ack_latency.clone(),
        );
        registry.register(
            "store_queued_events",
            "Events waiting for the store writer",
            queued_events.clone(),
        );
        registry.register(
            "store_committed_events",
            "Events committed by the store writer since start",
            committed_events.clone(),
        );
        registry.register(
            "store_commits",
            "Transactions committed by the store writer since start",
            commits.clone(),
        );
        registry.register(
            "store_failed_commits",
            "Transactions the store writer failed to commit since start",
            failed_commits.clone(),
        );
        registry.register(
            "store_pending_postings",
            "Index postings of committed events held in memory, not yet written to the postings table",
            pending_postings.clone(),
        );
        let otlp_spans: [Gauge<u64, AtomicU64>; 8] = Default::default();
        for (gauge, (name, help)) in otlp_spans.iter().zip([
            (
                "otlp_spans_held",
                "Spans whose chain the OTLP receiver remembers for later requests",
            ),
            (
                "otlp_spans_linked",
                "Spans whose parent came in an earlier OTLP request, since start",
            ),
            (
                "otlp_spans_parent_missing",
                "Spans whose parent was in neither their OTLP request nor the memory, since start",
            ),
            (
                "otlp_spans_evicted",
                "Spans forgotten because the OTLP receiver's memory was full, since start",
            ),
            (
                "otlp_spans_expired",
                "Spans forgotten because they outlived the OTLP receiver's memory, since start",
            ),
            (
                "otlp_orphans_held",
                "Spans mapped without their parent, kept to be linked when it arrives",
            ),
            (
                "otlp_spans_relinked",
                "Spans mapped again below a parent that arrived after them, since start",
            ),
            (
                "otlp_orphans_dropped",
                "Spans whose late parent never came while they were kept, since start",
            ),
        ]) {
            registry.register(name, help, gauge.clone());
        }
        let detections: [Gauge<u64, AtomicU64>; 10] = Default::default();
        for (gauge, (name, help)) in detections.iter().zip([
            ("detect_events", "Events the Sigma rules saw, since start"),
            (
                "detect_rule_matches",
                "Sigma detection rule matches, since start",
            ),
            (
                "detect_correlations_fired",
                "Sigma correlation rules that fired, since start",
            ),
            ("findings_opened", "Findings opened, since start"),
            (
                "findings_repeated",
                "Matches linked to an open finding within its de-duplication window, since start",
            ),
            (
                "detect_correlation_groups_evicted",
                "Correlation groups evicted to keep within the cap, since start",
            ),
            ("detect_correlation_groups", "Live correlation groups"),
            (
                "detect_threshold_groups_evicted",
                "Threshold counters evicted to keep within the cap, since start",
            ),
            (
                "findings_refired",
                "Correlation, threshold and rate firings while their finding was open, counted only, since start",
            ),
            (
                "baseline_types_evicted",
                "Agent types whose baseline was forgotten to keep within the cap, since start",
            ),
        ]) {
            registry.register(name, help, gauge.clone());
        }
        let containment: [Gauge<u64, AtomicU64>; 6] = Default::default();
        for (gauge, (name, help)) in containment.iter().zip([
            (
                "containment_measures",
                "Measures in force (kills, quarantines, holds)",
            ),
            ("approvals_held", "Calls held for approval now"),
            ("playbooks_fired", "Times playbooks fired, since start"),
            (
                "playbook_actions_done",
                "Playbook actions done or queued, since start",
            ),
            (
                "playbook_actions_would",
                "Actions monitor-mode playbooks would have taken, since start",
            ),
            (
                "playbook_actions_failed",
                "Playbook actions that failed, since start",
            ),
        ]) {
            registry.register(name, help, gauge.clone());
        }
        Metrics {
            registry,
            otlp_spans,
            detections,
            containment,
            events_accepted,
            events_rejected,
            throttled_batches,
            ack_latency,
            queued_events,
            committed_events,
            commits,
            failed_commits,
            pending_postings,
        }
    }
}

pub(crate) async fn get_metrics(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let metrics = &state.metrics;
    let stats = state.store.stats();
    metrics
        .queued_events
        .set(i64::try_from(stats.queued_events).unwrap_or(i64::MAX));
    metrics.committed_events.set(stats.committed_events);
    metrics.commits.set(stats.commits);
    metrics.failed_commits.set(stats.failed_commits);
    metrics.pending_postings.set(stats.pending_postings);
    let otlp = match state.otlp.lock() {
        Ok(mapper) => mapper.stats(),
        Err(poisoned) => poisoned.into_inner().stats(),
    };
    for (gauge, value) in metrics.otlp_spans.iter().zip([
        u64::try_from(otlp.held).unwrap_or(u64::MAX),
        otlp.linked,
        otlp.parent_missing,
        otlp.evicted,
        otlp.expired,
        u64::try_from(otlp.orphans_held).unwrap_or(u64::MAX),
        otlp.relinked,
        otlp.orphans_dropped,
    ]) {
        gauge.set(value);
    }
    if let Some(detections) = &state.detections {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = detections.sigma.stats();
        let findings = &detections.findings;
        for (gauge, counter) in metrics.detections.iter().zip([
            &stats.events,
            &stats.matches,
            &stats.correlations,
            &findings.opened,
            &findings.repeats,
            &stats.groups_evicted,
            &stats.groups,
            &detections.thresholds.groups_evicted,
            &findings.refired,
            &detections.baselines.types_evicted,
        ]) {
            gauge.set(counter.load(Relaxed));
        }
    }
    if let Some(containing) = &state.containing {
        let counts: Vec<crate::contain::PlaybookTotals> = containing
            .playbooks
            .iter()
            .flat_map(|p| p.counts())
            .map(|(_, c)| (c.fired, c.done, c.would, c.failed))
            .collect();
        let sum = |f: fn(&crate::contain::PlaybookTotals) -> u64| counts.iter().map(f).sum::<u64>();
        for (gauge, value) in metrics.containment.iter().zip([
            u64::try_from(containing.containment.len()).unwrap_or(u64::MAX),
            u64::try_from(containing.approvals.list().len()).unwrap_or(u64::MAX),
            sum(|c| c.0),
            sum(|c| c.1),
            sum(|c| c.2),
            sum(|c| c.3),
        ]) {
            gauge.set(value);
        }
    }
    let mut text = String::new();
    encode(&mut text, &metrics.registry)
        .map_err(|error| ApiError::Internal(format!("encoding metrics: {error}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
