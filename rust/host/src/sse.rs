//! A session of the HTTP+SSE transport: a backend process and the worker
//! connection it lives on.
//!
//! A session lives exactly as long as its connection. When the connection
//! closes (the client went away, the request ended by any path), the
//! backend's processes are ended (see `teardown`). When the backend ends
//! first, its remaining output is forwarded, then a response for each
//! request it left unanswered, then an Exit frame, then the connection is
//! closed.

use crate::backend::{self, Backend, SpawnError};
use crate::binding::Binding;
use crate::child::private_home;
use crate::frame::{self, AckStatus, Kind, HEADER_LEN};
use crate::host::{Host, Registered, SessionInfo, Transport};
use crate::limits::limits_note;
use crate::lines::{Line, LineReader};
use crate::log;
use crate::mcp;
use crate::message;
use crate::reaper::Exit;
use crate::restart::{self, Restarts, SSE_REPLAY_ID};
use crate::rundir;
use crate::spec::{SpawnSpec, StderrMode};
use crate::stderr::{self, StderrTail};
use crate::stdin::{Refused, Stdin};
use crate::teardown::{Ending, Teardown};
use mcp_bridge_core::random;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Mutex};
use tokio::task::{spawn_local, JoinHandle};

/// The transport's name, in events and the status report.
const TRANSPORT: &str = "sse";

/// Random bytes in a session id, after the host token.
const SESSION_RANDOM_BYTES: usize = 16;

/// Length of a session id: host token then 128 random bits, in hex.
pub const SESSION_ID_LEN: usize = mcp_bridge_core::runtime::TOKEN_LEN + 2 * SESSION_RANDOM_BYTES;

/// How long output still in flight is forwarded after the backend's group
/// is gone (a descendant that escaped the group may hold the pipe open).
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// How long the last frame of a session may wait for a worker that is not
/// reading (its client is slow); the connection is closed either way.
const EXIT_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// How long the end of a backend's output waits for its exit, to tell a
/// backend that exited from one that only closed its output.
const EXIT_AFTER_EOF: Duration = Duration::from_millis(100);

/// Requests of one session that may wait for a response at once. Each
/// costs a few bytes of memory; more are refused as busy.
const MAX_PENDING: usize = 10_000;

/// Read buffers, allocated (and zeroed) for every session, idle or not:
/// small, since a longer line only costs more reads.
const STDOUT_BUFFER: usize = 16 * 1024;

/// Passes a client message to a session's backend. `payload` is the
/// session id, the binding of the request (see `binding`), then the
/// message.
pub fn deliver(host: &Host, mut payload: Vec<u8>) -> (AckStatus, String) {
    let unknown = || (AckStatus::UnknownSession, "session not found".to_string());
    let Some((id, rest)) = split_delivery(&payload) else { return unknown() };
    let sessions = host.sessions.borrow();
    let Some(session) = sessions.get(id) else { return unknown() };
    // A session of another route or consumer, or of the other transport,
    // looks exactly like none.
    let Some(message) = session.info.binding.strip(rest) else { return unknown() };
    let Transport::Sse(inbox) = &session.kind else { return unknown() };
    let len = message.len();
    if len > inbox.max_message {
        return (AckStatus::TooLarge, format!("message of {len} bytes is over the limit of {}", inbox.max_message));
    }
    let ids = match message::inspect(message) {
        Ok(ids) => ids,
        Err(why) => return (AckStatus::InvalidJson, format!("message is {why}")),
    };
    if ids.requests.iter().any(|id| id.len() > message::MAX_ID_BYTES) {
        return (AckStatus::InvalidJson, format!("a request id is longer than {} bytes", message::MAX_ID_BYTES));
    }
    if inbox.pending.len() + ids.requests.len() > MAX_PENDING {
        return (AckStatus::Busy, format!("{MAX_PENDING} requests are already waiting for a response"));
    }
    if let Some(restarts) = &inbox.restarts {
        restarts.borrow_mut().record_client_message(message);
    }
    // The line goes out of the payload's own buffer, flattened in place.
    let from = payload.len() - len;
    if ids.line_breaks {
        message::flatten_line_breaks(&mut payload[from..]);
    }
    payload.push(b'\n');
    match inbox.stdin.offer(payload, from) {
        Ok(()) => {
            inbox.pending.sent(ids.requests);
            session.info.last_activity.set(Instant::now());
            host.events.message_in(&session.info.binding.route, len);
            (AckStatus::Accepted, String::new())
        }
        Err(Refused::Busy) => (AckStatus::Busy, "the backend is not reading its input; try again later".into()),
        Err(Refused::Closed) => (AckStatus::UnknownSession, "session is ending".into()),
    }
}

