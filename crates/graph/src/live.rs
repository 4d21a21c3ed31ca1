//! The engine's attribute stage: attribution, and the agent graph unless
//! turned off, updated for every event as it passes.
//!
//! Attribution must finish before the event moves on (detection and
//! decisions read its chain), and so must the graph, which holds the blast
//! radius that thresholds and policies will read: both run inline under one
//! lock, held for a few microseconds. The graph's storage grows without
//! pauses (see `arena.rs`); `custody serve --no-graph` keeps attribution
//! only, for less memory and some more ingest throughput.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use custody_engine::{Attribute, Provenance};
use custody_event::RuntimeEvent;

use crate::attribution::{Attributor, Binding, Trust};
use crate::graph::Graph;

/// The attributor, and the graph if kept, as the pipeline uses them. Cheap
/// to clone: clones share one state, so the API can read what the engine
/// writes.
#[derive(Debug, Default, Clone)]
pub struct Live {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    attributor: Attributor,
    graph: Option<Graph>,
}

impl Live {
    /// A stage over `attributor` and `graph`.
    pub fn new(attributor: Attributor, graph: Graph) -> Live {
        Live {
            state: Arc::new(Mutex::new(State {
                attributor,
                graph: Some(graph),
            })),
        }
    }

    /// A stage that attributes and keeps no graph.
    pub fn without_graph(attributor: Attributor) -> Live {
        Live {
            state: Arc::new(Mutex::new(State {
                attributor,
                graph: None,
            })),
        }
    }

    /// Adds a binding (declared through the API, or made by minting a
    /// token).
    pub fn bind(&self, binding: Binding) {
        self.lock().attributor.bind(binding);
    }

    /// Takes in an event attributed before, as when replaying the store on
    /// start: its bindings and session, and its place in the graph.
    pub fn replay(&self, event: &RuntimeEvent) {
        self.replay_all(std::slice::from_ref(event));
    }

    /// [`Live::replay`] for many events, under one lock.
    pub fn replay_all(&self, events: &[RuntimeEvent]) {
        let mut state = self.lock();
        for event in events {
            state.attributor.observe(event);
            if let Some(graph) = &mut state.graph {
                graph.apply(event);
            }
        }
    }

    /// Attributes an event whose submitter proved its chain (`trust`) and
    /// adds it to the graph.
    pub fn attribute_with(&self, event: &mut RuntimeEvent, trust: &Trust) {
        let mut state = self.lock();
        state.attributor.attribute(event, trust);
        if let Some(graph) = &mut state.graph {
            graph.apply(event);
        }
    }

    /// Reads the graph, if one is kept.
    pub fn read<R>(&self, f: impl FnOnce(&Graph) -> R) -> Option<R> {
        self.lock().graph.as_ref().map(f)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves at worst one event half applied to
        // the graph; the state stays usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Attribute for Live {
    /// A reported event's chain is recomputed from bindings and sessions;
    /// one a validated token vouches for is that token's chain.
    fn attribute(&self, event: &mut RuntimeEvent, provenance: &Provenance) {
        match provenance {
            Provenance::Reported => self.attribute_with(event, &Trust::Reported),
            Provenance::Authenticated { token, chain } => {
                event.actor = chain.clone();
                self.attribute_with(event, &Trust::Authenticated(token.clone()));
            }
            Provenance::Custody { what, chain } => {
                // Custody's own record needs no resolving: it is taken in
                // as an attributed event is on replay.
                custody_engine::recorded_by_custody(event, what, chain);
                self.replay(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use custody_engine::{Engine, Evaluated, Receipt, Record, RecordError};
    use custody_event::{AttributionMethod, decode_value};
    use serde_json::json;

    use super::*;
    use crate::{BindingKey, Origin, Sensitivity};

    /// Keeps what is recorded.
    #[derive(Default)]
    struct Memory(Mutex<Vec<Evaluated>>);

    impl Record for Memory {
        fn record(&self, batch: Vec<Evaluated>) -> Result<Receipt, RecordError> {
            self.0.lock().unwrap().extend(batch);
            let (done, receipt) = Receipt::channel();
            let _ = done.send(Ok(()));
            Ok(receipt)
        }
    }

    fn at(second: i64) -> DateTime<Utc> {
        "2026-11-25T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::seconds(second)
    }

    #[test]
    fn the_engine_attributes_and_builds_the_graph_and_a_replay_rebuilds_it() {
        let live = Live::new(Attributor::default(), Graph::new(Sensitivity::default()));
        live.bind(Binding {
            id: "decl-1".into(),
            key: BindingKey::AwsAccessKey("AKIAEXAMPLE000000001".into()),
            holder: serde_json::from_value(json!({
                "root": {"type": "human", "id": "alice@example.com"},
                "current": {"type": "agent", "id": "deployer", "run_id": "run-7"},
            }))
            .unwrap(),
            valid_from: at(0),
            valid_until: None,
            origin: Origin::Declared,
        });
        let memory = Arc::new(Memory::default());
        let engine = Engine::builder(memory.clone())
            .attribute(live.clone())
            .build();
        let submit = |second: i64, actor: serde_json::Value| {
            let event = decode_value(json!({
                "kind": "data_access", "action": "s3:GetObject",
                "observed_at": at(second), "source": {"type": "cloudtrail"},
                "actor": actor, "target": {"resource": "arn:aws:s3:::releases/app.tar.gz"},
                "outcome": {"status": "success"},
                // Claims are not taken: attribution is recomputed.
                "attribution": {"method": "authenticated"},
            }))
            .unwrap();
            engine.evaluate(event, at(second)).0.event
        };
        let bound = submit(
            1,
            json!({"current": {"type": "service", "id": "iam-user/ci"},
                   "credential": {"type": "aws_access_key", "id": "AKIAEXAMPLE000000001"}}),
        );
        assert_eq!(bound.attribution.method, AttributionMethod::Bound);
        assert_eq!(bound.actor.root.unwrap().id, "alice@example.com");
        let claimed = submit(
            2,
            json!({"root": {"type": "human", "id": "bob@example.com"},
                   "current": {"type": "agent", "id": "impostor", "run_id": "run-x"}}),
        );
        assert_eq!(claimed.attribution.method, AttributionMethod::Unattributed);
        assert_eq!(claimed.attribution.evidence[0].kind, "reported");

        let dump = live.read(Graph::dump).unwrap();
        assert!(
            dump.contains("human:alice@example.com -deployed-> run:run-7"),
            "{dump}"
        );
        assert!(
            !dump.contains("bob@example.com"),
            "no lineage on a claim: {dump}"
        );
        // What was recorded, replayed into a fresh stage, gives the same graph.
        let fresh = Live::new(Attributor::default(), Graph::new(Sensitivity::default()));
        for evaluated in memory.0.lock().unwrap().iter() {
            fresh.replay(&evaluated.event);
        }
        assert_eq!(fresh.read(Graph::dump).unwrap(), dump);
    }
}
