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

fn beside_me(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
    let dir = exe.parent().ok_or("this program has no directory")?;
    Ok(dir.join(name))
}

fn serve(mut s: Serve) -> Result<i32, String> {
    let native = beside_me("libmcp_bridge_native.so")?;
    let host = beside_me(mcp_bridge_core::launcher::HOST_PROGRAM)?;
    for needed in [&native, &host] {
        if !needed.exists() {
            return Err(format!("{} is missing: build the workspace with `cargo build --release`", needed.display()));
        }
    }
    if s.command.is_empty() {
        let demo = beside_me("mcp-fixture")?;
        if !demo.exists() {
            return Err(format!("no command given and the demo server {} is missing", demo.display()));
        }
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
    let route = nginx::route_lua(&s, &s.command);
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