/// The session id a Deliver payload starts with, and what follows it.
pub(crate) fn split_delivery(payload: &[u8]) -> Option<(&str, &[u8])> {
    let (id, rest) = payload.split_at_checked(SESSION_ID_LEN)?;
    Some((std::str::from_utf8(id).ok()?, rest))
}

/// What a session's requests need of it: its backend's stdin and what is
/// checked before a message goes there.
pub struct Inbox {
    stdin: Stdin,
    max_message: usize,
    pending: Rc<Pending>,
    /// With `restart_on_crash`: what a restart replays, recorded here.
    restarts: Option<Rc<RefCell<Restarts>>>,
}

/// Ids of the client's requests the backend has not answered yet, so that
/// a client still gets a response to each if the backend ends first. An id
/// is known by its canonical text (see `mcp::canonical`): a backend may
/// write it otherwise than the client did (`"\u00e9"` for `"é"`), and its
/// response still answers the request.
#[derive(Default)]
struct Pending {
    /// By canonical id: the id as the client wrote it, and when it was sent.
    ids: RefCell<HashMap<String, (String, u64)>>,
    sent: Cell<u64>,
}

impl Pending {
    fn len(&self) -> usize {
        self.ids.borrow().len()
    }

    fn sent(&self, ids: Vec<String>) {
        let mut pending = self.ids.borrow_mut();
        for id in ids {
            let n = self.sent.get() + 1;
            self.sent.set(n);
            pending.insert(mcp::canonical(id.as_bytes()), (id, n));
        }
    }

    fn answered(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut pending = self.ids.borrow_mut();
        for id in ids {
            pending.remove(&mcp::canonical(id.as_bytes()));
        }
    }

    /// The unanswered ids as the client wrote them, oldest first; forgets
    /// them.
    fn take(&self) -> Vec<String> {
        let mut ids: Vec<(String, u64)> = self.ids.borrow_mut().drain().map(|(_, sent)| sent).collect();
        ids.sort_by_key(|&(_, n)| n);
        ids.into_iter().map(|(id, _)| id).collect()
    }

    /// The unanswered ids now (canonical), in no order.
    fn snapshot(&self) -> Vec<String> {
        self.ids.borrow().keys().cloned().collect()
    }

