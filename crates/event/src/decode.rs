//! Decoding untrusted bytes into a validated [`NewEvent`], with errors that
//! name the field at fault.
//!
//! Decoding happens in two passes: serde checks the shape (types, required
//! and unknown fields) and [`validate`] checks what types cannot say (lengths,
//! which identity kinds may stand where, time range). Both report a field path
//! in the same notation, e.g. `actor.agents[1].type`.

use std::fmt;

use chrono::{DateTime, Datelike, Utc};

use crate::model::{Actor, Context, NewEvent, Principal, PrincipalKind, Target};

/// Why an event was refused, and where in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", if path.is_empty() { "event" } else { path.as_str() })]
pub struct DecodeError {
    /// The field at fault, e.g. `actor.current.id`; empty for the event as a
    /// whole (a syntax error, a body that is not an object).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl DecodeError {
    fn at(path: impl Into<String>, message: impl Into<String>) -> DecodeError {
        DecodeError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Longest accepted identifier (ids, names, systems, servers).
pub const MAX_ID_LEN: usize = 1024;
/// Longest accepted short label (action, version, types).
pub const MAX_LABEL_LEN: usize = 256;
/// Longest accepted free text or resource (reason, evidence detail, resource).
pub const MAX_TEXT_LEN: usize = 4096;
/// Longest accepted trace or span id.
pub const MAX_TRACE_ID_LEN: usize = 128;
/// Most attributes one event may carry.
pub const MAX_ATTRIBUTES: usize = 256;

/// Decodes and validates one event from JSON bytes.
pub fn decode(bytes: &[u8]) -> Result<NewEvent, DecodeError> {
    // serde also reads a struct from a JSON array of its fields in order;
    // an event is only ever an object.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(not_an_object());
    }
    // Most events are valid: decode them without tracking paths, and go back
    // over the few that fail to say where.
    if let Ok(event) = serde_json::from_slice::<NewEvent>(bytes) {
        validate(&event)?;
        return Ok(event);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let event: NewEvent = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(event) => event,
        // serde_json reports some type errors (a number where an enum
        // belongs) as syntax errors. Well-formed JSON goes the slow way
        // through a value, whose errors name the type properly.
        Err(error) if error.inner().is_syntax() => {
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(value) => return decode_value(value),
                Err(_) => return Err(shape_error(error)),
            }
        }
        Err(error) => return Err(shape_error(error)),
    };
    deserializer
        .end()
        .map_err(|error| DecodeError::at("", syntax_message(&error)))?;
    validate(&event)?;
    Ok(event)
}

/// Decodes and validates one event from an already parsed JSON value.
pub fn decode_value(value: serde_json::Value) -> Result<NewEvent, DecodeError> {
    if !value.is_object() {
        return Err(not_an_object());
    }
    let event: NewEvent = serde_path_to_error::deserialize(value).map_err(shape_error)?;
    validate(&event)?;
    Ok(event)
}

fn not_an_object() -> DecodeError {
    DecodeError::at("", "an event is a JSON object")
}

fn shape_error(error: serde_path_to_error::Error<serde_json::Error>) -> DecodeError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    let path = if path == "." { String::new() } else { path };
    match inner.classify() {
        serde_json::error::Category::Data => DecodeError::at(path, strip_position(&inner)),
        // A syntax error is not a field's fault; its line and column say
        // where it is.
        _ => DecodeError::at("", syntax_message(&inner)),
    }
}

/// serde_json appends "at line L column C" to data errors; the field path says
/// more, so keep only the message.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn syntax_message(error: &serde_json::Error) -> String {
    let what = match error.classify() {
        serde_json::error::Category::Eof => "truncated JSON",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Io => "unreadable JSON",
        serde_json::error::Category::Data => "unexpected JSON",
    };
    format!("{what}: {error}")
}

