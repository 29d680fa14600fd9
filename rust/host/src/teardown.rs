//! Ending a backend's processes: SIGTERM to its process group and to its
//! descendants that left the group, SIGKILL to whatever is left after the
//! grace period, and waiting until the reaper has collected them. Waits on
//! events (reaping, pidfds), never on a timer loop; the grace period is the
//! only timer.

use crate::escapees::{self, Escapee};
use crate::host::Host;
use crate::log;
use crate::reaper::Reaper;
use mcp_bridge_core::procs;
use std::time::{Duration, Instant};

/// How long to wait for a SIGKILLed group to be reaped before saying so.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The longest grace period while the host shuts down (its worker is
/// reloading, quitting or gone): the worker's sessions must end within a
/// second, whatever `kill_grace_ms` says.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// What happened to a process group at the end of its session.
pub enum Teardown {
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

/// The processes of one backend being ended: its group, and the
/// descendants found outside it.
pub struct Ending {
    pgid: i32,
    signalled: bool,
    escaped: Vec<Escapee>,
}

impl Ending {
    /// Sends SIGTERM to group `pgid` at once. `since` is when the session's
    /// end was decided, for the log.
    pub fn begin(pgid: i32, since: Instant) -> Ending {
        let signalled = match procs::signal_group(pgid, libc::SIGTERM) {
            Ok(true) => {
                log!(Debug, "session {pgid}: SIGTERM sent {} us after the end", since.elapsed().as_micros());
                true
            }
            Ok(false) => false,
            Err(e) => {
                log!(Error, "session {pgid}: {e}");
                true
            }
        };
        Ending { pgid, signalled, escaped: Vec::new() }
    }

    /// Finds the session's processes that left its group (see
    /// `escapees`) and sends them SIGTERM too.
    pub async fn find_escaped(&mut self, host: &Host, marker: &str) {
        self.escaped = host.sweeper.find(marker).await;
        escapees::signal_all(&self.escaped, libc::SIGTERM);
    }

    /// How many processes outside the group were found.
    pub fn escaped(&self) -> usize {
        self.escaped.len()
    }

    /// SIGKILL when `grace` has passed (at most [`SHUTDOWN_GRACE`] once the
    /// host is shutting down), then waits until the reaper has collected
    /// every member it can. More escaped processes are looked for before
    /// the SIGKILL.
    pub async fn finish(&mut self, host: &Host, marker: &str, grace: Duration) -> Teardown {
        if !self.signalled && self.escaped.is_empty() {
            return Teardown::AlreadyGone;
        }
        let term_at = tokio::time::Instant::now();
        let mut deadline = term_at + grace;
        let mut shutdown = host.shutdown_watch();
        let gone = tokio::select! {
            gone = wait_gone(self.pgid, &host.reaper, &self.escaped, deadline) => gone,
            // Resolves at once if the host is already shutting down.
            _ = shutdown.wait_for(|&down| down) => {
                deadline = deadline.min(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                wait_gone(self.pgid, &host.reaper, &self.escaped, deadline).await
            }
        };
        let grace = deadline - term_at;
        if gone {
            return Teardown::Terminated { after: term_at.elapsed() };
        }
        if let Err(e) = procs::signal_group(self.pgid, libc::SIGKILL) {
            log!(Error, "session {}: {e}", self.pgid);
        }
        escapees::signal_all(&self.escaped, libc::SIGKILL);
        let late = host.sweeper.find(marker).await;
        escapees::signal_all(&late, libc::SIGKILL);
        self.escaped.extend(late);
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        let reaped = wait_gone(self.pgid, &host.reaper, &self.escaped, deadline).await;
        if !reaped {
            log!(Error, "session {}: processes still running {} s after SIGKILL", self.pgid, KILL_WAIT.as_secs());
        }
        Teardown::Killed { grace, reaped }
    }
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
