//! OpenTelemetry traces of AI agents turned into Custody events.
//!
//! [`Mapper::map`] takes one OTLP `ExportTraceServiceRequest` and returns one
//! [`NewEvent`] per span, or a [`SpanError`] saying why a span could not be
//! mapped: every span is accounted for, an unrecognised one is kept as kind
//! `other`. Spans are read per the OpenTelemetry GenAI semantic conventions
//! (`gen_ai.operation.name`: `invoke_agent`, `create_agent`, `execute_tool`,
//! `invoke_workflow`; `gen_ai.agent.*`, `gen_ai.tool.*`,
//! `gen_ai.conversation.id`), the MCP conventions (`mcp.method.name`,
//! `mcp.session.id`), older GenAI shapes (`gen_ai.system`, span names
//! `agent <name>` and `tool <name>`) and OpenInference
//! (`openinference.span.kind`, `agent.name`, `tool.name`, `session.id`).
//!
//! **Lineage.** The span tree says who acted for whom: an agent span inside
//! another agent's span is its sub-agent; any other span belongs to the
//! nearest agent span above it; the human is the `user.id` (or the older
//! `enduser.id`) of the span or its nearest ancestor that has one. The chain
//! is *reported* in the event's `actor` (the engine attributes). An agent
//! span's own event is an `agent_spawn` by the chain above it, the agent as
//! `target.principal`.
//!
//! A span's parent may arrive in an earlier request: the [`Mapper`] keeps
//! the lineage of recent spans that have one (a human or an agent), bounded
//! in count and age ([`Limits`]), keyed by trace and span id, and counts what
//! it links, evicts and misses ([`Stats`]). A span whose parent is in
//! neither the request nor that buffer (it comes later, it was evicted, or
//! it is never sent) is mapped at once with what is known from the spans of
//! its own request, and carries the attribute `otlp.parent_missing: true`:
//! events are never held back waiting for a parent, since the exporter is
//! answered only once its events are durable (and an SDK's batch exporter
//! sends its next batch, which may hold the parent, only after that answer).
//!
//! **Late parents.** Such a span (with the spans below it) is also kept,
//! bounded in count and age, keyed by the parent it waits for. When that
//! parent arrives, in whatever later request, the kept spans are mapped
//! again below it, and the request's answer includes their new events: the
//! same action with the whole chain, each with an id derived from the first
//! event's and the attribute `otlp.supersedes` naming it. The log stays
//! append-only; a reader counting actions skips events superseded this way.
//!
//! *Invariant:* no IO, and no panic on any input.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod attrs;
mod lineage;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use custody_event::{
    Actor, Context, EventId, EventKind, NewEvent, Outcome, OutcomeStatus, Principal, PrincipalKind,
    RawRecord, Source, SourceKind, Target,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, status::StatusCode};
use uuid::Uuid;

pub use attrs::Attrs;
use lineage::{Buffer, Lineage, Orphan};
pub use lineage::{Limits, Stats};
pub use opentelemetry_proto::tonic::collector::trace::v1 as collector;

/// The namespace of the events' ids (UUIDv5 of the trace id's 16 bytes then
/// the span id's 8): fixed forever, so a span sent twice is stored once.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_2a51_93d4_4e8b_a1f7_35c2_d08e_4b19);

/// Set on an event whose span's parent was in neither its request nor the
/// buffer of recent spans: its chain holds only what its request showed.
pub const ATTR_PARENT_MISSING: &str = "otlp.parent_missing";
/// Set on an event mapped again once its span's missing parent arrived:
/// the id of the event it supersedes (the first, with the chain its own
/// request showed).
pub const ATTR_SUPERSEDES: &str = "otlp.supersedes";
/// The span's name.
pub const ATTR_SPAN_NAME: &str = "otlp.span.name";
/// The resource's `service.name`.
pub const ATTR_SERVICE: &str = "otlp.service.name";
/// Set on an event whose span gave no start time, so its `observed_at` is
/// the time it was received.
pub const ATTR_TIME_MISSING: &str = "otlp.time_missing";