/// Checks what the types cannot: lengths, which kinds of identity may stand
/// where in the chain, and the time range.
pub fn validate(event: &NewEvent) -> Result<(), DecodeError> {
    text(&"action", &event.action, MAX_LABEL_LEN)?;
    time("observed_at", event.observed_at)?;
    optional(&"source.name", event.source.name.as_deref(), MAX_ID_LEN)?;
    optional(
        &"source.record_id",
        event.source.record_id.as_deref(),
        MAX_ID_LEN,
    )?;
    actor(&event.actor)?;
    target(&event.target)?;
    optional_any(
        &"outcome.reason",
        event.outcome.reason.as_deref(),
        MAX_TEXT_LEN,
    )?;
    if let Some(attribution) = &event.attribution {
        for (i, evidence) in attribution.evidence.iter().enumerate() {
            text(
                &Sub(&Indexed("attribution.evidence", i), "type"),
                &evidence.kind,
                MAX_LABEL_LEN,
            )?;
            text(
                &Sub(&Indexed("attribution.evidence", i), "detail"),
                &evidence.detail,
                MAX_TEXT_LEN,
            )?;
        }
    }
    context(&event.context)?;
    if event.attributes.len() > MAX_ATTRIBUTES {
        return Err(DecodeError::at(
            "attributes",
            format!(
                "{} attributes, at most {MAX_ATTRIBUTES} are accepted",
                event.attributes.len()
            ),
        ));
    }
    for key in event.attributes.keys() {
        if key.is_empty() || key.len() > MAX_LABEL_LEN {
            return Err(DecodeError::at(
                "attributes",
                format!(
                    "attribute name \"{}\" must be 1 to {MAX_LABEL_LEN} bytes",
                    truncate(key)
                ),
            ));
        }
    }
    Ok(())
}

fn actor(actor: &Actor) -> Result<(), DecodeError> {
    if let Some(root) = &actor.root {
        if !matches!(root.kind, PrincipalKind::Human | PrincipalKind::Service) {
            return Err(DecodeError::at(
                "actor.root.type",
                format!(
                    "the root of a chain is a human or a service, not \"{}\"",
                    root.kind.as_str()
                ),
            ));
        }
        principal(&"actor.root", root)?;
    }
    for (i, agent) in actor.agents.iter().enumerate() {
        let path = Indexed("actor.agents", i);
        if agent.kind != PrincipalKind::Agent {
            return Err(DecodeError::at(
                format!("{path}.type"),
                format!(
                    "links between the root and the current actor are agents, not \"{}\"",
                    agent.kind.as_str()
                ),
            ));
        }
        principal(&path, agent)?;
    }
    principal(&"actor.current", &actor.current)?;
    if let Some(credential) = &actor.credential {
        text(&"actor.credential.id", &credential.id, MAX_ID_LEN)?;
        optional(
            &"actor.credential.issuer",
            credential.issuer.as_deref(),
            MAX_ID_LEN,
        )?;
    }
    Ok(())
}

