//! Process helpers shared by the native module (which starts the host) and the
//! host (which starts backends).
//!
//! Functions marked *async-signal-safe* make only raw system calls and may be
//! used inside `CommandExt::pre_exec`, between `fork` and `exec`.

use std::io;
use std::mem::MaybeUninit;
use std::ptr;

/// Highest signal number Linux defines (the last real-time signal).
const LAST_SIGNAL: libc::c_int = 64;

/// Unblocks every signal and restores the default disposition of every
/// catchable signal.
///
/// A child inherits its parent's signal mask and the signals its parent
/// ignores; nginx blocks and ignores several (SIGPIPE among them), and a
/// backend started with those would not die from a broken pipe or would
/// ignore the very signal we stop it with.
///
/// Async-signal-safe.
pub fn reset_signals() -> io::Result<()> {
    // SAFETY: sigemptyset initialises the set before use; sigprocmask and
    // signal are async-signal-safe system calls with valid arguments.
    unsafe {
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for sig in 1..=LAST_SIGNAL {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            set_default_disposition(sig)?;
        }
    }
    Ok(())
}

/// Signals that stop the host; held blocked from before its `exec` until
/// its handlers are installed, so none can kill it before it cleans up.
pub const TERMINATION_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGHUP];

/// Blocks (`true`) or unblocks `signals` for the calling thread. The mask
/// survives `exec`. Async-signal-safe.
pub fn hold_signals(signals: &[libc::c_int], hold: bool) -> io::Result<()> {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for &sig in signals {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        let how = if hold { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        let rc = libc::pthread_sigmask(how, set.as_ptr(), ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// The kernel's `struct sigaction` (x86_64 and aarch64 share this layout).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Sets `sig` to SIG_DFL with the raw system call: glibc's wrappers refuse
/// the two real-time signals it reserves, yet a parent can leave them
/// ignored and a child would inherit that.
unsafe fn set_default_disposition(sig: libc::c_int) -> io::Result<()> {
    let action = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    let rc = libc::syscall(
        libc::SYS_rt_sigaction,
        sig as libc::c_long,
        &action as *const KernelSigaction,
        ptr::null_mut::<KernelSigaction>(),
        std::mem::size_of::<u64>(),
    );
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to send `signal` to this process when the thread that
/// forked it exits, then checks that this parent is still `expected_parent`
/// (it may have died before the request was made, in which case the signal
/// would never come).
///
/// Async-signal-safe.
pub fn die_with_parent(signal: libc::c_int, expected_parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number; getppid cannot fail.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != expected_parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Marks every file descriptor from `first` upwards close-on-exec, so that a
/// new program inherits nothing but what was placed below `first` on purpose
/// (nginx's listening sockets and client connections, or another session's
/// pipes, must never reach a backend).
///
/// Async-signal-safe.
pub fn cloexec_from(first: libc::c_int) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let rc = unsafe {
        libc::close_range(first as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int)
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) && err.raw_os_error() != Some(libc::EINVAL) {
        return Err(err);
    }
    // Kernels before 5.11: walk the descriptor table up to the soft limit.
    // SAFETY: getrlimit writes into a valid struct; fcntl on a closed fd
    // fails with EBADF, which is expected and ignored.
    unsafe {
        let mut limit = MaybeUninit::<libc::rlimit>::uninit();
        let last = if libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) == 0 {
            limit.assume_init().rlim_cur.min(1 << 20) as libc::c_int
        } else {
            1024
        };
        for fd in first..last {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok(())
}

/// Clears the close-on-exec flag of `fd`, so a descriptor placed there on
/// purpose survives `exec`. Async-signal-safe.
pub fn keep_on_exec(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl(F_SETFD) only changes descriptor flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft descriptor limit to the hard one (a host holds about
/// four descriptors per session, more than Debian's default soft limit of
/// 1,024 allows for a few hundred sessions). Returns the limits before
/// (soft, hard).
pub fn raise_descriptor_limit() -> io::Result<(u64, u64)> {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        let before = (limit.rlim_cur, limit.rlim_max);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(before)
    }
}

/// Sets the soft descriptor limit back to `soft`, for a program started
/// from a process that raised it (some programs size tables by it).
/// Async-signal-safe.
pub fn restore_descriptor_limit(soft: u64) -> io::Result<()> {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if soft < limit.rlim_cur {
            limit.rlim_cur = soft;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Sends `signal` to every process of group `pgid`. Returns `Ok(false)` when
/// the group no longer has any member (ESRCH), which is not an error for a
/// caller tearing a group down. `signal` 0 only probes for members.
pub fn signal_group(pgid: libc::pid_t, signal: libc::c_int) -> io::Result<bool> {
    if pgid <= 1 {
        // killpg(0) and killpg(1) would hit our own group or init's.
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refusing to signal process group {pgid}")));
    }
    // SAFETY: killpg with a positive group id and a valid signal number.
    if unsafe { libc::killpg(pgid, signal) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ESRCH) => Ok(false),
        _ => Err(io::Error::new(err.kind(), format!("killpg({pgid}, {signal}): {err}"))),
    }
}

/// Whether process group `pgid` still has a member (zombies included).
pub fn group_alive(pgid: libc::pid_t) -> bool {
    // EPERM also means a member exists; only ESRCH means the group is empty.
    !matches!(signal_group(pgid, 0), Ok(false))
}

/// Blocks SIGCHLD for the calling thread until dropped.
///
/// An nginx worker reaps every child from its SIGCHLD handler. `std`'s
/// `Command::spawn` reaps a child whose `exec` failed with `waitpid(pid)`,
/// and panics if the handler got there first; holding SIGCHLD for the
/// duration of the spawn keeps the handler away.
pub struct SigchldBlocked {
    previous: libc::sigset_t,
}

impl SigchldBlocked {
    pub fn new() -> io::Result<Self> {
        // SAFETY: the sets are initialised by sigemptyset/sigprocmask before use.
        unsafe {
            let mut block = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(block.as_mut_ptr());
            libc::sigaddset(block.as_mut_ptr(), libc::SIGCHLD);
            let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, block.as_ptr(), previous.as_mut_ptr());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Self { previous: previous.assume_init() })
        }
    }
}

impl Drop for SigchldBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    #[test]
    fn reset_signals_clears_inherited_mask_and_ignores() {
        // Ignore SIGTERM and block SIGUSR1 in the child before the reset would
        // run, by doing it in an earlier pre_exec closure.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status"]).stdout(Stdio::piped());
        // SAFETY: only async-signal-safe calls in the closures.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
                let mut set = MaybeUninit::<libc::sigset_t>::uninit();
                libc::sigemptyset(set.as_mut_ptr());
                libc::sigaddset(set.as_mut_ptr(), libc::SIGUSR1);
                libc::sigprocmask(libc::SIG_BLOCK, set.as_ptr(), ptr::null_mut());
                Ok(())
            });
            cmd.pre_exec(reset_signals);
        }
        let out = cmd.output().expect("run sh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SigBlk:\t0000000000000000"), "mask not cleared: {text}");
        assert!(text.contains("SigIgn:\t0000000000000000"), "ignored signals kept: {text}");
    }

    #[test]
    fn cloexec_from_hides_descriptors_from_the_new_program() {
        let file = std::fs::File::open("/dev/null").expect("open");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // Make it inheritable first, as a descriptor from nginx would be.
        keep_on_exec(fd).expect("clear cloexec");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &format!("test -e /proc/self/fd/{fd} && echo open || echo closed")]);
        // SAFETY: cloexec_from is async-signal-safe.
        unsafe { cmd.pre_exec(|| cloexec_from(3)) };
        let out = cmd.output().expect("run sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
    }

    #[test]
    fn signal_group_reports_an_empty_group_and_refuses_our_own() {
        let mut child = Command::new("/bin/sleep").arg("30").process_group(0).spawn().expect("spawn sleep");
        let pgid = child.id() as libc::pid_t;
        assert!(group_alive(pgid), "group of a live process");
        assert!(signal_group(pgid, libc::SIGKILL).expect("killpg"));
        child.wait().expect("reap");
        assert!(!group_alive(pgid), "group after its only member was reaped");
        assert!(signal_group(0, libc::SIGTERM).is_err());
        assert!(signal_group(1, libc::SIGTERM).is_err());
    }
}
