//! `mcp-bridge-host`: started by the native module of an nginx worker, never
//! by hand. Descriptor 0 is the control channel to the worker, descriptor 3
//! the listening socket the worker created.

use mcp_bridge_core::launcher::{self, LISTENER_FD};
use mcp_bridge_core::{levels, procfs, procs};
use mcp_bridge_host::backend::Defaults;
use mcp_bridge_host::escapees::Sweeper;
use mcp_bridge_host::host::{Host, Worker};
use mcp_bridge_host::log::Level;
use mcp_bridge_host::reaper::Reaper;
use mcp_bridge_host::server::{self, Peers};
use mcp_bridge_host::{log, rundir};
use std::os::fd::FromRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    token: String,
    dir: PathBuf,
    home: PathBuf,
    parent: i32,
    level: Level,
}

fn parse_args() -> Result<Args, String> {
    let mut token = None;
    let mut dir = None;
    let mut home = None;
    let mut parent = None;
    let mut level = Level::Notice;
    let mut args = std::env::args_os().skip(1);
    while let Some(flag) = args.next() {
        let flag = flag.to_string_lossy().into_owned();
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let text = value.to_string_lossy().into_owned();
        match flag.as_str() {
            "--token" if launcher::is_token(&text) => token = Some(text),
            "--dir" => dir = Some(PathBuf::from(value)),
            "--home" => home = Some(PathBuf::from(value)),
            "--parent" => parent = Some(text.parse::<i32>().map_err(|e| format!("--parent {text}: {e}"))?),
            "--log-level" => level = Level::parse(&text).ok_or_else(|| levels::unknown(&text))?,
            _ => return Err(format!("unexpected argument {flag} {text}")),
        }
    }
    Ok(Args {
        token: token.ok_or("--token is required")?,
        dir: dir.ok_or("--dir is required")?,
        home: home.ok_or("--home is required")?,
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
            rundir::retire_then_remove(&args.dir);
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
    let socket_path = args.dir.join(mcp_bridge_core::runtime::SOCKET_NAME);
    match std::fs::DirBuilder::new().mode(0o700).create(&args.home) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => log!(Warn, "cannot create {}: {e}", args.home.display()),
    }
    // Each session holds about four descriptors here.
    let descriptor_limit = match procs::raise_descriptor_limit() {
        Ok((soft, _)) => Some(soft),
        Err(e) => {
            log!(Warn, "cannot raise the descriptor limit: {e}");
            None
        }
    };
    let worker = Worker::new(args.parent);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    let dir = args.dir.clone();
    let swept = rundir::sweep_stale(&args.dir, &args.token);
    let removing = swept.clone();
    let served = local.block_on(&runtime, async move {
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
        tokio::task::spawn_local(rundir::remove_retired(removing));
        let identity = procfs::identity(std::process::id() as i32).ok_or("cannot read /proc/self/stat")?;
        let namespace = procfs::pid_namespace(std::process::id() as i32).ok_or("cannot read /proc/self/ns/pid")?;
        let defaults = Defaults { home: args.home, dir: args.dir.clone(), descriptor_limit };
        let host = Host::new(args.token, worker, defaults, Reaper::new(), Sweeper::new(namespace, identity));
        log!(Info, "started for worker {} on {}", args.parent, socket_path.display());
        server::serve(host, listener, control, socket_path, Peers::of(worker)).await.map_err(|e| format!("serve: {e}"))
    });
    // The socket was retired already (see rundir); once its grace is over,
    // what else the directory holds (private session homes) goes with it.
    // So do the directories swept at the start, if their grace outlasted us.
    for retired in swept.iter().chain([&dir]) {
        rundir::retire_then_remove(retired);
    }
    served
}
