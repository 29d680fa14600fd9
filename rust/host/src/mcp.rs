//! JSON-RPC messages as the Streamable HTTP transport handles them: what a
//! message is, its id and method, and the error responses the bridge writes
//! itself. Messages of the HTTP+SSE transport are only checked (see
//! `message`); these are parsed, because their ids are rewritten and their
//! results completed.

use crate::message;
use crate::scan::{self, Members, Scanned, Top};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::ops::Range;

/// The protocol revisions of the sessionful leg (the client's `initialize`
/// picks one), newest first.
pub const LEGACY_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The stateless revision.
pub const MODERN_VERSION: &str = "2026-07-28";

/// Every revision the endpoint serves, newest first (`server/discover`'s
/// `supportedVersions`).
pub fn supported_versions() -> Vec<&'static str> {
    let mut all = vec![MODERN_VERSION];
    all.extend_from_slice(&LEGACY_VERSIONS);
    all
}

/// JSON-RPC error codes the bridge answers with.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Generic server error, as the SDKs use it for transport refusals.
    pub const SERVER_ERROR: i64 = -32000;
    pub const SESSION_NOT_FOUND: i64 = -32001;
    /// The legacy "resource not found", -32602 since 2026-07-28.
    pub const LEGACY_RESOURCE_NOT_FOUND: i64 = -32002;
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const MISSING_CAPABILITY: i64 = -32021;
    pub const UNSUPPORTED_VERSION: i64 = -32022;
}

/// Whether `method` is a request a server makes of its client in the
/// middle of a call (2026-07-28 turns them into `input_required` results).
pub fn asks_client(method: &str) -> bool {
    matches!(method, "elicitation/create" | "sampling/createMessage" | "roots/list")
}

/// What a message is.
#[derive(Debug, PartialEq)]
pub enum Shape {
    Request { id: Value, method: String },
    Notification { method: String },
    Response { id: Value },
}

/// Parses one JSON-RPC message (not a batch). The error says what is wrong,
/// for the client.
pub fn parse(bytes: &[u8]) -> Result<(Value, Shape), (i64, String)> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| (code::PARSE_ERROR, format!("message is not valid UTF-8 (at byte {})", e.valid_up_to())))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| (code::PARSE_ERROR, format!("message is not valid JSON: {e}")))?;
    let shape = shape(&value)?;
    Ok((value, shape))
}

/// The shape of a parsed message.
pub fn shape(value: &Value) -> Result<Shape, (i64, String)> {
    let invalid = |why: &str| (code::INVALID_REQUEST, why.to_string());
    let Some(obj) = value.as_object() else {
        return Err(match value.is_array() {
            true => invalid("batches are not supported on this endpoint: send one message per request"),
            false => invalid("a message must be a JSON object"),
        });
    };
    let id = obj.get("id").filter(|id| !id.is_null()).cloned();
    if let Some(id) = &id {
        if !(id.is_string() || id.is_number()) {
            return Err(invalid("a request id must be a string or a number"));
        }
    }
    match (obj.get("method"), id) {
        (Some(Value::String(m)), Some(id)) => Ok(Shape::Request { id, method: m.clone() }),
        (Some(Value::String(m)), None) => Ok(Shape::Notification { method: m.clone() }),
        (Some(_), _) => Err(invalid("method must be a string")),
        (None, Some(id)) if obj.contains_key("result") || obj.contains_key("error") => Ok(Shape::Response { id }),
        (None, _) => Err(invalid("a message needs a method, or an id with a result or an error")),
    }
}

/// One JSON-RPC message (not a batch) as text, and where its members are:
/// what a session needs of a message, without building a tree of it. The
/// text holds no raw line breaks (see `message::flatten_line_breaks`).
#[derive(Debug)]
pub struct Message {
    text: Vec<u8>,
    members: Members,
}

