//! JSON-RPC messages out, and responses matched back to their requests by
//! id. Ids are unique across every session of the process: a gateway that
//! sends one session's responses to other sessions too (supergateway shares
//! one backend among all sessions) shows up as `foreign` messages instead of
//! answering the wrong request.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;

/// The revision of HTTP+SSE sessions (and over stdio).
pub const PROTOCOL_VERSION: &str = "2024-11-05";
/// The revision a Streamable HTTP session asks for in `initialize`.
pub const SESSION_PROTOCOL_VERSION: &str = "2025-11-25";
/// The revision of stateless requests: no `initialize`, every request
/// carries it in `params._meta`.
pub const STATELESS_PROTOCOL_VERSION: &str = "2026-07-28";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A request; `params` is already JSON.
pub fn request(id: u64, method: &str, params: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + method.len() + params.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"method\":");
    out.extend_from_slice(Value::from(method).to_string().as_bytes());
    out.extend_from_slice(b",\"params\":");
    out.extend_from_slice(params.as_bytes());
    out.push(b'}');
    out
}

pub fn notification(method: &str) -> Vec<u8> {
    serde_json::json!({"jsonrpc": "2.0", "method": method}).to_string().into_bytes()
}

pub fn initialize_params(version: &str) -> String {
    serde_json::json!({
        "protocolVersion": version,
        "capabilities": {},
        "clientInfo": {"name": "mcp-load", "version": env!("CARGO_PKG_VERSION")},
    })
    .to_string()
}

/// `tools/call` params for a tool; `arguments` is already JSON.
pub fn tool_params(name: &str, arguments: &str) -> String {
    format!("{{\"name\":{},\"arguments\":{arguments}}}", Value::from(name))
}

/// `params` (a JSON object) with the `_meta` every 2026-07-28 request
/// carries: the revision and the client's capabilities (none).
pub fn stateless_params(params: &str) -> String {
    let meta = format!(
        "\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"{STATELESS_PROTOCOL_VERSION}\",\
         \"io.modelcontextprotocol/clientCapabilities\":{{}}}}"
    );
    let rest = params.trim_start().strip_prefix('{').unwrap_or("}").trim_start();
    if rest.starts_with('}') {
        format!("{{{meta}}}")
    } else {
        format!("{{{meta},{rest}")
    }
}

/// What a 2026-07-28 request's `Mcp-Name` header carries: the `name` of
/// `tools/call` and `prompts/get`, the `uri` of `resources/read`.
pub fn header_name(method: &str, params: &str) -> Option<String> {
    let field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return None,
    };
    let v: Value = serde_json::from_str(params).ok()?;
    v.get(field).and_then(Value::as_str).map(str::to_string)
}

/// The revision an `initialize` result agreed on.
pub fn negotiated_version(data: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(data).ok()?;
    v.pointer("/result/protocolVersion").and_then(Value::as_str).map(str::to_string)
}

/// A response that arrived for one of our requests.
#[derive(Debug)]
pub struct Arrival {
    pub at: Instant,
    /// A JSON-RPC error or a tool result with `isError`.
    pub error: Option<String>,
    pub data: Vec<u8>,
}

/// What became of one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Matched,
    /// A response to a request this session is not waiting for.
    Foreign,
    Notification,
    /// Not JSON, or not a JSON-RPC message we understand (batches included).
    Unparsable,
}

#[derive(Deserialize)]
struct Incoming {
    id: Option<Value>,
    method: Option<IgnoredAny>,
    result: Option<ResultHead>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ResultHead {
    #[serde(rename = "isError", default)]
    is_error: bool,
}

/// Requests of one session waiting for their responses.
#[derive(Default)]
pub struct Router {
    pending: RefCell<HashMap<u64, oneshot::Sender<Arrival>>>,
    closed: Cell<bool>,
    pub foreign: Cell<u64>,
    pub notifications: Cell<u64>,
    pub unparsable: Cell<u64>,
    /// SSE comments (keepalives).
    pub comments: Cell<u64>,
}

impl Router {
    /// Registers `id`; call before sending the request. The receiver fails
    /// if the session's stream ends first.
    pub fn expect(&self, id: u64) -> oneshot::Receiver<Arrival> {
        let (tx, rx) = oneshot::channel();
        if !self.closed.get() {
            self.pending.borrow_mut().insert(id, tx);
        }
        rx
    }

    /// Whether `id` is still waiting for its response.
    pub fn is_pending(&self, id: u64) -> bool {
        self.pending.borrow().contains_key(&id)
    }

    /// Stops waiting for `id` (after a timeout).
    pub fn forget(&self, id: u64) {
        self.pending.borrow_mut().remove(&id);
    }

