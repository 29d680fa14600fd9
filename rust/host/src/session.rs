//! One session: a backend process and the worker connection it lives on.
//!
//! A session lives exactly as long as its connection. When the connection
//! closes (the client went away, the request ended by any path), the
//! backend's process group gets SIGTERM at once, SIGKILL after the grace
//! period, and every process is reaped. When the backend ends first, its
//! remaining output is forwarded, then an Exit frame, then the connection
//! is closed.

use crate::backend::{self, Backend};
use crate::escapees::{self, Escapee, Sweeper};
use crate::frame::{self, AckStatus, Kind, HEADER_LEN};
use crate::lines::{Line, LineReader};
use crate::log;
use crate::message;
use crate::reaper::{Exit, Reaper};
use crate::spec::{SpawnSpec, StderrMode};
use mcp_bridge_core::{procs, random};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::spawn_local;

/// Random bytes in a session id, after the host token.
const SESSION_RANDOM_BYTES: usize = 16;

/// Length of a session id: host token then 128 random bits, in hex.
pub const SESSION_ID_LEN: usize = mcp_bridge_core::launcher::TOKEN_LEN + 2 * SESSION_RANDOM_BYTES;

/// How long output still in flight is forwarded after the backend's group
/// is gone (a descendant that escaped the group may hold the pipe open).
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// How long the last frame of a session may wait for a worker that is not
/// reading (its client is slow); the connection is closed either way.
const EXIT_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// How long the end of a backend's output waits for its exit, to tell a
/// backend that exited from one that only closed its output.
const EXIT_AFTER_EOF: Duration = Duration::from_millis(100);

/// How long to wait for a SIGKILLed group to be reaped before saying so.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The longest grace period while the host shuts down (its worker is
/// reloading, quitting or gone): the worker's sessions must end within a
/// second, whatever `kill_grace_ms` says.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Requests of one session that may wait for a response at once. Each
/// costs a few bytes of memory; more are refused as busy.
const MAX_PENDING: usize = 10_000;

/// Read buffers, allocated (and zeroed) for every session, idle or not:
/// small, since a longer line only costs more reads.
const STDOUT_BUFFER: usize = 16 * 1024;
const STDERR_BUFFER: usize = 1024;

/// State shared by every session and connection of the host.
pub struct Host {
    pub token: String,
    pub defaults: backend::Defaults,
    pub reaper: Rc<Reaper>,
    pub sweeper: Rc<Sweeper>,
    inboxes: RefCell<HashMap<String, Inbox>>,
    backends: RefCell<BTreeSet<i32>>,
    shutdown: watch::Sender<bool>,
    spawned: Cell<u64>,
    ended: Cell<u64>,
    idle: tokio::sync::Notify,
}

impl Host {
    pub fn new(token: String, defaults: backend::Defaults, reaper: Rc<Reaper>, sweeper: Rc<Sweeper>) -> Rc<Host> {
        Rc::new(Host {
            token,
            defaults,
            reaper,
            sweeper,
            inboxes: RefCell::default(),
            backends: RefCell::default(),
            shutdown: watch::Sender::new(false),
            spawned: Cell::new(0),
            ended: Cell::new(0),
            idle: tokio::sync::Notify::new(),
        })
    }

