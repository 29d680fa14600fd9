//! JSON-RPC messages as the Streamable HTTP transport handles them: what a
//! message is, its id and method, and the error responses the bridge writes
//! itself. Messages of the HTTP+SSE transport are only checked (see
//! `message`); these are parsed, because their ids are rewritten and their
//! results completed.

use serde_json::{json, Map, Value};

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
    error(id, code, message, data).to_string().into_bytes()
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
