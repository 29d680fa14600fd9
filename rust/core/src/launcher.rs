//! Starting, watching and stopping the host process of an nginx worker.
//!
//! The worker creates the host's directory and listening socket itself (see
//! [`crate::runtime`]), so the socket can be connected to the moment
//! [`Host::launch`] returns, and passes the socket to the host as
//! descriptor 3. Descriptor 0 of the host is one end of a socket pair whose
//! other end the worker keeps: the host never writes to it, so the worker
//! sees the host die as that end becoming readable (EOF), and the host sees
//! the worker go away (or [`Host::stop`]) as EOF on its end.
//! [`Host::end_sessions`] writes one [`END_SESSIONS`] byte on it instead.

use crate::procfs::PidFd;
use crate::procs;
use crate::runtime::{self, Layout};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use crate::runtime::{is_token, TOKEN_LEN};

/// File name of the host program, looked up beside the native module.
pub const HOST_PROGRAM: &str = "mcp-bridge-host";

/// Control-channel byte asking the host to end every session and accept no
/// new ones, while staying alive until its worker exits.
pub const END_SESSIONS: u8 = b'E';

/// Descriptor number at which the host finds its listening socket.
pub const LISTENER_FD: libc::c_int = 3;

/// How to start a host.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    pub program: PathBuf,
    pub layout: Layout,
    pub log_level: String,
}

/// A running host, owned by the worker that started it.
pub struct Host {
    pid: libc::pid_t,
    /// Readable once the host has exited, whoever still holds a copy of its
    /// end of the control channel (a backend forked at that moment does,
    /// until it execs).
    pidfd: Option<PidFd>,
    token: String,
    socket_path: PathBuf,
    control: OwnedFd,
}

impl Host {
    /// Starts a host. Must be called from the thread that will live as long
    /// as the worker (its main thread): the host's parent-death signal fires
    /// when the forking thread exits.
    pub fn launch(config: &LaunchConfig) -> io::Result<Host> {
        check_program(&config.program)?;
        let layout = &config.layout;
        let (token, staging) = layout.create_host_dir()?;
        let prepared = listen_at(&staging.join(runtime::SOCKET_NAME)).and_then(|listener| {
            // Which nginx this host serves: other workers of it find their
            // siblings' hosts by this, and leave other instances' alone.
            let master = crate::procfs::identity(std::os::unix::process::parent_id() as i32).unwrap_or_default();
            fs::write(staging.join(runtime::NGINX_NAME), master)
                .map_err(|e| context(e, "cannot write the host's nginx file"))?;
            let dir = layout.publish(&staging, &token)?;
            Ok((listener, dir))
        });
        let (listener, dir) = prepared.inspect_err(|_| {
            let _ = fs::remove_dir_all(&staging);
        })?;
        let socket_path = dir.join(runtime::SOCKET_NAME);
        let home = layout.shared_home().unwrap_or_else(|| dir.join("home"));
        let (ours, theirs) = socket::socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| context(io::Error::from(e), "socketpair for the host's control channel"))?;

