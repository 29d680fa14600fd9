//! `mcp-bridge serve`: a standalone MCP gateway. Writes an nginx
//! configuration into a private prefix and runs Debian's nginx with the lua
//! module in the foreground, with mcp-bridge's Lua code and native module.

mod nginx;
mod options;
mod supervise;
mod user;

use options::{Action, Serve, USAGE};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use user::RunAs;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match options::parse(&args, &|k| std::env::var_os(k)) {
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

/// A --prefix of the user's, made absolute (the runtime directory must
/// be) and created if missing, or a fresh temporary one; refused before
/// anything is created if the hosts' sockets would not fit under it.
/// Others may only pass through a prefix we create (to the parts the
/// workers use), and only when the workers run as someone else.
fn make_prefix(given: Option<&Path>, run_as: &RunAs) -> Result<(PathBuf, bool), String> {
    let mode = if run_as.is_other_user() { 0o711 } else { 0o700 };
    let set_mode = |dir: &Path| {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))
    };
    match given {
        Some(p) => {
            let p = std::path::absolute(p).map_err(|e| format!("--prefix {}: {e}", p.display()))?;
            nginx::check_socket_room(&nginx::runtime_dir(&p), run_as.uid)
                .map_err(|e| format!("--prefix {e}: choose a shorter one"))?;
            if !p.exists() {
                std::fs::create_dir_all(&p).map_err(|e| format!("cannot create --prefix {}: {e}", p.display()))?;
                set_mode(&p)?;
            }
            Ok((p, false))
        }
        None => {
            let tmp = std::path::absolute(std::env::temp_dir())
                .map_err(|e| format!("the temporary directory {}: {e}", std::env::temp_dir().display()))?;
            // The name mkdtemp makes is as long as its template.
            let template = tmp.join("mcp-bridge-serve-XXXXXX");
            nginx::check_socket_room(&nginx::runtime_dir(&template), run_as.uid)
                .map_err(|e| format!("{e}: set TMPDIR or --prefix to a shorter directory"))?;
            let dir = nix::unistd::mkdtemp(&template).map_err(|e| format!("cannot create a temporary prefix: {e}"))?;
            set_mode(&dir)?;
            Ok((dir, true))
        }
    }
}

/// What the workers' user must reach, unless it is us: its runtime
/// directory (so every directory above it), the host program, and the
/// backend's command and directory when they are absolute paths.
fn check_reach(run_as: &RunAs, run: &Path, host: &Path, s: &Serve, temporary: bool) -> Result<(), String> {
    let mut checks = vec![(run.to_path_buf(), user::WRITE_AND_SEARCH), (host.to_path_buf(), user::SEARCH)];
    if s.command[0].starts_with('/') {
        checks.push((PathBuf::from(&s.command[0]), user::SEARCH));
    }
    if let Some(cwd) = &s.cwd {
        checks.push((PathBuf::from(cwd), user::SEARCH));
    }
    let Some(denied) = user::first_denied(run_as, &checks)? else { return Ok(()) };
    let who = run_as.describe();
    let why = match user::blocking_dir(run_as, &denied) {
        Some(dir) => format!(" (it may not enter {})", dir.display()),
        None => String::new(),
    };
    Err(if denied == run {
        let fix = if temporary { "set TMPDIR or --prefix to a directory" } else { "choose a --prefix" };
        format!(
            "the workers' user {who} cannot reach {}{why}: {fix} that user can reach, or another --user",
            run.display()
        )
    } else {
        format!(
            "the workers' user {who} cannot run or enter {}{why}: make it reachable by that user, or choose \
             another --user",
            denied.display()
        )
    })
}

/// The Streamable HTTP endpoint's path for `base_uri`.
fn endpoint(base_uri: &str) -> &str {
    if base_uri.is_empty() {
        "/"
    } else {
        base_uri
    }
}

