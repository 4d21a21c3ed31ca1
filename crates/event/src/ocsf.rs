//! Mapping of runtime events onto OCSF classes, for export.
//!
//! Each [`EventKind`] maps to one OCSF 1.3.0 class:
//!
//! | kind                               | class                     | activity                                   |
//! |------------------------------------|---------------------------|--------------------------------------------|
//! | `tool_call`, `mcp_request`         | API Activity (6003)       | Create, Read, Update, Delete by verb; Other |
//! | `data_access`                      | Datastore Activity (6005) | Read, Update, Connect, Query, Write, Create, Delete, List by verb; Other |
//! | `agent_spawn`                      | Entity Management (3004)  | Create                                     |
//! | `credential_use`, `authentication` | Authentication (3002)     | Logoff for a logout or session end; Logon  |
//! | `privilege_change`                 | Account Change (3001)     | by verb and object (Attach Policy, ...); Other |
//! | `other`                            | Base Event (0)            | Other                                      |
//!
//! The verb is the first word of the tool name (for a tool call) or of the
//! action that names an operation: `s3:GetObject` reads, `create_pull_request`
//! creates, `tools/call` says nothing and becomes Other. An Other activity
//! carries the source's action as its `activity_name`.
//!
//! The identity chain goes into `actor`: `actor.user` is the accountable
//! non-agent identity (the current actor when it is not an agent, otherwise
//! the chain's root, the human whose agent acted), `actor.app_name` and
//! `actor.app_uid` name the current agent, and `actor.session` the session
//! and credential it used. OCSF has no place for the agents in between, for
//! the attribution or for Custody's correlation keys, so `unmapped.custody`
//! holds the whole event except its raw record, which is `raw_data`: nothing
//! is lost, and the original event can be rebuilt from the export.
//!
//! Only attributes the class defines are emitted (Base Event has no `actor`,
//! for instance) and no profile is applied, so that consumers checking
//! events against their class do not find strangers in them.

use serde_json::{Map, Value, json};

use crate::finding::{Finding, FindingKind, Severity};
use crate::model::{
    Actor, CredentialKind, EventKind, OutcomeStatus, Principal, PrincipalKind, RuntimeEvent,
    SourceKind,
};

/// The OCSF schema version the export follows.
pub const OCSF_VERSION: &str = "1.3.0";

/// The product name in every exported event's `metadata.product`.
pub const PRODUCT_NAME: &str = "Custody";

/// The vendor name in every exported event's `metadata.product`.
pub const VENDOR_NAME: &str = "Custody";

/// The OCSF class uid an event of `kind` is exported as.
pub fn class_uid(kind: EventKind) -> u32 {
    Class::of(kind).uid
}

/// The top-level attributes OCSF 1.3.0 requires of events of `class_uid`.
///
/// Every class extends Base Event, so a class this module does not export
/// still requires the Base Event attributes; those are what it returns for
/// any class it does not know.
pub fn required_fields(class_uid: u32) -> &'static [&'static str] {
    match class_uid {
        API_ACTIVITY_UID => &[
            "activity_id",
            "category_uid",
            "class_uid",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
            "actor",
            "api",
            "src_endpoint",
        ],
        DATASTORE_ACTIVITY_UID => &[
            "activity_id",
            "category_uid",
            "class_uid",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
            "actor",
            "src_endpoint",
        ],
        AUTHENTICATION_UID | ACCOUNT_CHANGE_UID => &[
            "activity_id",
            "category_uid",
            "class_uid",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
            "user",
        ],
        ENTITY_MANAGEMENT_UID => &[
            "activity_id",
            "category_uid",
            "class_uid",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
            "entity",
        ],
        _ => &[
            "activity_id",
            "category_uid",
            "class_uid",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
        ],
    }
}

/// Maps one event onto its OCSF class (see the module documentation).
pub fn to_ocsf(event: &RuntimeEvent) -> Value {
    let class = Class::of(event.kind);
    let activity = activity(event);
    let (status_id, status) = status(event.outcome.status);
    let (severity_id, severity) = severity(event.outcome.status);

    let mut out = Map::new();
    out.insert("category_uid".into(), class.category_uid.into());
    out.insert("category_name".into(), class.category_name.into());
    out.insert("class_uid".into(), class.uid.into());
    out.insert("class_name".into(), class.name.into());
    out.insert("activity_id".into(), activity.id.into());
    out.insert("activity_name".into(), activity.name.into());
    out.insert("type_uid".into(), type_uid(class.uid, activity.id).into());
    out.insert(
        "type_name".into(),
        format!("{}: {}", class.name, activity.caption).into(),
    );
    out.insert("severity_id".into(), severity_id.into());
    out.insert("severity".into(), severity.into());
    out.insert("time".into(), event.observed_at.timestamp_millis().into());
    out.insert("status_id".into(), status_id.into());
    out.insert("status".into(), status.into());
    if let Some(detail) = status_detail(event) {
        out.insert("status_detail".into(), detail.into());
    }
    if let Some(duration) = event.outcome.duration_ms {
        out.insert("duration".into(), duration.into());
    }
    out.insert("message".into(), message(event).into());
    out.insert("metadata".into(), metadata(event));

    match class.uid {
        API_ACTIVITY_UID => api_activity(event, &mut out),
        DATASTORE_ACTIVITY_UID => datastore_activity(event, &mut out),
        AUTHENTICATION_UID => authentication(event, &mut out),
        ACCOUNT_CHANGE_UID => account_change(event, &mut out),
        ENTITY_MANAGEMENT_UID => entity_management(event, &mut out),
        _ => {}
    }

    if let Some(raw) = &event.raw {
        out.insert("raw_data".into(), raw.get().into());
    }
    out.insert("unmapped".into(), json!({ "custody": custody(event) }));
    Value::Object(out)
}

