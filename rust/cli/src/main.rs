//! `mcp-bridge serve`: a standalone MCP gateway. Writes an nginx
//! configuration into a private prefix and runs Debian's nginx with the lua
//! module in the foreground, with mcp-bridge's Lua code and native module.

mod nginx;
mod options;
mod supervise;

use options::{Action, Serve, USAGE};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match options::parse(&args) {
        Ok(Action::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Action::Version) => {
            println!("mcp-bridge {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Action::Serve(s)) => match serve(*s) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("mcp-bridge: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            // The mistake, and where to look: the whole usage would bury it.
            eprintln!("mcp-bridge: {e}\n(see mcp-bridge serve --help)");
            ExitCode::from(2)
        }
    }
}

/// The address to listen on, and where to probe that nginx is up.
fn listen_address(listen: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let addr = listen
        .to_socket_addrs()
        .map_err(|e| format!("--listen {listen}: {e} (expected HOST:PORT such as 127.0.0.1:9080)"))?
        .next()
        .ok_or_else(|| format!("--listen {listen}: no address"))?;
    let mut probe = addr;
    if addr.ip().is_unspecified() {
        probe.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    Ok((addr, probe))
}

fn my_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
    Ok(exe.parent().ok_or("this program has no directory")?.to_path_buf())
}

/// What to do about a file missing beside this program: in a Cargo target
/// directory (target/<profile>/, its parent holds CACHEDIR.TAG), the build
/// command of that profile.
fn build_hint(dir: &Path) -> String {
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let cargo = dir.parent().is_some_and(|t| t.join("CACHEDIR.TAG").exists());
    match (cargo, profile) {
        (true, "debug") => "build the workspace with `cargo build --workspace`".into(),
        (true, "release") => "build the workspace with `cargo build --release --workspace`".into(),
        (true, other) => format!("build the workspace with `cargo build --profile {other} --workspace`"),
        (false, _) => format!("install it beside mcp-bridge in {}", dir.display()),
    }
}

/// `name`, beside this program.
fn beside_me(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    if path.exists() {
        return Ok(path);
    }
    // A `cargo test` builds the native module (a cdylib) in deps/ and,
    // unlike `cargo build`, leaves it there.
    if name.ends_with(".so") && dir.join("deps").join(name).exists() {
        return Ok(dir.join("deps").join(name));
    }
    Err(format!("{} is missing: {}", path.display(), build_hint(dir)))
}

fn serve(mut s: Serve) -> Result<i32, String> {
    let bin = my_dir()?;
    let native = beside_me(&bin, "libmcp_bridge_native.so")?;
    let host = beside_me(&bin, mcp_bridge_core::launcher::HOST_PROGRAM)?;
    if s.command.is_empty() {
        let demo = beside_me(&bin, "mcp-fixture").map_err(|e| format!("no command given, and the demo server {e}"))?;
        s.command = vec![demo.to_string_lossy().into_owned(), "--demo".into()];
    }
    // nginx and the hosts inherit it: two descriptors per session in a
    // worker, about four in its host.
    if let Err(e) = mcp_bridge_core::procs::raise_descriptor_limit() {
        eprintln!("mcp-bridge: cannot raise the descriptor limit ({e}); sessions may be refused early");
    }
    let (addr, probe) = listen_address(&s.listen)?;
    match TcpListener::bind(addr) {
        Ok(l) => drop(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(format!("{} is already in use: stop what listens there or choose another --listen", s.listen))
        }
        Err(e) => return Err(format!("cannot listen on {}: {e}", s.listen)),
    }
    let nginx = nginx::locate(s.nginx.as_deref())?;

    let (prefix, temporary) = match &s.prefix {
        Some(p) => (p.clone(), false),
        None => {
            let template = std::env::temp_dir().join("mcp-bridge-serve-XXXXXX");
            let dir = nix::unistd::mkdtemp(&template).map_err(|e| format!("cannot create a temporary prefix: {e}"))?;
            (dir, true)
        }
    };
    let libdir = native.parent().unwrap_or(Path::new(".")).to_path_buf();
    let config = nginx::config(&s, &nginx, &prefix, &libdir);
    let route = nginx::route_lua(&s, &s.command, &host);
    let result = nginx::write_prefix(&prefix, &config, &route).and_then(|()| {
        let banner = format!(
            "mcp-bridge: bridging `{}` with {} worker(s)\nmcp-bridge: SSE endpoint http://{}{}/sse (Ctrl-C to stop)",
            s.command.join(" "),
            s.workers,
            s.listen,
            s.base_uri
        );
        supervise::run(&nginx.binary, &prefix, probe, DRAIN, || println!("{banner}"))
    });
    if temporary {
        let _ = std::fs::remove_dir_all(&prefix);
    }
    result
}

/// How long hosts and backends get to end once nginx has exited: a host
/// that shuts down gives its backends at most 500 ms between SIGTERM and
/// SIGKILL whatever --kill-grace-ms says (docs/architecture.md, Shutdown),
/// then a margin for reaping.
const DRAIN: Duration = Duration::from_millis(500 + 5000);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_names_the_build_command_of_its_profile() {
        let target = std::env::temp_dir().join(format!("mcp-bridge-hint-test-{}", std::process::id()));
        std::fs::create_dir_all(target.join("debug")).expect("mkdir");
        std::fs::write(target.join("CACHEDIR.TAG"), "").expect("tag");
        let err = beside_me(&target.join("debug"), "mcp-bridge-host").expect_err("missing");
        assert!(err.ends_with("debug/mcp-bridge-host is missing: build the workspace with `cargo build --workspace`"));
        assert!(build_hint(&target.join("release")).contains("`cargo build --release --workspace`"));
        assert!(build_hint(&target.join("fast")).contains("`cargo build --profile fast --workspace`"));
        assert_eq!(build_hint(Path::new("/usr/local/bin")), "install it beside mcp-bridge in /usr/local/bin");
        // Where a `cargo test` leaves the native module.
        std::fs::create_dir_all(target.join("debug/deps")).expect("mkdir");
        std::fs::write(target.join("debug/deps/libx.so"), "").expect("so");
        assert_eq!(beside_me(&target.join("debug"), "libx.so"), Ok(target.join("debug/deps/libx.so")));
        let _ = std::fs::remove_dir_all(&target);
    }
}
