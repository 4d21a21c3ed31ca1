//! What a rule sees of an event: its Sigma fields.
//!
//! An event has two faces. The **Custody face** is the normalized event,
//! addressed by the paths of its JSON form (`kind`, `action`,
//! `actor.current.id`, `target.tool`, `outcome.status`,
//! `attributes.<name>`), plus the chain keys (`chain.root`, `chain.run`,
//! `chain.agent_type`, `chain.actor`, `chain.depth`) and the source's raw
//! record under `raw.`. The **native face** of an imported record is the raw
//! record itself, field for field as its source wrote it, so stock rules
//! for CloudTrail, Okta or GitHub run unchanged; its Custody fields are
//! still there under `custody.` (`custody.chain.run`).
//!
//! Raw records are stored as JSON text; the text is parsed once per event,
//! and only when a rule asks for a raw field.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;

use custody_event::{Principal, PrincipalKind, RuntimeEvent};
use rsigma_eval::{Event, EventValue};
use serde_json::Value;

/// One event, its raw record parsed on demand.
#[derive(Debug)]
pub struct Parsed<'a> {
    event: &'a RuntimeEvent,
    raw: OnceCell<Option<Value>>,
}

impl<'a> Parsed<'a> {
    /// The event, its raw record not yet parsed.
    pub fn new(event: &'a RuntimeEvent) -> Parsed<'a> {
        Parsed {
            event,
            raw: OnceCell::new(),
        }
    }

    /// The event.
    pub fn event(&self) -> &'a RuntimeEvent {
        self.event
    }

    /// The face rules of `face` see.
    pub fn face(&self, face: Face) -> View<'_, 'a> {
        View { parsed: self, face }
    }

    fn raw(&self) -> Option<&Value> {
        self.raw
            .get_or_init(|| {
                let raw = self.event.raw.as_ref()?;
                serde_json::from_str(raw.get()).ok()
            })
            .as_ref()
    }
}

/// Which face of an event a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Face {
    /// The normalized event.
    Custody,
    /// The raw record of an imported event.
    Native,
}

/// An event as rules of one face see it.
#[derive(Debug, Clone, Copy)]
pub struct View<'p, 'a> {
    parsed: &'p Parsed<'a>,
    face: Face,
}

impl View<'_, '_> {
    fn raw_field(&self, path: &str) -> Option<EventValue<'_>> {
        let raw = self.parsed.raw()?;
        lookup(raw, path).or_else(|| lookup_ignoring_case(raw, path))
    }
}

/// The value at a dotted path, as Sigma reads JSON: the whole path as one
/// key first, then segment by segment; a segment crossing an array follows
/// every member, and several values found make an array (any may match).
fn lookup<'v>(value: &'v Value, path: &str) -> Option<EventValue<'v>> {
    if let Some(exact) = value.as_object().and_then(|object| object.get(path)) {
        return Some(EventValue::from(exact));
    }
    if !path.contains('.') {
        return None;
    }
    let mut found = Vec::new();
    let segments: Vec<&str> = path.split('.').collect();
    walk(value, &segments, &mut found, false);
    match found.len() {
        0 => None,
        1 => found.pop(),
        _ => Some(EventValue::Array(found)),
    }
}

fn walk<'v>(
    value: &'v Value,
    segments: &[&str],
    found: &mut Vec<EventValue<'v>>,
    ignoring_case: bool,
) {
    let Some((segment, rest)) = segments.split_first() else {
        found.push(EventValue::from(value));
        return;
    };
    match value {
        Value::Object(object) => {
            let next = if ignoring_case {
                object
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(segment))
                    .map(|(_, value)| value)
            } else {
                object.get(*segment)
            };
            if let Some(next) = next {
                walk(next, rest, found, ignoring_case);
            }
        }
        // The segment applies to each member.
        Value::Array(items) => items
            .iter()
            .for_each(|item| walk(item, segments, found, ignoring_case)),
        _ => {}
    }
}

/// Sigma field names are case-insensitive in most backends, and stock rules
/// rely on it (SigmaHQ's Okta rules write `eventtype` for `eventType`).
/// Tried only when the exact path is absent.
fn lookup_ignoring_case<'v>(value: &'v Value, path: &str) -> Option<EventValue<'v>> {
    let mut found = Vec::new();
    let segments: Vec<&str> = path.split('.').collect();
    walk(value, &segments, &mut found, true);
    match found.len() {
        0 => None,
        1 => found.pop(),
        _ => Some(EventValue::Array(found)),
    }
}

