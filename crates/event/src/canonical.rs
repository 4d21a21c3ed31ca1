//! Canonical JSON: object members sorted by key at every depth, no
//! whitespace. Two values that differ only in member order give the same
//! bytes, so digests over them (of a call's arguments, of a tool's
//! definition) do not depend on how a client happened to write them.
//!
//! `serde_json::Map` keeps insertion order in this workspace (Cedar needs
//! serde_json's `preserve_order`, and Cargo unifies the feature), so
//! anything hashed or compared as bytes goes through here.

use serde_json::Value;

/// `value` as canonical JSON bytes.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (index, (key, member)) in sorted.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write(member, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        _ => scalar(value, out),
    }
}

fn scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing a string, number, bool or null into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_are_sorted_at_every_depth_and_arrays_keep_their_order() {
        let one: Value =
            serde_json::from_str(r#"{"b":{"y":1,"x":[{"d":1,"c":2}]},"a":"\"q\""}"#).unwrap();
        let other: Value =
            serde_json::from_str(r#"{"a":"\"q\"","b":{"x":[{"c":2,"d":1}],"y":1}}"#).unwrap();
        let text = r#"{"a":"\"q\"","b":{"x":[{"c":2,"d":1}],"y":1}}"#;
        assert_eq!(String::from_utf8(to_vec(&one)).unwrap(), text);
        assert_eq!(to_vec(&one), to_vec(&other));
        assert_ne!(to_vec(&json!([1, 2])), to_vec(&json!([2, 1])));
    }
}
