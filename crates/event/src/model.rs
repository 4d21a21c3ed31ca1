//! The event types of schema version 1 and their JSON form.
//!
//! Field order here is the order of the JSON form. Every type rejects unknown
//! fields, so a misspelt field is an error naming it rather than data silently
//! dropped.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A source's record kept as it arrived: its JSON text, keys in their order
/// and numbers as written, less the whitespace between tokens (so an event
/// always fits on one NDJSON line). It is checked to be well-formed JSON and
/// nothing more: evidence is kept as the source wrote it, even a string
/// escape no decoder can turn into Unicode. Never parsed into a tree and printed
/// back, which would reorder keys and cost a parse and a print per event.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct RawRecord(Box<serde_json::value::RawValue>);

impl<'de> Deserialize<'de> for RawRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawRecord, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        match minified(raw.get()) {
            None => Ok(RawRecord(raw)),
            Some(text) => serde_json::value::RawValue::from_string(text)
                .map(RawRecord)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `json` without whitespace between tokens, or `None` when it has none.
/// Whitespace inside strings is content and stays.
fn minified(json: &str) -> Option<String> {
    let is_space = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    let mut in_string = false;
    let mut escaped = false;
    let mut first_space = None;
    for (at, b) in json.bytes().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_space(b) {
            first_space = Some(at);
            break;
        }
    }
    let first_space = first_space?;
    let (kept, rest) = json.split_at(first_space);
    let mut out = String::with_capacity(json.len());
    out.push_str(kept);
    // The scan above stopped outside a string.
    let mut in_string = false;
    let mut escaped = false;
    for c in rest.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii() && is_space(c as u8) {
            continue;
        }
        out.push(c);
    }
    Some(out)
}

impl RawRecord {
    /// The record's JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The record parsed. It is well-formed JSON, but may still not parse
    /// into a value: a string with an unpaired surrogate escape (`"\ud800"`)
    /// is kept as the source wrote it, and refused here.
    pub fn to_value(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(self.get())
    }

    /// A record of this JSON value, in its compact form.
    pub fn from_value(value: &serde_json::Value) -> RawRecord {
        // A `Value` always prints as valid JSON.
        RawRecord(
            serde_json::value::to_raw_value(value)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
        )
    }
}

impl PartialEq for RawRecord {
    /// The same JSON value, however spaced.
    fn eq(&self, other: &RawRecord) -> bool {
        self.get() == other.get()
            || matches!((self.to_value(), other.to_value()), (Ok(a), Ok(b)) if a == b)
    }
}

impl JsonSchema for RawRecord {
    fn schema_name() -> Cow<'static, str> {
        "RawRecord".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Any JSON value.
        json_schema!(true)
    }
}

/// The version of the event schema this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// One action taken by an identity, as Custody records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "RuntimeEvent",
    description = "One action taken by an identity, with its identity chain, as Custody records it (schema version 1)."
)]
pub struct RuntimeEvent {
    /// Version of the event schema; 1.
    pub version: SchemaVersion,
    /// Unique id of the event (a UUID, version 7 when Custody assigns it).
    pub id: EventId,
    /// What sort of action this is.
    pub kind: EventKind,
    /// The operation as its source names it, e.g. `tools/call`,
    /// `s3:GetObject`, `user.session.start`.
    #[schemars(length(min = 1, max = 256))]
    pub action: String,
    /// When the action happened, by the source's clock.
    pub observed_at: DateTime<Utc>,
    /// When Custody received the event, by its own clock.
    pub received_at: DateTime<Utc>,
    /// Where the event came from.
    pub source: Source,
    /// Who acted, with the chain of identities behind them.
    pub actor: Actor,
    /// What the action was aimed at.
    #[serde(default, skip_serializing_if = "Target::is_empty")]
    pub target: Target,
    /// How the action ended.
    pub outcome: Outcome,
    /// How the actor's chain was established.
    pub attribution: Attribution,
    /// Correlation keys: sessions, traces, conversations.
    #[serde(default, skip_serializing_if = "Context::is_empty")]
    pub context: Context,
    /// Normalized attributes that have no field of their own (for example
    /// an argument digest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = crate::decode::MAX_ATTRIBUTES,
        "propertyNames" = {"minLength": 1, "maxLength": crate::decode::MAX_LABEL_LEN},
    ))]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The record exactly as the source produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawRecord>,
}

