//! Descendants that left their session's process group.
//!
//! Killing a backend's process group misses a descendant that called
//! `setsid()` or `setpgid()`. Every backend therefore starts with a marker
//! in its environment, `MCP_BRIDGE_SESSION=<pid namespace>/<host
//! identity>.<n>`, which its descendants inherit; at the end of a session
//! the host finds the processes outside every live session's group that
//! carry the session's marker, and ends them with it. Processes carrying
//! the marker of a host that no longer runs (it was killed outright) are
//! ended too, whichever host finds them.
//!
//! A host identity (`<pid>-<start time>`) means something only in its own
//! PID namespace, so processes in another namespace (a container sharing
//! the user id) are never touched, whatever their marker says.
//!
//! Scans read `/proc`, so they run on a blocking thread, and requests that
//! arrive while one runs are answered together by the next.

use crate::log;
use mcp_bridge_core::procfs::{self, PidFd};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Notify};

/// The environment variable that marks a backend and its descendants.
pub const MARKER_VAR: &str = "MCP_BRIDGE_SESSION";

/// How long orphans of a dead host get between SIGTERM and SIGKILL.
const ORPHAN_GRACE: Duration = Duration::from_millis(500);

/// A process found by a scan, watched for its exit.
pub struct Escapee(AsyncFd<PidFd>);

impl Escapee {
    fn new(fd: PidFd) -> Option<Escapee> {
        // SAFETY: the PidFd owns its descriptor and always returns that one.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok().map(Escapee)
    }

    pub fn pid(&self) -> i32 {
        self.0.get_ref().pid
    }

    /// Sends `signal`; a process that has already exited is not an error.
    pub fn signal(&self, signal: libc::c_int) {
        if let Err(e) = self.0.get_ref().signal(signal) {
            log!(Error, "signal {signal} to escaped process {}: {e}", self.pid());
        }
    }

    pub fn exited(&self) -> bool {
        self.0.get_ref().exited()
    }

    /// Resolves when the process exits.
    pub async fn wait(&self) {
        while !self.exited() {
            match self.0.readable().await {
                Ok(mut ready) => ready.clear_ready(),
                Err(_) => return,
            }
        }
    }
}

impl AsRawFd for Escapee {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Signals every process of `escapees` that still runs.
pub fn signal_all(escapees: &[Escapee], signal: libc::c_int) {
    escapees.iter().filter(|e| !e.exited()).for_each(|e| e.signal(signal));
}

/// Resolves once every process of `escapees` has exited.
pub async fn all_exited(escapees: &[Escapee]) {
    for e in escapees {
        e.wait().await;
    }
}

struct Request {
    marker: String,
    reply: oneshot::Sender<Vec<PidFd>>,
}

/// Finds marked processes for the sessions of one host.
pub struct Sweeper {
    namespace: u64,
    identity: String,
    next: Cell<u64>,
    pending: RefCell<Vec<Request>>,
    wake: Notify,
}

impl Sweeper {
    /// `namespace` is the host's PID namespace (see
    /// `procfs::pid_namespace`), `identity` its own (see `procfs::identity`).
    pub fn new(namespace: u64, identity: String) -> Rc<Sweeper> {
        Rc::new(Sweeper { namespace, identity, next: Cell::new(0), pending: RefCell::default(), wake: Notify::new() })
    }

    /// A fresh marker for a new session.
    pub fn new_marker(&self) -> String {
        let n = self.next.get() + 1;
        self.next.set(n);
        format!("{}/{}.{n}", self.namespace, self.identity)
    }

    /// The running processes marked with `marker` outside every group in
    /// the host's live sessions.
    pub async fn find(&self, marker: &str) -> Vec<Escapee> {
        let (reply, answer) = oneshot::channel();
        self.pending.borrow_mut().push(Request { marker: marker.to_owned(), reply });
        self.wake.notify_one();
        answer.await.unwrap_or_default().into_iter().filter_map(Escapee::new).collect()
    }