    /// Those of `ids` (canonical, from [`Pending::snapshot`]) still
    /// unanswered, as the client wrote them, oldest first; forgets them.
    fn take_these(&self, ids: Vec<String>) -> Vec<String> {
        let mut pending = self.ids.borrow_mut();
        let mut taken: Vec<(String, u64)> = ids.iter().filter_map(|id| pending.remove(id)).collect();
        taken.sort_by_key(|&(_, n)| n);
        taken.into_iter().map(|(id, _)| id).collect()
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    ClientClosed,
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
    /// The reason as one token, for metrics.
    fn token(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
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

    /// Whether the backend ended the session itself, which the log should
    /// explain: a server that starts and exits at once is otherwise a mystery.
    fn by_backend(self) -> bool {
        !matches!(self, End::ClientClosed | End::HostShutdown | End::ByOperator)
    }
}

enum StdoutEnd {
    Eof,
    TooLong,
    WriteFailed,
    ReplayRefused,
}

/// The session's connection to the worker, shared by the tasks that write
/// to it. Remembers when it was last written to, for keepalives.
struct SessionWriter {
    half: Mutex<OwnedWriteHalf>,
    last_write: Cell<tokio::time::Instant>,
}

impl SessionWriter {
    async fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut half = self.half.lock().await;
        half.write_all(frame).await?;
        self.last_write.set(tokio::time::Instant::now());
        Ok(())
    }

    async fn close(&self) {
        let _ = self.half.lock().await.shutdown().await;
    }
}

type SharedWriter = Rc<SessionWriter>;

/// Runs a session on `conn`, whose Spawn frame carried `request`.
pub async fn run(host: Rc<Host>, conn: UnixStream, request: Vec<u8>) {
    let (reader, mut writer) = conn.into_split();
    if host.shutting_down() {
        let _ = frame::write(&mut writer, Kind::Unavailable, b"the worker is shutting down").await;
        return;
    }
    let started = match start(&host, &request) {
        Ok(s) => s,
        Err(e) => {
            log!(Warn, "cannot start the MCP server: {}", e.detail);
            let _ = frame::write(&mut writer, Kind::Failed, e.reason.as_bytes()).await;
            return;
        }
    };
    let mut session = Running::begin(host, started, writer).await;
    let mut reader = reader;
    let outcome = loop {
        let outcome = session.wait_for_end(&mut reader).await;
        match session.restart(outcome).await {
            Ok(()) => continue,
            Err(outcome) => break outcome,
        }
    };
    session.end(outcome).await;
}

/// A backend just started for a new session.
struct Started {
    id: String,
    binding: Binding,
    marker: String,
    spec: SpawnSpec,
    backend: Backend,
    exit: oneshot::Receiver<Exit>,
    home: Option<PathBuf>,
}

fn start(host: &Host, request: &[u8]) -> Result<Started, SpawnError> {
    let invalid = |detail: String| SpawnError { reason: "the bridge sent an invalid spawn request", detail };
    let (binding, request) = Binding::split(request).map_err(|e| invalid(format!("invalid spawn request: {e}")))?;
    let spec = SpawnSpec::parse(request).map_err(invalid)?;
    let random = random::hex(SESSION_RANDOM_BYTES).map_err(|e| invalid(format!("cannot make a session id: {e}")))?;
    let id = format!("{}{random}", host.token);
    let marker = host.sweeper.new_marker();
    let home = match spec.session_home {
        true => Some(private_home(host)?),
        false => None,
    };
    let backend = backend::spawn(&spec, &host.defaults, &marker, home.as_deref()).inspect_err(|_| {
        if let Some(home) = &home {
            rundir::remove(home);
        }
    })?;
    // Watch before yielding, so the exit cannot be reaped unwatched.
    let exit = host.reaper.watch(backend.pid);
    Ok(Started { id, binding, marker, spec, backend, exit, home })
}

/// How the wait for a session's end came out.
struct Outcome {
    ended: End,
    exit: Option<Exit>,
    stdout_done: bool,
}

/// A live session: its backend's tasks and what its end needs.
struct Running {
    host: Rc<Host>,
    info: Rc<SessionInfo>,
    marker: String,
    spec: SpawnSpec,
    pid: i32,
    started_at: Instant,
    home: Option<PathBuf>,
    writer: SharedWriter,
    ready_sent: bool,
    pending: Rc<Pending>,
    tail: Rc<StderrTail>,
    stdin: JoinHandle<()>,
    stdout: JoinHandle<StdoutEnd>,
    stderr: JoinHandle<()>,
    keepalive: Option<JoinHandle<()>>,
    exit: oneshot::Receiver<Exit>,
    restarts: Option<Rc<RefCell<Restarts>>>,
}

impl Running {
    /// Registers the session, starts the tasks that move its data, and
    /// sends Ready.
    async fn begin(host: Rc<Host>, started: Started, writer: OwnedWriteHalf) -> Running {
        let Started { id, binding, marker, spec, backend, exit, home } = started;
        let Backend { pid, stdin, stdout, stderr } = backend;
        host.backend_started(pid);
        let info = SessionInfo::new(id.clone(), binding, TRANSPORT, pid);
        log!(Info, "session {pid}: started \"{}\" as process {pid}", spec.command);

        let writer: SharedWriter =
            Rc::new(SessionWriter { half: Mutex::new(writer), last_write: Cell::new(tokio::time::Instant::now()) });
        let ready = frame::encode(Kind::Ready, format!("{id} {pid}").as_bytes()).unwrap_or_default();
        // Ready goes first: no task writes before it is out. Failing here
        // means the worker is already gone (the client aborted while the
        // backend was starting).
        let ready_sent = writer.send(&ready).await.is_ok();

        let pending = Rc::new(Pending::default());
        let tail = Rc::new(StderrTail::default());
        let (stdin, stdin_task) = Stdin::start(stdin, spec.inbox_limit(), format!("session {pid}"));
        let restarts = Restarts::new(&spec).map(|r| Rc::new(RefCell::new(r)));
        let inbox = Inbox {
            stdin,
            max_message: spec.max_message_bytes,
            pending: Rc::clone(&pending),
            restarts: restarts.clone(),
        };
        host.sessions
            .borrow_mut()
            .insert(id.clone(), Registered { info: Rc::clone(&info), kind: Transport::Sse(inbox) });
        host.events.session_started(&info.binding, TRANSPORT, &id);
        let stdout = spawn_local(pump_stdout(
            stdout,
            Rc::clone(&writer),
            Rc::clone(&pending),
            Rc::clone(&host),
            Rc::clone(&info),
            spec.max_message_bytes,
            false,
        ));
        let stderr = spawn_local(pump_stderr(
            stderr,
            Rc::clone(&writer),
            Rc::clone(&tail),
            spec.stderr,
            spec.max_message_bytes,
            pid,
        ));
        let keepalive = spec.keepalive_interval().map(|every| spawn_local(keep_alive(Rc::clone(&writer), every)));
        Running {
            host,
            info,
            marker,
            spec,
            pid,
            started_at: Instant::now(),
            home,
            writer,
            ready_sent,
            pending,
            tail,
            stdin: stdin_task,
            stdout,
            stderr,
            keepalive,
            exit,
            restarts,
        }
    }