    /// Ends every session and refuses new ones.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn live_sessions(&self) -> usize {
        self.backends.borrow().len()
    }

    /// Process groups of the live sessions (a group's id is its backend's pid).
    pub fn live_groups(&self) -> BTreeSet<i32> {
        self.backends.borrow().clone()
    }

    /// Resolves once no session is left.
    pub async fn all_ended(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.live_sessions() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Queues a client message for a session's backend. `payload` is the
    /// session id followed by the message.
    pub fn deliver(&self, mut payload: Vec<u8>) -> (AckStatus, String) {
        if payload.len() < SESSION_ID_LEN {
            return (AckStatus::UnknownSession, "session not found".into());
        }
        let id = match std::str::from_utf8(&payload[..SESSION_ID_LEN]) {
            Ok(id) => id.to_owned(),
            Err(_) => return (AckStatus::UnknownSession, "session not found".into()),
        };
        let inboxes = self.inboxes.borrow();
        let Some(inbox) = inboxes.get(&id) else {
            return (AckStatus::UnknownSession, "session not found".into());
        };
        let len = payload.len() - SESSION_ID_LEN;
        if len > inbox.max_message {
            return (AckStatus::TooLarge, format!("message of {len} bytes is over the limit of {}", inbox.max_message));
        }
        let ids = match message::inspect(&payload[SESSION_ID_LEN..]) {
            Ok(ids) => ids,
            Err(why) => return (AckStatus::InvalidJson, format!("message is {why}")),
        };
        if inbox.pending.len() + ids.requests.len() > MAX_PENDING {
            return (AckStatus::Busy, format!("{MAX_PENDING} requests are already waiting for a response"));
        }
        payload.drain(..SESSION_ID_LEN);
        message::flatten_line_breaks(&mut payload);
        payload.push(b'\n');
        match inbox.offer(payload) {
            Offer::Queued => {
                inbox.pending.sent(ids.requests);
                (AckStatus::Accepted, String::new())
            }
            Offer::Busy => (AckStatus::Busy, "the backend is not reading its input; try again later".into()),
            Offer::Closed => (AckStatus::UnknownSession, "session is ending".into()),
        }
    }

    /// Statistics for the worker (and the tests).
    pub fn stats(&self) -> serde_json::Value {
        let (reaped, orphans) = self.reaper.counts();
        serde_json::json!({
            "pid": std::process::id(),
            "sessions": self.live_sessions(),
            "backends": self.backends.borrow().iter().collect::<Vec<_>>(),
            "spawned": self.spawned.get(),
            "ended": self.ended.get(),
            "reaped": reaped,
            "orphans_reaped": orphans,
        })
    }
}

enum Offer {
    Queued,
    Busy,
    Closed,
}

/// Client messages waiting for the backend's stdin, bounded in bytes.
struct Inbox {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    queued: Rc<Cell<usize>>,
    limit: usize,
    max_message: usize,
    pending: Rc<Pending>,
}

/// Ids of the client's requests the backend has not answered yet, so that
/// a client still gets a response to each if the backend ends first.
#[derive(Default)]
struct Pending {
    ids: RefCell<HashMap<String, u64>>,
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
            pending.insert(id, n);
        }
    }

    fn answered(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut pending = self.ids.borrow_mut();
        for id in ids {
            pending.remove(id);
        }
    }

    /// The unanswered ids, oldest first; forgets them.
    fn take(&self) -> Vec<String> {
        let mut ids: Vec<(String, u64)> = self.ids.borrow_mut().drain().collect();
        ids.sort_by_key(|&(_, n)| n);
        ids.into_iter().map(|(id, _)| id).collect()
    }
}

