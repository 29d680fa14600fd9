//! The little HTTP/1.1 this tool needs: `http://` URLs, response heads,
//! chunked bodies, and requests (POST, DELETE) on a keep-alive connection,
//! whose body can be watched as it arrives (a Streamable HTTP event stream).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Largest response head we accept.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body without a length we keep (ours are empty or a
/// line of JSON).
const MAX_BODY: usize = 1 << 20;
const READ_CHUNK: usize = 16 * 1024;

/// An `http://host:port/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s.strip_prefix("http://").ok_or_else(|| format!("{s:?}: only http:// URLs are supported"))?;
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        Ok(Url { host: host.to_string(), port, target })
    }

    /// Resolves `reference` (an absolute `http://` URL, an absolute path, or
    /// a path relative to this URL's directory) against this URL.
    pub fn join(&self, reference: &str) -> Result<Url, String> {
        if reference.starts_with("http://") {
            return Url::parse(reference);
        }
        if reference.contains("://") {
            return Err(format!("{reference:?}: only http:// URLs are supported"));
        }
        let target = if reference.starts_with('/') {
            reference.to_string()
        } else {
            let path = self.target.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{reference}")
        };
        Ok(Url { host: self.host.clone(), port: self.port, target })
    }

    /// `host:port`, for the Host header and for connecting.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub async fn connect(&self, limit: Duration) -> Result<TcpStream, String> {
        let stream = timeout(limit, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| format!("connecting to {}: timed out", self.authority()))?
            .map_err(|e| format!("connecting to {}: {e}", self.authority()))?;
        stream.set_nodelay(true).map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
        Ok(stream)
    }
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The server will close the connection after this response.
    pub close: bool,
    /// Every header field, names as sent.
    pub fields: Vec<(String, String)>,
}

impl Head {
    /// The value of the first field of that name (any case).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The media type of `Content-Type`, lower case, without parameters.
    pub fn media_type(&self) -> Option<String> {
        self.field("content-type").map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }
}

/// Where the head ends: the index just past its blank line.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a response head (status line and header fields).
pub fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    let mut fields = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        fields.push((name.to_string(), value.to_string()));
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            let has = |token: &str| value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token));
            if has("close") {
                close = true;
            } else if has("keep-alive") {
                close = false;
            }
        }
    }
    let framing = if status < 200 || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Head { status, close: close || framing == Framing::UntilClose, framing, fields })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the size line; the value so far, and whether we are past a `;`.
    Size {
        value: u64,
        digits: u8,
        ext: bool,
    },
    Data(u64),
    /// After a chunk's data: expecting CRLF.
    DataEnd {
        cr: bool,
    },
    /// Trailer fields; the length of the current line.
    Trailer(usize),
    Done,
}

/// Incremental decoder for `Transfer-Encoding: chunked`.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { state: ChunkState::Size { value: 0, digits: 0, ext: false } }
    }
}

impl Chunked {
    /// True once the last chunk and the trailer have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes `input`, appending data to `out`. Returns how many bytes of
    /// `input` were used: all of them, unless the body ended before.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                ChunkState::Size { value, digits, ext } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\n' => {
                            if *digits == 0 {
                                return Err("chunk size line without a size".into());
                            }
                            self.state = if *value == 0 { ChunkState::Trailer(0) } else { ChunkState::Data(*value) };
                        }
                        _ if *ext => {}
                        b';' => *ext = true,
                        b'\r' | b' ' | b'\t' => {}
                        _ => {
                            let d = (b as char).to_digit(16).ok_or_else(|| format!("bad chunk size byte {b:#04x}"))?;
                            if *digits >= 15 {
                                return Err("chunk size too large".into());
                            }
                            *value = *value * 16 + u64::from(d);
                            *digits += 1;
                        }
                    }
                }
                ChunkState::Data(left) => {
                    let n = (*left).min((input.len() - i) as u64) as usize;
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = ChunkState::DataEnd { cr: false };
                    }
                }
                ChunkState::DataEnd { cr } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\r' if !*cr => *cr = true,
                        b'\n' => self.state = ChunkState::Size { value: 0, digits: 0, ext: false },
                        _ => return Err(format!("expected CRLF after chunk data, got {b:#04x}")),
                    }
                }
                ChunkState::Trailer(len) => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\n' if *len == 0 => {
                            self.state = ChunkState::Done;
                            return Ok(i);
                        }
                        b'\n' => *len = 0,
                        b'\r' => {}
                        _ => *len += 1,
                    }
                }
                ChunkState::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

/// A response to a request.
#[derive(Debug)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
    /// When the last of the body was read.
    pub at: Instant,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }
}

/// Watches a response's body as it arrives: called with the head once, then
/// with each piece of the (de-chunked) body and when it was read.
pub trait BodySink {
    fn head(&mut self, _head: &Head) {}
    fn data(&mut self, _bytes: &[u8], _at: Instant) {}
}

/// A sink that watches nothing: the body is only kept.
pub struct Keep;