/// Maps a finding onto OCSF's Detection Finding class (2004): the rule is
/// `finding_info.analytic`, its events `finding_info.related_events`, MITRE
/// ATT&CK tags `finding_info.attacks`; the chain is `actor` as for events,
/// and the whole finding is `unmapped.custody`.
pub fn finding_to_ocsf(finding: &Finding) -> Value {
    const DETECTION_FINDING_UID: u32 = 2004;
    const CREATE: u32 = 1;
    let severity_id = match finding.severity {
        Severity::Informational => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    };
    let caption = match finding.severity {
        Severity::Informational => "Informational",
        Severity::Low => "Low",
        Severity::Medium => "Medium",
        Severity::High => "High",
        Severity::Critical => "Critical",
    };
    // OCSF analytic types: Rule (1), Behavioral (2), Statistical (3).
    let (analytic_type_id, analytic_type) = match finding.kind {
        FindingKind::Rule | FindingKind::Correlation => (1, "Rule"),
        FindingKind::Baseline => (2, "Behavioral"),
        FindingKind::Threshold => (3, "Statistical"),
    };
    let attacks: Vec<Value> = finding
        .analytic
        .tags
        .iter()
        .filter_map(|tag| tag.strip_prefix("attack."))
        .filter(|id| {
            id.starts_with('t') && id[1..].chars().next().is_some_and(|c| c.is_ascii_digit())
        })
        .map(|id| json!({"technique": {"uid": id.to_ascii_uppercase()}}))
        .collect();
    let mut info = Map::new();
    info.insert("uid".into(), finding.id.to_string().into());
    info.insert("title".into(), finding.analytic.title.clone().into());
    info.insert("desc".into(), finding.message.clone().into());
    info.insert("types".into(), json!([finding.kind.as_str()]));
    info.insert(
        "analytic".into(),
        json!({
            "uid": finding.analytic.id,
            "name": finding.analytic.title,
            "type_id": analytic_type_id,
            "type": analytic_type,
        }),
    );
    info.insert(
        "related_events".into(),
        finding
            .events
            .iter()
            .map(|id| json!({"uid": id.to_string()}))
            .collect(),
    );
    info.insert(
        "first_seen_time".into(),
        finding.first_seen.timestamp_millis().into(),
    );
    info.insert(
        "last_seen_time".into(),
        finding.last_seen.timestamp_millis().into(),
    );
    info.insert(
        "created_time".into(),
        finding.created_at.timestamp_millis().into(),
    );
    if !attacks.is_empty() {
        info.insert("attacks".into(), attacks.into());
    }
    let mut out = Map::new();
    out.insert("category_uid".into(), 2.into());
    out.insert("category_name".into(), "Findings".into());
    out.insert("class_uid".into(), DETECTION_FINDING_UID.into());
    out.insert("class_name".into(), "Detection Finding".into());
    out.insert("activity_id".into(), CREATE.into());
    out.insert("activity_name".into(), "Create".into());
    out.insert(
        "type_uid".into(),
        type_uid(DETECTION_FINDING_UID, CREATE).into(),
    );
    out.insert("type_name".into(), "Detection Finding: Create".into());
    out.insert("severity_id".into(), severity_id.into());
    out.insert("severity".into(), caption.into());
    out.insert("status_id".into(), 1.into());
    out.insert("status".into(), "New".into());
    out.insert("time".into(), finding.created_at.timestamp_millis().into());
    out.insert("message".into(), finding.message.clone().into());
    out.insert("finding_info".into(), Value::Object(info));
    out.insert("actor".into(), chain_actor(&finding.chain, None));
    out.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "product": {
                "name": PRODUCT_NAME,
                "vendor_name": VENDOR_NAME,
                "version": env!("CARGO_PKG_VERSION"),
            },
            "uid": finding.id.to_string(),
        }),
    );
    // Serializing the finding cannot fail, as for events.
    out.insert(
        "unmapped".into(),
        json!({"custody": serde_json::to_value(finding).unwrap_or_default()}),
    );
    Value::Object(out)
}

const API_ACTIVITY_UID: u32 = 6003;
const DATASTORE_ACTIVITY_UID: u32 = 6005;
const ACCOUNT_CHANGE_UID: u32 = 3001;
const AUTHENTICATION_UID: u32 = 3002;
const ENTITY_MANAGEMENT_UID: u32 = 3004;
const BASE_EVENT_UID: u32 = 0;

/// An OCSF event class and its category.
struct Class {
    category_uid: u32,
    category_name: &'static str,
    uid: u32,
    name: &'static str,
}

impl Class {
    fn of(kind: EventKind) -> Class {
        const APPLICATION: (u32, &str) = (6, "Application Activity");
        const IAM: (u32, &str) = (3, "Identity & Access Management");
        let ((category_uid, category_name), uid, name) = match kind {
            EventKind::ToolCall | EventKind::McpRequest => {
                (APPLICATION, API_ACTIVITY_UID, "API Activity")
            }
            EventKind::DataAccess => (APPLICATION, DATASTORE_ACTIVITY_UID, "Datastore Activity"),
            EventKind::AgentSpawn => (IAM, ENTITY_MANAGEMENT_UID, "Entity Management"),
            EventKind::CredentialUse | EventKind::Authentication => {
                (IAM, AUTHENTICATION_UID, "Authentication")
            }
            EventKind::PrivilegeChange => (IAM, ACCOUNT_CHANGE_UID, "Account Change"),
            EventKind::Other => ((0, "Uncategorized"), BASE_EVENT_UID, "Base Event"),
        };
        Class {
            category_uid,
            category_name,
            uid,
            name,
        }
    }
}

fn type_uid(class_uid: u32, activity_id: u32) -> u64 {
    u64::from(class_uid) * 100 + u64::from(activity_id)
}

/// A class's activity: its id, its caption in the class's enum, and the name
/// to export (the caption, or the source's action for Other).
struct Activity {
    id: u32,
    caption: &'static str,
    name: String,
}

impl Activity {
    fn known(id: u32, caption: &'static str) -> Activity {
        Activity {
            id,
            caption,
            name: caption.to_owned(),
        }
    }

    fn other(action: &str) -> Activity {
        Activity {
            id: 99,
            caption: "Other",
            name: action.to_owned(),
        }
    }
}