/// An event as a client submits it: the fields Custody fills in on receipt
/// (`id`, `received_at`, `attribution`, `version`) may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "NewEvent",
    description = "A runtime event as submitted to Custody's collector; fields Custody fills in on receipt are optional."
)]
pub struct NewEvent {
    /// Version of the event schema; 1 when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<SchemaVersion>,
    /// A client-chosen id makes resubmission idempotent; Custody assigns a
    /// UUIDv7 when it is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
    /// What sort of action this is.
    pub kind: EventKind,
    /// The operation as its source names it.
    #[schemars(length(min = 1, max = 256))]
    pub action: String,
    /// When the action happened, by the source's clock.
    pub observed_at: DateTime<Utc>,
    /// Ignored: Custody stamps the time it received the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
    /// Where the event came from.
    pub source: Source,
    /// Who acted, with the chain of identities behind them.
    pub actor: Actor,
    /// What the action was aimed at.
    #[serde(default, skip_serializing_if = "Target::is_empty")]
    pub target: Target,
    /// How the action ended.
    pub outcome: Outcome,
    /// How the chain was established; `unattributed` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
    /// Correlation keys: sessions, traces, conversations.
    #[serde(default, skip_serializing_if = "Context::is_empty")]
    pub context: Context,
    /// Normalized attributes that have no field of their own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = crate::decode::MAX_ATTRIBUTES,
        "propertyNames" = {"minLength": 1, "maxLength": crate::decode::MAX_LABEL_LEN},
    ))]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The record exactly as the source produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawRecord>,
}

impl NewEvent {
    /// Completes a submitted event on receipt: the id is kept when the client
    /// chose one and taken from `fresh_id` otherwise; `received_at` is always
    /// the receiver's clock.
    pub fn into_event(
        self,
        received_at: DateTime<Utc>,
        fresh_id: impl FnOnce() -> EventId,
    ) -> RuntimeEvent {
        RuntimeEvent {
            version: SchemaVersion,
            id: self.id.unwrap_or_else(fresh_id),
            kind: self.kind,
            action: self.action,
            observed_at: self.observed_at,
            received_at,
            source: self.source,
            actor: self.actor,
            target: self.target,
            outcome: self.outcome,
            attribution: self.attribution.unwrap_or_default(),
            context: self.context,
            attributes: self.attributes,
            raw: self.raw,
        }
    }
}

impl From<RuntimeEvent> for NewEvent {
    fn from(event: RuntimeEvent) -> Self {
        NewEvent {
            version: Some(event.version),
            id: Some(event.id),
            kind: event.kind,
            action: event.action,
            observed_at: event.observed_at,
            received_at: Some(event.received_at),
            source: event.source,
            actor: event.actor,
            target: event.target,
            outcome: event.outcome,
            attribution: Some(event.attribution),
            context: event.context,
            attributes: event.attributes,
            raw: event.raw,
        }
    }
}

/// The schema version marker: serializes as `1` and accepts nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchemaVersion;

impl Serialize for SchemaVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(SCHEMA_VERSION)
    }
}

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let version = u64::deserialize(deserializer)?;
        if version == u64::from(SCHEMA_VERSION) {
            Ok(SchemaVersion)
        } else {
            Err(serde::de::Error::custom(format_args!(
                "unsupported event schema version {version}, this build reads version {SCHEMA_VERSION}"
            )))
        }
    }
}

impl JsonSchema for SchemaVersion {
    fn schema_name() -> Cow<'static, str> {
        "SchemaVersion".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Version of the event schema.",
            "type": "integer",
            "const": SCHEMA_VERSION,
        })
    }
}

/// The unique id of an event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A new time-ordered id (UUIDv7), so ids of events received together sort
    /// and index together.
    pub fn new_v7() -> EventId {
        EventId(Uuid::now_v7())
    }

    /// The id's 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for EventId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EventId)
    }
}

/// What sort of action an event records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An agent called a tool (an MCP `tools/call`, a framework tool span).
    ToolCall,
    /// Any other MCP request (`resources/read`, `prompts/get`, `initialize`, ...).
    McpRequest,
    /// Data was read, written or deleted in a datastore or bucket.
    DataAccess,
    /// An agent started, or delegated to, another agent.
    AgentSpawn,
    /// A credential (key, token, session) was used against a system.
    CredentialUse,
    /// An identity authenticated (a login, a token exchange, an SSO session).
    Authentication,
    /// Privileges were granted, removed or changed, or credentials created.
    PrivilegeChange,
    /// Anything else a source reported.
    Other,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 8] = [
        EventKind::ToolCall,
        EventKind::McpRequest,
        EventKind::DataAccess,
        EventKind::AgentSpawn,
        EventKind::CredentialUse,
        EventKind::Authentication,
        EventKind::PrivilegeChange,
        EventKind::Other,
    ];

    /// The kind's name in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ToolCall => "tool_call",
            EventKind::McpRequest => "mcp_request",
            EventKind::DataAccess => "data_access",
            EventKind::AgentSpawn => "agent_spawn",
            EventKind::CredentialUse => "credential_use",
            EventKind::Authentication => "authentication",
            EventKind::PrivilegeChange => "privilege_change",
            EventKind::Other => "other",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown event kind \"{s}\", expected one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The sort of source.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// The instance: a gateway name, an AWS account, an Okta org, a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub name: Option<String>,
    /// The source's own id for the record (CloudTrail `eventID`, Okta
    /// `uuid`, GitHub `_document_id`, a span id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub record_id: Option<String>,
}