impl BodySink for Keep {}

struct Conn {
    stream: TcpStream,
    /// Bytes read past the previous response (none from a sane server).
    buf: Vec<u8>,
    used: bool,
}

/// Sends requests to one server, reusing one keep-alive connection.
pub struct Poster {
    server: Url,
    conn: Option<Conn>,
    limit: Duration,
    pub connections: u64,
}

impl Poster {
    pub fn new(server: Url, limit: Duration) -> Poster {
        Poster { server, conn: None, limit, connections: 0 }
    }

    pub fn server(&self) -> &Url {
        &self.server
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// POSTs `body` as JSON to `target` and reads the whole response.
    pub async fn post(&mut self, target: &str, body: &[u8]) -> Result<Response, String> {
        self.request("POST", target, &[], body, &mut Keep).await
    }

    /// Sends a request (with `Content-Type: application/json` when it has a
    /// body, and the `fields` given) and reads the whole response, handing
    /// its body to `sink` as it arrives. A reused connection the server
    /// closed before answering is replaced once (keep-alive connections may
    /// be closed when idle).
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        fields: &[(&str, &str)],
        body: &[u8],
        sink: &mut dyn BodySink,
    ) -> Result<Response, String> {
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.server.authority());
        for (name, value) in fields {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut request = request.into_bytes();
        request.reserve_exact(body.len());
        request.extend_from_slice(body);
        let limit = self.limit;
        let fut = async {
            for attempt in 0..2 {
                let mut conn = match self.conn.take() {
                    Some(c) => c,
                    None => {
                        self.connections += 1;
                        Conn { stream: self.server.connect(self.limit).await?, buf: Vec::new(), used: false }
                    }
                };
                let reused = conn.used;
                match exchange(&mut conn, &request, sink).await {
                    Ok((response, close)) => {
                        if !close {
                            conn.used = true;
                            self.conn = Some(conn);
                        }
                        return Ok(response);
                    }
                    Err(Failure::BeforeResponse(_)) if reused && attempt == 0 => continue,
                    Err(Failure::BeforeResponse(e) | Failure::During(e)) => return Err(e),
                }
            }
            Err(format!("{method} failed twice"))
        };
        timeout(limit, fut).await.map_err(|_| format!("{method} {target}: no response in {limit:?}"))?
    }

    /// Drops the connection (the server reads EOF).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }
}

enum Failure {
    /// Nothing of a response arrived: the request may be retried on a
    /// fresh connection if this one was reused.
    BeforeResponse(String),
    During(String),
}

async fn exchange(conn: &mut Conn, request: &[u8], sink: &mut dyn BodySink) -> Result<(Response, bool), Failure> {
    conn.stream.write_all(request).await.map_err(|e| Failure::BeforeResponse(format!("sending a request: {e}")))?;
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut at = Instant::now();
    let end = loop {
        if let Some(end) = head_end(&conn.buf) {
            break end;
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(Failure::During("response head too large".into()));
        }
        let n = conn.stream.read(&mut chunk).await.map_err(|e| Failure::During(format!("reading a response: {e}")))?;
        at = Instant::now();
        if n == 0 {
            let e = "connection closed before a response".to_string();
            return Err(if conn.buf.is_empty() { Failure::BeforeResponse(e) } else { Failure::During(e) });
        }
        conn.buf.extend_from_slice(&chunk[..n]);
    };
    let head = parse_head(&conn.buf[..end - 2]).map_err(Failure::During)?;
    conn.buf.drain(..end);
    sink.head(&head);
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) => loop {
            let take = conn.buf.len().min(n - body.len());
            if take > 0 {
                sink.data(&conn.buf[..take], at);
                body.extend(conn.buf.drain(..take));
            }
            if body.len() == n {
                break;
            }
            let (k, when) = read(&mut conn.stream, &mut chunk).await?;
            if k == 0 {
                return Err(Failure::During("connection closed inside a body".into()));
            }
            at = when;
            conn.buf.extend_from_slice(&chunk[..k]);
        },
        Framing::Chunked => {
            let mut decoder = Chunked::default();
            loop {
                let before = body.len();
                let used = decoder.feed(&conn.buf, &mut body).map_err(Failure::During)?;
                conn.buf.drain(..used);
                if body.len() > before {
                    sink.data(&body[before..], at);
                }
                if decoder.done() {
                    break;
                }
                let (k, when) = read(&mut conn.stream, &mut chunk).await?;
                if k == 0 {
                    return Err(Failure::During("connection closed inside a chunked body".into()));
                }
                at = when;
                conn.buf.extend_from_slice(&chunk[..k]);
            }
        }
        Framing::UntilClose => {
            if !conn.buf.is_empty() {
                sink.data(&conn.buf, at);
                body.append(&mut conn.buf);
            }
            loop {
                let (k, when) = read(&mut conn.stream, &mut chunk).await?;
                if k == 0 {
                    break;
                }
                at = when;
                sink.data(&chunk[..k], at);
                body.extend_from_slice(&chunk[..k]);
                if body.len() > MAX_BODY {
                    return Err(Failure::During("response body too large".into()));
                }
            }
        }
    }
    let close = head.close;
    Ok((Response { head, body, at }, close))
}