    /// The stream ended: every waiting request fails.
    pub fn close(&self) {
        self.closed.set(true);
        self.pending.borrow_mut().clear();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Hands one incoming message to the request it answers.
    pub fn route(&self, data: Vec<u8>, at: Instant) -> Routed {
        let bump = |c: &Cell<u64>| c.set(c.get() + 1);
        let Ok(msg) = serde_json::from_slice::<Incoming>(&data) else {
            bump(&self.unparsable);
            return Routed::Unparsable;
        };
        let id = match (&msg.id, &msg.method) {
            (Some(id), None) => id.as_u64(),
            (None, Some(_)) => {
                bump(&self.notifications);
                return Routed::Notification;
            }
            // Requests from the server: we offer no capabilities, so none
            // should come; count them with the foreign ones.
            (Some(_), Some(_)) => None,
            (None, None) => {
                bump(&self.unparsable);
                return Routed::Unparsable;
            }
        };
        let Some(tx) = id.and_then(|id| self.pending.borrow_mut().remove(&id)) else {
            bump(&self.foreign);
            return Routed::Foreign;
        };
        let error = match (&msg.error, &msg.result) {
            (Some(e), _) => Some(format!("JSON-RPC error {e}")),
            (None, Some(r)) if r.is_error => Some(format!("tool error: {}", preview(&data))),
            (None, Some(_)) => None,
            (None, None) => Some("response without result or error".into()),
        };
        // The requester may have given up (timeout): then nobody listens.
        let _ = tx.send(Arrival { at, error, data });
        Routed::Matched
    }
}

/// The start of a message on one line, for error reports.
pub fn preview(data: &[u8]) -> String {
    let end = data.len().min(200);
    let mut s = String::from_utf8_lossy(&data[..end]).split_whitespace().collect::<Vec<_>>().join(" ");
    if data.len() > end {
        s.push_str("...");
    }
    s
}

/// The text of the first content item of a tool result.
pub fn tool_text(data: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("response is not JSON: {e}"))?;
    v.pointer("/result/content/0/text")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("no result.content[0].text in {}", preview(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_valid_json() {
        let body = request(7, "tools/call", &tool_params("echo", r#"{"text":"a\"b"}"#));
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["id"], 7);
        assert_eq!(v["method"], "tools/call");
        assert_eq!(v["params"]["name"], "echo");
        assert_eq!(v["params"]["arguments"]["text"], "a\"b");
        let v: Value = serde_json::from_slice(&notification("notifications/initialized")).expect("json");
        assert!(v.get("id").is_none());
        let v: Value = serde_json::from_str(&initialize_params(PROTOCOL_VERSION)).expect("json");
        assert_eq!(v["protocolVersion"], PROTOCOL_VERSION);
        assert!(next_id() < next_id());
    }

    #[test]
    fn stateless_requests_carry_their_revision() {
        for params in [tool_params("echo", r#"{"text":"x"}"#), "{}".into(), " { } ".into()] {
            let v: Value = serde_json::from_str(&stateless_params(&params)).expect("json");
            assert_eq!(v["_meta"]["io.modelcontextprotocol/protocolVersion"], STATELESS_PROTOCOL_VERSION);
            assert_eq!(v["_meta"]["io.modelcontextprotocol/clientCapabilities"], serde_json::json!({}));
        }
        let v: Value = serde_json::from_str(&stateless_params(&tool_params("echo", "{}"))).expect("json");
        assert_eq!(v["name"], "echo");
        assert_eq!(header_name("tools/call", &tool_params("echo", "{}")).as_deref(), Some("echo"));
        assert_eq!(header_name("resources/read", r#"{"uri":"file:///a"}"#).as_deref(), Some("file:///a"));
        assert_eq!(header_name("tools/list", "{}"), None);
        let init = br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{}}}"#;
        assert_eq!(negotiated_version(init).as_deref(), Some("2025-06-18"));
        assert_eq!(negotiated_version(b"{}"), None);
    }

    #[test]
    fn responses_find_their_request_by_id() {
        let router = Router::default();
        let now = Instant::now();
        let mut first = router.expect(1);
        let mut second = router.expect(2);
        let ok = br#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"hi"}]}}"#;
        assert_eq!(router.route(ok.to_vec(), now), Routed::Matched);
        let arrival = second.try_recv().expect("answered");
        assert_eq!(arrival.error, None);
        assert_eq!(tool_text(&arrival.data).expect("text"), "hi");
        assert!(first.try_recv().is_err(), "still waiting");

        // Another session's response (same shape, unknown id), and a repeat.
        assert_eq!(router.route(br#"{"jsonrpc":"2.0","id":99,"result":{}}"#.to_vec(), now), Routed::Foreign);
        assert_eq!(router.route(ok.to_vec(), now), Routed::Foreign);
        assert_eq!(router.route(br#"{"jsonrpc":"2.0","id":"1","result":{}}"#.to_vec(), now), Routed::Foreign);
        assert_eq!(router.foreign.get(), 3);

        let notice = br#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
        assert_eq!(router.route(notice.to_vec(), now), Routed::Notification);
        assert_eq!(router.route(b"not json".to_vec(), now), Routed::Unparsable);
        assert_eq!(router.route(br#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#.to_vec(), now), Routed::Unparsable);
        assert_eq!(router.route(br#"{"jsonrpc":"2.0"}"#.to_vec(), now), Routed::Unparsable);
        assert_eq!(router.unparsable.get(), 3);

        let failed = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"nope"}}"#;
        assert_eq!(router.route(failed.to_vec(), now), Routed::Matched);
        let err = first.try_recv().expect("answered").error.expect("an error");
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn tool_errors_and_closed_streams() {
        let router = Router::default();
        let mut rx = router.expect(5);
        let bad = br#"{"jsonrpc":"2.0","id":5,"result":{"isError":true,"content":[]}}"#;
        router.route(bad.to_vec(), Instant::now());
        assert!(rx.try_recv().expect("answered").error.expect("error").starts_with("tool error"));

        let mut waiting = router.expect(6);
        router.close();
        assert!(matches!(waiting.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        let mut late = router.expect(7);
        assert!(matches!(late.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        assert!(router.is_closed());
    }
}
