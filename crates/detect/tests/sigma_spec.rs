//! The Sigma specification's examples and a table of modifiers and
//! conditions, each case through the detect stage as an event reaches it:
//! raw records through the native face, Custody events through theirs.

use chrono::{DateTime, Duration, Utc};
use custody_detect::{Placeholders, RuleFile, RuleSet, Sigma, SigmaConfig};
use custody_engine::{Detect, FindingNote};
use custody_event::{EventId, RuntimeEvent};
use serde_json::{Value, json};

const T0: &str = "2026-11-26T10:00:00Z";

fn at(offset_secs: i64) -> DateTime<Utc> {
    T0.parse::<DateTime<Utc>>().unwrap() + Duration::seconds(offset_secs)
}

/// An imported record of an arbitrary shape: rules of `product: aws` read
/// it field for field.
fn record(raw: Value) -> RuntimeEvent {
    let event = json!({
        "kind": "other", "action": "record", "observed_at": T0,
        "source": {"type": "cloudtrail"},
        "actor": {"current": {"type": "unknown", "id": "someone"}},
        "outcome": {"status": "success"},
        "raw": raw,
    });
    custody_event::decode_value(event)
        .unwrap()
        .into_event(Utc::now(), EventId::new_v7)
}

fn stage(yaml: &str) -> Sigma {
    stage_with(yaml, &Placeholders::default())
}

fn stage_with(yaml: &str, placeholders: &Placeholders) -> Sigma {
    let files = [RuleFile {
        name: "case.yml".into(),
        text: yaml.into(),
    }];
    let set = RuleSet::load_with(&files, placeholders)
        .unwrap_or_else(|errors| panic!("{yaml}\n{errors:?}"));
    Sigma::new(&set, SigmaConfig::default()).unwrap()
}