    /// Answers requests until the runtime stops. `groups` gives the process
    /// groups of live sessions, whose members are not escapees. The first
    /// scan runs at once, to end what a killed predecessor left behind.
    pub async fn run(self: Rc<Self>, groups: impl Fn() -> BTreeSet<i32>) {
        loop {
            let requests: Vec<Request> = std::mem::take(&mut *self.pending.borrow_mut());
            let wanted: Vec<String> = requests.iter().map(|r| r.marker.clone()).collect();
            let skip = groups();
            let (namespace, identity) = (self.namespace, self.identity.clone());
            let scanned = tokio::task::spawn_blocking(move || scan(namespace, &identity, &wanted, &skip)).await;
            let mut found = match scanned {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => {
                    log!(Error, "cannot look for escaped processes: {e}");
                    Found::default()
                }
                Err(e) => {
                    log!(Error, "looking for escaped processes failed: {e}");
                    Found::default()
                }
            };
            for request in requests {
                let _ = request.reply.send(found.marked.remove(&request.marker).unwrap_or_default());
            }
            if !found.orphans.is_empty() {
                tokio::task::spawn_local(end_orphans(found.orphans));
            }
            // A wake-up left by a request this scan already answered must
            // not cost another scan.
            while self.pending.borrow().is_empty() {
                self.wake.notified().await;
            }
        }
    }
}

#[derive(Default)]
struct Found {
    marked: HashMap<String, Vec<PidFd>>,
    orphans: Vec<PidFd>,
}

/// Who set a marker, as far as a host in `namespace` can tell.
#[derive(Debug, PartialEq, Eq)]
enum Owner<'a> {
    /// A host of this namespace, by identity.
    Here(&'a str),
    /// A host of another PID namespace: not ours to judge.
    Elsewhere,
}

/// The owner of `marker` (`<namespace>/<identity>.<n>`, or `<identity>.<n>`
/// as versions before the namespace was added wrote it).
fn owner(marker: &str, namespace: u64) -> Option<Owner<'_>> {
    let (owner, _) = marker.rsplit_once('.')?;
    match owner.split_once('/') {
        Some((ns, identity)) if ns.parse::<u64>().ok()? == namespace => Some(Owner::Here(identity)),
        Some(_) => Some(Owner::Elsewhere),
        None => Some(Owner::Here(owner)),
    }
}

/// Reads `/proc` once. Only processes outside the live sessions' groups
/// (and outside the host's own group) that belong to the host's user and
/// live in its PID namespace can carry a marker it acts on; for the others
/// one `getpgid` call is all it costs. Every match is opened as a pidfd and
/// its marker read again through it, so a pid reused meanwhile is never
/// signalled.
fn scan(namespace: u64, identity: &str, wanted: &[String], skip_groups: &BTreeSet<i32>) -> std::io::Result<Found> {
    let me = std::process::id() as i32;
    let own_group = procfs::pgid(me);
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut found = Found::default();
    for pid in procfs::all_pids()? {
        let Some(group) = procfs::pgid(pid) else { continue };
        if pid == me || Some(group) == own_group || skip_groups.contains(&group) || procfs::owner(pid) != Some(uid) {
            continue;
        }
        if procfs::pid_namespace(pid) != Some(namespace) {
            continue;
        }
        let Some(marker) = procfs::environ_var(pid, MARKER_VAR) else { continue };
        let ours = match owner(&marker, namespace) {
            Some(Owner::Here(owner)) if owner == identity => true,
            Some(Owner::Here(owner)) if !procfs::identity_alive(owner) => false,
            _ => continue,
        };
        if ours && !wanted.contains(&marker) {
            continue;
        }
        let Ok(fd) = PidFd::open(pid) else { continue };
        if procfs::environ_var(pid, MARKER_VAR).as_deref() != Some(marker.as_str()) {
            continue;
        }
        if ours {
            found.marked.entry(marker).or_default().push(fd);
        } else {
            found.orphans.push(fd);
        }
    }
    Ok(found)
}

/// Ends processes left by a host that was killed outright.
async fn end_orphans(orphans: Vec<PidFd>) {
    let orphans: Vec<Escapee> = orphans.into_iter().filter_map(Escapee::new).collect();
    let pids: Vec<i32> = orphans.iter().map(Escapee::pid).collect();
    log!(Notice, "ending {} process(es) left by a host that is gone: {pids:?}", orphans.len());
    signal_all(&orphans, libc::SIGTERM);
    if tokio::time::timeout(ORPHAN_GRACE, all_exited(&orphans)).await.is_err() {
        signal_all(&orphans, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_their_host_only_within_its_namespace() {
        assert_eq!(owner("4026531836/12-345.6", 4026531836), Some(Owner::Here("12-345")));
        assert_eq!(owner("4026532000/1-345.6", 4026531836), Some(Owner::Elsewhere));
        assert_eq!(owner("12-345.6", 4026531836), Some(Owner::Here("12-345")), "the marker of an older version");
        assert_eq!(owner("x/12-345.6", 4026531836), None);
        assert_eq!(owner("no-dot", 4026531836), None);
        let sweeper = Sweeper::new(7, "12-345".into());
        assert_eq!(sweeper.new_marker(), "7/12-345.1");
        assert_eq!(sweeper.new_marker(), "7/12-345.2");
    }
}
