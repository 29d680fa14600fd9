//! A blocking client of the host protocol for tests, and process helpers.
#![allow(dead_code)]

use mcp_bridge_core::launcher::{Host, LaunchConfig};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const HOST_BIN: &str = env!("CARGO_BIN_EXE_mcp-bridge-host");

/// A host started for one test, stopped when dropped.
pub struct TestHost {
    pub host: Option<Host>,
    pub dir: PathBuf,
}

impl TestHost {
    pub fn start(name: &str) -> TestHost {
        let dir = std::env::temp_dir().join(format!("mcp-host-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config =
            LaunchConfig { program: PathBuf::from(HOST_BIN), runtime_dir: dir.clone(), log_level: "info".into() };
        let host = Host::launch(&config).expect("launch host");
        TestHost { host: Some(host), dir }
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
        let mut payload = id.as_bytes().to_vec();
        payload.extend_from_slice(message);
        write_frame(&mut self.conn, b'D', &payload);
        let (kind, reply) = read_frame(&mut self.conn).expect("ack");
        assert_eq!(kind, b'A');
        (reply[0], String::from_utf8_lossy(&reply[1..]).into_owned())
    }
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
pub fn spawn_on(mut conn: UnixStream, spec: &str) -> Result<Session, String> {
    write_frame(&mut conn, b'S', spec.as_bytes());
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

/// JSON for a spawn request of `sh -c script`.
pub fn sh(script: &str, extra: &str) -> String {
    let mut spec = serde_json::json!({"command": "sh", "args": ["-c", script]});
    if !extra.is_empty() {
        let more: serde_json::Value = serde_json::from_str(extra).expect("extra json");
        for (k, v) in more.as_object().expect("object") {
            spec[k] = v.clone();
        }
    }
    spec.to_string()
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
