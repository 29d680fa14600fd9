//! `mcp-bridge-host`: started by the native module of an nginx worker, never
//! by hand. Descriptor 0 is the control channel to the worker, descriptor 3
//! the listening socket the worker created.

use mcp_bridge_core::launcher::{self, LISTENER_FD};
use mcp_bridge_core::{procfs, procs};
use mcp_bridge_host::backend::Defaults;
use mcp_bridge_host::escapees::Sweeper;
use mcp_bridge_host::log::Level;
use mcp_bridge_host::reaper::Reaper;
use mcp_bridge_host::session::Host;
use mcp_bridge_host::{log, server};
use std::os::fd::FromRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    token: String,
    runtime_dir: PathBuf,
    parent: i32,
    level: Level,
}

fn parse_args() -> Result<Args, String> {
    let mut token = None;
    let mut runtime_dir = None;
    let mut parent = None;
    let mut level = Level::Notice;
    let mut args = std::env::args_os().skip(1);
    while let Some(flag) = args.next() {
        let flag = flag.to_string_lossy().into_owned();
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let text = value.to_string_lossy().into_owned();
        match flag.as_str() {
            "--token" if launcher::is_token(&text) => token = Some(text),
            "--runtime-dir" => runtime_dir = Some(PathBuf::from(value)),
            "--parent" => parent = Some(text.parse::<i32>().map_err(|e| format!("--parent {text}: {e}"))?),
            "--log-level" => level = Level::parse(&text).ok_or_else(|| format!("unknown log level {text}"))?,
            _ => return Err(format!("unexpected argument {flag} {text}")),
        }
    }
    Ok(Args {
        token: token.ok_or("--token is required")?,
        runtime_dir: runtime_dir.ok_or("--runtime-dir is required")?,
        parent: parent.ok_or("--parent is required")?,
        level,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mcp-bridge-host: {e}\nmcp-bridge-host is started by the mcp-bridge native module, not by hand");
            return ExitCode::from(2);
        }
    };
    log::set_level(args.level);
    // The launcher starts us with termination signals blocked (the mask
    // survives exec); keep them so until the runtime's handlers exist, so a
    // SIGTERM cannot kill us before we clean up. Started some other way,
    // block them here.
    if let Err(e) = procs::hold_signals(&procs::TERMINATION_SIGNALS, true) {
        log!(Warn, "cannot block termination signals: {e}");
    }
    // SAFETY: prctl and getppid with valid arguments; fcntl on our own fds.
    unsafe {
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            log!(Warn, "cannot become a child subreaper: {}", std::io::Error::last_os_error());
        }
        if libc::getppid() != args.parent {
            // The worker died before we started: nothing to serve.
            let _ = std::fs::remove_file(launcher::socket_path(&args.runtime_dir, &args.token));
            return ExitCode::SUCCESS;
        }
        // Backends must inherit neither the control channel nor the listener.
        libc::fcntl(0, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(LISTENER_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!(Alert, "{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let socket_path = launcher::socket_path(&args.runtime_dir, &args.token);
    let home = args.runtime_dir.join("home");
    match std::fs::DirBuilder::new().mode(0o700).create(&home) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => log!(Warn, "cannot create {}: {e}", home.display()),
    }
    // Each session holds about four descriptors here.
    let descriptor_limit = match procs::raise_descriptor_limit() {
        Ok((soft, _)) => Some(soft),
        Err(e) => {
            log!(Warn, "cannot raise the descriptor limit: {e}");
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        // SAFETY: descriptors 0 and 3 were set up for us by the launcher and
        // nothing else in this process owns them.
        let (listener, control) = unsafe {
            (std::os::unix::net::UnixListener::from_raw_fd(LISTENER_FD), std::os::unix::net::UnixStream::from_raw_fd(0))
        };
        let prepare = |l: &std::os::unix::net::UnixListener, c: &std::os::unix::net::UnixStream| {
            l.set_nonblocking(true)?;
            c.set_nonblocking(true)
        };
        prepare(&listener, &control).map_err(|e| format!("descriptors from the worker: {e}"))?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| format!("listener: {e}"))?;
        let control = tokio::net::UnixStream::from_std(control).map_err(|e| format!("control channel: {e}"))?;
        server::sweep_stale_sockets(&args.runtime_dir, &socket_path);
        let identity = procfs::identity(std::process::id() as i32).ok_or("cannot read /proc/self/stat")?;
        let host = Host::new(args.token, Defaults { home, descriptor_limit }, Reaper::new(), Sweeper::new(identity));
        log!(Info, "started for worker {} on {}", args.parent, socket_path.display());
        server::serve(host, listener, control, socket_path).await.map_err(|e| format!("serve: {e}"))
    })
}
