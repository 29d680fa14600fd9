//! Reaping every child of the host, backends and adopted orphans alike.
//!
//! The host is a child subreaper, so a backend's descendants that lose their
//! parent become its children too. One SIGCHLD can stand for several exits
//! (signals coalesce), so each wake-up reaps until nothing is left. Each
//! exit is looked at before it is reaped (`waitid` with `WNOWAIT`): a
//! process killed by SIGKILL is still there to say whether its CPU limit
//! did it, and a failed one what its address-space limit was, which its
//! peak resident memory (from `wait4`) is compared with. A backend's status goes to whoever watches its pid; every
//! reaping also wakes the sessions waiting for their process group to
//! empty.

use crate::limits;
use crate::log;
use nix::errno::Errno;
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
    /// Killed by the kernel on reaching its CPU time limit: SIGXCPU at the
    /// soft limit, or SIGKILL at the hard one.
    CpuLimit(i32),
    /// Failed (an exit status, or a signal when `signalled`) once its peak
    /// resident memory had reached [`MEMORY_LIMIT_SHARE`] of its
    /// address-space limit: an allocation failed, and the process with it.
    MemoryLimit {
        status: i32,
        signalled: bool,
    },
}

/// The share of a process's address-space limit that its peak resident
/// memory must have reached for its failure to be put down to that limit
/// (address space is more than what is resident: libraries, stacks, and
/// reservations never touched).
pub const MEMORY_LIMIT_SHARE: f64 = 0.75;

impl Exit {
    /// The session end reason, for metrics, when a limit ended the process.
    pub fn limit_reason(self) -> Option<&'static str> {
        match self {
            Exit::CpuLimit(_) => Some("limit_cpu"),
            Exit::MemoryLimit { .. } => Some("limit_memory"),
            Exit::Code(_) | Exit::Signal(_) => None,
        }
    }

    /// How a process killed by `signal` ended; `pid` is its zombie, not
    /// reaped yet.
    fn killed(pid: i32, signal: i32) -> Exit {
        // Only the kernel's CPU limit sends SIGXCPU (or the process itself).
        if signal == libc::SIGXCPU || (signal == libc::SIGKILL && limits::cpu_limit_reached(pid)) {
            return Exit::CpuLimit(signal);
        }
        Exit::Signal(signal)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::CpuLimit(s) => write!(f, "killed by signal {s} on reaching its CPU time limit"),
            Exit::MemoryLimit { status, signalled: false } => {
                write!(f, "exited with status {status} on reaching its memory limit")
            }
            Exit::MemoryLimit { status, signalled: true } => {
                write!(f, "killed by signal {status} on reaching its memory limit")
            }
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
        while let Some((pid, exit)) = reap_one() {
            any = true;
            self.dispatch(pid, exit);
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

/// Reaps one child that has exited, if there is one.
fn reap_one() -> Option<(i32, Exit)> {
    let (pid, exit) = loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid writes into it and
        // si_pid/si_status read what it wrote for a child's exit.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        if unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) } != 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::ECHILD => return None,
                e => {
                    log!(Error, "waitid: {e}");
                    return None;
                }
            }
        }
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return None;
        }
        let exit = match info.si_code {
            libc::CLD_EXITED => Exit::Code(status),
            _ => Exit::killed(pid, status),
        };
        break (pid, exit);
    };
    // Only a failure needs its memory looked at, and only under a limit.
    let address_space = match exit {
        Exit::Code(0) | Exit::CpuLimit(_) | Exit::MemoryLimit { .. } => None,
        Exit::Code(_) | Exit::Signal(_) => address_space_limit(pid),
    };
    loop {
        // SAFETY: wait4 writes the status and the usage into the locals.
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            let peak = usage.ru_maxrss.max(0) as f64 * 1024.0;
            let exit = match (exit, address_space) {
                (Exit::Code(c), Some(limit)) if peak >= limit as f64 * MEMORY_LIMIT_SHARE => {
                    Exit::MemoryLimit { status: c, signalled: false }
                }
                (Exit::Signal(s), Some(limit)) if peak >= limit as f64 * MEMORY_LIMIT_SHARE => {
                    Exit::MemoryLimit { status: s, signalled: true }
                }
                _ => exit,
            };
            return Some((pid, exit));
        }
        match Errno::last() {
            Errno::EINTR if reaped < 0 => continue,
            e => {
                // Not reaped: looking again would find the same exit forever.
                log!(Error, "wait4({pid}) returned {reaped}: {e}");
                return None;
            }
        }
    }
}

/// The address-space limit (RLIMIT_AS, soft) of `pid`, a zombie not reaped
/// yet; None when it has none.
fn address_space_limit(pid: i32) -> Option<u64> {
    // SAFETY: prlimit with a null new limit only reads into `limit`.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::prlimit(pid, libc::RLIMIT_AS, std::ptr::null(), &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}
