use chrono::{Duration, TimeZone};
use custody_event::{EventKind, OutcomeStatus, PrincipalKind};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

use super::*;

const TRACE: [u8; 16] = [7; 16];
const T0: u64 = 1_790_000_000_000_000_000;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn span(id: u8, parent: Option<u8>, name: &str, attrs: &[(&str, &str)]) -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        start_time_unix_nano: T0 + u64::from(id) * 1_000_000,
        end_time_unix_nano: T0 + u64::from(id) * 1_000_000 + 5_000_000,
        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Span::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "support-bot")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_100, 0).unwrap()
}

/// Each hop of an event's reported chain, root first, as `type:id`.
fn chain(event: &NewEvent) -> Vec<String> {
    let actor = &event.actor;
    actor
        .root
        .iter()
        .chain(&actor.agents)
        .chain(std::iter::once(&actor.current))
        .map(|p| format!("{}:{}", p.kind.as_str(), p.id))
        .collect()
}

/// An orchestrator with `user.id` invoking a researcher sub-agent, each
/// executing a tool; the spans in the order an SDK ends (and exports) them.
fn orchestration() -> Vec<Span> {
    vec![
        span(
            4,
            Some(3),
            "execute_tool web_search",
            &[
                ("gen_ai.operation.name", "execute_tool"),
                ("gen_ai.tool.name", "web_search"),
                ("gen_ai.tool.call.id", "call_2"),
            ],
        ),
        span(
            3,
            Some(1),
            "invoke_agent researcher",
            &[
                ("gen_ai.operation.name", "invoke_agent"),
                ("gen_ai.agent.id", "agent_researcher"),
                ("gen_ai.agent.name", "researcher"),
                ("gen_ai.conversation.id", "conv_1"),
            ],
        ),
        span(
            2,
            Some(1),
            "execute_tool lookup_order",
            &[
                ("gen_ai.operation.name", "execute_tool"),
                ("gen_ai.tool.name", "lookup_order"),
                ("gen_ai.tool.call.id", "call_1"),
            ],
        ),
        span(
            1,
            None,
            "invoke_agent orchestrator",
            &[
                ("gen_ai.operation.name", "invoke_agent"),
                ("gen_ai.agent.id", "agent_orchestrator"),
                ("gen_ai.agent.name", "orchestrator"),
                ("gen_ai.provider.name", "openai"),
                ("gen_ai.conversation.id", "conv_1"),
                ("user.id", "alice@example.com"),
            ],
        ),
    ]
}

