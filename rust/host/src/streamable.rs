//! Sessions of the Streamable HTTP transport, revisions 2025-03-26 to
//! 2025-11-25: one backend per session, which outlives any one HTTP
//! request, so a task of the host owns it and routes every message.
//!
//! - A POST of `initialize` without a session id starts a backend; the
//!   session exists once the backend's initialize result has come back.
//! - A client request is forwarded under an id of the bridge's own (some
//!   clients send `id: 1` every time) and answered on its own POST: as one
//!   JSON document if the response is the first thing for it, else as an
//!   event stream of what relates to it, ending with the response.
//! - What the backend sends on its own goes on exactly one stream: the
//!   request's it relates to (progress), the only request in flight, the
//!   standalone (GET) stream, the oldest request in flight, or a bounded
//!   queue that the next GET drains.
//! - A session ends on DELETE, after its idle or absolute lifetime, when its
//!   backend ends, when an operator ends it, or when the host shuts down;
//!   then its id is unknown (404) and its processes are ended.

use crate::backend::SpawnError;
use crate::child::{Child, Output, Refused};
use crate::host::{Host, Registered, SessionInfo, Transport};
use crate::http::{relay, Body, Item, Reply, Request};
use crate::limits::limits_note;
use crate::log;
use crate::mcp::{self, code, Form, Message, Shape};
use crate::message;
use crate::reaper::Exit;
use crate::restart::{self, Restarts};
use crate::spec::SpawnSpec;
use mcp_bridge_core::random;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::spawn_local;

/// The transport's name, in events and the status report.
pub const TRANSPORT: &str = "streamable";

/// Random bytes in a session id, after the host token.
const SESSION_RANDOM_BYTES: usize = 16;

/// How long a backend may take to answer `initialize`.
const INITIALIZE_LIMIT: Duration = Duration::from_secs(60);

/// Messages that may wait for a stream's HTTP request to take them.
const STREAM_QUEUE: usize = 16;

/// Messages kept for the next GET when no stream can take them.
const UNROUTED_MESSAGES: usize = 100;
const UNROUTED_BYTES: usize = 1 << 20;

/// The answer to an `initialize` that came without a session slot: the
/// worker takes one and asks again.
const NEED_SLOT: u16 = 428;

/// Requests of one session that may wait for a response at once.
const MAX_PENDING: usize = 10_000;

/// The backend id of the client's `initialize`, and of its replay to a
/// restarted backend: client requests are numbered from 1.
const INITIALIZE_ID: u64 = 0;

/// How long the end of a backend's output waits for its exit, to tell a
/// backend that exited (and how) from one that only closed its output.
const EXIT_AFTER_EOF: Duration = Duration::from_millis(100);

type Stream = mpsc::Sender<Item>;

/// What the HTTP requests of a session ask of its task.
enum Command {
    /// A client request; `client_id` is its id's JSON text.
    Request {
        message: Message,
        client_id: String,
        progress: Option<String>,
        stream: Stream,
    },
    Forward {
        message: Message,
        done: oneshot::Sender<Result<(), Refused>>,
    },
    Listen {
        stream: Stream,
    },
    Delete {
        done: oneshot::Sender<()>,
    },
}

/// How the HTTP requests of a session reach its task.
pub struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    keepalive: Option<Duration>,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Deleted,
    Idle,
    Lifetime,
    BackendExited,
    OutputClosed,
    OversizedLine,
    HostShutdown,
    ByOperator,
    /// It crashed once more than `max_restarts` allows.
    RestartLimit,
    /// It crashed and its replacement could not be started.
    RestartFailed,
    /// The restarted backend refused the replayed `initialize`.
    ReplayRefused,
}

impl End {
    fn token(self) -> &'static str {
        match self {
            End::Deleted => "deleted",
            End::Idle => "idle_timeout",
            End::Lifetime => "max_lifetime",
            End::BackendExited => "backend_exited",
            End::OutputClosed => "backend_closed_output",
            End::OversizedLine => "oversized_line",
            End::HostShutdown => "worker_shutdown",
            End::ByOperator => "ended_by_operator",
            End::RestartLimit => "restart_limit",
            End::RestartFailed => "restart_failed",
            End::ReplayRefused => "replay_refused",
        }
    }

    fn by_backend(self) -> bool {
        !matches!(self, End::Deleted | End::Idle | End::Lifetime | End::HostShutdown | End::ByOperator)
    }
}

