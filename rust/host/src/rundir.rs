//! The host's directory (see `mcp_bridge_core::runtime`): retiring and
//! removing it when the host exits, and doing the same for what hosts killed
//! outright left behind.
//!
//! A worker checks a host's socket (`Layout::trusted_socket`) just before it
//! connects to it. Removing the socket between the two would make the
//! connect fail with ENOENT, which nginx logs as `[crit]`. So a directory is
//! retired first: a plain file replaces the socket in one rename, after which
//! the check fails (no connect at all) and a connect that was checked just
//! before is refused (`[error]` "Connection refused", and the client's
//! `404`). Only after [`RETIRED_GRACE`] is the directory removed.

use crate::log;
use mcp_bridge_core::runtime::{self, Layout};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A staging directory older than this belongs to a worker that died while
/// it was starting a host.
const STAGING_LIMIT: Duration = Duration::from_secs(60);

/// How long a retired directory stays before it is removed: far longer than
/// a worker takes from its check of a socket to its connect (a few
/// microseconds, or a few scheduler time slices on a machine under load),
/// and short enough not to hold up a host's exit.
pub const RETIRED_GRACE: Duration = Duration::from_millis(200);

/// Removes `dir` and everything in it; a directory already gone is fine.
pub fn remove(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log!(Warn, "cannot remove {}: {e}", dir.display()),
    }
}

/// Puts a plain file where the socket of the host in `dir` was, in one
/// rename, so no worker connects to it again (see the top of this file).
pub fn retire(dir: &Path) {
    if grace_started(dir).is_some() {
        return;
    }
    let tombstone = dir.join(".retired");
    let placed = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tombstone)
        .and_then(|_| std::fs::rename(&tombstone, dir.join(runtime::SOCKET_NAME)));
    match placed {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log!(Warn, "cannot retire {}: {e}", dir.display()),
    }
}

/// When `dir` was retired, if it was.
fn grace_started(dir: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(dir.join(runtime::SOCKET_NAME))
        .ok()
        .filter(|m| m.file_type().is_file())
        .and_then(|m| m.modified().ok())
}

/// A directory the host removes as it exits (its own, or one it swept):
/// retired if it is not yet, then removed once its grace is over (the host
/// has nothing else left to do).
pub fn retire_then_remove(dir: &Path) {
    retire(dir);
    let age = grace_started(dir).and_then(|t| SystemTime::now().duration_since(t).ok());
    if let Some(age) = age {
        std::thread::sleep(RETIRED_GRACE.saturating_sub(age));
    }
    remove(dir);
}

/// Retires the directories of this user's hosts that are gone (killed
/// before they could clean up): their sockets refuse connections or are
/// missing. `own` is this host's directory, named by `token`. Returns the
/// directories to remove once [`RETIRED_GRACE`] has passed.
pub fn sweep_stale(own: &Path, token: &str) -> Vec<PathBuf> {
    let Some(base) = own.parent() else { return Vec::new() };
    let layout = Layout::new(Some(base.to_path_buf()));
    let mut retired = Vec::new();
    for other in layout.host_tokens() {
        if other == token {
            continue;
        }
        let dir = layout.host_dir(&other);
        // Only what this user alone controls is ever removed.
        if runtime::check_private_dir(&dir, layout.uid()).is_err() {
            continue;
        }
        let socket = dir.join(runtime::SOCKET_NAME);
        if std::fs::symlink_metadata(&socket).is_err() {
            // No socket to connect to: nothing to wait for.
            remove(&dir);
            log!(Info, "removed the directory of a host that is gone: {}", dir.display());
        } else if refuses_connections(&socket) {
            retire(&dir);
            retired.push(dir);
        }
    }
    for staging in layout.staging_dirs() {
        let old = std::fs::symlink_metadata(&staging)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STAGING_LIMIT);
        if old && runtime::check_private_dir(&staging, layout.uid()).is_ok() {
            remove(&staging);
        }
    }
    retired
}

