//! State shared by every session and connection of the host.

use crate::backend;
use crate::binding::Binding;
use crate::escapees::Sweeper;
use crate::events::Events;
use crate::mrtr::Parked;
use crate::pool::Pools;
use crate::reaper::Reaper;
use crate::spec::SpawnSpec;
use crate::sse::Inbox;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::Instant;
use tokio::sync::{watch, Notify};

/// What the host knows of a live session, for the requests that reach it,
/// the status report and the operator who ends it.
pub struct SessionInfo {
    pub id: String,
    pub binding: Binding,
    pub transport: &'static str,
    /// The session's backend now (a restart replaces it).
    pub pid: Cell<i32>,
    pub started: Instant,
    pub last_activity: Cell<Instant>,
    /// Notified when an operator ends the session.
    pub end: Notify,
}

impl SessionInfo {
    pub fn new(id: String, binding: Binding, transport: &'static str, pid: i32) -> Rc<SessionInfo> {
        let now = Instant::now();
        Rc::new(SessionInfo {
            id,
            binding,
            transport,
            pid: Cell::new(pid),
            started: now,
            last_activity: Cell::new(now),
            end: Notify::new(),
        })
    }

    /// For the status report: no full id (it is the client's credential).
    fn describe(&self) -> serde_json::Value {
        let now = Instant::now();
        serde_json::json!({
            "id_prefix": &self.id[..self.id.len().min(SESSION_ID_PREFIX)],
            "route": self.binding.route,
            "consumer": self.binding.consumer,
            "transport": self.transport,
            "backend_pid": self.pid.get(),
            "age_s": (now - self.started).as_secs_f64(),
            "idle_s": (now - self.last_activity.get()).as_secs_f64(),
        })
    }
}

/// How much of a session id the status report shows, and the shortest start
/// of one that ends a session: the host token and 32 random bits.
pub const SESSION_ID_PREFIX: usize = mcp_bridge_core::runtime::TOKEN_LEN + 8;

/// A live session in the registry.
pub(crate) struct Registered {
    pub info: Rc<SessionInfo>,
    pub kind: Transport,
}

/// What reaches a session, by transport.
pub(crate) enum Transport {
    /// HTTP+SSE: client messages queued for the backend's stdin.
    Sse(Inbox),
    /// Streamable HTTP: the session's task, which routes every message.
    Streamable(crate::streamable::Handle),
}

/// The worker a host serves.
#[derive(Clone, Copy, Debug)]
pub struct Worker {
    pub pid: i32,
    /// The worker's parent, nginx's master process.
    pub master: Option<i32>,
}

impl Worker {
    pub fn new(pid: i32) -> Worker {
        Worker { pid, master: mcp_bridge_core::procfs::stat(pid).map(|s| s.ppid) }
    }
}

/// Parsed spawn requests kept (see [`Host::spec`]).
const MAX_SPECS: usize = 64;

/// Hashes session ids by their last 16 bytes, which are random (see
/// `sse::SESSION_ID_LEN`): cheaper than the default keyed hash, and as safe
/// here, since only the host makes the ids the table holds (a client's id
/// is only ever looked up).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = &bytes[bytes.len().saturating_sub(16)..];
        for chunk in tail.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub struct Host {
    pub token: String,
    pub worker: Worker,
    pub defaults: backend::Defaults,
    pub reaper: Rc<Reaper>,
    pub sweeper: Rc<Sweeper>,
    pub events: Rc<Events>,
    /// Backends serving stateless requests.
    pub pools: Rc<Pools>,
    /// Stateless calls waiting for their client's input (see `mrtr`).
    pub parked: Rc<Parked>,
    /// Live sessions by id.
    pub(crate) sessions: RefCell<HashMap<String, Registered, BuildHasherDefault<IdHasher>>>,
    /// Process groups of the live sessions (a group's id is its backend's pid).
    backends: RefCell<BTreeSet<i32>>,
    shutdown: watch::Sender<bool>,
    spawned: Cell<u64>,
    ended: Cell<u64>,
    next_session: Cell<u64>,
    /// Spawn requests already parsed, with their text: a stateless request
    /// carries its route's with every call. Few routes send one, so a
    /// search by comparison costs less than hashing the text.
    specs: RefCell<Vec<(Vec<u8>, Rc<SpawnSpec>)>>,
    idle: tokio::sync::Notify,
}

