//! Reaping every child of the host, backends and adopted orphans alike.
//!
//! The host is a child subreaper, so a backend's descendants that lose their
//! parent become its children too. One SIGCHLD can stand for several exits
//! (signals coalesce), so each wake-up reaps with `waitpid(-1, WNOHANG)`
//! until nothing is left. A backend's status goes to whoever watches its
//! pid; every reaping also wakes the sessions waiting for their process
//! group to empty.

use crate::log;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, Notify};

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

#[derive(Default)]
pub struct Reaper {
    watchers: RefCell<HashMap<i32, oneshot::Sender<Exit>>>,
    reaped: Notify,
    watched_reaped: Cell<u64>,
    orphans_reaped: Cell<u64>,
}

impl Reaper {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Reports the exit of child `pid`. Call right after spawning it, before
    /// yielding to the runtime, so the exit cannot be reaped unwatched.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        self.watchers.borrow_mut().insert(pid, tx);
        rx
    }

    /// Woken after each round of reaping.
    pub fn reaped(&self) -> &Notify {
        &self.reaped
    }

    /// (watched children reaped, adopted orphans reaped) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.watched_reaped.get(), self.orphans_reaped.get())
    }

    /// Reaps on every SIGCHLD until the runtime stops.
    pub async fn run(self: Rc<Self>) {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                log!(Alert, "cannot watch SIGCHLD, children will not be reaped: {e}");
                return;
            }
        };
        loop {
            self.reap_all();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }

    /// Reaps every child that has exited.
    pub fn reap_all(&self) {
        let mut any = false;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    any = true;
                    self.dispatch(pid.as_raw(), Exit::Code(code));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    any = true;
                    self.dispatch(pid.as_raw(), Exit::Signal(sig as i32));
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log!(Error, "waitpid: {e}");
                    break;
                }
            }
        }
        if any {
            self.reaped.notify_waiters();
        }
    }

    fn dispatch(&self, pid: i32, exit: Exit) {
        match self.watchers.borrow_mut().remove(&pid) {
            Some(tx) => {
                self.watched_reaped.set(self.watched_reaped.get() + 1);
                let _ = tx.send(exit);
            }
            None => {
                self.orphans_reaped.set(self.orphans_reaped.get() + 1);
                log!(Info, "reaped adopted process {pid} ({exit})");
            }
        }
    }
}
