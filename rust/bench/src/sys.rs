//! The few system calls the benchmark needs: its own CPU time, the real-time
//! clock the fixture stamps SIGTERM with, the descriptor limit, and pidfds to
//! learn without polling when a process (not necessarily our child) is gone.

use std::io;
use std::os::fd::AsRawFd;

use mcp_bridge_core::procfs;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// User plus system CPU seconds this process has used (RUSAGE_SELF: not
/// its children).
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return f64::NAN;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CLOCK_REALTIME in nanoseconds since the epoch.
pub fn realtime_ns() -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Raises the soft descriptor limit to the hard one (1,000 sessions need
/// more than Debian's default of 1,024). Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    mcp_bridge_core::procs::raise_descriptor_limit().map(|(_, hard)| hard)
}

/// Ends both directions of a socket at once (the peer reads EOF), even while
/// another task holds the stream.
pub fn shutdown(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: shutdown on a descriptor the caller keeps open.
    if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn sigterm(pid: i32) -> io::Result<()> {
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A process handle that becomes readable when the process has exited
/// (when it is a zombie, whoever its parent is, or reaped).
pub struct PidFd {
    fd: AsyncFd<procfs::PidFd>,
}

impl PidFd {
    /// Needs a tokio runtime with I/O enabled.
    pub fn open(pid: i32) -> io::Result<PidFd> {
        let fd = procfs::PidFd::open(pid)?;
        // SAFETY: procfs::PidFd owns its descriptor and always returns that
        // one (tokio >= 1.54 asks this of the caller).
        Ok(PidFd { fd: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? } })
    }

    pub async fn exited(&self) -> io::Result<()> {
        // Readiness never goes away once the process has exited: no need to
        // clear it.
        let _guard = self.fd.readable().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_and_cpu() {
        assert!(realtime_ns() > 1_600_000_000_000_000_000);
        let before = cpu_seconds();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_seconds() >= before);
    }

    #[test]
    fn pidfd_reports_a_child_exit() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut child = std::process::Command::new("true").spawn().expect("spawn true");
            let pid = i32::try_from(child.id()).expect("pid fits");
            let fd = PidFd::open(pid).expect("pidfd_open");
            fd.exited().await.expect("readable");
            child.wait().expect("reap");
        });
    }
}