impl Host {
    pub fn new(
        token: String,
        worker: Worker,
        defaults: backend::Defaults,
        reaper: Rc<Reaper>,
        sweeper: Rc<Sweeper>,
    ) -> Rc<Host> {
        let parked = Rc::new(Parked::new(&token));
        Rc::new(Host {
            token,
            worker,
            defaults,
            reaper,
            sweeper,
            events: Events::new(),
            pools: Pools::new(),
            parked,
            sessions: RefCell::default(),
            backends: RefCell::default(),
            shutdown: watch::Sender::new(false),
            spawned: Cell::new(0),
            ended: Cell::new(0),
            next_session: Cell::new(0),
            specs: RefCell::default(),
            idle: tokio::sync::Notify::new(),
        })
    }

    /// Ends every session and refuses new ones.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.parked.abandon_all();
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The spawn request `text` says (see [`SpawnSpec::parse`]), parsed once
    /// for as long as routes keep sending it, and shared by whoever uses it.
    pub fn spec(&self, text: &[u8]) -> Result<Rc<SpawnSpec>, String> {
        if let Some((_, spec)) = self.specs.borrow().iter().rev().find(|(known, _)| known.as_slice() == text) {
            return Ok(Rc::clone(spec));
        }
        let spec = Rc::new(SpawnSpec::parse(text)?);
        let mut specs = self.specs.borrow_mut();
        if specs.len() >= MAX_SPECS {
            // Routes changed many times: start over rather than grow.
            specs.clear();
        }
        specs.push((text.to_vec(), Rc::clone(&spec)));
        Ok(spec)
    }

    /// Resolves (at once, if it already has) when the host starts shutting down.
    pub fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// A number for a new session, unique in this host.
    pub fn next_session_number(&self) -> u64 {
        let n = self.next_session.get() + 1;
        self.next_session.set(n);
        n
    }

    pub fn live_sessions(&self) -> usize {
        self.backends.borrow().len()
    }

    /// Process groups of the live sessions.
    pub fn live_groups(&self) -> BTreeSet<i32> {
        self.backends.borrow().clone()
    }

    /// Counts a started backend as live.
    pub(crate) fn backend_started(&self, pgid: i32) {
        self.spawned.set(self.spawned.get() + 1);
        self.backends.borrow_mut().insert(pgid);
    }

    /// A backend's processes are gone: it no longer counts, even if its
    /// worker is slow to take the last frame.
    pub(crate) fn backend_ended(&self, pgid: i32) {
        self.backends.borrow_mut().remove(&pgid);
        self.ended.set(self.ended.get() + 1);
        if self.live_sessions() == 0 {
            self.idle.notify_waiters();
            // Give memory from a burst of sessions back to the system, so the
            // host stays small (and quick to fork) once they are gone.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
        }
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

    /// Ends the live sessions whose id starts with `prefix` (at least
    /// [`SESSION_ID_PREFIX`] characters). Returns how many.
    pub fn end_sessions_matching(&self, prefix: &str) -> usize {
        if prefix.len() < SESSION_ID_PREFIX {
            return 0;
        }
        let sessions = self.sessions.borrow();
        let matching: Vec<_> = sessions.values().filter(|r| r.info.id.starts_with(prefix)).collect();
        for r in &matching {
            r.info.end.notify_one();
        }
        matching.len()
    }

    /// Statistics for the worker (and the tests).
    pub fn stats(&self) -> serde_json::Value {
        let (reaped, orphans) = self.reaper.counts();
        let mut sessions: Vec<_> = self.sessions.borrow().values().map(|r| Rc::clone(&r.info)).collect();
        sessions.sort_by_key(|s| s.started);
        serde_json::json!({
            "pid": std::process::id(),
            "token": self.token,
            "worker": self.worker.pid,
            "master": self.worker.master,
            "sessions": self.sessions.borrow().len(),
            "pooled": self.pools.live(),
            "parked": self.parked.len(),
            "backends": self.backends.borrow().iter().collect::<Vec<_>>(),
            "spawned": self.spawned.get(),
            "ended": self.ended.get(),
            "reaped": reaped,
            "orphans_reaped": orphans,
            "events_dropped": self.events.dropped(),
            "live": sessions.iter().map(|s| s.describe()).collect::<Vec<_>>(),
        })
    }
}
