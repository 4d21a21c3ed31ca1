//! Graph scenarios, checked as snapshots of the whole graph.

use chrono::{DateTime, Duration, Utc};
use custody_event::{EventId, RuntimeEvent, decode_value};
use serde_json::{Value, json};

use crate::{BlastRadius, EdgeKind, Graph, NodeKey, NodeKind, Sensitivity, Verb};

pub(crate) fn at(second: i64) -> DateTime<Utc> {
    "2026-11-25T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::seconds(second)
}

/// An event by `actor` at `second` as a source reports it, with `fields`
/// replacing the defaults.
pub(crate) fn reported(second: i64, actor: Value, fields: Value) -> RuntimeEvent {
    let mut json = json!({
        "kind": "tool_call",
        "action": "tools/call",
        "observed_at": at(second),
        "source": {"type": "gateway", "name": "gw-1"},
        "actor": actor,
        "outcome": {"status": "success"},
    });
    let Value::Object(fields) = fields else {
        panic!("fields must be an object")
    };
    json.as_object_mut().unwrap().extend(fields);
    decode_value(json).unwrap().into_event(at(second), next_id)
}

/// An authenticated event by `actor` at `second`, with `fields` replacing
/// the defaults: the graph is built from attributed events.
fn event(second: i64, actor: Value, fields: Value) -> RuntimeEvent {
    let mut with = json!({"attribution": {"method": "authenticated"}});
    let Value::Object(fields) = fields else {
        panic!("fields must be an object")
    };
    with.as_object_mut().unwrap().extend(fields);
    reported(second, actor, with)
}

/// Event ids numbered from 1 in each test (each runs on a thread of its
/// own), so snapshots are stable.
fn next_id() -> EventId {
    thread_local! {
        static NEXT: std::cell::Cell<u128> = const { std::cell::Cell::new(1) };
    }
    EventId(uuid::Uuid::from_u128(NEXT.replace(NEXT.get() + 1)))
}

