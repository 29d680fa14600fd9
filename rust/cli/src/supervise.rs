//! Running nginx in the foreground and taking everything it started down
//! with it.
//!
//! The CLI is a child subreaper: when nginx's workers exit, their hosts (and
//! the hosts' backends, once a host is gone) become its children, so it can
//! wait until every last one has been reaped before it exits.

use mcp_bridge_core::procs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// How long nginx gets to start listening.
const START_LIMIT: Duration = Duration::from_secs(15);

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for &s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// Waits up to `timeout` for one of `set`; `None` on timeout. Gives the
/// signal and the pid of its sender.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<(libc::c_int, libc::pid_t)> {
    let ts =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    loop {
        // SAFETY: valid set, siginfo and timespec; si_pid is what the
        // kernel wrote for this signal.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sig = unsafe { libc::sigtimedwait(set, &mut info, &ts) };
        if sig > 0 {
            return Some((sig, unsafe { info.si_pid() }));
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

fn signal_name(signal: libc::c_int) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        n => format!("signal {n}"),
    }
}

/// Reaps every exited child; returns the status of `watched` if it was one.
fn reap(watched: libc::pid_t) -> (Option<i32>, bool) {
    let mut watched_status = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            return (watched_status, false);
        }
        if pid < 0 {
            // ECHILD: nothing at all is left.
            return (watched_status, true);
        }
        if pid == watched {
            watched_status =
                Some(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) });
        }
    }
}

/// Children of this process (adopted orphans included).
fn children() -> Vec<libc::pid_t> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit(") ").next().map(|r| r.split(' ').nth(1) == Some(me.as_str())))
                .unwrap_or(false)
        })
        .collect()
}

/// Copies nginx's log (its stderr) to ours, except that an error raised by
/// mcp-bridge while nginx loads its configuration (a bad option) is shown
/// as one line, without nginx's wrapping and the Lua traceback.
pub fn relay_log(from: impl Read, mut to: impl Write) {
    const MARK: &str = "mcp-bridge: ";
    let mut in_traceback = false;
    for line in BufReader::new(from).split(b'\n').map_while(Result::ok) {
        let text = String::from_utf8_lossy(&line);
        if in_traceback && (text.starts_with('\t') || text.starts_with("stack traceback:")) {
            continue;
        }
        in_traceback = false;
        let written = match (text.contains("init_by_lua"), text.find(MARK)) {
            (true, Some(at)) => {
                in_traceback = true;
                writeln!(to, "{}", &text[at..])
            }
            _ => to.write_all(&line).and_then(|()| to.write_all(b"\n")),
        };
        if written.is_err() {
            return;
        }
    }
}

/// Whether `path` holds `pid`, whole (nginx writes it in one `write`).
fn pid_file_names(path: &Path, pid: libc::pid_t) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.trim_end().parse() == Ok(pid) && text.ends_with('\n'))
}

/// Runs nginx until it exits or a stop signal arrives, then waits for every
/// descendant. `ready` is called once nginx accepts connections on `probe`
/// and its pid file names it: scripts that wait for the banner read it.
/// Returns nginx's exit status.
pub fn run(
    binary: &Path,
    prefix: &Path,
    probe: SocketAddr,
    drain: Duration,
    ready: impl FnOnce(),
) -> Result<i32, String> {
    // SAFETY: prctl with valid arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!("cannot become a child subreaper: {}", io::Error::last_os_error()));
    }
    let mut all = STOP_SIGNALS.to_vec();
    all.push(libc::SIGCHLD);
    let waited = signal_set(&all);
    procs::hold_signals(&all, true).map_err(|e| format!("cannot block signals: {e}"))?;

    let me = std::process::id() as libc::pid_t;
    let mut command = Command::new(binary);
    command.arg("-p").arg(prefix).arg("-c").arg(prefix.join("conf/nginx.conf"));
    // SAFETY: only async-signal-safe calls in the closure.
    unsafe {
        command.pre_exec(move || {
            procs::reset_signals()?;
            // If we are killed outright, nginx must not stay behind.
            procs::die_with_parent(libc::SIGTERM, me)
        });
    }
    command.stderr(std::process::Stdio::piped());
    let mut master = command.spawn().map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let (relayed, relay_done) = std::sync::mpsc::channel::<()>();
    if let Some(log) = master.stderr.take() {
        std::thread::spawn(move || {
            relay_log(log, io::stderr());
            let _ = relayed.send(());
        });
    }
    let master = master.id() as libc::pid_t;

    let started = Instant::now();
    let mut ready = Some(ready);
    let mut status = None;
    let mut stop_sent = false;
    while status.is_none() {
        // nginx has no readiness notification: until it accepts on the
        // listen address, probe every 20 ms (bounded by START_LIMIT).
        let timeout = if ready.is_some() { Duration::from_millis(20) } else { Duration::from_secs(3600) };
        match wait_signal(&waited, timeout) {
            Some((libc::SIGCHLD, _)) => status = reap(master).0,
            Some((signal, sender)) if !stop_sent => {
                // Say who: a stop nobody at the terminal asked for is a mystery otherwise.
                eprintln!("mcp-bridge: stopping: {} from process {sender}", signal_name(signal));
                // SIGTERM is nginx's fast shutdown: workers exit at once,
                // their hosts see it and end every session.
                // SAFETY: signalling our own child.
                unsafe { libc::kill(master, libc::SIGTERM) };
                stop_sent = true;
            }
            Some(_) => {}
            None => {}
        }
        if let Some(f) = ready.take() {
            // nginx listens before it writes its pid file.
            if pid_file_names(&prefix.join("nginx.pid"), master)
                && TcpStream::connect_timeout(&probe, Duration::from_millis(100)).is_ok()
            {
                f();
            } else if started.elapsed() > START_LIMIT {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(master, libc::SIGTERM) };
                stop_sent = true;
            } else {
                ready = Some(f);
            }
        }
    }

    // nginx is gone; its hosts and backends may still be ending.
    let deadline = Instant::now() + drain;
    loop {
        if reap(master).1 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            for pid in children() {
                // SAFETY: killing our own (adopted) child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
            reap(master);
            break;
        }
        wait_signal(&signal_set(&[libc::SIGCHLD]), left.min(Duration::from_millis(500)));
    }
    // Everything that could write to nginx's log is gone: let the relay
    // finish, unless something that escaped still holds the pipe.
    let _ = relay_done.recv_timeout(Duration::from_secs(1));
    Ok(status.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_option_is_shown_as_one_line_and_other_lines_pass_through() {
        let log = "2026/01/01 [notice] 1#1: nginx/1.22.1\n\
                   2026/01/01 [error] 2#2: init_by_lua_file error: /p/gateway.lua:3: mcp-bridge: invalid configuration: --max-sessions must be at least 1, got 0\n\
                   stack traceback:\n\t[C]: in function 'error'\n\t/p/gateway.lua:3: in main chunk\n\
                   2026/01/01 [notice] 1#1: exit\n";
        let mut out = Vec::new();
        relay_log(log.as_bytes(), &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "2026/01/01 [notice] 1#1: nginx/1.22.1\n\
             mcp-bridge: invalid configuration: --max-sessions must be at least 1, got 0\n\
             2026/01/01 [notice] 1#1: exit\n"
        );
    }
}
