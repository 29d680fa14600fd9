//! One MCP client session, over a backend's pipes (the baseline), or through
//! a gateway over HTTP+SSE or Streamable HTTP (a session, or stateless
//! requests). Either way each incoming message goes to the session's
//! [`Router`], which wakes the request it answers: from a reader task over
//! pipes and SSE, from the request's own POST over Streamable HTTP.

use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::{spawn_local, JoinHandle};
use tokio::time::timeout;

use crate::http::{self, Chunked, Framing, Poster, Url};
use crate::rpc::{self, Arrival, Router};
use crate::sse::{self, Item};
use crate::streamable::{self, Mode};
use crate::sys;

const READ_CHUNK: usize = 64 * 1024;

/// Where sessions go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Spawn this command per session and speak over its stdin/stdout.
    Stdio(Vec<String>),
    /// The SSE endpoint of a gateway.
    Sse(Url),
    /// The Streamable HTTP endpoint of a gateway, with sessions.
    Streamable(Url),
    /// The Streamable HTTP endpoint of a gateway, stateless requests.
    Stateless(Url),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Stdio(_) => "stdio",
            Target::Sse(_) => "sse",
            Target::Streamable(_) => "streamable",
            Target::Stateless(_) => "stateless",
        }
    }
}

enum Link {
    Stdio { child: Child, stdin: Option<ChildStdin> },
    Sse { stream: Rc<TcpStream>, poster: Poster, endpoint: String },
    Streamable(streamable::Link),
}

pub struct Session {
    link: Link,
    router: Rc<Router>,
    /// Reads the backend's stdout or the SSE stream (none over Streamable
    /// HTTP).
    reader: Option<JoinHandle<()>>,
    limit: Duration,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

impl Session {
    /// Starts a session. Returns it and, over SSE, when the `endpoint` event
    /// arrived. `limit` bounds every later wait too. Over Streamable HTTP
    /// this sends nothing: `initialize` starts the session.
    pub async fn open(target: &Target, limit: Duration) -> Result<(Session, Option<Instant>), String> {
        match target {
            Target::Stdio(argv) => Ok((Session::spawn(argv, limit)?, None)),
            Target::Streamable(url) | Target::Stateless(url) => {
                let mode = if matches!(target, Target::Streamable(_)) { Mode::Session } else { Mode::Stateless };
                let link = Link::Streamable(streamable::Link::new(url, mode, limit));
                Ok((Session { link, router: Rc::new(Router::default()), reader: None, limit }, None))
            }
            Target::Sse(url) => {
                let (session, at) = timeout(limit, Session::connect(url, limit))
                    .await
                    .map_err(|_| format!("GET {}: no endpoint event in {limit:?}", url.target))??;
                Ok((session, Some(at)))
            }
        }
    }

    fn spawn(argv: &[String], limit: Duration) -> Result<Session, String> {
        let (program, args) = argv.split_first().ok_or("--stdio needs a command")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        let stdin = child.stdin.take().ok_or("the child has no stdin pipe")?;
        let stdout = child.stdout.take().ok_or("the child has no stdout pipe")?;
        let router = Rc::new(Router::default());
        let reader = spawn_local(read_lines(stdout, Rc::clone(&router)));
        Ok(Session { link: Link::Stdio { child, stdin: Some(stdin) }, router, reader: Some(reader), limit })
    }

    async fn connect(url: &Url, limit: Duration) -> Result<(Session, Instant), String> {
        let stream = url.connect(limit).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
            url.target,
            url.authority()
        );
        write_all(&stream, request.as_bytes()).await.map_err(|e| format!("sending GET {}: {e}", url.target))?;
        let mut events = EventReader::new(Rc::new(stream));
        let head = events.read_head().await.map_err(|e| format!("GET {}: {e}", url.target))?;
        if head.status != 200 {
            let body = events.read_some().await;
            return Err(format!("GET {}: status {}: {}", url.target, head.status, rpc::preview(&body)));
        }
        let first = events.next_item().await.map_err(|e| format!("GET {}: {e}", url.target))?;
        let endpoint = match first {
            Some(Item::Event(ev)) if ev.event == "endpoint" => String::from_utf8_lossy(&ev.data).into_owned(),
            Some(other) => return Err(format!("GET {}: expected the endpoint event, got {other:?}", url.target)),
            None => return Err(format!("GET {}: stream ended before the endpoint event", url.target)),
        };
        let at = Instant::now();
        let post_url = url.join(endpoint.trim())?;
        let router = Rc::new(Router::default());
        let stream = Rc::clone(&events.stream);
        let reader = spawn_local(read_events(events, Rc::clone(&router)));
        let link =
            Link::Sse { stream, poster: Poster::new(post_url.clone(), limit), endpoint: post_url.target.clone() };
        Ok((Session { link, router, reader: Some(reader), limit }, at))
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Sends one message that is not a request: a line on stdin, or a POST
    /// that must get `202`.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), String> {
        self.send_message(message, None).await
    }

