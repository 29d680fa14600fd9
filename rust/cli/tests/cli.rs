//! `mcp-bridge serve` as a user runs it: errors they can act on, backends
//! that run as the user expects, secrets kept from other users, and a stop
//! that leaves nothing behind. Needs the workspace built with the profile
//! of these tests (`cargo build --workspace`, or `--release`): the gateway
//! runs the native module, host and fixture built beside it.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CLI: &str = env!("CARGO_BIN_EXE_mcp-bridge");

/// target/<profile>/, where the workspace's binaries of this profile are.
fn profile_dir() -> &'static Path {
    Path::new(CLI).parent().expect("bin dir")
}

/// The command that builds the workspace with this profile.
fn build_command() -> String {
    match profile_dir().file_name().and_then(|n| n.to_str()) {
        Some("debug") => "cargo build --workspace".into(),
        Some("release") => "cargo build --release --workspace".into(),
        Some(other) => format!("cargo build --profile {other} --workspace"),
        None => "cargo build --workspace".into(),
    }
}

/// A file another workspace package builds beside the CLI (the native
/// module may be in deps/, where `cargo test` leaves it); fails naming it
/// and the command that builds it.
fn built(name: &str) -> PathBuf {
    let dir = profile_dir();
    let mut places = vec![dir.join(name)];
    if name.ends_with(".so") {
        places.push(dir.join("deps").join(name));
    }
    places.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!("{} is missing: build it with `{}` before running these tests", places[0].display(), build_command())
    })
}

/// Everything a running gateway needs; returns the fixture.
fn workspace_built() -> PathBuf {
    built("libmcp_bridge_native.so");
    built("mcp-bridge-host");
    built("mcp-fixture")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(CLI).args(args).output().expect("run mcp-bridge");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// A directory of this test, removed with everything in it when dropped.
/// Others may enter it (workers may run as nobody).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        // Short: a gateway's temporary prefix goes in one, and the hosts'
        // socket paths under it must fit in 107 bytes.
        let dir = std::env::temp_dir().join(format!("mcp-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Scratch(dir)
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(") ").next().and_then(|r| r.chars().next()) != Some('Z'))
        .unwrap_or(false)
}

/// Waits up to `limit` for `done`.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A running `mcp-bridge serve`. Its temporary prefix goes into a
/// directory of its own (TMPDIR), which must be empty once it has stopped.
/// Dropping it stops it the way a user does: SIGTERM, then a wait.
struct Gateway {
    child: Child,
    port: u16,
    banner: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
    relay: Option<std::thread::JoinHandle<()>>,
    tmp: Scratch,
    status: Option<ExitStatus>,
}

/// How long a stopping gateway may take before the test gives up on it.
const STOP_LIMIT: Duration = Duration::from_secs(20);

impl Gateway {
    /// `serve --listen 127.0.0.1:<free port> --log-level info <args>`;
    /// `tweak` may change the command further (environment, group).
    fn start(args: &[&str], tweak: impl FnOnce(&mut Command)) -> Gateway {
        workspace_built();
        let port = free_port();
        let tmp = Scratch::new(&format!("t{port}"));
        let mut command = Command::new(CLI);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log-level", "info"])
            .args(args)
            .env("TMPDIR", &tmp.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tweak(&mut command);
        let mut child = command.spawn().expect("start the gateway");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let relay = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("log").push(line);
            }
        });
        let mut banner = Vec::new();
        let mut out = BufReader::new(stdout).lines().map_while(Result::ok);
        for line in out.by_ref() {
            let last = line.contains("SSE endpoint");
            banner.push(line);
            if last {
                break;
            }
        }
        // Keep reading, so nothing the gateway prints blocks it.
        std::thread::spawn(move || out.for_each(drop));
        let mut gateway = Gateway { child, port, banner, log, relay: Some(relay), tmp, status: None };
        if !gateway.banner.last().is_some_and(|l| l.contains("SSE endpoint")) {
            gateway.wait();
            panic!("the gateway did not start: {:?}\n{}", gateway.banner, gateway.log_text());
        }
        gateway
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// Waits for the gateway to exit (SIGKILL after STOP_LIMIT), and for
    /// its log to end.
    fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if start.elapsed() > STOP_LIMIT {
                // Last resort: the test fails on what it left behind.
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
        self.status = Some(status);
        status
    }

    /// Sends `signal` to the gateway and waits for it to exit.
    fn stop(&mut self, signal: libc::c_int) -> ExitStatus {
        if self.status.is_none() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(self.pid(), signal) };
        }
        self.wait()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM);
        if !std::thread::panicking() {
            assert!(self.tmp.entries().is_empty(), "left behind in TMPDIR: {:?}", self.tmp.entries());
        }
    }
}

/// One request on its own connection: the whole response as text.
fn request(port: u16, head: &str, body: &[u8]) -> String {
    request_to(&format!("127.0.0.1:{port}"), head, body)
}

