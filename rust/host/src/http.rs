//! A request to the Streamable HTTP endpoint as the worker passes it on
//! (a Request frame), and the reply the host writes back on the same
//! connection: a Head frame, then the body as Message frames (one JSON
//! document, or one SSE event each), Keepalive frames while a stream is
//! silent, and an Exit frame at its end. The connection is then free for the
//! worker's next request.
//!
//! A Request payload: the binding (see `binding`), then the request's
//! headers as a JSON object and the route's spawn request (JSON, or empty),
//! each preceded by its length as a big-endian `u32`, then the body.
//!
//! A Head payload: `<status> <body type> <session id or -> [<retry after>]`,
//! the body type being `json`, `sse` or `none`.

use crate::binding::Binding;
use crate::frame::{self, Kind};
use serde::Deserialize;
use std::borrow::Cow;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The headers of a request that matter here, as the worker read them.
/// They borrow from the frame's payload unless escaped.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Headers<'a> {
    /// `POST`, `GET` or `DELETE`.
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    /// `Mcp-Session-Id`, empty when absent.
    #[serde(borrow)]
    pub session: Cow<'a, str>,
    /// `MCP-Protocol-Version`, empty when absent.
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    /// `Mcp-Method` and `Mcp-Name`; `None` when absent.
    #[serde(borrow)]
    pub mcp_method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub mcp_name: Option<Cow<'a, str>>,
    /// `Accept`.
    #[serde(borrow)]
    pub accept: Cow<'a, str>,
    /// Whether the worker took a session slot for this request (it does for
    /// what looks like an `initialize`).
    pub slot: bool,
    /// In cluster mode, what goes before an `input_required` state: the
    /// node's tag and `~`, so that any node can pass the retry here.
    #[serde(borrow)]
    pub state_prefix: Cow<'a, str>,
}

/// A request, borrowing from its frame's payload.
#[derive(Debug)]
pub struct Request<'a> {
    pub binding: Binding,
    pub headers: Headers<'a>,
    /// The route's spawn request, for a request that may start a backend.
    pub spec: &'a [u8],
    pub body: &'a [u8],
}

fn take_block<'a>(payload: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    let [a, b, c, d, rest @ ..] = payload else { return Err(format!("no {what}")) };
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if rest.len() < len {
        return Err(format!("{what} cut short"));
    }
    Ok(rest.split_at(len))
}

impl Headers<'_> {
    fn into_owned(self) -> Headers<'static> {
        fn owned(text: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(text.into_owned())
        }
        Headers {
            method: owned(self.method),
            session: owned(self.session),
            version: owned(self.version),
            mcp_method: self.mcp_method.map(owned),
            mcp_name: self.mcp_name.map(owned),
            accept: owned(self.accept),
            slot: self.slot,
            state_prefix: owned(self.state_prefix),
        }
    }

    /// The headers block of a Request frame. The worker passes a client's
    /// header values on as they came, escaping only what JSON must: bytes
    /// that are not UTF-8 are read as U+FFFD, so such a value names no
    /// version or method and gets the same answer as any other wrong one.
    fn parse(block: &[u8]) -> Result<Headers<'_>, String> {
        match std::str::from_utf8(block) {
            // Checked whole, once: serde_json then checks no string again
            // (from a slice, it would check each).
            Ok(text) => serde_json::from_str(text).map_err(|e| format!("headers: {e}")),
            Err(_) => {
                let text = String::from_utf8_lossy(block);
                serde_json::from_str(&text).map(Headers::into_owned).map_err(|e| format!("headers: {e}"))
            }
        }
    }
}

impl<'a> Request<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Request<'a>, String> {
        let (binding, rest) = Binding::split(payload)?;
        let (headers, rest) = take_block(rest, "headers")?;
        let headers = Headers::parse(headers)?;
        let (spec, body) = take_block(rest, "spawn request")?;
        Ok(Request { binding, headers, spec, body })
    }
}

/// How a reply's body travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Json,
    Sse,
}

impl Body {
    fn token(self) -> &'static str {
        match self {
            Body::None => "none",
            Body::Json => "json",
            Body::Sse => "sse",
        }
    }
}

/// Writes a reply on the worker's connection.
pub struct Reply<W> {
    out: W,
    started: Option<Body>,
}

