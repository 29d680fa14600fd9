//! Starting, watching and stopping the host process of an nginx worker.
//!
//! The worker creates the host's listening socket itself, so the socket can
//! be connected to the moment [`Host::launch`] returns, and passes it to the
//! host as descriptor 3. Descriptor 0 of the host is one end of a socket
//! pair whose other end the worker keeps: the host never writes to it, so
//! the worker sees the host die as that end becoming readable (EOF), and the
//! host sees the worker go away (or [`Host::stop`]) as EOF on its end.
//! [`Host::end_sessions`] writes one [`END_SESSIONS`] byte on it instead.

use crate::{procs, random};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// File name of the host program, looked up beside the native module.
pub const HOST_PROGRAM: &str = "mcp-bridge-host";

/// Length in hex digits of a host token (64 random bits).
pub const TOKEN_LEN: usize = 16;

/// Control-channel byte asking the host to end every session and accept no
/// new ones, while staying alive until its worker exits.
pub const END_SESSIONS: u8 = b'E';

/// Descriptor number at which the host finds its listening socket.
pub const LISTENER_FD: libc::c_int = 3;

/// How to start a host.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    pub program: PathBuf,
    pub runtime_dir: PathBuf,
    pub log_level: String,
}

/// A running host, owned by the worker that started it.
pub struct Host {
    pid: libc::pid_t,
    token: String,
    socket_path: PathBuf,
    control: OwnedFd,
}

impl Host {
    /// Starts a host. Must be called from the thread that will live as long
    /// as the worker (its main thread): the host's parent-death signal fires
    /// when the forking thread exits.
    pub fn launch(config: &LaunchConfig) -> io::Result<Host> {
        prepare_runtime_dir(&config.runtime_dir)?;
        check_program(&config.program)?;
        let token = random::hex(TOKEN_LEN / 2)?;
        let socket_path = socket_path(&config.runtime_dir, &token);
        let listener = listen_at(&config.runtime_dir, &token, &socket_path)?;
        let (ours, theirs) = socket::socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| context(io::Error::from(e), "socketpair for the host's control channel"))?;

        let worker = std::process::id() as libc::pid_t;
        let listener_fd = listener.as_raw_fd();
        let mut command = Command::new(&config.program);
        command
            .arg("--token")
            .arg(&token)
            .arg("--runtime-dir")
            .arg(&config.runtime_dir)
            .arg("--parent")
            .arg(worker.to_string())
            .arg("--log-level")
            .arg(&config.log_level)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: the closure makes only async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(listener_fd, LISTENER_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                procs::keep_on_exec(LISTENER_FD)?;
                procs::cloexec_from(LISTENER_FD + 1)?;
                procs::reset_signals()?;
                procs::hold_signals(&procs::TERMINATION_SIGNALS, true)?;
                // SIGTERM, not SIGKILL: the host must get to kill its backends.
                procs::die_with_parent(libc::SIGTERM, worker)
            });
        }
        let child = {
            let _held = procs::SigchldBlocked::new()?;
            command.spawn()
        };
        let child = child.map_err(|e| {
            let _ = fs::remove_file(&socket_path);
            context(e, &format!("cannot start {}", config.program.display()))
        })?;
        // The host has its own copy of the listener; the worker must not keep
        // one, or connections could queue on a socket nobody accepts from.
        drop(listener);
        Ok(Host { pid: child.id() as libc::pid_t, token, socket_path, control: ours })
    }

    /// Whether the host is still running. Never blocks.
    pub fn is_alive(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.control.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            // The host never writes: any readiness means its end is closed.
            Ok(0) => true,
            Ok(_) => false,
            Err(nix::errno::Errno::EINTR) => true,
            Err(_) => false,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Closes the control channel. The host ends every session (killing
    /// its backends) and exits; this call does not wait for that.
    pub fn stop(self) {
        drop(self.control);
    }

    /// Asks the host to end every session and refuse new ones, but to stay
    /// until this process exits: a host that exited first would be reaped
    /// by the worker, and nginx logs every child it reaps as an "unknown
    /// process". Never blocks; if the request cannot be written, the host
    /// is stopped instead.
    pub fn end_sessions(self) {
        let sent = nix::unistd::write(&self.control, &[END_SESSIONS]);
        if sent == Ok(1) {
            // Kept open (not closed) on purpose until this process exits.
            std::mem::forget(self.control);
        }
    }
}

/// The runtime directory used when none is configured: `/tmp/mcp-bridge-<uid>`.
pub fn default_runtime_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("mcp-bridge-{uid}"))
}

