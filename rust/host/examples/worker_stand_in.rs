//! Stand-in for an nginx worker, for the host's tests (not an example of
//! use): `worker_stand_in <host program> <runtime dir> <pid file>` starts a
//! host and a session, writes their pids to the pid file, then waits to be
//! killed.

use mcp_bridge_core::launcher::{Host, LaunchConfig};
use mcp_bridge_core::runtime::Layout;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [program, dir, out] = &args[..] else {
        panic!("usage: worker_stand_in <host program> <runtime dir> <pid file>")
    };
    let config =
        LaunchConfig { program: program.clone(), layout: Layout::new(Some(dir.clone())), log_level: "info".into() };
    let host = Host::launch(&config).expect("launch host");
    let spec = r#"{"command":"sh","args":["-c","sleep 1000 & exec sleep 1001"],"env":{},"kill_grace_ms":2000,
        "max_message_bytes":4096,"stderr":"notify","keepalive_interval_ms":0,"session_home":false,
        "session_idle_timeout_ms":60000,"session_max_lifetime_ms":60000,"restart_on_crash":false,"max_restarts":3,"restart_window_ms":60000,"pool_min_idle":0,"pool_max_per_key":1,
        "pool_max_per_worker":1,"pool_idle_timeout_ms":1000,"pool_max_requests":1,"pool_max_age_ms":1000,"pool_wait_ms":1000,"input_wait_ms":60000,"max_parked_per_consumer":16,"max_parked_per_worker":256,
        "limits":{"memory_mb":null,"processes":null,"cpu_seconds":null,"open_files":null}}"#;
    let mut conn = std::os::unix::net::UnixStream::connect(host.socket_path()).expect("connect");
    let binding = b"\x00\x05test\n";
    let mut frame = vec![b'S'];
    frame.extend_from_slice(&((binding.len() + spec.len()) as u32).to_be_bytes());
    frame.extend_from_slice(binding);
    frame.extend_from_slice(spec.as_bytes());
    conn.write_all(&frame).expect("spawn");
    let mut header = [0u8; 5];
    conn.read_exact(&mut header).expect("ready");
    assert_eq!(header[0], b'R', "the host did not start the session");
    let mut ready = vec![0u8; u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize];
    conn.read_exact(&mut ready).expect("ready payload");
    let ready = String::from_utf8(ready).expect("utf8");
    let backend = ready.split_once(' ').expect("id and pid").1;
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, format!("{} {backend}", host.pid())).expect("write pids");
    std::fs::rename(&tmp, out).expect("publish pids");
    std::thread::sleep(Duration::from_secs(60));
}