/// An answer the bridge gives itself: status and a JSON-RPC error.
struct Refusal {
    status: u16,
    body: Vec<u8>,
}

/// The id of a refusal that answers no request in particular.
const NO_ID: &str = "null";

/// `id` is the JSON text of the request's id, or [`NO_ID`].
fn refuse(status: u16, id: &str, code: i64, message: &str) -> Refusal {
    Refusal { status, body: mcp::error_bytes(&id_value(id), code, message, None) }
}

/// [`refuse`] with the id as a value.
fn refuse_to(status: u16, id: &Value, code: i64, message: &str) -> Refusal {
    Refusal { status, body: mcp::error_bytes(id, code, message, None) }
}

fn session_not_found(id: &str) -> Refusal {
    refuse(404, id, code::SESSION_NOT_FOUND, "Session not found")
}

/// A request id's JSON text as a value, for the rarer answers built as one.
fn id_value(id: &str) -> Value {
    serde_json::from_str(id).unwrap_or(Value::Null)
}

/// Serves a request of the sessionful leg on the worker's connection.
/// Returns false when the connection cannot be used again.
pub async fn serve<R, W>(
    host: &Rc<Host>,
    request: Request<'_>,
    parsed: Option<Message>,
    reader: &mut R,
    writer: W,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reply = Reply::new(writer);
    let outcome = match &*request.headers.method {
        "POST" => post(host, &request, parsed, reader, &mut reply).await,
        "GET" => get(host, &request, reader, &mut reply).await,
        "DELETE" => delete(host, &request, &mut reply).await,
        other => Err(refuse(405, NO_ID, code::SERVER_ERROR, &format!("method {other} is not allowed"))),
    };
    match outcome {
        Ok(reusable) => reusable,
        Err(r) => reply.json(r.status, None, &r.body).await.is_ok(),
    }
}

/// The live Streamable session `request` names, if its binding matches.
fn find(
    host: &Host,
    request: &Request<'_>,
) -> Option<(Rc<SessionInfo>, mpsc::UnboundedSender<Command>, Option<Duration>)> {
    let sessions = host.sessions.borrow();
    let session = sessions.get(&*request.headers.session).filter(|s| s.info.binding == request.binding)?;
    match &session.kind {
        Transport::Streamable(handle) => Some((Rc::clone(&session.info), handle.commands.clone(), handle.keepalive)),
        Transport::Sse(_) => None,
    }
}

fn check_version(request: &Request<'_>, id: &str) -> Result<(), Refusal> {
    let v = &request.headers.version;
    if v.is_empty() || mcp::LEGACY_VERSIONS.contains(&&**v) {
        return Ok(());
    }
    Err(refuse(400, id, code::SERVER_ERROR, &format!("unsupported MCP-Protocol-Version \"{v}\"")))
}