        let worker = std::process::id() as libc::pid_t;
        let listener_fd = listener.as_raw_fd();
        let mut command = Command::new(&config.program);
        command
            .arg("--token")
            .arg(&token)
            .arg("--dir")
            .arg(&dir)
            .arg("--home")
            .arg(&home)
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
                // A group of its own: a Ctrl-C meant for nginx's group (a
                // terminal's) must not stop the host before its worker, or
                // the worker reaps it and nginx logs an "unknown process".
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // SIGTERM, not SIGKILL: the host must get to kill its backends.
                procs::die_with_parent(libc::SIGTERM, worker)
            });
        }
        let (child, pidfd) = {
            let _held = procs::SigchldBlocked::new()?;
            // Opened while SIGCHLD is held: nginx cannot have reaped it yet.
            command.spawn().map(|c| {
                let pidfd = PidFd::open(c.id() as i32).ok();
                (c, pidfd)
            })
        }
        .map_err(|e| {
            let _ = fs::remove_dir_all(&dir);
            context(e, &format!("cannot start {}", config.program.display()))
        })?;
        // The host has its own copy of the listener; the worker must not keep
        // one, or connections could queue on a socket nobody accepts from.
        drop(listener);
        Ok(Host { pid: child.id() as libc::pid_t, pidfd, token, socket_path, control: ours })
    }

    /// Whether the host is still running. Never blocks.
    pub fn is_alive(&self) -> bool {
        if self.pidfd.as_ref().is_some_and(PidFd::exited) {
            return false;
        }
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

/// Binds and listens at `path`, mode 0600 whatever the umask.
fn listen_at(path: &Path) -> io::Result<OwnedFd> {
    let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| context(io::Error::from(e), "socket for the host"))?;
    let addr =
        UnixAddr::new(path).map_err(|e| context(io::Error::from(e), &format!("socket path {}", path.display())))?;
    socket::bind(fd.as_raw_fd(), &addr)
        .map_err(|e| context(io::Error::from(e), &format!("bind {}", path.display())))?;
    runtime::set_mode(path, 0o600)?;
    socket::listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| context(io::Error::from(e), &format!("listen on {}", path.display())))?;
    Ok(fd)
}

fn context(err: io::Error, what: &str) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(name: &str) -> Layout {
        let dir = std::env::temp_dir().join(format!("mcp-bridge-core-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Layout::new(Some(dir))
    }

    fn script(layout: &Layout, text: &str) -> PathBuf {
        let script = layout.base().with_extension("sh");
        fs::write(&script, text).expect("write script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        script
    }

    #[test]
    fn launching_a_missing_program_names_it_and_leaves_nothing() {
        let layout = layout("missing");
        let config = LaunchConfig {
            program: PathBuf::from("/nonexistent/mcp-bridge-host"),
            layout: layout.clone(),
            log_level: "info".into(),
        };
        let err = Host::launch(&config).err().expect("launch must fail");
        assert!(err.to_string().contains("/nonexistent/mcp-bridge-host"), "{err}");
        assert!(layout.host_tokens().is_empty() && layout.staging_dirs().is_empty());
        let _ = fs::remove_dir_all(layout.base());
    }

    #[test]
    fn a_launched_host_is_alive_until_it_exits() {
        // /bin/sh stands in for the host: it reads fd 0 until EOF, then exits,
        // and reports whether it inherited the listener as fd 3 and runs in a
        // process group of its own.
        let layout = layout("launch");
        let script = script(
            &layout,
            "#!/bin/sh\ntest -S /proc/self/fd/3 || test -e /proc/self/fd/3 || exit 3\n\
             test \"$(cut -d' ' -f5 /proc/$$/stat)\" = \"$$\" || exit 4\ncat >/dev/null\n",
        );
        let config = LaunchConfig { program: script.clone(), layout: layout.clone(), log_level: "info".into() };
        let host = Host::launch(&config).expect("launch");
        assert!(host.socket_path().exists(), "socket in place when launch returns");
        assert!(is_token(host.token()));
        assert_eq!(layout.trusted_socket(host.token()).as_deref(), Some(host.socket_path()));
        let mode = fs::metadata(host.socket_path()).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the socket's mode does not depend on the umask");
        assert!(host.is_alive());
        let pid = host.pid();
        host.stop();
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status}");
        let _ = fs::remove_dir_all(layout.base());
        let _ = fs::remove_file(&script);
    }

    #[test]
    fn a_host_that_dies_is_seen_dead() {
        let layout = layout("dies");
        let script = script(&layout, "#!/bin/sh\nexit 0\n");
        let config = LaunchConfig { program: script.clone(), layout: layout.clone(), log_level: "info".into() };
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
        let _ = fs::remove_dir_all(layout.base());
        let _ = fs::remove_file(&script);
    }
}
