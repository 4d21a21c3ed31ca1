//! The engine: the stages assembled in their one order.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use custody_event::{EventId, NewEvent, RuntimeEvent};

use crate::decision::Decision;
use crate::record::{Receipt, Record, RecordError};
use crate::stages::{
    Act, ActionRecord, AllowAll, AsReported, Attribute, Decide, Detect, NoActions, NoDetections,
    Normalize, Provenance, Signal, Stamp,
};

/// An event after every stage but record.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    /// The normalized, attributed event.
    pub event: RuntimeEvent,
    /// What detection found.
    pub signals: Vec<Signal>,
    /// What was decided.
    pub decision: Decision,
    /// What was done about it.
    pub actions: Vec<ActionRecord>,
}

/// A batch accepted by the engine: its ids, in submission order, and the
/// receipt that resolves once it is durable.
#[derive(Debug)]
pub struct Ingested {
    /// The ids of the events, in the order they were submitted.
    pub ids: Vec<EventId>,
    /// Resolves once the whole batch is durable.
    pub receipt: Receipt,
}

/// The pipeline: normalize -> attribute -> detect -> decide -> act -> record.
pub struct Engine {
    normalize: Box<dyn Normalize>,
    attribute: Box<dyn Attribute>,
    detect: Box<dyn Detect>,
    decide: Box<dyn Decide>,
    act: Box<dyn Act>,
    record: Arc<dyn Record>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine recording into `record`, with every other stage as it
    /// stands today; replace stages through the builder.
    pub fn builder(record: Arc<dyn Record>) -> EngineBuilder {
        EngineBuilder {
            engine: Engine {
                normalize: Box::new(Stamp),
                attribute: Box::new(AsReported),
                detect: Box::new(NoDetections),
                decide: Box::new(AllowAll),
                act: Box::new(NoActions),
                record,
            },
        }
    }

    /// The inline path: runs every stage on one event and queues it for
    /// recording. The caller (the gateway) acts on the decision at once and
    /// may wait on the receipt before it answers.
    pub fn evaluate(
        &self,
        event: NewEvent,
        received_at: DateTime<Utc>,
    ) -> (Evaluated, Result<Receipt, RecordError>) {
        self.evaluate_as(event, received_at, &Provenance::Reported)
    }

    /// [`Engine::evaluate`] for an event someone vouches for.
    pub fn evaluate_as(
        &self,
        event: NewEvent,
        received_at: DateTime<Utc>,
        provenance: &Provenance,
    ) -> (Evaluated, Result<Receipt, RecordError>) {
        // The caller needs the decision even when the event cannot be
        // queued; it then holds a refused receipt and must not proceed as
        // if the call were recorded.
        let room = self.record.reserve(1);
        let evaluated = self.process(event, received_at, provenance);
        let receipt =
            room.and_then(|room| self.record.record_reserved(vec![evaluated.clone()], room));
        (evaluated, receipt)
    }

    /// What the decide stage would make of `event`, without it happening:
    /// normalize, attribute, detect and decide run as for
    /// [`Engine::evaluate_as`]; nothing is acted on or recorded. The
    /// gateway asks it of a synthetic call ("may this chain call this
    /// tool?") to show a caller only what it may use. A panic is a
    /// fail-closed decision, as on the inline path.
    pub fn preview_as(
        &self,
        event: NewEvent,
        received_at: DateTime<Utc>,
        provenance: &Provenance,
    ) -> Decision {
        self.judge(event, received_at, provenance, Acting::Preview)
            .decision
    }

    /// The collector path: runs every stage on each event of a batch and
    /// queues the batch for recording as one unit.
    pub fn ingest_batch(
        &self,
        events: Vec<NewEvent>,
        received_at: DateTime<Utc>,
    ) -> Result<Ingested, RecordError> {
        self.ingest_batch_as(events, received_at, &Provenance::Reported)
    }

    /// [`Engine::ingest_batch`] for events someone vouches for.
    pub fn ingest_batch_as(
        &self,
        events: Vec<NewEvent>,
        received_at: DateTime<Utc>,
        provenance: &Provenance,
    ) -> Result<Ingested, RecordError> {
        self.ingest_each(events, |event| self.process(event, received_at, provenance))
    }