fn principal(path: &dyn fmt::Display, principal: &Principal) -> Result<(), DecodeError> {
    text(&Sub(path, "id"), &principal.id, MAX_ID_LEN)?;
    optional(&Sub(path, "name"), principal.name.as_deref(), MAX_ID_LEN)?;
    optional(
        &Sub(path, "version"),
        principal.version.as_deref(),
        MAX_LABEL_LEN,
    )?;
    optional(
        &Sub(path, "run_id"),
        principal.run_id.as_deref(),
        MAX_ID_LEN,
    )?;
    if principal.kind != PrincipalKind::Agent {
        for (field, value) in [
            ("run_id", &principal.run_id),
            ("version", &principal.version),
        ] {
            if value.is_some() {
                return Err(DecodeError::at(
                    format!("{path}.{field}"),
                    format!(
                        "only agents have a {field}, this identity is a \"{}\"",
                        principal.kind.as_str()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn target(target: &Target) -> Result<(), DecodeError> {
    optional(&"target.tool", target.tool.as_deref(), MAX_ID_LEN)?;
    optional(&"target.server", target.server.as_deref(), MAX_ID_LEN)?;
    optional(&"target.resource", target.resource.as_deref(), MAX_TEXT_LEN)?;
    optional(
        &"target.resource_type",
        target.resource_type.as_deref(),
        MAX_LABEL_LEN,
    )?;
    optional(&"target.system", target.system.as_deref(), MAX_ID_LEN)?;
    if let Some(principal_target) = &target.principal {
        principal(&"target.principal", principal_target)?;
    }
    Ok(())
}

fn context(context: &Context) -> Result<(), DecodeError> {
    optional(
        &"context.session_id",
        context.session_id.as_deref(),
        MAX_ID_LEN,
    )?;
    optional(
        &"context.conversation_id",
        context.conversation_id.as_deref(),
        MAX_ID_LEN,
    )?;
    optional(
        &"context.trace_id",
        context.trace_id.as_deref(),
        MAX_TRACE_ID_LEN,
    )?;
    optional(
        &"context.span_id",
        context.span_id.as_deref(),
        MAX_TRACE_ID_LEN,
    )?;
    optional(
        &"context.parent_span_id",
        context.parent_span_id.as_deref(),
        MAX_TRACE_ID_LEN,
    )?;
    optional(
        &"context.tool_call_id",
        context.tool_call_id.as_deref(),
        MAX_ID_LEN,
    )?;
    optional(
        &"context.request_id",
        context.request_id.as_deref(),
        MAX_ID_LEN,
    )?;
    Ok(())
}

/// A required string: present, not blank, not too long.
fn text(path: &dyn fmt::Display, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.trim().is_empty() {
        return Err(DecodeError::at(path.to_string(), "must not be empty"));
    }
    if value.len() > max {
        return Err(DecodeError::at(
            path.to_string(),
            format!("is {} bytes long, at most {max} are accepted", value.len()),
        ));
    }
    Ok(())
}

/// An optional string: when present, as [`text`].
fn optional(path: &dyn fmt::Display, value: Option<&str>, max: usize) -> Result<(), DecodeError> {
    value.map_or(Ok(()), |value| text(path, value, max))
}

/// An optional free text: may be empty, not too long.
fn optional_any(
    path: &dyn fmt::Display,
    value: Option<&str>,
    max: usize,
) -> Result<(), DecodeError> {
    match value {
        Some(value) if value.len() > max => Err(DecodeError::at(
            path.to_string(),
            format!("is {} bytes long, at most {max} are accepted", value.len()),
        )),
        _ => Ok(()),
    }
}

fn time(path: &str, value: DateTime<Utc>) -> Result<(), DecodeError> {
    if (1970..=9999).contains(&value.year()) {
        Ok(())
    } else {
        Err(DecodeError::at(
            path,
            format!("{value} is outside the years 1970 to 9999"),
        ))
    }
}

/// A field of a parent, as a path: `parent.field`. Paths are only spelt
/// out when a field is refused, so valid events cost no allocation.
struct Sub<'a>(&'a dyn fmt::Display, &'a str);

impl fmt::Display for Sub<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// An element of a list, as a path: `list[index]`.
struct Indexed<'a>(&'a str, usize);

impl fmt::Display for Indexed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.0, self.1)
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid event; each check below breaks one thing in it.
    const VALID: &str = r#"{
        "kind": "tool_call",
        "action": "tools/call",
        "observed_at": "2026-11-25T10:00:00Z",
        "source": {"type": "gateway"},
        "actor": {
            "root": {"type": "human", "id": "alice@example.com"},
            "agents": [{"type": "agent", "id": "planner", "run_id": "run-1"}],
            "current": {"type": "agent", "id": "coder", "run_id": "run-2"}
        },
        "outcome": {"status": "success"}
    }"#;

    fn check(patch: &str, value: serde_json::Value, path: &str, message: &str) {
        let mut event: serde_json::Value = serde_json::from_str(VALID).unwrap();
        *event
            .pointer_mut(patch)
            .unwrap_or_else(|| panic!("no {patch} in the valid event")) = value;
        let error = decode(event.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.path, path, "{error}");
        assert!(
            error.message.contains(message),
            "{error:?} does not say {message:?}"
        );
    }

    fn check_removed(object: &str, field: &str, path: &str, message: &str) {
        let mut event: serde_json::Value = serde_json::from_str(VALID).unwrap();
        event
            .pointer_mut(object)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(field);
        let error = decode(event.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.path, path, "{error}");
        assert!(
            error.message.contains(message),
            "{error:?} does not say {message:?}"
        );
    }

    #[test]
    fn valid_event_decodes() {
        let event = decode(VALID.as_bytes()).unwrap();
        assert_eq!(event.actor.depth(), 2);
        assert_eq!(event.actor.run_id(), Some("run-2"));
    }

    #[test]
    fn every_error_names_its_field() {
        check(
            "/kind",
            "tool-call".into(),
            "kind",
            "unknown variant `tool-call`",
        );
        check("/action", "  ".into(), "action", "must not be empty");
        check(
            "/observed_at",
            "yesterday".into(),
            "observed_at",
            "input contains invalid characters",
        );
        check(
            "/observed_at",
            "1969-12-31T23:59:59Z".into(),
            "observed_at",
            "outside the years",
        );
        check(
            "/source/type",
            "syslog".into(),
            "source.type",
            "unknown variant `syslog`",
        );
        check(
            "/actor/current/id",
            "".into(),
            "actor.current.id",
            "must not be empty",
        );
        check(
            "/actor/current/id",
            "x".repeat(2000).into(),
            "actor.current.id",
            "at most 1024",
        );
        check(
            "/actor/root/type",
            "agent".into(),
            "actor.root.type",
            "human or a service",
        );
        check(
            "/actor/agents/0/type",
            "human".into(),
            "actor.agents[0].type",
            "are agents",
        );
        check(
            "/actor/root",
            serde_json::json!({"type": "human", "id": "a", "run_id": "r"}),
            "actor.root.run_id",
            "only agents",
        );
        check(
            "/outcome/status",
            3.into(),
            "outcome.status",
            "invalid type",
        );
        check(
            "/outcome",
            serde_json::json!({"status": "success", "extra": 1}),
            "outcome.extra",
            "unknown field `extra`",
        );
        check(
            "/actor/agents",
            serde_json::json!([{"type": "agent", "id": "a"}, {"type": "agent"}]),
            "actor.agents[1]",
            "missing field `id`",
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        check_removed("", "kind", "", "missing field `kind`");
        check_removed("/actor", "current", "actor", "missing field `current`");
        check_removed("/outcome", "status", "outcome", "missing field `status`");
    }

    #[test]
    fn unsupported_version_is_refused() {
        let mut event: serde_json::Value = serde_json::from_str(VALID).unwrap();
        event["version"] = 2.into();
        let error = decode(event.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.path, "version");
        assert!(
            error.message.contains("unsupported event schema version 2"),
            "{error}"
        );
    }

    #[test]
    fn only_objects_are_events() {
        for body in ["[\"tool_call\"]", "3", "\"event\"", "null"] {
            let error = decode(body.as_bytes()).unwrap_err();
            assert_eq!(
                (error.path.as_str(), error.message.as_str()),
                ("", "an event is a JSON object"),
                "{body}"
            );
            let error = decode_value(serde_json::from_str(body).unwrap()).unwrap_err();
            assert_eq!(error.message, "an event is a JSON object", "{body}");
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        let error = decode(b"{\"kind\": \"tool_call\",\n \"action\": }").unwrap_err();
        assert!(error.message.contains("invalid JSON"), "{error}");
        assert!(error.message.contains("line 2"), "{error}");
        assert_eq!(error.path, "", "a syntax error is not a field's fault");
        let error = decode(b"{\"kind\": \"tool_call\"").unwrap_err();
        assert!(error.message.contains("truncated JSON"), "{error}");
        let error = decode(format!("{VALID} {{}}").as_bytes()).unwrap_err();
        assert!(error.message.contains("trailing characters"), "{error}");
    }

    #[test]
    fn raw_records_are_kept_verbatim_on_every_path() {
        let mut event: serde_json::Value = serde_json::from_str(VALID).unwrap();
        event.as_object_mut().unwrap().remove("raw");
        let text = event.to_string();
        let raw = "{\"z\": 1,\n  \"a\": [true, null, 2.50, \" a \\\" b \"]}";
        let with_raw = format!(r#"{}, "raw": {raw}}}"#, &text[..text.len() - 1]);
        let decoded = decode(with_raw.as_bytes()).unwrap();
        // Keys in their order, numbers as written, whitespace in strings
        // kept; only the whitespace between tokens goes.
        let kept = r#"{"z":1,"a":[true,null,2.50," a \" b "]}"#;
        assert_eq!(decoded.raw.as_ref().map(|r| r.get()), Some(kept));
        // The path-tracking pass reads a raw record too, and still names the
        // field at fault behind it.
        let bad = with_raw.replace(r#""kind":"tool_call""#, r#""kind":"tool-call""#);
        assert_ne!(bad, with_raw);
        let error = decode(bad.as_bytes()).unwrap_err();
        assert_eq!(error.path, "kind", "{error}");
        // From a parsed value, the record is its compact form, members in
        // the order they were written.
        let value: serde_json::Value = serde_json::from_str(&with_raw).unwrap();
        let decoded = decode_value(value).unwrap();
        assert_eq!(
            decoded.raw.as_ref().map(|r| r.get()),
            Some(r#"{"z":1,"a":[true,null,2.5," a \" b "]}"#)
        );
    }

    #[test]
    fn a_raw_record_is_kept_even_when_a_string_escape_is_unpaired() {
        // Found by fuzzing: well-formed JSON whose string holds a lone
        // surrogate escape, which no decoder turns into Unicode. The record
        // is evidence, kept as the source wrote it.
        let mut event: serde_json::Value = serde_json::from_str(VALID).unwrap();
        event.as_object_mut().unwrap().remove("raw");
        let text = event.to_string();
        let raw = r#"{"uuid":"6f1c2\ud800a9e"}"#;
        let with_raw = format!(r#"{}, "raw": {raw}}}"#, &text[..text.len() - 1]);
        let decoded = decode(with_raw.as_bytes()).unwrap();
        let record = decoded.raw.as_ref().unwrap();
        assert_eq!(record.get(), raw);
        assert!(record.to_value().is_err());
        let again = decode(&serde_json::to_vec(&decoded).unwrap()).unwrap();
        assert_eq!(again, decoded);
    }
}