/// Why one span was not mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanError {
    /// The span's position in the request, counted over every resource and
    /// scope from 0.
    pub index: usize,
    /// Why.
    pub message: String,
}

/// The result of one request: the events of the spans mapped, in request
/// order, and why the others were not.
#[derive(Debug, Default)]
pub struct Mapped {
    /// One event per mapped span.
    pub events: Vec<NewEvent>,
    /// One entry per span refused.
    pub errors: Vec<SpanError>,
}

/// What a span is, by the conventions it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `invoke_agent`, `create_agent`, OpenInference `AGENT`, `agent <name>`.
    Agent,
    /// `execute_tool`, OpenInference `TOOL`, `tool <name>`.
    Tool,
    /// A span with `mcp.method.name`.
    Mcp,
    /// `invoke_workflow`, OpenInference `CHAIN`.
    Workflow,
    /// Anything else (a model call, an HTTP request, an unknown span).
    Other,
}

/// Maps OTLP trace requests to events, remembering recent spans' lineage so
/// that later requests link to it.
#[derive(Debug, Default)]
pub struct Mapper {
    buffer: Buffer,
}

/// One span of a request with where it came from.
struct Item<'a> {
    span: &'a Span,
    attrs: Attrs<'a>,
    resource: Attrs<'a>,
    resource_attributes: &'a [KeyValue],
}

impl Mapper {
    /// A mapper whose buffer of recent spans holds at most `limits`.
    pub fn new(limits: Limits) -> Mapper {
        Mapper {
            buffer: Buffer::new(limits),
        }
    }

    /// What the buffer has done so far.
    pub fn stats(&self) -> Stats {
        self.buffer.stats()
    }

    /// Maps every span of `request`, received at `now`; and, when a span
    /// arrives that earlier orphans were waiting for, those orphans again
    /// (see the crate's documentation).
    pub fn map(&mut self, request: &ExportTraceServiceRequest, now: DateTime<Utc>) -> Mapped {
        self.buffer.expire(now);
        let mut mapped = Mapped::default();
        let mut orphans = self.map_request(request, now, &mut mapped, None);
        // Each orphan is taken once, so this ends; a relinked span may
        // release orphans of its own.
        while !orphans.is_empty() {
            let again = ExportTraceServiceRequest {
                resource_spans: orphans
                    .iter()
                    .map(|orphan| ResourceSpans {
                        resource: Some(Resource {
                            attributes: orphan.resource.clone(),
                            ..Resource::default()
                        }),
                        scope_spans: vec![ScopeSpans {
                            spans: vec![orphan.span.clone()],
                            ..ScopeSpans::default()
                        }],
                        ..ResourceSpans::default()
                    })
                    .collect(),
            };
            let firsts: Vec<EventId> = orphans.iter().map(|o| o.first).collect();
            orphans = self.map_request(&again, now, &mut mapped, Some(&firsts));
        }
        mapped
    }

