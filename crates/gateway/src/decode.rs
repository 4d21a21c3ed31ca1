//! The decode layer: one JSON-RPC message from a client's line, checked for
//! the key tricks that make two readers see two different messages, and
//! re-serialized so the server receives exactly what Custody decided on.
//!
//! A JSON object may repeat a key, and parsers disagree about which copy
//! wins; a key may differ only in case, and lenient servers match names
//! without case. Either lets a caller show Custody one `method` or tool
//! `name` and the server another. So the keys that say what a message does
//! (`jsonrpc`, `id`, `method`, `params`, `result`, `error` at the top;
//! `name`, `uri`, `arguments`, `_meta` in `params`) must appear once, in
//! their exact spelling, and a repeated key of any name at those two levels
//! is refused. Deeper duplicates (inside `arguments`) are resolved by the
//! re-serialization: the server gets the one copy Custody digested.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The default largest message a client may send, in bytes.
pub const DEFAULT_MAX_MESSAGE: usize = 4 << 20;

/// JSON-RPC: the text is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: the JSON is not a valid request.
pub const INVALID_REQUEST: i64 = -32600;

/// Keys of the message object whose spelling is checked.
const TOP_KEYS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];
/// Keys of `params` whose spelling is checked.
const PARAMS_KEYS: [&str; 4] = ["name", "uri", "arguments", "_meta"];

/// A request or notification id: a string or an integer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(Value);

impl Id {
    /// The id as it travels.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// Reads an id; only strings and integers are ids.
    pub fn from_value(value: &Value) -> Option<Id> {
        match value {
            Value::String(_) => Some(Id(value.clone())),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(Id(value.clone())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A message a client sent, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// A request: it expects an answer.
    Request(Request),
    /// A notification: no answer. Relayed as it came.
    Notification {
        /// Its method.
        method: String,
        /// Its parameters.
        params: Option<Value>,
    },
    /// The client's answer to a request the server sent it. Relayed as it
    /// came.
    Response {
        /// The id of the server's request.
        id: Id,
    },
}

/// A request, checked and in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Its id.
    pub id: Id,
    /// Its method.
    pub method: String,
    /// Its parameters.
    pub params: Option<Value>,
    /// What is forwarded: the message re-serialized, keys sorted, no
    /// whitespace, one copy of every key.
    pub canonical: Vec<u8>,
}

impl Request {
    /// `params.name`, the tool or prompt asked for.
    pub fn name(&self) -> Option<&str> {
        self.params.as_ref()?.get("name")?.as_str()
    }

    /// `params.uri`, the resource asked for.
    pub fn uri(&self) -> Option<&str> {
        self.params.as_ref()?.get("uri")?.as_str()
    }

    /// `params.arguments`.
    pub fn arguments(&self) -> Option<&Value> {
        self.params.as_ref()?.get("arguments")
    }
}

/// Why a message was refused, and the answer owed for it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The request's id when it could be read; the answer carries it.
    pub id: Option<Id>,
    /// The JSON-RPC error code.
    pub code: i64,
    /// What was wrong.
    pub message: String,
}

impl DecodeError {
    fn invalid(id: Option<Id>, message: impl Into<String>) -> DecodeError {
        DecodeError {
            id,
            code: INVALID_REQUEST,
            message: message.into(),
        }
    }

    /// The message is larger than `limit` bytes.
    pub fn too_large(limit: usize) -> DecodeError {
        DecodeError::invalid(None, format!("the message exceeds {limit} bytes"))
    }