/// What a [`Message`] is: [`Shape`] with the id as its JSON text.
#[derive(Debug, PartialEq)]
pub enum Form<'a> {
    Request { id: &'a str, method: Cow<'a, str> },
    Notification { method: Cow<'a, str> },
    Response { id: &'a str },
}

impl Message {
    /// Parses one message; the errors are [`parse`]'s, word for word.
    pub fn parse(bytes: Vec<u8>) -> Result<Message, (i64, String)> {
        Message::try_parse(bytes).map_err(|(_, e)| e)
    }

    /// [`Message::parse`] that gives the bytes back with its error.
    pub fn try_parse(bytes: Vec<u8>) -> Result<Message, (Vec<u8>, (i64, String))> {
        match scan::scan(&bytes) {
            Some(Scanned { top: Top::Object(members), line_breaks }) => {
                let mut text = bytes;
                if line_breaks {
                    message::flatten_line_breaks(&mut text);
                }
                let message = Message { text, members };
                match message.form() {
                    Ok(_) => Ok(message),
                    Err(e) => Err((message.text, e)),
                }
            }
            // Left to serde_json, which decides and words the error.
            _ => match parse(&bytes) {
                Ok((value, _)) => Message::of_value(&value).map_err(|e| (bytes, e)),
                Err(e) => Err((bytes, e)),
            },
        }
    }

    /// The message `value` is.
    pub fn of_value(value: &Value) -> Result<Message, (i64, String)> {
        let text = message::to_bytes(value);
        match scan::scan_serialized(&text) {
            Some(Scanned { top: Top::Object(members), .. }) => {
                let message = Message { text, members };
                message.form()?;
                Ok(message)
            }
            _ => Err((code::INVALID_REQUEST, "a message must be a JSON object".into())),
        }
    }

    pub fn text(&self) -> &[u8] {
        &self.text
    }

    pub fn into_text(self) -> Vec<u8> {
        self.text
    }

    /// As a tree, for what is done rarely.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.text).unwrap_or(Value::Null)
    }

    fn raw(&self, range: &Range<usize>) -> &str {
        // The scanner accepted the text: it is UTF-8.
        std::str::from_utf8(&self.text[range.clone()]).unwrap_or("null")
    }

    /// What it is, by [`shape`]'s rules.
    pub fn form(&self) -> Result<Form<'_>, (i64, String)> {
        let invalid = |why: &str| (code::INVALID_REQUEST, why.to_string());
        let m = &self.members;
        let id = m.id.as_ref().map(|r| self.raw(r));
        if id.is_some_and(|id| !(id.starts_with('"') || id.starts_with('-') || id.as_bytes()[0].is_ascii_digit())) {
            return Err(invalid("a request id must be a string or a number"));
        }
        let method = match &m.method {
            None => None,
            Some(r) if self.text[r.start] == b'"' => Some(match scan::plain_str(&self.text, r) {
                Some(plain) => Cow::Borrowed(plain),
                None => Cow::Owned(serde_json::from_slice::<String>(&self.text[r.clone()]).unwrap_or_default()),
            }),
            Some(_) => return Err(invalid("method must be a string")),
        };
        match (method, id) {
            (Some(method), Some(id)) => Ok(Form::Request { id, method }),
            (Some(method), None) => Ok(Form::Notification { method }),
            (None, Some(id)) if m.result || m.error => Ok(Form::Response { id }),
            (None, _) => Err(invalid("a message needs a method, or an id with a result or an error")),
        }
    }

    /// The text with its id replaced by `id` (JSON text).
    pub fn with_id(&self, id: &[u8]) -> Vec<u8> {
        let Some(r) = &self.members.id else { return self.text.clone() };
        let mut out = Vec::with_capacity(self.text.len() + id.len());
        out.extend_from_slice(&self.text[..r.start]);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.text[r.end..]);
        out
    }

    /// `params.<path...>` as canonical JSON text (serde_json's; `null` for
    /// null), if present.
    pub fn param(&self, path: &[&str]) -> Option<String> {
        let mut at = self.members.params.clone();
        for key in path {
            match scan::member(&self.text, at?, key) {
                Some(found) => at = found,
                // Not certain: ask the tree.
                None => {
                    let value = self.value();
                    let found = path.iter().try_fold(value.get("params")?, |v, k| v.get(k))?;
                    return Some(found.to_string());
                }
            }
        }
        at.map(|r| canonical(&self.text[r]))
    }
}