    /// Waits for whatever ends the session first: the worker closing the
    /// connection, the backend exiting or closing its output, an output
    /// line too long, the host shutting down.
    async fn wait_for_end(&mut self, reader: &mut OwnedReadHalf) -> Outcome {
        if !self.ready_sent {
            return Outcome { ended: End::ClientClosed, exit: None, stdout_done: false };
        }
        let mut shutdown = self.host.shutdown_watch();
        let info = Rc::clone(&self.info);
        tokio::select! {
            _ = closed(reader) => Outcome { ended: End::ClientClosed, exit: None, stdout_done: false },
            _ = info.end.notified() => Outcome { ended: End::ByOperator, exit: None, stdout_done: false },
            status = &mut self.exit => Outcome { ended: End::BackendExited, exit: status.ok(), stdout_done: false },
            out = &mut self.stdout => {
                let ended = match out {
                    Ok(StdoutEnd::Eof) => End::OutputClosed,
                    Ok(StdoutEnd::TooLong) => End::OversizedLine,
                    Ok(StdoutEnd::ReplayRefused) => End::ReplayRefused,
                    Ok(StdoutEnd::WriteFailed) | Err(_) => End::ClientClosed,
                };
                // A backend that exits closes its output first: give its
                // exit a moment to arrive, so the reason names it.
                let exit = match ended {
                    End::OutputClosed => tokio::time::timeout(EXIT_AFTER_EOF, &mut self.exit).await.ok().and_then(Result::ok),
                    _ => None,
                };
                let ended = if exit.is_some() { End::BackendExited } else { ended };
                Outcome { ended, exit, stdout_done: true }
            }
            _ = shutdown.wait_for(|&down| down) => Outcome { ended: End::HostShutdown, exit: None, stdout_done: false },
        }
    }