    /// The JSON-RPC error response to send back.
    pub fn response(&self) -> Vec<u8> {
        error_response(
            self.id.as_ref().map(Id::value),
            self.code,
            &self.message,
            None,
        )
    }
}

/// A JSON-RPC error response, as a line's bytes (no newline).
pub fn error_response(
    id: Option<&Value>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Vec<u8> {
    let mut error = Map::new();
    error.insert("code".into(), Value::from(code));
    error.insert("message".into(), Value::from(message));
    if let Some(data) = data {
        error.insert("data".into(), data);
    }
    let mut response = Map::new();
    response.insert("jsonrpc".into(), Value::from("2.0"));
    response.insert("id".into(), id.cloned().unwrap_or(Value::Null));
    response.insert("error".into(), Value::Object(error));
    serde_json::to_vec(&Value::Object(response)).unwrap_or_default()
}

/// Decodes one message from a client.
pub fn client(line: &[u8], limit: usize) -> Result<ClientMessage, DecodeError> {
    if line.len() > limit {
        return Err(DecodeError::too_large(limit));
    }
    let parse = |error: serde_json::Error| DecodeError {
        id: None,
        code: PARSE_ERROR,
        message: format!("the message is not JSON: {error}"),
    };
    let top: Entries<Box<RawValue>> = serde_json::from_slice(line).map_err(parse)?;
    // The id first, so that every later refusal can be answered to it.
    let id = top
        .get("id")
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .and_then(|value| Id::from_value(&value));
    check_keys(&top, &TOP_KEYS, "").map_err(|why| DecodeError::invalid(id.clone(), why))?;

    let mut message = Map::new();
    let mut params = None;
    for (key, raw) in top.0 {
        let value = if key == "params" {
            let value = decode_params(&raw).map_err(|why| DecodeError::invalid(id.clone(), why))?;
            params = Some(value.clone());
            value
        } else {
            serde_json::from_str(raw.get()).map_err(parse)?
        };
        message.insert(key, value);
    }
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(DecodeError::invalid(id, "`jsonrpc` must be \"2.0\""));
    }
    let method = match message.get("method") {
        None => None,
        Some(Value::String(method)) => Some(method.clone()),
        Some(_) => return Err(DecodeError::invalid(id, "`method` must be a string")),
    };
    match (method, message.get("id")) {
        (Some(method), None) => Ok(ClientMessage::Notification { method, params }),
        (Some(method), Some(raw_id)) => {
            let Some(id) = Id::from_value(raw_id) else {
                return Err(DecodeError::invalid(
                    None,
                    "a request's `id` must be a string or an integer",
                ));
            };
            let canonical = custody_event::canonical::to_vec(&Value::Object(message));
            Ok(ClientMessage::Request(Request {
                id,
                method,
                params,
                canonical,
            }))
        }
        (None, _) => {
            let answers = message.contains_key("result") || message.contains_key("error");
            match id {
                Some(id) if answers => Ok(ClientMessage::Response { id }),
                _ => Err(DecodeError::invalid(
                    id,
                    "the message is neither a request, a notification nor a response",
                )),
            }
        }
    }
}

/// What a server sent, as far as the relay needs to know.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// A request of the server's own (sampling, elicitation, roots).
    Request(Id),
    /// A notification.
    Notification,
    /// The answer to a client's request.
    Response {
        /// The id of the client's request.
        id: Id,
        /// The `error` member, when the request failed.
        error: Option<Value>,
        /// Whether a tool result says the tool failed (`isError`).
        tool_error: bool,
    },
    /// Not a JSON-RPC message the relay understands; relayed as is.
    Other,
}

