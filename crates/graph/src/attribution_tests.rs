//! Attribution scenarios: bindings declared, minted and learned; sessions;
//! ambiguity; validity.

use chrono::Duration;
use custody_event::{AttributionMethod, RuntimeEvent};
use serde_json::{Value, json};

use crate::tests::{at, reported as event};
use crate::{Attributor, Binding, BindingKey, Origin, Trust};

/// alice -> orchestrator (run-0) -> the sub-agent `name` in `run`.
fn sub_agent(name: &str, run: &str) -> Value {
    json!({
        "root": {"type": "human", "id": "alice@example.com"},
        "agents": [{"type": "agent", "id": "orchestrator", "run_id": "run-0"}],
        "current": {"type": "agent", "id": name, "run_id": run},
    })
}

/// A CloudTrail-like record by an assumed-role session.
fn cloudtrail(second: i64, session: &str, source_identity: Option<&str>) -> RuntimeEvent {
    let arn = format!("arn:aws:sts::111122223333:assumed-role/deployer/{session}");
    let mut attributes = json!({});
    if let Some(identity) = source_identity {
        attributes["aws.source_identity"] = json!(identity);
    }
    event(
        second,
        json!({"current": {"type": "role", "id": arn},
               "credential": {"type": "aws_role_session", "id": arn}}),
        json!({"kind": "data_access", "action": "s3:GetObject",
               "source": {"type": "cloudtrail"},
               "target": {"resource": "arn:aws:s3:::payroll/q3.csv", "system": "aws:111122223333"},
               "attributes": attributes}),
    )
}

/// One line per event: its method, its chain and its evidence.
fn describe(event: &RuntimeEvent) -> String {
    let hop = |p: &custody_event::Principal| match &p.run_id {
        Some(run) => format!("{}[{run}]", p.id),
        None => p.id.clone(),
    };
    let mut chain: Vec<String> = event.actor.root.iter().map(hop).collect();
    chain.extend(event.actor.agents.iter().map(hop));
    chain.push(hop(&event.actor.current));
    let evidence: Vec<String> = event
        .attribution
        .evidence
        .iter()
        .map(|e| format!("\n    {}: {}", e.kind, e.detail))
        .collect();
    format!(
        "{} {}: {}{}",
        event.action,
        event.attribution.method.as_str(),
        chain.join(" -> "),
        evidence.concat()
    )
}

#[test]
fn a_role_session_assumed_by_a_sub_agent_attributes_its_cloudtrail_records() {
    let mut attributor = Attributor::default();
    let mut log = Vec::new();
    // The sub-agent, authenticated at the gateway, assumes the role.
    let mut assume = event(
        0,
        sub_agent("deployer", "run-0.b"),
        json!({"kind": "credential_use", "action": "sts:AssumeRole",
               "attributes": {"aws.role_session_name": "deploy-run-0.b",
                              "aws.source_identity": "run-0.b",
                              "aws.issued_access_key_id": "ASIAEXAMPLE000000001",
                              "aws.session_expires": at(3600).to_rfc3339()}}),
    );
    attributor.attribute(&mut assume, &Trust::Authenticated("jti-b".into()));
    log.push(describe(&assume));
    // Records of that session arrive later, one by session name, one by
    // source identity only, one by the temporary key the call issued; one
    // of another session; one after expiry, by more than the clock skew
    // allowed.
    let mut by_key = cloudtrail(63, "renamed-again", None);
    by_key
        .attributes
        .insert("aws.access_key_id".into(), json!("ASIAEXAMPLE000000001"));
    for mut record in [
        cloudtrail(60, "deploy-run-0.b", None),
        cloudtrail(61, "renamed-session", Some("run-0.b")),
        by_key,
        cloudtrail(62, "someone-else", None),
        cloudtrail(3610, "deploy-run-0.b", None),
    ] {
        attributor.attribute(&mut record, &Trust::Reported);
        log.push(describe(&record));
    }
    insta::assert_snapshot!(log.join("\n"));
}