impl Inbox {
    fn offer(&self, message: Vec<u8>) -> Offer {
        let queued = self.queued.get();
        if queued > 0 && queued + message.len() > self.limit {
            return Offer::Busy;
        }
        let len = message.len();
        self.queued.set(queued + len);
        if self.tx.send(message).is_err() {
            self.queued.set(queued);
            return Offer::Closed;
        }
        Offer::Queued
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
}

enum StdoutEnd {
    Eof,
    TooLong,
    WriteFailed,
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

/// Runs a session on `conn`, whose Spawn frame carried `request`.
pub async fn run(host: Rc<Host>, conn: UnixStream, request: Vec<u8>) {
    let (reader, mut writer) = conn.into_split();
    if host.shutting_down() {
        let _ = frame::write(&mut writer, Kind::Unavailable, b"the worker is shutting down").await;
        return;
    }
    let started = match start(&host, &request) {
        Ok(s) => s,
        Err(reason) => {
            log!(Warn, "cannot start backend: {reason}");
            let _ = frame::write(&mut writer, Kind::Failed, reason.as_bytes()).await;
            return;
        }
    };
    let Started { id, marker, spec, backend, exit } = started;
    let pid = backend.pid;
    host.spawned.set(host.spawned.get() + 1);
    host.backends.borrow_mut().insert(pid);
    log!(Info, "session {pid}: started \"{}\" as process {pid}", spec.command);

    let ready = frame::encode(Kind::Ready, format!("{id} {pid}").as_bytes()).unwrap_or_default();
    let writer: SharedWriter =
        Rc::new(SessionWriter { half: Mutex::new(writer), last_write: Cell::new(tokio::time::Instant::now()) });
    // Failing here means the worker is already gone (the client aborted
    // while the backend was starting).
    let ready_sent = writer.send(&ready).await.is_ok();

    let Backend { stdin, stdout, stderr, .. } = backend;
    let queued = Rc::new(Cell::new(0));
    let pending = Rc::new(Pending::default());
    let (tx, rx) = mpsc::unbounded_channel();
    host.inboxes.borrow_mut().insert(
        id.clone(),
        Inbox {
            tx,
            queued: Rc::clone(&queued),
            limit: spec.inbox_limit(),
            max_message: spec.max_message_bytes,
            pending: Rc::clone(&pending),
        },
    );
    let stdin_task = spawn_local(feed_stdin(stdin, rx, queued, pid));
    let mut stdout_task =
        spawn_local(pump_stdout(stdout, Rc::clone(&writer), Rc::clone(&pending), spec.max_message_bytes, pid));
    let stderr_task = spawn_local(pump_stderr(stderr, Rc::clone(&writer), spec.stderr, spec.max_message_bytes, pid));
    let keepalive_task = spec.keepalive_interval().map(|every| spawn_local(keep_alive(Rc::clone(&writer), every)));

    let mut exit = exit;
    let mut exit_status: Option<Exit> = None;
    let mut stdout_done = false;
    let mut shutdown = host.shutdown.subscribe();
    let mut reader = reader;
    let ended = if !ready_sent {
        End::ClientClosed
    } else {
        tokio::select! {
            _ = closed(&mut reader) => End::ClientClosed,
            status = &mut exit => {
                exit_status = status.ok();
                End::BackendExited
            }
            out = &mut stdout_task => {
                stdout_done = true;
                match out {
                    // A backend that exits closes its output first: give its
                    // exit a moment to arrive, so the reason names it.
                    Ok(StdoutEnd::Eof) => match tokio::time::timeout(EXIT_AFTER_EOF, &mut exit).await {
                        Ok(status) => {
                            exit_status = status.ok();
                            End::BackendExited
                        }
                        Err(_) => End::OutputClosed,
                    },
                    Ok(StdoutEnd::TooLong) => End::OversizedLine,
                    Ok(StdoutEnd::WriteFailed) | Err(_) => End::ClientClosed,
                }
            }
            _ = shutdown.wait_for(|&down| down) => End::HostShutdown,
        }
    };
    let closed_at = Instant::now();

    // From here on the id is refused and queued input is dropped.
    host.inboxes.borrow_mut().remove(&id);
    let signalled = terminate(pid, closed_at);
    // Closing stdin as well is the polite way to ask a stdio server to stop;
    // it comes after SIGTERM so the signal is never late.
    stdin_task.abort();
    if let Some(t) = &keepalive_task {
        t.abort();
    }
    let client_gone = ended == End::ClientClosed;
    if client_gone {
        stdout_task.abort();
        stderr_task.abort();
    }
    let mut escaped = host.sweeper.find(&marker).await;
    escapees::signal_all(&escaped, libc::SIGTERM);

    let teardown = match signalled || !escaped.is_empty() {
        true => finish_teardown(&host, pid, &marker, &mut escaped, spec.kill_grace()).await,
        false => Teardown::AlreadyGone,
    };
    if exit_status.is_none() {
        exit_status = exit.try_recv().ok();
    }

    if !client_gone {
        if !stdout_done {
            let _ = tokio::time::timeout(DRAIN_LIMIT, &mut stdout_task).await;
            stdout_task.abort();
        }
        let mut stderr_task = stderr_task;
        let _ = tokio::time::timeout(DRAIN_LIMIT, &mut stderr_task).await;
        stderr_task.abort();
    }

    // The processes are gone: the session no longer counts, even if the
    // worker is slow to take the last frame.
    host.backends.borrow_mut().remove(&pid);
    host.ended.set(host.ended.get() + 1);
    if host.live_sessions() == 0 {
        host.idle.notify_waiters();
        // Give memory from a burst of sessions back to the system, so the
        // host stays small (and quick to fork) once they are gone.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
    }
    let why = describe(ended, exit_status, spec.max_message_bytes);
    if !client_gone {
        let _ = tokio::time::timeout(EXIT_WRITE_LIMIT, send_last_frames(&writer, pending.take(), &why)).await;
        writer.close().await;
    }
    let escaped = match escaped.len() {
        0 => String::new(),
        n => format!("; {n} process(es) that left the group ended too"),
    };
    log!(Info, "session {pid}: ended: {why}; {teardown}{escaped}");
}

/// A response for each request the backend left unanswered, then the Exit
/// frame.
async fn send_last_frames(writer: &SessionWriter, unanswered: Vec<String>, why: &str) {
    for id in unanswered {
        let Ok(frame) = frame::encode(Kind::Message, &message::no_response_error(&id, why)) else { continue };
        if writer.send(&frame).await.is_err() {
            return;
        }
    }
    if let Ok(frame) = frame::encode(Kind::Exit, why.as_bytes()) {
        let _ = writer.send(&frame).await;
    }
}

struct Started {
    id: String,
    marker: String,
    spec: SpawnSpec,
    backend: Backend,
    exit: tokio::sync::oneshot::Receiver<Exit>,
}

fn start(host: &Host, request: &[u8]) -> Result<Started, String> {
    let spec = SpawnSpec::parse(request)?;
    let id = format!(
        "{}{}",
        host.token,
        random::hex(SESSION_RANDOM_BYTES).map_err(|e| format!("cannot make a session id: {e}"))?
    );
    let marker = host.sweeper.new_marker();
    let backend = backend::spawn(&spec, &host.defaults, &marker)?;
    // Watch before yielding, so the exit cannot be reaped unwatched.
    let exit = host.reaper.watch(backend.pid);
    Ok(Started { id, marker, spec, backend, exit })
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

async fn feed_stdin(
    mut stdin: pipe::Sender,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Rc<Cell<usize>>,
    pid: i32,
) {
    while let Some(message) = rx.recv().await {
        let written = stdin.write_all(&message).await;
        queued.set(queued.get().saturating_sub(message.len()));
        if let Err(e) = written {
            log!(Info, "session {pid}: backend stopped taking input: {e}");
            return;
        }
    }
}

async fn pump_stdout(
    out: pipe::Receiver,
    writer: SharedWriter,
    pending: Rc<Pending>,
    max: usize,
    pid: i32,
) -> StdoutEnd {
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
            Ok(ids) => pending.answered(&ids.responses),
            Err(why) => {
                log!(Warn, "session {pid}: dropped a backend output line that is {why}: {}", message::excerpt(line));
                continue;
            }
        }
        message::flatten_line_breaks(line);
        if frame::seal(&mut frame, Kind::Message).is_err() {
            continue;
        }
        if writer.send(&frame).await.is_err() {
            return StdoutEnd::WriteFailed;
        }
        if frame.capacity() > 4 * STDOUT_BUFFER {
            // Do not keep a multi-megabyte buffer per idle session.
            frame = Vec::new();
        }
    }
}

async fn pump_stderr(err: pipe::Receiver, writer: SharedWriter, mode: StderrMode, max: usize, pid: i32) {
    let mut lines = LineReader::with_capacity(err, max, STDERR_BUFFER);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_into(&mut line).await {
            Ok(Line::Complete) => {}
            Ok(Line::Eof) | Err(_) => return,
            Ok(Line::TooLong) => {
                log!(Warn, "session {pid}: skipped a backend stderr line over max_message_bytes ({max})");
                if lines.skip_line().await.is_err() {
                    return;
                }
                continue;
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        match mode {
            StderrMode::Log => log!(Warn, "session {pid}: backend stderr: {}", String::from_utf8_lossy(&line)),
            StderrMode::Notify => {
                let Ok(frame) = frame::encode(Kind::Message, &message::stderr_notification(&line)) else {
                    continue;
                };
                if writer.send(&frame).await.is_err() {
                    return;
                }
            }
        }
        if line.capacity() > 4 * STDERR_BUFFER {
            line = Vec::new();
        }
    }
}

/// What happened to a process group at the end of its session.
enum Teardown {
    AlreadyGone,
    Terminated { after: Duration },
    Killed { grace: Duration, reaped: bool },
}

impl std::fmt::Display for Teardown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Teardown::AlreadyGone => write!(f, "process group already gone"),
            Teardown::Terminated { after } => write!(f, "process group gone {} ms after SIGTERM", after.as_millis()),
            Teardown::Killed { grace, reaped: true } => {
                write!(f, "processes ignored SIGTERM, killed with SIGKILL after {} ms", grace.as_millis())
            }
            Teardown::Killed { grace, reaped: false } => {
                write!(f, "SIGKILL sent after {} ms but processes were not yet reaped", grace.as_millis())
            }
        }
    }
}