fn request_to(addr: &str, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    // The server may answer, and stop reading, before the body is all sent.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a whole response, chunked or not.
fn body_of(response: &str) -> String {
    let Some((head, mut rest)) = response.split_once("\r\n\r\n") else { return String::new() };
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return rest.to_string();
    }
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// The status report, as JSON (HTTP/1.0: the body comes whole).
fn status_report(port: u16) -> Value {
    let response = request(port, "GET /-/status HTTP/1.0\r\n\r\n", b"");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    serde_json::from_str(body_of(&response).trim()).expect("JSON report")
}

/// An MCP client session over HTTP+SSE, as an SDK client holds it.
struct Session {
    stream: BufReader<TcpStream>,
    /// SSE text received and not yet parsed into events.
    pending: String,
    port: u16,
    post_path: String,
}

impl Session {
    fn open(port: u16) -> Session {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(format!("GET /mcp/sse HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).expect("request");
        let mut stream = BufReader::new(s);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            assert_ne!(stream.read_line(&mut head).expect("response head"), 0, "closed: {head}");
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
        let mut session = Session { stream, pending: String::new(), port, post_path: String::new() };
        let (event, data) = session.event();
        assert_eq!(event, "endpoint");
        session.post_path = data;
        session
    }

    /// The next SSE event: (event name, data).
    fn event(&mut self) -> (String, String) {
        self.next_event().expect("stream ended")
    }

    /// The next SSE event, or None once the stream has ended.
    fn next_event(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let (mut event, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !data.is_empty() {
                    return Some((event, data));
                }
                continue; // a keepalive comment
            }
            // One chunk of the chunked response.
            let mut size = String::new();
            if self.stream.read_line(&mut size).expect("chunk size") == 0 {
                return None;
            }
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16).expect("chunk size");
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0; size + 2];
            self.stream.read_exact(&mut chunk).expect("chunk");
            self.pending.push_str(&String::from_utf8_lossy(&chunk[..size]));
        }
    }

    fn post(&self, message: &Value) {
        let body = message.to_string();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n",
            self.post_path,
            self.port,
            body.len()
        );
        let response = request(self.port, &head, body.as_bytes());
        assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    }

    /// A request, and its response's result.
    fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let (event, data) = self.event();
            let message: Value = serde_json::from_str(&data).expect("JSON message");
            if event == "message" && message["id"] == id {
                assert!(message.get("error").is_none(), "{message}");
                return message["result"].clone();
            }
        }
    }

    fn initialize(&mut self) {
        let info = json!({"protocolVersion": "2024-11-05", "capabilities": {},
                          "clientInfo": {"name": "cli-test", "version": "0"}});
        self.call(1, "initialize", info);
        self.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }

    /// Calls a tool of the fixture without arguments: its text.
    fn tool(&mut self, id: u64, name: &str) -> String {
        let result = self.call(id, "tools/call", json!({"name": name, "arguments": {}}));
        result["content"][0]["text"].as_str().expect("text result").to_string()
    }

    /// The messages left on the stream, until it ends.
    fn rest(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.next_event())
            .filter(|(event, _)| event == "message")
            .map(|(_, data)| serde_json::from_str(&data).expect("JSON message"))
            .collect()
    }

    /// The backend's pid (the fixture's `pid` tool).
    fn backend_pid(&mut self, id: u64) -> i32 {
        let ids: Value = serde_json::from_str(&self.tool(id, "pid")).expect("pid JSON");
        ids["pid"].as_i64().expect("pid") as i32
    }

    /// The backend's environment and its process's uid.
    fn backend_env_and_uid(&mut self) -> (Value, u32) {
        self.initialize();
        let env: Value = serde_json::from_str(&self.tool(2, "env")).expect("env JSON");
        let ids: Value = serde_json::from_str(&self.tool(3, "pid")).expect("pid JSON");
        let pid = ids["pid"].as_u64().expect("pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("backend status");
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
            .expect("Uid line");
        (env, uid)
    }
}

/// A random hex string (no dependency for it: /dev/urandom).
fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => out.extend(files_under(&path)),
            Ok(m) if m.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