fn text(value: &str) -> Option<EventValue<'_>> {
    Some(EventValue::Str(Cow::Borrowed(value)))
}

fn optional(value: Option<&str>) -> Option<EventValue<'_>> {
    value.map(|value| EventValue::Str(Cow::Borrowed(value)))
}

fn principal<'e>(principal: &'e Principal, field: &str) -> Option<EventValue<'e>> {
    match field {
        "type" => text(principal.kind.as_str()),
        "id" => text(&principal.id),
        "name" => optional(principal.name.as_deref()),
        "version" => optional(principal.version.as_deref()),
        "run_id" => optional(principal.run_id.as_deref()),
        _ => None,
    }
}

/// The run an event belongs to: the current actor's, else the nearest
/// agent's above it.
pub fn run_of(event: &RuntimeEvent) -> Option<&str> {
    event.actor.current.run_id.as_deref().or_else(|| {
        event
            .actor
            .agents
            .iter()
            .rev()
            .find_map(|a| a.run_id.as_deref())
    })
}

/// The agent type of an event's actor: the current agent's id (with its
/// version when it has one), else the nearest agent's above it.
pub fn agent_type_of(event: &RuntimeEvent) -> Option<Cow<'_, str>> {
    let agent = if event.actor.current.kind == PrincipalKind::Agent {
        Some(&event.actor.current)
    } else {
        event.actor.agents.last()
    }?;
    Some(match &agent.version {
        Some(version) => Cow::Owned(format!("{}@{version}", agent.id)),
        None => Cow::Borrowed(agent.id.as_str()),
    })
}

/// A resolver of one fixed field of the Custody face.
type Resolver = for<'e> fn(&'e RuntimeEvent) -> Option<EventValue<'e>>;

/// The fixed fields of the Custody face, by path: rules ask for fields
/// dozens of times an event (the engine's index probes them too), and one
/// hash lookup is cheaper than comparing the path with each name in turn.
static FIXED: std::sync::LazyLock<HashMap<&'static str, Resolver, foldhash::fast::RandomState>> =
    std::sync::LazyLock::new(|| {
        let mut fixed: HashMap<&'static str, Resolver, _> = HashMap::default();
        let mut add = |path: &'static str, resolve: Resolver| {
            fixed.insert(path, resolve);
        };
        add("kind", |e| text(e.kind.as_str()));
        add("action", |e| text(&e.action));
        add("source.type", |e| text(e.source.kind.as_str()));
        add("source.name", |e| optional(e.source.name.as_deref()));
        add("source.record_id", |e| {
            optional(e.source.record_id.as_deref())
        });
        add("outcome.status", |e| text(e.outcome.status.as_str()));
        add("outcome.reason", |e| optional(e.outcome.reason.as_deref()));
        add("attribution.method", |e| {
            text(e.attribution.method.as_str())
        });
        add("actor.current.type", |e| {
            text(e.actor.current.kind.as_str())
        });
        add("actor.current.id", |e| text(&e.actor.current.id));
        add("actor.current.name", |e| {
            optional(e.actor.current.name.as_deref())
        });
        add("actor.current.version", |e| {
            optional(e.actor.current.version.as_deref())
        });
        add("actor.current.run_id", |e| {
            optional(e.actor.current.run_id.as_deref())
        });
        add("actor.root.type", |e| {
            e.actor.root.as_ref().and_then(|r| text(r.kind.as_str()))
        });
        add("actor.root.id", |e| {
            e.actor.root.as_ref().and_then(|r| text(&r.id))
        });
        add("actor.credential.type", |e| {
            e.actor
                .credential
                .as_ref()
                .and_then(|c| text(c.kind.as_str()))
        });
        add("actor.credential.id", |e| {
            e.actor.credential.as_ref().and_then(|c| text(&c.id))
        });
        add("actor.depth", |e| chain_field(e, "depth"));
        add("chain.root", |e| chain_field(e, "root"));
        add("chain.run", |e| chain_field(e, "run"));
        add("chain.agent_type", |e| chain_field(e, "agent_type"));
        add("chain.actor", |e| chain_field(e, "actor"));
        add("chain.parent", |e| chain_field(e, "parent"));
        add("chain.parent_run", |e| chain_field(e, "parent_run"));
        add("chain.depth", |e| chain_field(e, "depth"));
        add("target.tool", |e| optional(e.target.tool.as_deref()));
        add("target.server", |e| optional(e.target.server.as_deref()));
        add("target.resource", |e| {
            optional(e.target.resource.as_deref())
        });
        add("target.resource_type", |e| {
            optional(e.target.resource_type.as_deref())
        });
        add("target.system", |e| optional(e.target.system.as_deref()));
        add("context.session_id", |e| {
            optional(e.context.session_id.as_deref())
        });
        add("context.trace_id", |e| {
            optional(e.context.trace_id.as_deref())
        });
        add("context.tool_call_id", |e| {
            optional(e.context.tool_call_id.as_deref())
        });
        fixed
    });