#[test]
fn a_session_name_binds_only_its_own_role_s_session_when_the_role_is_known() {
    let mut attributor = Attributor::default();
    let mut assume = event(
        0,
        sub_agent("deployer", "run-0.b"),
        json!({"kind": "credential_use", "action": "sts:AssumeRole",
               "target": {"principal": {"type": "role", "id": "arn:aws:iam::111122223333:role/ci/deployer"}},
               "attributes": {"aws.role_session_name": "deploy-run-0.b"}}),
    );
    attributor.attribute(&mut assume, &Trust::Authenticated("jti-b".into()));
    let mut own = cloudtrail(10, "deploy-run-0.b", None);
    attributor.attribute(&mut own, &Trust::Reported);
    assert_eq!(own.attribution.method, AttributionMethod::Bound);
    assert!(
        own.attribution.evidence[0].detail.contains(
            "aws_role_session arn:aws:sts::111122223333:assumed-role/deployer/deploy-run-0.b"
        ),
        "{:?}",
        own.attribution.evidence
    );
    // The same name, chosen by whoever assumed another role.
    let arn = "arn:aws:sts::111122223333:assumed-role/intruder/deploy-run-0.b";
    let mut other = event(
        11,
        json!({"current": {"type": "role", "id": arn},
               "credential": {"type": "aws_role_session", "id": arn}}),
        json!({"kind": "data_access", "action": "s3:GetObject"}),
    );
    attributor.attribute(&mut other, &Trust::Reported);
    assert_eq!(other.attribution.method, AttributionMethod::Unattributed);
}

#[test]
fn assumed_role_session_arns_are_made_from_role_arns() {
    use crate::attribution::assumed_role_arn;
    assert_eq!(
        assumed_role_arn("arn:aws:iam::111122223333:role/ci/deployer", "s1").as_deref(),
        Some("arn:aws:sts::111122223333:assumed-role/deployer/s1")
    );
    assert_eq!(
        assumed_role_arn("arn:aws-us-gov:iam::111122223333:role/deployer", "s1").as_deref(),
        Some("arn:aws-us-gov:sts::111122223333:assumed-role/deployer/s1")
    );
    for not_a_role in [
        "arn:aws:iam::111122223333:user/alice",
        "arn:aws:s3:::bucket",
        "deployer",
        "arn:aws:iam:::role/deployer",
    ] {
        assert_eq!(assumed_role_arn(not_a_role, "s1"), None, "{not_a_role}");
    }
}

#[test]
fn a_credential_held_by_two_runs_is_ambiguous_not_guessed() {
    let mut attributor = Attributor::default();
    for run in ["run-a", "run-b"] {
        attributor.bind(Binding {
            id: format!("decl-{run}"),
            key: BindingKey::AwsAccessKey("AKIAEXAMPLE000000001".into()),
            holder: serde_json::from_value(sub_agent("deployer", run)).unwrap(),
            valid_from: at(0),
            valid_until: None,
            origin: Origin::Declared,
        });
    }
    let mut record = event(
        10,
        json!({"current": {"type": "human", "id": "ci-user"},
               "credential": {"type": "aws_access_key", "id": "AKIAEXAMPLE000000001"}}),
        json!({"kind": "data_access", "action": "s3:PutObject",
               "target": {"resource": "arn:aws:s3:::releases/app.tar.gz"}}),
    );
    attributor.attribute(&mut record, &Trust::Reported);
    insta::assert_snapshot!(describe(&record));
}

#[test]
fn a_created_access_key_is_learned_and_a_declared_one_expires_give_or_take_clock_skew() {
    let mut attributor = Attributor::default();
    let mut create = event(
        0,
        sub_agent("iam-helper", "run-0.c"),
        json!({"kind": "privilege_change", "action": "iam:CreateAccessKey",
               "target": {"resource": "AKIAEXAMPLE000000002", "resource_type": "aws_access_key"}}),
    );
    attributor.attribute(&mut create, &Trust::Authenticated("jti-c".into()));
    attributor.bind(Binding {
        id: "decl-1".into(),
        key: BindingKey::AwsAccessKey("AKIAEXAMPLE000000003".into()),
        holder: serde_json::from_value(sub_agent("deployer", "run-0.d")).unwrap(),
        valid_from: at(0),
        valid_until: Some(at(100)),
        origin: Origin::Declared,
    });
    let by_key = |second: i64, key: &str| {
        event(
            second,
            json!({"current": {"type": "service", "id": "iam-user/ci"},
                   "credential": {"type": "aws_access_key", "id": key}}),
            json!({"kind": "data_access", "action": "s3:ListBucket"}),
        )
    };
    let mut log = Vec::new();
    for mut record in [
        by_key(50, "AKIAEXAMPLE000000002"),
        by_key(50, "AKIAEXAMPLE000000003"),
        // Past the end by less than the clock skew allowed, then by more.
        by_key(103, "AKIAEXAMPLE000000003"),
        by_key(106, "AKIAEXAMPLE000000003"),
    ] {
        attributor.attribute(&mut record, &Trust::Reported);
        log.push(describe(&record));
    }
    insta::assert_snapshot!(log.join("\n"));
}

