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
    let post = request.headers.method == "POST";
    if post && speaks_stateless(&request) {
        // It parses the message its own way.
        return stateless::serve(host, request, None, &mut reader, writer).await;
    }
    let parsed = if post { Message::parse(request.body.to_vec()).ok() } else { None };
    if post && parsed.as_ref().is_some_and(enveloped) {
        return stateless::serve(host, request, None, &mut reader, writer).await;
    }
    streamable::serve(host, request, parsed, &mut reader, writer).await
}

/// A request without a session whose version header names a revision the
/// sessions do not speak. (A request of a session with such a version is
/// still the session's to refuse.)
fn speaks_stateless(request: &Request) -> bool {
    let version = &*request.headers.version;
    request.headers.session.is_empty() && !version.is_empty() && !mcp::LEGACY_VERSIONS.contains(&version)
}

/// A message with the 2026-07-28 envelope.
fn enveloped(message: &Message) -> bool {
    message.param(&["_meta", VERSION_KEY]).is_some()
}
