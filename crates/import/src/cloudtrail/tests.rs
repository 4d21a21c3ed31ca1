//! One test per mapping rule, on small records shaped like AWS's examples.

use chrono::DateTime;
use custody_event::{CredentialKind, EventKind, NewEvent, OutcomeStatus, PrincipalKind};
use serde_json::{Value, json};

use super::CloudTrail;
use crate::import;
use crate::testing::{event_of, with};

fn event(record: Value) -> NewEvent {
    event_of(&CloudTrail, &record)
}

/// A record of `source`'s `name`, by an IAM user, with `extra` fields.
fn record(source: &str, name: &str, extra: Value) -> Value {
    with(
        json!({
            "eventVersion": "1.08",
            "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLE",
                             "arn": "arn:aws:iam::111122223333:user/alice",
                             "accountId": "111122223333", "accessKeyId": "AKIAEXAMPLE",
                             "userName": "alice"},
            "eventTime": "2026-11-25T10:00:00Z",
            "eventSource": format!("{source}.amazonaws.com"),
            "eventName": name,
            "awsRegion": "us-east-1",
            "eventID": format!("id-{source}-{name}"),
            "recipientAccountId": "111122223333",
        }),
        extra,
    )
}

fn attribute<'e>(event: &'e NewEvent, name: &str) -> Option<&'e str> {
    event.attributes.get(name).and_then(Value::as_str)
}

#[test]
fn the_action_is_the_service_and_the_call() {
    assert_eq!(
        event(record("s3", "GetObject", json!({}))).action,
        "s3:GetObject"
    );
    let mut bare = record("s3", "GetObject", json!({}));
    bare.as_object_mut().unwrap().remove("eventSource");
    assert_eq!(event(bare).action, "GetObject");
}

#[test]
fn kinds_follow_the_rule_table() {
    let check = |source: &str, name: &str, extra: Value, expected: EventKind| {
        let got = event(record(source, name, extra)).kind;
        assert_eq!(got, expected, "{source}:{name}");
    };
    use EventKind::*;
    check("signin", "ConsoleLogin", json!({}), Authentication);
    check("signin", "AssumeRole", json!({}), Authentication);
    check("sso", "Authenticate", json!({}), Authentication);
    check("sts", "AssumeRole", json!({}), CredentialUse);
    check("sts", "AssumeRoleWithWebIdentity", json!({}), CredentialUse);
    check("sts", "GetSessionToken", json!({}), CredentialUse);
    check("sts", "GetFederationToken", json!({}), CredentialUse);
    check("iam", "AttachRolePolicy", json!({}), PrivilegeChange);
    check("iam", "CreateAccessKey", json!({}), PrivilegeChange);
    check("iam", "AddUserToGroup", json!({}), PrivilegeChange);
    check("iam", "UpdateAssumeRolePolicy", json!({}), PrivilegeChange);
    check("s3", "PutBucketPolicy", json!({}), PrivilegeChange);
    check("kms", "CreateGrant", json!({}), PrivilegeChange);
    check("s3", "PutBucketAcl", json!({}), PrivilegeChange);
    check("iam", "GetUser", json!({}), DataAccess);
    check(
        "iam",
        "GetRolePolicy",
        json!({"readOnly": true}),
        DataAccess,
    );
    check("s3", "GetObject", json!({}), DataAccess);
    check("s3", "PutObject", json!({}), DataAccess);
    check("dynamodb", "PutItem", json!({}), DataAccess);
    check("lambda", "Invoke", json!({}), DataAccess);
    check("secretsmanager", "GetSecretValue", json!({}), DataAccess);
    check("ssm", "GetParameter", json!({}), DataAccess);
    check("kms", "Decrypt", json!({}), DataAccess);
    check("ec2", "DescribeInstances", json!({}), DataAccess);
    check(
        "ec2",
        "RunInstances",
        json!({"eventCategory": "Data"}),
        DataAccess,
    );
    check("ec2", "RunInstances", json!({}), Other);
    check("cloudtrail", "StopLogging", json!({}), Other);
}

