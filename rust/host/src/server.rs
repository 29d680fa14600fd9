//! Accepting the worker's connections and running the host until its worker
//! goes away.

use crate::frame::{self, Kind};
use crate::log;
use crate::session::{self, Host};
use mcp_bridge_core::{launcher, procs};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::spawn_local;

/// Upper bound on how long a shutting-down host waits for its sessions'
/// teardown (each already bounded by its grace period and the SIGKILL wait).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// Runs until the worker closes the control channel or a termination
/// signal arrives, then ends every session and returns.
pub async fn serve(
    host: Rc<Host>,
    listener: UnixListener,
    mut control: UnixStream,
    socket_path: PathBuf,
) -> io::Result<()> {
    spawn_local(Rc::clone(&host.reaper).run());
    let live = Rc::clone(&host);
    spawn_local(Rc::clone(&host.sweeper).run(move || live.live_groups()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    procs::hold_signals(&procs::TERMINATION_SIGNALS, false)?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };

    let why = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    match stream.peer_cred() {
                        Ok(cred) if cred.uid() == uid => {
                            spawn_local(serve_connection(Rc::clone(&host), stream));
                        }
                        Ok(cred) => log!(Warn, "refused a connection from uid {} (only uid {uid} may connect)", cred.uid()),
                        Err(e) => log!(Warn, "refused a connection whose peer is unknown: {e}"),
                    }
                }
                Err(e) => {
                    // Out of descriptors or memory: give sessions a moment to end.
                    log!(Error, "accept on {}: {e}", socket_path.display());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            event = control_event(&mut control) => break Stop::Control(event),
            _ = term.recv() => break Stop::Signal("SIGTERM"),
            _ = int.recv() => break Stop::Signal("SIGINT"),
            _ = quit.recv() => break Stop::Signal("SIGQUIT"),
            _ = hup.recv() => break Stop::Signal("SIGHUP"),
        }
    };
    // New connections fail at once from here; sessions end below.
    let _ = std::fs::remove_file(&socket_path);
    drop(listener);
    let live = host.live_sessions();
    let reason = match why {
        Stop::Control(Control::EndSessions) => "the worker is shutting down",
        Stop::Control(Control::Closed) => "the worker closed the control channel",
        Stop::Signal(name) => name,
    };
    log!(Info, "shutting down ({reason}), ending {live} session(s)");
    host.begin_shutdown();
    if tokio::time::timeout(SHUTDOWN_LIMIT, host.all_ended()).await.is_err() {
        log!(
            Error,
            "{} session(s) still ending after {} s; exiting anyway",
            host.live_sessions(),
            SHUTDOWN_LIMIT.as_secs()
        );
    }
    if matches!(why, Stop::Control(Control::EndSessions)) {
        // Stay until the worker exits (see Host::end_sessions), or until a
        // signal says otherwise.
        tokio::select! {
            _ = async { while !matches!(control_event(&mut control).await, Control::Closed) {} } => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = quit.recv() => {}
            _ = hup.recv() => {}
        }
    }
    Ok(())
}

/// What the worker said on the control channel.
enum Control {
    /// End every session; stay until the worker exits.
    EndSessions,
    /// The worker is gone (or stopped the host).
    Closed,
}

enum Stop {
    Control(Control),
    Signal(&'static str),
}

async fn control_event(control: &mut UnixStream) -> Control {
    let mut buf = [0u8; 64];
    loop {
        match control.read(&mut buf).await {
            Ok(0) | Err(_) => return Control::Closed,
            Ok(n) if buf[..n].contains(&launcher::END_SESSIONS) => return Control::EndSessions,
            Ok(_) => continue,
        }
    }
}

async fn serve_connection(host: Rc<Host>, mut stream: UnixStream) {
    let first = match frame::read(&mut stream).await {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => {
            log!(Warn, "bad first frame from the worker: {e}");
            return;
        }
    };
    match first.0 {
        Kind::Spawn => session::run(host, stream, first.1).await,
        Kind::Deliver | Kind::Query => serve_requests(host, stream, first).await,
        other => log!(Warn, "unexpected {other:?} frame opening a connection"),
    }
}

/// Answers Deliver and Query frames on one connection, in order, until the
/// worker closes it. The host never closes such a connection itself while
/// running: the worker pools them, and only the side that reuses a pooled
/// connection may close it without racing a write.
async fn serve_requests(host: Rc<Host>, mut stream: UnixStream, first: (Kind, Vec<u8>)) {
    let mut next = Some(first);
    while let Some((kind, payload)) = next {
        let reply = match kind {
            Kind::Deliver => {
                let (status, reason) = host.deliver(payload);
                let mut body = Vec::with_capacity(1 + reason.len());
                body.push(status.byte());
                body.extend_from_slice(reason.as_bytes());
                frame::encode(Kind::Ack, &body)
            }
            Kind::Query => frame::encode(Kind::Stats, host.stats().to_string().as_bytes()),
            other => {
                log!(Warn, "unexpected {other:?} frame on a request connection");
                return;
            }
        };
        let Ok(reply) = reply else { return };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
        next = match frame::read(&mut stream).await {
            Ok(f) => f,
            Err(e) => {
                log!(Info, "request connection: {e}");
                None
            }
        };
    }
}

/// Removes sockets of hosts that are gone (killed before they could clean
/// up): nothing accepts on them any more. Names starting with a dot are
/// sockets being set up and are left alone.
pub fn sweep_stale_sockets(dir: &Path, own: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path == own || name.starts_with('.') || !name.ends_with(".sock") {
            continue;
        }
        if refuses_connections(&path) {
            match std::fs::remove_file(&path) {
                Ok(()) => log!(Info, "removed stale socket {}", path.display()),
                Err(e) => log!(Info, "cannot remove stale socket {}: {e}", path.display()),
            }
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