/// Classifies a server's message. The server is the party the gateway
/// protects, not one it checks: its messages are relayed as they came.
pub fn server(line: &[u8]) -> ServerMessage {
    let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(line) else {
        return ServerMessage::Other;
    };
    let id = message.get("id").and_then(Id::from_value);
    match (message.contains_key("method"), id) {
        (true, Some(id)) => ServerMessage::Request(id),
        (true, None) => ServerMessage::Notification,
        (false, Some(id)) => ServerMessage::Response {
            id,
            error: message.get("error").cloned(),
            tool_error: message
                .get("result")
                .and_then(|result| result.get("isError"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
        (false, None) => ServerMessage::Other,
    }
}

/// `params`, checked at its own level when it is an object.
fn decode_params(raw: &RawValue) -> Result<Value, String> {
    if !raw.get().trim_start().starts_with('{') {
        return serde_json::from_str(raw.get()).map_err(|error| error.to_string());
    }
    let entries: Entries<Value> =
        serde_json::from_str(raw.get()).map_err(|error| error.to_string())?;
    check_keys(&entries, &PARAMS_KEYS, "params.")?;
    Ok(Value::Object(entries.0.into_iter().collect()))
}

/// Refuses a repeated key, and a key spelled like one of `watched` but not
/// exactly it.
fn check_keys<V>(entries: &Entries<V>, watched: &[&str], prefix: &str) -> Result<(), String> {
    for (i, (key, _)) in entries.0.iter().enumerate() {
        if entries.0.iter().take(i).any(|(earlier, _)| earlier == key) {
            return Err(format!("the key `{prefix}{key}` appears more than once"));
        }
        let lower = key.to_lowercase();
        if let Some(meant) = watched.iter().find(|w| **w == lower)
            && key != meant
        {
            return Err(format!(
                "the key `{prefix}{key}` is a case variant of `{prefix}{meant}`"
            ));
        }
    }
    Ok(())
}

/// An object's members in the order written, repeats kept, so that they
/// can be checked before anything picks one copy.
struct Entries<V>(Vec<(String, V)>);

impl<V> Entries<V> {
    fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for Members<V> {
            type Value = Entries<V>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object (batches are not part of MCP)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, V>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(Members(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `line` and returns what is forwarded, or the refusal's
    /// message.
    fn check(line: &str, expected: Result<&str, &str>) {
        let got = match client(line.as_bytes(), DEFAULT_MAX_MESSAGE) {
            Ok(ClientMessage::Request(request)) => {
                Ok(String::from_utf8(request.canonical).unwrap())
            }
            Ok(other) => Ok(format!("{other:?}")),
            Err(error) => Err(error.message),
        };
        match expected {
            Ok(forwarded) => assert_eq!(got, Ok(forwarded.to_owned()), "{line}"),
            Err(fragment) => {
                let message = got.expect_err(line);
                assert!(message.contains(fragment), "{line}: {message}");
            }
        }
    }

    #[test]
    fn requests_are_forwarded_in_canonical_form() {
        check(
            r#" { "method" : "tools/call", "params": {"name": "echo", "arguments": {"z": 1, "a": [true, null]}}, "id": 7, "jsonrpc": "2.0" } "#,
            Ok(
                r#"{"id":7,"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"a":[true,null],"z":1},"name":"echo"}}"#,
            ),
        );
        // A duplicate deep in the arguments is resolved once, here: the
        // server sees the copy Custody digested and decided on.
        check(
            r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo","arguments":{"m":"x","m":"y"}}}"#,
            Ok(
                r#"{"id":"a","jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"m":"y"},"name":"echo"}}"#,
            ),
        );
    }

    #[test]
    fn repeated_and_case_variant_keys_are_refused() {
        let refused = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#,
                "`method` appears more than once",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
                "`id` appears more than once",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call"}"#,
                "`Method` is a case variant of `method`",
            ),
            (
                r#"{"jsonrpc":"2.0","ID":1,"method":"ping"}"#,
                "`ID` is a case variant of `id`",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{},"PARAMS":{}}"#,
                "`PARAMS` is a case variant of `params`",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"rm"}}"#,
                "`params.name` appears more than once",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"rm"}}"#,
                "`params.Name` is a case variant of `params.name`",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","NAME":"rm"}}"#,
                "`params.NAME` is a case variant of `params.name`",
            ),
        ];
        for (line, why) in refused {
            check(line, Err(why));
            let error = client(line.as_bytes(), DEFAULT_MAX_MESSAGE).unwrap_err();
            assert_eq!(error.code, INVALID_REQUEST, "{line}");
        }
    }

    #[test]
    fn a_refusal_is_answered_to_the_request_s_id() {
        let error = client(
            br#"{"jsonrpc":"2.0","id":"x-1","method":"a","method":"b"}"#,
            DEFAULT_MAX_MESSAGE,
        )
        .unwrap_err();
        let answer: Value = serde_json::from_slice(&error.response()).unwrap();
        assert_eq!(answer["id"], "x-1");
        assert_eq!(answer["error"]["code"], INVALID_REQUEST);
    }

    #[test]
    fn malformed_messages_are_refused() {
        check("{not json", Err("not JSON"));
        check(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            Err("not JSON"),
        );
        check(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, Err("2.0"));
        check(r#"{"jsonrpc":"2.0","id":1,"method":7}"#, Err("string"));
        check(
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            Err("string or an integer"),
        );
        check(r#"{"jsonrpc":"2.0","id":1}"#, Err("neither"));
        let error = client(b"{not json", DEFAULT_MAX_MESSAGE).unwrap_err();
        assert_eq!(error.code, PARSE_ERROR);
    }

    #[test]
    fn oversized_messages_are_refused_before_parsing() {
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"m":"{}"}}}}}}"#,
            "x".repeat(100)
        );
        assert!(client(line.as_bytes(), line.len()).is_ok());
        let error = client(line.as_bytes(), line.len() - 1).unwrap_err();
        assert_eq!(error.code, INVALID_REQUEST);
        assert!(error.message.contains("exceeds"));
    }

    #[test]
    fn notifications_and_responses_are_told_apart() {
        check(
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#,
            Ok(
                r#"Notification { method: "notifications/cancelled", params: Some(Object {"requestId": Number(3)}) }"#,
            ),
        );
        check(
            r#"{"jsonrpc":"2.0","id":4,"result":{}}"#,
            Ok(r#"Response { id: Id(Number(4)) }"#),
        );
    }

    #[test]
    fn server_messages_are_classified() {
        assert_eq!(
            server(br#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#),
            ServerMessage::Request(Id(Value::from(1)))
        );
        assert_eq!(
            server(br#"{"jsonrpc":"2.0","id":"s","result":{"isError":true}}"#),
            ServerMessage::Response {
                id: Id(Value::from("s")),
                error: None,
                tool_error: true
            }
        );
        assert_eq!(
            server(br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#),
            ServerMessage::Notification
        );
        assert_eq!(server(b"garbage"), ServerMessage::Other);
    }
}