#[test]
fn an_orchestrator_and_its_sub_agent_report_the_chain() {
    let mapped = Mapper::default().map(&request(orchestration()), now());
    assert!(mapped.errors.is_empty(), "{:?}", mapped.errors);
    let [sub_tool, sub_agent, tool, orchestrator] = &mapped.events[..] else {
        panic!("{:#?}", mapped.events);
    };

    assert_eq!(orchestrator.kind, EventKind::AgentSpawn);
    assert_eq!(orchestrator.action, "invoke_agent");
    assert_eq!(chain(orchestrator), ["human:alice@example.com"]);
    let spawned = orchestrator.target.principal.as_ref().unwrap();
    assert_eq!(
        (spawned.kind, spawned.id.as_str(), spawned.name.as_deref()),
        (
            PrincipalKind::Agent,
            "agent_orchestrator",
            Some("orchestrator")
        )
    );
    assert_eq!(spawned.run_id.as_deref(), Some("0101010101010101"));
    assert_eq!(orchestrator.target.system.as_deref(), Some("openai"));

    assert_eq!(tool.kind, EventKind::ToolCall);
    assert_eq!(tool.target.tool.as_deref(), Some("lookup_order"));
    assert_eq!(tool.context.tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(
        chain(tool),
        ["human:alice@example.com", "agent:agent_orchestrator"]
    );

    assert_eq!(sub_agent.kind, EventKind::AgentSpawn);
    assert_eq!(
        chain(sub_agent),
        ["human:alice@example.com", "agent:agent_orchestrator"]
    );
    assert_eq!(
        sub_agent.target.principal.as_ref().unwrap().id,
        "agent_researcher"
    );
    assert_eq!(sub_agent.context.session_id.as_deref(), Some("conv_1"));
    assert_eq!(sub_agent.context.conversation_id.as_deref(), Some("conv_1"));

    assert_eq!(sub_tool.kind, EventKind::ToolCall);
    assert_eq!(sub_tool.target.tool.as_deref(), Some("web_search"));
    assert_eq!(
        chain(sub_tool),
        [
            "human:alice@example.com",
            "agent:agent_orchestrator",
            "agent:agent_researcher"
        ]
    );
    assert_eq!(
        sub_tool.actor.current.run_id.as_deref(),
        Some("0303030303030303")
    );

    for event in &mapped.events {
        assert_eq!(event.source.kind, SourceKind::Otlp);
        assert_eq!(event.source.name.as_deref(), Some("support-bot"));
        assert_eq!(event.outcome.status, OutcomeStatus::Success);
        assert_eq!(event.outcome.duration_ms, Some(5));
        assert_eq!(
            event.context.trace_id.as_deref(),
            Some(&*hex::encode(TRACE))
        );
        assert!(!event.attributes.contains_key(ATTR_PARENT_MISSING));
        let raw = event.raw.as_ref().unwrap().to_value().unwrap();
        assert_eq!(raw["traceId"], hex::encode(TRACE));
        assert_eq!(raw["spanId"], *event.context.span_id.as_ref().unwrap());
    }
    assert_eq!(
        orchestrator.observed_at,
        Utc.timestamp_nanos((T0 + 1_000_000) as i64)
    );
    // The id is the span's: the same span maps to the same id.
    let again = Mapper::default().map(&request(orchestration()), now());
    assert_eq!(again.events[0].id, sub_tool.id);
    assert_ne!(sub_tool.id, tool.id);
}

#[test]
fn a_parent_sent_earlier_is_linked_and_a_parent_never_sent_is_reported() {
    let mut spans = orchestration();
    let mut mapper = Mapper::default();
    // The orchestrator's span (and nothing else) first.
    let first = mapper.map(&request(spans.split_off(3)), now());
    assert_eq!(first.events.len(), 1);
    let second = mapper.map(&request(spans), now() + Duration::seconds(5));
    let sub_tool = &second.events[0];
    assert_eq!(
        chain(sub_tool),
        [
            "human:alice@example.com",
            "agent:agent_orchestrator",
            "agent:agent_researcher"
        ]
    );
    assert!(!sub_tool.attributes.contains_key(ATTR_PARENT_MISSING));
    let stats = mapper.stats();
    assert_eq!((stats.linked, stats.parent_missing), (2, 0), "{stats:?}");

    // A child whose parent never comes: mapped with what is known, and
    // says so.
    let mut fresh = Mapper::default();
    let mut children = orchestration();
    children.truncate(2);
    let orphan = fresh.map(&request(children), now());
    let [tool, _] = &orphan.events[..] else {
        panic!()
    };
    assert_eq!(chain(tool), ["agent:agent_researcher"]);
    assert_eq!(tool.attributes[ATTR_PARENT_MISSING], true);
    assert_eq!(fresh.stats().parent_missing, 1);
}

/// The sub-agent's spans first (a sub-agent process exporting before its
/// orchestrator), in two requests; then the orchestrator's: the orphans are
/// mapped again below it, superseding their first events.
#[test]
fn spans_whose_parent_comes_later_are_linked_when_it_does() {
    let spans = orchestration();
    let mut mapper = Mapper::default();
    // The researcher's tool and its own span: orphans of the orchestrator.
    let first = mapper.map(&request(vec![spans[0].clone(), spans[1].clone()]), now());
    let [tool, researcher] = &first.events[..] else {
        panic!("{:#?}", first.events)
    };
    assert_eq!(chain(tool), ["agent:agent_researcher"]);
    assert_eq!(researcher.attributes[ATTR_PARENT_MISSING], true);
    // A later span of the researcher links to what is known of it, and
    // waits with it.
    let later = span(
        6,
        Some(3),
        "execute_tool fetch",
        &[
            ("gen_ai.operation.name", "execute_tool"),
            ("gen_ai.tool.name", "fetch"),
        ],
    );
    let second = mapper.map(&request(vec![later]), now());
    assert_eq!(second.events[0].attributes[ATTR_PARENT_MISSING], true);
    assert_eq!(mapper.stats().orphans_held, 3);

    // The orchestrator arrives, with its own tool.
    let third = mapper.map(&request(spans[2..].to_vec()), now() + Duration::seconds(5));
    assert_eq!(third.events.len(), 2 + 3, "{:#?}", third.events);
    let relinked: Vec<&NewEvent> = third
        .events
        .iter()
        .filter(|e| e.attributes.contains_key(ATTR_SUPERSEDES))
        .collect();
    assert_eq!(relinked.len(), 3);
    let full = [
        "human:alice@example.com",
        "agent:agent_orchestrator",
        "agent:agent_researcher",
    ];
    for event in &relinked {
        assert!(!event.attributes.contains_key(ATTR_PARENT_MISSING));
        assert_eq!(event.source.kind, SourceKind::Otlp);
    }
    let superseded: Vec<&str> = relinked
        .iter()
        .map(|e| e.attributes[ATTR_SUPERSEDES].as_str().unwrap())
        .collect();
    for first_event in [tool, researcher, &second.events[0]] {
        let id = first_event.id.unwrap().to_string();
        assert!(superseded.contains(&id.as_str()), "{id} in {superseded:?}");
    }
    let tools: Vec<&&NewEvent> = relinked
        .iter()
        .filter(|e| e.kind == EventKind::ToolCall)
        .collect();
    assert_eq!(tools.len(), 2);
    for tool in tools {
        assert_eq!(chain(tool), full);
    }
    let spawn = relinked
        .iter()
        .find(|e| e.kind == EventKind::AgentSpawn)
        .unwrap();
    assert_eq!(
        chain(spawn),
        ["human:alice@example.com", "agent:agent_orchestrator"]
    );
    assert_eq!(
        spawn.target.principal.as_ref().unwrap().id,
        "agent_researcher"
    );
    let stats = mapper.stats();
    assert_eq!((stats.relinked, stats.orphans_held), (3, 0), "{stats:?}");

    // Sent again, the same spans give the same ids (stored once).
    let mut again = Mapper::default();
    again.map(&request(vec![spans[0].clone(), spans[1].clone()]), now());
    let repeat = again.map(&request(spans[2..].to_vec()), now());
    let ids: Vec<_> = repeat.events.iter().map(|e| e.id).collect();
    for event in relinked
        .iter()
        .filter(|e| e.context.span_id != Some(hex::encode([6u8; 8])))
    {
        assert!(ids.contains(&event.id));
    }
}

#[test]
fn orphans_are_bounded_in_count_and_age() {
    let spans = orchestration();
    let mut mapper = Mapper::new(Limits {
        max_orphans: 1,
        ..Limits::default()
    });
    mapper.map(&request(vec![spans[0].clone(), spans[1].clone()]), now());
    let stats = mapper.stats();
    assert_eq!(
        (stats.orphans_held, stats.orphans_dropped),
        (1, 1),
        "{stats:?}"
    );
    let mut mapper = Mapper::default();
    mapper.map(&request(vec![spans[1].clone()]), now());
    let late = mapper.map(&request(spans[3..].to_vec()), now() + Duration::minutes(11));
    assert_eq!(late.events.len(), 1, "too old to link: {:#?}", late.events);
    assert_eq!(mapper.stats().orphans_dropped, 1);
}

#[test]
fn the_buffer_is_bounded_in_count_and_age() {
    let mut mapper = Mapper::new(Limits {
        max_spans: 1,
        max_age: Duration::seconds(60),
        max_orphans: 0,
    });
    let mut spans = orchestration();
    mapper.map(&request(spans.split_off(3)), now());
    // The sub-agent's span pushes the orchestrator's out.
    mapper.map(&request(vec![spans.remove(1)]), now());
    assert_eq!(mapper.stats().evicted, 1);
    let late = mapper.map(&request(vec![spans.remove(1)]), now());
    assert_eq!(late.events[0].attributes[ATTR_PARENT_MISSING], true);

    let mut mapper = Mapper::default();
    mapper.map(&request(orchestration().split_off(3)), now());
    let late = mapper.map(
        &request(orchestration()[2..3].to_vec()),
        now() + Duration::minutes(11),
    );
    assert_eq!(mapper.stats().expired, 1);
    assert_eq!(late.events[0].attributes[ATTR_PARENT_MISSING], true);
}

#[test]
fn openinference_and_older_shapes() {
    let spans = vec![
        span(
            1,
            None,
            "SupportAgent",
            &[
                ("openinference.span.kind", "AGENT"),
                ("agent.name", "support"),
                ("user.id", "bob"),
                ("session.id", "s-9"),
            ],
        ),
        span(
            2,
            Some(1),
            "RouterChain",
            &[("openinference.span.kind", "CHAIN")],
        ),
        span(
            3,
            Some(2),
            "refund",
            &[("openinference.span.kind", "TOOL"), ("tool.name", "refund")],
        ),
        span(
            4,
            Some(1),
            "tool read_file",
            &[("gen_ai.system", "anthropic")],
        ),
        span(5, Some(4), "agent summarizer", &[]),
    ];
    let mapped = Mapper::default().map(&request(spans), now());
    assert!(mapped.errors.is_empty(), "{:?}", mapped.errors);
    let [agent, workflow, tool, old_tool, old_agent] = &mapped.events[..] else {
        panic!("{:#?}", mapped.events)
    };
    assert_eq!(agent.kind, EventKind::AgentSpawn);
    assert_eq!(chain(agent), ["human:bob"]);
    assert_eq!(agent.target.principal.as_ref().unwrap().id, "support");
    assert_eq!(agent.context.session_id.as_deref(), Some("s-9"));
    assert_eq!(
        (workflow.kind, workflow.action.as_str()),
        (EventKind::Other, "invoke_workflow")
    );
    assert_eq!(chain(workflow), ["human:bob", "agent:support"]);
    assert_eq!(tool.kind, EventKind::ToolCall);
    assert_eq!(tool.target.tool.as_deref(), Some("refund"));
    assert_eq!(chain(tool), ["human:bob", "agent:support"]);
    assert_eq!(old_tool.kind, EventKind::ToolCall);
    assert_eq!(old_tool.target.tool.as_deref(), Some("read_file"));
    assert_eq!(old_tool.target.system.as_deref(), Some("anthropic"));
    assert_eq!(old_agent.kind, EventKind::AgentSpawn);
    assert_eq!(
        old_agent.target.principal.as_ref().unwrap().id,
        "summarizer"
    );
    assert_eq!(chain(old_agent), ["human:bob", "agent:support"]);
}

#[test]
fn mcp_spans_unknown_spans_failures_and_bad_ids() {
    let mut mcp = span(
        2,
        Some(1),
        "tools/call get_weather",
        &[
            ("mcp.method.name", "tools/call"),
            ("gen_ai.tool.name", "get_weather"),
            ("mcp.session.id", "mcp-s1"),
            ("jsonrpc.request.id", "42"),
            ("server.address", "weather.internal"),
        ],
    );
    mcp.status = Some(Status {
        message: "upstream timed out".into(),
        code: StatusCode::Error as i32,
    });
    let mut unknown = span(3, Some(1), "HTTP GET", &[("http.method", "GET")]);
    unknown.start_time_unix_nano = 0;
    let mut bad = span(4, None, "broken", &[]);
    bad.span_id = vec![1, 2, 3];
    let spans = vec![
        span(
            1,
            None,
            "invoke_agent planner",
            &[("gen_ai.operation.name", "invoke_agent")],
        ),
        mcp,
        unknown,
        bad,
    ];
    let mapped = Mapper::default().map(&request(spans), now());
    assert_eq!(mapped.errors.len(), 1);
    assert_eq!(mapped.errors[0].index, 3);
    assert!(mapped.errors[0].message.contains("8-byte span id"));
    let [planner, mcp, unknown] = &mapped.events[..] else {
        panic!()
    };
    assert_eq!(chain(planner), ["service:support-bot"]);
    assert_eq!(planner.target.principal.as_ref().unwrap().id, "planner");
    assert_eq!(mcp.kind, EventKind::McpRequest);
    assert_eq!(mcp.action, "tools/call");
    assert_eq!(mcp.target.tool.as_deref(), Some("get_weather"));
    assert_eq!(mcp.target.server.as_deref(), Some("weather.internal"));
    assert_eq!(mcp.context.session_id.as_deref(), Some("mcp-s1"));
    assert_eq!(mcp.context.request_id.as_deref(), Some("42"));
    assert_eq!(mcp.outcome.status, OutcomeStatus::Failure);
    assert_eq!(mcp.outcome.reason.as_deref(), Some("upstream timed out"));
    assert_eq!(chain(mcp), ["agent:planner"]);
    assert_eq!(unknown.kind, EventKind::Other);
    assert_eq!(unknown.action, "HTTP GET");
    assert_eq!(unknown.observed_at, now());
    assert_eq!(unknown.attributes[ATTR_TIME_MISSING], true);
}

#[test]
fn cycles_and_empty_requests_do_not_hang_or_panic() {
    let spans = vec![
        span(1, Some(2), "agent a", &[]),
        span(2, Some(1), "agent b", &[]),
        span(3, Some(3), "tool self", &[]),
    ];
    let mapped = Mapper::default().map(&request(spans), now());
    assert_eq!(mapped.events.len(), 3);
    assert!(
        Mapper::default()
            .map(&ExportTraceServiceRequest::default(), now())
            .events
            .is_empty()
    );
}

#[test]
fn long_and_blank_names_still_make_valid_events() {
    let long = "é".repeat(300);
    let spans = vec![
        span(1, None, &long, &[]),
        span(2, None, "   ", &[]),
        span(
            3,
            None,
            "agent  ",
            &[("gen_ai.operation.name", "invoke_agent")],
        ),
    ];
    let mapped = Mapper::default().map(&request(spans), now());
    assert!(mapped.errors.is_empty(), "{:?}", mapped.errors);
    let [long, blank, agent] = &mapped.events[..] else {
        panic!()
    };
    assert_eq!(long.action.len(), 256);
    assert_eq!(blank.action, "span");
    assert_eq!(agent.target.principal.as_ref().unwrap().id, "agent");
}