async fn post<R, W>(
    host: &Rc<Host>,
    request: &Request<'_>,
    parsed: Option<Message>,
    reader: &mut R,
    reply: &mut Reply<W>,
) -> Result<bool, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let message = match parsed {
        Some(m) => m,
        None => Message::parse(request.body.to_vec()).map_err(|(c, why)| refuse(400, NO_ID, c, &why))?,
    };
    let form = message.form().map_err(|(c, why)| refuse(400, NO_ID, c, &why))?;
    if request.headers.session.is_empty() {
        return match form {
            Form::Request { method, id } if method == "initialize" => {
                check_version(request, id)?;
                if !request.headers.slot {
                    // The worker takes a session slot first, then asks again.
                    return Ok(reply.empty(NEED_SLOT, None).await.is_ok());
                }
                let client_id = id_value(id);
                initialize(host, request, message.value(), client_id, reader, reply).await
            }
            Form::Request { id, .. } => {
                Err(refuse(400, id, code::SERVER_ERROR, "Bad Request: Mcp-Session-Id header is required"))
            }
            _ => Err(refuse(400, NO_ID, code::SERVER_ERROR, "Bad Request: Mcp-Session-Id header is required")),
        };
    }
    let request_id = match &form {
        Form::Request { id, .. } => *id,
        _ => NO_ID,
    };
    let Some((info, commands, keepalive)) = find(host, request) else { return Err(session_not_found(request_id)) };
    check_version(request, request_id)?;
    match form {
        Form::Request { method, .. } if method == "initialize" => {
            Err(refuse(400, request_id, code::INVALID_REQUEST, "the session is already initialized"))
        }
        Form::Request { id, .. } => {
            info.last_activity.set(Instant::now());
            let progress = message.param(&["_meta", "progressToken"]);
            let client_id = id.to_owned();
            let (stream, items) = mpsc::channel(STREAM_QUEUE);
            let command = Command::Request { message, client_id, progress, stream };
            if let Err(mpsc::error::SendError(command)) = commands.send(command) {
                let Command::Request { client_id, .. } = command else { unreachable!("sent a request") };
                return Err(session_not_found(&client_id));
            }
            Ok(relay(items, reader, reply, keepalive, Some(&info.id)).await)
        }
        Form::Notification { .. } | Form::Response { .. } => {
            info.last_activity.set(Instant::now());
            let (done, outcome) = oneshot::channel();
            if commands.send(Command::Forward { message, done }).is_err() {
                return Err(session_not_found(NO_ID));
            }
            match outcome.await {
                Ok(Ok(())) => Ok(reply.empty(202, Some(&info.id)).await.is_ok()),
                Ok(Err(Refused::Busy)) => Err(refuse(
                    503,
                    NO_ID,
                    code::SERVER_ERROR,
                    "the MCP server is not reading its input; try again later",
                )),
                _ => Err(session_not_found(NO_ID)),
            }
        }
    }
}

async fn get<R, W>(
    host: &Rc<Host>,
    request: &Request<'_>,
    reader: &mut R,
    reply: &mut Reply<W>,
) -> Result<bool, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if request.headers.session.is_empty() {
        return Err(refuse(400, NO_ID, code::SERVER_ERROR, "Bad Request: Mcp-Session-Id header is required"));
    }
    let Some((info, commands, keepalive)) = find(host, request) else { return Err(session_not_found(NO_ID)) };
    check_version(request, NO_ID)?;
    let (stream, items) = mpsc::channel(STREAM_QUEUE);
    if commands.send(Command::Listen { stream }).is_err() {
        return Err(session_not_found(NO_ID));
    }
    if reply.head(200, Body::Sse, Some(&info.id)).await.is_err() {
        return Ok(false);
    }
    Ok(relay(items, reader, reply, keepalive, Some(&info.id)).await)
}

async fn delete<W: AsyncWrite + Unpin>(
    host: &Rc<Host>,
    request: &Request<'_>,
    reply: &mut Reply<W>,
) -> Result<bool, Refusal> {
    if request.headers.session.is_empty() {
        return Err(refuse(400, NO_ID, code::SERVER_ERROR, "Bad Request: Mcp-Session-Id header is required"));
    }
    let Some((_, commands, _)) = find(host, request) else { return Err(session_not_found(NO_ID)) };
    check_version(request, NO_ID)?;
    let (done, deleted) = oneshot::channel();
    if commands.send(Command::Delete { done }).is_err() {
        return Err(session_not_found(NO_ID));
    }
    // The session is out of the registry once this resolves.
    let _ = deleted.await;
    Ok(reply.empty(200, None).await.is_ok())
}

