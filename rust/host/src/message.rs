//! Checks on the JSON that crosses the bridge in either direction.
//!
//! MCP's stdio transport carries one JSON-RPC message per line, and SSE ends
//! a `data:` field at CR or LF. Both sides are therefore given messages
//! without line breaks: in valid JSON a raw CR or LF can only be whitespace
//! between tokens (inside strings they must be escaped), so replacing them
//! with spaces changes nothing a JSON parser sees.

use crate::scan::{self, Members, Scanned, Top};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The JSON-RPC ids a message carries, as their JSON text (`1`, `"a"`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// Requests: a `method` and an `id`; each expects one response.
    pub requests: Vec<String>,
    /// Responses: an `id` and no `method`.
    pub responses: Vec<String>,
    /// Whether the text has raw line breaks (see [`flatten_line_breaks`]).
    pub line_breaks: bool,
}

/// The members of a JSON-RPC message that say what it is.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<IgnoredAny>,
}

impl Envelope<'_> {
    fn sort_into(self, ids: &mut Ids) {
        let Some(id) = self.id else { return };
        let id = id.get().to_owned();
        match self.method {
            Some(_) => ids.requests.push(id),
            None => ids.responses.push(id),
        }
    }
}

/// Checks that `bytes` is one JSON object or array (a JSON-RPC message or a
/// batch) in UTF-8, and returns the ids it carries. The error says why not,
/// for the client or the log.
pub fn inspect(bytes: &[u8]) -> Result<Ids, String> {
    match scan::scan(bytes) {
        Some(scanned) => Ok(ids_of(bytes, scanned)),
        None => inspect_with_serde(bytes),
    }
}

fn ids_of(bytes: &[u8], scanned: Scanned) -> Ids {
    let mut ids = Ids { line_breaks: scanned.line_breaks, ..Ids::default() };
    let mut sort = |m: Members| {
        let Some(id) = m.id else { return };
        // The scanner accepted the text, so this is UTF-8.
        let id = String::from_utf8(bytes[id].to_vec())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        match m.method {
            Some(_) => ids.requests.push(id),
            None => ids.responses.push(id),
        }
    };
    match scanned.top {
        Top::Object(m) => sort(m),
        Top::Array(batch) => batch.into_iter().for_each(sort),
    }
    ids
}

/// [`inspect`] for what the scanner left to serde_json, which decides and
/// words the error.
fn inspect_with_serde(bytes: &[u8]) -> Result<Ids, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not valid UTF-8 (at byte {})", e.valid_up_to()))?;
    let mut ids = Ids { line_breaks: bytes.contains(&b'\n') || bytes.contains(&b'\r'), ..Ids::default() };
    match text.trim_start().as_bytes().first() {
        Some(b'{') => {
            let one: Envelope = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
            one.sort_into(&mut ids);
        }
        Some(b'[') => {
            let batch: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
            // Only objects are messages: serde would read an array as the
            // fields of an Envelope too ([[1], "m"] as a request with id [1]).
            for item in batch.into_iter().filter(|item| item.get().starts_with('{')) {
                let one: Envelope = serde_json::from_str(item.get()).map_err(|e| format!("not valid JSON: {e}"))?;
                one.sort_into(&mut ids);
            }
        }
        Some(_) => {
            serde_json::from_str::<IgnoredAny>(text).map_err(|e| format!("not valid JSON: {e}"))?;
            return Err("not a JSON object or array".into());
        }
        None => return Err("empty".into()),
    }
    Ok(ids)
}

/// Checks a message without collecting its ids (see [`inspect`]).
pub fn check(bytes: &[u8]) -> Result<(), String> {
    inspect(bytes).map(drop)
}

/// The response a client gets for request `id` that its backend will never
/// answer, so a client waiting for it does not wait forever.
pub fn no_response_error(id: &str, why: &str) -> Vec<u8> {
    let message = format!("the MCP server ended before responding ({why})");
    let mut out = Vec::with_capacity(id.len() + message.len() + 64);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(br#","error":{"code":-32000,"message":"#);
    out.extend_from_slice(serde_json::Value::from(message).to_string().as_bytes());
    out.extend_from_slice(b"}}");
    out
}

/// Replaces CR and LF with spaces (see the module documentation).
pub fn flatten_line_breaks(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
}

/// `value` as JSON text: written straight into bytes, which costs less
/// than `Display`'s way through a formatter.
pub fn to_bytes(value: &serde_json::Value) -> Vec<u8> {
    // A `Value` always serializes: its keys are strings, its numbers finite.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The `notifications/stderr` message that carries one stderr line of the
/// backend to the client (the shape APISIX's own bridge uses). Bytes that
/// are not UTF-8 become U+FFFD.
pub fn stderr_notification(line: &[u8]) -> Vec<u8> {
    let content = String::from_utf8_lossy(line);
    let message = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/stderr",
        "params": { "content": content },
    });
    to_bytes(&message)
}