    /// Maps `request`'s spans into `mapped`, and returns the orphans the
    /// spans that arrived release. `relinking` holds, for a request of
    /// orphans mapped again, each span's first event id: their new events
    /// supersede those, and their errors are not the client's.
    fn map_request(
        &mut self,
        request: &ExportTraceServiceRequest,
        now: DateTime<Utc>,
        mapped: &mut Mapped,
        relinking: Option<&[EventId]>,
    ) -> Vec<Orphan> {
        let mut items = Vec::new();
        for resource_spans in &request.resource_spans {
            let resource_attributes = resource_spans
                .resource
                .as_ref()
                .map_or(&[][..], |r| &r.attributes[..]);
            let resource = Attrs::new(resource_attributes);
            for scope_spans in &resource_spans.scope_spans {
                for span in &scope_spans.spans {
                    items.push(Item {
                        span,
                        attrs: Attrs::new(&span.attributes),
                        resource,
                        resource_attributes,
                    });
                }
            }
        }

        // The spans of this request by id, for the walk up each one's
        // parents.
        let by_id: std::collections::HashMap<(&[u8], &[u8]), usize> = items
            .iter()
            .enumerate()
            .map(|(i, item)| ((&item.span.trace_id[..], &item.span.span_id[..]), i))
            .collect();
        let mut lineages: Vec<Option<Resolved>> = vec![None; items.len()];
        for index in 0..items.len() {
            resolve(index, &items, &by_id, &mut lineages, &mut self.buffer);
        }
        for (index, item) in items.iter().enumerate() {
            let Some(Some(resolved)) = lineages.get(index) else {
                continue;
            };
            match (map_span(item, resolved, now), relinking) {
                (Ok(event), None) => {
                    // Kept to be mapped again when its parent arrives.
                    if let (Some(parent), Some(id), Ok(trace)) = (
                        resolved.missing_parent,
                        event.id,
                        <[u8; 16]>::try_from(&item.span.trace_id[..]),
                    ) {
                        let orphan = Orphan {
                            span: item.span.clone(),
                            resource: item.resource_attributes.to_vec(),
                            first: id,
                        };
                        self.buffer.hold_orphan(trace, parent, orphan, now);
                    }
                    mapped.events.push(event);
                }
                (Ok(event), Some(firsts)) => {
                    if let Some(first) = firsts.get(index) {
                        mapped.events.push(superseding(event, *first));
                    }
                }
                (Err(message), None) => mapped.errors.push(SpanError { index, message }),
                // It was mapped once; this cannot fail where that did not.
                (Err(_), Some(_)) => {}
            }
        }
        let mut released = Vec::new();
        for (item, resolved) in items.iter().zip(&lineages) {
            if let Some(resolved) = resolved
                && !resolved.own.is_empty()
                && let (Ok(trace), Ok(span)) = (
                    <[u8; 16]>::try_from(&item.span.trace_id[..]),
                    <[u8; 8]>::try_from(&item.span.span_id[..]),
                )
            {
                self.buffer.insert(
                    trace,
                    span,
                    resolved.own.clone(),
                    resolved.missing_parent,
                    now,
                );
                released.extend(self.buffer.take_orphans(trace, span));
            }
        }
        released
    }
}

/// A span's event mapped again once its parent arrived: a new event (its
/// id derived from the first's, so that a span sent again is linked once),
/// naming the event it supersedes.
fn superseding(mut event: NewEvent, first: EventId) -> NewEvent {
    let mut name = first.0.as_bytes().to_vec();
    name.extend_from_slice(b"linked");
    event.id = Some(EventId(Uuid::new_v5(&NAMESPACE, &name)));
    event.attributes.remove(ATTR_PARENT_MISSING);
    event
        .attributes
        .insert(ATTR_SUPERSEDES.to_owned(), first.to_string().into());
    event
}

/// A span's place in the tree: the lineage above it and its own.
#[derive(Debug, Clone)]
struct Resolved {
    /// The lineage of its parent (what acted for whom above it).
    above: Arc<Lineage>,
    /// Its own: the parent's, with its human and, for an agent span, itself.
    own: Arc<Lineage>,
    /// Whether it named a parent found neither in the request nor the buffer.
    parent_missing: bool,
    /// The parent that was missing, at its top (for a span below an
    /// orphan, the orphan's): what to wait for.
    missing_parent: Option<[u8; 8]>,
}

/// The deepest chain of parents followed within one request.
const MAX_DEPTH: usize = 256;