    /// Reserves room for `events`, runs `stages` on each, and queues them
    /// as one unit. Room first: a batch refused after the stages saw it
    /// would leave them holding what the store never took.
    fn ingest_each<T>(
        &self,
        events: Vec<T>,
        stages: impl FnMut(T) -> Evaluated,
    ) -> Result<Ingested, RecordError> {
        let room = self.record.reserve(events.len())?;
        let evaluated: Vec<Evaluated> = events.into_iter().map(stages).collect();
        let ids = evaluated.iter().map(|e| e.event.id).collect();
        let receipt = self.record.record_reserved(evaluated, room)?;
        Ok(Ingested { ids, receipt })
    }

    /// The path of events already decided where they happened: a trusted
    /// component of Custody's own (the MCP gateway inside `custody serve`)
    /// decided and enforced each before it could be recorded, with its
    /// outcome. Every stage runs but decide, whose place the given decision
    /// takes; act answers the signals (a playbook's containment) and has no
    /// decision left to carry out, the component having enforced it. Nothing a client sends
    /// reaches this path: the collector decides for itself.
    pub fn ingest_decided_as(
        &self,
        events: Vec<(NewEvent, Decision)>,
        received_at: DateTime<Utc>,
        provenance: &Provenance,
    ) -> Result<Ingested, RecordError> {
        self.ingest_each(events, |(event, decision)| {
            self.judge(event, received_at, provenance, Acting::Decided(decision))
        })
    }

    /// The collector path, awaited: returns the ids once the batch is
    /// durable.
    pub async fn ingest(
        &self,
        events: Vec<NewEvent>,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<EventId>, RecordError> {
        let Ingested { ids, receipt } = self.ingest_batch(events, received_at)?;
        receipt.durable().await?;
        Ok(ids)
    }

    /// Every stage but record. A panic in detect, decide or act must not take
    /// the process down nor let the action through: it becomes a recorded
    /// fail-closed decision.
    fn process(
        &self,
        event: NewEvent,
        received_at: DateTime<Utc>,
        provenance: &Provenance,
    ) -> Evaluated {
        self.judge(event, received_at, provenance, Acting::Yes)
    }

    fn judge(
        &self,
        event: NewEvent,
        received_at: DateTime<Utc>,
        provenance: &Provenance,
        acting: Acting,
    ) -> Evaluated {
        let mut event = self.normalize.normalize(event, received_at);
        self.attribute.attribute(&mut event, provenance);
        let judged = catch_unwind(AssertUnwindSafe(|| {
            let signals = match acting {
                Acting::Preview => self.detect.peek(&event),
                Acting::Yes | Acting::Decided(_) => self.detect.detect(&event),
            };
            let (decision, acts) = match acting {
                Acting::Decided(decision) => (decision, true),
                Acting::Yes => (self.decide.decide(&event, &signals), true),
                Acting::Preview => (self.decide.decide(&event, &signals), false),
            };
            let actions = if acts {
                self.act.act(&event, &signals, &decision)
            } else {
                Vec::new()
            };
            (signals, decision, actions)
        }));
        let (signals, decision, actions) = match judged {
            Ok(judged) => judged,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                (
                    Vec::new(),
                    Decision::fail_closed(format!("a stage panicked while deciding: {what}")),
                    Vec::new(),
                )
            }
        };
        Evaluated {
            event,
            signals,
            decision,
            actions,
        }
    }
}

/// Whether the act stage runs and detection counts the event: a preview
/// does neither; an event decided where it happened is counted, and act
/// sees it with the decision already enforced.
#[derive(Debug)]
enum Acting {
    Yes,
    Decided(Decision),
    Preview,
}

/// Builds an [`Engine`], replacing stages one by one.
#[derive(Debug)]
pub struct EngineBuilder {
    engine: Engine,
}

impl EngineBuilder {
    /// Replaces the normalize stage.
    pub fn normalize(mut self, stage: impl Normalize + 'static) -> Self {
        self.engine.normalize = Box::new(stage);
        self
    }

    /// Replaces the attribute stage.
    pub fn attribute(mut self, stage: impl Attribute + 'static) -> Self {
        self.engine.attribute = Box::new(stage);
        self
    }

    /// Replaces the detect stage.
    pub fn detect(mut self, stage: impl Detect + 'static) -> Self {
        self.engine.detect = Box::new(stage);
        self
    }

    /// Replaces the decide stage.
    pub fn decide(mut self, stage: impl Decide + 'static) -> Self {
        self.engine.decide = Box::new(stage);
        self
    }