#[test]
fn an_iam_user_acts_with_its_access_key() {
    let event = event(record("s3", "ListBuckets", json!({})));
    let current = &event.actor.current;
    assert_eq!(
        (current.kind, current.id.as_str(), current.name.as_deref()),
        (
            PrincipalKind::Human,
            "arn:aws:iam::111122223333:user/alice",
            Some("alice")
        )
    );
    let credential = event.actor.credential.unwrap();
    assert_eq!(
        (
            credential.kind,
            credential.id.as_str(),
            credential.issuer.as_deref()
        ),
        (
            CredentialKind::AwsAccessKey,
            "AKIAEXAMPLE",
            Some("aws:111122223333")
        )
    );
    assert_eq!(
        event.context.session_id, None,
        "a long-lived key is no session"
    );
}

#[test]
fn an_assumed_role_acts_with_its_session() {
    let arn = "arn:aws:sts::111122223333:assumed-role/deployer/deploy-run-0.d";
    let event = event(record(
        "s3",
        "ListBuckets",
        json!({"userIdentity": {
            "type": "AssumedRole", "principalId": "AROAEXAMPLE:deploy-run-0.d", "arn": arn,
            "accountId": "111122223333", "accessKeyId": "ASIAEXAMPLE",
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "arn": "arn:aws:iam::111122223333:role/deployer"},
                "attributes": {"creationDate": "2026-11-25T09:59:00Z", "mfaAuthenticated": "true"},
                "sourceIdentity": "run-0.d"}}}),
    ));
    let current = &event.actor.current;
    assert_eq!(
        (current.kind, current.id.as_str(), current.name.as_deref()),
        (PrincipalKind::Role, arn, Some("deploy-run-0.d"))
    );
    let credential = event.actor.credential.as_ref().unwrap();
    assert_eq!(
        (credential.kind, credential.id.as_str()),
        (CredentialKind::AwsRoleSession, arn)
    );
    assert_eq!(
        attribute(&event, "aws.role_session_name"),
        Some("deploy-run-0.d")
    );
    assert_eq!(attribute(&event, "aws.source_identity"), Some("run-0.d"));
    assert_eq!(attribute(&event, "aws.access_key_id"), Some("ASIAEXAMPLE"));
    assert_eq!(
        attribute(&event, "aws.session_issuer"),
        Some("arn:aws:iam::111122223333:role/deployer")
    );
    assert_eq!(
        attribute(&event, "aws.session_created"),
        Some("2026-11-25T09:59:00Z")
    );
    assert_eq!(event.attributes["aws.mfa_authenticated"], json!(true));
    assert_eq!(event.context.session_id.as_deref(), Some("ASIAEXAMPLE"));
}

#[test]
fn every_identity_type_has_a_current_actor() {
    let check = |identity: Value, kind: PrincipalKind, id: &str| {
        let event = event(record(
            "ec2",
            "DescribeRegions",
            json!({"userIdentity": identity}),
        ));
        assert_eq!(
            (event.actor.current.kind, event.actor.current.id.as_str()),
            (kind, id)
        );
    };
    check(
        json!({"type": "Root", "principalId": "111122223333", "accountId": "111122223333"}),
        PrincipalKind::Human,
        "arn:aws:iam::111122223333:root",
    );
    check(
        json!({"type": "FederatedUser", "arn": "arn:aws:sts::111122223333:federated-user/bob",
               "accountId": "111122223333", "accessKeyId": "ASIAFED"}),
        PrincipalKind::Human,
        "arn:aws:sts::111122223333:federated-user/bob",
    );
    check(
        json!({"type": "AWSService", "invokedBy": "cloudtrail.amazonaws.com"}),
        PrincipalKind::Service,
        "cloudtrail.amazonaws.com",
    );
    check(
        json!({"type": "IdentityCenterUser", "accountId": "111122223333",
               "onBehalfOf": {"userId": "906766f8-1e4d-4d8c-a1d5-111122223333",
                              "identityStoreArn": "arn:aws:identitystore::111122223333:identitystore/d-1234567890"}}),
        PrincipalKind::Human,
        "906766f8-1e4d-4d8c-a1d5-111122223333",
    );
    check(
        json!({"type": "SAMLUser", "principalId": "SAMLExample:alice", "userName": "alice@example.com",
               "identityProvider": "bdGOnTesti4+ExAmPlE="}),
        PrincipalKind::Human,
        "alice@example.com",
    );
    check(
        json!({"type": "AWSAccount", "principalId": "AIDAOTHER", "accountId": "444455556666"}),
        PrincipalKind::Unknown,
        "AIDAOTHER",
    );
    check(
        json!({"type": "Unknown"}),
        PrincipalKind::Unknown,
        "aws:111122223333:unknown",
    );
    let mut anonymous = record("ec2", "DescribeRegions", json!({}));
    anonymous.as_object_mut().unwrap().remove("userIdentity");
    assert_eq!(
        event(anonymous).actor.current.id,
        "aws:111122223333:unknown"
    );
}

