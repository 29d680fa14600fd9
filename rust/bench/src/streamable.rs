//! MCP's Streamable HTTP transport, the client's side, in its two forms:
//!
//! - sessions (revision 2025-11-25): `initialize` is answered with an
//!   `Mcp-Session-Id` that every later request carries, with the agreed
//!   revision in `MCP-Protocol-Version`; `DELETE` ends the session;
//! - stateless requests (revision 2026-07-28): no `initialize` and no
//!   session, each request carries the revision and the client's
//!   capabilities in `params._meta`, and mirrors them in the headers
//!   `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name`.
//!
//! Either way every message goes on a POST of its own, over one keep-alive
//! connection: a request is answered `200` with its response as a JSON body
//! or as an event stream (whose messages are handed to the session's
//! [`Router`] as each arrives), a notification `202`. No GET stream is
//! opened: nothing the benchmark asks for comes on it.

use std::time::Instant;

use crate::http::{BodySink, Head, Keep, Poster, Url};
use crate::rpc::{self, Router};
use crate::sse::{self, Item};

const ACCEPT: &str = "application/json, text/event-stream";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Session,
    Stateless,
}

pub struct Link {
    poster: Poster,
    mode: Mode,
    /// The session's id, from the `initialize` response until `DELETE`.
    session_id: Option<String>,
    /// What `MCP-Protocol-Version` says (in a session, once agreed).
    protocol: Option<String>,
}

/// Hands what an answer carries to the router: each event of an event
/// stream as it arrives; a JSON body once it is whole (see [`Link::post`]).
struct Answer<'a> {
    router: &'a Router,
    events: Option<sse::Parser>,
}

impl BodySink for Answer<'_> {
    fn head(&mut self, head: &Head) {
        if head.status == 200 && head.media_type().as_deref() == Some("text/event-stream") {
            self.events = Some(sse::Parser::default());
        }
    }

    fn data(&mut self, bytes: &[u8], at: Instant) {
        let Some(parser) = &mut self.events else { return };
        parser.feed(bytes);
        while let Some(item) = parser.next_item() {
            let bump = |c: &std::cell::Cell<u64>| c.set(c.get() + 1);
            match item {
                Item::Event(ev) if ev.event == "message" => {
                    self.router.route(ev.data, at);
                }
                Item::Event(_) => bump(&self.router.unparsable),
                Item::Comment => bump(&self.router.comments),
            }
        }
    }
}