fn activity(event: &RuntimeEvent) -> Activity {
    let action = event.action.as_str();
    match event.kind {
        EventKind::ToolCall | EventKind::McpRequest => {
            // A tool call's action is the protocol's (`tools/call`); the
            // tool's own name says what it does.
            let tool = match event.kind {
                EventKind::ToolCall => event.target.tool.as_deref(),
                _ => None,
            };
            let verb = tool.and_then(verb).or_else(|| verb(action));
            match verb {
                Some(Verb::Create) => Activity::known(1, "Create"),
                Some(Verb::Read | Verb::List | Verb::Query) => Activity::known(2, "Read"),
                Some(Verb::Update | Verb::Write) => Activity::known(3, "Update"),
                Some(Verb::Delete) => Activity::known(4, "Delete"),
                Some(Verb::Connect) | None => Activity::other(action),
            }
        }
        EventKind::DataAccess => match verb(action) {
            Some(Verb::Read) => Activity::known(1, "Read"),
            Some(Verb::Update) => Activity::known(2, "Update"),
            Some(Verb::Connect) => Activity::known(3, "Connect"),
            Some(Verb::Query) => Activity::known(4, "Query"),
            Some(Verb::Write) => Activity::known(5, "Write"),
            Some(Verb::Create) => Activity::known(6, "Create"),
            Some(Verb::Delete) => Activity::known(7, "Delete"),
            Some(Verb::List) => Activity::known(8, "List"),
            None => Activity::other(action),
        },
        // Spawning an agent, or delegating to one, creates its identity.
        EventKind::AgentSpawn => Activity::known(1, "Create"),
        // Each use of a credential authenticates the request that carries
        // it, so it is a Logon unless the source says the session ended.
        EventKind::CredentialUse | EventKind::Authentication => {
            if words(action).any(|word| LOGOFF_WORDS.contains(&word.as_str())) {
                Activity::known(2, "Logoff")
            } else {
                Activity::known(1, "Logon")
            }
        }
        EventKind::PrivilegeChange => account_change_activity(action),
        EventKind::Other => Activity::other(action),
    }
}

const LOGOFF_WORDS: &[&str] = &["logoff", "logout", "signout", "end", "terminate"];

/// Account Change activities are about the account itself, so a verb alone
/// is not enough: `CreateUser` creates an account but `CreateAccessKey` does
/// not, and is Other.
fn account_change_activity(action: &str) -> Activity {
    let words: Vec<String> = words(action).collect();
    let has = |wanted: &[&str]| words.iter().any(|word| wanted.contains(&word.as_str()));
    let verb = verb(action);
    let policy = has(&["policy"]);
    let mfa = has(&["mfa", "factor"]);
    let account = has(&["user", "role", "account"]);
    if policy
        && matches!(verb, Some(Verb::Create | Verb::Update | Verb::Write))
        && !has(&["detach"])
    {
        Activity::known(7, "Attach Policy")
    } else if policy && (matches!(verb, Some(Verb::Delete)) || has(&["detach"])) {
        Activity::known(8, "Detach Policy")
    } else if has(&["password"]) {
        if has(&["reset"]) {
            Activity::known(4, "Password Reset")
        } else {
            Activity::known(3, "Password Change")
        }
    } else if mfa && has(&["enable", "activate"]) {
        Activity::known(10, "MFA Factor Enable")
    } else if mfa && has(&["disable", "deactivate", "delete", "remove"]) {
        Activity::known(11, "MFA Factor Disable")
    } else if has(&["lock", "lockout"]) {
        Activity::known(9, "Lock")
    } else if !account
        || has(&[
            "key",
            "token",
            "credential",
            "credentials",
            "profile",
            "group",
            "membership",
        ])
    {
        // Credentials created for an account, or groups it joins, change its
        // reach but are not the account: leave them to Other rather than
        // claim a Create or a Delete.
        Activity::other(action)
    } else if has(&["disable", "deactivate", "suspend"]) {
        Activity::known(5, "Disable")
    } else if has(&["enable", "activate", "reactivate", "unsuspend"]) {
        Activity::known(2, "Enable")
    } else {
        match verb {
            Some(Verb::Create) => Activity::known(1, "Create"),
            Some(Verb::Delete) => Activity::known(6, "Delete"),
            _ => Activity::other(action),
        }
    }
}

/// What an operation does to the object it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Create,
    Read,
    List,
    Query,
    Update,
    Write,
    Delete,
    Connect,
}

/// The verb of the first word of `name` that is one.
fn verb(name: &str) -> Option<Verb> {
    words(name).find_map(|word| {
        let verb = match word.as_str() {
            "create" | "add" | "new" | "post" | "register" | "generate" | "issue" | "mint" => {
                Verb::Create
            }
            "get" | "read" | "fetch" | "view" | "head" | "download" | "show" | "pull" | "clone"
            | "export" | "describe" | "cat" => Verb::Read,
            "list" | "browse" | "ls" => Verb::List,
            "query" | "search" | "find" | "lookup" | "select" | "scan" | "grep" => Verb::Query,
            "update" | "patch" | "modify" | "edit" | "change" | "rename" | "replace" | "merge"
            | "set" | "apply" | "assign" | "attach" | "detach" | "enable" | "disable" | "move"
            | "tag" | "untag" | "restore" => Verb::Update,
            "put" | "write" | "upload" | "insert" | "push" | "append" | "copy" | "save"
            | "store" => Verb::Write,
            "delete" | "remove" | "destroy" | "drop" | "purge" | "erase" | "unregister"
            | "terminate" | "revoke" | "clear" | "rm" => Verb::Delete,
            "connect" => Verb::Connect,
            _ => return None,
        };
        Some(verb)
    })
}