impl<W: AsyncWrite + Unpin> Reply<W> {
    pub fn new(out: W) -> Reply<W> {
        Reply { out, started: None }
    }

    /// How the body goes, once the head is out.
    pub fn body(&self) -> Option<Body> {
        self.started
    }

    pub async fn head(&mut self, status: u16, body: Body, session: Option<&str>) -> std::io::Result<()> {
        self.head_with(status, body, session, None).await
    }

    pub async fn head_with(
        &mut self,
        status: u16,
        body: Body,
        session: Option<&str>,
        retry_after: Option<u32>,
    ) -> std::io::Result<()> {
        let text = head_text(status, body, session, retry_after);
        self.started = Some(body);
        frame::write(&mut self.out, Kind::Head, text.as_bytes()).await
    }

    pub async fn message(&mut self, payload: &[u8]) -> std::io::Result<()> {
        frame::write(&mut self.out, Kind::Message, payload).await
    }

    pub async fn keepalive(&mut self) -> std::io::Result<()> {
        frame::write(&mut self.out, Kind::Keepalive, b"").await
    }

    pub async fn end(&mut self) -> std::io::Result<()> {
        frame::write(&mut self.out, Kind::Exit, b"").await?;
        self.out.flush().await
    }

    /// A whole reply: `status` with one JSON document, in one write.
    pub async fn json(&mut self, status: u16, session: Option<&str>, payload: &[u8]) -> std::io::Result<()> {
        self.whole(status, Body::Json, session, payload).await
    }

    /// A whole reply without a body.
    pub async fn empty(&mut self, status: u16, session: Option<&str>) -> std::io::Result<()> {
        self.whole(status, Body::None, session, b"").await
    }

    async fn whole(&mut self, status: u16, body: Body, session: Option<&str>, payload: &[u8]) -> std::io::Result<()> {
        let head = head_text(status, body, session, None);
        let mut out = Vec::with_capacity(3 * frame::HEADER_LEN + head.len() + payload.len());
        frame::append(&mut out, Kind::Head, head.as_bytes())?;
        if body != Body::None {
            frame::append(&mut out, Kind::Message, payload)?;
        }
        frame::append(&mut out, Kind::Exit, b"")?;
        self.started = Some(body);
        self.out.write_all(&out).await?;
        self.out.flush().await
    }
}

/// A Head frame's payload.
fn head_text(status: u16, body: Body, session: Option<&str>, retry_after: Option<u32>) -> String {
    // Built by hand: it is written for every reply.
    let session = session.unwrap_or("-");
    let mut text = String::with_capacity(24 + session.len());
    push_number(&mut text, status.into());
    text.push(' ');
    text.push_str(body.token());
    text.push(' ');
    text.push_str(session);
    if let Some(seconds) = retry_after {
        text.push(' ');
        push_number(&mut text, seconds);
    }
    text
}

fn push_number(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| d as char));
}

/// What a stream carries to the HTTP request that holds it.
pub enum Item {
    /// A message related to the request (or, on a standalone stream, any).
    Message(Vec<u8>),
    /// The response, with the HTTP status it gets if it is the first thing
    /// sent; the stream ends with it.
    Final(u16, Vec<u8>),
    /// The stream ends without a response (its session ended, or a newer
    /// stream replaced it).
    End,
}

