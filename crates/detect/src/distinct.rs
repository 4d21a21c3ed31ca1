//! `value_count` correlations counted incrementally.
//!
//! rsigma's correlation engine counts a group's distinct values anew on
//! every event, which makes a busy group's every event cost its whole
//! window. A plain `value_count` (a sliding window, one field, no aliases,
//! not itself named by another correlation) is counted here instead: each
//! group keeps when it last saw each value and the order values came in, so
//! an event costs one insert and the expiry of what fell out of the window.
//! Groups are bounded and split in shards by their key; each group's window
//! holds at most `max_entries` entries (the oldest go first, which can only
//! under-count).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::Mutex;

use custody_event::{EventId, GroupField};
use foldhash::fast::{FixedState, RandomState};
use hashlink::LruCache;
use rsigma_eval::{Event, EventValue};
use rsigma_parser::{
    ConditionOperator, CorrelationCondition, CorrelationRule, CorrelationType, WindowMode,
};

use crate::findings::field;

/// Shards of each correlation's groups.
const SHARDS: usize = 16;

/// A `value_count` correlation this module counts.
#[derive(Debug)]
pub(crate) struct Distinct {
    /// The correlation's analytic id.
    pub(crate) key: String,
    /// The ids and names of the rules it counts.
    pub(crate) rules: Vec<String>,
    group_by: Vec<String>,
    field: String,
    timespan_ms: i64,
    predicates: Vec<(ConditionOperator, u64)>,
    max_entries: usize,
    max_events: usize,
    shards: Vec<Mutex<LruCache<Vec<String>, Window>>>,
}

/// One group's window.
#[derive(Debug, Default)]
struct Window {
    /// Each value, and when it was last seen (ms).
    last_seen: HashMap<String, i64, RandomState>,
    /// Values in the order they came, with when.
    order: VecDeque<(i64, String)>,
    /// The latest events, with when.
    recent: VecDeque<(i64, EventId)>,
}

/// A firing: the group, the count, and the events it rests on.
#[derive(Debug)]
pub(crate) struct Fired {
    pub(crate) group: Vec<GroupField>,
    pub(crate) count: usize,
    pub(crate) events: Vec<EventId>,
    pub(crate) first_ms: i64,
    pub(crate) timespan_secs: i64,
}

/// What a group's change did to the number of live groups.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Groups {
    pub(crate) added: u64,
    pub(crate) evicted: u64,
}

impl Distinct {
    /// The correlation, if this module can count it: a `value_count` on a
    /// sliding window of one field, without aliases, that no other
    /// correlation names (`named_by_others`).
    pub(crate) fn of(
        key: &str,
        rule: &CorrelationRule,
        named_by_others: bool,
        max_groups: usize,
        max_entries: usize,
        max_events: usize,
    ) -> Option<Distinct> {
        if rule.correlation_type != CorrelationType::ValueCount
            || !rule.aliases.is_empty()
            || rule.window != WindowMode::Sliding
            || named_by_others
        {
            return None;
        }
        let CorrelationCondition::Threshold {
            predicates,
            field: Some(fields),
            ..
        } = &rule.condition
        else {
            return None;
        };
        let [field] = fields.as_slice() else {
            return None;
        };
        let per_shard = (max_groups / SHARDS).max(1);
        Some(Distinct {
            key: key.to_owned(),
            rules: rule.rules.clone(),
            group_by: rule.group_by.clone(),
            field: field.clone(),
            timespan_ms: i64::try_from(rule.timespan.seconds)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            predicates: predicates.clone(),
            max_entries: max_entries.max(1),
            max_events: max_events.max(1),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
        })
    }

    /// Counts `event` (seen at `now_ms`, through `view`) in its group, and
    /// says whether the condition holds after it.
    pub(crate) fn count(
        &self,
        view: &impl Event,
        id: EventId,
        now_ms: i64,
        groups: &mut Groups,
    ) -> Option<Fired> {
        let value = text(view.get_field(&self.field)?)?;
        let group: Vec<String> = self
            .group_by
            .iter()
            .map(|name| view.get_field(name).and_then(text).unwrap_or_default())
            .collect();
        let shard = FixedState::with_seed(0).hash_one(&group) as usize % SHARDS;
        let mut shard = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if shard.get(&group).is_none() {
            if shard.len() >= shard.capacity() {
                groups.evicted += 1;
            } else {
                groups.added += 1;
            }
            shard.insert(group.clone(), Window::default());
        }
        let window = shard.get_mut(&group)?;
        window.expire_before(now_ms.saturating_sub(self.timespan_ms));
        // An event older than one already counted keeps the later sighting.
        let seen = window.last_seen.entry(value.clone()).or_insert(now_ms);
        *seen = (*seen).max(now_ms);
        window.order.push_back((now_ms, value));
        while window.order.len() > self.max_entries {
            window.drop_oldest();
        }
        window.recent.push_back((now_ms, id));
        while window.recent.len() > self.max_events {
            window.recent.pop_front();
        }
        let count = window.last_seen.len();
        let holds = self.predicates.iter().all(|(op, limit)| {
            let (count, limit) = (count as u64, *limit);
            match op {
                ConditionOperator::Lt => count < limit,
                ConditionOperator::Lte => count <= limit,
                ConditionOperator::Gt => count > limit,
                ConditionOperator::Gte => count >= limit,
                ConditionOperator::Eq => count == limit,
                ConditionOperator::Neq => count != limit,
            }
        });
        holds.then(|| Fired {
            group: self
                .group_by
                .iter()
                .zip(&group)
                .map(|(name, value)| field(name, value))
                .collect(),
            count,
            events: window.recent.iter().map(|(_, id)| *id).collect(),
            first_ms: window.recent.front().map_or(now_ms, |(at, _)| *at),
            timespan_secs: self.timespan_ms / 1000,
        })
    }
}

impl Window {
    /// Drops the entries older than `since`.
    fn expire_before(&mut self, since: i64) {
        while self.order.front().is_some_and(|(at, _)| *at < since) {
            self.drop_oldest();
        }
        while self.recent.front().is_some_and(|(at, _)| *at < since) {
            self.recent.pop_front();
        }
    }

    /// Drops the oldest entry; its value goes with it only if it was not
    /// seen since.
    fn drop_oldest(&mut self) {
        if let Some((at, value)) = self.order.pop_front()
            && self.last_seen.get(&value) == Some(&at)
        {
            self.last_seen.remove(&value);
        }
    }
}

/// A field's value as the text a group or a distinct count compares.
fn text(value: EventValue<'_>) -> Option<String> {
    match value {
        EventValue::Null => None,
        EventValue::Array(items) => {
            let parts: Vec<String> = items.into_iter().filter_map(text).collect();
            (!parts.is_empty()).then(|| parts.join(","))
        }
        other => other.as_str().map(|s| s.into_owned()),
    }
}
