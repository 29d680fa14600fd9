//! Facts about processes from `/proc`, and pidfds to act on them without
//! racing pid reuse.
//!
//! A process is named by its *identity*, `<pid>-<start time>`: a pid alone
//! may be reused once its process is gone, but not together with the same
//! start time (in clock ticks since boot).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The fields of `/proc/<pid>/stat` this project needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// `R`, `S`, `Z`, ...
    pub state: u8,
    pub ppid: i32,
    pub pgrp: i32,
    /// CPU time the process itself used, user and system (clock ticks).
    pub cpu_ticks: u64,
    pub start_time: u64,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        self.state == b'Z' || self.state == b'X'
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name is in
/// parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let mut rest = text.get(close + 1..)?.split_ascii_whitespace();
    // Fields 3.. of proc(5): state ppid pgrp session tty_nr tpgid flags
    // minflt cminflt majflt cmajflt utime stime cutime cstime priority nice
    // num_threads itrealvalue starttime.
    let state = *rest.next()?.as_bytes().first()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    let utime: u64 = rest.nth(8)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    let start_time = rest.nth(6)?.parse().ok()?;
    Some(Stat { pid, state, ppid, pgrp, cpu_ticks: utime + stime, start_time })
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The identity (`<pid>-<start time>`) of process `pid`, if it exists.
pub fn identity(pid: i32) -> Option<String> {
    stat(pid).map(|s| format!("{}-{}", s.pid, s.start_time))
}

/// Whether the process named by `identity` still runs (a zombie does not).
/// A malformed identity names no process.
pub fn identity_alive(identity: &str) -> bool {
    let Some((pid, start)) = identity.split_once('-') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return false;
    };
    pid > 0 && matches!(stat(pid), Some(s) if s.start_time == start && !s.is_zombie())
}

/// The PID namespace of process `pid` (the inode number in the link
/// `/proc/<pid>/ns/pid`). `None` when it cannot be read: the process is
/// gone, or belongs to someone we may not inspect.
pub fn pid_namespace(pid: i32) -> Option<u64> {
    namespace_inode(&std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?.to_string_lossy())
}

/// The inode number in a namespace link's text, `pid:[4026531836]`.
fn namespace_inode(link: &str) -> Option<u64> {
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Process group of `pid`, by system call (no `/proc` read); `None` when
/// the process does not exist.
pub fn pgid(pid: i32) -> Option<i32> {
    // SAFETY: getpgid only reads the process table.
    let pgid = unsafe { libc::getpgid(pid) };
    (pgid >= 0).then_some(pgid)
}

/// The user that owns process `pid`.
pub fn owner(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// Pids of every process, in `/proc` order.
pub fn all_pids() -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// The value of variable `name` in the environment process `pid` started
/// with. `None` when it is unset or the environment is not readable (the
/// process belongs to another user, or is gone).
pub fn environ_var(pid: i32, name: &str) -> Option<String> {
    let mut buf = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/environ")).ok()?.read_to_end(&mut buf).ok()?;
    let prefix = format!("{name}=");
    buf.split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// A handle on one process that stays valid (and never names another
/// process) after the process is gone.
#[derive(Debug)]
pub struct PidFd {
    pub pid: i32,
    fd: OwnedFd,
}

impl PidFd {
    pub fn open(pid: i32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open with a pid and no flags; returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(PidFd { pid, fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
    }

    /// Sends `signal`. `Ok(false)` when the process has already exited.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<bool> {
        // SAFETY: pidfd_send_signal on our own pidfd, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.fd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0)
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            _ => Err(err),
        }
    }

    /// Whether the process has exited (it may not be reaped yet).
    pub fn exited(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }
}

/// The descriptor becomes readable when the process exits.
impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).expect("parse");
        assert_eq!((s.pid, s.state, s.ppid, s.pgrp, s.start_time), (4242, b'S', 1, 4242, 987654));
        assert_eq!(s.cpu_ticks, 3, "utime 1 + stime 2");
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 0").is_none());
    }

    #[test]
    fn identity_names_this_process_and_not_a_guess() {
        let me = identity(std::process::id() as i32).expect("own identity");
        assert!(identity_alive(&me));
        let (pid, start) = me.split_once('-').expect("dash");
        let other_start: u64 = start.parse::<u64>().expect("number") + 1;
        assert!(!identity_alive(&format!("{pid}-{other_start}")));
        for bad in ["", "-", "x-1", "1-x", "0-0", "-5-1"] {
            assert!(!identity_alive(bad), "{bad}");
        }
    }

    #[test]
    fn pid_namespaces_are_read_and_parsed() {
        assert_eq!(namespace_inode("pid:[4026531836]"), Some(4026531836));
        assert_eq!(namespace_inode("net:[4026531836]"), None);
        assert_eq!(namespace_inode("pid:[x]"), None);
        let me = std::process::id() as i32;
        assert!(pid_namespace(me).is_some());
    }

    #[test]
    fn environ_var_reads_the_start_environment() {
        let mut child = Command::new("/bin/sleep").arg("30").env("MCP_PROCFS_TEST", "v=1").spawn().expect("spawn");
        let pid = child.id() as i32;
        // spawn() returns as exec closes descriptors, a moment before the
        // new environment is in place.
        let mut seen = None;
        for _ in 0..500 {
            seen = environ_var(pid, "MCP_PROCFS_TEST");
            if seen.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(seen.as_deref(), Some("v=1"));
        assert_eq!(environ_var(pid, "MCP_PROCFS_TEST_MISSING"), None);
        let fd = PidFd::open(pid).expect("pidfd");
        assert!(!fd.exited());
        assert!(fd.signal(libc::SIGKILL).expect("signal"));
        child.wait().expect("reap");
        assert!(fd.exited());
        assert!(!fd.signal(libc::SIGKILL).expect("signal after exit"));
        let me = std::process::id() as i32;
        assert!(all_pids().expect("list").contains(&me));
        assert_eq!(pgid(me), stat(me).map(|s| s.pgrp));
        // SAFETY: geteuid cannot fail.
        assert_eq!(owner(me), Some(unsafe { libc::geteuid() }));
        assert_eq!(pgid(pid), None, "a reaped process has no group");
    }
}