/// `text` indented one level, as the body of a rule's section.
fn indented(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn raw_rule(detection: &str) -> String {
    format!(
        "title: case\nid: case\nlogsource:\n    product: aws\n    service: cloudtrail\ndetection:\n{}\n",
        indented(detection)
    )
}

fn fires(sigma: &Sigma, event: &RuntimeEvent) -> bool {
    sigma.detect(event).iter().any(|s| s.id == "case")
}

/// Each case: a detection, a record, whether the rule matches it.
#[test]
fn modifiers_and_conditions() {
    let cases: &[(&str, Value, bool)] = &[
        // Plain values: case-insensitive equality, lists are "or", maps "and".
        (
            "s:\n  eventName: CreateUser\ncondition: s",
            json!({"eventName": "createuser"}),
            true,
        ),
        (
            "s:\n  eventName: CreateUser\ncondition: s",
            json!({"eventName": "CreateUsers"}),
            false,
        ),
        (
            "s:\n  eventName:\n    - A\n    - B\ncondition: s",
            json!({"eventName": "B"}),
            true,
        ),
        (
            "s:\n  a: 1\n  b: x\ncondition: s",
            json!({"a": 1, "b": "y"}),
            false,
        ),
        (
            "s:\n  a: 1\n  b: x\ncondition: s",
            json!({"a": 1, "b": "X"}),
            true,
        ),
        // A list of maps is "or" of the maps.
        (
            "s:\n  - a: 1\n  - b: 2\ncondition: s",
            json!({"b": 2}),
            true,
        ),
        // Wildcards.
        (
            "s:\n  eventName: 'Create*Key'\ncondition: s",
            json!({"eventName": "CreateAccessKey"}),
            true,
        ),
        (
            "s:\n  eventName: 'Get?'\ncondition: s",
            json!({"eventName": "GetX"}),
            true,
        ),
        (
            "s:\n  eventName: 'Get?'\ncondition: s",
            json!({"eventName": "GetXY"}),
            false,
        ),
        // Nested fields through dots, and through arrays (any member).
        (
            "s:\n  userIdentity.type: IAMUser\ncondition: s",
            json!({"userIdentity": {"type": "IAMUser"}}),
            true,
        ),
        (
            "s:\n  resources.ARN|endswith: ':key/1'\ncondition: s",
            json!({"resources": [{"ARN": "x"}, {"ARN": "arn:aws:kms:key/1"}]}),
            true,
        ),
        // contains / startswith / endswith, and |all.
        (
            "s:\n  cmd|contains: secret\ncondition: s",
            json!({"cmd": "read the SECRET now"}),
            true,
        ),
        (
            "s:\n  cmd|startswith: aws\ncondition: s",
            json!({"cmd": "AWS s3 ls"}),
            true,
        ),
        (
            "s:\n  cmd|endswith: .pem\ncondition: s",
            json!({"cmd": "cat id.pem"}),
            true,
        ),
        (
            "s:\n  cmd|contains|all:\n    - curl\n    - '| sh'\ncondition: s",
            json!({"cmd": "curl x | sh"}),
            true,
        ),
        (
            "s:\n  cmd|contains|all:\n    - curl\n    - '| sh'\ncondition: s",
            json!({"cmd": "curl x"}),
            false,
        ),
        // Regular expressions, case-sensitive unless |i.
        (
            "s:\n  cmd|re: '^AKIA[0-9A-Z]{16}$'\ncondition: s",
            json!({"cmd": "AKIAABCDEFGHIJKLMNOP"}),
            true,
        ),
        (
            "s:\n  cmd|re: '^akia'\ncondition: s",
            json!({"cmd": "AKIA1"}),
            false,
        ),
        (
            "s:\n  cmd|re|i: '^akia'\ncondition: s",
            json!({"cmd": "AKIA1"}),
            true,
        ),
        // CIDR.
        (
            "s:\n  sourceIPAddress|cidr: 10.0.0.0/8\ncondition: s",
            json!({"sourceIPAddress": "10.2.3.4"}),
            true,
        ),
        (
            "s:\n  sourceIPAddress|cidr: 10.0.0.0/8\ncondition: s",
            json!({"sourceIPAddress": "11.2.3.4"}),
            false,
        ),
        (
            "s:\n  sourceIPAddress|cidr: '2001:db8::/32'\ncondition: s",
            json!({"sourceIPAddress": "2001:db8::1"}),
            true,
        ),
        // exists.
        (
            "s:\n  errorCode|exists: true\ncondition: s",
            json!({"errorCode": "AccessDenied"}),
            true,
        ),
        (
            "s:\n  errorCode|exists: false\ncondition: s",
            json!({"eventName": "x"}),
            true,
        ),
        (
            "s:\n  errorCode|exists: false\ncondition: s",
            json!({"errorCode": "AccessDenied"}),
            false,
        ),
        // null matches a null or missing field.
        (
            "s:\n  errorCode: null\ncondition: s",
            json!({"eventName": "x"}),
            true,
        ),
        // base64 and base64offset.
        (
            "s:\n  data|base64: 'secret'\ncondition: s",
            json!({"data": "c2VjcmV0"}),
            true,
        ),
        (
            "s:\n  data|base64offset|contains: 'http://'\ncondition: s",
            json!({"data": "Y3VybCBodHRwOi8vZXZpbA=="}),
            true,
        ),
        (
            "s:\n  data|base64offset|contains: 'http://'\ncondition: s",
            json!({"data": "aGVsbG8gd29ybGQ="}),
            false,
        ),
        // windash: - and / (and their dash variants) are interchangeable.
        (
            "s:\n  cmd|windash|contains: ' -exec '\ncondition: s",
            json!({"cmd": "find . /exec x"}),
            true,
        ),
        // fieldref: a field equal to another field.
        (
            "s:\n  requestParameters.userName|fieldref: userIdentity.userName\ncondition: s",
            json!({"requestParameters": {"userName": "bob"}, "userIdentity": {"userName": "bob"}}),
            true,
        ),
        (
            "s:\n  requestParameters.userName|fieldref: userIdentity.userName\ncondition: s",
            json!({"requestParameters": {"userName": "eve"}, "userIdentity": {"userName": "bob"}}),
            false,
        ),
        // Numeric comparisons.
        (
            "s:\n  bytes|gt: 1000\ncondition: s",
            json!({"bytes": 1001}),
            true,
        ),
        (
            "s:\n  bytes|gte: 1000\ncondition: s",
            json!({"bytes": 1000}),
            true,
        ),
        (
            "s:\n  bytes|lt: 1000\ncondition: s",
            json!({"bytes": 1000}),
            false,
        ),
        (
            "s:\n  bytes|lte: 1000\ncondition: s",
            json!({"bytes": 999}),
            true,
        ),
        // Conditions: and, or, not, parentheses.
        (
            "a:\n  x: 1\nb:\n  y: 2\ncondition: a and not b",
            json!({"x": 1, "y": 3}),
            true,
        ),
        (
            "a:\n  x: 1\nb:\n  y: 2\ncondition: a and not b",
            json!({"x": 1, "y": 2}),
            false,
        ),
        (
            "a:\n  x: 1\nb:\n  y: 2\nc:\n  z: 3\ncondition: (a or b) and c",
            json!({"y": 2, "z": 3}),
            true,
        ),
        (
            "a:\n  x: 1\nb:\n  y: 2\nc:\n  z: 3\ncondition: a or (b and c)",
            json!({"y": 2, "z": 4}),
            false,
        ),
        // 1 of / all of, with wildcards, and "them".
        (
            "sel_a:\n  x: 1\nsel_b:\n  y: 2\nfilter:\n  z: 3\ncondition: 1 of sel_*",
            json!({"y": 2}),
            true,
        ),
        (
            "sel_a:\n  x: 1\nsel_b:\n  y: 2\ncondition: all of sel_*",
            json!({"y": 2}),
            false,
        ),
        (
            "sel_a:\n  x: 1\nsel_b:\n  y: 2\ncondition: all of sel_*",
            json!({"x": 1, "y": 2}),
            true,
        ),
        (
            "sel_a:\n  x: 1\nsel_b:\n  y: 2\ncondition: 1 of them",
            json!({"x": 1}),
            true,
        ),
        (
            "sel_a:\n  x: 1\nsel_b:\n  y: 2\ncondition: all of them",
            json!({"x": 1}),
            false,
        ),
        (
            "sel_a:\n  x: 1\nsel_b:\n  y: 2\nfilter:\n  z: 3\ncondition: 1 of sel_* and not filter",
            json!({"x": 1, "z": 3}),
            false,
        ),
        // Keywords: any string anywhere in the record.
        (
            "keywords:\n  - 'rm *bash_history'\n  - 'echo \"\" > *bash_history'\ncondition: keywords",
            json!({"a": {"b": "rm -f ~/.bash_history"}}),
            true,
        ),
        (
            "keywords:\n  - 'rm *bash_history'\ncondition: keywords",
            json!({"a": "rm -f notes"}),
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (detection, raw, expected) in cases {
        let sigma = stage(&raw_rule(detection));
        if fires(&sigma, &record(raw.clone())) != *expected {
            failures.push(format!("{detection}\n  on {raw}: expected {expected}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The specification's example of a rule with a filter and a list of
/// values, adapted to CloudTrail's fields.
#[test]
fn the_specifications_selection_and_filter_example() {
    let sigma = stage(&raw_rule(
        "selection:\n  eventSource: cloudtrail.amazonaws.com\n  eventName:\n    - StopLogging\n    - DeleteTrail\n    - UpdateTrail\nfilter:\n  errorCode|exists: true\ncondition: selection and not filter",
    ));
    let stop = json!({"eventSource": "cloudtrail.amazonaws.com", "eventName": "StopLogging"});
    let refused = json!({"eventSource": "cloudtrail.amazonaws.com", "eventName": "StopLogging", "errorCode": "AccessDenied"});
    let other = json!({"eventSource": "s3.amazonaws.com", "eventName": "DeleteTrail"});
    assert!(fires(&sigma, &record(stop)));
    assert!(!fires(&sigma, &record(refused)));
    assert!(!fires(&sigma, &record(other)));
}

#[test]
fn expand_takes_the_configured_placeholders() {
    let rule = raw_rule("s:\n  userIdentity.userName|expand: '%admins%'\ncondition: s");
    let placeholders = Placeholders(
        [(
            "admins".to_owned(),
            vec!["root".to_owned(), "breakglass".to_owned()],
        )]
        .into_iter()
        .collect(),
    );
    let sigma = stage_with(&rule, &placeholders);
    let admin = json!({"userIdentity": {"userName": "breakglass"}});
    let other = json!({"userIdentity": {"userName": "bob"}});
    assert!(fires(&sigma, &record(admin)));
    assert!(!fires(&sigma, &record(other)));
}

#[test]
fn logsources_route_rules_to_the_records_they_describe() {
    let aws = stage(&raw_rule("s:\n  eventName: X\ncondition: s"));
    let okta = stage(
        "title: case\nid: case\nlogsource:\n    product: okta\n    service: okta\ndetection:\n    s:\n        eventName: X\n    condition: s\n",
    );
    let event = record(json!({"eventName": "X"}));
    assert!(fires(&aws, &event));
    assert!(
        !fires(&okta, &event),
        "an Okta rule never sees CloudTrail records"
    );
}

/// SigmaHQ's Okta rules write `eventtype` and `displaymessage`: field names
/// match whatever their case.
#[test]
fn stock_field_names_match_whatever_their_case() {
    let sigma = stage(&raw_rule(
        "s:\n  eventtype: user.session.start\ncondition: s",
    ));
    assert!(fires(
        &sigma,
        &record(json!({"eventType": "user.session.start"}))
    ));
}

fn custody_event(run: &str, tool: &str, offset_secs: i64) -> RuntimeEvent {
    let event = json!({
        "kind": "tool_call", "action": "tools/call", "observed_at": at(offset_secs),
        "source": {"type": "gateway"},
        "actor": {
            "root": {"type": "human", "id": "alice@example.com"},
            "agents": [{"type": "agent", "id": "planner", "run_id": "run-0"}],
            "current": {"type": "agent", "id": "coder", "version": "2", "run_id": run},
        },
        "target": {"tool": tool, "server": "github", "resource": format!("repo/{offset_secs}")},
        "outcome": {"status": "success"},
        "attributes": {"mcp.arguments": {"path": "/etc/passwd"}, "gen_ai.tool.name": tool},
    });
    custody_event::decode_value(event)
        .unwrap()
        .into_event(Utc::now(), EventId::new_v7)
}

fn custody_rule(detection: &str) -> String {
    format!(
        "title: case\nid: case\nlogsource:\n    product: custody\n    category: tool_call\ndetection:\n{}\n",
        indented(detection)
    )
}

#[test]
fn the_custody_face_has_the_chain_and_the_attributes() {
    let event = custody_event("run-1", "read_file", 0);
    for (detection, expected) in [
        ("s:\n  target.tool: read_file\ncondition: s", true),
        ("s:\n  chain.root: alice@example.com\ncondition: s", true),
        ("s:\n  chain.run: run-1\ncondition: s", true),
        ("s:\n  chain.agent_type: coder@2\ncondition: s", true),
        ("s:\n  chain.depth|gte: 2\ncondition: s", true),
        ("s:\n  actor.agents: planner\ncondition: s", true),
        (
            "s:\n  attributes.gen_ai.tool.name: read_file\ncondition: s",
            true,
        ),
        (
            "s:\n  attributes.mcp.arguments.path|startswith: /etc/\ncondition: s",
            true,
        ),
        ("s:\n  source.type: gateway\ncondition: s", true),
        ("s:\n  kind: data_access\ncondition: s", false),
        ("s:\n  raw.anything|exists: true\ncondition: s", false),
    ] {
        let sigma = stage(&custody_rule(detection));
        assert_eq!(fires(&sigma, &event), expected, "{detection}");
    }
    // A rule of another category does not see tool calls.
    let data = stage(
        &custody_rule("s:\n  target.tool: read_file\ncondition: s")
            .replace("tool_call", "data_access"),
    );
    assert!(!fires(&data, &event));
}

const CALLS: &str = "title: Call
id: call
name: call
logsource:
    product: custody
    category: tool_call
detection:
    s:
        target.tool|exists: true
    condition: s
";

fn correlation(body: &str) -> String {
    format!(
        "{CALLS}---\ntitle: case\nid: case\ncorrelation:\n{}\n",
        indented(body)
    )
}

fn correlation_fired(sigma: &Sigma, events: &[RuntimeEvent]) -> Vec<usize> {
    events
        .iter()
        .enumerate()
        .filter(|(_, event)| fires(sigma, event))
        .map(|(index, _)| index)
        .collect()
}

#[test]
fn event_count_groups_by_run_within_its_timespan() {
    let sigma = stage(&correlation(
        "type: event_count\nrules:\n    - call\ngroup-by:\n    - chain.run\ntimespan: 1m\ncondition:\n    gte: 3",
    ));
    let events = [
        custody_event("run-1", "a", 0),
        custody_event("run-2", "a", 1),
        custody_event("run-1", "b", 2),
        custody_event("run-2", "b", 3),
        custody_event("run-1", "c", 4),
    ];
    assert_eq!(
        correlation_fired(&sigma, &events),
        vec![4],
        "run-1's third call"
    );
    // Spread beyond the timespan, three calls never meet.
    let sigma = stage(&correlation(
        "type: event_count\nrules:\n    - call\ngroup-by:\n    - chain.run\ntimespan: 1m\ncondition:\n    gte: 3",
    ));
    let slow = [
        custody_event("run-1", "a", 0),
        custody_event("run-1", "b", 50),
        custody_event("run-1", "c", 100),
    ];
    assert!(correlation_fired(&sigma, &slow).is_empty());
}

#[test]
fn value_count_counts_distinct_values() {
    let sigma = stage(&correlation(
        "type: value_count\nrules:\n    - call\ngroup-by:\n    - chain.run\ntimespan: 5m\ncondition:\n    field: target.tool\n    gte: 3",
    ));
    let events = [
        custody_event("run-1", "a", 0),
        custody_event("run-1", "a", 1),
        custody_event("run-1", "b", 2),
        custody_event("run-1", "b", 3),
        custody_event("run-1", "c", 4),
    ];
    assert_eq!(correlation_fired(&sigma, &events), vec![4]);
}

const ORDERED: &str = "title: Secret read
id: secret
name: secret
logsource:
    product: custody
    category: tool_call
detection:
    s:
        target.tool: get_secret
    condition: s
---
title: Post out
id: post
name: post
logsource:
    product: custody
    category: tool_call
detection:
    s:
        target.tool: http_post
    condition: s
---
title: case
id: case
correlation:
    type: temporal_ordered
    rules:
        - secret
        - post
    group-by:
        - chain.run
    timespan: 10m
";

#[test]
fn temporal_ordered_needs_the_order_and_the_group() {
    let in_order = [
        custody_event("run-1", "get_secret", 0),
        custody_event("run-1", "http_post", 5),
    ];
    let sigma = stage(ORDERED);
    assert_eq!(correlation_fired(&sigma, &in_order), vec![1]);

    let reversed = [
        custody_event("run-1", "http_post", 0),
        custody_event("run-1", "get_secret", 5),
    ];
    let sigma = stage(ORDERED);
    assert!(correlation_fired(&sigma, &reversed).is_empty());

    let other_run = [
        custody_event("run-1", "get_secret", 0),
        custody_event("run-2", "http_post", 5),
    ];
    let sigma = stage(ORDERED);
    assert!(correlation_fired(&sigma, &other_run).is_empty());

    // Unordered `temporal` fires either way.
    let sigma = stage(&ORDERED.replace("temporal_ordered", "temporal"));
    assert_eq!(correlation_fired(&sigma, &reversed), vec![1]);
}

#[test]
fn aliases_join_differently_named_fields() {
    let rules = "title: Spawn
id: spawn
name: spawn
logsource:
    product: custody
    category: agent_spawn
detection:
    s:
        action: spawn
    condition: s
---
title: Call
id: call
name: call
logsource:
    product: custody
    category: tool_call
detection:
    s:
        target.tool: http_post
    condition: s
---
title: case
id: case
correlation:
    type: temporal_ordered
    rules:
        - spawn
        - call
    group-by:
        - parent_run
    aliases:
        parent_run:
            spawn: chain.run
            call: chain.parent_run
    timespan: 10m
";
    let sigma = stage(rules);
    let spawn = custody_event::decode_value(json!({
        "kind": "agent_spawn", "action": "spawn", "observed_at": at(0),
        "source": {"type": "api"},
        "actor": {"current": {"type": "agent", "id": "planner", "run_id": "run-0"}},
        "target": {"principal": {"type": "agent", "id": "coder", "run_id": "run-1"}},
        "outcome": {"status": "success"},
    }))
    .unwrap()
    .into_event(Utc::now(), EventId::new_v7);
    // The child's call names run-0 as the run of its parent agent.
    let call = custody_event("run-1", "http_post", 5);
    assert!(!fires(&sigma, &spawn));
    assert!(fires(&sigma, &call));
}

#[test]
fn repeats_within_the_window_join_the_open_finding() {
    let sigma = stage(&custody_rule(
        "s:\n  target.tool: delete_repo\ncondition: s",
    ));
    let first = sigma.detect(&custody_event("run-1", "delete_repo", 0));
    let again = sigma.detect(&custody_event("run-1", "delete_repo", 30));
    let other_run = sigma.detect(&custody_event("run-2", "delete_repo", 31));
    let later = sigma.detect(&custody_event("run-1", "delete_repo", 3600));
    let opened = |signals: &[custody_engine::Signal]| match &signals[0].finding {
        Some(FindingNote::Opens(finding)) => Some(finding.id),
        _ => None,
    };
    let id = opened(&first).expect("the first match opens a finding");
    assert!(matches!(again[0].finding, Some(FindingNote::Repeats(repeat)) if repeat == id));
    assert!(opened(&other_run).is_some(), "another run is another group");
    assert!(opened(&later).is_some(), "past the window, a new finding");
}

#[test]
fn a_correlation_finding_names_its_events_and_chain() {
    let sigma = stage(ORDERED);
    let read = custody_event("run-1", "get_secret", 0);
    let post = custody_event("run-1", "http_post", 5);
    sigma.detect(&read);
    let signals = sigma.detect(&post);
    let finding = signals
        .iter()
        .find(|s| s.id == "case")
        .and_then(|s| match &s.finding {
            Some(FindingNote::Opens(finding)) => Some(finding),
            _ => None,
        })
        .expect("the correlation opens a finding");
    assert_eq!(finding.events, vec![read.id, post.id]);
    assert_eq!(finding.chain, post.actor);
    assert_eq!(finding.group[0].field, "chain.run");
    assert_eq!(finding.group[0].value, "run-1");
    assert_eq!(finding.first_seen, read.observed_at);
    assert_eq!(finding.last_seen, post.observed_at);
}

#[test]
fn peeking_counts_nothing() {
    let sigma = stage(ORDERED);
    let read = custody_event("run-1", "get_secret", 0);
    let post = custody_event("run-1", "http_post", 5);
    assert!(sigma.peek(&read).iter().all(|s| s.finding.is_none()));
    assert!(
        sigma.detect(&post).iter().all(|s| s.id != "case"),
        "the peeked read was not counted"
    );
}

#[test]
fn building_blocks_report_only_when_the_correlation_generates() {
    let sigma = stage(ORDERED);
    let read = custody_event("run-1", "get_secret", 0);
    assert!(
        sigma.detect(&read).is_empty(),
        "a building block opens no finding"
    );
    assert!(sigma.peek(&read).is_empty());

    let generating = ORDERED.replace(
        "    timespan: 10m\n",
        "    timespan: 10m\n    generate: true\n",
    );
    let sigma = stage(&generating);
    let ids: Vec<String> = sigma.detect(&read).into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["secret"]);
}

#[test]
fn one_event_matching_both_steps_is_not_a_sequence() {
    let rules = ORDERED
        .replace("target.tool: get_secret", "target.tool|contains: secret")
        .replace("target.tool: http_post", "target.tool|contains: http");
    let sigma = stage(&rules);
    let both = custody_event("run-1", "secret_http_get", 0);
    assert!(
        !fires(&sigma, &both),
        "one event is not a read followed by a post"
    );
    let post = custody_event("run-1", "http_post", 5);
    assert!(
        fires(&sigma, &post),
        "the earlier read and a later post are"
    );
}

/// Agents act in milliseconds: a post and then a read in the same second
/// are not a read followed by a post.
#[test]
fn order_holds_within_a_second() {
    let sigma = stage(ORDERED);
    let at_ms = |mut event: RuntimeEvent, millis: i64| {
        event.observed_at = at(0) + Duration::milliseconds(millis);
        event
    };
    let post = at_ms(custody_event("run-1", "http_post", 0), 100);
    let read = at_ms(custody_event("run-1", "get_secret", 0), 200);
    let again = at_ms(custody_event("run-1", "http_post", 0), 300);
    assert!(!fires(&sigma, &post));
    assert!(!fires(&sigma, &read), "the post came before the read");
    assert!(fires(&sigma, &again));
}

/// A value leaves a `value_count` window when its last sighting does.
#[test]
fn value_count_forgets_values_only_when_last_seen_before_the_window() {
    let rules = correlation(
        "type: value_count\nrules:\n    - call\ngroup-by:\n    - chain.run\ntimespan: 1m\ncondition:\n    field: target.tool\n    gte: 3",
    );
    let sigma = stage(&rules);
    let expired = [
        custody_event("run-1", "a", 0),
        custody_event("run-1", "b", 30),
        custody_event("run-1", "c", 70),
        custody_event("run-1", "a", 75),
    ];
    assert_eq!(
        correlation_fired(&sigma, &expired),
        vec![3],
        "a had gone by c, and came back"
    );
    let sigma = stage(&rules);
    let kept = [
        custody_event("run-1", "a", 0),
        custody_event("run-1", "a", 50),
        custody_event("run-1", "b", 60),
        custody_event("run-1", "c", 100),
    ];
    assert_eq!(
        correlation_fired(&sigma, &kept),
        vec![3],
        "a seen again at 50 is still in"
    );
}
