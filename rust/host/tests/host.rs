//! The host end to end, without nginx: a test plays the worker.

mod support;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn messages_are_delivered_in_order_and_echoed_back() {
    let host = TestHost::start("echo");
    let mut s = host.spawn(&sh("exec cat", "")).expect("spawn cat");
    let mut d = Delivery::new(&host);
    for i in 0..200 {
        let (status, reason) = d.send(&s.id, format!("{{\"id\":{i}}}").as_bytes());
        assert_eq!(status, b'0', "message {i}: {reason}");
    }
    for i in 0..200 {
        assert_eq!(s.message(), format!("{{\"id\":{i}}}"));
    }
}

#[test]
fn pretty_printed_messages_reach_the_backend_as_one_line() {
    let host = TestHost::start("pretty");
    let mut s = host.spawn(&sh("exec cat", "")).expect("spawn cat");
    let mut d = Delivery::new(&host);
    assert_eq!(d.send(&s.id, b"{\n  \"a\": [1,\r\n 2]\n}").0, b'0');
    assert_eq!(s.message(), "{   \"a\": [1,   2] }");
}

#[test]
fn bad_deliveries_are_refused_with_a_reason() {
    let host = TestHost::start("refuse");
    let s = host.spawn(&sh("exec cat", r#"{"max_message_bytes": 64}"#)).expect("spawn");
    let mut d = Delivery::new(&host);
    let unknown = format!("{}{}", &s.id[..16], "0".repeat(32));
    assert_eq!(d.send(&unknown, b"{}").0, b'1');
    assert_eq!(d.send("short", b"{}").0, b'1');
    let (status, reason) = d.send(&s.id, b"{\"a\":");
    assert_eq!(status, b'2');
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert_eq!(d.send(&s.id, b"\"just a string\"").0, b'2');
    assert_eq!(d.send(&s.id, b"{\"a\":\"\xff\"}").0, b'2');
    let (status, reason) = d.send(&s.id, format!("{{\"a\":\"{}\"}}", "x".repeat(100)).as_bytes());
    assert_eq!(status, b'4', "{reason}");
    // The connection survives refusals and still delivers.
    assert_eq!(d.send(&s.id, b"{}").0, b'0');
}

#[test]
fn a_backend_that_stops_reading_makes_deliveries_busy_not_lost() {
    let host = TestHost::start("busy");
    let s = host.spawn(&sh("exec sleep 1000", r#"{"max_message_bytes": 1024}"#)).expect("spawn");
    let _guard = KillOnDrop(vec![s.pid]);
    let mut d = Delivery::new(&host);
    let message = format!("{{\"pad\":\"{}\"}}", "x".repeat(900));
    let mut accepted = 0;
    let busy = loop {
        let (status, reason) = d.send(&s.id, message.as_bytes());
        match status {
            b'0' => accepted += 1,
            b'3' => break reason,
            other => panic!("unexpected status {} ({reason})", other as char),
        }
        assert!(accepted < 10_000, "never became busy");
    };
    assert!(busy.contains("not reading"), "{busy}");
    // Pipe buffer (64 KiB) plus the inbox bound (1 MiB minimum) at most.
    assert!(accepted * 910 < (1 << 20) + (128 << 10), "accepted {accepted} messages");
}

#[test]
fn closing_the_connection_terminates_the_backend_at_once() {
    let host = TestHost::start("close");
    let s = host.spawn(&sh("exec sleep 1000", "")).expect("spawn");
    let _guard = KillOnDrop(vec![s.pid]);
    assert!(exists(s.pid));
    let start = Instant::now();
    drop(s.conn);
    assert!(wait_until(Duration::from_secs(5), || !exists(s.pid)), "backend still there");
    assert!(start.elapsed() < Duration::from_millis(1500), "took {:?}", start.elapsed());
    assert!(wait_until(Duration::from_secs(2), || host.stats()["sessions"] == 0));
}

#[test]
fn a_backend_ignoring_sigterm_is_killed_after_the_grace_period() {
    let host = TestHost::start("ignore");
    let mut s = host
        .spawn(&sh(r#"trap '' TERM; echo '{"ready":true}'; while :; do sleep 0.05; done"#, r#"{"kill_grace_ms": 400}"#))
        .expect("spawn");
    let _guard = KillOnDrop(vec![s.pid]);
    assert_eq!(s.message(), r#"{"ready":true}"#);
    let start = Instant::now();
    drop(s.conn);
    std::thread::sleep(Duration::from_millis(200));
    assert!(exists(s.pid), "killed before the grace period ended");
    assert!(wait_until(Duration::from_secs(5), || !exists(s.pid)), "never killed");
    assert!(start.elapsed() >= Duration::from_millis(400), "killed after {:?}", start.elapsed());
}

#[test]
fn grandchildren_in_the_group_die_with_the_session() {
    let host = TestHost::start("grandchild");
    let mut s = host
        .spawn(&sh(r#"sleep 1000 & echo "{\"grandchild\":$!}"; trap '' TERM; exec cat"#, r#"{"kill_grace_ms": 300}"#))
        .expect("spawn");
    let message: serde_json::Value = serde_json::from_str(&s.message()).expect("json");
    let grandchild = message["grandchild"].as_i64().expect("pid") as i32;
    let _guard = KillOnDrop(vec![s.pid, grandchild]);
    assert!(exists(grandchild));
    drop(s.conn);
    assert!(wait_until(Duration::from_secs(5), || !exists(s.pid) && !exists(grandchild)), "processes left");
}

#[test]
fn grandchildren_that_left_the_group_die_with_the_session() {
    let host = TestHost::start("escapees");
    // One escapes with setsid and ignores SIGTERM; the backend exits at once.
    let script = r#"setsid sh -c 'trap "" TERM; exec sleep 1000' & echo "{\"escaped\":$!}"; exec cat"#;
    let mut s = host.spawn(&sh(script, r#"{"kill_grace_ms": 300}"#)).expect("spawn");
    let message: serde_json::Value = serde_json::from_str(&s.message()).expect("json");
    let escaped = message["escaped"].as_i64().expect("pid") as i32;
    let _guard = KillOnDrop(vec![s.pid, escaped]);
    assert!(wait_until(Duration::from_secs(5), || pgid(escaped) == Some(escaped)), "did not leave the group");
    drop(s.conn);
    assert!(wait_until(Duration::from_secs(5), || !exists(s.pid) && !exists(escaped)), "escaped process left");
}

#[test]
fn processes_left_by_a_host_that_died_are_ended_by_the_next_one() {
    // The identity of a process that has exited stands for a dead host.
    let mut gone = std::process::Command::new("true").spawn().expect("spawn true");
    let identity = mcp_bridge_core::procfs::identity(gone.id() as i32).expect("identity");
    gone.wait().expect("reap");
    // A backend's descendants are never in the host's own process group.
    let mut orphan = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .env("MCP_BRIDGE_SESSION", format!("{identity}.1"))
        .spawn()
        .expect("spawn orphan");
    let _guard = KillOnDrop(vec![orphan.id() as i32]);
    let _host = TestHost::start("sweep");
    let status = wait_child(&mut orphan, Duration::from_secs(5)).expect("the orphan was not ended");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
}

#[test]
fn requests_left_unanswered_by_a_crash_get_error_responses_before_the_exit() {
    let host = TestHost::start("unanswered");
    let mut s = host.spawn(&sh("read line; read line; exit 3", "")).expect("spawn");
    let mut d = Delivery::new(&host);
    assert_eq!(d.send(&s.id, br#"{"jsonrpc":"2.0","id":"a","method":"x"}"#).0, b'0');
    assert_eq!(d.send(&s.id, br#"{"jsonrpc":"2.0","id":2,"method":"y"}"#).0, b'0');
    let mut errors = Vec::new();
    let exit = loop {
        match s.frame() {
            Some((b'M', text)) => errors.push(serde_json::from_str::<serde_json::Value>(&text).expect("json")),
            Some((b'X', why)) => break why,
            other => panic!("unexpected frame {other:?}"),
        }
    };
    let ids: Vec<_> = errors.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, [serde_json::json!("a"), serde_json::json!(2)]);
    assert!(errors.iter().all(|e| e["error"]["code"] == -32000), "{errors:?}");
    assert!(exit.contains("exited with status 3"), "{exit}");
}

#[test]
fn requests_awaiting_a_response_are_bounded_and_the_next_is_busy_not_lost() {
    let host = TestHost::start("pending");
    // Reads everything, answers nothing.
    let s = host.spawn(&sh("while read -r line; do :; done", "")).expect("spawn");
    let _guard = KillOnDrop(vec![s.pid]);
    let mut d = Delivery::new(&host);
    for n in 0..10_000 {
        let (status, why) = d.send(&s.id, format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"ping"}}"#).as_bytes());
        assert_eq!(status, b'0', "request {n}: {why}");
    }
    let (status, why) = d.send(&s.id, br#"{"jsonrpc":"2.0","id":"one more","method":"ping"}"#);
    assert_eq!(status, b'3', "{why}");
    assert!(why.contains("10000 requests are already waiting for a response"), "{why}");
    // A notification expects no response, so it still goes through.
    assert_eq!(d.send(&s.id, br#"{"jsonrpc":"2.0","method":"notifications/x"}"#).0, b'0');
}

#[test]
fn an_older_session_ends_without_touching_newer_ones() {
    let host = TestHost::start("older");
    let old = host.spawn(&sh("exec cat", "")).expect("old");
    let mut newer: Vec<_> = (0..3).map(|_| host.spawn(&sh("exec cat", "")).expect("newer")).collect();
    let _guard = KillOnDrop(newer.iter().map(|s| s.pid).chain([old.pid]).collect());
    let start = Instant::now();
    let old_pid = old.pid;
    drop(old.conn);
    assert!(wait_until(Duration::from_secs(5), || !exists(old_pid)));
    assert!(start.elapsed() < Duration::from_millis(1500), "the old session took {:?}", start.elapsed());
    let mut d = Delivery::new(&host);
    for s in &mut newer {
        assert_eq!(d.send(&s.id, b"{\"still\":\"here\"}").0, b'0');
        assert_eq!(s.message(), r#"{"still":"here"}"#);
    }
}

#[test]
fn no_backend_inherits_another_sessions_descriptors() {
    let host = TestHost::start("fds");
    let first = host.spawn(&sh("exec cat", "")).expect("first");
    let second = host.spawn(&sh("exec sleep 1000", "")).expect("second");
    let _guard = KillOnDrop(vec![first.pid, second.pid]);
    let fds = || {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", second.pid))
            .expect("fd dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        fds
    };
    // A program opens files of its own while it starts (sleep reads its
    // locale); an inherited descriptor would stay open for good.
    wait_until(Duration::from_secs(10), || fds() == ["0", "1", "2"]);
    let fds = fds();
    assert_eq!(fds, ["0", "1", "2"], "the backend sees only its stdio");
}

#[test]
fn a_backend_that_exits_ends_the_session_after_its_last_output() {
    let host = TestHost::start("exit");
    let mut s = host.spawn(&sh(r#"echo '{"last":"words"}'; exit 3"#, "")).expect("spawn");
    assert_eq!(s.message(), r#"{"last":"words"}"#);
    match s.frame() {
        Some((b'X', why)) => assert!(why.contains("exited with status 3"), "{why}"),
        other => panic!("expected an exit frame, got {other:?}"),
    }
    assert!(s.frame().is_none(), "connection closed after the exit frame");
    let mut d = Delivery::new(&host);
    assert_eq!(d.send(&s.id, b"{}").0, b'1', "the id of an ended session is refused");
}

#[test]
fn output_that_is_not_json_is_dropped_and_stderr_becomes_notifications() {
    let host = TestHost::start("output");
    let mut s = host
        .spawn(&sh(r#"echo 'npm WARN something'; echo 'oops "quoted"' >&2; echo '{"ok":1}'; exec cat"#, ""))
        .expect("spawn");
    let seen = [s.message(), s.message()];
    // stdout and stderr are separate pipes: their relative order is not fixed.
    let (ok, stderr) = if seen[0].contains("stderr") { (&seen[1], &seen[0]) } else { (&seen[0], &seen[1]) };
    let stderr: serde_json::Value = serde_json::from_str(stderr).expect("json");
    assert_eq!(ok, r#"{"ok":1}"#);
    assert_eq!(stderr["method"], "notifications/stderr");
    assert_eq!(stderr["params"]["content"], "oops \"quoted\"");
}

#[test]
fn an_oversized_output_line_ends_the_session_without_a_partial_message() {
    let host = TestHost::start("oversize");
    let mut s = host
        .spawn(&sh(
            r#"echo '{"small":1}'; head -c 5000 /dev/zero | tr '\0' 'x'; echo; exec cat"#,
            r#"{"max_message_bytes": 1000}"#,
        ))
        .expect("spawn");
    assert_eq!(s.message(), r#"{"small":1}"#);
    match s.frame() {
        Some((b'X', why)) => assert!(why.contains("max_message_bytes (1000)"), "{why}"),
        other => panic!("expected an exit frame, got {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(5), || !exists(s.pid)));
}

#[test]
fn a_command_that_cannot_start_gets_a_short_reason_without_paths() {
    let host = TestHost::start("missing");
    let err = host.spawn(&spec("no-such-mcp-server", &[], "")).err().expect("must fail");
    assert_eq!(err, "the MCP server's command was not found");
    let err = host.spawn(&spec("/etc", &[], "")).err().expect("must fail");
    assert_eq!(err, "the MCP server's command cannot be run");
    let err = host.spawn(&spec("sh", &[], r#"{"cwd":"/no/such/dir"}"#)).err().expect("must fail");
    assert_eq!(err, "the MCP server's working directory is missing");
    let err = host.spawn("not json").err().expect("must fail");
    assert_eq!(err, "the bridge sent an invalid spawn request");
    let err = host.spawn(r#"{"command":"sh"}"#).err().expect("an incomplete request");
    assert_eq!(err, "the bridge sent an invalid spawn request");
    assert_eq!(host.stats()["sessions"], 0);
}

#[test]
fn the_backend_environment_is_minimal() {
    let host = TestHost::start("env");
    let mut s = host
        .spawn(&sh(
            r#"printf '{"env":"%s"}\n' "$(env | cut -d= -f1 | sort | tr '\n' ' ')"; exec cat"#,
            r#"{"env":{"EXTRA":"1"}}"#,
        ))
        .expect("spawn");
    let message: serde_json::Value = serde_json::from_str(&s.message()).expect("json");
    let names: Vec<&str> = message["env"].as_str().expect("env").split_whitespace().collect();
    // sh adds PWD (and SHLVL/_ depending on the shell) itself.
    let ours: Vec<&str> = names.into_iter().filter(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n)).collect();
    assert_eq!(ours, ["EXTRA", "HOME", "LANG", "MCP_BRIDGE_SESSION", "PATH"]);
}

#[test]
fn stopping_the_host_ends_every_session_and_removes_its_socket() {
    let mut host = TestHost::start("stop");
    let mut sessions: Vec<_> = (0..3)
        .map(|_| host.spawn(&sh("trap '' TERM; exec sleep 1000", r#"{"kill_grace_ms": 200}"#)).expect("spawn"))
        .collect();
    let pids: Vec<i32> = sessions.iter().map(|s| s.pid).collect();
    let _guard = KillOnDrop(pids.clone());
    let socket = host.host().socket_path().to_path_buf();
    host.stop();
    for s in &mut sessions {
        match s.frame() {
            Some((b'X', why)) => assert!(why.contains("shutting down"), "{why}"),
            other => panic!("expected an exit frame, got {other:?}"),
        }
    }
    assert!(pids.iter().all(|&p| !exists(p)), "backends left after the host exited");
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn a_host_that_stops_at_once_still_removes_its_directory_and_those_it_swept() {
    use mcp_bridge_core::runtime::SOCKET_NAME;
    let mut dead = None;
    let mut host = TestHost::start_after("swept", |layout| {
        // A host killed outright: its socket left behind, refusing.
        let (token, staging) = layout.create_host_dir().expect("create");
        let dir = layout.publish(&staging, &token).expect("publish");
        drop(std::os::unix::net::UnixListener::bind(dir.join(SOCKET_NAME)).expect("bind"));
        dead = Some(dir);
    });
    let dead = dead.expect("prepared");
    let own = host.host_dir();
    assert_eq!(host.stats()["sessions"], 0, "the host serves");
    // Well within the grace a retired directory is given.
    host.stop();
    assert!(!own.exists(), "the host's own directory is left");
    assert!(!dead.exists(), "the directory of the dead host it swept is left");
}

#[test]
fn when_the_worker_is_killed_the_host_and_its_backends_die_too() {
    let out = std::env::temp_dir().join(format!("mcp-host-test-worker-{}.pids", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let dir = std::env::temp_dir().join(format!("mcp-host-test-worker-{}", std::process::id()));
    let mut worker = std::process::Command::new(helper("worker_stand_in"))
        .arg(HOST_BIN)
        .arg(&dir)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the stand-in worker");
    assert!(wait_until(Duration::from_secs(10), || out.exists()), "the stand-in never reported its pids");
    let text = std::fs::read_to_string(&out).expect("pids");
    let _ = std::fs::remove_file(&out);
    let pids: Vec<i32> = text.split(' ').map(|p| p.parse().expect("pid")).collect();
    let (host_pid, backend_pid) = (pids[0], pids[1]);
    let _guard = KillOnDrop(vec![host_pid, backend_pid]);
    assert!(exists(host_pid) && exists(backend_pid));
    worker.kill().expect("SIGKILL the worker");
    worker.wait().expect("reap the worker");
    assert!(
        wait_until(Duration::from_secs(3), || !exists(host_pid) && !exists(backend_pid)),
        "host {host_pid} or backend {backend_pid} outlived the worker"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_silent_session_gets_keepalive_frames_and_messages_still_flow() {
    let host = TestHost::start("keepalive");
    let mut s = host.spawn(&sh("exec cat", r#"{"keepalive_interval_ms": 100}"#)).expect("spawn");
    let start = Instant::now();
    let mut keepalives = 0;
    while start.elapsed() < Duration::from_millis(450) {
        match s.frame() {
            Some((b'K', payload)) => {
                assert!(payload.is_empty());
                keepalives += 1;
            }
            other => panic!("expected a keepalive, got {other:?}"),
        }
    }
    assert!((3..=5).contains(&keepalives), "{keepalives} keepalives in 450 ms at 100 ms");
    let mut d = Delivery::new(&host);
    assert_eq!(d.send(&s.id, b"{\"x\":1}").0, b'0');
    loop {
        match s.frame() {
            Some((b'K', _)) => continue,
            Some((b'M', m)) => break assert_eq!(m, r#"{"x":1}"#),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_spawn_that_reaches_a_host_shutting_down_is_told_it_is_unavailable() {
    let mut host = TestHost::start("unavailable");
    let early = host.connect();
    // Let the host accept it before it stops listening.
    std::thread::sleep(Duration::from_millis(100));
    let host_pid = host.end_sessions();
    let _host_guard = KillOnDrop(vec![host_pid]);
    std::thread::sleep(Duration::from_millis(100));
    let err = spawn_on(early, &sh("exec cat", "")).err().expect("refused");
    assert_eq!(err, "unavailable: the worker is shutting down");
}

#[test]
fn ending_sessions_on_request_keeps_the_host_until_its_worker_exits() {
    let mut host = TestHost::start("end");
    let mut s = host.spawn(&sh("exec sleep 1000", r#"{"kill_grace_ms": 200}"#)).expect("spawn");
    let _guard = KillOnDrop(vec![s.pid]);
    let socket = host.host().socket_path().to_path_buf();
    let host_pid = host.end_sessions();
    let _host_guard = KillOnDrop(vec![host_pid]);
    match s.frame() {
        Some((b'X', why)) => assert!(why.contains("shutting down"), "{why}"),
        other => panic!("expected an exit frame, got {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(3), || !exists(s.pid)), "backend left");
    // Retired: a plain file in its place, so connects are refused (never
    // ENOENT, which nginx logs as [crit]) and workers do not even try.
    use std::os::unix::fs::FileTypeExt;
    let refused = std::os::unix::net::UnixStream::connect(&socket).err().map(|e| e.kind());
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused), "new sessions are refused");
    assert!(!std::fs::symlink_metadata(&socket).expect("still there").file_type().is_socket());
    std::thread::sleep(Duration::from_millis(200));
    let mut status = 0;
    // SAFETY: polling our own child without blocking.
    let reaped = unsafe { libc::waitpid(host_pid, &mut status, libc::WNOHANG) };
    assert_eq!(reaped, 0, "the host must stay until its worker exits");
}

#[test]
fn only_workers_of_the_same_nginx_may_connect() {
    use std::os::unix::fs::PermissionsExt;
    let host = TestHost::start("peers");
    // The test process plays the worker.
    assert_eq!(host.stats()["sessions"], 0, "the worker is served");
    let socket = host.host().socket_path().to_path_buf();
    let probe = |uid: Option<u32>| {
        let mut cmd = std::process::Command::new(helper("probe"));
        cmd.arg(&socket).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        if let Some(uid) = uid {
            cmd.uid(uid);
        }
        match cmd.status().expect("run the probe").code() {
            Some(10) => "answered",
            Some(11) => "closed",
            other => panic!("probe failed: {other:?}"),
        }
    };
    // Same user, but a child of the worker, as every backend is a
    // descendant of the host: not a worker.
    assert_eq!(probe(None), "closed", "a process of the same user that is no worker is refused");
    if !require_root("connecting as another user") {
        return;
    }
    // Open the way through the file system, so only the host's own check
    // stands between another user and the socket.
    std::fs::set_permissions(&host.dir, std::fs::Permissions::from_mode(0o711)).expect("chmod base");
    std::fs::set_permissions(host.host_dir(), std::fs::Permissions::from_mode(0o711)).expect("chmod dir");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).expect("chmod socket");
    assert_eq!(probe(Some(65534)), "closed", "another uid is refused");
}

#[test]
fn processes_in_another_pid_namespace_are_never_taken_for_orphans() {
    if !require_root("creating a PID namespace") {
        return;
    }
    let namespace = mcp_bridge_core::procfs::pid_namespace(std::process::id() as i32).expect("our namespace");
    // Markers naming pid 1 with a start time that is not our init's: from
    // our namespace, the marks of a host that is gone.
    let start_in_new_namespace = |marker: &str| {
        std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "env"])
            .arg(format!("MCP_BRIDGE_SESSION={marker}"))
            .args(["sleep", "1000"])
            .process_group(0)
            .spawn()
            .expect("unshare (util-linux)")
    };
    let mut legacy = start_in_new_namespace("1-1.1");
    let mut forged = start_in_new_namespace(&format!("{namespace}/1-1.1"));
    let mut here = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .env("MCP_BRIDGE_SESSION", format!("{namespace}/1-1.1"))
        .spawn()
        .expect("spawn");
    let sleepers: Vec<i32> = [&legacy, &forged]
        .iter()
        .map(|u| {
            let mut kids = Vec::new();
            wait_until(Duration::from_secs(5), || {
                kids = children(u.id() as i32);
                !kids.is_empty()
            });
            *kids.first().expect("the unshared sleep")
        })
        .collect();
    let _guard = KillOnDrop(sleepers.iter().copied().chain([legacy.id() as i32, forged.id() as i32]).collect());
    let _here_guard = KillOnDrop(vec![here.id() as i32]);
    for &pid in &sleepers {
        assert!(
            wait_until(Duration::from_secs(5), || mcp_bridge_core::procfs::environ_var(pid, "MCP_BRIDGE_SESSION")
                .is_some()),
            "the sleeper {pid} never carried its marker"
        );
        assert_ne!(mcp_bridge_core::procfs::pid_namespace(pid), Some(namespace), "{pid} is in a namespace of its own");
    }
    let _host = TestHost::start("namespaces");
    // The host's first search ends the one in our namespace: proof that it
    // looked, and that it would have ended the others without the check.
    let status = wait_child(&mut here, Duration::from_secs(5)).expect("the marked process here was not ended");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
    // Orphans get SIGKILL 500 ms after SIGTERM (which a namespace's init,
    // as these are, does not take from outside): wait past that.
    std::thread::sleep(Duration::from_millis(1500));
    for &pid in &sleepers {
        assert!(exists(pid), "process {pid} of another PID namespace was signalled");
    }
    for u in [&mut legacy, &mut forged] {
        let _ = u.kill();
        let _ = u.wait();
    }
}

#[test]
fn a_private_session_home_exists_while_the_session_lives_and_goes_with_it() {
    let host = TestHost::start("home");
    let script =
        r#"touch "$HOME/.cache" "$TMPDIR/x" && printf '{"home":"%s","tmp":"%s"}\n' "$HOME" "$TMPDIR"; exec cat"#;
    let mut s = host.spawn(&sh(script, r#"{"session_home": true}"#)).expect("spawn");
    let message: serde_json::Value = serde_json::from_str(&s.message()).expect("json");
    let home = std::path::PathBuf::from(message["home"].as_str().expect("home"));
    assert!(home.starts_with(host.host_dir()), "{home:?} in the host's private directory");
    assert_eq!(message["tmp"].as_str(), home.join("tmp").to_str());
    let other = host.spawn(&sh(script, r#"{"session_home": true}"#)).expect("spawn");
    let _guard = KillOnDrop(vec![s.pid, other.pid]);
    drop(s.conn);
    assert!(wait_until(Duration::from_secs(5), || !home.exists()), "the session home outlived its session");
}

#[test]
fn frame_headers_alone_neither_allocate_nor_pass_their_kinds_limit() {
    let host = TestHost::start("frames");
    let host_pid = host.host().pid();
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).expect("status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).expect("kB").parse().expect("number")
    };
    let before = rss();
    // Four deliveries announcing 60 MiB each, of which nothing arrives.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = host.connect();
        let mut header = vec![b'D'];
        header.extend_from_slice(&(60u32 << 20).to_be_bytes());
        std::io::Write::write_all(&mut conn, &header).expect("header");
        held.push(conn);
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = rss().saturating_sub(before);
    assert!(grown < 8 * 1024, "the host grew by {grown} kB for four empty frames");
    // A spawn request claiming 2 MiB is refused on its header.
    let mut conn = host.connect();
    let mut header = vec![b'S'];
    header.extend_from_slice(&(2u32 << 20).to_be_bytes());
    std::io::Write::write_all(&mut conn, &header).expect("header");
    assert!(read_frame(&mut conn).is_none(), "the connection is closed");
    // The host still serves.
    assert_eq!(host.stats()["sessions"], 0);
}

#[test]
fn a_session_answers_only_requests_of_its_own_route_and_consumer() {
    let host = TestHost::start("binding");
    let mut s = spawn_as(host.connect(), "route#1", "alice", &sh("exec cat", "")).expect("spawn");
    let _guard = KillOnDrop(vec![s.pid]);
    let mut d = Delivery::new(&host);
    let (status, why) = d.send_as(&s.id, "route#2", "alice", b"{}");
    assert_eq!((status, why.as_str()), (b'1', "session not found"), "another route");
    assert_eq!(d.send_as(&s.id, "route#1", "bob", b"{}").0, b'1', "another consumer");
    assert_eq!(d.send_as(&s.id, "route#1", "", b"{}").0, b'1', "no consumer");
    assert_eq!(d.send_as(&s.id, "route#1", "alice", b"{\"ok\":1}").0, b'0');
    assert_eq!(s.message(), r#"{"ok":1}"#);
}

#[test]
fn a_pooled_request_connection_handed_to_a_new_session_becomes_its_connection() {
    let host = TestHost::start("reuse");
    let first = host.spawn(&sh("exec cat", "")).expect("spawn");
    let mut d = Delivery::new(&host);
    assert_eq!(d.send(&first.id, b"{}").0, b'0');
    // The same connection now opens a session, as a proxy that pools
    // connections by path alone would hand it over.
    let mut second = spawn_on(d.conn, &sh("exec cat", "")).expect("a session on a reused connection");
    let _guard = KillOnDrop(vec![first.pid, second.pid]);
    let mut d = Delivery::new(&host);
    assert_eq!(d.send(&second.id, b"{\"second\":1}").0, b'0');
    assert_eq!(second.message(), r#"{"second":1}"#);
}

#[test]
fn an_operator_ends_one_session_by_the_start_of_its_id_and_the_status_lists_the_rest() {
    let host = TestHost::start("operator");
    let mut doomed = spawn_as(host.connect(), "route#7", "carol", &sh("exec cat", "")).expect("spawn");
    let other = host.spawn(&sh("exec cat", "")).expect("spawn");
    let _guard = KillOnDrop(vec![doomed.pid, other.pid]);
    let live = host.stats()["live"].clone();
    let listed: Vec<_> =
        live.as_array().expect("list").iter().map(|s| s["backend_pid"].as_i64().unwrap_or(0)).collect();
    assert_eq!(listed, [doomed.pid as i64, other.pid as i64]);
    let entry = &live[0];
    assert_eq!(entry["id_prefix"].as_str(), Some(&doomed.id[..24]), "the id is shown only in part");
    assert_eq!((entry["route"].as_str(), entry["consumer"].as_str()), (Some("route#7"), Some("carol")));
    assert_eq!(entry["transport"], "sse");
    let end = |prefix: &str| {
        let mut conn = host.connect();
        write_frame(&mut conn, b'E', prefix.as_bytes());
        read_frame(&mut conn).expect("ack").1[0]
    };
    assert_eq!(end(&doomed.id[..12]), b'1', "too short a prefix ends nothing");
    assert_eq!(end(&format!("{}ffffffff", &doomed.id[..16])), b'1');
    assert_eq!(end(&doomed.id[..24]), b'0');
    match doomed.frame() {
        Some((b'X', why)) => assert!(why.contains("ended by an operator"), "{why}"),
        other => panic!("expected an exit frame, got {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(5), || !exists(doomed.pid)));
    assert!(exists(other.pid), "the other session lives on");
    assert_eq!(host.stats()["sessions"], 1);
}

#[test]
fn a_watching_worker_hears_of_sessions_and_their_traffic() {
    let host = TestHost::start("events");
    let mut watch = host.connect();
    write_frame(&mut watch, b'W', b"");
    // Let the host register the watcher before anything happens.
    std::thread::sleep(Duration::from_millis(100));
    let mut s = spawn_as(host.connect(), "route#3", "dave", &sh("exec cat", "")).expect("spawn");
    let mut d = Delivery::new(&host);
    assert_eq!(d.send_as(&s.id, "route#3", "dave", b"{\"n\":12345}").0, b'0');
    assert_eq!(s.message(), r#"{"n":12345}"#);
    let pid = s.pid;
    let conn = s.conn.try_clone().expect("clone");
    drop(conn);
    s.conn.shutdown(std::net::Shutdown::Both).expect("close");
    assert!(wait_until(Duration::from_secs(5), || !exists(pid)));
    let mut events: Vec<Vec<String>> = Vec::new();
    while events.len() < 3 {
        let (kind, payload) = read_frame(&mut watch).expect("an event");
        assert_eq!(kind, b'V');
        events.push(String::from_utf8(payload).expect("utf8").split('\t').map(String::from).collect());
    }
    assert_eq!(events[0], ["started", "route#3", "dave", "sse", &s.id]);
    assert_eq!(events[1], ["traffic", "route#3", "1", "11", "1", "11"], "counts go out before the end");
    assert_eq!(events[2][..6], ["ended", "route#3", "dave", "sse", &s.id, "client_closed"]);
    let teardown_ms: f64 = events[2][6].parse().expect("milliseconds");
    assert!(teardown_ms >= 0.0);
}

/// (soft, hard) of the limit named `name` ("Max cpu time", ...) of `pid`.
fn rlimit_of(pid: i32, name: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
    let mut values = line[name.len()..].split_whitespace();
    (values.next().expect("soft").to_string(), values.next().expect("hard").to_string())
}

const LIMITS: &str = r#"{"limits": {"memory_mb": 64, "processes": 500, "cpu_seconds": 7, "open_files": 40}}"#;

#[test]
fn a_backend_runs_under_its_routes_limits_and_otherwise_under_the_hosts() {
    let host = TestHost::start("limits");
    let limited = host.spawn(&sh("exec sleep 1000", LIMITS)).expect("limited");
    let plain = host.spawn(&sh("exec sleep 1000", "")).expect("plain");
    let _guard = KillOnDrop(vec![limited.pid, plain.pid]);
    // Once sleep runs (exec is done), its limits are the ones it keeps.
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{}/comm", limited.pid)).is_ok_and(|c| c.trim() == "sleep")
    }));
    let pair = |soft: &str, hard: &str| (soft.to_string(), hard.to_string());
    assert_eq!(rlimit_of(limited.pid, "Max address space"), pair("67108864", "67108864"));
    assert_eq!(rlimit_of(limited.pid, "Max processes"), pair("500", "500"));
    assert_eq!(rlimit_of(limited.pid, "Max cpu time"), pair("7", "8"), "SIGKILL one CPU second after SIGXCPU");
    assert_eq!(rlimit_of(limited.pid, "Max open files"), pair("40", "40"));
    // Without limits: what the host was started with (the test's own),
    // the descriptor limit included, which the host raises for itself only.
    let me = std::process::id() as i32;
    for name in ["Max address space", "Max processes", "Max cpu time", "Max open files"] {
        assert_eq!(rlimit_of(plain.pid, name), rlimit_of(me, name), "{name}");
    }
}

#[test]
fn a_memory_limit_too_small_to_start_the_backend_ends_its_session_at_once() {
    let host = TestHost::start("limits-start");
    let mut s = host.spawn(&sh("exec cat", r#"{"limits": {"memory_mb": 1}}"#)).expect("spawned");
    let _guard = KillOnDrop(vec![s.pid]);
    // The dynamic loader cannot map the C library, says so and exits.
    let stderr = s.message();
    assert!(
        stderr.contains("notifications/stderr") && stderr.contains("error while loading shared libraries"),
        "{stderr}"
    );
    match s.frame() {
        Some((b'X', why)) => assert_eq!(why, "backend exited with status 127 on reaching its memory limit"),
        other => panic!("expected an exit frame, got {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(5), || !exists(s.pid)));
}

/// Events of a watch, as tab-separated fields, until `done` says enough.
fn events_until(
    watch: &mut std::os::unix::net::UnixStream,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<Vec<String>> {
    let mut events = Vec::new();
    loop {
        let (kind, payload) = read_frame(watch).expect("an event");
        if kind != b'V' {
            continue;
        }
        let event: Vec<String> = String::from_utf8(payload).expect("utf8").split('\t').map(String::from).collect();
        let last = done(&event);
        events.push(event);
        if last {
            return events;
        }
    }
}

#[test]
fn a_backend_over_its_cpu_limit_ends_its_session_which_is_told_as_limit_cpu() {
    let host = TestHost::start("limit-cpu");
    let mut watch = host.connect();
    write_frame(&mut watch, b'W', b"");
    std::thread::sleep(Duration::from_millis(100));
    let spin = r#"{"limits": {"cpu_seconds": 1}}"#;
    let cases = [
        // SIGXCPU's default action ends it at the soft limit.
        ("echo '{\"spinning\":1}'; while :; do :; done", "killed by signal 24 on reaching its CPU time limit"),
        // Ignoring SIGXCPU buys one CPU second, then SIGKILL.
        (
            "trap '' XCPU; echo '{\"spinning\":1}'; while :; do :; done",
            "killed by signal 9 on reaching its CPU time limit",
        ),
    ];
    for (script, expected) in cases {
        let mut other = host.spawn(&sh("exec cat", "")).expect("other session");
        let mut hog = host.spawn(&sh(script, spin)).expect("hog");
        let _guard = KillOnDrop(vec![hog.pid, other.pid]);
        assert_eq!(hog.message(), r#"{"spinning":1}"#);
        // While it spins, the other session keeps answering (no speed
        // claim: only that it is not starved).
        let mut d = Delivery::new(&host);
        let mut answered = 0;
        while exists(hog.pid) && pgid(hog.pid).is_some() {
            let asked = Instant::now();
            assert_eq!(d.send(&other.id, format!("{{\"n\":{answered}}}").as_bytes()).0, b'0');
            assert_eq!(other.message(), format!("{{\"n\":{answered}}}"));
            assert!(asked.elapsed() < Duration::from_secs(2), "a round trip took {:?}", asked.elapsed());
            answered += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(answered > 0, "the other session answered while the hog ran");
        match hog.frame() {
            Some((b'X', why)) => assert_eq!(why, format!("backend {expected}")),
            other => panic!("expected an exit frame, got {other:?}"),
        }
        let events = events_until(&mut watch, |e| e[0] == "ended" && e[4] == hog.id);
        let ended = events.last().expect("ended");
        assert_eq!(ended[5], "limit_cpu", "{ended:?}");
        assert!(wait_until(Duration::from_secs(5), || !exists(hog.pid)), "nothing of the hog is left");
        drop(other.conn);
        assert!(wait_until(Duration::from_secs(5), || !exists(other.pid)));
    }
    // A backend killed by someone else is not said to have hit its limit.
    let s = host.spawn(&sh("exec sleep 1000", spin)).expect("sleeper");
    let _guard = KillOnDrop(vec![s.pid]);
    // SAFETY: kill with a positive pid.
    unsafe { libc::kill(s.pid, libc::SIGKILL) };
    let events = events_until(&mut watch, |e| e[0] == "ended" && e[4] == s.id);
    assert_eq!(events.last().expect("ended")[5], "backend_exited");
    assert_eq!(host.stats()["sessions"], 0);
}