    /// Replaces the act stage.
    pub fn act(mut self, stage: impl Act + 'static) -> Self {
        self.engine.act = Box::new(stage);
        self
    }

    /// The engine.
    pub fn build(self) -> Engine {
        self.engine
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use custody_event::{AttributionMethod, decode};

    use super::*;
    use crate::Verdict;

    const EVENT: &str = r#"{
        "kind": "tool_call", "action": "tools/call", "observed_at": "2026-11-25T10:00:00Z",
        "source": {"type": "gateway"},
        "actor": {"current": {"type": "agent", "id": "coder", "run_id": "run-1"}},
        "target": {"tool": "read_file", "server": "filesystem"},
        "outcome": {"status": "success"}
    }"#;

    /// Records into memory and completes every receipt at once.
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

    /// A recorder whose queue is full.
    struct Full;

    impl Full {
        const ERROR: RecordError = RecordError::QueueFull {
            queued: 10,
            capacity: 10,
        };
    }

    impl Record for Full {
        fn record(&self, _batch: Vec<Evaluated>) -> Result<Receipt, RecordError> {
            Err(Full::ERROR)
        }

        fn reserve(&self, _events: usize) -> Result<crate::Reservation, RecordError> {
            Err(Full::ERROR)
        }
    }

    /// Counts the events it attributes.
    #[derive(Default, Clone)]
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    impl Attribute for Counting {
        fn attribute(&self, _event: &mut RuntimeEvent, _provenance: &Provenance) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Appends each stage's name to the event's attributes, so a test can see
    /// the order the stages ran in.
    struct Trace(&'static str);

    fn mark(event: &RuntimeEvent, stage: &str) -> Vec<String> {
        let mut seen: Vec<String> = event
            .attributes
            .get("stages")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        seen.push(stage.to_owned());
        seen
    }

    impl Attribute for Trace {
        fn attribute(&self, event: &mut RuntimeEvent, _provenance: &Provenance) {
            event
                .attributes
                .insert("stages".into(), serde_json::json!(mark(event, self.0)));
            event.attribution.method = AttributionMethod::Bound;
        }
    }

    impl Detect for Trace {
        fn detect(&self, event: &RuntimeEvent) -> Vec<Signal> {
            vec![Signal::new(self.0, mark(event, self.0).join(","))]
        }
    }

    impl Decide for Trace {
        fn decide(&self, _event: &RuntimeEvent, signals: &[Signal]) -> Decision {
            let seen = signals
                .iter()
                .map(|s| s.message.as_str())
                .collect::<Vec<_>>()
                .join(",");
            Decision {
                verdict: Verdict::Alert,
                reasons: vec![crate::Reason {
                    source: crate::ReasonSource::Rule,
                    id: self.0.into(),
                    message: format!("{seen},{}", self.0),
                }],
            }
        }
    }

    struct Panics;

    impl Decide for Panics {
        fn decide(&self, _event: &RuntimeEvent, _signals: &[Signal]) -> Decision {
            panic!("policy store corrupted")
        }
    }

    fn event() -> NewEvent {
        decode(EVENT.as_bytes()).unwrap()
    }

    #[test]
    fn a_vouched_for_event_takes_its_token_s_chain() {
        let engine = Engine::builder(Arc::new(Memory::default())).build();
        let reported = engine.evaluate(event(), Utc::now()).0.event;
        let chain: custody_event::Actor = serde_json::from_value(serde_json::json!({
            "root": {"type": "human", "id": "alice@example.com"},
            "current": {"type": "agent", "id": "release-bot", "run_id": "run-0"},
            "credential": {"type": "custody_token", "id": "jti-1"},
        }))
        .unwrap();
        let provenance = Provenance::Authenticated {
            token: "jti-1".into(),
            chain: chain.clone(),
        };
        let vouched = engine.evaluate_as(event(), Utc::now(), &provenance).0.event;
        assert_ne!(reported.actor, chain, "reported events keep their claim");
        assert_eq!(vouched.actor, chain);
        assert_eq!(
            vouched.attribution.method,
            custody_event::AttributionMethod::Authenticated
        );
        assert_eq!(vouched.attribution.evidence[0].detail, "jti-1");
    }

    #[test]
    fn stages_run_in_order_and_feed_each_other() {
        let memory = Arc::new(Memory::default());
        let engine = Engine::builder(memory.clone())
            .attribute(Trace("attribute"))
            .detect(Trace("detect"))
            .decide(Trace("decide"))
            .build();
        let (evaluated, receipt) = engine.evaluate(event(), Utc::now());
        receipt.unwrap().blocking_durable().unwrap();
        assert_eq!(evaluated.event.attribution.method, AttributionMethod::Bound);
        assert_eq!(evaluated.decision.verdict, Verdict::Alert);
        assert_eq!(
            evaluated.decision.reasons[0].message,
            "attribute,detect,decide"
        );
        assert_eq!(memory.0.lock().unwrap().as_slice(), &[evaluated]);
    }

    #[test]
    fn default_stages_allow_and_keep_what_the_source_said() {
        let engine = Engine::builder(Arc::new(Memory::default())).build();
        let received = Utc::now();
        let (evaluated, _) = engine.evaluate(event(), received);
        assert_eq!(evaluated.decision, Decision::allow());
        assert_eq!(evaluated.event.received_at, received);
        assert_eq!(
            evaluated.event.attribution.method,
            AttributionMethod::Unattributed
        );
        assert_eq!(evaluated.event.id.0.get_version_num(), 7);
    }

    #[test]
    fn a_panic_while_deciding_fails_closed() {
        let engine = Engine::builder(Arc::new(Memory::default()))
            .decide(Panics)
            .build();
        let (evaluated, _) = engine.evaluate(event(), Utc::now());
        assert_eq!(evaluated.decision.verdict, Verdict::Deny);
        assert!(
            evaluated.decision.reasons[0]
                .message
                .contains("policy store corrupted")
        );
    }

    /// Counts what it is asked to carry out.
    #[derive(Default)]
    struct CountingActs(Mutex<usize>);

    impl Act for Arc<CountingActs> {
        fn act(
            &self,
            _event: &RuntimeEvent,
            _signals: &[Signal],
            _decision: &Decision,
        ) -> Vec<ActionRecord> {
            *self.0.lock().unwrap() += 1;
            Vec::new()
        }
    }

    #[test]
    fn a_preview_decides_without_acting_or_recording() {
        let memory = Arc::new(Memory::default());
        let acts = Arc::new(CountingActs::default());
        let engine = Engine::builder(memory.clone())
            .detect(Trace("detect"))
            .decide(Trace("decide"))
            .act(acts.clone())
            .build();
        let decision = engine.preview_as(event(), Utc::now(), &Provenance::Reported);
        assert_eq!(decision.verdict, Verdict::Alert);
        assert_eq!(decision.reasons[0].message, "detect,decide");
        assert_eq!(*acts.0.lock().unwrap(), 0);
        assert!(memory.0.lock().unwrap().is_empty());

        let panics = Engine::builder(memory).decide(Panics).build();
        let decision = panics.preview_as(event(), Utc::now(), &Provenance::Reported);
        assert_eq!(decision.verdict, Verdict::Deny);
    }

    #[tokio::test]
    async fn batches_keep_order_and_client_ids() {
        let memory = Arc::new(Memory::default());
        let engine = Engine::builder(memory.clone()).build();
        let mut chosen = event();
        let id: EventId = "0193a5b0-7e2f-7cc3-9f5e-2f7f0b6a1c01".parse().unwrap();
        chosen.id = Some(id);
        let ids = engine
            .ingest(vec![event(), chosen, event()], Utc::now())
            .await
            .unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[1], id);
        let stored: Vec<EventId> = memory
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event.id)
            .collect();
        assert_eq!(stored, ids);
    }

    #[test]
    fn a_full_queue_is_reported_before_the_stages_see_the_batch() {
        let seen = Counting::default();
        let engine = Engine::builder(Arc::new(Full))
            .attribute(seen.clone())
            .build();
        let error = engine.ingest_batch(vec![event()], Utc::now()).unwrap_err();
        assert_eq!(error, Full::ERROR);
        assert_eq!(
            seen.0.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "a refused batch teaches attribution nothing: its retry will"
        );
        // The inline path still decides, and says the event was not queued.
        let (evaluated, receipt) = engine.evaluate(event(), Utc::now());
        assert_eq!(evaluated.decision.verdict, Verdict::Allow);
        assert_eq!(receipt.unwrap_err(), Full::ERROR);
    }
}
