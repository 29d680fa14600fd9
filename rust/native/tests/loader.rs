//! Loads the built module into LuaJIT (Debian's `luajit2` package) and runs
//! `loader.lua` against it, as mlua's own module tests do.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf()
}

/// Whether `pid` is running. Once luajit exits, the host's parent is init,
/// which may take its time to reap: a zombie has exited.
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(") ").next().and_then(|rest| rest.chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

/// The build command for the profile these tests were built with.
fn build_hint() -> &'static str {
    if cfg!(debug_assertions) {
        "cargo build --workspace"
    } else {
        "cargo build --release --workspace"
    }
}

#[test]
fn the_module_loads_in_luajit_and_behaves() {
    let target = target_dir();
    // `cargo test` leaves the library in deps/, `cargo build` beside the binaries.
    let dir = [target.clone(), target.join("deps")]
        .into_iter()
        .find(|d| d.join("libmcp_bridge_native.so").exists())
        .unwrap_or_else(|| panic!("libmcp_bridge_native.so missing in {}: run {}", target.display(), build_hint()));
    let host = target.join("mcp-bridge-host");
    assert!(host.exists(), "{} missing: run {}", host.display(), build_hint());
    let runtime_dir = std::env::temp_dir().join(format!("mcp-native-loader-{}", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/loader.lua");
    let out = Command::new("luajit")
        .arg(script)
        .arg(&dir)
        .arg(&runtime_dir)
        .arg(&host)
        .output()
        .expect("run luajit (Debian package luajit2)");
    assert!(
        out.status.success(),
        "loader.lua failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let host_pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("host pid printed");
    let start = Instant::now();
    while running(host_pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!running(host_pid), "host {host_pid} outlived shutdown");
    // The host removes its directory as it exits.
    let gone = |t: &Instant| {
        mcp_bridge_core::runtime::Layout::new(Some(runtime_dir.clone())).host_tokens().is_empty()
            || t.elapsed() > Duration::from_secs(5)
    };
    let start = Instant::now();
    while !gone(&start) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = mcp_bridge_core::runtime::Layout::new(Some(runtime_dir.clone())).host_tokens();
    assert!(left.is_empty(), "host directories left: {left:?}");
    let _ = std::fs::remove_dir_all(&runtime_dir);
}
