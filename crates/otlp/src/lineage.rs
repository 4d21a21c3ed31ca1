//! Who acted for whom above a span, and the bounded memory of recent spans'
//! lineage that later requests link to.

use std::collections::{HashMap, VecDeque};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use custody_event::Principal;

/// What is known above a span: the human at the root, and the agents from
/// the outermost to the nearest.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Lineage {
    pub(crate) human: Option<Principal>,
    pub(crate) agents: Vec<Principal>,
}

impl Lineage {
    /// Whether it knows nobody.
    pub(crate) fn is_empty(&self) -> bool {
        self.human.is_none() && self.agents.is_empty()
    }

    /// The lineage of a span below this one: the human above if known,
    /// else the span's own; the agents above, then the span's agent.
    pub(crate) fn below(&self, human: Option<Principal>, agent: Option<Principal>) -> Lineage {
        let mut agents = self.agents.clone();
        agents.extend(agent);
        Lineage {
            human: self.human.clone().or(human),
            agents,
        }
    }
}

/// How much the buffer of recent spans holds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Spans remembered at most; the oldest goes first.
    pub max_spans: usize,
    /// How long a span is remembered after it arrives.
    pub max_age: Duration,
    /// Spans kept whose parent had not arrived, to map again once it does;
    /// the oldest goes first. They are forgotten after `max_age` too.
    pub max_orphans: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_spans: 100_000,
            max_age: Duration::minutes(10),
            max_orphans: 10_000,
        }
    }
}

/// What the buffer has done since the mapper was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Spans remembered now.
    pub held: usize,
    /// Spans whose parent was found in the buffer (sent in an earlier
    /// request).
    pub linked: u64,
    /// Spans whose parent was in neither their request nor the buffer:
    /// mapped with what their request showed.
    pub parent_missing: u64,
    /// Spans forgotten because the buffer was full.
    pub evicted: u64,
    /// Spans forgotten because they were older than the age limit.
    pub expired: u64,
    /// Spans kept now until their parent arrives.
    pub orphans_held: usize,
    /// Spans mapped again, linked, once their parent arrived.
    pub relinked: u64,
    /// Spans whose parent never came while they were kept (too old, or
    /// pushed out by newer ones).
    pub orphans_dropped: u64,
}

/// A span mapped without its parent, kept to be mapped again when the
/// parent arrives.
#[derive(Debug, Clone)]
pub(crate) struct Orphan {
    pub(crate) span: Span,
    pub(crate) resource: Vec<KeyValue>,
    /// The id of the event it was first mapped to.
    pub(crate) first: custody_event::EventId,
}

type Key = ([u8; 16], [u8; 8]);

/// A remembered span: its lineage, when it arrived, and the parent its
/// lineage still waits for (it is an orphan's, or below one).
type Held = (Arc<Lineage>, DateTime<Utc>, Option<[u8; 8]>);

/// Recent spans' lineage by trace and span id, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    limits: Limits,
    /// Each span's lineage, when it arrived, and the parent its lineage
    /// still waits for (it is an orphan's, or below one).
    by_key: HashMap<Key, Held>,
    order: VecDeque<(Key, DateTime<Utc>)>,
    /// Orphans by the trace and the id of the parent they wait for.
    orphans: HashMap<Key, Vec<(Orphan, DateTime<Utc>)>>,
    /// The orphans' keys in arrival order, one entry per orphan.
    orphan_order: VecDeque<(Key, DateTime<Utc>)>,
    orphans_held: usize,
    stats: Stats,
}

impl Buffer {
    pub(crate) fn new(limits: Limits) -> Buffer {
        Buffer {
            limits,
            ..Buffer::default()
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            held: self.by_key.len(),
            orphans_held: self.orphans_held,
            ..self.stats
        }
    }

    /// The lineage of span `span` of trace `trace`, if remembered, and the
    /// parent it still waits for, if it does.
    pub(crate) fn find(
        &mut self,
        trace: [u8; 16],
        span: [u8; 8],
    ) -> Option<(Arc<Lineage>, Option<[u8; 8]>)> {
        let found = self
            .by_key
            .get(&(trace, span))
            .map(|(l, _, waiting)| (l.clone(), *waiting));
        if found.is_some() {
            self.stats.linked += 1;
        }
        found
    }

