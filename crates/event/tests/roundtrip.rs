//! Property tests: every valid event survives serializing and decoding
//! unchanged, validates against the committed schemas, and exports to OCSF
//! with its class's required fields.

mod common;

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use custody_event::{
    Actor, Attribution, AttributionMethod, Context, Credential, CredentialKind, EventId, EventKind,
    Evidence, MAX_ID_LEN, MAX_LABEL_LEN, MAX_TEXT_LEN, MAX_TRACE_ID_LEN, NewEvent, Outcome,
    OutcomeStatus, Principal, PrincipalKind, RuntimeEvent, SchemaVersion, Source, SourceKind,
    Target, decode, ocsf, schema,
};
use jsonschema::Validator;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::Value;
use uuid::Uuid;

static RUNTIME_SCHEMA: LazyLock<Validator> =
    LazyLock::new(|| common::committed_validator(schema::RUNTIME_EVENT_FILE));
static NEW_SCHEMA: LazyLock<Validator> =
    LazyLock::new(|| common::committed_validator(schema::NEW_EVENT_FILE));

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn raw_records_lose_only_the_whitespace_between_tokens(value in json_value()) {
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let record: custody_event::RawRecord = serde_json::from_str(&pretty).unwrap();
        // Pretty printing adds only whitespace between tokens; without it the
        // text is the compact form, byte for byte.
        prop_assert_eq!(record.get(), serde_json::to_string(&value).unwrap());
    }

    #[test]
    fn events_round_trip_decode_and_validate(event in runtime_event()) {
        let json = serde_json::to_value(&event).unwrap();
        let back: RuntimeEvent = serde_json::from_value(json.clone()).unwrap();
        prop_assert_eq!(&back, &event);
        let text = serde_json::to_string(&event).unwrap();
        prop_assert_eq!(&serde_json::from_str::<RuntimeEvent>(&text).unwrap(), &event);
        let errors = common::schema_errors(&RUNTIME_SCHEMA, &json);
        prop_assert!(errors.is_empty(), "{}\n{:#}", errors, json);

        let submitted = NewEvent::from(event.clone());
        let bytes = serde_json::to_vec(&submitted).unwrap();
        let decoded = decode(&bytes);
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        let decoded = decoded.unwrap();
        prop_assert_eq!(&decoded, &submitted);
        prop_assert_eq!(
            decoded.into_event(event.received_at, || unreachable!("the event has an id")),
            event.clone()
        );
        let submitted = serde_json::to_value(&submitted).unwrap();
        let errors = common::schema_errors(&NEW_SCHEMA, &submitted);
        prop_assert!(errors.is_empty(), "{}\n{:#}", errors, submitted);

        let exported = ocsf::to_ocsf(&event);
        let class = ocsf::class_uid(event.kind);
        for field in ocsf::required_fields(class) {
            prop_assert!(!exported[field].is_null(), "no {} in {:#}", field, exported);
        }
        prop_assert_eq!(
            exported["type_uid"].as_u64(),
            exported["activity_id"].as_u64().map(|activity| u64::from(class) * 100 + activity)
        );
    }
}

fn runtime_event() -> impl Strategy<Value = RuntimeEvent> {
    let head = (
        any::<u128>(),
        prop::sample::select(EventKind::ALL.to_vec()),
        text(MAX_LABEL_LEN),
        timestamp(),
        timestamp(),
        source(),
    );
    let body = (actor(), target(), outcome(), attribution(), context());
    let tail = (
        btree_map(attribute_name(), json_value(), 0..6),
        option::of(
            json_value()
                .prop_filter("a null raw record is no raw record", |raw| !raw.is_null())
                .prop_map(|raw| custody_event::RawRecord::from_value(&raw)),
        ),
    );
    (head, body, tail).prop_map(
        |(
            (id, kind, action, observed_at, received_at, source),
            (actor, target, outcome, attribution, context),
            (attributes, raw),
        )| RuntimeEvent {
            version: SchemaVersion,
            id: EventId(Uuid::from_u128(id)),
            kind,
            action,
            observed_at,
            received_at,
            source,
            actor,
            target,
            outcome,
            attribution,
            context,
            attributes,
            raw,
        },
    )
}

/// Text `decode` accepts where at most `max` bytes are: not blank. Mostly
/// short strings over all of Unicode, control characters included, and
/// now and then one at the limit.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "(?s).{1,24}",
        1 => vec(any::<char>(), 1..=max / 4).prop_map(String::from_iter),
        1 => "[a-zA-Z0-9]".prop_map(move |c| c.repeat(max)),
    ]
    .prop_filter("blank text is refused", |text| !text.trim().is_empty())
}

/// Free text, which may be empty or blank.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "(?s).{0,24}",
        1 => vec(any::<char>(), 0..=max / 4).prop_map(String::from_iter),
    ]
}

fn attribute_name() -> impl Strategy<Value = String> {
    // Names may be blank, as long as they are not empty.
    "(?s).{1,24}"
}

/// Any instant in the years 1970 to 9999, to the nanosecond.
fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    const LAST_SECOND: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    prop_oneof![
        (0..=LAST_SECOND, 0..1_000_000_000_u32),
        (0..=LAST_SECOND, Just(0_u32)),
        (0..=LAST_SECOND, (0..1000_u32).prop_map(|ms| ms * 1_000_000)),
    ]
    .prop_map(|(seconds, nanos)| DateTime::from_timestamp(seconds, nanos).unwrap())
}