#[test]
fn a_shared_session_correlates_within_its_window_only() {
    let mut attributor = Attributor::new(Duration::minutes(15), 1000);
    let session = |second: i64, actor: Value, id: &str| {
        event(
            second,
            actor,
            json!({"action": "resources/read", "context": {"session_id": id}}),
        )
    };
    let unknown = json!({"current": {"type": "agent", "id": "unknown-agent"}});
    let mut gateway = session(0, sub_agent("coder", "run-0.a"), "mcp-1");
    attributor.attribute(&mut gateway, &Trust::Authenticated("jti-a".into()));
    let mut other = session(0, sub_agent("reviewer", "run-0.r"), "mcp-2");
    attributor.attribute(&mut other, &Trust::Authenticated("jti-r".into()));
    let mut shared = session(5, sub_agent("tester", "run-0.t"), "mcp-2");
    attributor.attribute(&mut shared, &Trust::Authenticated("jti-t".into()));
    let mut log = Vec::new();
    for mut record in [
        session(600, unknown.clone(), "mcp-1"),
        session(901, unknown.clone(), "mcp-1"),
        session(60, unknown.clone(), "mcp-2"),
        session(60, unknown.clone(), "mcp-3"),
    ] {
        attributor.attribute(&mut record, &Trust::Reported);
        log.push(describe(&record));
    }
    insta::assert_snapshot!(log.join("\n"));
}

#[test]
fn the_session_memory_is_bounded() {
    let mut attributor = Attributor::new(Duration::minutes(15), 2);
    for (second, id) in [(0, "s1"), (1, "s2"), (2, "s3")] {
        let mut seen = event(
            second,
            sub_agent("coder", "run-0.a"),
            json!({"context": {"session_id": id}}),
        );
        attributor.attribute(&mut seen, &Trust::Authenticated("jti".into()));
    }
    let method = |attributor: &mut Attributor, id: &str| {
        let mut record = event(
            10,
            json!({"current": {"type": "agent", "id": "x"}}),
            json!({"context": {"session_id": id}}),
        );
        attributor.attribute(&mut record, &Trust::Reported);
        record.attribution.method.as_str()
    };
    assert_eq!(method(&mut attributor, "s1"), "unattributed", "forgotten");
    assert_eq!(method(&mut attributor, "s3"), "correlated");
}

#[test]
fn only_custody_s_own_records_bind_the_tokens_it_minted() {
    let spawn = |evidence: &str| {
        let mut spawn = event(
            0,
            sub_agent("orchestrator", "run-0"),
            json!({"kind": "agent_spawn", "action": "oauth/token-exchange",
                   "target": {"principal": {"type": "agent", "id": "worker", "run_id": "run-0.w"}},
                   "attributes": {"custody.minted_token": "jti-w"}}),
        );
        spawn.attribution.method = custody_event::AttributionMethod::Authenticated;
        spawn.attribution.evidence = vec![custody_event::Evidence {
            kind: evidence.into(),
            detail: "x".into(),
        }];
        spawn
    };
    let used = || {
        event(
            5,
            json!({"current": {"type": "agent", "id": "worker", "run_id": "run-0.w"},
                   "credential": {"type": "custody_token", "id": "jti-w"}}),
            json!({}),
        )
    };
    // An agent posting a spawn event with its own token cannot mint
    // bindings by naming a token id.
    let mut forged = Attributor::default();
    forged.observe(&spawn("token"));
    let mut record = used();
    forged.attribute(&mut record, &Trust::Reported);
    assert_eq!(record.attribution.method.as_str(), "unattributed");
    // Custody's own record of the mint does.
    let mut real = Attributor::default();
    real.observe(&spawn(custody_engine::CUSTODY_EVIDENCE));
    let mut record = used();
    real.attribute(&mut record, &Trust::Reported);
    assert_eq!(record.attribution.method.as_str(), "bound");
    assert_eq!(record.actor.root.unwrap().id, "alice@example.com");
    assert_eq!(
        record.actor.agents.last().unwrap().run_id.as_deref(),
        Some("run-0")
    );
}
