//! Accepting the worker's connections and running the host until its worker
//! goes away.

use crate::frame::{self, AckStatus, Kind};
use crate::host::{Host, Worker};
use crate::log;
use crate::{endpoint, sse};
use mcp_bridge_core::{launcher, procfs, procs};
use std::borrow::Cow;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::spawn_local;

/// Upper bound on how long a shutting-down host waits for its sessions'
/// teardown (each already bounded by its grace period and the SIGKILL wait).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// Who may talk to the host: its worker and the other workers of the same
/// nginx (their POSTs reach the session's host wherever they land), all
/// running as the host's user. Backends run as that user too, but their
/// parent is the host, so they cannot ask for a process of their own.
pub struct Peers {
    uid: u32,
    worker: Worker,
    /// The master's identity (`procfs::identity`), to tell when it died.
    master_identity: Option<String>,
}

impl Peers {
    pub fn of(worker: Worker) -> Peers {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        Peers { uid, worker, master_identity: worker.master.and_then(procfs::identity) }
    }

    /// Whether refusing `pid` is worth a warning: it is not a sibling host
    /// (the worker's sibling's child), which connects only to see whether
    /// this host lives (see `rundir`).
    pub fn worth_a_warning(&self, pid: Option<i32>) -> bool {
        let grandparent = pid.and_then(procfs::stat).and_then(|s| procfs::stat(s.ppid)).map(|s| s.ppid);
        grandparent.is_none() || grandparent != self.worker.master
    }

    /// Why a peer with these credentials is refused, if it is.
    pub fn refusal(&self, uid: u32, pid: Option<i32>) -> Option<String> {
        if uid != self.uid {
            return Some(format!("uid {uid} (only uid {} may connect)", self.uid));
        }
        let Some(pid) = pid else { return Some("a peer whose process is unknown".into()) };
        if pid == self.worker.pid {
            return None;
        }
        let parent = procfs::stat(pid).map(|s| s.ppid);
        if parent.is_some() && parent == self.worker.master {
            return None;
        }
        // A master killed outright leaves its workers running, orphaned
        // together: a sibling then shares the worker's new parent and runs
        // the same program.
        let orphaned = self.master_identity.as_deref().is_some_and(|m| !procfs::identity_alive(m));
        if orphaned && parent.is_some() && parent == procfs::stat(self.worker.pid).map(|s| s.ppid) {
            let program = |p: i32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
            if program(pid).is_some() && program(pid) == program(self.worker.pid) {
                return None;
            }
        }
        Some(format!("process {pid}, which is not a worker of this nginx"))
    }
}