fn source() -> impl Strategy<Value = Source> {
    (
        prop::sample::select(vec![
            SourceKind::Gateway,
            SourceKind::Otlp,
            SourceKind::Api,
            SourceKind::Cloudtrail,
            SourceKind::Okta,
            SourceKind::Github,
            SourceKind::Custody,
        ]),
        option::of(text(MAX_ID_LEN)),
        option::of(text(MAX_ID_LEN)),
    )
        .prop_map(|(kind, name, record_id)| Source {
            kind,
            name,
            record_id,
        })
}

const PRINCIPAL_KINDS: [PrincipalKind; 5] = [
    PrincipalKind::Human,
    PrincipalKind::Service,
    PrincipalKind::Agent,
    PrincipalKind::Role,
    PrincipalKind::Unknown,
];

/// A principal of one of `kinds`; only agents get a version and a run.
fn principal(kinds: &[PrincipalKind]) -> impl Strategy<Value = Principal> + use<> {
    (
        prop::sample::select(kinds.to_vec()),
        text(MAX_ID_LEN),
        option::of(text(MAX_ID_LEN)),
        option::of(text(MAX_LABEL_LEN)),
        option::of(text(MAX_ID_LEN)),
    )
        .prop_map(|(kind, id, name, version, run_id)| {
            let agent = kind == PrincipalKind::Agent;
            Principal {
                kind,
                id,
                name,
                version: version.filter(|_| agent),
                run_id: run_id.filter(|_| agent),
            }
        })
}

fn actor() -> impl Strategy<Value = Actor> {
    (
        option::of(principal(&[PrincipalKind::Human, PrincipalKind::Service])),
        vec(principal(&[PrincipalKind::Agent]), 0..4),
        principal(&PRINCIPAL_KINDS),
        option::of(credential()),
    )
        .prop_map(|(root, agents, current, credential)| Actor {
            root,
            agents,
            current,
            credential,
        })
}

fn credential() -> impl Strategy<Value = Credential> {
    (
        prop::sample::select(vec![
            CredentialKind::CustodyToken,
            CredentialKind::OauthToken,
            CredentialKind::ApiKey,
            CredentialKind::AwsAccessKey,
            CredentialKind::AwsRoleSession,
            CredentialKind::GithubToken,
            CredentialKind::OktaSession,
            CredentialKind::Password,
            CredentialKind::Certificate,
            CredentialKind::Other,
        ]),
        text(MAX_ID_LEN),
        option::of(text(MAX_ID_LEN)),
    )
        .prop_map(|(kind, id, issuer)| Credential { kind, id, issuer })
}

fn target() -> impl Strategy<Value = Target> {
    (
        option::of(text(MAX_ID_LEN)),
        option::of(text(MAX_ID_LEN)),
        option::of(text(MAX_TEXT_LEN)),
        option::of(text(MAX_LABEL_LEN)),
        option::of(text(MAX_ID_LEN)),
        option::of(principal(&PRINCIPAL_KINDS)),
    )
        .prop_map(
            |(tool, server, resource, resource_type, system, principal)| Target {
                tool,
                server,
                resource,
                resource_type,
                system,
                principal,
            },
        )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    (
        prop::sample::select(vec![
            OutcomeStatus::Success,
            OutcomeStatus::Failure,
            OutcomeStatus::Denied,
            OutcomeStatus::Unknown,
        ]),
        option::of(any_text(MAX_TEXT_LEN)),
        option::of(any::<u64>()),
    )
        .prop_map(|(status, reason, duration_ms)| Outcome {
            status,
            reason,
            duration_ms,
        })
}

fn attribution() -> impl Strategy<Value = Attribution> {
    (
        prop::sample::select(vec![
            AttributionMethod::Authenticated,
            AttributionMethod::Bound,
            AttributionMethod::Correlated,
            AttributionMethod::Unattributed,
        ]),
        vec(
            (text(MAX_LABEL_LEN), text(MAX_TEXT_LEN))
                .prop_map(|(kind, detail)| Evidence { kind, detail }),
            0..3,
        ),
    )
        .prop_map(|(method, evidence)| Attribution { method, evidence })
}

fn context() -> impl Strategy<Value = Context> {
    (
        option::of(text(MAX_ID_LEN)),
        option::of(text(MAX_ID_LEN)),
        option::of(text(MAX_TRACE_ID_LEN)),
        option::of(text(MAX_TRACE_ID_LEN)),
        option::of(text(MAX_TRACE_ID_LEN)),
        option::of(text(MAX_ID_LEN)),
        option::of(text(MAX_ID_LEN)),
    )
        .prop_map(
            |(
                session_id,
                conversation_id,
                trace_id,
                span_id,
                parent_span_id,
                tool_call_id,
                request_id,
            )| Context {
                session_id,
                conversation_id,
                trace_id,
                span_id,
                parent_span_id,
                tool_call_id,
                request_id,
            },
        )
}

/// Any JSON value, nested a few levels: what a source's raw record or an
/// attribute may hold.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        "(?s).{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map("(?s).{0,12}", inner, 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Found by the property test above: serde_json's default float parsing
/// can be one unit in the last place off, so a raw record read back from
/// its own JSON differed from what was written.
#[test]
fn floats_in_raw_records_survive_their_json() {
    for float in [-4.324_417_895_522_866_6e-229, 0.1, 1e300, 5e-324, -0.0] {
        let raw = Value::from(float);
        let text = serde_json::to_string(&raw).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), raw, "{text}");
    }
}