/// Sends SIGTERM to the group. Returns whether it had members left.
fn terminate(pgid: i32, since: Instant) -> bool {
    match procs::signal_group(pgid, libc::SIGTERM) {
        Ok(true) => {
            log!(Debug, "session {pgid}: SIGTERM sent {} us after the end", since.elapsed().as_micros());
            true
        }
        Ok(false) => false,
        Err(e) => {
            log!(Error, "session {pgid}: {e}");
            true
        }
    }
}

/// After SIGTERM: SIGKILL when `grace` has passed (at most
/// `SHUTDOWN_GRACE` once the host is shutting down), then waits until the
/// reaper has collected every member it can. `escaped` are the session's
/// processes outside its group; more are looked for before the SIGKILL.
async fn finish_teardown(
    host: &Host,
    pgid: i32,
    marker: &str,
    escaped: &mut Vec<Escapee>,
    grace: Duration,
) -> Teardown {
    let term_at = tokio::time::Instant::now();
    let mut deadline = term_at + grace;
    let mut shutdown = host.shutdown.subscribe();
    let gone = tokio::select! {
        gone = wait_gone(pgid, &host.reaper, escaped, deadline) => gone,
        // Resolves at once if the host is already shutting down.
        _ = shutdown.wait_for(|&down| down) => {
            deadline = deadline.min(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            wait_gone(pgid, &host.reaper, escaped, deadline).await
        }
    };
    let grace = deadline - term_at;
    if gone {
        return Teardown::Terminated { after: term_at.elapsed() };
    }
    if let Err(e) = procs::signal_group(pgid, libc::SIGKILL) {
        log!(Error, "session {pgid}: {e}");
    }
    escapees::signal_all(escaped, libc::SIGKILL);
    let late = host.sweeper.find(marker).await;
    escapees::signal_all(&late, libc::SIGKILL);
    escaped.extend(late);
    let reaped = wait_gone(pgid, &host.reaper, escaped, tokio::time::Instant::now() + KILL_WAIT).await;
    if !reaped {
        log!(Error, "session {pgid}: processes still running {} s after SIGKILL", KILL_WAIT.as_secs());
    }
    Teardown::Killed { grace, reaped }
}

/// Waits, woken by the reaper and by the escapees' exits, until group
/// `pgid` has no member left and every escapee has exited. Returns false if
/// `deadline` passes first.
async fn wait_gone(pgid: i32, reaper: &Reaper, escaped: &[Escapee], deadline: tokio::time::Instant) -> bool {
    let gone = || !procs::group_alive(pgid) && escaped.iter().all(Escapee::exited);
    loop {
        let reaped = reaper.reaped().notified();
        tokio::pin!(reaped);
        reaped.as_mut().enable();
        if gone() {
            return true;
        }
        tokio::select! {
            _ = &mut reaped => {}
            _ = escapees_exit(escaped) => {}
            _ = tokio::time::sleep_until(deadline) => return gone(),
        }
    }
}

/// Resolves when the last running escapee exits; never if none runs.
async fn escapees_exit(escaped: &[Escapee]) {
    if escaped.iter().all(Escapee::exited) {
        std::future::pending::<()>().await;
    }
    escapees::all_exited(escaped).await;
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
    }
}