/// A field of the Custody face.
fn custody_field<'e>(parsed: &'e Parsed<'_>, path: &str) -> Option<EventValue<'e>> {
    let event = parsed.event;
    if let Some(resolve) = FIXED.get(path) {
        return resolve(event);
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    match (head, rest) {
        ("id", "") => Some(EventValue::Str(Cow::Owned(event.id.to_string()))),
        ("kind", "") => text(event.kind.as_str()),
        ("action", "") => text(&event.action),
        ("observed_at", "") => Some(EventValue::Str(Cow::Owned(event.observed_at.to_rfc3339()))),
        ("source", "type") => text(event.source.kind.as_str()),
        ("source", "name") => optional(event.source.name.as_deref()),
        ("source", "record_id") => optional(event.source.record_id.as_deref()),
        ("actor", rest) => actor_field(event, rest),
        ("chain", rest) => chain_field(event, rest),
        ("target", rest) => target_field(event, rest),
        ("outcome", "status") => text(event.outcome.status.as_str()),
        ("outcome", "reason") => optional(event.outcome.reason.as_deref()),
        ("outcome", "duration_ms") => event
            .outcome
            .duration_ms
            .and_then(|ms| i64::try_from(ms).ok())
            .map(EventValue::Int),
        ("attribution", "method") => text(event.attribution.method.as_str()),
        ("context", rest) => {
            let context = &event.context;
            optional(match rest {
                "session_id" => context.session_id.as_deref(),
                "conversation_id" => context.conversation_id.as_deref(),
                "trace_id" => context.trace_id.as_deref(),
                "span_id" => context.span_id.as_deref(),
                "parent_span_id" => context.parent_span_id.as_deref(),
                "tool_call_id" => context.tool_call_id.as_deref(),
                "request_id" => context.request_id.as_deref(),
                _ => None,
            })
        }
        ("attributes", name) if !name.is_empty() => attribute(event, name),
        ("raw", rest) if !rest.is_empty() => {
            let raw = parsed.raw()?;
            lookup(raw, rest).or_else(|| lookup_ignoring_case(raw, rest))
        }
        _ => None,
    }
}

fn actor_field<'e>(event: &'e RuntimeEvent, rest: &str) -> Option<EventValue<'e>> {
    let actor = &event.actor;
    let (head, field) = rest.split_once('.').unwrap_or((rest, ""));
    match (head, field) {
        ("current", field) => principal(&actor.current, field),
        ("root", field) => principal(actor.root.as_ref()?, field),
        ("agents", "") | ("agents", "id") => Some(EventValue::Array(
            actor
                .agents
                .iter()
                .map(|agent| EventValue::Str(Cow::Borrowed(agent.id.as_str())))
                .collect(),
        )),
        ("agents", field) => Some(EventValue::Array(
            actor
                .agents
                .iter()
                .filter_map(|agent| principal(agent, field))
                .collect(),
        )),
        ("credential", field) => {
            let credential = actor.credential.as_ref()?;
            match field {
                "type" => text(credential.kind.as_str()),
                "id" => text(&credential.id),
                "issuer" => optional(credential.issuer.as_deref()),
                _ => None,
            }
        }
        ("depth", "") => i64::try_from(actor.depth()).ok().map(EventValue::Int),
        _ => None,
    }
}