/// Starts a backend, has it answer the client's `initialize`, and makes
/// the session if it did. Nothing is left of a backend that did not.
async fn initialize<R, W>(
    host: &Rc<Host>,
    request: &Request<'_>,
    mut message: Value,
    client_id: Value,
    reader: &mut R,
    reply: &mut Reply<W>,
) -> Result<bool, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if host.shutting_down() {
        return Ok(reply.head_with(503, Body::None, None, Some(1)).await.and(reply.end().await).is_ok());
    }
    let spec = SpawnSpec::parse(request.spec)
        .map_err(|e| refuse_to(500, &client_id, code::INTERNAL_ERROR, &format!("the bridge sent {e}")))?;
    let keepalive = spec.keepalive_interval();
    let mut child = match Child::spawn(host, spec) {
        Ok(c) => c,
        Err(SpawnError { reason, detail }) => {
            log!(Warn, "cannot start the MCP server: {detail}");
            let message = format!("{reason} (the gateway's error log says why)");
            return Err(refuse_to(502, &client_id, code::SERVER_ERROR, &message));
        }
    };
    let started = Instant::now();
    message["id"] = json!(INITIALIZE_ID);
    let _ = child.send(message::to_bytes(&message));
    let mut restarts = Restarts::new(&child.spec);
    if let Some(r) = &mut restarts {
        r.record_initialize(message);
    }
    let mut early = Vec::new();
    let mut closed_probe = [0u8; 1];
    let answer = tokio::time::timeout(INITIALIZE_LIMIT, async {
        loop {
            tokio::select! {
                out = child.next() => match out {
                    Output::Message(line) => match mcp::parse(&line) {
                        Ok((value, Shape::Response { id })) if id == json!(INITIALIZE_ID) => return Some(value),
                        Ok(_) => early.push(line),
                        Err((_, why)) => log!(Warn, "backend {}: dropped an output line that is {why}", child.pid),
                    },
                    Output::Stderr(line) => early.push(message::stderr_notification(&line)),
                    Output::Closed { .. } => return None,
                },
                _ = reader.read(&mut closed_probe) => return None,
            }
        }
    })
    .await;
    let failure = match answer {
        Ok(Some(mut response)) if response.get("result").is_some() => {
            response["id"] = client_id.clone();
            let session = Started { child, restarts, response, early, keepalive };
            return Ok(begin(host, request, session, reply).await);
        }
        Ok(Some(mut response)) => {
            // The backend refused: its error goes to the client, and no session is made.
            response["id"] = client_id.clone();
            let body = message::to_bytes(&response);
            let (_, _, exit) = child.end(host, Instant::now()).await;
            log!(
                Info,
                "the MCP server refused initialize ({}); no session",
                exit.map(|e| e.to_string()).unwrap_or_default()
            );
            return Ok(reply.json(200, None, &body).await.is_ok());
        }
        Ok(None) => "ended before answering",
        Err(_) => "did not answer in time",
    };
    let tail = child.tail.describe();
    let pid = child.pid;
    let (_, _, exit) = child.end(host, Instant::now()).await;
    let status = exit.map(|e| e.to_string()).unwrap_or_else(|| "ended".into());
    log!(
        Warn,
        "backend {pid}: the MCP server did not answer initialize: it {failure} ({status}, {} ms after it started); {tail}",
        started.elapsed().as_millis()
    );
    Err(refuse_to(502, &client_id, code::SERVER_ERROR, &format!("the MCP server {failure}")))
}

/// A backend that answered the client's `initialize`.
struct Started {
    child: Child,
    restarts: Option<Restarts>,
    response: Value,
    /// What it sent before the answer.
    early: Vec<Vec<u8>>,
    keepalive: Option<Duration>,
}

