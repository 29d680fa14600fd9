//! A blocking client of the host protocol for tests, and process helpers.
#![allow(dead_code)]

use mcp_bridge_core::launcher::{Host, LaunchConfig};
use mcp_bridge_core::runtime::Layout;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const HOST_BIN: &str = env!("CARGO_BIN_EXE_mcp-bridge-host");

/// A host started for one test, stopped when dropped. Its runtime
/// directory (`dir`) is the test's own.
pub struct TestHost {
    pub host: Option<Host>,
    pub dir: PathBuf,
}

impl TestHost {
    pub fn start(name: &str) -> TestHost {
        TestHost::start_after(name, |_| {})
    }

    /// Starts a host once `prepare` has set up its runtime directory.
    pub fn start_after(name: &str, prepare: impl FnOnce(&Layout)) -> TestHost {
        let dir = std::env::temp_dir().join(format!("mcp-host-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let layout = Layout::new(Some(dir.clone()));
        prepare(&layout);
        let config = LaunchConfig { program: PathBuf::from(HOST_BIN), layout, log_level: "info".into() };
        let host = Host::launch(&config).expect("launch host");
        TestHost { host: Some(host), dir }
    }

    /// The host's own directory (its socket's).
    pub fn host_dir(&self) -> PathBuf {
        self.host().socket_path().parent().expect("host dir").to_path_buf()
    }

    pub fn host(&self) -> &Host {
        self.host.as_ref().expect("host running")
    }

    pub fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(self.host().socket_path()).expect("connect to host");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s
    }

    /// Starts a session; returns its connection and the Ready payload, or
    /// the Failed reason.
    pub fn spawn(&self, spec: &str) -> Result<Session, String> {
        spawn_on(self.connect(), spec)
    }

    pub fn stats(&self) -> serde_json::Value {
        let mut conn = self.connect();
        write_frame(&mut conn, b'Q', b"");
        let (kind, payload) = read_frame(&mut conn).expect("stats");
        assert_eq!(kind, b'T');
        serde_json::from_slice(&payload).expect("stats json")
    }

    /// Asks the host to end every session while staying up.
    pub fn end_sessions(&mut self) -> i32 {
        let host = self.host.take().expect("host running");
        let pid = host.pid();
        host.end_sessions();
        pid
    }

    /// Stops the host and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(host) = self.host.take() {
            let pid = host.pid();
            host.stop();
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Session {
    pub conn: UnixStream,
    pub id: String,
    pub pid: i32,
}

impl Session {
    pub fn frame(&mut self) -> Option<(u8, String)> {
        read_frame(&mut self.conn).map(|(k, p)| (k, String::from_utf8_lossy(&p).into_owned()))
    }

    /// The next Message frame's payload, skipping nothing.
    pub fn message(&mut self) -> String {
        match self.frame() {
            Some((b'M', m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

pub struct Delivery {
    pub conn: UnixStream,
}

impl Delivery {
    pub fn new(host: &TestHost) -> Delivery {
        Delivery { conn: host.connect() }
    }

    pub fn send(&mut self, id: &str, message: &[u8]) -> (u8, String) {
        self.send_as(id, TEST_ROUTE, "", message)
    }

    /// Delivers as a request of `route` and `consumer`.
    pub fn send_as(&mut self, id: &str, route: &str, consumer: &str, message: &[u8]) -> (u8, String) {
        let mut payload = id.as_bytes().to_vec();
        payload.extend_from_slice(&binding(route, consumer));
        payload.extend_from_slice(message);
        write_frame(&mut self.conn, b'D', &payload);
        let (kind, reply) = read_frame(&mut self.conn).expect("ack");
        assert_eq!(kind, b'A');
        (reply[0], String::from_utf8_lossy(&reply[1..]).into_owned())
    }
}

/// The route every test session belongs to unless a test says otherwise.
pub const TEST_ROUTE: &str = "test";

/// The wire form of a binding (route and consumer; see the host's binding.rs).
pub fn binding(route: &str, consumer: &str) -> Vec<u8> {
    let text = format!("{route}\n{consumer}");
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

pub fn write_frame(conn: &mut UnixStream, kind: u8, payload: &[u8]) {
    let mut buf = vec![kind];
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    conn.write_all(&buf).expect("write frame");
}

pub fn read_frame(conn: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    conn.read_exact(&mut header).ok()?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).ok()?;
    Some((header[0], payload))
}

/// Sends a Spawn frame on `conn`: the session, or the Failed reason, or
/// "unavailable: <reason>".
pub fn spawn_on(conn: UnixStream, spec: &str) -> Result<Session, String> {
    spawn_as(conn, TEST_ROUTE, "", spec)
}

/// Like [`spawn_on`], for a session of `route` and `consumer`.
pub fn spawn_as(mut conn: UnixStream, route: &str, consumer: &str, spec: &str) -> Result<Session, String> {
    let mut payload = binding(route, consumer);
    payload.extend_from_slice(spec.as_bytes());
    write_frame(&mut conn, b'S', &payload);
    let (kind, payload) = read_frame(&mut conn).expect("reply to spawn");
    let text = String::from_utf8(payload).expect("utf8");
    match kind {
        b'R' => {
            let (id, pid) = text.split_once(' ').expect("id and pid");
            Ok(Session { conn, id: id.to_string(), pid: pid.parse().expect("pid") })
        }
        b'F' => Err(text),
        b'U' => Err(format!("unavailable: {text}")),
        k => panic!("unexpected frame {}", k as char),
    }
}

/// A whole spawn request for `command` with `args`, the tests' defaults
/// overridden by the fields of `extra` (a JSON object, or empty; its
/// `limits` sets those it names).
pub fn spec(command: &str, args: &[&str], extra: &str) -> String {
    let mut spec = serde_json::json!({
        "command": command, "args": args, "env": {}, "kill_grace_ms": 2000,
        "max_message_bytes": 4 << 20, "stderr": "notify", "keepalive_interval_ms": 15000,
        "session_home": false, "session_idle_timeout_ms": 1800000, "session_max_lifetime_ms": 86400000,
        "restart_on_crash": false, "max_restarts": 3, "restart_window_ms": 60000,
        "pool_min_idle": 0, "pool_max_per_key": 4, "pool_max_per_worker": 16, "pool_idle_timeout_ms": 300000,
        "pool_max_requests": 1000, "pool_max_age_ms": 3600000, "pool_wait_ms": 5000,
        "input_wait_ms": 60000, "max_parked_per_consumer": 16, "max_parked_per_worker": 256,
        "limits": {"memory_mb": null, "processes": null, "cpu_seconds": null, "open_files": null},
    });
    if !extra.is_empty() {
        let more: serde_json::Value = serde_json::from_str(extra).expect("extra json");
        for (k, v) in more.as_object().expect("object") {
            match (k.as_str(), v.as_object()) {
                // Limits the test does not name stay null (unset).
                ("limits", Some(limits)) => {
                    for (name, value) in limits {
                        spec["limits"][name] = value.clone();
                    }
                }
                _ => spec[k] = v.clone(),
            }
        }
    }
    spec.to_string()
}

/// A spawn request of `sh -c script` (see [`spec`]).
pub fn sh(script: &str, extra: &str) -> String {
    spec("sh", &["-c", script], extra)
}

/// Whether `pid` exists at all (a zombie counts: it is a leak too).
pub fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Process group of `pid`, if it runs.
pub fn pgid(pid: i32) -> Option<i32> {
    mcp_bridge_core::procfs::stat(pid).map(|s| s.pgrp)
}

/// Waits for a child of the test to exit, without blocking past `limit`.
pub fn wait_child(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// Kills whatever is left of a test's processes so a failing test leaks
/// nothing into the next one.
pub struct KillOnDrop(pub Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill with a positive pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Path of a helper program of these tests (`rust/host/examples`), which
/// cargo builds beside the test binaries.
pub fn helper(name: &str) -> PathBuf {
    // Tests run from target/<profile>/deps/<test binary>.
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe.parent().and_then(|d| d.parent()).expect("target dir").join("examples").join(name);
    assert!(path.exists(), "{} is missing: cargo test builds it with the tests", path.display());
    path
}

/// Whether the test may go on with what needs root. Without root it fails,
/// unless MCP_BRIDGE_TESTS_UNPRIVILEGED is set to skip such parts knowingly.
pub fn require_root(what: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("MCP_BRIDGE_TESTS_UNPRIVILEGED").is_some() {
        eprintln!("skipped ({what} needs root; MCP_BRIDGE_TESTS_UNPRIVILEGED is set)");
        return false;
    }
    panic!("{what} needs root: run the tests as root, or set MCP_BRIDGE_TESTS_UNPRIVILEGED=1 to skip this part");
}

/// Pids of the children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&p| mcp_bridge_core::procfs::stat(p).is_some_and(|s| s.ppid == pid))
        .collect()
}