/// The sorts of sources Custody reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Custody's inline MCP gateway.
    Gateway,
    /// OpenTelemetry spans received over OTLP.
    Otlp,
    /// The JSON event API.
    Api,
    /// AWS CloudTrail.
    Cloudtrail,
    /// Okta System Log.
    Okta,
    /// GitHub audit log.
    Github,
    /// Custody itself (its delegation service, its responders).
    Custody,
}

impl SourceKind {
    /// The source kind's name in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Gateway => "gateway",
            SourceKind::Otlp => "otlp",
            SourceKind::Api => "api",
            SourceKind::Cloudtrail => "cloudtrail",
            SourceKind::Okta => "okta",
            SourceKind::Github => "github",
            SourceKind::Custody => "custody",
        }
    }
}

/// Who acted, and the chain of identities on whose behalf.
///
/// The chain reads root -> agents -> current -> credential: `root` deployed
/// or delegated to the first agent, each agent in `agents` to the next, the
/// last of them to `current`, which acted using `credential`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// The human or service at the root of the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The schema states the chain's shape that `validate` checks: a human or
    // service at the root, only agents in between.
    #[schemars(extend("properties" = {"type": {"enum": ["human", "service"]}}))]
    pub root: Option<Principal>,
    /// The agents between the root and the current actor, the one nearest
    /// the root first. Excludes the current actor itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("items" = {
        "$ref": "#/$defs/Principal",
        "properties": {"type": {"const": "agent"}},
    }))]
    pub agents: Vec<Principal>,
    /// The identity that performed this action.
    pub current: Principal,
    /// The credential the current actor used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
}

impl Actor {
    /// The run the current actor acts in, if it is an agent in a known run.
    pub fn run_id(&self) -> Option<&str> {
        self.current.run_id.as_deref()
    }

    /// The id at the root of the chain, if the chain has one.
    pub fn root_id(&self) -> Option<&str> {
        self.root.as_ref().map(|root| root.id.as_str())
    }

    /// The number of agents in the chain, the current actor included when it
    /// is an agent.
    pub fn depth(&self) -> usize {
        self.agents.len() + usize::from(self.current.kind == PrincipalKind::Agent)
    }
}

/// One identity in a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// Only agents carry a version and a run. The schema says so too, so that
// producers validating against it learn the rule `validate` enforces.
#[schemars(extend(
    "if" = {"properties": {"type": {"const": "agent"}}},
    "else" = {"properties": {"run_id": {"type": "null"}, "version": {"type": "null"}}},
))]
pub struct Principal {
    /// What sort of identity.
    #[serde(rename = "type")]
    pub kind: PrincipalKind,
    /// Stable id: an email, an ARN, a SPIFFE ID, an agent id.
    #[schemars(length(min = 1, max = 1024))]
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub name: Option<String>,
    /// Agent version (agents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub version: Option<String>,
    /// The run, one execution of an agent, the identity acts in (agents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub run_id: Option<String>,
}

/// The sorts of identities in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person.
    Human,
    /// A non-human workload identity that is not an agent.
    Service,
    /// An AI agent (or sub-agent).
    Agent,
    /// A role or service account assumed by another identity.
    Role,
    /// An identity the source did not describe.
    Unknown,
}

impl PrincipalKind {
    /// The kind's name in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Human => "human",
            PrincipalKind::Service => "service",
            PrincipalKind::Agent => "agent",
            PrincipalKind::Role => "role",
            PrincipalKind::Unknown => "unknown",
        }
    }
}

/// A credential used by an actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// What sort of credential.
    #[serde(rename = "type")]
    pub kind: CredentialKind,
    /// The credential's public identifier (an access key id, a token id, a
    /// session id), never its secret.
    #[schemars(length(min = 1, max = 1024))]
    pub id: String,
    /// Who issued it: an AWS account, an Okta org, an OAuth issuer URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: Option<String>,
}

/// The sorts of credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A token minted by Custody's delegation service.
    CustodyToken,
    /// An OAuth access or refresh token.
    OauthToken,
    /// An API key.
    ApiKey,
    /// An AWS access key (long-lived `AKIA` or temporary `ASIA`).
    AwsAccessKey,
    /// An AWS STS role session.
    AwsRoleSession,
    /// A GitHub personal access, installation or OAuth token.
    GithubToken,
    /// An Okta session.
    OktaSession,
    /// A password.
    Password,
    /// An X.509 certificate or SPIFFE SVID.
    Certificate,
    /// Anything else.
    Other,
}