/// Runs until the worker closes the control channel or a termination
/// signal arrives, then ends every session and returns.
pub async fn serve(
    host: Rc<Host>,
    listener: UnixListener,
    mut control: UnixStream,
    socket_path: PathBuf,
    peers: Peers,
) -> io::Result<()> {
    spawn_local(Rc::clone(&host.reaper).run());
    let live = Rc::clone(&host);
    spawn_local(Rc::clone(&host.sweeper).run(move || live.live_groups()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    procs::hold_signals(&procs::TERMINATION_SIGNALS, false)?;

    let why = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    match stream.peer_cred().map(|c| (peers.refusal(c.uid(), c.pid()), c.pid())) {
                        Ok((None, _)) => {
                            spawn_local(serve_connection(Rc::clone(&host), stream));
                        }
                        Ok((Some(who), pid)) if peers.worth_a_warning(pid) => log!(Warn, "refused a connection from {who}"),
                        Ok((Some(who), _)) => log!(Debug, "refused a connection from {who} (a sibling host)"),
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
    if let Some(dir) = socket_path.parent() {
        crate::rundir::retire(dir);
    }
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
    // Every session's end was told: the watching worker may go.
    host.events.close_all();
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

/// Frames from a worker are read through this much buffer: a frame and its
/// header then take one read.
const READ_BUFFER: usize = 8 << 10;

/// The Ack of a delivered message, the answer to almost every Deliver.
const ACCEPTED: [u8; 6] = [b'A', 0, 0, 0, 1, b'0'];

/// A worker's connection, read through a buffer.
type Connection = BufReader<UnixStream>;

async fn serve_connection(host: Rc<Host>, stream: UnixStream) {
    let mut conn = BufReader::with_capacity(READ_BUFFER, stream);
    let first = match frame::read(&mut conn).await {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => {
            log!(Warn, "bad first frame from the worker: {e}");
            return;
        }
    };
    match first.0 {
        Kind::Spawn | Kind::Watch => {
            let Some(stream) = unbuffered(conn) else { return };
            if first.0 == Kind::Spawn {
                sse::run(host, stream, first.1).await
            } else {
                let events = Rc::clone(&host.events);
                let (_reader, writer) = stream.into_split();
                events.watch(writer).await
            }
        }
        Kind::Deliver | Kind::Query | Kind::End | Kind::Request | Kind::Notify => {
            serve_requests(host, conn, first).await
        }
        other => log!(Warn, "unexpected {other:?} frame opening a connection"),
    }
}

/// The connection without its buffer, for a use that reads it directly.
/// The worker sends nothing more until it is answered, so the buffer is
/// empty; if not, the worker broke the protocol and the connection ends.
fn unbuffered(conn: Connection) -> Option<UnixStream> {
    if !conn.buffer().is_empty() {
        log!(Warn, "the worker sent more after a frame that needs an answer first; closing the connection");
        return None;
    }
    Some(conn.into_inner())
}

/// Answers Deliver and Query frames on one connection, in order, until the
/// worker closes it. The host never closes such a connection itself while
/// running: the worker pools them, and only the side that reuses a pooled
/// connection may close it without racing a write.
async fn serve_requests(host: Rc<Host>, mut conn: Connection, first: (Kind, Vec<u8>)) {
    let mut next = Some(first);
    while let Some((kind, payload)) = next {
        let reply = match kind {
            Kind::Deliver => match sse::deliver(&host, payload) {
                (AckStatus::Accepted, _) => Ok(Cow::Borrowed(&ACCEPTED[..])),
                (status, reason) => {
                    let mut body = Vec::with_capacity(1 + reason.len());
                    body.push(status.byte());
                    body.extend_from_slice(reason.as_bytes());
                    frame::encode(Kind::Ack, &body).map(Cow::Owned)
                }
            },
            Kind::Query => frame::encode(Kind::Stats, host.stats().to_string().as_bytes()).map(Cow::Owned),
            Kind::Notify => {
                let status = match crate::binding::Binding::split(&payload) {
                    Ok((key, method)) if host.pools.notify(&key, &String::from_utf8_lossy(method)) => {
                        AckStatus::Accepted
                    }
                    _ => AckStatus::UnknownSession,
                };
                frame::encode(Kind::Ack, &[status.byte()]).map(Cow::Owned)
            }
            Kind::End => {
                let prefix = String::from_utf8_lossy(&payload);
                let status = match host.end_sessions_matching(&prefix) {
                    0 => AckStatus::UnknownSession,
                    _ => AckStatus::Accepted,
                };
                frame::encode(Kind::Ack, &[status.byte()]).map(Cow::Owned)
            }
            // A worker's connection pool handed this connection to a new
            // session (a proxy in front of the pool may ignore pool names):
            // it is the session's connection from now on.
            Kind::Spawn => {
                let Some(stream) = unbuffered(conn) else { return };
                return sse::run(host, stream, payload).await;
            }
            Kind::Request => {
                if !conn.buffer().is_empty() {
                    log!(Warn, "the worker sent more after a request; closing the connection");
                    return;
                }
                if !endpoint::serve(&host, conn.get_mut(), &payload).await {
                    return;
                }
                next = read_next(&mut conn).await;
                continue;
            }
            other => {
                log!(Warn, "unexpected {other:?} frame on a request connection");
                return;
            }
        };
        let Ok(reply) = reply else { return };
        if conn.get_mut().write_all(&reply).await.is_err() {
            return;
        }
        next = read_next(&mut conn).await;
    }
}

async fn read_next(conn: &mut Connection) -> Option<(Kind, Vec<u8>)> {
    match frame::read(conn).await {
        Ok(f) => f,
        Err(e) => {
            log!(Info, "request connection: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prepared_ack_is_an_accepted_ack() {
        assert_eq!(frame::encode(Kind::Ack, &[AckStatus::Accepted.byte()]).expect("encode"), ACCEPTED);
    }

    #[test]
    fn only_workers_of_the_same_nginx_and_user_are_admitted() {
        // This test process stands in for the worker; its parent for nginx's master.
        let me = std::process::id() as i32;
        let peers = Peers::of(Worker::new(me));
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(peers.refusal(uid, Some(me)), None, "the worker itself");
        let refusal = peers.refusal(uid + 1, Some(me)).expect("another user");
        assert!(refusal.contains(&format!("uid {}", uid + 1)), "{refusal}");
        // A child of the worker (as a backend is a grandchild) is no worker.
        let mut child = std::process::Command::new("/bin/sleep").arg("5").spawn().expect("spawn");
        let refusal = peers.refusal(uid, Some(child.id() as i32)).expect("a child");
        assert!(refusal.contains("not a worker"), "{refusal}");
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(peers.refusal(uid, None).is_some(), "unknown peer");
        // A sibling of the worker (same parent) is another worker.
        let parent = procfs::stat(me).expect("stat").ppid;
        let sibling = Peers { uid, worker: Worker { pid: -1, master: Some(parent) }, master_identity: None };
        assert_eq!(sibling.refusal(uid, Some(me)), None);
    }

    #[test]
    fn once_the_master_is_gone_its_orphaned_workers_still_reach_each_other() {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let me = std::process::id() as i32;
        let parent = procfs::stat(me).expect("stat").ppid;
        // Two children of this process stand in for two workers whose
        // master died: the worker is the first, the peer the second, and
        // they run the same program.
        let mut worker = std::process::Command::new("/bin/sleep").arg("5").spawn().expect("spawn");
        let mut peer = std::process::Command::new("/bin/sleep").arg("5").spawn().expect("spawn");
        let mut other =
            std::process::Command::new("/bin/cat").stdin(std::process::Stdio::piped()).spawn().expect("spawn");
        let stand_in = |master_identity: Option<String>| Peers {
            uid,
            worker: Worker { pid: worker.id() as i32, master: Some(parent) },
            master_identity,
        };
        let dead_master = Some(format!("{parent}-1"));
        let live_master = procfs::identity(parent);
        let peer_pid = Some(peer.id() as i32);
        assert!(stand_in(live_master).refusal(uid, peer_pid).is_some(), "while the master lives: no");
        assert_eq!(stand_in(dead_master.clone()).refusal(uid, peer_pid), None, "its orphaned sibling");
        let refusal = stand_in(dead_master).refusal(uid, Some(other.id() as i32));
        assert!(refusal.is_some_and(|r| r.contains("not a worker")), "another program is still refused");
        for child in [&mut worker, &mut peer, &mut other] {
            child.kill().expect("kill");
            child.wait().expect("reap");
        }
    }
}
