//! Who acted for whom above a span, and the bounded memory of recent spans'
//! lineage that later requests link to.

use std::collections::{HashMap, VecDeque};
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_spans: 100_000,
            max_age: Duration::minutes(10),
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
}

type Key = ([u8; 16], [u8; 8]);

/// Recent spans' lineage by trace and span id, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    limits: Limits,
    by_key: HashMap<Key, (Arc<Lineage>, DateTime<Utc>)>,
    order: VecDeque<(Key, DateTime<Utc>)>,
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
            ..self.stats
        }
    }

    /// The lineage of span `span` of trace `trace`, if remembered.
    pub(crate) fn find(&mut self, trace: [u8; 16], span: [u8; 8]) -> Option<Arc<Lineage>> {
        let found = self.by_key.get(&(trace, span)).map(|(l, _)| l.clone());
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
        now: DateTime<Utc>,
    ) {
        if self.limits.max_spans == 0 {
            return;
        }
        let key = (trace, span);
        // A span sent again keeps its place (and its age).
        if let Some(held) = self.by_key.get_mut(&key) {
            held.0 = lineage;
            return;
        }
        self.by_key.insert(key, (lineage, now));
        self.order.push_back((key, now));
        while self.by_key.len() > self.limits.max_spans {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.by_key.get(&old).is_some_and(|(_, t)| *t == at) {
                self.by_key.remove(&old);
                self.stats.evicted += 1;
            }
        }
    }

    /// Forgets spans older than the age limit.
    pub(crate) fn expire(&mut self, now: DateTime<Utc>) {
        let oldest = now - self.limits.max_age;
        while let Some((key, at)) = self.order.front().copied() {
            if at >= oldest {
                break;
            }
            self.order.pop_front();
            if self.by_key.get(&key).is_some_and(|(_, t)| *t == at) {
                self.by_key.remove(&key);
                self.stats.expired += 1;
            }
        }
    }
}