/// Resolves the lineage of `items[index]`, and of the parents above it in
/// the same request, iteratively (no recursion on untrusted depth).
fn resolve(
    index: usize,
    items: &[Item<'_>],
    by_id: &std::collections::HashMap<(&[u8], &[u8]), usize>,
    lineages: &mut [Option<Resolved>],
    buffer: &mut Buffer,
) {
    if matches!(lineages.get(index), Some(Some(_))) {
        return;
    }
    // The path from this span up to the first one already resolved or
    // without a parent in the request.
    let mut path = vec![index];
    let base: (Arc<Lineage>, bool, Option<[u8; 8]>);
    loop {
        let Some(&current) = path.last() else { return };
        let Some(item) = items.get(current) else {
            return;
        };
        let parent = &item.span.parent_span_id;
        if parent.is_empty() {
            base = (Arc::new(Lineage::default()), false, None);
            break;
        }
        match by_id.get(&(&item.span.trace_id[..], &parent[..])) {
            Some(&up) if path.len() < MAX_DEPTH && !path.contains(&up) => {
                if let Some(Some(resolved)) = lineages.get(up) {
                    base = (
                        resolved.own.clone(),
                        resolved.parent_missing,
                        resolved.missing_parent,
                    );
                    break;
                }
                path.push(up);
            }
            // A cycle or a chain too deep: the walk stops here, with what
            // it knows.
            Some(_) => {
                base = (Arc::new(Lineage::default()), true, None);
                break;
            }
            None => {
                let found = match (
                    <[u8; 16]>::try_from(&item.span.trace_id[..]),
                    <[u8; 8]>::try_from(&parent[..]),
                ) {
                    (Ok(trace), Ok(span)) => buffer.find(trace, span),
                    _ => None,
                };
                base = match found {
                    // A remembered span that is itself an orphan's (or below
                    // one) gives what it knows, and its wait.
                    Some((lineage, waiting)) => (lineage, waiting.is_some(), waiting),
                    None => {
                        buffer.missed();
                        let waited = <[u8; 8]>::try_from(&parent[..]).ok();
                        (Arc::new(Lineage::default()), true, waited)
                    }
                };
                break;
            }
        }
    }
    let (mut above, mut missing, mut waited) = base;
    // Down the path, from the topmost span to `index`.
    for &at in path.iter().rev() {
        let Some(item) = items.get(at) else { return };
        if let Some(Some(done)) = lineages.get(at) {
            above = done.own.clone();
            missing = done.parent_missing;
            waited = done.missing_parent;
            continue;
        }
        let own = Arc::new(above.below(human(&item.attrs), agent_hop(item)));
        let resolved = Resolved {
            above: above.clone(),
            own: own.clone(),
            parent_missing: missing,
            missing_parent: waited,
        };
        if let Some(slot) = lineages.get_mut(at) {
            *slot = Some(resolved);
        }
        above = own;
        // A span below a span whose parent is missing misses it too.
    }
}

/// The role of a span by its attributes and name.
fn role(item: &Item<'_>) -> Role {
    let attrs = &item.attrs;
    if attrs.str("mcp.method.name").is_some() {
        return Role::Mcp;
    }
    match attrs.str("gen_ai.operation.name") {
        Some("invoke_agent" | "create_agent") => return Role::Agent,
        Some("execute_tool") => return Role::Tool,
        Some("invoke_workflow") => return Role::Workflow,
        _ => {}
    }
    match attrs
        .str("openinference.span.kind")
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("AGENT") => return Role::Agent,
        Some("TOOL") => return Role::Tool,
        Some("CHAIN") => return Role::Workflow,
        _ => {}
    }
    let name = item.span.name.as_str();
    let first = name.split(' ').next().unwrap_or_default();
    match first {
        "invoke_agent" | "create_agent" | "agent" => Role::Agent,
        "execute_tool" | "tool" => Role::Tool,
        "invoke_workflow" => Role::Workflow,
        _ => Role::Other,
    }
}

/// The part of a span's name after its operation (`execute_tool search`
/// names `search`), if it has one.
fn name_suffix(name: &str) -> Option<&str> {
    name.split_once(' ')
        .map(|(_, rest)| rest.trim())
        .filter(|rest| !rest.is_empty())
}

/// The human a span names.
fn human(attrs: &Attrs<'_>) -> Option<Principal> {
    let id = attrs.str("user.id").or_else(|| attrs.str("enduser.id"))?;
    Some(Principal {
        kind: PrincipalKind::Human,
        id: id.to_owned(),
        name: None,
        version: None,
        run_id: None,
    })
}

/// The agent an agent span runs, as a hop of the chain.
fn agent_hop(item: &Item<'_>) -> Option<Principal> {
    if role(item) != Role::Agent {
        return None;
    }
    let attrs = &item.attrs;
    let name = attrs
        .str("gen_ai.agent.name")
        .or_else(|| attrs.str("agent.name"))
        .or_else(|| name_suffix(&item.span.name));
    let id = attrs
        .str("gen_ai.agent.id")
        .or(name)
        .unwrap_or(item.span.name.trim());
    let id = if id.trim().is_empty() {
        "unknown-agent"
    } else {
        id
    };
    Some(Principal {
        kind: PrincipalKind::Agent,
        id: id.to_owned(),
        name: name.map(str::to_owned),
        version: attrs.str("gen_ai.agent.version").map(str::to_owned),
        run_id: Some(hex::encode(&item.span.span_id)),
    })
}

