//! State shared by every session and connection of the host.

use crate::backend;
use crate::escapees::Sweeper;
use crate::reaper::Reaper;
use crate::sse::Inbox;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use tokio::sync::watch;

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

pub struct Host {
    pub token: String,
    pub worker: Worker,
    pub defaults: backend::Defaults,
    pub reaper: Rc<Reaper>,
    pub sweeper: Rc<Sweeper>,
    /// Client messages waiting for each SSE session's backend, by session id.
    pub(crate) inboxes: RefCell<HashMap<String, Inbox>>,
    /// Process groups of the live sessions (a group's id is its backend's pid).
    backends: RefCell<BTreeSet<i32>>,
    shutdown: watch::Sender<bool>,
    spawned: Cell<u64>,
    ended: Cell<u64>,
    next_session: Cell<u64>,
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
        Rc::new(Host {
            token,
            worker,
            defaults,
            reaper,
            sweeper,
            inboxes: RefCell::default(),
            backends: RefCell::default(),
            shutdown: watch::Sender::new(false),
            spawned: Cell::new(0),
            ended: Cell::new(0),
            next_session: Cell::new(0),
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

    /// Statistics for the worker (and the tests).
    pub fn stats(&self) -> serde_json::Value {
        let (reaped, orphans) = self.reaper.counts();
        serde_json::json!({
            "pid": std::process::id(),
            "token": self.token,
            "worker": self.worker.pid,
            "master": self.worker.master,
            "sessions": self.live_sessions(),
            "backends": self.backends.borrow().iter().collect::<Vec<_>>(),
            "spawned": self.spawned.get(),
            "ended": self.ended.get(),
            "reaped": reaped,
            "orphans_reaped": orphans,
        })
    }
}
