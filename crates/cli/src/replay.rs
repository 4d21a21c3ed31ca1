//! Rebuilding the attribute stage's memory on start: every stored event, in
//! commit order, fed to attribution and the graph.
//!
//! Reading and decoding the stored JSON cost about as much as applying the
//! events, so a thread of its own reads and decodes pages ahead while this
//! one applies them: on two cores, start-up takes about half as long.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use custody_event::RuntimeEvent;
use custody_graph::Live;
use custody_store::{Store, StoreError};

/// Events read and decoded at a time.
const PAGE: usize = 10_000;
/// Pages decoded ahead of the one being applied.
const AHEAD: usize = 4;

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Events applied.
    pub events: u64,
    /// Stored events that no longer parse, skipped (each logged).
    pub skipped: u64,
    /// How long it took.
    pub took: Duration,
}

/// Feeds every stored event, in commit order, to `live`: its bindings and
/// sessions, and its graph when kept.
pub fn replay(store: &Store, live: &Live) -> anyhow::Result<Replayed> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let (pages, decoded) = mpsc::sync_channel::<Vec<RuntimeEvent>>(AHEAD);
        let reader = std::thread::Builder::new()
            .name("custody-replay".into())
            .spawn_scoped(scope, move || read(store, &pages))
            .context("starting the replay's reading thread")?;
        let mut events = 0u64;
        for page in decoded {
            live.replay_all(&page);
            events += page.len() as u64;
        }
        let skipped = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the replay's reading thread panicked"))?
            .context("reading the store")?;
        Ok(Replayed {
            events,
            skipped,
            took: started.elapsed(),
        })
    })
}

/// Reads and decodes every stored event into `pages`; returns how many
/// were skipped as unreadable.
fn read(store: &Store, pages: &mpsc::SyncSender<Vec<RuntimeEvent>>) -> Result<u64, StoreError> {
    let (mut after, mut skipped) = (0, 0u64);
    loop {
        let page = store.scan(after, PAGE)?;
        let Some(last) = page.last() else {
            return Ok(skipped);
        };
        after = last.seq;
        let events = page
            .iter()
            .filter_map(|stored| {
                stored
                    .event()
                    .inspect_err(|error| {
                        skipped += 1;
                        tracing::warn!(%error, "skipping a stored event that no longer parses");
                    })
                    .ok()
            })
            .collect();
        if pages.send(events).is_err() {
            // The applying side is gone: nothing left to do.
            return Ok(skipped);
        }
    }
}
