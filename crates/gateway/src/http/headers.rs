//! The routing headers of the 2026-07-28 revision, checked against the
//! body they travel with.
//!
//! A request over HTTP says what it is twice: `Mcp-Method` and `Mcp-Name`
//! (and `MCP-Protocol-Version`) for proxies and load balancers that do not
//! read bodies, and the JSON-RPC body for the server. A request whose two
//! readings differ would let one reader route (or authorize) a call the
//! other does not see, so it is refused with `-32020` before anything else
//! reads it. A stateless request (one whose `params._meta` names its
//! protocol version) must carry the headers; a request of the 2025-11-25
//! era may, and is held to them when it does.

use axum::http::HeaderMap;
use base64::Engine as _;
use serde_json::Value;

/// JSON-RPC: the HTTP headers disagree with the body.
pub const HEADER_MISMATCH: i64 = -32020;

/// The per-request protocol version of the 2026-07-28 revision, in
/// `params._meta`.
pub const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// `Mcp-Method`.
pub const METHOD: &str = "mcp-method";
/// `Mcp-Name`.
pub const NAME: &str = "mcp-name";
/// `MCP-Protocol-Version`.
pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";

/// The body member `Mcp-Name` mirrors for `method`, if it has one.
pub fn named_by(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        _ => None,
    }
}

/// The protocol version a stateless request carries in `params._meta`.
pub fn envelope_version(params: Option<&Value>) -> Option<&str> {
    params?.get("_meta")?.get(PROTOCOL_VERSION_META)?.as_str()
}

/// Checks the routing headers of one message (`method`, `params`) against
/// it; `Err` says which disagrees.
pub fn check(headers: &HeaderMap, method: &str, params: Option<&Value>) -> Result<(), String> {
    let one = |name: &str| -> Result<Option<&str>, String> {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(format!("the {name} header is given more than once"));
        }
        first
            .map(|v| {
                v.to_str()
                    .map_err(|_| format!("the {name} header is not visible ASCII"))
            })
            .transpose()
    };
    let envelope = envelope_version(params);
    let stateless = envelope.is_some();
    match one(METHOD)? {
        Some(named) if named != method => {
            return Err(format!(
                "the {METHOD} header (`{named}`) does not match the body's method (`{method}`)"
            ));
        }
        None if stateless => {
            return Err(format!(
                "a stateless request must carry the {METHOD} header"
            ));
        }
        _ => {}
    }
    if let Some(member) = named_by(method) {
        let body = params.and_then(|p| p.get(member)).and_then(Value::as_str);
        match (one(NAME)?, body) {
            (Some(header), body) => {
                let decoded = decode_value(header)
                    .ok_or_else(|| format!("the {NAME} header's base64 value is not valid"))?;
                if Some(decoded.as_str()) != body {
                    return Err(format!(
                        "the {NAME} header does not match the body's `params.{member}`"
                    ));
                }
            }
            (None, Some(_)) if stateless => {
                return Err(format!(
                    "a stateless `{method}` must carry the {NAME} header"
                ));
            }
            (None, _) => {}
        }
    }
    if let Some(version) = envelope
        && one(PROTOCOL_VERSION)? != Some(version)
    {
        return Err(format!(
            "the {PROTOCOL_VERSION} header does not match the request's `_meta` protocol version"
        ));
    }
    Ok(())
}

/// A header value as sent: itself when it is visible ASCII without
/// surrounding space, else the `=?base64?...?=` form.
pub fn encode_value(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !value.starts_with("=?base64?");
    if plain {
        value.to_owned()
    } else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        format!("=?base64?{encoded}?=")
    }
}

/// A header value as meant: the `=?base64?...?=` form decoded.
pub fn decode_value(header: &str) -> Option<String> {
    match header
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
        None => Some(header.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn stateless_requests_must_agree_with_their_headers() {
        let params = json!({"name": "echo", "_meta": {PROTOCOL_VERSION_META: "2026-07-28"}});
        let good = [
            (METHOD, "tools/call"),
            (NAME, "echo"),
            (PROTOCOL_VERSION, "2026-07-28"),
        ];
        assert_eq!(check(&headers(&good), "tools/call", Some(&params)), Ok(()));
        let encoded = encode_value("echo");
        assert_eq!(encoded, "echo");
        let b64 = [
            (METHOD, "tools/call"),
            (NAME, "=?base64?ZWNobw==?="),
            (PROTOCOL_VERSION, "2026-07-28"),
        ];
        assert_eq!(check(&headers(&b64), "tools/call", Some(&params)), Ok(()));
        let cases: [&[(&str, &str)]; 6] = [
            &[(NAME, "echo"), (PROTOCOL_VERSION, "2026-07-28")],
            &[
                (METHOD, "tools/list"),
                (NAME, "echo"),
                (PROTOCOL_VERSION, "2026-07-28"),
            ],
            &[(METHOD, "tools/call"), (PROTOCOL_VERSION, "2026-07-28")],
            &[
                (METHOD, "tools/call"),
                (NAME, "delete_everything"),
                (PROTOCOL_VERSION, "2026-07-28"),
            ],
            &[(METHOD, "tools/call"), (NAME, "echo")],
            &[
                (METHOD, "tools/call"),
                (METHOD, "tools/call"),
                (NAME, "echo"),
                (PROTOCOL_VERSION, "2026-07-28"),
            ],
        ];
        for case in cases {
            assert!(
                check(&headers(case), "tools/call", Some(&params)).is_err(),
                "{case:?}"
            );
        }
    }

    #[test]
    fn session_requests_are_held_to_the_headers_they_carry() {
        let params = json!({"name": "echo"});
        assert_eq!(
            check(&HeaderMap::new(), "tools/call", Some(&params)),
            Ok(())
        );
        let wrong = headers(&[(METHOD, "tools/call"), (NAME, "other")]);
        assert!(check(&wrong, "tools/call", Some(&params)).is_err());
        let uri = json!({"uri": "file:///tmp/ü.txt"});
        let encoded = encode_value("file:///tmp/ü.txt");
        assert!(encoded.starts_with("=?base64?"), "{encoded}");
        let named = headers(&[(NAME, &encoded)]);
        assert_eq!(check(&named, "resources/read", Some(&uri)), Ok(()));
        assert_eq!(decode_value("=?base64?!!?="), None);
    }
}
