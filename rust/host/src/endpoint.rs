//! The Streamable HTTP endpoint: which leg serves a request. A POST whose
//! message carries the 2026-07-28 envelope (or whose `MCP-Protocol-Version`
//! names a revision the sessions do not speak) is stateless (see
//! `stateless`); everything else, `initialize`, GET and DELETE included,
//! belongs to the sessions (see `streamable`).

use crate::host::Host;
use crate::http::Request;
use crate::log;
use crate::mcp::{self, Message};
use crate::{stateless, streamable};
use std::rc::Rc;
use tokio::net::UnixStream;

/// The `_meta` key that marks a stateless request.
pub const VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";

/// Serves one request frame on `stream`. Returns whether the connection can
/// be used again.
pub async fn serve(host: &Rc<Host>, stream: &mut UnixStream, payload: &[u8]) -> bool {
    let request = match Request::parse(payload) {
        Ok(r) => r,
        Err(e) => {
            log!(Warn, "bad request frame from the worker: {e}");
            return false;
        }
    };
    let (mut reader, writer) = stream.split();
    let parsed = match request.headers.method.as_str() {
        "POST" => Message::parse(request.body.clone()).ok(),
        _ => None,
    };
    if request.headers.method == "POST" && is_stateless(&request, parsed.as_ref()) {
        // It parses the message its own way.
        return stateless::serve(host, request, None, &mut reader, writer).await;
    }
    streamable::serve(host, request, parsed, &mut reader, writer).await
}

fn is_stateless(request: &Request, parsed: Option<&Message>) -> bool {
    let enveloped = parsed.is_some_and(|m| m.param(&["_meta", VERSION_KEY]).is_some());
    let version = request.headers.version.as_str();
    // A request of a session with a version it does not speak is still the
    // session's to refuse.
    let sessionless = request.headers.session.is_empty();
    enveloped || (sessionless && !version.is_empty() && !mcp::LEGACY_VERSIONS.contains(&version))
}