/// The lowercase words of an identifier, split at punctuation and at case
/// changes: `s3:GetObject` is `s3 get object`, `EnableMFADevice` is
/// `enable mfa device`.
fn words(name: &str) -> impl Iterator<Item = String> {
    let chars: Vec<char> = name.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            continue;
        }
        let prev = i.checked_sub(1).and_then(|p| chars.get(p)).copied();
        let next = chars.get(i + 1).copied();
        let starts_word = c.is_uppercase()
            && prev.is_some_and(|p| {
                p.is_lowercase()
                    || p.is_numeric()
                    || (p.is_uppercase() && next.is_some_and(char::is_lowercase))
            });
        if starts_word && !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        word.extend(c.to_lowercase());
    }
    if !word.is_empty() {
        words.push(word);
    }
    words.into_iter()
}

fn status(status: OutcomeStatus) -> (u32, &'static str) {
    match status {
        OutcomeStatus::Success => (1, "Success"),
        // OCSF has no status for a refusal; it is a failure whose detail
        // says it was denied.
        OutcomeStatus::Failure | OutcomeStatus::Denied => (2, "Failure"),
        OutcomeStatus::Unknown => (0, "Unknown"),
    }
}

fn status_detail(event: &RuntimeEvent) -> Option<String> {
    let reason = event.outcome.reason.as_deref().filter(|r| !r.is_empty());
    match (event.outcome.status, reason) {
        (OutcomeStatus::Denied, Some(reason)) => Some(format!("denied: {reason}")),
        (OutcomeStatus::Denied, None) => Some("denied".to_owned()),
        (_, reason) => reason.map(str::to_owned),
    }
}

/// A refusal is worth a look (something tried to go outside its policy);
/// everything else is a plain record of activity.
fn severity(status: OutcomeStatus) -> (u32, &'static str) {
    match status {
        OutcomeStatus::Denied => (3, "Medium"),
        _ => (1, "Informational"),
    }
}

fn message(event: &RuntimeEvent) -> String {
    let who = display_name(&event.actor.current);
    let on = event
        .target
        .keys()
        .next()
        .map(|target| format!(" on {target}"))
        .unwrap_or_default();
    format!(
        "{who} {}{on}: {}",
        event.action,
        event.outcome.status.as_str()
    )
}