/// JSON text as serde_json writes it, so that two texts of one value
/// compare equal: most ids and tokens already are.
pub fn canonical(raw: &[u8]) -> String {
    let plain_string = raw.len() >= 2 && raw[0] == b'"' && raw[1..].iter().all(|&c| c >= 0x20 && c != b'\\');
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    let plain_integer = !digits.is_empty()
        && digits.len() < 16
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || raw == b"0");
    match (plain_string || plain_integer, std::str::from_utf8(raw)) {
        (true, Ok(text)) => text.to_owned(),
        _ => serde_json::from_slice::<Value>(raw).map(|v| v.to_string()).unwrap_or_default(),
    }
}

/// A JSON-RPC error response.
pub fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// `error` as bytes.
pub fn error_bytes(id: &Value, code: i64, message: &str, data: Option<Value>) -> Vec<u8> {
    message::to_bytes(&error(id, code, message, data))
}

/// `params._meta` of a message, if it has one.
pub fn meta(message: &Value) -> Option<&Map<String, Value>> {
    message.get("params")?.get("_meta")?.as_object()
}

/// The error code of an error response.
pub fn error_code(message: &Value) -> Option<i64> {
    message.get("error")?.get("code")?.as_i64()
}

/// Whether a message is a response with `isError: true` in its result.
pub fn is_tool_error(message: &Value) -> bool {
    message.get("result").and_then(|r| r.get("isError")).and_then(Value::as_bool) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_told_apart_and_bad_ones_named() {
        let (_, s) = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).expect("request");
        assert_eq!(s, Shape::Request { id: json!(1), method: "tools/list".into() });
        let (_, s) = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).expect("notification");
        assert_eq!(s, Shape::Notification { method: "notifications/initialized".into() });
        let (_, s) = parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).expect("response");
        assert_eq!(s, Shape::Response { id: json!("a") });
        assert_eq!(parse(b"{").unwrap_err().0, code::PARSE_ERROR);
        assert_eq!(parse(b"\xff").unwrap_err().0, code::PARSE_ERROR);
        let (c, why) = parse(b"[{}]").unwrap_err();
        assert_eq!(c, code::INVALID_REQUEST);
        assert!(why.contains("batches"), "{why}");
        assert!(parse(br#"{"id":{},"method":"x"}"#).unwrap_err().1.contains("string or a number"));
        assert!(parse(br#"{"id":1}"#).unwrap_err().1.contains("needs a method"));
        assert!(parse(br#"{"method":3}"#).is_err());
        let (_, s) = parse(br#"{"method":"n","id":null}"#).expect("a null id is a notification");
        assert_eq!(s, Shape::Notification { method: "n".into() });
    }

    #[test]
    fn messages_as_text_agree_with_the_tree() {
        let form = |t: &str| Message::parse(t.as_bytes().to_vec()).map(|m| format!("{:?}", m.form().expect("form")));
        assert_eq!(
            form(r#"{"id":1,"method":"tools/list"}"#).expect("ok"),
            r#"Request { id: "1", method: "tools/list" }"#
        );
        assert_eq!(form(r#"{"id":"a","method":"x\/y"}"#).expect("ok"), r#"Request { id: "\"a\"", method: "x/y" }"#);
        assert_eq!(form(r#"{"method":"n","id":null}"#).expect("ok"), r#"Notification { method: "n" }"#);
        assert_eq!(form(r#"{"id":2,"error":{}}"#).expect("ok"), r#"Response { id: "2" }"#);
        // Errors are parse()'s, whichever path found them.
        for bad in
            ["{", "[{}]", r#"{"id":{},"method":"x"}"#, r#"{"id":1}"#, r#"{"method":3}"#, "\u{ff}", r#"{"\u0069d":1}"#]
        {
            assert_eq!(Message::parse(bad.as_bytes().to_vec()).map(drop), parse(bad.as_bytes()).map(drop), "{bad}");
        }
        // What the scanner leaves to serde_json still becomes a message.
        let m = Message::parse(br#"{"\u0069d":1e2,"method":"a","params":{"_meta":{"progressToken":1.5e3}}}"#.to_vec())
            .expect("parse");
        assert_eq!(m.form().expect("form"), Form::Request { id: "100.0", method: "a".into() });
        assert_eq!(m.param(&["_meta", "progressToken"]).as_deref(), Some("1500.0"));
        let m = Message::parse(
            b"{\n\"id\":7,\r\n\"method\":\"a\",\"params\":{\"_meta\":{\"progressToken\":\"t\"}}}".to_vec(),
        )
        .expect("parse");
        assert!(!m.text().contains(&b'\n') && !m.text().contains(&b'\r'));
        assert_eq!(
            m.with_id(b"42"),
            b"{ \"id\":42,  \"method\":\"a\",\"params\":{\"_meta\":{\"progressToken\":\"t\"}}}"
        );
        assert_eq!(m.param(&["_meta", "progressToken"]).as_deref(), Some("\"t\""));
        assert_eq!(m.param(&["_meta", "other"]), None);
        assert_eq!(m.param(&["_meta", "progressToken", "deeper"]), None);
        let m = Message::parse(br#"{"method":"a","params":{"_meta":{"k":null}}}"#.to_vec()).expect("parse");
        assert_eq!(m.param(&["_meta", "k"]).as_deref(), Some("null"));
        for (raw, canon) in [
            ("12", "12"),
            ("-3", "-3"),
            ("0", "0"),
            ("\"a\"", "\"a\""),
            ("1.50", "1.5"),
            ("\"\\u0061\"", "\"a\""),
            ("007", ""),
        ] {
            assert_eq!(canonical(raw.as_bytes()), canon, "{raw}");
        }
    }

    /// Fuzz finds: a message the scanner leaves to serde_json was written
    /// again by serde_json and scanned once more, which refused a top-level
    /// name it had escaped (`"\u0000x"`, `"a\"b"`) and nesting past the
    /// scanner's own limit: valid requests got 400 "a message must be a
    /// JSON object".
    #[test]
    fn any_message_serde_json_accepts_is_a_message() {
        let deep = format!("{}1{}", "[".repeat(120), "]".repeat(120));
        for text in [
            r#"{"\u0069d":1,"method":"a","\u0000params":{"_meta":{"progressToken":1.5e3}}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":1e0,"method":"ping","a\"b":1,"c\\d":2}"#.to_string(),
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"deep":{deep}}}}}"#),
        ] {
            let (_, shape) = parse(text.as_bytes()).expect("serde_json takes it");
            let m = Message::parse(text.into_bytes()).expect("so does the bridge");
            assert!(matches!((m.form(), shape), (Ok(Form::Request { .. }), Shape::Request { .. })));
        }
    }

    #[test]
    fn errors_carry_the_id_and_data() {
        let e = error(&json!(7), code::UNSUPPORTED_VERSION, "no", Some(json!({"supported": ["x"]})));
        assert_eq!(e["id"], 7);
        assert_eq!(e["error"]["code"], -32022);
        assert_eq!(e["error"]["data"]["supported"][0], "x");
        assert_eq!(error(&Value::Null, -1, "m", None)["id"], Value::Null);
        assert!(is_tool_error(&json!({"id":1,"result":{"isError":true}})));
        assert_eq!(error_code(&json!({"id":1,"error":{"code":-32601}})), Some(-32601));
        assert_eq!(supported_versions()[0], "2026-07-28");
    }
}
