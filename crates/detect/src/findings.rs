//! Opening findings, and folding repeats into the open one.
//!
//! Every detection (rules, correlations, thresholds, baselines) hands its
//! conclusions here as a [`Draft`]; a finding for the same analytic and group
//! opened less than the window ago absorbs it as a repeat. The memory of
//! open findings is bounded (least recently used forgotten first), so a
//! forgotten one only means the next match opens a new finding.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use custody_engine::{FindingNote, Signal};
use custody_event::{
    Analytic, EventId, Finding, FindingId, FindingKind, GroupField, RuntimeEvent, Severity,
};
use hashlink::LruCache;

use crate::view::{agent_type_of, run_of};

/// What a detection concluded about an event, before de-duplication.
#[derive(Debug, Clone)]
pub struct Draft {
    /// What sort of detection.
    pub kind: FindingKind,
    /// The rule, threshold or baseline (shared: most drafts are repeats,
    /// which need only its id).
    pub analytic: Arc<Analytic>,
    /// How severe.
    pub severity: Severity,
    /// The group it is counted in.
    pub group: Vec<GroupField>,
    /// The events it rests on, the current one last.
    pub events: Vec<EventId>,
    /// When the first of them happened.
    pub first_seen: DateTime<Utc>,
    /// What was seen, appended to the standard sentence (` (event_count 12
    /// within 60s)`, `: never called tool X`).
    pub detail: String,
}

/// A group field.
pub fn field(name: &str, value: &str) -> GroupField {
    GroupField {
        field: name.to_owned(),
        value: value.to_owned(),
    }
}

/// The findings still open for repeats.
#[derive(Debug)]
pub struct OpenFindings {
    open: Mutex<LruCache<(String, Vec<GroupField>), Open>>,
    window_secs: i64,
    /// Findings opened.
    pub opened: AtomicU64,
    /// Matches folded into an open finding.
    pub repeats: AtomicU64,
    /// Correlation firings while their finding was open, counted only.
    pub refired: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    id: FindingId,
    until: i64,
}

impl OpenFindings {
    /// Remembers up to `capacity` open findings, each open for `window_secs`
    /// of event time after it opened.
    pub fn new(capacity: usize, window_secs: i64) -> OpenFindings {
        OpenFindings {
            open: Mutex::new(LruCache::new(capacity.max(1))),
            window_secs,
            opened: AtomicU64::new(0),
            repeats: AtomicU64::new(0),
            refired: AtomicU64::new(0),
        }
    }

    /// A new finding for `draft`, unless one is open for its analytic and
    /// group: then nothing, and the firing is counted in `refired`.
    pub fn signal_once(&self, event: &RuntimeEvent, draft: Draft) -> Option<Signal> {
        let key = (draft.analytic.id.clone(), draft.group.clone());
        let now = event.observed_at.timestamp();
        let open = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.get(&key).is_some_and(|existing| now < existing.until)
        };
        if open {
            self.refired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.signal(event, draft))
    }

    /// The signal `draft` makes on `event`: a new finding, or a repeat of
    /// the open one.
    pub fn signal(&self, event: &RuntimeEvent, draft: Draft) -> Signal {
        let at = event.observed_at;
        let key = (draft.analytic.id.clone(), draft.group);
        let now = at.timestamp();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = open.get(&key)
            && now < existing.until
        {
            self.repeats.fetch_add(1, Ordering::Relaxed);
            return Signal {
                id: draft.analytic.id.clone(),
                message: format!("repeat of finding {}", existing.id),
                finding: Some(FindingNote::Repeats(existing.id)),
            };
        }
        let id = FindingId::new_v7();
        open.insert(
            key.clone(),
            Open {
                id,
                until: now.saturating_add(self.window_secs),
            },
        );
        drop(open);
        self.opened.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "{}: {} by {}{}{}",
            draft.analytic.title,
            event.action,
            who(event),
            run_of(event)
                .map(|run| format!(" in run {run}"))
                .unwrap_or_default(),
            draft.detail,
        );
        let finding = Finding {
            id,
            kind: draft.kind,
            analytic: (*draft.analytic).clone(),
            severity: draft.severity,
            message: message.clone(),
            created_at: Utc::now(),
            first_seen: draft.first_seen.min(at),
            last_seen: at,
            group: key.1,
            chain: event.actor.clone(),
            events: draft.events,
        };
        Signal {
            id: draft.analytic.id.clone(),
            message,
            finding: Some(FindingNote::Opens(Box::new(finding))),
        }
    }
}

/// The actor as a responder reads it: the agent type and the human.
fn who(event: &RuntimeEvent) -> String {
    let actor = agent_type_of(event)
        .map(|t| t.into_owned())
        .unwrap_or_else(|| event.actor.current.id.clone());
    match event.actor.root_id() {
        Some(root) if root != actor => format!("{actor} (for {root})"),
        _ => actor,
    }
}

/// The group of a single event's finding: its run, else its actor.
pub fn event_group(event: &RuntimeEvent) -> Vec<GroupField> {
    match run_of(event) {
        Some(run) => vec![field("chain.run", run)],
        None => vec![field("chain.actor", &event.actor.current.id)],
    }
}