fn metadata(event: &RuntimeEvent) -> Value {
    let mut metadata = Map::new();
    metadata.insert("version".into(), OCSF_VERSION.into());
    metadata.insert(
        "product".into(),
        json!({
            "name": PRODUCT_NAME,
            "vendor_name": VENDOR_NAME,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    );
    metadata.insert("uid".into(), event.id.to_string().into());
    metadata.insert("event_code".into(), event.action.clone().into());
    metadata.insert(
        "original_time".into(),
        event
            .observed_at
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            .into(),
    );
    metadata.insert(
        "logged_time".into(),
        event.received_at.timestamp_millis().into(),
    );
    metadata.insert(
        "log_name".into(),
        event
            .source
            .name
            .clone()
            .unwrap_or_else(|| event.source.kind.as_str().to_owned())
            .into(),
    );
    metadata.insert(
        "log_provider".into(),
        log_provider(event.source.kind).into(),
    );
    // A run is what ties an agent's events together in Custody; a trace is
    // the next best thing when the actor is not in a known run.
    let correlation = event.actor.run_id().or(event.context.trace_id.as_deref());
    if let Some(correlation) = correlation {
        metadata.insert("correlation_uid".into(), correlation.into());
    }
    Value::Object(metadata)
}

fn log_provider(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Gateway => "Custody MCP gateway",
        SourceKind::Otlp => "OpenTelemetry (OTLP)",
        SourceKind::Api => "Custody event API",
        SourceKind::Cloudtrail => "AWS CloudTrail",
        SourceKind::Okta => "Okta System Log",
        SourceKind::Github => "GitHub audit log",
        SourceKind::Custody => "Custody",
    }
}

fn api_activity(event: &RuntimeEvent, out: &mut Map<String, Value>) {
    out.insert("actor".into(), actor(event));
    let operation = match (event.kind, &event.target.tool) {
        (EventKind::ToolCall, Some(tool)) => tool.as_str(),
        _ => event.action.as_str(),
    };
    let mut api = Map::new();
    api.insert("operation".into(), operation.into());
    if let Some(service) = event
        .target
        .server
        .as_deref()
        .or(event.target.system.as_deref())
    {
        api.insert("service".into(), json!({ "name": service }));
    }
    if let Some(request) = &event.context.request_id {
        api.insert("request".into(), json!({ "uid": request }));
    }
    out.insert("api".into(), Value::Object(api));
    out.insert("src_endpoint".into(), src_endpoint(event));
    if let Some(server) = &event.target.server {
        out.insert("dst_endpoint".into(), json!({ "svc_name": server }));
    }
    let mut resources = Vec::new();
    if let Some(tool) = &event.target.tool {
        resources.push(json!({ "name": tool, "type": "tool" }));
    }
    if let Some(resource) = &event.target.resource {
        resources.push(json!({
            "uid": resource,
            "type": event.target.resource_type.as_deref().unwrap_or("resource"),
        }));
    }
    if !resources.is_empty() {
        out.insert("resources".into(), resources.into());
    }
    http_request(event, out);
}

fn datastore_activity(event: &RuntimeEvent, out: &mut Map<String, Value>) {
    out.insert("actor".into(), actor(event));
    out.insert("src_endpoint".into(), src_endpoint(event));
    if let Some(system) = &event.target.system {
        out.insert("dst_endpoint".into(), json!({ "svc_name": system }));
    }
    // OCSF wants at least one of database, databucket and table; an object
    // in a store that is neither a database nor a table is in a bucket.
    let resource_type = event
        .target
        .resource_type
        .as_deref()
        .unwrap_or_default()
        .to_lowercase();
    let resource = event.target.resource.as_deref();
    // With no target at all, the store is known only by where the event
    // came from.
    let fallback = event
        .target
        .system
        .as_deref()
        .or(event.source.name.as_deref())
        .unwrap_or(event.source.kind.as_str());
    if resource_type.contains("table") {
        out.insert("type_id".into(), 3.into());
        out.insert("type".into(), "Table".into());
        out.insert("table".into(), named(resource, fallback));
    } else if resource_type.contains("database") || resource_type.split('_').any(|w| w == "db") {
        out.insert("type_id".into(), 1.into());
        out.insert("type".into(), "Database".into());
        out.insert("database".into(), named(resource, fallback));
    } else {
        out.insert("type_id".into(), 2.into());
        out.insert("type".into(), "Databucket".into());
        out.insert(
            "databucket".into(),
            databucket(resource, &resource_type, fallback),
        );
    }
    http_request(event, out);
}

fn named(resource: Option<&str>, fallback: &str) -> Value {
    match resource {
        Some(resource) => json!({ "uid": resource, "name": last_segment(resource) }),
        None => json!({ "name": fallback }),
    }
}

fn last_segment(resource: &str) -> &str {
    resource
        .rsplit(['/', ':'])
        .find(|segment| !segment.is_empty())
        .unwrap_or(resource)
}

/// A bucket and, when the resource names one, the object in it.
fn databucket(resource: Option<&str>, resource_type: &str, fallback: &str) -> Value {
    let Some(resource) = resource else {
        return json!({ "name": fallback });
    };
    let (type_id, kind, path) = if let Some(path) = resource
        .strip_prefix("arn:aws:s3:::")
        .or_else(|| resource.strip_prefix("s3://"))
    {
        (1, "S3", Some(path))
    } else if let Some(path) = resource.strip_prefix("gs://") {
        (3, "GCP Bucket", Some(path))
    } else if resource.contains(".blob.core.windows.net") {
        (2, "Azure Blob", None)
    } else if resource_type.starts_with("s3") {
        (1, "S3", None)
    } else {
        (99, "Other", None)
    };
    let mut bucket = Map::new();
    bucket.insert("uid".into(), resource.into());
    bucket.insert("type_id".into(), type_id.into());
    bucket.insert("type".into(), kind.into());
    match path.and_then(|path| path.split_once('/')) {
        Some((name, key)) if !name.is_empty() && !key.is_empty() => {
            bucket.insert("name".into(), name.into());
            bucket.insert(
                "file".into(),
                json!({
                    "name": key.rsplit('/').next().unwrap_or(key),
                    "path": key,
                    // 1 is Regular File.
                    "type_id": 1,
                }),
            );
        }
        _ => {
            bucket.insert(
                "name".into(),
                path.filter(|p| !p.is_empty()).unwrap_or(resource).into(),
            );
        }
    }
    Value::Object(bucket)
}

fn authentication(event: &RuntimeEvent, out: &mut Map<String, Value>) {
    out.insert("actor".into(), actor(event));
    // The subject authenticated is whoever acted, agent or not.
    out.insert("user".into(), user(&event.actor.current));
    let service = event
        .target
        .system
        .as_deref()
        .or(event.target.server.as_deref())
        .or(event.source.name.as_deref())
        .unwrap_or(event.source.kind.as_str());
    out.insert("service".into(), json!({ "name": service }));
    out.insert("dst_endpoint".into(), json!({ "svc_name": service }));
    if let Some(credential) = &event.actor.credential {
        if matches!(
            credential.kind,
            CredentialKind::OauthToken | CredentialKind::CustodyToken
        ) {
            out.insert("auth_protocol_id".into(), 6.into());
            out.insert("auth_protocol".into(), "OAUTH 2.0".into());
        }
        let mut session = Map::new();
        let uid = event
            .context
            .session_id
            .as_deref()
            .unwrap_or(credential.id.as_str());
        session.insert("uid".into(), uid.into());
        session.insert("credential_uid".into(), credential.id.clone().into());
        if let Some(issuer) = &credential.issuer {
            session.insert("issuer".into(), issuer.clone().into());
        }
        out.insert("session".into(), Value::Object(session));
    }
    if let Some(endpoint) = known_src_endpoint(event) {
        out.insert("src_endpoint".into(), endpoint);
    }
    http_request(event, out);
}

fn account_change(event: &RuntimeEvent, out: &mut Map<String, Value>) {
    out.insert("actor".into(), actor(event));
    // Without a principal the change is to the account the target names, or
    // failing that to the actor's own.
    let user = match (&event.target.principal, &event.target.resource) {
        (Some(principal), _) => user(principal),
        (None, Some(resource)) => json!({ "uid": resource, "type_id": 0, "type": "Unknown" }),
        (None, None) => user(&event.actor.current),
    };
    out.insert("user".into(), user);
    if let Some(endpoint) = known_src_endpoint(event) {
        out.insert("src_endpoint".into(), endpoint);
    }
    http_request(event, out);
}

fn entity_management(event: &RuntimeEvent, out: &mut Map<String, Value>) {
    out.insert("actor".into(), actor(event));
    let entity = match &event.target.principal {
        Some(principal) => {
            let mut entity = Map::new();
            entity.insert("uid".into(), principal.id.clone().into());
            entity.insert("name".into(), display_name(principal).into());
            entity.insert("type".into(), principal_caption(principal.kind).into());
            if let Some(version) = &principal.version {
                entity.insert("version".into(), version.clone().into());
            }
            if let Some(run_id) = &principal.run_id {
                entity.insert("data".into(), json!({ "run_id": run_id }));
            }
            Value::Object(entity)
        }
        None => match event.target.keys().next() {
            Some(uid) => json!({ "uid": uid, "name": uid, "type": "Agent" }),
            None => json!({ "name": "unknown", "type": "Agent" }),
        },
    };
    out.insert("entity".into(), entity);
    if let Some(endpoint) = known_src_endpoint(event) {
        out.insert("src_endpoint".into(), endpoint);
    }
    http_request(event, out);
}

/// The OCSF actor: the accountable user, the agent acting for them, and the
/// session and credential it used.
fn actor(event: &RuntimeEvent) -> Value {
    chain_actor(&event.actor, event.context.session_id.as_deref())
}

fn chain_actor(chain: &Actor, session_id: Option<&str>) -> Value {
    let mut actor = Map::new();
    let current_is_agent = chain.current.kind == PrincipalKind::Agent;
    let user_principal = if current_is_agent {
        chain.root.as_ref()
    } else {
        Some(&chain.current)
    };
    if let Some(principal) = user_principal {
        actor.insert("user".into(), user(principal));
    }
    if current_is_agent {
        actor.insert("app_name".into(), display_name(&chain.current).into());
        actor.insert("app_uid".into(), chain.current.id.clone().into());
    }
    let mut session = Map::new();
    if let Some(session_id) = session_id {
        session.insert("uid".into(), session_id.into());
    }
    if let Some(credential) = &chain.credential {
        session.insert("credential_uid".into(), credential.id.clone().into());
        if let Some(issuer) = &credential.issuer {
            session.insert("issuer".into(), issuer.clone().into());
        }
    }
    if !session.is_empty() {
        actor.insert("session".into(), Value::Object(session));
    }
    Value::Object(actor)
}

fn user(principal: &Principal) -> Value {
    let mut user = Map::new();
    user.insert("uid".into(), principal.id.clone().into());
    user.insert("name".into(), display_name(principal).into());
    // OCSF 1.3.0 knows users (1) but not services, agents or roles, which
    // are Other (99) with the kind as their type.
    let type_id = match principal.kind {
        PrincipalKind::Human => 1,
        PrincipalKind::Unknown => 0,
        PrincipalKind::Service | PrincipalKind::Agent | PrincipalKind::Role => 99,
    };
    user.insert("type_id".into(), type_id.into());
    user.insert("type".into(), principal_caption(principal.kind).into());
    if principal.kind == PrincipalKind::Human && principal.id.contains('@') {
        user.insert("email_addr".into(), principal.id.clone().into());
    }
    Value::Object(user)
}

fn principal_caption(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::Human => "User",
        PrincipalKind::Service => "Service",
        PrincipalKind::Agent => "Agent",
        PrincipalKind::Role => "Role",
        PrincipalKind::Unknown => "Unknown",
    }
}