fn chain_field<'e>(event: &'e RuntimeEvent, rest: &str) -> Option<EventValue<'e>> {
    match rest {
        "root" => optional(event.actor.root_id()),
        "run" => optional(run_of(event)),
        "agent_type" => agent_type_of(event).map(EventValue::Str),
        "actor" => text(&event.actor.current.id),
        "parent" => optional(event.actor.agents.last().map(|a| a.id.as_str())),
        "parent_run" => optional(event.actor.agents.last().and_then(|a| a.run_id.as_deref())),
        "depth" => i64::try_from(event.actor.depth()).ok().map(EventValue::Int),
        _ => None,
    }
}

fn target_field<'e>(event: &'e RuntimeEvent, rest: &str) -> Option<EventValue<'e>> {
    let target = &event.target;
    match rest.split_once('.') {
        Some(("principal", field)) => principal(target.principal.as_ref()?, field),
        Some(_) => None,
        None => optional(match rest {
            "tool" => target.tool.as_deref(),
            "server" => target.server.as_deref(),
            "resource" => target.resource.as_deref(),
            "resource_type" => target.resource_type.as_deref(),
            "system" => target.system.as_deref(),
            _ => None,
        }),
    }
}

/// An attribute by its whole name (`gen_ai.tool.name`), else a path into
/// an attribute's value (`mcp.arguments.path`).
fn attribute<'e>(event: &'e RuntimeEvent, name: &str) -> Option<EventValue<'e>> {
    if let Some(value) = event.attributes.get(name) {
        return Some(EventValue::from(value));
    }
    let mut split = name.len();
    while let Some(dot) = name[..split].rfind('.') {
        if let Some(value) = event.attributes.get(&name[..dot]) {
            return lookup(value, &name[dot + 1..]);
        }
        split = dot;
    }
    None
}

/// Every string of the Custody face, for keyword rules.
fn custody_strings<'e>(parsed: &'e Parsed<'_>, visit: &mut dyn FnMut(&str)) {
    let event = parsed.event;
    visit(&event.action);
    let chain = &event.actor;
    for principal in chain
        .root
        .iter()
        .chain(chain.agents.iter())
        .chain(std::iter::once(&chain.current))
        .chain(event.target.principal.iter())
    {
        visit(&principal.id);
        if let Some(name) = &principal.name {
            visit(name);
        }
    }
    if let Some(credential) = &chain.credential {
        visit(&credential.id);
    }
    let target = &event.target;
    for value in [
        &target.tool,
        &target.server,
        &target.resource,
        &target.resource_type,
        &target.system,
        &event.outcome.reason,
    ]
    .into_iter()
    .flatten()
    {
        visit(value);
    }
    for value in event.attributes.values() {
        visit_json_strings(value, visit, 64);
    }
    if let Some(raw) = parsed.raw() {
        visit_json_strings(raw, visit, 64);
    }
}

fn visit_json_strings(value: &Value, visit: &mut dyn FnMut(&str), depth: usize) {
    if depth == 0 {
        return;
    }
    match value {
        Value::String(s) => visit(s),
        Value::Array(items) => items
            .iter()
            .for_each(|item| visit_json_strings(item, visit, depth - 1)),
        Value::Object(map) => map
            .values()
            .for_each(|item| visit_json_strings(item, visit, depth - 1)),
        _ => {}
    }
}

impl Event for View<'_, '_> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        if let Some(custody) = path.strip_prefix("custody.") {
            return custody_field(self.parsed, custody);
        }
        match self.face {
            Face::Custody => custody_field(self.parsed, path),
            Face::Native => self.raw_field(path),
        }
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        let mut found = false;
        self.visit_string_values(&mut |s| found = found || pred(s));
        found
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        let mut all = Vec::new();
        self.visit_string_values(&mut |s| all.push(Cow::Owned(s.to_owned())));
        all
    }

    fn visit_string_values(&self, visit: &mut dyn FnMut(&str)) {
        match self.face {
            Face::Custody => custody_strings(self.parsed, visit),
            Face::Native => {
                if let Some(raw) = self.parsed.raw() {
                    visit_json_strings(raw, visit, 64);
                }
            }
        }
    }

    /// Only the id: correlation keeps references to the events it counts
    /// (their ids, read from here), never the events themselves.
    fn to_json(&self) -> Value {
        serde_json::json!({ "id": self.parsed.event.id.to_string() })
    }
}