/// Chains as text, one a line: `from -kind-> to` hops joined by ` | `.
fn chains(found: &[Vec<crate::EdgeView>]) -> String {
    let mut lines: Vec<String> = found
        .iter()
        .map(|chain| {
            chain
                .iter()
                .map(|edge| format!("{} -{}-> {}", edge.from, edge.kind.as_str(), edge.to))
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The deep chain scenario's graph.
fn deep_chain() -> Graph {
    let mut graph = Graph::new(Sensitivity::new(["*payroll*"]));
    let hops = [
        ("orchestrator", "run-0"),
        ("planner", "run-1"),
        ("coder", "run-2"),
        ("tester", "run-3"),
    ];
    for depth in 1..=hops.len() {
        graph.apply(&event(
            depth as i64,
            chain(&hops[..depth]),
            json!({"target": {"tool": "read_file", "server": "filesystem",
                              "resource": format!("file:///repo/{depth}.rs")}}),
        ));
    }
    graph.apply(&event(
        9,
        chain(&hops),
        json!({"kind": "data_access", "action": "s3:GetObject",
               "target": {"resource": "arn:aws:s3:::payroll/q3.csv", "system": "aws:111122223333"}}),
    ));
    graph
}

/// The chain alice -> orchestrator -> ... with `hops` agents (each in its
/// own run), the last one acting.
fn chain(hops: &[(&str, &str)]) -> Value {
    let principals: Vec<Value> = hops
        .iter()
        .map(|(agent, run)| json!({"type": "agent", "id": agent, "run_id": run}))
        .collect();
    let (current, agents) = principals.split_last().unwrap();
    json!({
        "root": {"type": "human", "id": "alice@example.com", "name": "Alice"},
        "agents": agents,
        "current": current,
    })
}

#[test]
fn a_deep_chain() {
    let graph = deep_chain();
    insta::assert_snapshot!(graph.dump());
    let alice = NodeKey::new(NodeKind::Human, "alice@example.com");
    assert_eq!(
        graph.blast_radius(&alice).unwrap(),
        BlastRadius {
            systems: 1,
            resources: 5,
            sensitive_resources: 1,
            depth: 4,
            fan_out: 1,
            ..BlastRadius::default()
        }
    );
    let coder = NodeKey::new(NodeKind::Run, "run-2");
    let radius = graph.blast_radius(&coder).unwrap();
    assert_eq!((radius.resources, radius.depth), (3, 1));
}

#[test]
fn a_fan_out_of_sub_agents() {
    let mut graph = Graph::new(Sensitivity::default());
    let orchestrator = chain(&[("orchestrator", "run-0")]);
    for child in 0..5 {
        graph.apply(&event(
            child,
            orchestrator.clone(),
            json!({"kind": "agent_spawn", "action": "token_exchange",
                   "target": {"principal": {"type": "agent", "id": format!("worker-{child}"),
                                            "run_id": format!("run-0.{child}")}}}),
        ));
        graph.apply(&event(
            10 + child,
            chain(&[
                ("orchestrator", "run-0"),
                (&format!("worker-{child}"), &format!("run-0.{child}")),
            ]),
            json!({"action": "git_commit", "target": {"tool": "git_commit",
                   "resource": format!("repo://acme/payments#{child}")}}),
        ));
    }
    insta::assert_snapshot!(graph.dump());
    let run = NodeKey::new(NodeKind::Run, "run-0");
    let radius = graph.blast_radius(&run).unwrap();
    assert_eq!(
        (
            radius.fan_out,
            radius.depth,
            radius.identities_created,
            radius.resources
        ),
        (5, 1, 5, 5)
    );
    let spawn = graph
        .edge_seen(
            &run,
            EdgeKind::Spawned,
            &NodeKey::new(NodeKind::Run, "run-0.3"),
        )
        .unwrap();
    assert_eq!((spawn.count, spawn.first_seen), (1, at(3)));
}

#[test]
fn a_credential_shared_by_two_runs() {
    let mut graph = Graph::new(Sensitivity::default());
    for (second, run) in [(0, "run-a"), (1, "run-b"), (2, "run-a")] {
        let mut actor = chain(&[("deployer", run)]);
        actor["credential"] = json!({"type": "aws_access_key", "id": "AKIAEXAMPLE000000001"});
        graph.apply(&event(
            second,
            actor,
            json!({"kind": "data_access", "action": "s3:PutObject",
                   "target": {"resource": "arn:aws:s3:::releases/app.tar.gz", "system": "aws:111122223333"}}),
        ));
    }
    insta::assert_snapshot!(graph.dump());
    let key = NodeKey::new(NodeKind::Credential, "AKIAEXAMPLE000000001");
    let held = graph
        .edge_seen(&NodeKey::new(NodeKind::Run, "run-a"), EdgeKind::Holds, &key)
        .unwrap();
    assert_eq!(
        (held.count, held.first_seen, held.last_seen),
        (2, at(0), at(2))
    );
}

#[test]
fn created_credentials_and_privileged_actions_count_up_the_chain() {
    let mut graph = Graph::new(Sensitivity::default());
    let actor = chain(&[("orchestrator", "run-0"), ("iam-helper", "run-1")]);
    graph.apply(&event(
        0,
        actor.clone(),
        json!({"kind": "privilege_change", "action": "iam:CreateAccessKey",
               "target": {"resource": "AKIAEXAMPLE000000002", "resource_type": "aws_access_key",
                          "system": "aws:111122223333"}}),
    ));
    graph.apply(&event(
        1,
        actor,
        json!({"kind": "privilege_change", "action": "iam:CreateUser",
               "target": {"principal": {"type": "human", "id": "backdoor"}, "system": "aws:111122223333"}}),
    ));
    let alice = NodeKey::new(NodeKind::Human, "alice@example.com");
    let radius = graph.blast_radius(&alice).unwrap();
    assert_eq!(
        (
            radius.credentials_created,
            radius.identities_created,
            radius.privileged_actions
        ),
        (1, 1, 2)
    );
    insta::assert_snapshot!(graph.dump());
}

#[test]
fn verbs_are_read_off_action_names() {
    let check = |action: &str, expected: Verb| assert_eq!(Verb::of(action), expected, "{action}");
    check("s3:GetObject", Verb::Read);
    check("resources/read", Verb::Read);
    check("s3:PutObject", Verb::Write);
    check("git_commit", Verb::Write);
    check("git.commit", Verb::Write);
    check("read_file", Verb::Read);
    check("http_fetch", Verb::Read);
    check("run_tests", Verb::Other);
    check("iam:CreateAccessKey", Verb::Create);
    check("sts:AssumeRole", Verb::Assume);
    check("tools/call", Verb::Other);
    check("user.session.start", Verb::Other);
}

#[test]
fn sensitivity_patterns_match_with_stars() {
    let labels = Sensitivity::new(["arn:aws:s3:::payroll*", "*customer*", "exact"]);
    for (resource, expected) in [
        ("arn:aws:s3:::payroll/q3.csv", true),
        ("arn:aws:s3:::payroll", true),
        ("arn:aws:s3:::releases/payroll", false),
        ("s3://customer-exports/2026", true),
        ("customer", true),
        ("exact", true),
        ("exactly", false),
        ("", false),
    ] {
        assert_eq!(labels.is_sensitive(resource), expected, "{resource}");
    }
    assert!(Sensitivity::new(["a*b*c"]).is_sensitive("a-b-b-c"));
    assert!(!Sensitivity::new(["a*b*c"]).is_sensitive("a-c-b"));
    assert!(Sensitivity::new(["*"]).is_sensitive(""));
}

#[test]
fn a_tag_labels_its_resource_sensitive_for_every_hop_that_touched_it() {
    let labels =
        Sensitivity::new(["*payroll*"]).with_tags(["data.classification=confidential", "pii"]);
    let mut graph = Graph::new(labels);
    let read = |second: i64, run: &str, resource: &str, attributes: Value| {
        event(
            second,
            chain(&[("reader", run)]),
            json!({"kind": "data_access", "action": "s3:GetObject",
                   "target": {"resource": resource}, "attributes": attributes}),
        )
    };
    let sensitive = |graph: &Graph, node: &str| {
        graph
            .blast_radius(&NodeKey::parse(node).unwrap())
            .unwrap()
            .sensitive_resources
    };
    // Touched untagged by run-a, then tagged by run-b's read: both count it.
    graph.apply(&read(0, "run-a", "s3://exports/q3", json!({})));
    assert_eq!(sensitive(&graph, "run:run-a"), 0);
    graph.apply(&read(
        1,
        "run-b",
        "s3://exports/q3",
        json!({"data.classification": "confidential"}),
    ));
    assert_eq!(sensitive(&graph, "run:run-a"), 1);
    assert_eq!(sensitive(&graph, "run:run-b"), 1);
    assert_eq!(sensitive(&graph, "human:alice@example.com"), 1);
    // Tagged again, or read again: counted once.
    graph.apply(&read(2, "run-a", "s3://exports/q3", json!({"pii": true})));
    graph.apply(&read(
        2,
        "run-a",
        "s3://exports/q3",
        json!({"data.classification": "confidential"}),
    ));
    assert_eq!(sensitive(&graph, "run:run-a"), 1);
    // A new resource tagged from the start; a tag of another value labels
    // nothing; a name pattern still does.
    graph.apply(&read(3, "run-c", "s3://exports/q4", json!({"pii": "yes"})));
    graph.apply(&read(
        4,
        "run-c",
        "s3://exports/q5",
        json!({"data.classification": "public"}),
    ));
    graph.apply(&read(5, "run-c", "s3://payroll/q5", json!({})));
    assert_eq!(sensitive(&graph, "run:run-c"), 2);
    assert_eq!(sensitive(&graph, "human:alice@example.com"), 3);

    // A value matches an attribute written as text or as JSON.
    let level = Sensitivity::default().with_tags(["level=3"]);
    for (attribute, expected) in [(json!(3), true), (json!("3"), true), (json!(4), false)] {
        let tagged = read(0, "run-d", "s3://x", json!({ "level": attribute }));
        assert_eq!(level.tags(&tagged), expected, "{attribute}");
    }
}

#[test]
fn who_touched_a_resource_walks_up_to_every_root() {
    let graph = deep_chain();
    insta::assert_snapshot!(
        "who_payroll",
        chains(&graph.who("arn:aws:s3:::payroll/q3.csv", 100))
    );
    assert_eq!(chains(&graph.who("arn:aws:s3:::nothing", 100)), "");

    // A credential used by two runs has a chain through each.
    let mut shared = Graph::new(Sensitivity::default());
    for (second, run) in [(0, "run-a"), (1, "run-b")] {
        let mut actor = chain(&[("deployer", run)]);
        actor["credential"] = json!({"type": "aws_access_key", "id": "AKIAEXAMPLE000000001"});
        shared.apply(&event(second, actor, json!({"action": "s3:PutObject"})));
    }
    insta::assert_snapshot!(
        "who_shared_key",
        chains(&shared.who("AKIAEXAMPLE000000001", 100))
    );
    assert_eq!(shared.who("AKIAEXAMPLE000000001", 1).len(), 1, "limited");
}

#[test]
fn a_spawned_and_delegated_sub_agent_has_one_lineage() {
    let mut graph = Graph::new(Sensitivity::default());
    let orchestrator = chain(&[("orchestrator", "run-0")]);
    graph.apply(&event(
        0,
        orchestrator,
        json!({"kind": "agent_spawn", "action": "token_exchange",
               "target": {"principal": {"type": "agent", "id": "worker", "run_id": "run-0.1"}}}),
    ));
    graph.apply(&event(
        1,
        chain(&[("orchestrator", "run-0"), ("worker", "run-0.1")]),
        json!({"action": "git_commit", "target": {"resource": "repo://acme/payments"}}),
    ));
    assert_eq!(
        chains(&graph.who("repo://acme/payments", 100)),
        "human:alice@example.com -deployed-> run:run-0 | run:run-0 -delegated-> run:run-0.1 \
         | run:run-0.1 -wrote-> resource:repo://acme/payments"
    );
}

#[test]
fn a_subgraph_exports_as_bloodhound_opengraph() {
    let graph = deep_chain();
    let alice = NodeKey::new(NodeKind::Human, "alice@example.com");
    let near = graph.subgraph(&alice, 2, 100, None).unwrap();
    let keys: Vec<String> = near.nodes.iter().map(|n| n.key.to_string()).collect();
    assert_eq!(
        keys,
        [
            "human:alice@example.com",
            "run:run-0",
            "run:run-1",
            "resource:file:///repo/1.rs",
            "server:filesystem",
            "tool:read_file",
        ]
    );
    assert_eq!(near.edges.len(), 5);
    assert_eq!(
        graph.subgraph(&alice, 10, 3, None).unwrap().nodes.len(),
        3,
        "limited"
    );
    assert!(
        graph
            .subgraph(&NodeKey::new(NodeKind::Human, "bob"), 2, 10, None)
            .is_none()
    );
    // Since second 5, run-0 has only delegated: its reads were at second 1.
    let recent = graph.subgraph(&alice, 2, 100, Some(at(5))).unwrap();
    let keys: Vec<String> = recent.nodes.iter().map(|n| n.key.to_string()).collect();
    assert_eq!(keys, ["human:alice@example.com", "run:run-0", "run:run-1"]);
    assert_eq!(recent.edges.len(), 2);
    let exported = crate::opengraph(&graph.subgraph(&alice, 1, 100, None).unwrap());
    insta::assert_snapshot!(serde_json::to_string_pretty(&exported).unwrap());
}

mod incremental {
    //! The blast radius kept incrementally equals the one recomputed from
    //! scratch, for any sequence of events.

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    /// Resources, sensitive resources and systems seen through a node.
    type Touched = (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

    /// An event as drawn: root, runs, resource, system, privileged.
    type Small = (usize, Vec<usize>, Option<usize>, Option<usize>, bool);

    /// A small event: a chain of up to three runs under one of two roots,
    /// maybe a resource (sensitive or not), maybe a system.
    fn small_event() -> impl Strategy<Value = Small> {
        (
            0..2usize,
            prop::collection::vec(0..4usize, 1..4),
            prop::option::of(0..6usize),
            prop::option::of(0..3usize),
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn blast_radius_equals_its_recomputation(
            events in prop::collection::vec(small_event(), 1..40)
        ) {
            let mut graph = Graph::new(Sensitivity::new(["secret-*"]));
            // node key -> resources, sensitive resources, systems, seen
            // through chains containing it.
            let mut expected: BTreeMap<NodeKey, Touched> = BTreeMap::new();
            for (second, (root, runs, resource, system, privileged)) in events.iter().enumerate() {
                let hops: Vec<(String, String)> = runs
                    .iter()
                    .map(|r| (format!("agent-{r}"), format!("run-{r}")))
                    .collect();
                // A run appears once per chain.
                let mut unique = Vec::new();
                for hop in hops {
                    if !unique.contains(&hop) {
                        unique.push(hop);
                    }
                }
                let principals: Vec<Value> = unique
                    .iter()
                    .map(|(agent, run)| json!({"type": "agent", "id": agent, "run_id": run}))
                    .collect();
                let (current, agents) = principals.split_last().unwrap();
                let root_id = format!("root-{root}");
                let actor = json!({
                    "root": {"type": "human", "id": root_id},
                    "agents": agents,
                    "current": current,
                });
                let resource = resource.map(|r| {
                    if r < 2 { format!("secret-{r}") } else { format!("file-{r}") }
                });
                let system = system.map(|s| format!("system-{s}"));
                let mut target = json!({});
                if let Some(resource) = &resource {
                    target["resource"] = json!(resource);
                }
                if let Some(system) = &system {
                    target["system"] = json!(system);
                }
                let kind = if *privileged { "privilege_change" } else { "tool_call" };
                graph.apply(&event(
                    second as i64,
                    actor,
                    json!({"kind": kind, "action": "s3:GetObject", "target": target}),
                ));
                let mut path = vec![NodeKey::new(NodeKind::Human, &root_id)];
                path.extend(unique.iter().map(|(_, run)| NodeKey::new(NodeKind::Run, run)));
                for key in path {
                    let entry = expected.entry(key).or_default();
                    if let Some(resource) = &resource {
                        entry.0.insert(resource.clone());
                        if resource.starts_with("secret-") {
                            entry.1.insert(resource.clone());
                        }
                    }
                    if let Some(system) = &system {
                        entry.2.insert(system.clone());
                    }
                }
            }
            for (key, (resources, sensitive, systems)) in &expected {
                let radius = graph.blast_radius(key).unwrap();
                prop_assert_eq!(radius.resources, resources.len(), "{}", key);
                prop_assert_eq!(radius.sensitive_resources, sensitive.len(), "{}", key);
                prop_assert_eq!(radius.systems, systems.len(), "{}", key);
            }
        }
    }
}

#[test]
fn an_unattributed_event_adds_no_lineage() {
    let mut graph = Graph::new(Sensitivity::default());
    graph.apply(&event(
        0,
        chain(&[("orchestrator", "run-0"), ("coder", "run-1")]),
        json!({"attribution": {"method": "unattributed"},
               "target": {"resource": "file:///etc/passwd"}}),
    ));
    insta::assert_snapshot!(graph.dump(), @r"
    run:run-1 (coder) radius: systems 0 resources 1 sensitive 0 identities_created 0 credentials_created 0 privileged 0 depth 0 fan_out 0
    resource:file:///etc/passwd
    run:run-1 -used-> resource:file:///etc/passwd x1
    ");
}