/// Removes directories [`sweep_stale`] retired, once their grace is over.
pub async fn remove_retired(dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    tokio::time::sleep(RETIRED_GRACE).await;
    for dir in dirs {
        remove(&dir);
        log!(Info, "removed the directory of a host that is gone: {}", dir.display());
    }
}

fn refuses_connections(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(fd) = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
    else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else { return false };
    // A full backlog answers EAGAIN, which means alive; only a socket with
    // no listener (or a retired one, a plain file) answers ECONNREFUSED.
    matches!(connect(fd.as_raw_fd(), &addr), Err(nix::errno::Errno::ECONNREFUSED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn scratch(name: &str) -> (PathBuf, Layout) {
        let base = std::env::temp_dir().join(format!("mcp-host-rundir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let layout = Layout::new(Some(base.clone()));
        (base, layout)
    }

    fn make(layout: &Layout) -> (String, PathBuf) {
        let (token, staging) = layout.create_host_dir().expect("create");
        (token.clone(), layout.publish(&staging, &token).expect("publish"))
    }

    fn connect_error(dir: &Path) -> Option<std::io::ErrorKind> {
        UnixStream::connect(dir.join(runtime::SOCKET_NAME)).err().map(|e| e.kind())
    }

    #[test]
    fn dead_hosts_directories_are_retired_then_go_and_live_ones_stay() {
        let (base, layout) = scratch("sweep");
        let (own_token, own) = make(&layout);
        let (dead_token, dead) = make(&layout);
        let (_, live) = make(&layout);
        let (_, empty) = make(&layout);
        drop(UnixListener::bind(dead.join(runtime::SOCKET_NAME)).expect("bind"));
        let _listening = UnixListener::bind(live.join(runtime::SOCKET_NAME)).expect("bind");
        assert!(layout.trusted_socket(&dead_token).is_some(), "a dead host's socket passes the check until the sweep");

        let retired = sweep_stale(&own, &own_token);
        assert_eq!(retired, vec![dead.clone()]);
        assert!(own.exists(), "our own directory stays");
        assert!(live.exists(), "a live host's directory stays");
        assert!(!empty.exists(), "a directory without a socket goes at once");
        // Retired: no worker checks it as a socket any more, and a connect
        // checked just before is refused (nginx: [error]), never ENOENT
        // (nginx: [crit]).
        assert_eq!(layout.trusted_socket(&dead_token), None);
        assert_eq!(connect_error(&dead), Some(std::io::ErrorKind::ConnectionRefused));

        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let started = std::time::Instant::now();
        runtime.block_on(remove_retired(retired));
        assert!(started.elapsed() >= RETIRED_GRACE, "removed only after the grace");
        assert!(!dead.exists(), "a dead host's directory goes");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_hosts_own_directory_is_refused_then_removed_after_the_grace() {
        let (base, layout) = scratch("own");
        let (token, dir) = make(&layout);
        let listener = UnixListener::bind(dir.join(runtime::SOCKET_NAME)).expect("bind");
        retire(&dir);
        drop(listener);
        assert_eq!(layout.trusted_socket(&token), None);
        assert_eq!(connect_error(&dir), Some(std::io::ErrorKind::ConnectionRefused));
        let retired_at = grace_started(&dir).expect("retired");
        // Retiring again (at exit, after the shutdown did) keeps the first time.
        std::thread::sleep(Duration::from_millis(20));
        retire(&dir);
        assert_eq!(grace_started(&dir), Some(retired_at));

        let started = std::time::Instant::now();
        retire_then_remove(&dir);
        assert!(!dir.exists());
        let waited = started.elapsed();
        assert!(waited < RETIRED_GRACE, "the time since the first retire counts: waited {waited:?}");
        assert!(SystemTime::now().duration_since(retired_at).expect("clock") >= RETIRED_GRACE);
        let _ = std::fs::remove_dir_all(&base);
    }
}