/// Writes what a request's stream carries to the worker: one JSON document
/// if the response comes first, else an event stream (also once the
/// keepalive interval passes in silence). Returns whether the connection
/// can be used again.
pub async fn relay<R, W>(
    mut items: mpsc::Receiver<Item>,
    reader: &mut R,
    reply: &mut Reply<W>,
    keepalive: Option<Duration>,
    session: Option<&str>,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut closed_probe = [0u8; 1];
    // One timer for the whole reply, moved on only when it fires.
    let every = keepalive.unwrap_or(Duration::from_secs(86_400));
    let mut last_write = tokio::time::Instant::now();
    let silence = tokio::time::sleep(every);
    tokio::pin!(silence);
    loop {
        let item = tokio::select! {
            biased;
            item = items.recv() => item.unwrap_or(Item::End),
            // The worker sends nothing while a reply is under way: any
            // read completing means it closed the connection.
            _ = reader.read(&mut closed_probe) => return false,
            _ = &mut silence, if keepalive.is_some() => {
                let now = tokio::time::Instant::now();
                if last_write + every > now {
                    silence.as_mut().reset(last_write + every);
                    continue;
                }
                let written = match reply.body() {
                    None => reply.head(200, Body::Sse, session).await.and(reply.keepalive().await),
                    Some(_) => reply.keepalive().await,
                };
                if written.is_err() {
                    return false;
                }
                last_write = now;
                silence.as_mut().reset(now + every);
                continue;
            }
        };
        last_write = tokio::time::Instant::now();
        let written = match (item, reply.body()) {
            (Item::Final(status, bytes), None) => return reply.json(status, session, &bytes).await.is_ok(),
            (Item::Final(_, bytes), Some(_)) => {
                return reply.message(&bytes).await.is_ok() && reply.end().await.is_ok();
            }
            (Item::End, None) => return reply.empty(200, session).await.is_ok(),
            (Item::End, Some(_)) => return reply.end().await.is_ok(),
            (Item::Message(bytes), None) => match reply.head(200, Body::Sse, session).await {
                Ok(()) => reply.message(&bytes).await,
                Err(e) => Err(e),
            },
            (Item::Message(bytes), Some(_)) => reply.message(&bytes).await,
        };
        if written.is_err() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &str, spec: &str, body: &str) -> Vec<u8> {
        let mut out = Binding { route: "r".into(), consumer: "c".into() }.encode();
        for block in [headers, spec] {
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(block.as_bytes());
        }
        out.extend_from_slice(body.as_bytes());
        out
    }

    #[test]
    fn requests_parse_and_bad_ones_are_named() {
        let payload = request(r#"{"method":"POST","version":"2025-11-25","later":1}"#, "{}", "{\"a\":1}");
        let r = Request::parse(&payload).expect("parse");
        assert_eq!((&*r.headers.method, &*r.headers.version), ("POST", "2025-11-25"));
        assert_eq!(r.headers.mcp_method, None);
        assert_eq!((r.spec, r.body), (&b"{}"[..], &b"{\"a\":1}"[..]));
        assert_eq!(r.binding.consumer, "c");
        let mut cut = request("{}", "", "");
        cut.truncate(cut.len() - 2);
        assert!(Request::parse(&cut).is_err());
        assert!(Request::parse(&request("nope", "", "")).unwrap_err().contains("headers"));
    }

    /// A fuzz find: a client's header value that is not UTF-8 made the
    /// host refuse the whole request, and the client got 503 (the worker
    /// saw its host close the connection) with an [error] in the log.
    #[test]
    fn a_header_value_that_is_not_utf8_still_makes_a_request() {
        let with_headers = |headers: &[u8]| {
            let mut out = Binding { route: "r".into(), consumer: String::new() }.encode();
            for block in [headers, b""] {
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(block);
            }
            out.extend_from_slice(b"{}");
            out
        };
        let payload = with_headers(b"{\"method\":\"POST\",\"version\":\"\xff2025\",\"mcp_name\":\"caf\xc3\xa9 \xc3\"}");
        let r = Request::parse(&payload).expect("a header value that is not UTF-8 is no reason to refuse the request");
        assert_eq!(&*r.headers.version, "\u{fffd}2025");
        assert_eq!(r.headers.mcp_name.as_deref(), Some("caf\u{e9} \u{fffd}"), "what is UTF-8 is kept");
        assert_eq!((&*r.headers.method, r.body), ("POST", &b"{}"[..]));
        let err = Request::parse(&with_headers(b"{\"method\":\"\xff\"")).expect_err("cut short");
        assert!(err.starts_with("headers: "), "other errors are still errors: {err}");
    }

    #[tokio::test]
    async fn replies_are_frames() {
        let mut buf = Vec::new();
        let mut reply = Reply::new(&mut buf);
        reply.head_with(503, Body::Json, None, Some(1)).await.expect("head");
        reply.message(b"{}").await.expect("message");
        reply.end().await.expect("end");
        assert_eq!(&buf[..5], &[b'H', 0, 0, 0, 12]);
        assert_eq!(&buf[5..17], b"503 json - 1");
        assert_eq!(head_text(200, Body::Sse, Some("abc"), Some(4_000_000_000)), "200 sse abc 4000000000");
        assert_eq!(head_text(0, Body::None, None, None), "0 none -");
        assert_eq!(buf[17], b'M');
        assert_eq!(buf[buf.len() - 5], b'X');
    }
}