/// Path of the socket of the host with `token`.
pub fn socket_path(runtime_dir: &Path, token: &str) -> PathBuf {
    runtime_dir.join(format!("{token}.sock"))
}

/// Whether `s` has the shape of a host token.
pub fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Creates the runtime directory (mode 0700) if needed and checks that it is
/// a real directory owned by us that nobody else can write to: the sockets
/// in it accept sessions, and another user must not be able to plant one.
pub fn prepare_runtime_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(context(e, &format!("cannot create runtime directory {}", dir.display()))),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| context(e, &format!("cannot stat {}", dir.display())))?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let problem = if !meta.file_type().is_dir() {
        Some("is not a directory")
    } else if meta.uid() != uid {
        Some("is owned by another user")
    } else if meta.permissions().mode() & 0o022 != 0 {
        Some("is writable by other users")
    } else {
        None
    };
    match problem {
        Some(p) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("runtime directory {} {p} (uid {uid} needs its own, mode 0700)", dir.display()),
        )),
        None => Ok(()),
    }
}

fn check_program(program: &Path) -> io::Result<()> {
    let meta = fs::metadata(program)
        .map_err(|e| context(e, &format!("mcp-bridge host program {} not found", program.display())))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("mcp-bridge host program {} is not an executable file", program.display()),
        ));
    }
    Ok(())
}

/// Binds and listens under a temporary name, then renames the socket into
/// place, so a host sweeping stale sockets never sees one that is bound but
/// not yet listening.
fn listen_at(dir: &Path, token: &str, path: &Path) -> io::Result<OwnedFd> {
    let tmp = dir.join(format!(".{token}.tmp"));
    let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| context(io::Error::from(e), "socket for the host"))?;
    let addr =
        UnixAddr::new(&tmp).map_err(|e| context(io::Error::from(e), &format!("socket path {}", tmp.display())))?;
    let _ = fs::remove_file(&tmp);
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| context(io::Error::from(e), &format!("bind {}", tmp.display())))?;
    let listened = socket::listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| context(io::Error::from(e), &format!("listen on {}", tmp.display())))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| context(e, &format!("rename to {}", path.display()))));
    if let Err(e) = listened {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(fd)
}

fn context(err: io::Error, what: &str) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mcp-bridge-core-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn runtime_dir_is_created_private_and_an_open_one_is_refused() {
        let dir = temp_dir("rt");
        prepare_runtime_dir(&dir).expect("create");
        let mode = fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = prepare_runtime_dir(&dir).expect_err("world-writable dir must be refused");
        assert!(err.to_string().contains("writable by other users"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn tokens_are_sixteen_lowercase_hex_digits() {
        assert!(is_token("0123456789abcdef"));
        assert!(!is_token("0123456789ABCDEF"));
        assert!(!is_token("0123456789abcde"));
        assert!(!is_token("../../etc/passwd"));
    }

    #[test]
    fn launching_a_missing_program_names_it() {
        let dir = temp_dir("missing");
        let config = LaunchConfig {
            program: PathBuf::from("/nonexistent/mcp-bridge-host"),
            runtime_dir: dir.clone(),
            log_level: "info".into(),
        };
        let err = Host::launch(&config).err().expect("launch must fail");
        assert!(err.to_string().contains("/nonexistent/mcp-bridge-host"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_launched_host_is_alive_until_it_exits() {
        // /bin/sh stands in for the host: it reads fd 0 until EOF, then exits,
        // and reports whether it inherited the listener as fd 3.
        let dir = temp_dir("launch");
        let script = dir.with_extension("sh");
        fs::write(&script, "#!/bin/sh\ntest -S /proc/self/fd/3 || test -e /proc/self/fd/3 || exit 3\ncat >/dev/null\n")
            .expect("write script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        let config = LaunchConfig { program: script.clone(), runtime_dir: dir.clone(), log_level: "info".into() };
        let host = Host::launch(&config).expect("launch");
        assert!(host.socket_path().exists(), "socket in place when launch returns");
        assert!(is_token(host.token()));
        assert!(host.is_alive());
        let pid = host.pid();
        host.stop();
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status}");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(&script);
    }

    #[test]
    fn a_host_that_dies_is_seen_dead() {
        let dir = temp_dir("dies");
        let script = dir.with_extension("sh");
        fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        let config = LaunchConfig { program: script.clone(), runtime_dir: dir.clone(), log_level: "info".into() };
        let host = Host::launch(&config).expect("launch");
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(host.pid(), &mut status, 0) };
        // A child another test thread forks at the wrong moment holds a copy
        // of the channel until it execs; give that a moment to pass.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while host.is_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!host.is_alive());
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(&script);
    }
}