/// Registers a session whose backend answered `initialize`, answers the
/// client, and leaves the session to its task.
async fn begin<W: AsyncWrite + Unpin>(
    host: &Rc<Host>,
    request: &Request<'_>,
    started: Started,
    reply: &mut Reply<W>,
) -> bool {
    let Started { child, restarts, response, early, keepalive } = started;
    let random = random::hex(SESSION_RANDOM_BYTES).unwrap_or_default();
    let id = format!("{}{random}", host.token);
    let info = SessionInfo::new(id.clone(), request.binding.clone(), TRANSPORT, child.pid);
    let (commands, rx) = mpsc::unbounded_channel();
    let own = commands.clone();
    host.sessions.borrow_mut().insert(
        id.clone(),
        Registered { info: Rc::clone(&info), kind: Transport::Streamable(Handle { commands, keepalive }) },
    );
    host.events.session_started(&info.binding, TRANSPORT, &id);
    let answer = response.to_string();
    host.events.message_in(&info.binding.route, request.body.len());
    host.events.message_out(&info.binding.route, answer.len());
    log!(Info, "session {}: started \"{}\" as process {}", child.pid, child.spec.command, child.pid);
    let mut session = Session::new(Rc::clone(host), child, info, restarts);
    for line in early {
        session.unrouted.push(line);
    }
    spawn_local(session.run(rx));
    let answered = reply.json(200, Some(&id), answer.as_bytes()).await.is_ok();
    if !answered {
        // The client left before it could learn the session's id: nobody
        // can use the session, so it ends now rather than when idle.
        let (done, _) = oneshot::channel();
        let _ = own.send(Command::Delete { done });
    }
    answered
}

/// A request of the client the backend has not answered yet.
struct Pending {
    /// Its id's JSON text, as the client sent it.
    client_id: String,
    stream: Option<Stream>,
    progress: Option<String>,
}

/// Messages no stream could take, for the next GET.
#[derive(Default)]
struct Unrouted {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
    dropped: u64,
}

impl Unrouted {
    fn push(&mut self, message: Vec<u8>) {
        if self.messages.len() >= UNROUTED_MESSAGES || self.bytes + message.len() > UNROUTED_BYTES {
            self.dropped += 1;
            return;
        }
        self.bytes += message.len();
        self.messages.push_back(message);
    }
}

struct Session {
    host: Rc<Host>,
    child: Child,
    info: Rc<SessionInfo>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// Backend ids of pending requests, oldest first.
    order: VecDeque<u64>,
    progress: HashMap<String, u64>,
    standalone: Option<Stream>,
    unrouted: Unrouted,
    restarts: Option<Restarts>,
}