/// On a loopback address, the names a local client reaches it by (with its
/// port): a browser page on another name (DNS rebinding) is refused. On any
/// other address, no default: the operator knows the names.
fn loopback_hosts(addr: SocketAddr) -> Vec<String> {
    if !addr.ip().is_loopback() {
        return Vec::new();
    }
    let port = addr.port();
    vec![format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")]
}

/// Cluster mode's settings from the options: the node's address (the
/// listen address unless it is a wildcard) and the secret (from its file,
/// or the environment).
fn cluster_settings(s: &Serve, listen: SocketAddr) -> Result<Option<nginx::Cluster>, String> {
    let Some(redis) = &s.cluster else { return Ok(None) };
    let node_address = match &s.node_address {
        Some(a) => a.clone(),
        None if listen.ip().is_unspecified() => {
            return Err(format!(
                "--listen {} is a wildcard address: give --node-address, where the other nodes reach this one",
                s.listen
            ))
        }
        None => listen.to_string(),
    };
    let secret = match (&s.cluster_secret_file, &s.cluster_secret_env) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| format!("--cluster-secret-file {}: {e}", path.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        (None, Some(secret)) => secret.clone(),
        (None, None) => return Err("--cluster needs the cluster's secret".into()),
    };
    if secret.len() < 16 {
        return Err(format!("the cluster's secret must be at least 16 bytes, it has {}", secret.len()));
    }
    Ok(Some(nginx::Cluster {
        redis: redis.clone(),
        node_address,
        secret,
        name: s.cluster_name.clone(),
        lease_ms: s.cluster_lease_ms,
    }))
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
    if s.allowed_hosts.is_empty() {
        s.allowed_hosts = loopback_hosts(addr);
    }
    match TcpListener::bind(addr) {
        Ok(l) => drop(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(format!("{} is already in use: stop what listens there or choose another --listen", s.listen))
        }
        Err(e) => return Err(format!("cannot listen on {}: {e}", s.listen)),
    }
    let nginx = nginx::locate(s.nginx.as_deref())?;
    let run_as = user::resolve(s.user.as_deref())?;
    // Backends find their command on the PATH of the shell that started
    // us, as a user expects (the host's own default lacks ~/.local/bin,
    // a venv's bin, ...), unless told otherwise.
    let path_note = if s.env.iter().any(|(k, _)| k == "PATH") {
        "the PATH of --env"
    } else if let Ok(path) = std::env::var("PATH") {
        s.env.push(("PATH".into(), path));
        "your PATH"
    } else {
        "the default PATH"
    };

    let cluster = cluster_settings(&s, addr)?;

    let (prefix, temporary) = make_prefix(s.prefix.as_deref(), &run_as)?;
    let result = (|| {
        let run = nginx::runtime_dir(&prefix);
        let libdir = native.parent().unwrap_or(Path::new(".")).to_path_buf();
        let config = nginx::config(&s, &nginx, &prefix, &libdir, run_as.directive.as_deref());
        let placed = nginx::Placement { runtime_dir: &run, host_program: &host, cluster: cluster.as_ref() };
        let route = nginx::route_lua(&s, &s.command, &placed);
        nginx::write_prefix(&prefix, &config, &route, (run_as.uid, run_as.gid))?;
        check_reach(&run_as, &run, &host, &s, temporary)?;
        let change = if nix::unistd::Uid::effective().is_root() { "; --user to change" } else { "" };
        let mut banner = format!(
            "mcp-bridge: bridging `{}` with {} worker(s)\n\
             mcp-bridge: backends run as {} with {path_note}{change}\n",
            s.command.join(" "),
            s.workers,
            run_as.describe(),
        );
        for (what, uri) in [("status report", &s.status_uri), ("metrics", &s.metrics_uri)] {
            if let Some(uri) = uri {
                let _ = writeln!(banner, "mcp-bridge: {what} at http://{}{uri} (loopback clients only)", s.listen);
            }
        }
        if let Some(c) = &cluster {
            let _ = writeln!(
                banner,
                "mcp-bridge: cluster {} via {}, this node at {}",
                s.cluster_name.as_deref().unwrap_or("mcp-bridge"),
                c.redis,
                c.node_address
            );
        }
        // The SSE endpoint's line comes last: scripts wait for it.
        let _ = write!(
            banner,
            "mcp-bridge: Streamable HTTP endpoint http://{}{}\n\
             mcp-bridge: SSE endpoint http://{}{}/sse (Ctrl-C to stop)",
            s.listen,
            endpoint(&s.base_uri),
            s.listen,
            s.base_uri
        );
        supervise::run(&nginx.binary, &prefix, probe, DRAIN, || println!("{banner}"))
    })();
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