/// The actor a lineage reports: the nearest agent acting, the agents above
/// it, the human at the root; else the human; else the service that sent
/// the span; else unknown.
fn actor_of(lineage: &Lineage, resource: &Attrs<'_>) -> Actor {
    let mut agents = lineage.agents.clone();
    let (root, current) = match agents.pop() {
        Some(current) => (lineage.human.clone(), current),
        None => match (&lineage.human, resource.str("service.name")) {
            (Some(human), _) => (None, human.clone()),
            (None, Some(service)) => (
                None,
                Principal {
                    kind: PrincipalKind::Service,
                    id: service.to_owned(),
                    name: None,
                    version: None,
                    run_id: None,
                },
            ),
            (None, None) => (
                None,
                Principal {
                    kind: PrincipalKind::Unknown,
                    id: "unknown".to_owned(),
                    name: None,
                    version: None,
                    run_id: None,
                },
            ),
        },
    };
    Actor {
        root,
        agents,
        current,
        credential: None,
    }
}

/// The longest start of `text` of at most `max` bytes that ends on a
/// character.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

fn non_empty(value: &[u8]) -> Option<String> {
    (!value.is_empty()).then(|| hex::encode(value))
}

fn time_of(unix_nano: u64) -> Option<DateTime<Utc>> {
    if unix_nano == 0 {
        return None;
    }
    let secs = i64::try_from(unix_nano / 1_000_000_000).ok()?;
    let nanos = u32::try_from(unix_nano % 1_000_000_000).ok()?;
    DateTime::from_timestamp(secs, nanos)
}