/// Reads some of a body: how much, and when.
async fn read(stream: &mut TcpStream, chunk: &mut [u8]) -> Result<(usize, Instant), Failure> {
    let n = stream.read(chunk).await.map_err(|e| Failure::During(format!("reading a body: {e}")))?;
    Ok((n, Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_references() {
        let u = Url::parse("http://127.0.0.1:9080/mcp/sse").expect("valid");
        assert_eq!(u, Url { host: "127.0.0.1".into(), port: 9080, target: "/mcp/sse".into() });
        assert_eq!(u.authority(), "127.0.0.1:9080");
        assert_eq!(u.join("/mcp/message?sessionId=ab").expect("abs").target, "/mcp/message?sessionId=ab");
        assert_eq!(u.join("message?sessionId=ab").expect("rel").target, "/mcp/message?sessionId=ab");
        let other = u.join("http://localhost:8000/message?sessionId=1").expect("url");
        assert_eq!(
            (other.host.as_str(), other.port, other.target.as_str()),
            ("localhost", 8000, "/message?sessionId=1")
        );
        assert_eq!(Url::parse("http://h").expect("bare").target, "/");
        assert_eq!(Url::parse("http://h:1?x=1").expect("query").target, "/?x=1");
        let v6 = Url::parse("http://[::1]:8080/sse").expect("v6");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        assert_eq!(v6.authority(), "[::1]:8080");
        assert!(Url::parse("https://h/sse").is_err());
        assert!(Url::parse("http://h:port/").is_err());
        assert!(Url::parse("http:///x").is_err());
        assert!(u.join("ftp://x/y").is_err());
    }

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n")
            .expect("ok");
        assert_eq!((h.status, h.framing, h.close), (200, Framing::Chunked, false));
        assert_eq!(h.field("CONTENT-TYPE"), Some("text/event-stream"));
        assert_eq!(h.media_type().as_deref(), Some("text/event-stream"));
        assert_eq!(h.field("mcp-session-id"), None);
        let h = parse_head(b"HTTP/1.1 202 Accepted\r\ncontent-length: 8\r\nConnection: keep-alive\r\n").expect("ok");
        assert_eq!((h.status, h.framing, h.close), (202, Framing::Length(8), false));
        assert_eq!(h.media_type(), None);
        let h = parse_head(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n").expect("ok");
        assert!(h.close);
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n").expect("ok");
        assert_eq!((h.status, h.framing, h.close), (200, Framing::UntilClose, true));
        let h =
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: Application/JSON; charset=utf-8\r\nMcp-Session-Id: ab\r\n")
                .expect("ok");
        assert_eq!(h.media_type().as_deref(), Some("application/json"));
        assert_eq!(h.field("mcp-session-id"), Some("ab"));
        let h = parse_head(b"HTTP/1.0 204 No Content\r\n").expect("ok");
        assert_eq!((h.status, h.framing, h.close), (204, Framing::Length(0), true));
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon here\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n").is_err());
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody"), Some(25));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
    }

    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize, bool), String> {
        let mut d = Chunked::default();
        let mut out = Vec::new();
        let mut used = 0;
        for part in input.chunks(piece) {
            let n = d.feed(part, &mut out)?;
            used += n;
            if n < part.len() || d.done() {
                break;
            }
        }
        Ok((out, used, d.done()))
    }

    #[test]
    fn chunked_bodies_split_anywhere() {
        let body = b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for piece in 1..=body.len() {
            let (out, used, done) = decode_in_pieces(body, piece).expect("valid");
            assert_eq!(out, b"hello 0123456789", "piece {piece}");
            assert!(done, "piece {piece}");
            assert_eq!(&body[used..], b"NEXT", "piece {piece}");
        }
    }

    #[test]
    fn chunked_stream_in_progress() {
        let mut d = Chunked::default();
        let mut out = Vec::new();
        let n = d.feed(b"1a\r\nevent: endpoint\ndata: /x\n\n\r\n1", &mut out).expect("valid");
        assert_eq!(n, 33);
        assert_eq!(out, b"event: endpoint\ndata: /x\n\n");
        assert!(!d.done());
        // Bare LF line ends are tolerated.
        d.feed(b"\nz\n0\n\n", &mut out).expect("valid");
        assert!(d.done());
        assert_eq!(out.last(), Some(&b'z'));
    }

    #[test]
    fn chunked_errors() {
        let bad = |input: &[u8]| Chunked::default().feed(input, &mut Vec::new()).is_err();
        assert!(bad(b"xyz\r\n"));
        assert!(bad(b"\r\n"));
        assert!(bad(b"3\r\nabcX"));
        assert!(bad(b"ffffffffffffffff1\r\n"));
    }
}