impl Link {
    pub fn new(url: &Url, mode: Mode, limit: std::time::Duration) -> Link {
        let protocol = match mode {
            Mode::Session => None,
            Mode::Stateless => Some(rpc::STATELESS_PROTOCOL_VERSION.to_string()),
        };
        Link { poster: Poster::new(url.clone(), limit), mode, session_id: None, protocol }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// Sends the session's later requests to `url` (another node of a
    /// cluster) on a connection of their own.
    pub fn post_to(&mut self, url: &Url) {
        self.poster.disconnect();
        self.poster = Poster::new(url.clone(), self.poster.limit());
    }

    /// The revision the session agreed on in `initialize`, for the
    /// `MCP-Protocol-Version` of every later request.
    pub fn set_protocol(&mut self, version: String) {
        self.protocol = Some(version);
    }

    /// POSTs one message. `request`: its method and params when it is a
    /// request, which must then be answered `200` (its response, and
    /// whatever came before it, go to `router`); anything else must be
    /// answered `202`. The first answer with an `Mcp-Session-Id` starts the
    /// session.
    pub async fn post(&mut self, message: &[u8], request: Option<(&str, &str)>, router: &Router) -> Result<(), String> {
        let name = match (self.mode, request) {
            (Mode::Stateless, Some((method, params))) => rpc::header_name(method, params),
            _ => None,
        };
        let mut fields = vec![("Accept", ACCEPT)];
        if let Some(id) = &self.session_id {
            fields.push(("Mcp-Session-Id", id));
        }
        if let Some(v) = &self.protocol {
            fields.push(("MCP-Protocol-Version", v));
        }
        if self.mode == Mode::Stateless {
            if let Some((method, _)) = request {
                fields.push(("Mcp-Method", method));
            }
            if let Some(name) = &name {
                fields.push(("Mcp-Name", name));
            }
        }
        let target = self.poster.server().target.clone();
        let mut answer = Answer { router, events: None };
        let response = self.poster.request("POST", &target, &fields, message, &mut answer).await?;
        let status = response.status();
        if self.mode == Mode::Session && self.session_id.is_none() {
            self.session_id = response.head.field("mcp-session-id").map(str::to_string);
        }
        match (status, request) {
            (200, Some(_)) if answer.events.is_some() => Ok(()),
            (200, Some(_)) if response.head.media_type().as_deref() == Some("application/json") => {
                router.route(response.body, response.at);
                Ok(())
            }
            (200, Some(_)) => Err(format!(
                "POST answered 200 with content type {:?}",
                response.head.field("content-type").unwrap_or("(none)")
            )),
            (202, None) => Ok(()),
            _ => Err(format!("POST answered {status}: {}", rpc::preview(&response.body))),
        }
    }

    /// Ends the session: `DELETE`, which must be answered with a 2xx (once:
    /// the session has no id afterwards), and the connection closed.
    pub async fn delete(&mut self) -> Result<(), String> {
        let result = match self.session_id.take() {
            None => Ok(()),
            Some(id) => {
                let mut fields = vec![("Mcp-Session-Id", id.as_str())];
                if let Some(v) = &self.protocol {
                    fields.push(("MCP-Protocol-Version", v));
                }
                let target = self.poster.server().target.clone();
                match self.poster.request("DELETE", &target, &fields, b"", &mut Keep).await {
                    Ok(r) if (200..300).contains(&r.status()) => Ok(()),
                    Ok(r) => Err(format!("DELETE answered {}: {}", r.status(), rpc::preview(&r.body))),
                    Err(e) => Err(format!("DELETE: {e}")),
                }
            }
        };
        self.poster.disconnect();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that reads one request per canned answer (in order, on one
    /// keep-alive connection) and returns the requests it read.
    async fn serve(listener: TcpListener, answers: Vec<&'static str>) -> Vec<String> {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut requests = Vec::new();
        let mut buf = Vec::new();
        for answer in answers {
            let request = loop {
                if let Some(end) = crate::http::head_end(&buf) {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + length {
                        let request = String::from_utf8_lossy(&buf[..end + length]).to_string();
                        buf.drain(..end + length);
                        break request;
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = conn.read(&mut chunk).await.expect("read");
                assert!(n > 0, "client closed early");
                buf.extend_from_slice(&chunk[..n]);
            };
            requests.push(request);
            conn.write_all(answer.as_bytes()).await.expect("write");
        }
        requests
    }

    fn field<'a>(request: &'a str, name: &str) -> Option<&'a str> {
        request.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[test]
    fn a_session_json_and_event_stream_answers_and_delete() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = Url::parse(&format!("http://{}/mcp", listener.local_addr().expect("addr"))).expect("url");
            let server = tokio::spawn(serve(
                listener,
                vec![
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: s1\r\n\
                     Content-Length: 57\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocolVersion\":\"x\"}}",
                    "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
                     4a\r\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\r\n\
                     2c\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n\n\r\n0\r\n\r\n",
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                ],
            ));
            let router = Router::default();
            let mut link = Link::new(&url, Mode::Session, Duration::from_secs(5));
            let mut first = router.expect(1);
            link.post(b"{\"id\":1}", Some(("initialize", "{}")), &router).await.expect("initialize");
            assert!(first.try_recv().is_ok());
            assert_eq!(link.session_id(), Some("s1"));
            link.set_protocol("2025-11-25".into());
            link.post(b"{}", None, &router).await.expect("notification");
            let mut second = router.expect(2);
            link.post(b"{\"id\":2}", Some(("tools/call", "{}")), &router).await.expect("call");
            assert!(second.try_recv().is_ok());
            assert_eq!(router.notifications.get(), 1);
            let err = link.post(b"{\"id\":3}", Some(("tools/call", "{}")), &router).await.expect_err("404");
            assert!(err.contains("404"), "{err}");
            link.delete().await.expect("delete");
            assert_eq!(link.session_id(), None);
            link.delete().await.expect("a second delete sends nothing");

            let requests = server.await.expect("server");
            assert_eq!(field(&requests[0], "mcp-session-id"), None);
            assert_eq!(field(&requests[0], "accept"), Some(ACCEPT));
            assert_eq!(field(&requests[0], "mcp-protocol-version"), None);
            assert_eq!(field(&requests[1], "mcp-session-id"), Some("s1"));
            assert_eq!(field(&requests[1], "mcp-protocol-version"), Some("2025-11-25"));
            assert!(requests[4].starts_with("DELETE /mcp "), "{}", requests[4]);
            assert_eq!(field(&requests[4], "mcp-session-id"), Some("s1"));
        });
    }

    #[test]
    fn stateless_requests_carry_their_headers() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = Url::parse(&format!("http://{}/mcp", listener.local_addr().expect("addr"))).expect("url");
            let server = tokio::spawn(serve(
                listener,
                vec![
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n\
                      {\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{}}",
                ],
            ));
            let router = Router::default();
            let mut link = Link::new(&url, Mode::Stateless, Duration::from_secs(5));
            let mut answer = router.expect(9);
            let params = rpc::tool_params("echo", "{}");
            link.post(b"{\"id\":9}", Some(("tools/call", &params)), &router).await.expect("call");
            assert!(answer.try_recv().is_ok());
            let requests = server.await.expect("server");
            assert_eq!(field(&requests[0], "mcp-protocol-version"), Some(rpc::STATELESS_PROTOCOL_VERSION));
            assert_eq!(field(&requests[0], "mcp-method"), Some("tools/call"));
            assert_eq!(field(&requests[0], "mcp-name"), Some("echo"));
            assert_eq!(field(&requests[0], "mcp-session-id"), None);
        });
    }
}