    /// After the backend ended by itself: when it crashed and the route
    /// wants restarts within their bound, starts a new backend for the
    /// session and replays the client's `initialize` to it (Ok); otherwise
    /// gives back how the session ends.
    async fn restart(&mut self, outcome: Outcome) -> Result<(), Outcome> {
        let Some(restarts) = self.restarts.clone() else { return Err(outcome) };
        if outcome.ended != End::BackendExited || !restart::is_crash(outcome.exit) {
            return Err(outcome);
        }
        let Some(nth) = restarts.borrow_mut().allow(Instant::now()) else {
            return Err(Outcome { ended: End::RestartLimit, ..outcome });
        };
        let max = restarts.borrow().max();
        let status = outcome.exit.map(|e| e.to_string()).unwrap_or_default();
        let old_pid = self.pid;
        log!(
            Warn,
            "session {old_pid}: the MCP server \"{}\" {status} {} ms after it started; {}; restarting it ({nth} of at most {max})",
            self.spec.command,
            self.started_at.elapsed().as_millis(),
            self.tail.describe()
        );
        let marker = self.host.sweeper.new_marker();
        let backend = match backend::spawn(&self.spec, &self.host.defaults, &marker, self.home.as_deref()) {
            Ok(backend) => backend,
            Err(e) => {
                log!(Warn, "session {old_pid}: cannot restart the MCP server: {}", e.detail);
                return Err(Outcome { ended: End::RestartFailed, ..outcome });
            }
        };
        let exit = self.host.reaper.watch(backend.pid);
        let Backend { pid, stdin, stdout, stderr } = backend;
        self.host.backend_started(pid);
        let (stdin, stdin_task) = Stdin::start(stdin, self.spec.inbox_limit(), format!("session {pid}"));
        // The replay goes first, so every client message comes after it.
        let replay = restarts.borrow().replay(SSE_REPLAY_ID);
        let replayed = !replay.is_empty();
        for mut line in replay {
            message::flatten_line_breaks(&mut line);
            line.push(b'\n');
            let _ = stdin.offer(line, 0);
        }
        // What the old backend was asked and never answered (it may still
        // answer some in the output drained below).
        let lost = self.pending.snapshot();
        if let Some(Registered { kind: Transport::Sse(inbox), .. }) =
            self.host.sessions.borrow_mut().get_mut(&self.info.id)
        {
            inbox.stdin = stdin;
        }
        self.stdin.abort();
        self.stdin = stdin_task;
        let old_marker = std::mem::replace(&mut self.marker, marker);
        let (host, grace) = (Rc::clone(&self.host), self.spec.kill_grace());
        spawn_local(async move {
            let mut ending = Ending::begin(old_pid, Instant::now());
            ending.find_escaped(&host, &old_marker).await;
            let teardown = ending.finish(&host, &old_marker, grace).await;
            host.backend_ended(old_pid);
            log!(Info, "session {old_pid}: the crashed backend's processes: {teardown}");
        });
        self.drain(outcome.stdout_done).await;
        let why = format!("the MCP server {status} and is being restarted");
        send_errors(&self.writer, self.pending.take_these(lost), &why).await;
        if let Ok(frame) = frame::encode(Kind::Message, &restart::warning(outcome.exit, nth, max)) {
            let _ = self.writer.send(&frame).await;
        }
        self.pid = pid;
        self.info.pid.set(pid);
        self.started_at = Instant::now();
        self.exit = exit;
        self.tail = Rc::new(StderrTail::default());
        self.stdout = spawn_local(pump_stdout(
            stdout,
            Rc::clone(&self.writer),
            Rc::clone(&self.pending),
            Rc::clone(&self.host),
            Rc::clone(&self.info),
            self.spec.max_message_bytes,
            replayed,
        ));
        self.stderr = spawn_local(pump_stderr(
            stderr,
            Rc::clone(&self.writer),
            Rc::clone(&self.tail),
            self.spec.stderr,
            self.spec.max_message_bytes,
            pid,
        ));
        self.host.events.backend_restarted(&self.info.binding, TRANSPORT, &self.info.id, &status);
        log!(Info, "session {old_pid}: restarted as process {pid}");
        Ok(())
    }