fn display_name(principal: &Principal) -> &str {
    principal.name.as_deref().unwrap_or(principal.id.as_str())
}

/// The attribute holding the caller's address, by the OpenTelemetry name.
const CLIENT_ADDRESS: &str = "client.address";
/// The attribute holding the caller's host name.
const HOST_NAME: &str = "host.name";
/// The attribute holding the caller's user agent.
const USER_AGENT: &str = "user_agent.original";

/// Where the action came from, for classes that require it: the caller's
/// address and host when the source reported them, and the acting
/// workload's name always, so the endpoint is never empty.
fn src_endpoint(event: &RuntimeEvent) -> Value {
    let mut endpoint = match known_src_endpoint(event) {
        Some(Value::Object(endpoint)) => endpoint,
        _ => Map::new(),
    };
    endpoint.insert(
        "name".into(),
        display_name(&event.actor.current).to_owned().into(),
    );
    Value::Object(endpoint)
}

/// The caller's address and host, when the source reported them.
fn known_src_endpoint(event: &RuntimeEvent) -> Option<Value> {
    let mut endpoint = Map::new();
    if let Some(ip) = string_attribute(event, CLIENT_ADDRESS) {
        endpoint.insert("ip".into(), ip.into());
    }
    if let Some(host) = string_attribute(event, HOST_NAME) {
        endpoint.insert("hostname".into(), host.into());
    }
    (!endpoint.is_empty()).then_some(Value::Object(endpoint))
}

fn http_request(event: &RuntimeEvent, out: &mut Map<String, Value>) {
    if let Some(user_agent) = string_attribute(event, USER_AGENT) {
        out.insert("http_request".into(), json!({ "user_agent": user_agent }));
    }
}

fn string_attribute<'a>(event: &'a RuntimeEvent, name: &str) -> Option<&'a str> {
    event.attributes.get(name).and_then(Value::as_str)
}