    /// Sends one message (`request`: its method and params if it is one).
    /// Over Streamable HTTP this returns once the POST's answer is read,
    /// and so with the response routed.
    async fn send_message(&mut self, message: &[u8], request: Option<(&str, &str)>) -> Result<(), String> {
        match &mut self.link {
            Link::Stdio { stdin, .. } => {
                let stdin = stdin.as_mut().ok_or("stdin already closed")?;
                let mut line = Vec::with_capacity(message.len() + 1);
                line.extend_from_slice(message);
                line.push(b'\n');
                timeout(self.limit, stdin.write_all(&line))
                    .await
                    .map_err(|_| "writing to the backend: timed out".to_string())?
                    .map_err(|e| format!("writing to the backend: {e}"))
            }
            Link::Sse { poster, endpoint, .. } => {
                let response = poster.post(endpoint, message).await?;
                if response.status() != 202 {
                    return Err(format!("POST answered {}: {}", response.status(), rpc::preview(&response.body)));
                }
                Ok(())
            }
            Link::Streamable(link) => link.post(message, request, &self.router).await,
        }
    }

    /// Sends a request and waits for its response. Returns when it was sent
    /// and what arrived.
    pub async fn call(&mut self, method: &str, params: &str) -> Result<(Instant, Arrival), String> {
        let id = rpc::next_id();
        let answer = self.router.expect(id);
        let body = match &self.link {
            Link::Streamable(l) if l.mode() == Mode::Stateless => {
                rpc::request(id, method, &rpc::stateless_params(params))
            }
            _ => rpc::request(id, method, params),
        };
        let sent = Instant::now();
        if let Err(e) = self.send_message(&body, Some((method, params))).await {
            self.router.forget(id);
            return Err(format!("{method}: {e}"));
        }
        if matches!(self.link, Link::Streamable(_)) && self.router.is_pending(id) {
            self.router.forget(id);
            return Err(format!("{method}: the POST was answered without the response"));
        }
        match timeout(self.limit, answer).await {
            Ok(Ok(arrival)) => match &arrival.error {
                None => Ok((sent, arrival)),
                Some(e) => Err(format!("{method}: {e}")),
            },
            Ok(Err(_)) => Err(format!("{method}: the session's stream ended before the response")),
            Err(_) => {
                self.router.forget(id);
                Err(format!("{method}: no response in {:?}", self.limit))
            }
        }
    }

    /// The MCP handshake: `initialize`, then `notifications/initialized`.
    /// Returns when the initialize response arrived. Over Streamable HTTP
    /// the response must carry the session's id, and later requests carry
    /// the revision it agreed on; stateless requests have no handshake.
    pub async fn initialize(&mut self) -> Result<Instant, String> {
        let version = match &self.link {
            Link::Streamable(l) if l.mode() == Mode::Stateless => return Ok(Instant::now()),
            Link::Streamable(_) => rpc::SESSION_PROTOCOL_VERSION,
            _ => rpc::PROTOCOL_VERSION,
        };
        let (_, arrival) = self.call("initialize", &rpc::initialize_params(version)).await?;
        if let Link::Streamable(link) = &mut self.link {
            if link.session_id().is_none() {
                return Err("initialize was answered without an Mcp-Session-Id".into());
            }
            if let Some(v) = rpc::negotiated_version(&arrival.data) {
                link.set_protocol(v);
            }
        }
        self.send(&rpc::notification("notifications/initialized")).await?;
        Ok(arrival.at)
    }

    /// See `streamable::Link::post_to`; nothing for other transports.
    pub fn post_to(&mut self, url: &Url) {
        if let Link::Streamable(link) = &mut self.link {
            link.post_to(url);
        }
    }

    pub fn stdio_child(&self) -> Option<u32> {
        match &self.link {
            Link::Stdio { child, .. } => child.id(),
            Link::Sse { .. } | Link::Streamable(_) => None,
        }
    }

    /// Ends the session the transport's way, at once: over SSE, ends the
    /// stream's connection (the gateway reads EOF); over Streamable HTTP,
    /// `DELETE` (returns when it is answered); over stdio, closes the
    /// backend's stdin.
    pub async fn disconnect(&mut self) -> Result<(), String> {
        match &mut self.link {
            Link::Stdio { stdin, .. } => {
                stdin.take();
                Ok(())
            }
            Link::Sse { stream, .. } => match sys::shutdown(stream.as_ref()) {
                // Already shut down, or the server closed it first.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
                r => r.map_err(|e| format!("shutting the stream down: {e}")),
            },
            Link::Streamable(link) => link.delete().await,
        }
    }