/// Maps one span whose place in the tree is `resolved`.
fn map_span(item: &Item<'_>, resolved: &Resolved, now: DateTime<Utc>) -> Result<NewEvent, String> {
    let span = item.span;
    let (Ok(trace), Ok(span_id)) = (
        <[u8; 16]>::try_from(&span.trace_id[..]),
        <[u8; 8]>::try_from(&span.span_id[..]),
    ) else {
        return Err(format!(
            "a span needs a 16-byte trace id and an 8-byte span id, this one has {} and {} bytes",
            span.trace_id.len(),
            span.span_id.len()
        ));
    };
    let attrs = &item.attrs;
    let role = role(item);
    let operation = attrs.str("gen_ai.operation.name");
    let mut target = Target {
        system: attrs
            .str("gen_ai.provider.name")
            .or_else(|| attrs.str("gen_ai.system"))
            .map(str::to_owned),
        ..Target::default()
    };
    let tool_name = || {
        attrs
            .str("gen_ai.tool.name")
            .or_else(|| attrs.str("tool.name"))
            .map(str::to_owned)
    };
    let (kind, action, actor) = match role {
        Role::Agent => {
            // The spawn is the chain above's act; the agent is its target.
            let mut above = (*resolved.above).clone();
            if above.human.is_none() {
                above.human = resolved.own.human.clone();
            }
            target.principal = resolved.own.agents.last().cloned();
            let action = operation.unwrap_or("invoke_agent");
            (
                EventKind::AgentSpawn,
                action,
                actor_of(&above, &item.resource),
            )
        }
        Role::Tool => {
            target.tool = tool_name().or_else(|| name_suffix(&span.name).map(str::to_owned));
            (
                EventKind::ToolCall,
                operation.unwrap_or("execute_tool"),
                actor_of(&resolved.own, &item.resource),
            )
        }
        Role::Mcp => {
            target.tool = tool_name();
            target.resource = attrs.str("mcp.resource.uri").map(str::to_owned);
            target.server =
                attrs
                    .str("server.address")
                    .map(|host| match attrs.int("server.port") {
                        Some(port) => format!("{host}:{port}"),
                        None => host.to_owned(),
                    });
            let method = attrs.str("mcp.method.name").unwrap_or("mcp");
            (
                EventKind::McpRequest,
                method,
                actor_of(&resolved.own, &item.resource),
            )
        }
        Role::Workflow => (
            EventKind::Other,
            operation.unwrap_or("invoke_workflow"),
            actor_of(&resolved.own, &item.resource),
        ),
        Role::Other => (
            EventKind::Other,
            operation.unwrap_or(span.name.as_str()),
            actor_of(&resolved.own, &item.resource),
        ),
    };
    let action = if action.trim().is_empty() {
        "span"
    } else {
        action
    };
    let action = clip(action, custody_event::MAX_LABEL_LEN).to_owned();

    let status = span.status.as_ref();
    let failed = status.is_some_and(|s| s.code == StatusCode::Error as i32)
        || attrs.str("error.type").is_some();
    let reason = status
        .map(|s| s.message.as_str())
        .filter(|m| !m.is_empty())
        .or_else(|| attrs.str("error.type"))
        .map(|m| clip(m, custody_event::MAX_TEXT_LEN).to_owned());
    let start = time_of(span.start_time_unix_nano);
    let duration_ms = (span.end_time_unix_nano >= span.start_time_unix_nano && start.is_some())
        .then(|| (span.end_time_unix_nano - span.start_time_unix_nano) / 1_000_000);

    let mut attributes = BTreeMap::new();
    if !span.name.is_empty() {
        attributes.insert(ATTR_SPAN_NAME.to_owned(), span.name.clone().into());
    }
    if let Some(service) = item.resource.str("service.name") {
        attributes.insert(ATTR_SERVICE.to_owned(), service.into());
    }
    for key in [
        "gen_ai.operation.name",
        "gen_ai.request.model",
        "gen_ai.tool.type",
        "openinference.span.kind",
        "mcp.protocol.version",
    ] {
        if let Some(value) = attrs.str(key) {
            attributes.insert(key.to_owned(), value.into());
        }
    }
    if resolved.parent_missing {
        attributes.insert(ATTR_PARENT_MISSING.to_owned(), true.into());
    }
    if start.is_none() {
        attributes.insert(ATTR_TIME_MISSING.to_owned(), true.into());
    }

    let conversation = attrs.str("gen_ai.conversation.id").map(str::to_owned);
    let context = Context {
        session_id: conversation
            .clone()
            .or_else(|| attrs.str("mcp.session.id").map(str::to_owned))
            .or_else(|| attrs.str("session.id").map(str::to_owned)),
        conversation_id: conversation,
        trace_id: Some(hex::encode(trace)),
        span_id: Some(hex::encode(span_id)),
        parent_span_id: non_empty(&span.parent_span_id),
        tool_call_id: attrs
            .str("gen_ai.tool.call.id")
            .or_else(|| attrs.str("tool_call.id"))
            .map(str::to_owned),
        request_id: attrs.str("jsonrpc.request.id").map(str::to_owned),
    };
    let mut name = trace.to_vec();
    name.extend_from_slice(&span_id);
    let raw = serde_json::to_value(span)
        .map(|value| RawRecord::from_value(&value))
        .map_err(|error| format!("the span cannot be written as JSON: {error}"))?;
    let event = NewEvent {
        version: None,
        id: Some(EventId(Uuid::new_v5(&NAMESPACE, &name))),
        kind,
        action,
        observed_at: start.unwrap_or(now),
        received_at: None,
        source: Source {
            kind: SourceKind::Otlp,
            name: item.resource.str("service.name").map(str::to_owned),
            record_id: Some(format!("{}:{}", hex::encode(trace), hex::encode(span_id))),
        },
        actor,
        target,
        outcome: Outcome {
            status: if failed {
                OutcomeStatus::Failure
            } else {
                OutcomeStatus::Success
            },
            reason,
            duration_ms,
        },
        attribution: None,
        context,
        attributes,
        raw: Some(raw),
    };
    custody_event::validate(&event)
        .map_err(|error| format!("the span maps to an invalid event: {error}"))?;
    Ok(event)
}
