//! The host's directory (see `mcp_bridge_core::runtime`): removing it when
//! the host exits, and removing what hosts killed outright left behind.

use crate::log;
use mcp_bridge_core::runtime::{self, Layout};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// A staging directory older than this belongs to a worker that died while
/// it was starting a host.
const STAGING_LIMIT: Duration = Duration::from_secs(60);

/// Removes `dir` and everything in it; a directory already gone is fine.
pub fn remove(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log!(Warn, "cannot remove {}: {e}", dir.display()),
    }
}

/// Removes the directories of this user's hosts that are gone (killed
/// before they could clean up): their sockets refuse connections or are
/// missing. `own` is this host's directory, named by `token`.
pub fn sweep_stale(own: &Path, token: &str) {
    let Some(base) = own.parent() else { return };
    let layout = Layout::new(Some(base.to_path_buf()));
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
        if !socket.exists() || refuses_connections(&socket) {
            remove(&dir);
            log!(Info, "removed the directory of a host that is gone: {}", dir.display());
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
}

fn refuses_connections(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(fd) = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
    else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else { return false };
    // A full backlog answers EAGAIN, which means alive; only a socket with
    // no listener answers ECONNREFUSED.
    matches!(connect(fd.as_raw_fd(), &addr), Err(nix::errno::Errno::ECONNREFUSED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_hosts_directories_go_and_live_ones_stay() {
        let base = std::env::temp_dir().join(format!("mcp-host-rundir-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let layout = Layout::new(Some(base.clone()));
        let make = || {
            let (token, staging) = layout.create_host_dir().expect("create");
            (token.clone(), layout.publish(&staging, &token).expect("publish"))
        };
        let (own_token, own) = make();
        let (_, dead) = make();
        let (_, live) = make();
        let (_, empty) = make();
        let bound = std::os::unix::net::UnixListener::bind(dead.join(runtime::SOCKET_NAME)).expect("bind");
        drop(bound);
        let _listening = std::os::unix::net::UnixListener::bind(live.join(runtime::SOCKET_NAME)).expect("bind");
        sweep_stale(&own, &own_token);
        assert!(own.exists(), "our own directory stays");
        assert!(live.exists(), "a live host's directory stays");
        assert!(!dead.exists(), "a dead host's directory goes");
        assert!(!empty.exists(), "a directory without a socket goes");
        let _ = std::fs::remove_dir_all(&base);
    }
}