/// The longest request id the bridge keeps track of: it holds each until
/// its response passes, so ids are bounded in size as well as in number.
pub const MAX_ID_BYTES: usize = 512;

/// A short, printable excerpt of `bytes` for log messages.
pub fn excerpt(bytes: &[u8]) -> String {
    printable(bytes, 120)
}

/// `bytes` as text safe to put in a log line: at most `max` bytes of it,
/// with control characters (escape sequences, line breaks) written as
/// `\xNN` and bytes that are not UTF-8 as U+FFFD.
pub fn printable(bytes: &[u8], max: usize) -> String {
    use std::fmt::Write as _;
    let shown = &bytes[..bytes.len().min(max)];
    let mut s = String::with_capacity(shown.len());
    for c in String::from_utf8_lossy(shown).chars() {
        if c.is_control() {
            let _ = write!(s, "\\x{:02x}", c as u32);
        } else {
            s.push(c);
        }
    }
    if bytes.len() > max {
        s.push_str("...");
    }
    s
}

/// What the scanner accepts, serde_json accepts too, with the same ids; a
/// text it does not accept gets serde_json's answer. Panics otherwise (the
/// property test and the fuzz target `jsonrpc` hold the scanner to it).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn assert_scanner_agrees_with_serde(text: &[u8]) {
    let slow = inspect_with_serde(text);
    match scan::scan(text) {
        Some(top) => {
            assert!(
                serde_json::from_slice::<serde_json::Value>(text).is_ok(),
                "the scanner accepted what serde_json refuses"
            );
            assert_eq!(Ok(ids_of(text, top)), slow, "the scanner found other ids than serde_json");
        }
        None => assert_eq!(inspect(text), slow, "a text the scanner left to serde_json got another answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn objects_and_batches_pass_and_everything_else_is_named() {
        assert!(check(br#"{"jsonrpc":"2.0","method":"ping","id":1}"#).is_ok());
        assert!(check(b" [ {\"jsonrpc\":\"2.0\"} ]\n").is_ok());
        assert!(check(b"42").unwrap_err().contains("object or array"));
        assert!(check(b"\"text\"").unwrap_err().contains("object or array"));
        assert!(check(b"hello").unwrap_err().contains("not valid JSON"), "not JSON at all");
        assert!(check(b"<html>").unwrap_err().contains("not valid JSON"));
        assert!(check(b"   ").unwrap_err().contains("empty"));
        assert!(check(b"{\"a\":").unwrap_err().contains("not valid JSON"));
        assert!(check(b"{\"a\":\"\xff\"}").unwrap_err().contains("UTF-8"));
        assert!(check(b"{\"a\":1} {\"b\":2}").unwrap_err().contains("not valid JSON"), "two messages");
    }

    /// A fuzz find: serde read an array in a batch as the fields of a
    /// message, so `[[[1], "m"]]` held a request with id `[1]`, which a
    /// client would get an error response for.
    #[test]
    fn only_objects_in_a_batch_are_messages() {
        assert_eq!(inspect(br#"[[[1], "m"], [2, null]]"#).expect("JSON"), Ids::default());
        let ids = inspect(br#"[[[1], "m"], {"id": 3, "method": "m"}, 4, {"id": 5, "result": {}}]"#).expect("JSON");
        assert_eq!((ids.requests, ids.responses), (vec!["3".to_string()], vec!["5".to_string()]));
        assert!(check(b"[[1], ").unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn ids_of_requests_and_responses_are_told_apart() {
        let ids = inspect(br#"{"jsonrpc":"2.0","method":"tools/call","id":"a\"b","params":{"id":9}}"#).expect("ok");
        assert_eq!(ids, Ids { requests: vec![r#""a\"b""#.into()], ..Ids::default() });
        let ids = inspect(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#).expect("ok");
        assert_eq!(ids, Ids { responses: vec!["7".into()], ..Ids::default() });
        let ids = inspect(br#"[{"method":"a","id":1},{"method":"n"},{"id":2,"error":{}}]"#).expect("ok");
        assert_eq!(ids, Ids { requests: vec!["1".into()], responses: vec!["2".into()], line_breaks: false });
        assert_eq!(inspect(br#"{"method":"notifications/x"}"#).expect("ok"), Ids::default());
        assert_eq!(inspect(br#"{"method":"x","id":null}"#).expect("ok"), Ids::default());
        assert_eq!(inspect(b"[1, 2]").expect("a JSON array still passes"), Ids::default());
    }

    /// JSON texts near what clients and servers send: messages with the
    /// members of interest, nested values, escapes, numbers of every kind,
    /// pretty or compact, then maybe damaged.
    fn near_json() -> impl Strategy<Value = Vec<u8>> {
        use serde_json::Value;
        let leaf = prop_oneof![
            2 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::from),
            4 => (-99999i64..99999).prop_map(Value::from),
            1 => any::<u64>().prop_map(Value::from),
            1 => (-999i32..999).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            4 => "[a-z\\\"/ é\u{1F600}\u{7}\n]{0,12}".prop_map(Value::from),
        ];
        let tree = leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                prop::collection::vec(("(id|method|params|result|error|jsonrpc|x|\\u0069d)", inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        });
        let key = "(id|method|params|result|error|jsonrpc|x|\\\\u0069d)";
        let message = prop::collection::vec((key, tree.clone()), 0..6)
            .prop_map(|members| Value::Object(members.into_iter().collect()));
        let top = prop_oneof![4 => message.clone(), 1 => prop::collection::vec(message, 0..4).prop_map(Value::from), 1 => tree];
        let text = (top, any::<bool>()).prop_map(|(v, pretty)| {
            if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap_or_default()
        });
        let damage = prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 0..3);
        (text, damage).prop_map(|(mut text, damage)| {
            for (at, how, byte) in damage {
                if text.is_empty() {
                    break;
                }
                let i = at.index(text.len());
                const SPECIAL: &[u8] = b"{}[]\",:\\ \nu0e-.1";
                let special = SPECIAL[byte as usize % SPECIAL.len()];
                match how {
                    0 => drop(text.remove(i)),
                    1 => text.insert(i, special),
                    2 => text[i] = byte,
                    _ => {
                        let dup = text[i..].to_vec();
                        text.extend_from_slice(&dup);
                    }
                }
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// What the scanner accepts, serde_json accepts too, with the same
        /// ids; a message it does not accept gets serde_json's answer.
        #[test]
        fn the_scanner_agrees_with_serde_json(text in prop_oneof![near_json(), prop::collection::vec(any::<u8>(), 0..40)]) {
            assert_scanner_agrees_with_serde(&text);
        }
    }

    #[test]
    fn no_response_errors_carry_the_id_verbatim() {
        let e = no_response_error(r#""x\"y""#, "backend \"crashed\"");
        let v: serde_json::Value = serde_json::from_slice(&e).expect("valid JSON");
        assert_eq!(v["id"], "x\"y");
        assert_eq!(v["error"]["code"], -32000);
        assert!(v["error"]["message"].as_str().expect("text").contains("backend \"crashed\""));
    }

    #[test]
    fn raw_line_breaks_inside_strings_are_rejected_so_flattening_cannot_alter_content() {
        assert!(check(b"{\"a\":\"x\ny\"}").is_err());
        assert!(check(b"{\"a\":\"x\ry\"}").is_err());
        let mut pretty = b"{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1,\n2]\n}".to_vec();
        assert!(check(&pretty).is_ok());
        flatten_line_breaks(&mut pretty);
        assert!(!pretty.contains(&b'\n') && !pretty.contains(&b'\r'));
        let before: serde_json::Value =
            serde_json::from_slice(b"{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1,\n2]\n}").expect("parse");
        let after: serde_json::Value = serde_json::from_slice(&pretty).expect("parse");
        assert_eq!(before, after);
    }

    #[test]
    fn log_text_carries_no_control_characters() {
        assert_eq!(printable(b"red \x1b[31m\r\nend", 100), "red \\x1b[31m\\x0d\\x0aend");
        assert_eq!(printable(b"abcdef", 3), "abc...");
        assert_eq!(printable(b"bad \xff", 100), "bad \u{fffd}");
        assert_eq!(excerpt(&[b'a'; 200]).len(), 123);
    }

    #[test]
    fn stderr_lines_become_valid_notifications_whatever_they_contain() {
        let n = stderr_notification(b"quote \" backslash \\ ctrl \x01 bad \xff");
        let v: serde_json::Value = serde_json::from_slice(&n).expect("valid JSON");
        assert_eq!(v["method"], "notifications/stderr");
        assert_eq!(v["params"]["content"], "quote \" backslash \\ ctrl \u{1} bad \u{fffd}");
        assert!(!n.contains(&b'\n'));
    }
}