#[test]
fn an_address_in_use_is_refused_with_a_hint() {
    workspace_built();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, err) = run(&["serve", "--listen", &addr, "--", "cat"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{addr} is already in use")), "{err}");
}

#[test]
fn cluster_mode_needs_a_long_secret_and_an_address_the_other_nodes_reach() {
    let scratch = Scratch::new("cluster");
    let secret = scratch.0.join("secret");
    std::fs::write(&secret, "short\n").expect("secret");
    let secret_arg = secret.to_string_lossy().into_owned();
    let port = free_port().to_string();
    let (code, err) = run(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--cluster",
        "redis://127.0.0.1:1",
        "--cluster-secret-file",
        &secret_arg,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the cluster's secret must be at least 16 bytes, it has 5"), "{err}");
    std::fs::write(&secret, "a secret long enough for a cluster\n").expect("secret");
    let (code, err) = run(&[
        "serve",
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--cluster",
        "redis://127.0.0.1:1",
        "--cluster-secret-file",
        &secret_arg,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is a wildcard address: give --node-address"), "{err}");
    // A Redis URL the registry cannot read: refused, not cluster mode without a registry.
    let (code, err) = run(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--cluster",
        "redis://127.0.0.1:x",
        "--cluster-secret-file",
        &secret_arg,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid settings: cluster.redis bad Redis URL"), "{err}");
    // Redis need not be up for the node to start and serve.
    let gateway = Gateway::start(&["--cluster", "redis://127.0.0.1:1", "--cluster-secret-file", &secret_arg], |_| {});
    let line = gateway.banner.iter().find(|l| l.contains("this node at")).cloned().unwrap_or_default();
    assert!(
        line.ends_with(&format!("cluster mcp-bridge via redis://127.0.0.1:1, this node at 127.0.0.1:{}", gateway.port)),
        "{:?}",
        gateway.banner
    );
    let mut session = Session::open(gateway.port);
    session.initialize();
    assert!(
        session.post_path.contains(&format!("-{}-", hex(&format!("127.0.0.1:{}", gateway.port)))),
        "{}",
        session.post_path
    );
    assert!(!session.tool(2, "time").is_empty(), "the session serves");
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_bad_option_is_reported_in_one_line_naming_the_option() {
    workspace_built();
    let addr = format!("127.0.0.1:{}", free_port());
    let (code, err) = run(&["serve", "--listen", &addr, "--base-uri", "/trailing/", "--", "cat"]);
    assert_ne!(code, 0);
    assert!(err.contains("mcp-bridge: invalid configuration: --base-uri must be empty or a path"), "{err}");
    assert!(!err.contains("base_uri") && !err.contains("stack traceback"), "{err}");
    // A member of the route's limits is named as its option too.
    let (code, err) = run(&["serve", "--listen", &addr, "--limit-memory-mb", "8", "--", "cat"]);
    assert_ne!(code, 0);
    assert!(err.contains("mcp-bridge: invalid configuration: --limit-memory-mb must be at least 16, got 8"), "{err}");
    assert!(!err.contains("limits.") && !err.contains("stack traceback"), "{err}");
}

#[test]
fn usage_mistakes_exit_2_with_a_pointer_to_the_help() {
    workspace_built();
    let (code, err) = run(&["serve", "--bogus"]);
    assert_eq!(code, 2);
    assert_eq!(err, "mcp-bridge: unknown option --bogus\n(see mcp-bridge serve --help)\n");
    let (code, err) = run(&["serve", "--workers", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--workers must be between 1 and 256") && !err.contains("usage:"), "{err}");
    let (code, err) = run(&["serve", "--env", "MCP_BRIDGE_TEST_UNSET_VARIABLE"]);
    assert_eq!(code, 2);
    assert!(err.contains("MCP_BRIDGE_TEST_UNSET_VARIABLE is not set in this environment"), "{err}");
    let (code, err) = run(&["serve", "--nginx", "/nonexistent/nginx", "--listen", "127.0.0.1:1", "--", "cat"]);
    assert_eq!(code, 1);
    assert!(err.contains("not an executable nginx"), "{err}");
    let (code, _) = run(&["serve", "--help"]);
    assert_eq!(code, 0);
}

#[test]
fn ctrl_c_stops_nginx_and_every_backend() {
    let fixture = workspace_built();
    let pid_dir = Scratch::new("ctrl-c-pids");
    // Backends may run as another user: let them write their pid files.
    std::fs::set_permissions(&pid_dir.0, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let fixture = fixture.to_string_lossy().into_owned();
    let pids = pid_dir.0.to_string_lossy().into_owned();
    let mut gateway =
        Gateway::start(&["--workers", "2", "--log-level", "warn", "--", &fixture, "--pid-dir", &pids], |_| {});
    assert!(gateway.banner.iter().any(|b| b.contains(&format!("http://127.0.0.1:{}/mcp/sse", gateway.port))));

    // Two live sessions, held open by this test as a client would.
    let sessions: Vec<Session> = (0..2).map(|_| Session::open(gateway.port)).collect();
    let backends = || std::fs::read_dir(&pid_dir.0).expect("pid dir").filter_map(Result::ok).count();
    assert!(eventually(Duration::from_secs(5), || backends() >= 2), "backends started: {}", backends());

    let status = gateway.stop(libc::SIGINT);
    assert!(status.success(), "gateway exited with {status}");
    assert_eq!(live_backends(&pid_dir.0), Vec::<u32>::new(), "processes left after the gateway exited");
    drop(sessions);
}

/// Backends whose pid files (mcp-fixture --pid-dir) name a live process.
fn live_backends(pid_dir: &Path) -> Vec<u32> {
    std::fs::read_dir(pid_dir)
        .expect("pid dir")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".pid")).and_then(|p| p.parse().ok()))
        .filter(|&pid| running(pid))
        .collect()
}

/// A host that exits before its worker is reaped by the worker, and nginx
/// logs "unknown process": a race, so several rounds (each lost it about a
/// quarter of the time while the host shared nginx's process group).
const CTRL_C_ROUNDS: usize = 16;

#[test]
fn a_terminals_ctrl_c_leaves_no_unknown_process_and_no_backend() {
    let fixture = workspace_built().to_string_lossy().into_owned();
    for round in 0..CTRL_C_ROUNDS {
        let pid_dir = Scratch::new(&format!("terminal-pids-{round}"));
        std::fs::set_permissions(&pid_dir.0, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let pids = pid_dir.0.to_string_lossy().into_owned();
        // A terminal's foreground job: serve leads a process group, nginx
        // and its workers are in it, and Ctrl-C sends SIGINT to the group.
        let args = ["--workers", "2", "--log-level", "notice", "--", &fixture, "--pid-dir", &pids];
        let mut gateway = Gateway::start(&args, |c| {
            c.process_group(0);
        });
        let sessions: Vec<Session> = (0..2).map(|_| Session::open(gateway.port)).collect();
        let backends = || std::fs::read_dir(&pid_dir.0).expect("pid dir").filter_map(Result::ok).count();
        assert!(eventually(Duration::from_secs(5), || backends() >= 2), "backends started: {}", backends());

        // SAFETY: signalling the process group this test created.
        assert_eq!(unsafe { libc::kill(-gateway.pid(), libc::SIGINT) }, 0);
        let status = gateway.wait();
        assert!(status.success(), "gateway exited with {status}");
        let log = gateway.log_text();
        assert!(!log.contains("unknown process"), "round {round}: a host exited before its worker:\n{log}");
        assert_eq!(live_backends(&pid_dir.0), Vec::<u32>::new(), "backends left after Ctrl-C");
        drop(sessions);
    }
}

#[test]
fn an_oversized_body_gets_the_gateways_413_and_no_error_in_the_log() {
    let gateway = Gateway::start(&["--max-message-bytes", "65536"], |_| {});
    // A live session, so the body is what gets refused.
    let session = Session::open(gateway.port);
    let body = vec![b'x'; 10 << 20];
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        session.post_path,
        gateway.port,
        body.len()
    );
    let response = request(gateway.port, &head, &body);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    // The Lua code names the limit as a route field or as the option.
    assert!(
        response.contains("larger than max_message_bytes (65536)")
            || response.contains("larger than --max-message-bytes (65536)"),
        "{response}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = gateway.log.lock().expect("log").clone();
    let errors: Vec<&String> = log.iter().filter(|l| l.contains("[error]") || l.contains("[crit]")).collect();
    assert!(errors.is_empty(), "a client's mistake was logged as an error: {errors:?}");
}

#[test]
fn over_max_sessions_the_429_names_the_option() {
    let gateway = Gateway::start(&["--max-sessions", "1"], |_| {});
    let _held = Session::open(gateway.port);
    let head = format!("GET /mcp/sse HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", gateway.port);
    let response = request(gateway.port, &head, b"");
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    let error: Value = serde_json::from_str(body_of(&response).trim()).expect("JSON error");
    let message = error["error"].as_str().expect("error message");
    assert!(message.contains("(--max-sessions)"), "{message}");
}

#[test]
fn the_status_report_is_json_for_loopback_clients() {
    let gateway = Gateway::start(&["--status-uri", "/-/status", "--max-sessions-per-node", "3"], |_| {});
    let report = status_report(gateway.port);
    assert_eq!(report["node"]["keys_held"], 0, "{report}");
    assert!(report["worker"]["pid"].as_u64().is_some(), "{report}");
    assert_eq!(report["hosts"], json!([]), "no session, no host yet: {report}");
}

/// Whether `cond` holds within `limit`, asking every 50 ms.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The metrics as `series -> value` (HTTP/1.0: the body comes whole).
fn metrics(port: u16) -> HashMap<String, f64> {
    let response = request(port, "GET /-/metrics HTTP/1.0\r\n\r\n", b"");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{response}");
    body_of(&response)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

#[test]
fn the_metrics_move_with_sessions_and_messages() {
    let gateway = Gateway::start(&["--metrics-uri", "/-/metrics"], |_| {});
    assert!(gateway.banner.iter().any(|l| l.contains("metrics at http://")), "{:?}", gateway.banner);
    let value = |m: &HashMap<String, f64>, series: &str| m.get(series).copied().unwrap_or(0.0);
    let before = metrics(gateway.port);
    assert_eq!(value(&before, r#"mcp_bridge_sessions_started_total{route="gateway",transport="sse"}"#), 0.0);
    let mut session = Session::open(gateway.port);
    session.initialize();
    assert!(!session.tool(2, "time").is_empty());
    let started = r#"mcp_bridge_sessions_started_total{route="gateway",transport="sse"}"#;
    let live = r#"mcp_bridge_sessions_live{route="gateway"}"#;
    let messages_in = r#"mcp_bridge_messages_total{route="gateway",direction="in"}"#;
    // Traffic is counted in batches: wait for the messages to show.
    assert!(
        wait_until(Duration::from_secs(5), || value(&metrics(gateway.port), messages_in) >= 3.0),
        "{:?}",
        metrics(gateway.port)
    );
    let during = metrics(gateway.port);
    assert_eq!((value(&during, started), value(&during, live)), (1.0, 1.0), "{during:?}");
    assert_eq!(value(&during, r#"mcp_bridge_backends_live{route="gateway"}"#), 1.0);
    assert!(value(&during, r#"mcp_bridge_message_bytes_total{route="gateway",direction="out"}"#) > 0.0);
    drop(session);
    let ended = r#"mcp_bridge_sessions_ended_total{route="gateway",transport="sse",reason="client_closed"}"#;
    assert!(wait_until(Duration::from_secs(5), || value(&metrics(gateway.port), ended) == 1.0));
    let after = metrics(gateway.port);
    assert_eq!(value(&after, live), 0.0, "{after:?}");
    assert_eq!(value(&after, r#"mcp_bridge_session_teardown_seconds_count{route="gateway"}"#), 1.0);
}

#[test]
fn restart_on_crash_is_an_option_and_its_restarts_are_counted() {
    let fixture = workspace_built().to_string_lossy().into_owned();
    let args = ["--restart-on-crash", "--max-restarts", "1", "--metrics-uri", "/-/metrics", "--", &fixture];
    let gateway = Gateway::start(&args, |_| {});
    let value = |series: &str| metrics(gateway.port).get(series).copied().unwrap_or(0.0);
    let mut session = Session::open(gateway.port);
    session.initialize();
    // Each crash's call gets an error; the first crash restarts the backend.
    let crash = |session: &mut Session, id: u64| {
        session.post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                             "params": {"name": "crash", "arguments": {"code": 3}}}));
        loop {
            let (event, data) = session.event();
            if event == "message" && serde_json::from_str::<Value>(&data).expect("JSON")["id"] == id {
                return data;
            }
        }
    };
    assert!(crash(&mut session, 2).contains("is being restarted"));
    assert!(!session.tool(3, "time").is_empty(), "the session goes on");
    let restarts = r#"mcp_bridge_backend_restarts_total{route="gateway",transport="sse"}"#;
    assert!(wait_until(Duration::from_secs(5), || value(restarts) == 1.0), "{:?}", metrics(gateway.port));
    assert!(crash(&mut session, 4).contains("past the restart bound"));
    let ended = r#"mcp_bridge_sessions_ended_total{route="gateway",transport="sse",reason="restart_limit"}"#;
    assert!(wait_until(Duration::from_secs(5), || value(ended) == 1.0), "{:?}", metrics(gateway.port));
    assert_eq!(value(restarts), 1.0);
}

/// This machine's first address that is not loopback (`hostname -I`).
fn non_loopback_address() -> Option<String> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .map(String::from)
}

/// Scripts that wait for the banner read nginx's pid file next (chaos.py
/// does), but nginx listens before it writes that file. An nginx that
/// writes it a second late shows whether the banner waits for it.
#[test]
fn the_banner_waits_for_the_pid_file() {
    let scratch = Scratch::new("slow-pid");
    let real = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is installed");
    let slow = scratch.0.join("slow-nginx");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\n\
             [ \"$1\" = -V ] && exec {real} -V\n\
             sed 's|pid .*;|pid '\"$2\"'/real.pid;|' \"$4\" > \"$4.slow\"\n\
             pid=$$\n\
             (sleep 1; echo $pid > \"$2/nginx.pid\") &\n\
             exec {real} -p \"$2\" -c \"$4.slow\"\n"
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let prefix = scratch.0.join("prefix");
    let (prefix_arg, slow_arg) = (prefix.to_string_lossy().into_owned(), slow.to_string_lossy().into_owned());
    let gateway = Gateway::start(&["--prefix", &prefix_arg, "--nginx", &slow_arg], |_| {});
    let text = std::fs::read_to_string(prefix.join("nginx.pid")).expect("nginx.pid right after the banner");
    let master: i32 = text.trim().parse().expect("a pid");
    let stat = std::fs::read_to_string(format!("/proc/{master}/stat")).expect("the master runs");
    let parent = stat.rsplit(") ").next().and_then(|r| r.split(' ').nth(1)).and_then(|p| p.parse::<i32>().ok());
    assert_eq!(parent, Some(gateway.pid()), "{text} is not serve's nginx: {stat}");
    Session::open(gateway.port).initialize();
}

#[test]
fn the_status_report_refuses_other_machines_with_json() {
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let prefix_dir = Scratch::new("status-prefix");
    let prefix = prefix_dir.0.join("prefix");
    let prefix_arg = prefix.to_string_lossy().into_owned();
    let gateway = Gateway::start(&["--listen", &listen, "--status-uri", "/-/status", "--prefix", &prefix_arg], |_| {});
    // The loopback check is the Lua code's, answered in JSON, not nginx's
    // allow/deny with its HTML page.
    let conf = std::fs::read_to_string(prefix.join("conf/nginx.conf")).expect("nginx.conf");
    assert!(conf.contains("location = /-/status") && !conf.contains("deny ") && !conf.contains("allow "), "{conf}");
    assert_eq!(status_report(port)["hosts"], json!([]));
    let Some(addr) = non_loopback_address() else {
        eprintln!("no address other than loopback: the 403 itself is not tested");
        return;
    };
    let response = request_to(&format!("{addr}:{port}"), "GET /-/status HTTP/1.0\r\n\r\n", b"");
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.to_ascii_lowercase().contains("content-type: application/json"), "{response}");
    let error: Value = serde_json::from_str(body_of(&response).trim()).expect("a JSON 403");
    assert!(error["error"].as_str().is_some_and(|e| e.contains("loopback")), "{error}");
    drop(gateway);
}

#[test]
fn the_status_report_lists_the_hosts_of_every_worker_whichever_answers() {
    let gateway = Gateway::start(&["--workers", "2", "--status-uri", "/-/status"], |_| {});
    // Connections spread over the workers (reuseport): open sessions until
    // both workers hold one, so both have a host.
    let workers_with_hosts = |report: &Value| -> HashSet<u64> {
        report["hosts"].as_array().into_iter().flatten().filter_map(|h| h["worker"].as_u64()).collect()
    };
    let mut sessions = Vec::new();
    while workers_with_hosts(&status_report(gateway.port)).len() < 2 {
        assert!(sessions.len() < 40, "40 sessions and still one worker: {}", status_report(gateway.port));
        sessions.push(Session::open(gateway.port));
    }
    let mut answered = HashSet::new();
    for _ in 0..100 {
        let report = status_report(gateway.port);
        let hosts = report["hosts"].as_array().expect("hosts list");
        assert_eq!(hosts.len(), 2, "{report}");
        assert_eq!(workers_with_hosts(&report).len(), 2, "{report}");
        let sessions_counted: u64 = hosts.iter().filter_map(|h| h["sessions"].as_u64()).sum();
        assert_eq!(sessions_counted, sessions.len() as u64, "{report}");
        answered.insert(report["worker"]["pid"].as_u64().expect("worker pid"));
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered.len(), 2, "only one worker ever answered");
}

#[test]
fn env_values_are_kept_from_other_users_and_reach_the_backend() {
    let fixture = workspace_built().to_string_lossy().into_owned();
    let prefix_dir = Scratch::new("secrets");
    let prefix = prefix_dir.0.join("prefix");
    let (secret, from_env) = (random_hex(), random_hex());
    let given = format!("SECRET_TOKEN={secret}");
    let prefix_arg = prefix.to_string_lossy().into_owned();
    let args = ["--prefix", &prefix_arg, "--env", &given, "--env", "FROM_ENV", "--", &fixture];
    let gateway = Gateway::start(&args, |c| {
        c.env("FROM_ENV", &from_env);
    });
    // --env KEY keeps the value off the command line, which `ps` shows.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", gateway.pid())).expect("cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains(&from_env));

    let mut holders = Vec::new();
    for file in files_under(&prefix) {
        let contents = String::from_utf8_lossy(&std::fs::read(&file).expect("read")).into_owned();
        if !contents.contains(&secret) && !contents.contains(&from_env) {
            continue;
        }
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o044, 0, "{} holds an --env value and has mode {:o}", file.display(), mode & 0o777);
        if euid() == 0 {
            let read = Command::new("runuser").args(["-u", "nobody", "--", "cat"]).arg(&file).output();
            let read = read.expect("runuser");
            assert!(!read.status.success(), "nobody could read {}", file.display());
        }
        holders.push(file);
    }
    assert!(holders.contains(&prefix.join("gateway.lua")), "the values were not found in {holders:?}");

    let mut session = Session::open(gateway.port);
    let (env, _) = session.backend_env_and_uid();
    assert_eq!(env["SECRET_TOKEN"], secret.as_str(), "{env}");
    assert_eq!(env["FROM_ENV"], from_env.as_str(), "{env}");
}

#[test]
fn backends_run_as_the_caller_with_the_callers_path() {
    let fixture = workspace_built().to_string_lossy().into_owned();
    let marker = Scratch::new("path-marker");
    let path = format!("{}:{}", marker.0.display(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()));
    let gateway = Gateway::start(&["--", &fixture], |c| {
        c.env("PATH", &path);
    });
    let said = gateway.banner.join("\n");
    assert!(said.contains("backends run as ") && said.contains(&format!("(uid {}) with your PATH", euid())), "{said}");
    let mut session = Session::open(gateway.port);
    let (env, uid) = session.backend_env_and_uid();
    assert_eq!(uid, euid(), "the backend's uid");
    assert_eq!(env["PATH"], path.as_str(), "{env}");
}

#[test]
fn session_home_gives_each_session_a_home_of_its_own() {
    let fixture = workspace_built().to_string_lossy().into_owned();
    let gateway = Gateway::start(&["--session-home", "--", &fixture], |_| {});
    let homes: Vec<(String, String)> = (0..2)
        .map(|_| {
            let mut session = Session::open(gateway.port);
            let (env, _) = session.backend_env_and_uid();
            (env["HOME"].as_str().expect("HOME").to_string(), env["TMPDIR"].as_str().expect("TMPDIR").to_string())
        })
        .collect();
    assert_ne!(homes[0].0, homes[1].0, "{homes:?}");
    for (home, tmp) in &homes {
        assert_eq!(Path::new(tmp), Path::new(home).join("tmp"), "{homes:?}");
        // In the gateway's prefix, which goes when it stops.
        assert!(Path::new(home).starts_with(&gateway.tmp.0), "{home}");
    }
}

#[test]
fn as_root_user_nobody_runs_backends_as_nobody_in_a_runtime_dir_of_its_own() {
    if euid() != 0 {
        eprintln!("skipped: --user for another user needs root");
        return;
    }
    let fixture = workspace_built().to_string_lossy().into_owned();
    let prefix_dir = Scratch::new("nobody");
    let prefix = prefix_dir.0.join("prefix");
    let prefix_arg = prefix.to_string_lossy().into_owned();
    let gateway = Gateway::start(&["--user", "nobody", "--prefix", &prefix_arg, "--", &fixture], |_| {});
    assert!(gateway.banner.iter().any(|l| l.contains("backends run as nobody (uid 65534)")), "{:?}", gateway.banner);
    let mut session = Session::open(gateway.port);
    let (env, uid) = session.backend_env_and_uid();
    assert_eq!(uid, 65534, "the backend's uid");
    // Everything the workers make is in the prefix's runtime directory,
    // which is theirs and private.
    let run = prefix.join("run");
    let meta = std::fs::metadata(&run).expect("runtime dir");
    assert_eq!((std::os::unix::fs::MetadataExt::uid(&meta), meta.permissions().mode() & 0o777), (65534, 0o700));
    let home = env["HOME"].as_str().expect("HOME");
    assert!(Path::new(home).starts_with(&run), "HOME {home} outside {}", run.display());
    let hosts: Vec<String> = std::fs::read_dir(&run)
        .expect("run")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("mcp-bridge-65534.") && run.join(n).join("host.sock").exists())
        .collect();
    assert_eq!(hosts.len(), 1, "the host's socket is in the runtime dir: {hosts:?}");
}

#[test]
fn as_root_a_prefix_the_workers_user_cannot_reach_is_refused() {
    if euid() != 0 {
        eprintln!("skipped: --user for another user needs root");
        return;
    }
    workspace_built();
    let closed = Scratch::new("closed");
    std::fs::set_permissions(&closed.0, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let prefix = closed.0.join("prefix");
    let addr = format!("127.0.0.1:{}", free_port());
    let (code, err) = run(&["serve", "--listen", &addr, "--user", "nobody", "--prefix", &prefix.to_string_lossy()]);
    assert_eq!(code, 1);
    let expected = format!(
        "the workers' user nobody (uid 65534) cannot reach {}/run (it may not enter {}): choose a --prefix",
        prefix.display(),
        closed.0.display()
    );
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn a_prefix_too_deep_for_the_hosts_sockets_is_refused_before_anything_is_made() {
    workspace_built();
    let scratch = Scratch::new("deep");
    let deep = scratch.0.join("d".repeat(100));
    let addr = format!("127.0.0.1:{}", free_port());
    let (code, err) = run(&["serve", "--listen", &addr, "--prefix", &deep.to_string_lossy(), "--", "cat"]);
    assert_eq!(code, 1);
    assert!(err.contains("is too deep") && err.contains("choose a shorter one"), "{err}");
    assert!(!deep.exists(), "the prefix was created anyway");
}

#[test]
fn a_stopped_gateway_leaves_no_files_behind() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut gateway = Gateway::start(&[], |_| {});
        let session = Session::open(gateway.port);
        let prefixes = gateway.tmp.entries();
        assert_eq!(prefixes.len(), 1, "{prefixes:?}");
        assert!(prefixes[0].starts_with("mcp-bridge-serve-"), "{prefixes:?}");
        // The hosts' directories and the backends' HOME are in the prefix.
        let run = gateway.tmp.0.join(&prefixes[0]).join("run");
        let made: Vec<String> = std::fs::read_dir(&run)
            .expect("runtime dir in the prefix")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(made.iter().any(|n| n.ends_with("-home")) && made.len() >= 2, "{made:?}");
        let status = gateway.stop(signal);
        assert!(status.success(), "exited with {status} on signal {signal}");
        assert_eq!(gateway.tmp.entries(), Vec::<String>::new(), "left behind after signal {signal}");
        drop(session);
    }
}

/// A stateless (2026-07-28) POST of `message` on its own connection, left
/// open for its answer.
fn stateless_post(port: u16, message: &Value) -> TcpStream {
    let method = message["method"].as_str().expect("method");
    let name = message["params"]["name"].as_str().map(|n| format!("Mcp-Name: {n}\r\n")).unwrap_or_default();
    let body = message.to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n\
         Mcp-Method: {method}\r\n{name}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("request");
    s
}

fn stateless_meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
           "io.modelcontextprotocol/clientCapabilities": {}})
}

/// Reads from `s` until `needle` shows up (true) or the stream ends or
/// times out (false).
fn read_until(s: &mut TcpStream, needle: &str) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&seen).contains(needle) {
            return true;
        }
    }
}

#[test]
fn a_list_change_reaches_the_listeners_of_every_workers_pool() {
    let fixture = workspace_built();
    let fixture = fixture.to_string_lossy().into_owned();
    let gateway =
        Gateway::start(&["--workers", "2", "--status-uri", "/-/status", "--", &fixture, "--conformance"], |_| {});
    // Listeners land on either worker (reuseport); each needs its worker's
    // pool, so pools on both hosts mean listeners on both workers.
    let mut listeners = Vec::new();
    let pools_on_both = |port| {
        let report = status_report(port);
        let hosts = report["hosts"].as_array().cloned().unwrap_or_default();
        hosts.iter().filter(|h| h["pooled"].as_u64().unwrap_or(0) > 0).count() == 2
    };
    for id in 0..40 {
        let listen = json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
                            "params": {"_meta": stateless_meta(), "notifications": {"toolsListChanged": true}}});
        let mut s = stateless_post(gateway.port, &listen);
        // The stream opens with the acknowledgement of the subscription.
        assert!(read_until(&mut s, "text/event-stream"), "listen {id} was not answered with a stream");
        listeners.push(s);
        if listeners.len() >= 4 && wait_until(Duration::from_secs(2), || pools_on_both(gateway.port)) {
            break;
        }
    }
    assert!(pools_on_both(gateway.port), "no listener on one of the workers: {}", status_report(gateway.port));
    let trigger = json!({"jsonrpc": "2.0", "id": 100, "method": "tools/call",
                         "params": {"name": "test_trigger_tool_change", "arguments": {}, "_meta": stateless_meta()}});
    let mut s = stateless_post(gateway.port, &trigger);
    assert!(read_until(&mut s, "list change announced"), "the trigger was not answered");
    for (i, listener) in listeners.iter_mut().enumerate() {
        assert!(read_until(listener, "notifications/tools/list_changed"), "listener {i} heard nothing");
    }
}

/// What a session that ran away said: the stderr lines and the error of
/// the call in flight, and whether another session answered each of its
/// calls within 2 s meanwhile (not starved; no speed claim beyond that).
struct Runaway {
    pid: i32,
    stderr: Vec<String>,
    error: String,
    other_answered: bool,
}

/// Calls `tool` of the fixture in a new session and reads its stream to
/// its end, while `other` is asked the time every 50 ms.
fn run_away(port: u16, other: &mut Session, next_id: &mut u64, tool: &str, arguments: Value) -> Runaway {
    let mut hog = Session::open(port);
    hog.initialize();
    let pid = hog.backend_pid(2);
    hog.post(
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}),
    );
    let reader = std::thread::spawn(move || hog.rest());
    let mut other_answered = true;
    loop {
        let done = reader.is_finished();
        let asked = Instant::now();
        *next_id += 1;
        assert!(!other.tool(*next_id, "time").is_empty());
        other_answered &= asked.elapsed() < Duration::from_secs(2);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let messages = reader.join().expect("reader");
    let stderr = messages
        .iter()
        .filter(|m| m["method"] == "notifications/stderr")
        .map(|m| m["params"]["content"].as_str().unwrap_or_default().to_string())
        .collect();
    let error = messages.iter().find(|m| m["id"] == 7).map(|m| m["error"].to_string()).unwrap_or_default();
    Runaway { pid, stderr, error, other_answered }
}

fn metric(port: u16, series: &str) -> f64 {
    metrics(port).get(series).copied().unwrap_or(0.0)
}

#[test]
fn a_backend_over_its_cpu_limit_ends_its_session_and_the_metrics_say_why() {
    let fixture = workspace_built().to_string_lossy().into_owned();
    let args = ["--metrics-uri", "/-/metrics", "--limit-cpu-seconds", "1", "--", &fixture];
    let gateway = Gateway::start(&args, |_| {});
    let mut other = Session::open(gateway.port);
    other.initialize();
    let mut id = 10;
    let spin = run_away(gateway.port, &mut other, &mut id, "spin", json!({}));
    assert!(spin.error.contains("backend killed by signal 24 on reaching its CPU time limit"), "{}", spin.error);
    assert!(spin.other_answered, "the other session was starved while the hog spun");
    let series = r#"mcp_bridge_sessions_ended_total{route="gateway",transport="sse",reason="limit_cpu"}"#;
    assert!(wait_until(Duration::from_secs(5), || metric(gateway.port, series) == 1.0), "{:?}", metrics(gateway.port));
    assert!(!running(spin.pid as u32));
}

/// Processes and threads of user `uid` (what RLIMIT_NPROC counts).
fn tasks_of(uid: u32) -> u64 {
    let mut tasks = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc").filter_map(Result::ok) {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("");
        let real_uid = field("Uid:").split_whitespace().next().and_then(|u| u.parse::<u32>().ok());
        if real_uid == Some(uid) {
            tasks += field("Threads:").parse::<u64>().unwrap_or(1);
        }
    }
    tasks
}

/// Processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit(") ").next().unwrap_or("");
            after.split_whitespace().nth(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
        })
        .collect()
}

#[test]
fn as_root_runaway_backends_of_user_nobody_are_stopped_by_their_limits_and_leave_nothing() {
    if euid() != 0 {
        eprintln!("skipped: --user for another user needs root");
        return;
    }
    let fixture = workspace_built().to_string_lossy().into_owned();
    let pid_dir = Scratch::new("runaway-pids");
    std::fs::set_permissions(&pid_dir.0, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let pids = pid_dir.0.to_string_lossy().into_owned();
    // RLIMIT_NPROC counts every process and thread of the user: what nobody
    // runs now, and room for the gateway's own and a few dozen more.
    let processes = (tasks_of(65534) + 60).to_string();
    let args = ["--user", "nobody", "--metrics-uri", "/-/metrics", "--limit-processes", &processes];
    let args = [&args[..], &["--limit-memory-mb", "128", "--", &fixture, "--pid-dir", &pids]].concat();
    let gateway = Gateway::start(&args, |_| {});
    let mut other = Session::open(gateway.port);
    other.initialize();
    let mut id = 10;

    let bomb = run_away(gateway.port, &mut other, &mut id, "fork_bomb", json!({"max": 2000}));
    let said = bomb.stderr.join("\n");
    assert!(said.contains("Resource temporarily unavailable"), "{said}");
    let forked: u64 = said
        .split("fork failed after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(forked > 0, "the limit left no room to fork at all: {said}");
    assert!(bomb.error.contains("backend exited with status 1"), "{}", bomb.error);
    assert!(bomb.other_answered, "the other session was starved during the fork bomb");
    // The children it forked are in its process group, which goes with it.
    assert!(
        eventually(Duration::from_secs(5), || group_members(bomb.pid).is_empty()),
        "left: {:?}",
        group_members(bomb.pid)
    );

    let hog = run_away(gateway.port, &mut other, &mut id, "hog_memory", json!({"max_mb": 1024}));
    let said = hog.stderr.join("\n");
    assert!(said.contains("hog_memory: an allocation failed after"), "{said}");
    assert!(hog.error.contains("backend exited with status 1 on reaching its memory limit"), "{}", hog.error);
    assert!(hog.other_answered, "the other session was starved during the memory hog");
    assert!(eventually(Duration::from_secs(5), || !running(hog.pid as u32)));

    // A failed fork cannot be told from any other failure; a failure at a
    // resident peak near the memory limit can.
    let exited = r#"mcp_bridge_sessions_ended_total{route="gateway",transport="sse",reason="backend_exited"}"#;
    let memory = r#"mcp_bridge_sessions_ended_total{route="gateway",transport="sse",reason="limit_memory"}"#;
    assert!(
        wait_until(Duration::from_secs(5), || metric(gateway.port, exited) == 1.0
            && metric(gateway.port, memory) == 1.0),
        "{:?}",
        metrics(gateway.port)
    );
    drop(other);
    assert!(
        eventually(Duration::from_secs(5), || live_backends(&pid_dir.0).is_empty()),
        "{:?}",
        live_backends(&pid_dir.0)
    );
}