#[test]
fn assuming_a_role_names_the_session_attribution_learns() {
    let event = event(record(
        "sts",
        "AssumeRole",
        json!({
            "requestParameters": {"roleArn": "arn:aws:iam::111122223333:role/deployer",
                                  "roleSessionName": "deploy-run-0.d", "sourceIdentity": "run-0.d"},
            "responseElements": {"credentials": {"accessKeyId": "ASIANEW",
                                                 "expiration": "Nov 25, 2026, 11:00:00 AM"}}}),
    ));
    let role = event.target.principal.as_ref().unwrap();
    assert_eq!(
        (role.kind, role.id.as_str(), role.name.as_deref()),
        (
            PrincipalKind::Role,
            "arn:aws:iam::111122223333:role/deployer",
            Some("deployer")
        )
    );
    assert_eq!(
        attribute(&event, "aws.role_session_name"),
        Some("deploy-run-0.d")
    );
    assert_eq!(attribute(&event, "aws.source_identity"), Some("run-0.d"));
    assert_eq!(
        attribute(&event, "aws.session_expires"),
        Some("2026-11-25T11:00:00Z")
    );
    assert_eq!(
        attribute(&event, "aws.issued_access_key_id"),
        Some("ASIANEW")
    );
    assert_eq!(
        attribute(&event, "aws.access_key_id"),
        Some("AKIAEXAMPLE"),
        "the key the call was made with, not the one it issued"
    );
}

#[test]
fn a_refused_assume_role_names_no_session() {
    let event = event(record(
        "sts",
        "AssumeRole",
        json!({"errorCode": "AccessDenied",
               "requestParameters": {"roleArn": "arn:aws:iam::111122223333:role/deployer",
                                     "roleSessionName": "deploy-run-0.d"}}),
    ));
    assert_eq!(event.outcome.status, OutcomeStatus::Denied);
    assert!(
        event.target.principal.is_some(),
        "the role it tried is still the target"
    );
    assert_eq!(attribute(&event, "aws.role_session_name"), None);
}