    /// Counts a span whose parent was nowhere.
    pub(crate) fn missed(&mut self) {
        self.stats.parent_missing += 1;
    }

    /// Remembers a span's lineage, forgetting the oldest beyond the limit.
    pub(crate) fn insert(
        &mut self,
        trace: [u8; 16],
        span: [u8; 8],
        lineage: Arc<Lineage>,
        waiting: Option<[u8; 8]>,
        now: DateTime<Utc>,
    ) {
        if self.limits.max_spans == 0 {
            return;
        }
        let key = (trace, span);
        // A span sent again keeps its place (and its age).
        if let Some(held) = self.by_key.get_mut(&key) {
            held.0 = lineage;
            held.2 = waiting;
            return;
        }
        self.by_key.insert(key, (lineage, now, waiting));
        self.order.push_back((key, now));
        while self.by_key.len() > self.limits.max_spans {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.by_key.get(&old).is_some_and(|(_, t, _)| *t == at) {
                self.by_key.remove(&old);
                self.stats.evicted += 1;
            }
        }
    }

    /// Keeps `orphan`, of trace `trace`, until its parent `parent` arrives,
    /// forgetting the oldest orphans beyond the limit.
    pub(crate) fn hold_orphan(
        &mut self,
        trace: [u8; 16],
        parent: [u8; 8],
        orphan: Orphan,
        now: DateTime<Utc>,
    ) {
        if self.limits.max_orphans == 0 {
            self.stats.orphans_dropped += 1;
            return;
        }
        let key = (trace, parent);
        self.orphans.entry(key).or_default().push((orphan, now));
        self.orphan_order.push_back((key, now));
        self.orphans_held += 1;
        while self.orphans_held > self.limits.max_orphans {
            if !self.drop_oldest_orphan() {
                break;
            }
        }
    }

    /// The orphans waiting for span `span` of trace `trace`, taken.
    pub(crate) fn take_orphans(&mut self, trace: [u8; 16], span: [u8; 8]) -> Vec<Orphan> {
        let Some(waiting) = self.orphans.remove(&(trace, span)) else {
            return Vec::new();
        };
        self.orphans_held -= waiting.len();
        self.stats.relinked += waiting.len() as u64;
        // Their entries in `orphan_order` are skipped when reached: the key
        // is gone, or holds orphans that came later.
        waiting.into_iter().map(|(orphan, _)| orphan).collect()
    }

    /// Drops the oldest orphan still held; false when none is.
    fn drop_oldest_orphan(&mut self) -> bool {
        while let Some((key, at)) = self.orphan_order.pop_front() {
            let Some(waiting) = self.orphans.get_mut(&key) else {
                continue;
            };
            let Some(position) = waiting.iter().position(|(_, t)| *t == at) else {
                continue;
            };
            waiting.remove(position);
            if waiting.is_empty() {
                self.orphans.remove(&key);
            }
            self.orphans_held -= 1;
            self.stats.orphans_dropped += 1;
            return true;
        }
        false
    }

    /// Forgets spans older than the age limit.
    pub(crate) fn expire(&mut self, now: DateTime<Utc>) {
        let oldest = now - self.limits.max_age;
        while self
            .orphan_order
            .front()
            .is_some_and(|(_, at)| *at < oldest)
        {
            let Some((key, at)) = self.orphan_order.front().copied() else {
                break;
            };
            let held = self
                .orphans
                .get(&key)
                .is_some_and(|waiting| waiting.iter().any(|(_, t)| *t == at));
            if held {
                self.drop_oldest_orphan();
            } else {
                self.orphan_order.pop_front();
            }
        }
        while let Some((key, at)) = self.order.front().copied() {
            if at >= oldest {
                break;
            }
            self.order.pop_front();
            if self.by_key.get(&key).is_some_and(|(_, t, _)| *t == at) {
                self.by_key.remove(&key);
                self.stats.expired += 1;
            }
        }
    }
}