impl CredentialKind {
    /// The kind's name in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::CustodyToken => "custody_token",
            CredentialKind::OauthToken => "oauth_token",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::AwsAccessKey => "aws_access_key",
            CredentialKind::AwsRoleSession => "aws_role_session",
            CredentialKind::GithubToken => "github_token",
            CredentialKind::OktaSession => "okta_session",
            CredentialKind::Password => "password",
            CredentialKind::Certificate => "certificate",
            CredentialKind::Other => "other",
        }
    }
}

/// What an action was aimed at. Every part is optional; most events fill one
/// or two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The tool called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub tool: Option<String>,
    /// The MCP server (or other tool host) that serves the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub server: Option<String>,
    /// The data object touched: an ARN, a URI, a path, a table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub resource: Option<String>,
    /// The sort of resource, e.g. `s3_object`, `file`, `repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub resource_type: Option<String>,
    /// The system acted on: an AWS account, an Okta org, a GitHub org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub system: Option<String>,
    /// The identity acted on: the agent spawned, the user or role changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
}

impl Target {
    /// Whether no part of the target is known.
    pub fn is_empty(&self) -> bool {
        *self == Target::default()
    }

    /// Every identifier the target names, most specific first: what a query
    /// by target matches. A target principal's run counts, so a run's
    /// `agent_spawn` is found by the run's id.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        [
            self.resource.as_deref(),
            self.tool.as_deref(),
            self.principal.as_ref().map(|p| p.id.as_str()),
            self.principal.as_ref().and_then(|p| p.run_id.as_deref()),
            self.server.as_deref(),
            self.system.as_deref(),
        ]
        .into_iter()
        .flatten()
    }
}

/// How an action ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// The result.
    pub status: OutcomeStatus,
    /// The error code or message, or the reason for a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub reason: Option<String>,
    /// How long the action took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// The result of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// It did what was asked.
    Success,
    /// It was attempted and failed.
    Failure,
    /// A policy (Custody's or the target system's) refused it.
    Denied,
    /// The source did not say.
    Unknown,
}

impl OutcomeStatus {
    /// The status's name in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Success => "success",
            OutcomeStatus::Failure => "failure",
            OutcomeStatus::Denied => "denied",
            OutcomeStatus::Unknown => "unknown",
        }
    }
}

/// How an event's chain was established, with the evidence for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attribution {
    /// The method.
    pub method: AttributionMethod,
    /// What the attribution rests on: the token, the binding, the
    /// correlation window and keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Evidence>,
}

/// How a chain was established.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttributionMethod {
    /// From a token Custody validated (at the gateway).
    Authenticated,
    /// From a credential known to be held by a run.
    Bound,
    /// From a bounded time-window join of records, with its evidence.
    Correlated,
    /// Nothing explains it.
    #[default]
    Unattributed,
}

impl AttributionMethod {
    /// Every method.
    pub const ALL: [AttributionMethod; 4] = [
        AttributionMethod::Authenticated,
        AttributionMethod::Bound,
        AttributionMethod::Correlated,
        AttributionMethod::Unattributed,
    ];

    /// The method's name in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            AttributionMethod::Authenticated => "authenticated",
            AttributionMethod::Bound => "bound",
            AttributionMethod::Correlated => "correlated",
            AttributionMethod::Unattributed => "unattributed",
        }
    }
}

impl std::str::FromStr for AttributionMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttributionMethod::ALL
            .into_iter()
            .find(|method| method.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AttributionMethod::ALL.iter().map(|m| m.as_str()).collect();
                format!(
                    "unknown attribution method \"{s}\", expected one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// One piece of attribution evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// What sort of evidence: `token`, `binding`, `correlation`, ...
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 256))]
    pub kind: String,
    /// What it says, e.g. the token id or the binding id and window.
    #[schemars(length(min = 1, max = 4096))]
    pub detail: String,
}

/// Correlation keys carried by an event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The MCP or application session (`Mcp-Session-Id`, `session.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub session_id: Option<String>,
    /// The conversation (`gen_ai.conversation.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub conversation_id: Option<String>,
    /// The OpenTelemetry trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub trace_id: Option<String>,
    /// The OpenTelemetry span id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub span_id: Option<String>,
    /// The parent span's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub parent_span_id: Option<String>,
    /// The tool call's id (`gen_ai.tool.call.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub tool_call_id: Option<String>,
    /// The request id at the source (a JSON-RPC id, an AWS request id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub request_id: Option<String>,
}

impl Context {
    /// Whether no correlation key is set.
    pub fn is_empty(&self) -> bool {
        *self == Context::default()
    }
}