/// The event as Custody stores it, less the raw record that `raw_data`
/// already carries.
fn custody(event: &RuntimeEvent) -> Value {
    // Serializing the model cannot fail: its maps have string keys and its
    // types serialize infallibly. Null would only hide a bug, not lose data
    // that `raw_data` and the mapped fields do not also hold.
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("raw");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool call by a sub-agent of alice; each case patches it into
    /// another kind.
    const BASE: &str = r#"{
        "version": 1,
        "id": "01a21227-d45c-7128-a24b-e40ad23f0824",
        "kind": "tool_call",
        "action": "tools/call",
        "observed_at": "2026-11-25T10:02:09.880123Z",
        "received_at": "2026-11-25T10:02:09.884Z",
        "source": {"type": "gateway", "name": "gw-1"},
        "actor": {
            "root": {"type": "human", "id": "alice@example.com", "name": "Alice"},
            "agents": [{"type": "agent", "id": "release-bot", "run_id": "run-1"}],
            "current": {"type": "agent", "id": "dependency-auditor", "run_id": "run-2"},
            "credential": {"type": "custody_token", "id": "jti-1", "issuer": "https://custody.example.com"}
        },
        "target": {"tool": "create_pull_request", "server": "github-mcp"},
        "outcome": {"status": "success", "duration_ms": 12},
        "attribution": {"method": "authenticated", "evidence": [{"type": "token", "detail": "jti-1"}]},
        "context": {"session_id": "mcp-1", "request_id": "7"},
        "attributes": {"client.address": "10.0.0.1"},
        "raw": {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
    }"#;

    /// Maps the base event with `patch` merged over it, checks what every
    /// export must satisfy, then the `expected` pointers.
    fn check(patch: Value, expected: &[(&str, Value)]) {
        let mut event: Value = serde_json::from_str(BASE).unwrap();
        for (key, value) in patch.as_object().unwrap() {
            event[key] = value.clone();
        }
        let event: RuntimeEvent = serde_json::from_value(event).unwrap();
        let ocsf = to_ocsf(&event);

        let class = ocsf["class_uid"].as_u64().unwrap();
        assert_eq!(class, u64::from(class_uid(event.kind)));
        for field in required_fields(class as u32) {
            assert!(
                !ocsf[field].is_null(),
                "{} export lacks required {field}: {ocsf:#}",
                event.kind
            );
        }
        assert_eq!(
            ocsf["type_uid"].as_u64().unwrap(),
            class * 100 + ocsf["activity_id"].as_u64().unwrap()
        );
        assert_eq!(ocsf["category_uid"].as_u64().unwrap(), class / 1000);
        assert_eq!(ocsf["time"], event.observed_at.timestamp_millis());
        assert_eq!(ocsf["metadata"]["version"], OCSF_VERSION);
        assert_eq!(ocsf["metadata"]["product"]["name"], "Custody");
        assert!(ocsf["metadata"]["product"]["vendor_name"].is_string());
        assert_eq!(ocsf["metadata"]["uid"], event.id.to_string());

        assert_eq!(ocsf["raw_data"].is_string(), event.raw.is_some());
        assert!(ocsf["unmapped"]["custody"].get("raw").is_none());

        // Nothing is lost: the event comes back from the export.
        let mut custody = ocsf["unmapped"]["custody"].clone();
        if let Some(raw) = ocsf["raw_data"].as_str() {
            custody["raw"] = serde_json::from_str(raw).unwrap();
        }
        let back: RuntimeEvent = serde_json::from_value(custody).unwrap();
        assert_eq!(back, event);

        for (pointer, value) in expected {
            assert_eq!(ocsf.pointer(pointer), Some(value), "{pointer} in {ocsf:#}");
        }
    }

    #[test]
    fn tool_call_is_api_activity_with_the_tools_verb() {
        check(
            json!({}),
            &[
                ("/class_uid", json!(6003)),
                ("/category_uid", json!(6)),
                ("/activity_id", json!(1)),
                ("/type_uid", json!(600301)),
                ("/api/operation", json!("create_pull_request")),
                ("/api/service/name", json!("github-mcp")),
                ("/api/request/uid", json!("7")),
                ("/actor/user/uid", json!("alice@example.com")),
                ("/actor/user/email_addr", json!("alice@example.com")),
                ("/actor/app_uid", json!("dependency-auditor")),
                ("/actor/session/uid", json!("mcp-1")),
                ("/actor/session/credential_uid", json!("jti-1")),
                ("/src_endpoint/ip", json!("10.0.0.1")),
                ("/dst_endpoint/svc_name", json!("github-mcp")),
                ("/status_id", json!(1)),
                ("/duration", json!(12)),
                ("/metadata/correlation_uid", json!("run-2")),
                (
                    "/metadata/original_time",
                    json!("2026-11-25T10:02:09.880123Z"),
                ),
                ("/time", json!(1795600929880_i64)),
                (
                    "/unmapped/custody/attribution/method",
                    json!("authenticated"),
                ),
                ("/unmapped/custody/actor/agents/0/id", json!("release-bot")),
            ],
        );
    }

    #[test]
    fn mcp_request_is_api_activity() {
        check(
            json!({"kind": "mcp_request", "action": "resources/read", "target": {"resource": "repo://x", "server": "github-mcp"}}),
            &[
                ("/class_uid", json!(6003)),
                ("/activity_id", json!(2)),
                ("/api/operation", json!("resources/read")),
                ("/resources/0/uid", json!("repo://x")),
            ],
        );
        check(
            json!({"kind": "mcp_request", "action": "initialize", "target": {}}),
            &[
                ("/activity_id", json!(99)),
                ("/activity_name", json!("initialize")),
                ("/type_name", json!("API Activity: Other")),
                ("/api/operation", json!("initialize")),
                // Without a reported address the endpoint is the workload.
                ("/src_endpoint/name", json!("dependency-auditor")),
            ],
        );
    }

    #[test]
    fn data_access_is_datastore_activity() {
        check(
            json!({
                "kind": "data_access",
                "action": "s3:GetObject",
                "target": {"resource": "arn:aws:s3:::bucket/dir/file.json", "resource_type": "s3_object", "system": "aws:1"}
            }),
            &[
                ("/class_uid", json!(6005)),
                ("/activity_id", json!(1)),
                ("/type_uid", json!(600501)),
                ("/type_id", json!(2)),
                ("/databucket/name", json!("bucket")),
                ("/databucket/type_id", json!(1)),
                ("/databucket/file/name", json!("file.json")),
                ("/databucket/file/path", json!("dir/file.json")),
                ("/actor/app_name", json!("dependency-auditor")),
            ],
        );
        check(
            json!({"kind": "data_access", "action": "DeleteItem", "target": {"resource": "orders", "resource_type": "dynamodb_table"}}),
            &[("/activity_id", json!(7)), ("/table/uid", json!("orders"))],
        );
        check(
            json!({"kind": "data_access", "action": "SELECT", "target": {}}),
            &[
                ("/activity_id", json!(4)),
                ("/databucket/name", json!("gw-1")),
            ],
        );
    }

    #[test]
    fn agent_spawn_is_entity_management_create() {
        check(
            json!({
                "kind": "agent_spawn",
                "action": "token/exchange",
                "target": {"principal": {"type": "agent", "id": "sub", "name": "Sub", "version": "1.0", "run_id": "run-3"}}
            }),
            &[
                ("/class_uid", json!(3004)),
                ("/category_uid", json!(3)),
                ("/activity_id", json!(1)),
                ("/type_uid", json!(300401)),
                ("/entity/uid", json!("sub")),
                ("/entity/name", json!("Sub")),
                ("/entity/type", json!("Agent")),
                ("/entity/version", json!("1.0")),
                ("/entity/data/run_id", json!("run-3")),
            ],
        );
        check(
            json!({"kind": "agent_spawn", "action": "spawn", "target": {}}),
            &[("/entity/name", json!("unknown"))],
        );
    }

    #[test]
    fn authentication_and_credential_use_are_authentication() {
        check(
            json!({
                "kind": "authentication",
                "action": "user.session.start",
                "actor": {"current": {"type": "human", "id": "alice@example.com"}},
                "target": {"system": "example.okta.com"},
                "context": {},
                "attributes": {"user_agent.original": "Safari"}
            }),
            &[
                ("/class_uid", json!(3002)),
                ("/activity_id", json!(1)),
                ("/type_uid", json!(300201)),
                ("/user/uid", json!("alice@example.com")),
                ("/user/type_id", json!(1)),
                ("/actor/user/uid", json!("alice@example.com")),
                ("/service/name", json!("example.okta.com")),
                ("/dst_endpoint/svc_name", json!("example.okta.com")),
                ("/http_request/user_agent", json!("Safari")),
            ],
        );
        check(
            json!({"kind": "authentication", "action": "user.session.end"}),
            &[
                ("/activity_id", json!(2)),
                ("/activity_name", json!("Logoff")),
            ],
        );
        check(
            json!({"kind": "credential_use", "action": "git.clone", "target": {"resource": "org/repo"}}),
            &[
                ("/class_uid", json!(3002)),
                ("/activity_id", json!(1)),
                ("/user/uid", json!("dependency-auditor")),
                ("/user/type", json!("Agent")),
                ("/auth_protocol_id", json!(6)),
                ("/session/credential_uid", json!("jti-1")),
                ("/service/name", json!("gw-1")),
            ],
        );
    }

    #[test]
    fn privilege_change_is_account_change() {
        check(
            json!({
                "kind": "privilege_change",
                "action": "iam:CreateAccessKey",
                "target": {"principal": {"type": "service", "id": "arn:aws:iam::1:user/npm"}}
            }),
            &[
                ("/class_uid", json!(3001)),
                ("/activity_id", json!(99)),
                ("/activity_name", json!("iam:CreateAccessKey")),
                ("/type_uid", json!(300199)),
                ("/user/uid", json!("arn:aws:iam::1:user/npm")),
                ("/user/type_id", json!(99)),
            ],
        );
        check(
            json!({"kind": "privilege_change", "action": "AttachRolePolicy", "target": {"resource": "arn:aws:iam::1:role/x"}}),
            &[
                ("/activity_id", json!(7)),
                ("/user/uid", json!("arn:aws:iam::1:role/x")),
            ],
        );
        check(
            json!({"kind": "privilege_change", "action": "user.account.update_password", "target": {}}),
            &[
                ("/activity_id", json!(3)),
                ("/user/uid", json!("dependency-auditor")),
            ],
        );
    }

    #[test]
    fn other_is_a_base_event_without_class_attributes() {
        check(
            json!({"kind": "other", "action": "chat", "raw": null}),
            &[
                ("/class_uid", json!(0)),
                ("/category_uid", json!(0)),
                ("/activity_id", json!(99)),
                ("/type_uid", json!(99)),
                ("/activity_name", json!("chat")),
            ],
        );
        let event: RuntimeEvent = serde_json::from_str(BASE).unwrap();
        let event = RuntimeEvent {
            kind: EventKind::Other,
            ..event
        };
        let ocsf = to_ocsf(&event);
        for absent in ["actor", "api", "src_endpoint", "user", "http_request"] {
            assert!(ocsf.get(absent).is_none(), "Base Event has no {absent}");
        }
    }

    #[test]
    fn outcomes_map_to_status_and_severity() {
        check(
            json!({"outcome": {"status": "denied", "reason": "policy forbid-prod-writes"}}),
            &[
                ("/status_id", json!(2)),
                ("/status", json!("Failure")),
                ("/status_detail", json!("denied: policy forbid-prod-writes")),
                ("/severity_id", json!(3)),
            ],
        );
        check(
            json!({"outcome": {"status": "failure", "reason": "timeout"}}),
            &[
                ("/status_id", json!(2)),
                ("/status_detail", json!("timeout")),
                ("/severity_id", json!(1)),
            ],
        );
        check(
            json!({"outcome": {"status": "unknown"}}),
            &[("/status_id", json!(0)), ("/status", json!("Unknown"))],
        );
    }

    #[test]
    fn every_kind_maps_with_its_required_fields() {
        for kind in EventKind::ALL {
            check(json!({ "kind": kind.as_str() }), &[]);
        }
    }

    #[test]
    fn verbs_come_from_the_first_word_that_is_one() {
        let cases = [
            ("s3:GetObject", Some(Verb::Read)),
            ("create_pull_request", Some(Verb::Create)),
            ("tools/call", None),
            ("tools/list", Some(Verb::List)),
            ("PutObject", Some(Verb::Write)),
            ("EnableMFADevice", Some(Verb::Update)),
            ("resources/read", Some(Verb::Read)),
            ("dataset_info", None),
            ("DeleteBucket", Some(Verb::Delete)),
        ];
        for (name, expected) in cases {
            assert_eq!(verb(name), expected, "{name}");
        }
        let split: Vec<String> = words("EnableMFADevice s3:GetObject").collect();
        assert_eq!(split, ["enable", "mfa", "device", "s3", "get", "object"]);
    }

    #[test]
    fn account_changes_name_their_activity() {
        let cases = [
            ("CreateUser", 1),
            ("user.lifecycle.activate", 2),
            ("ChangePassword", 3),
            ("user.account.reset_password", 4),
            ("user.lifecycle.suspend", 5),
            ("DeleteRole", 6),
            ("PutUserPolicy", 7),
            ("DetachRolePolicy", 8),
            ("DeleteRolePolicy", 8),
            ("user.account.lock", 9),
            ("EnableMFADevice", 10),
            ("user.mfa.factor.deactivate", 11),
            ("CreateAccessKey", 99),
            ("DeleteAccessKey", 99),
            ("AddUserToGroup", 99),
            ("RemoveUserFromGroup", 99),
        ];
        for (action, expected) in cases {
            assert_eq!(account_change_activity(action).id, expected, "{action}");
        }
    }

    #[test]
    fn required_fields_cover_the_base_event_for_any_class() {
        for class in [0, 6003, 6005, 3001, 3002, 3004, 2004] {
            assert!(required_fields(class).starts_with(required_fields(0)));
        }
        assert!(required_fields(6003).contains(&"api"));
        assert!(required_fields(3004).contains(&"entity"));
    }
}