impl Session {
    fn new(host: Rc<Host>, child: Child, info: Rc<SessionInfo>, restarts: Option<Restarts>) -> Session {
        Session {
            host,
            child,
            info,
            next_id: 1,
            pending: HashMap::new(),
            order: VecDeque::new(),
            progress: HashMap::new(),
            standalone: None,
            unrouted: Unrouted::default(),
            restarts,
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let idle = self.child.spec.idle_timeout();
        // Made once, not per message: the idle timer is moved on only when
        // it fires.
        let lifetime = tokio::time::sleep(self.child.spec.max_lifetime());
        let idle_timer = tokio::time::sleep_until((self.info.last_activity.get() + idle).into());
        let mut shutdown = self.host.shutdown_watch();
        let shutdown = shutdown.wait_for(|&down| down);
        let info = Rc::clone(&self.info);
        let by_operator = info.end.notified();
        tokio::pin!(lifetime, idle_timer, shutdown, by_operator);
        let ended = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Delete { done }) => {
                        self.unregister();
                        let _ = done.send(());
                        break End::Deleted;
                    }
                    Some(command) => self.command(command).await,
                    None => break End::HostShutdown,
                },
                out = self.child.next() => match out {
                    Output::Message(line) => {
                        if let Some(end) = self.route(line).await {
                            break end;
                        }
                    }
                    Output::Stderr(line) => self.unsolicited(message::stderr_notification(&line)).await,
                    Output::Closed { too_long: true } => break End::OversizedLine,
                    Output::Closed { too_long: false } => {
                        if let Some(end) = self.output_closed().await {
                            break end;
                        }
                    }
                },
                _ = &mut idle_timer => {
                    if self.info.last_activity.get() + idle <= Instant::now() && self.pending.is_empty() {
                        break End::Idle;
                    }
                    // Activity since, or a request still being answered: wait on.
                    if !self.pending.is_empty() {
                        self.info.last_activity.set(Instant::now());
                    }
                    idle_timer.as_mut().reset((self.info.last_activity.get() + idle).into());
                }
                _ = &mut lifetime => break End::Lifetime,
                _ = &mut by_operator => break End::ByOperator,
                _ = &mut shutdown => break End::HostShutdown,
            }
        };
        self.end(ended).await;
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Request { message, client_id, progress, stream } => {
                let fail = |why: &str| mcp::error_bytes(&id_value(&client_id), code::SERVER_ERROR, why, None);
                if self.pending.len() >= MAX_PENDING {
                    let _ = stream.send(Item::Final(200, fail("too many requests awaiting a response"))).await;
                    return;
                }
                let backend_id = self.next_id;
                self.next_id += 1;
                let bytes = message.with_id(backend_id.to_string().as_bytes());
                let len = bytes.len();
                if let Err(refused) = self.child.send_line(bytes) {
                    let why = match refused {
                        Refused::Busy => "the MCP server is not reading its input; try again later",
                        Refused::Closed => "the MCP server stopped reading its input",
                    };
                    let _ = stream.send(Item::Final(200, fail(why))).await;
                    return;
                }
                self.host.events.message_in(&self.info.binding.route, len);
                if let Some(token) = &progress {
                    self.progress.insert(token.clone(), backend_id);
                }
                self.pending.insert(backend_id, Pending { client_id, stream: Some(stream), progress });
                self.order.push_back(backend_id);
            }
            Command::Forward { message, done } => {
                if let Some(r) = &mut self.restarts {
                    if matches!(message.form(), Ok(Form::Notification { method }) if method == "notifications/initialized")
                    {
                        r.record_initialized(message.text());
                    }
                }
                let Some(bytes) = self.for_backend(message) else {
                    // It names no request in flight: nothing to cancel.
                    let _ = done.send(Ok(()));
                    return;
                };
                let len = bytes.len();
                let outcome = self.child.send_line(bytes);
                if outcome.is_ok() {
                    self.host.events.message_in(&self.info.binding.route, len);
                }
                let _ = done.send(outcome);
            }
            Command::Listen { stream } => {
                if let Some(old) = self.standalone.replace(stream.clone()) {
                    let _ = old.send(Item::End).await;
                }
                while let Some(message) = self.unrouted.messages.pop_front() {
                    self.unrouted.bytes -= message.len();
                    if stream.send(Item::Message(message)).await.is_err() {
                        self.standalone = None;
                        break;
                    }
                }
            }
            Command::Delete { .. } => {}
        }
    }

    /// A client's notification or response as the backend gets it. A
    /// `notifications/cancelled` names the request by the client's id; the
    /// backend knows it by the bridge's: it is rewritten, or dropped (None)
    /// when it names no request in flight (of two in flight under one
    /// client id, the later counts). Other messages pass as they are.
    fn for_backend(&self, message: Message) -> Option<Vec<u8>> {
        if !matches!(message.form(), Ok(Form::Notification { method }) if method == "notifications/cancelled") {
            return Some(message.into_text());
        }
        let mut value = message.value();
        let client_id = value.get("params").and_then(|p| p.get("requestId")).map(Value::to_string)?;
        let backend_id = self
            .order
            .iter()
            .rev()
            .find(|b| self.pending.get(b).is_some_and(|p| mcp::canonical(p.client_id.as_bytes()) == client_id))?;
        value["params"]["requestId"] = json!(backend_id);
        Some(message::to_bytes(&value))
    }

    /// Routes one line of the backend's output. Returns why the session
    /// ends, if this line ends it.
    async fn route(&mut self, line: Vec<u8>) -> Option<End> {
        let len = line.len();
        let message = match Message::try_parse(line) {
            Ok(message) => message,
            Err((line, (_, why))) => {
                let pid = self.child.pid;
                log!(Warn, "session {pid}: dropped a backend output line: {why}: {}", message::excerpt(&line));
                return None;
            }
        };
        self.host.events.message_out(&self.info.binding.route, len);
        match message.form() {
            Ok(Form::Response { id }) => {
                let Ok(backend_id) = id.parse::<u64>() else { return None };
                if backend_id == INITIALIZE_ID {
                    // The answer to a replayed initialize: the bridge's own.
                    let value = message.value();
                    if value.get("result").is_none() {
                        let pid = self.child.pid;
                        log!(Warn, "session {pid}: the restarted MCP server refused the replayed initialize: {value}");
                        return Some(End::ReplayRefused);
                    }
                    return None;
                }
                let pending = self.pending.remove(&backend_id)?;
                self.order.retain(|&b| b != backend_id);
                if let Some(token) = &pending.progress {
                    self.progress.remove(token);
                }
                self.info.last_activity.set(Instant::now());
                if let Some(stream) = pending.stream {
                    let _ = stream.send(Item::Final(200, message.with_id(pending.client_id.as_bytes()))).await;
                }
            }
            Ok(Form::Notification { method }) if method == "notifications/progress" => {
                let token = message.param(&["progressToken"]);
                match token.and_then(|t| self.progress.get(&t).copied()) {
                    Some(backend_id) => self.send_to_request(backend_id, message.into_text()).await,
                    None => self.unsolicited(message.into_text()).await,
                }
            }
            // Parsing checked its form.
            _ => self.unsolicited(message.into_text()).await,
        }
        None
    }

    /// The backend's output ended. A backend that crashed is started again
    /// when the route wants that and the bound allows; otherwise this says
    /// why the session ends.
    async fn output_closed(&mut self) -> Option<End> {
        let Some(restarts) = &mut self.restarts else { return Some(End::OutputClosed) };
        let exit = tokio::time::timeout(EXIT_AFTER_EOF, self.child.wait_exit()).await.ok().flatten();
        if !restart::is_crash(exit) {
            return Some(End::OutputClosed);
        }
        let Some(nth) = restarts.allow(Instant::now()) else { return Some(End::RestartLimit) };
        let max = restarts.max();
        let replay = restarts.replay(&INITIALIZE_ID.to_string());
        let status = exit.map(|e| e.to_string()).unwrap_or_default();
        let old_pid = self.child.pid;
        log!(
            Warn,
            "session {old_pid}: the MCP server \"{}\" {status} {} ms after it started; {}; restarting it ({nth} of at most {max})",
            self.child.spec.command,
            self.child.started.elapsed().as_millis(),
            self.child.tail.describe()
        );
        let home = self.child.take_home();
        let child = match Child::spawn_in(&self.host, self.child.spec.clone(), home) {
            Ok(child) => child,
            Err(SpawnError { detail, .. }) => {
                log!(Warn, "session {old_pid}: cannot restart the MCP server: {detail}");
                return Some(End::RestartFailed);
            }
        };
        for line in replay {
            // A new backend's input is empty: this cannot be refused as busy,
            // and a backend that already stopped reading shows as a crash.
            let _ = child.send(line);
        }
        let old = std::mem::replace(&mut self.child, child);
        self.info.pid.set(self.child.pid);
        let host = Rc::clone(&self.host);
        spawn_local(async move {
            let (teardown, _, _) = old.end(&host, Instant::now()).await;
            log!(Info, "session {old_pid}: the crashed backend's processes: {teardown}");
        });
        let why = format!("the MCP server {status} and is being restarted");
        for backend_id in std::mem::take(&mut self.order) {
            let Some(pending) = self.pending.remove(&backend_id) else { continue };
            if let Some(stream) = pending.stream {
                let _ = stream.send(Item::Final(200, message::no_response_error(&pending.client_id, &why))).await;
            }
        }
        self.progress.clear();
        self.host.events.backend_restarted(&self.info.binding, TRANSPORT, &self.info.id, &status);
        self.unsolicited(restart::warning(exit, nth, max)).await;
        log!(Info, "session {old_pid}: restarted as process {}", self.child.pid);
        None
    }

    /// Sends a message on a pending request's stream, or elsewhere if that
    /// stream is gone.
    async fn send_to_request(&mut self, backend_id: u64, line: Vec<u8>) {
        let stream = self.pending.get(&backend_id).and_then(|p| p.stream.clone());
        match stream {
            Some(s) => {
                if let Err(mpsc::error::SendError(item)) = s.send(Item::Message(line)).await {
                    if let Some(p) = self.pending.get_mut(&backend_id) {
                        p.stream = None;
                    }
                    if let Item::Message(line) = item {
                        self.unsolicited(line).await;
                    }
                }
            }
            None => self.unsolicited(line).await,
        }
    }

    /// A message the backend sent on its own: on exactly one stream.
    async fn unsolicited(&mut self, mut line: Vec<u8>) {
        loop {
            let open: Vec<u64> = self.order.iter().copied().filter(|b| self.pending[b].stream.is_some()).collect();
            let (target, pending_id) = if open.len() == 1 {
                (self.pending[&open[0]].stream.clone(), Some(open[0]))
            } else if self.standalone.is_some() {
                (self.standalone.clone(), None)
            } else if let Some(&oldest) = open.first() {
                (self.pending[&oldest].stream.clone(), Some(oldest))
            } else {
                self.unrouted.push(line);
                return;
            };
            let Some(stream) = target else { return };
            match stream.send(Item::Message(line)).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(item)) => {
                    // That stream's client is gone: forget it and try the next.
                    match pending_id {
                        Some(b) => {
                            if let Some(p) = self.pending.get_mut(&b) {
                                p.stream = None;
                            }
                        }
                        None => self.standalone = None,
                    }
                    let Item::Message(back) = item else { return };
                    line = back;
                }
            }
        }
    }

    fn unregister(&self) {
        self.host.sessions.borrow_mut().remove(&self.info.id);
    }

    async fn end(mut self, ended: End) {
        let since = Instant::now();
        self.unregister();
        let exit = match ended {
            End::BackendExited | End::OutputClosed | End::RestartLimit | End::RestartFailed => {
                tokio::time::timeout(Duration::from_millis(100), self.child.wait_exit()).await.ok().flatten()
            }
            _ => None,
        };
        let ended = if exit.is_some() && ended == End::OutputClosed { End::BackendExited } else { ended };
        let status = exit.map(|e| e.to_string()).unwrap_or_else(|| "ended".into());
        let why = match ended {
            End::Deleted => "the client deleted the session".to_string(),
            End::Idle => "the session was idle too long".to_string(),
            End::Lifetime => "the session reached its lifetime".to_string(),
            End::BackendExited => format!("backend {status}"),
            End::OutputClosed => "backend closed its output".to_string(),
            End::OversizedLine => "backend wrote a line over max_message_bytes".to_string(),
            End::HostShutdown => "worker shutting down".to_string(),
            End::ByOperator => "ended by an operator".to_string(),
            End::RestartLimit => format!("backend {status}, past the restart bound (max_restarts)"),
            End::RestartFailed => format!("backend {status} and could not be restarted"),
            End::ReplayRefused => "the restarted backend refused the replayed initialize".to_string(),
        };
        for backend_id in std::mem::take(&mut self.order) {
            let Some(pending) = self.pending.remove(&backend_id) else { continue };
            if let Some(stream) = pending.stream {
                let error = message::no_response_error(&pending.client_id, &why);
                let _ = stream.try_send(Item::Final(200, error));
            }
        }
        if let Some(stream) = self.standalone.take() {
            let _ = stream.try_send(Item::End);
        }
        let mut reason = ended.token();
        if ended.by_backend() {
            // A limit is the reason, unless a restart bound ended the session.
            if matches!(ended, End::BackendExited | End::OutputClosed) {
                reason = exit.and_then(Exit::limit_reason).unwrap_or(reason);
            }
            log!(
                Warn,
                "session {}: the MCP server \"{}\" ended the session {} ms after it started: {why}; {}{}",
                self.child.pid,
                self.child.spec.command,
                self.child.started.elapsed().as_millis(),
                self.child.tail.describe(),
                limits_note(&self.child.spec)
            );
        }
        let pid = self.child.pid;
        let (teardown, took, _) = self.child.end(&self.host, since).await;
        self.host.events.session_ended(&self.info.binding, TRANSPORT, &self.info.id, reason, took);
        log!(Info, "session {pid}: ended: {why}; {teardown}");
    }
}