    /// Disconnects and, over stdio, waits for the backend to exit.
    pub async fn close(mut self) -> Result<(), String> {
        let disconnected = self.disconnect().await;
        if let Link::Stdio { child, .. } = &mut self.link {
            match timeout(self.limit, child.wait()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("waiting for the backend: {e}")),
                Err(_) => {
                    let _ = child.kill().await;
                    return Err("the backend did not exit after its stdin closed".into());
                }
            }
        }
        disconnected
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_lines(stdout: ChildStdout, router: Rc<Router>) {
    let mut stdout = BufReader::with_capacity(READ_CHUNK, stdout);
    loop {
        let mut line = Vec::new();
        match stdout.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let at = Instant::now();
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if !line.trim_ascii().is_empty() {
                    router.route(line, at);
                }
            }
        }
    }
    router.close();
}

async fn read_events(mut events: EventReader, router: Rc<Router>) {
    loop {
        match events.next_item().await {
            Ok(Some(Item::Event(ev))) if ev.event == "message" => {
                router.route(ev.data, events.last_read);
            }
            Ok(Some(Item::Event(_))) => {
                router.unparsable.set(router.unparsable.get() + 1);
            }
            Ok(Some(Item::Comment)) => router.comments.set(router.comments.get() + 1),
            Ok(None) | Err(_) => break,
        }
    }
    router.close();
}

/// The body of a response being read as it arrives.
enum Body {
    Chunked(Chunked),
    UntilClose,
}

/// Reads an event stream: the response head, then SSE items.
struct EventReader {
    stream: Rc<TcpStream>,
    raw: Vec<u8>,
    body: Body,
    decoded: Vec<u8>,
    parser: sse::Parser,
    /// When the bytes being parsed were read.
    last_read: Instant,
    ended: bool,
}

impl EventReader {
    fn new(stream: Rc<TcpStream>) -> EventReader {
        EventReader {
            stream,
            raw: Vec::new(),
            body: Body::UntilClose,
            decoded: Vec::new(),
            parser: sse::Parser::default(),
            last_read: Instant::now(),
            ended: false,
        }
    }

    /// Reads into `raw`; false at EOF.
    async fn fill(&mut self) -> Result<bool, String> {
        self.raw.reserve(READ_CHUNK);
        loop {
            self.stream.readable().await.map_err(|e| format!("reading the stream: {e}"))?;
            match self.stream.try_read_buf(&mut self.raw) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    self.last_read = Instant::now();
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("reading the stream: {e}")),
            }
        }
    }

    async fn read_head(&mut self) -> Result<http::Head, String> {
        let end = loop {
            if let Some(end) = http::head_end(&self.raw) {
                break end;
            }
            if self.raw.len() > READ_CHUNK {
                return Err("response head too large".into());
            }
            if !self.fill().await? {
                return Err("connection closed before a response".into());
            }
        };
        let head = http::parse_head(&self.raw[..end - 2])?;
        self.raw.drain(..end);
        self.body = match head.framing {
            Framing::Chunked => Body::Chunked(Chunked::default()),
            Framing::UntilClose | Framing::Length(_) => Body::UntilClose,
        };
        Ok(head)
    }

    /// Whatever of an error body arrives soon, decoded, for the error
    /// message.
    async fn read_some(&mut self) -> Vec<u8> {
        if self.raw.is_empty() {
            let _ = timeout(Duration::from_millis(200), self.fill()).await;
        }
        let raw = std::mem::take(&mut self.raw);
        match &mut self.body {
            Body::Chunked(decoder) => {
                let mut body = Vec::new();
                // A broken body still tells something: keep what decoded.
                let _ = decoder.feed(&raw, &mut body);
                body
            }
            Body::UntilClose => raw,
        }
    }

    /// The next SSE item; `None` when the stream ended.
    async fn next_item(&mut self) -> Result<Option<Item>, String> {
        loop {
            if let Some(item) = self.parser.next_item() {
                return Ok(Some(item));
            }
            if self.ended {
                return Ok(None);
            }
            if self.raw.is_empty() && !self.fill().await? {
                self.ended = true;
                continue;
            }
            match &mut self.body {
                Body::Chunked(decoder) => {
                    self.decoded.clear();
                    let used = decoder.feed(&self.raw, &mut self.decoded)?;
                    self.raw.drain(..used);
                    if decoder.done() {
                        self.ended = true;
                    }
                    self.parser.feed(&self.decoded);
                }
                Body::UntilClose => {
                    self.parser.feed(&self.raw);
                    self.raw.clear();
                }
            }
        }
    }
}