#[test]
fn targets_come_from_the_request_then_the_resources() {
    let check = |source: &str, name: &str, extra: Value, resource: &str, kind: &str| {
        let event = event(record(source, name, extra));
        assert_eq!(
            (
                event.target.resource.as_deref(),
                event.target.resource_type.as_deref()
            ),
            (Some(resource), Some(kind)),
            "{source}:{name}"
        );
        assert_eq!(event.target.system.as_deref(), Some("aws:111122223333"));
    };
    check(
        "s3",
        "GetObject",
        json!({"requestParameters": {"bucketName": "payroll", "key": "q3.csv"}}),
        "arn:aws:s3:::payroll/q3.csv",
        "s3_object",
    );
    check(
        "s3",
        "DeleteBucket",
        json!({"requestParameters": {"bucketName": "payroll"}}),
        "arn:aws:s3:::payroll",
        "s3_bucket",
    );
    check(
        "iam",
        "CreateAccessKey",
        json!({"requestParameters": {"userName": "bot"},
               "responseElements": {"accessKey": {"accessKeyId": "AKIANEW", "userName": "bot"}}}),
        "AKIANEW",
        "access_key",
    );
    check(
        "iam",
        "AttachUserPolicy",
        json!({"requestParameters": {"userName": "bot",
                                     "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}}),
        "arn:aws:iam::aws:policy/AdministratorAccess",
        "iam_policy",
    );
    check(
        "secretsmanager",
        "GetSecretValue",
        json!({"requestParameters": {"secretId": "prod/db"}}),
        "prod/db",
        "secretsmanager_secret",
    );
    check(
        "lambda",
        "Invoke",
        json!({"requestParameters": {"functionName": "export"}}),
        "arn:aws:lambda:us-east-1:111122223333:function:export",
        "lambda_function",
    );
    check(
        "ssm",
        "GetParameter",
        json!({"requestParameters": {"name": "/prod/token", "withDecryption": true}}),
        "arn:aws:ssm:us-east-1:111122223333:parameter/prod/token",
        "ssm_parameter",
    );
    check(
        "ec2",
        "TerminateInstances",
        json!({"resources": [{"type": "AWS::EC2::Instance",
                              "ARN": "arn:aws:ec2:us-east-1:111122223333:instance/i-1"}]}),
        "arn:aws:ec2:us-east-1:111122223333:instance/i-1",
        "ec2_instance",
    );
}

#[test]
fn identities_acted_on_are_the_target_principal() {
    let target = |name: &str, extra: Value| {
        let principal = event(record("iam", name, extra)).target.principal;
        principal.map(|p| (p.kind, p.id))
    };
    assert_eq!(
        target(
            "CreateUser",
            json!({"requestParameters": {"userName": "bot"},
                   "responseElements": {"user": {"arn": "arn:aws:iam::111122223333:user/ci/bot"}}})
        ),
        Some((
            PrincipalKind::Human,
            "arn:aws:iam::111122223333:user/ci/bot".into()
        ))
    );
    assert_eq!(
        target(
            "PutRolePolicy",
            json!({"requestParameters": {"roleName": "deployer"}})
        ),
        Some((
            PrincipalKind::Role,
            "arn:aws:iam::111122223333:role/deployer".into()
        ))
    );
    // A new key creates no identity: its user is not the target.
    assert_eq!(
        target(
            "CreateAccessKey",
            json!({"requestParameters": {"userName": "bot"}})
        ),
        None
    );
}

#[test]
fn errors_are_failures_and_refusals_are_denials() {
    let check = |extra: Value, status: OutcomeStatus, reason: Option<&str>| {
        let event = event(record("iam", "ListUsers", extra));
        assert_eq!(
            (event.outcome.status, event.outcome.reason.as_deref()),
            (status, reason)
        );
    };
    check(json!({}), OutcomeStatus::Success, None);
    check(
        json!({"errorCode": "AccessDenied", "errorMessage": "not authorized"}),
        OutcomeStatus::Denied,
        Some("AccessDenied: not authorized"),
    );
    check(
        json!({"errorCode": "Client.UnauthorizedOperation"}),
        OutcomeStatus::Denied,
        Some("Client.UnauthorizedOperation"),
    );
    check(
        json!({"errorCode": "UnauthorizedOperation"}),
        OutcomeStatus::Denied,
        Some("UnauthorizedOperation"),
    );
    check(
        json!({"errorCode": "AccessDeniedException"}),
        OutcomeStatus::Denied,
        Some("AccessDeniedException"),
    );
    check(
        json!({"errorCode": "NoSuchEntity"}),
        OutcomeStatus::Failure,
        Some("NoSuchEntity"),
    );
    let login = event(record(
        "signin",
        "ConsoleLogin",
        json!({"errorMessage": "Failed authentication", "responseElements": {"ConsoleLogin": "Failure"}}),
    ));
    assert_eq!(login.outcome.status, OutcomeStatus::Failure);
}

#[test]
fn context_and_attributes_are_flat() {
    let event = event(record(
        "s3",
        "GetObject",
        json!({"requestID": "REQ1", "sourceIPAddress": "203.0.113.10", "userAgent": "aws-cli/2",
               "readOnly": true, "managementEvent": false, "eventCategory": "Data",
               "eventType": "AwsApiCall",
               "tlsDetails": {"clientProvidedHostHeader": "payroll.s3.amazonaws.com"}}),
    ));
    assert_eq!(event.context.request_id.as_deref(), Some("REQ1"));
    for (key, value) in [
        ("aws.region", json!("us-east-1")),
        ("aws.source_ip", json!("203.0.113.10")),
        ("aws.user_agent", json!("aws-cli/2")),
        ("aws.read_only", json!(true)),
        ("aws.management_event", json!(false)),
        ("aws.event_category", json!("Data")),
        ("aws.event_type", json!("AwsApiCall")),
        ("aws.recipient_account_id", json!("111122223333")),
        ("aws.tls_host", json!("payroll.s3.amazonaws.com")),
        ("aws.identity_type", json!("IAMUser")),
    ] {
        assert_eq!(event.attributes.get(key), Some(&value), "{key}");
    }
    assert!(
        event
            .attributes
            .values()
            .all(|v| v.is_string() || v.is_boolean())
    );
}

#[test]
fn times_are_read_in_every_form_and_missing_ones_are_said() {
    let at = |text: &str| {
        event(record("ec2", "DescribeRegions", json!({"eventTime": text}))).observed_at
    };
    let expected = DateTime::parse_from_rfc3339("2024-06-02T19:41:40Z").unwrap();
    assert_eq!(at("2024-06-02T19:41:40Z"), expected);
    assert_eq!(at("2024-06-02 19:41:40"), expected);
    assert_eq!(at("2024-06-02 19:41:40.000000000"), expected);
    assert_eq!(at("2024-06-02 19:41:40.000Z"), expected);
    let mut timeless = record("ec2", "DescribeRegions", json!({}));
    timeless.as_object_mut().unwrap().remove("eventTime");
    let event = event(timeless);
    assert_eq!(
        event.attributes.get(crate::ATTR_TIME_MISSING),
        Some(&json!(true))
    );
}

#[test]
fn ids_come_from_the_event_id() {
    let first = event(record("s3", "GetObject", json!({"eventID": "abc"})));
    let again = event(record(
        "s3",
        "GetObject",
        json!({"eventID": "abc", "userAgent": "x"}),
    ));
    let other = event(record("s3", "GetObject", json!({"eventID": "abd"})));
    assert_eq!(first.id, again.id);
    assert_ne!(first.id, other.id);
    assert_eq!(first.source.record_id.as_deref(), Some("abc"));
}

#[test]
fn keys_in_another_case_are_read() {
    let event = event(
        json!({"eventname": "GetRecords", "eventsource": "dynamodb.amazonaws.com",
                             "eventtime": "2023-01-10 21:04:02", "recipientaccountid": "1",
                             "useridentity": {"type": "IAMUser", "arn": "arn:aws:iam::1:user/u"}}),
    );
    assert_eq!(event.action, "dynamodb:GetRecords");
    assert_eq!(event.actor.current.id, "arn:aws:iam::1:user/u");
    assert_eq!(event.target.system.as_deref(), Some("aws:1"));
}

#[test]
fn bad_records_are_refused_with_where_and_why() {
    let input = b"{\"eventName\":\"GetObject\"}\n[1]\n{\"eventSource\":\"s3.amazonaws.com\"}\n{}\n";
    let imported = import(&CloudTrail, input, DateTime::UNIX_EPOCH);
    let described: Vec<String> = imported
        .iter()
        .map(|item| match item {
            Ok((at, event)) => format!("{}@{} {}", at.index, at.line, event.action),
            Err(error) => error.to_string(),
        })
        .collect();
    assert_eq!(
        described,
        [
            "0@1 GetObject",
            "record 1 (line 2): record: a record is a JSON object",
            "2@3 s3:unknown",
            "record 3 (line 4): eventName: a CloudTrail record names its call in `eventName`",
        ]
    );
}