    /// Ends the backend's processes, forwards what output is left while the
    /// client is still there, then the last frames; logs the end.
    async fn end(mut self, outcome: Outcome) {
        let closed_at = Instant::now();
        // From here on the id is refused and queued input is dropped.
        self.host.sessions.borrow_mut().remove(&self.info.id);
        let mut ending = Ending::begin(self.pid, closed_at);
        // Closing stdin as well is the polite way to ask a stdio server to
        // stop; it comes after SIGTERM so the signal is never late.
        self.stdin.abort();
        if let Some(t) = &self.keepalive {
            t.abort();
        }
        let client_gone = outcome.ended == End::ClientClosed;
        if client_gone {
            self.stdout.abort();
            self.stderr.abort();
        }
        ending.find_escaped(&self.host, &self.marker).await;
        let teardown = ending.finish(&self.host, &self.marker, self.spec.kill_grace()).await;
        let teardown_took = closed_at.elapsed();
        let exit = outcome.exit.or_else(|| self.exit.try_recv().ok());
        if !client_gone {
            self.drain(outcome.stdout_done).await;
        }
        self.host.backend_ended(self.pid);
        if let Some(home) = &self.home {
            rundir::remove(home);
        }
        let why = describe(outcome.ended, exit, self.spec.max_message_bytes);
        let mut reason = outcome.ended.token();
        if outcome.ended.by_backend() {
            // A limit is the reason, unless a restart bound ended the session.
            if matches!(outcome.ended, End::BackendExited | End::OutputClosed) {
                reason = exit.and_then(Exit::limit_reason).unwrap_or(reason);
            }
            log!(
                Warn,
                "session {}: the MCP server \"{}\" ended the session {} ms after it started: {why}; {}{}",
                self.pid,
                self.spec.command,
                self.started_at.elapsed().as_millis(),
                self.tail.describe(),
                limits_note(&self.spec)
            );
        }
        let info = &self.info;
        self.host.events.session_ended(&info.binding, TRANSPORT, &info.id, reason, teardown_took);
        if !client_gone {
            let last = send_last_frames(&self.writer, self.pending.take(), &why);
            let _ = tokio::time::timeout(EXIT_WRITE_LIMIT, last).await;
            self.writer.close().await;
        }
        log_end(self.pid, &why, &teardown, ending.escaped());
    }

