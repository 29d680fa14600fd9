//! `mcp-bridge serve` as a user runs it: errors they can act on, and a stop
//! that leaves nothing behind. Needs the workspace built (`cargo build
//! --release`): the gateway runs the native module, host and fixture
//! installed beside it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_mcp-bridge");

fn beside_cli(name: &str) -> PathBuf {
    let path = Path::new(CLI).parent().expect("bin dir").join(name);
    assert!(path.exists(), "{} missing: build the workspace first (cargo build --release)", path.display());
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(CLI).args(args).output().expect("run mcp-bridge");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(") ").next().and_then(|r| r.chars().next()) != Some('Z'))
        .unwrap_or(false)
}

#[test]
fn an_address_in_use_is_refused_with_a_hint() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, err) = run(&["serve", "--listen", &addr, "--", "cat"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{addr} is already in use")), "{err}");
}

#[test]
fn a_bad_option_is_reported_in_one_line() {
    beside_cli("libmcp_bridge_native.so");
    let addr = format!("127.0.0.1:{}", free_port());
    let (code, err) = run(&["serve", "--listen", &addr, "--base-uri", "/trailing/", "--", "cat"]);
    assert_ne!(code, 0);
    assert!(err.contains("mcp-bridge: invalid configuration: --base-uri must be empty or a path"), "{err}");
    assert!(!err.contains("base_uri") && !err.contains("stack traceback"), "{err}");
}

#[test]
fn usage_mistakes_exit_2_with_a_pointer_to_the_help() {
    let (code, err) = run(&["serve", "--bogus"]);
    assert_eq!(code, 2);
    assert_eq!(err, "mcp-bridge: unknown option --bogus\n(see mcp-bridge serve --help)\n");
    let (code, err) = run(&["serve", "--workers", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--workers must be between 1 and 256") && !err.contains("usage:"), "{err}");
    let (code, err) = run(&["serve", "--nginx", "/nonexistent/nginx", "--listen", "127.0.0.1:1", "--", "cat"]);
    assert_eq!(code, 1);
    assert!(err.contains("not an executable nginx"), "{err}");
}

#[test]
fn ctrl_c_stops_nginx_and_every_backend() {
    let fixture = beside_cli("mcp-fixture");
    let pid_dir = std::env::temp_dir().join(format!("mcp-bridge-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pid_dir);
    std::fs::create_dir_all(&pid_dir).expect("pid dir");
    std::fs::set_permissions(&pid_dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).expect("chmod");
    let port = free_port();
    let mut child = Command::new(CLI)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--workers", "2", "--log-level", "warn", "--"])
        .arg(&fixture)
        .arg("--pid-dir")
        .arg(&pid_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let stdout = child.stdout.take().expect("stdout");
    let mut gateway = Gateway(child);
    let banner = BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.contains("SSE endpoint"));
    assert!(banner.is_some_and(|b| b.contains(&format!("http://127.0.0.1:{port}/mcp/sse"))));

    // Two live sessions, held open by this test as a client would.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET /mcp/sse HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("response");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
        streams.push(s);
    }
    let start = Instant::now();
    let backends = loop {
        let n = std::fs::read_dir(&pid_dir).expect("pid dir").filter_map(Result::ok).count();
        if n >= 2 || start.elapsed() > Duration::from_secs(5) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(backends >= 2, "backends started: {backends}");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(gateway.0.id() as i32, libc::SIGINT) };
    let status = gateway.0.wait().expect("wait for the gateway");
    assert!(status.success(), "gateway exited with {status}");
    let left: Vec<String> = std::fs::read_dir(&pid_dir)
        .expect("pid dir")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".pid")).map(String::from))
        .filter(|pid| pid.parse().map(running).unwrap_or(false))
        .collect();
    assert!(left.is_empty(), "processes left after the gateway exited: {left:?}");
    for mut s in streams {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let _ = std::fs::remove_dir_all(&pid_dir);
}

/// Starts a gateway bridging the demo server with `extra` options; returns
/// it, its port and its log (nginx's error log, captured from stderr).
fn gateway(extra: &[&str]) -> (Gateway, u16, std::sync::mpsc::Receiver<String>) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(CLI)
        .args(["serve", "--listen", &listen, "--log-level", "info"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let banner = BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.contains("SSE endpoint"));
    assert!(banner.is_some(), "the gateway did not start");
    (Gateway(child), port, rx)
}

/// One request on its own connection: the whole response as text.
fn request(port: u16, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    // The server may answer, and stop reading, before the body is all sent.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn an_oversized_body_gets_the_gateways_413_and_no_error_in_the_log() {
    let (_gateway, port, log) = gateway(&["--max-message-bytes", "65536"]);
    // A live session, so the body is what gets refused.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(b"GET /mcp/sse HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("sessionId=") || !seen[seen.find("sessionId=").unwrap_or(0)..].contains('\n') {
        let n = stream.read(&mut buf).expect("endpoint event");
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let after = &seen[seen.find("sessionId=").unwrap_or(0) + "sessionId=".len()..];
    let id: String = after.chars().take_while(char::is_ascii_hexdigit).collect();
    let body = vec![b'x'; 10 << 20];
    let head = format!(
        "POST /mcp/message?sessionId={id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let response = request(port, &head, &body);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    // The Lua code names the limit as a route field or as the option.
    assert!(
        response.contains("larger than max_message_bytes (65536)")
            || response.contains("larger than --max-message-bytes (65536)"),
        "{response}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let errors: Vec<String> = log.try_iter().filter(|l| l.contains("[error]") || l.contains("[crit]")).collect();
    assert!(errors.is_empty(), "a client's mistake was logged as an error: {errors:?}");
}

#[test]
fn the_status_report_is_json_for_loopback_clients() {
    let (_gateway, port, _log) = gateway(&["--status-uri", "/-/status", "--max-sessions-per-node", "3"]);
    // HTTP/1.0: the body comes whole, not chunked.
    let response = request(port, "GET /-/status HTTP/1.0\r\n\r\n", b"");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json = &response[response.find("\r\n\r\n").expect("body") + 4..];
    let report: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON report");
    assert_eq!(report["node"]["keys_held"], 0, "{report}");
    assert!(report["worker"]["pid"].as_u64().is_some(), "{report}");
}