    /// Forwards the output still in flight, for a bounded time.
    async fn drain(&mut self, stdout_done: bool) {
        if !stdout_done {
            let _ = tokio::time::timeout(DRAIN_LIMIT, &mut self.stdout).await;
            self.stdout.abort();
        }
        let _ = tokio::time::timeout(DRAIN_LIMIT, &mut self.stderr).await;
        self.stderr.abort();
    }
}

fn log_end(pid: i32, why: &str, teardown: &Teardown, escaped: usize) {
    let escaped = match escaped {
        0 => String::new(),
        n => format!("; {n} process(es) that left the group ended too"),
    };
    log!(Info, "session {pid}: ended: {why}; {teardown}{escaped}");
}

/// Sends a Keepalive frame whenever the connection has been silent for
/// `interval`, so the worker can keep its client's stream alive without
/// read timeouts of its own.
async fn keep_alive(writer: SharedWriter, interval: Duration) {
    let frame = frame::encode(Kind::Keepalive, b"").unwrap_or_default();
    loop {
        tokio::time::sleep_until(writer.last_write.get() + interval).await;
        if writer.last_write.get() + interval <= tokio::time::Instant::now() && writer.send(&frame).await.is_err() {
            return;
        }
    }
}

/// A response for each request the backend left unanswered, then the Exit
/// frame.
async fn send_last_frames(writer: &SessionWriter, unanswered: Vec<String>, why: &str) {
    if !send_errors(writer, unanswered, why).await {
        return;
    }
    if let Ok(frame) = frame::encode(Kind::Exit, why.as_bytes()) {
        let _ = writer.send(&frame).await;
    }
}

/// An error response for each of `unanswered`; false if the worker is gone.
async fn send_errors(writer: &SessionWriter, unanswered: Vec<String>, why: &str) -> bool {
    for id in unanswered {
        let Ok(frame) = frame::encode(Kind::Message, &message::no_response_error(&id, why)) else { continue };
        if writer.send(&frame).await.is_err() {
            return false;
        }
    }
    true
}

/// Resolves when the worker closes its end. The worker sends nothing after
/// the Spawn frame; anything it does send is ignored.
async fn closed(reader: &mut OwnedReadHalf) {
    let mut buf = [0u8; 512];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

async fn pump_stdout(
    out: pipe::Receiver,
    writer: SharedWriter,
    pending: Rc<Pending>,
    host: Rc<Host>,
    info: Rc<SessionInfo>,
    max: usize,
    replayed: bool,
) -> StdoutEnd {
    let pid = info.pid.get();
    // The answer to a replayed initialize is the bridge's, not the client's.
    let mut replay_answer = replayed;
    let mut lines = LineReader::with_capacity(out, max, STDOUT_BUFFER);
    let mut frame = Vec::new();
    loop {
        frame.clear();
        frame.resize(HEADER_LEN, 0);
        match lines.read_into(&mut frame).await {
            Ok(Line::Complete) => {}
            Ok(Line::Eof) => return StdoutEnd::Eof,
            Err(e) => {
                log!(Info, "session {pid}: reading backend output: {e}");
                return StdoutEnd::Eof;
            }
            Ok(Line::TooLong) => {
                log!(
                    Warn,
                    "session {pid}: backend wrote an output line over max_message_bytes ({max}); ending the session"
                );
                return StdoutEnd::TooLong;
            }
        }
        if frame.last() == Some(&b'\r') {
            frame.pop();
        }
        let line = &mut frame[HEADER_LEN..];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match message::inspect(line) {
            Ok(ids) if replay_answer && ids.responses.len() == 1 && ids.responses[0] == SSE_REPLAY_ID => {
                replay_answer = false;
                let answer: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
                if answer.get("result").is_none() {
                    log!(Warn, "session {pid}: the restarted MCP server refused the replayed initialize: {answer}");
                    return StdoutEnd::ReplayRefused;
                }
                continue;
            }
            Ok(ids) => {
                pending.answered(&ids.responses);
                if ids.line_breaks {
                    message::flatten_line_breaks(line);
                }
            }
            Err(why) => {
                log!(Warn, "session {pid}: dropped a backend output line that is {why}: {}", message::excerpt(line));
                continue;
            }
        }
        if frame::seal(&mut frame, Kind::Message).is_err() {
            continue;
        }
        if writer.send(&frame).await.is_err() {
            return StdoutEnd::WriteFailed;
        }
        host.events.message_out(&info.binding.route, frame.len() - HEADER_LEN);
        if frame.capacity() > 4 * STDOUT_BUFFER {
            // Do not keep a multi-megabyte buffer per idle session.
            frame = Vec::new();
        }
    }
}

async fn pump_stderr(
    err: pipe::Receiver,
    writer: SharedWriter,
    tail: Rc<StderrTail>,
    mode: StderrMode,
    max: usize,
    pid: i32,
) {
    let who = format!("session {pid}");
    stderr::read(err, tail, mode, max, &who, |line| {
        let writer = Rc::clone(&writer);
        async move {
            match frame::encode(Kind::Message, &message::stderr_notification(&line)) {
                Ok(frame) => writer.send(&frame).await.is_ok(),
                Err(_) => true,
            }
        }
    })
    .await;
}

/// Why a session ended, for the client (the Exit frame) and the log.
fn describe(ended: End, exit: Option<Exit>, max: usize) -> String {
    let status = exit.map(|e| e.to_string()).unwrap_or_else(|| "ended".into());
    match ended {
        End::ClientClosed => format!("client closed; backend {status}"),
        End::BackendExited => format!("backend {status}"),
        End::OutputClosed => format!("backend closed its output; backend {status}"),
        End::OversizedLine => format!("backend wrote a line over max_message_bytes ({max}); backend {status}"),
        End::HostShutdown => format!("worker shutting down; backend {status}"),
        End::ByOperator => format!("ended by an operator; backend {status}"),
        End::RestartLimit => format!("backend {status}, past the restart bound (max_restarts)"),
        End::RestartFailed => format!("backend {status} and could not be restarted"),
        End::ReplayRefused => "the restarted backend refused the replayed initialize".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fuzz find: a backend that wrote a request's id otherwise than its
    /// client (its own escaping of the same string) left the request
    /// pending, and when the session ended its client got a second
    /// response for it, an error.
    #[test]
    fn a_response_answers_its_request_however_its_id_is_written() {
        let pending = Pending::default();
        pending.sent(vec![r#""\u00e9 \"q\" \ud83d\ude00""#.into(), "7".into(), r#""a\/b""#.into()]);
        pending.answered(&["\"é \\\"q\\\" 😀\"".into(), r#""a/b""#.into()]);
        assert_eq!(pending.take(), vec!["7".to_string()]);
        pending.sent(vec!["1".into(), r#""x""#.into()]);
        assert_eq!(pending.take(), vec!["1".to_string(), r#""x""#.to_string()], "as the client wrote them, in order");
    }
}
