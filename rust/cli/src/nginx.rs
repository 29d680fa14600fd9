//! Finding Debian's nginx and its lua module, and writing a private prefix
//! (nginx.conf, the Lua code, the route's configuration) to run it from.

use crate::options::{Serve, DEFAULT_MAX_MESSAGE_BYTES};
use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

include!(concat!(env!("OUT_DIR"), "/lua_files.rs"));

const APT_HINT: &str = "apt-get install nginx-core libnginx-mod-http-lua";
const MODULE_DIRS: [&str; 2] = ["/usr/lib/nginx/modules", "/usr/share/nginx/modules"];
const NDK_MODULE: &str = "ndk_http_module.so";
const LUA_MODULE: &str = "ngx_http_lua_module.so";

/// What nginx needs to load the Lua module: nothing when compiled in, else
/// the dynamic modules to load.
pub struct Nginx {
    pub binary: PathBuf,
    pub load_modules: Vec<PathBuf>,
}

fn executable(p: &Path) -> bool {
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

pub fn locate(explicit: Option<&Path>) -> Result<Nginx, String> {
    locate_with(explicit, &MODULE_DIRS)
}

fn locate_with(explicit: Option<&Path>, module_dirs: &[&str]) -> Result<Nginx, String> {
    let binary = match explicit {
        Some(p) if executable(p) => p.to_path_buf(),
        Some(p) => return Err(format!("{} is not an executable nginx", p.display())),
        None => {
            let path = std::env::var("PATH").unwrap_or_default();
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join("nginx"))
                .chain(["/usr/sbin/nginx".into(), "/usr/local/sbin/nginx".into()])
                .find(|p| executable(p))
                .ok_or_else(|| format!("nginx not found: install it with `{APT_HINT}`"))?
        }
    };
    let version =
        Command::new(&binary).arg("-V").output().map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let described = String::from_utf8_lossy(&version.stderr);
    if described.contains("lua-nginx-module") {
        return Ok(Nginx { binary, load_modules: Vec::new() });
    }
    for dir in module_dirs {
        let lua = Path::new(dir).join(LUA_MODULE);
        if lua.exists() {
            let ndk = Path::new(dir).join(NDK_MODULE);
            let mut load_modules = Vec::new();
            if ndk.exists() {
                load_modules.push(ndk);
            }
            load_modules.push(lua);
            return Ok(Nginx { binary, load_modules });
        }
    }
    Err(format!("the nginx lua module is missing ({LUA_MODULE}): install it with `{APT_HINT}`"))
}

/// A Lua string literal for any text.
pub fn lua_string(s: &str) -> String {
    lua_bytes(s.as_bytes())
}

/// A Lua string literal for a path, whatever its bytes.
fn lua_path(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    lua_bytes(p.as_os_str().as_bytes())
}

/// A Lua string literal for any bytes.
fn lua_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

/// Where the hosts keep their sockets and the backends' shared HOME: a
/// directory of the prefix, so everything the gateway makes goes with it.
pub fn runtime_dir(prefix: &Path) -> PathBuf {
    prefix.join("run")
}

/// Room for a socket path in `sockaddr_un`, its terminating NUL excluded.
const MAX_SOCKET_PATH: usize = 107;

/// Whether the sockets of hosts of `uid` fit under `runtime_dir`. A worker
/// binds its host's socket in the host's staging directory
/// (`<runtime_dir>/.mcp-bridge-<uid>.<token>.new/host.sock`, see
/// mcp_bridge_core::runtime and launcher), the longest path it uses.
pub fn check_socket_room(runtime_dir: &Path, uid: u32) -> Result<(), String> {
    use mcp_bridge_core::runtime::{SOCKET_NAME, TOKEN_LEN};
    let socket = runtime_dir.join(format!(".mcp-bridge-{uid}.{}.new", "0".repeat(TOKEN_LEN))).join(SOCKET_NAME);
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "{} is too deep: the hosts' sockets would be {len} bytes long ({}), over the {MAX_SOCKET_PATH} a \
             socket path may have",
            runtime_dir.parent().unwrap_or(runtime_dir).display(),
            socket.display()
        ));
    }
    Ok(())
}

/// What gateway.lua needs beside the options: where the hosts keep their
/// files, and the host program.
pub struct Placement<'a> {
    pub runtime_dir: &'a Path,
    pub host_program: &'a Path,
    pub cluster: Option<&'a Cluster>,
}

/// Cluster mode's settings, as gateway.lua passes them on (see cluster.lua).
pub struct Cluster {
    pub redis: String,
    pub node_address: String,
    pub secret: String,
    pub name: Option<String>,
    pub lease_ms: Option<u64>,
}

impl Cluster {
    fn lua(&self) -> String {
        let mut fields = format!(
            "\n        redis = {},\n        node_address = {},\n        secret = {},",
            lua_string(&self.redis),
            lua_string(&self.node_address),
            lua_string(&self.secret)
        );
        if let Some(name) = &self.name {
            let _ = write!(fields, "\n        name = {},", lua_string(name));
        }
        if let Some(ms) = self.lease_ms {
            let _ = write!(fields, "\n        lease_ms = {ms},");
        }
        format!("    cluster = {{{fields}\n    }},\n")
    }
}

/// The Lua that defines the gateway's route (run by init_by_lua_file, in
/// nginx's master only). Only the fields the user gave are written, so
/// config.lua's defaults apply to the rest.
pub fn route_lua(s: &Serve, command: &[String], placed: &Placement) -> String {
    let mut fields = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(fields, "    {name} = {value},");
    };
    field("base_uri", lua_string(&s.base_uri));
    field("command", lua_string(&command[0]));
    if command.len() > 1 {
        let args: Vec<String> = command[1..].iter().map(|a| lua_string(a)).collect();
        field("args", format!("{{ {} }}", args.join(", ")));
    }
    if !s.env.is_empty() {
        let env: Vec<String> = s.env.iter().map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_string(v))).collect();
        field("env", format!("{{ {} }}", env.join(", ")));
    }
    if let Some(cwd) = &s.cwd {
        field("cwd", lua_string(cwd));
    }
    let numbers = [
        ("max_sessions", s.max_sessions),
        ("max_sessions_per_node", s.max_sessions_per_node),
        ("max_sessions_per_cluster", s.max_sessions_per_cluster),
        ("kill_grace_ms", s.kill_grace_ms),
        ("max_message_bytes", s.max_message_bytes),
        ("keepalive_interval_ms", s.keepalive_interval_ms),
        ("slow_client_timeout_ms", s.slow_client_timeout_ms),
        ("session_idle_timeout_ms", s.session_idle_timeout_ms),
        ("session_max_lifetime_ms", s.session_max_lifetime_ms),
        ("max_restarts", s.max_restarts),
        ("restart_window_ms", s.restart_window_ms),
        ("pool_min_idle", s.pool_min_idle),
        ("pool_max_per_key", s.pool_max_per_key),
        ("pool_max_per_worker", s.pool_max_per_worker),
        ("pool_idle_timeout_ms", s.pool_idle_timeout_ms),
        ("pool_max_requests", s.pool_max_requests),
        ("pool_max_age_ms", s.pool_max_age_ms),
        ("pool_wait_ms", s.pool_wait_ms),
        ("input_wait_ms", s.input_wait_ms),
        ("max_parked_per_consumer", s.max_parked_per_consumer),
        ("max_parked_per_worker", s.max_parked_per_worker),
    ];
    for (name, value) in numbers {
        if let Some(n) = value {
            field(name, n.to_string());
        }
    }
    let limits: Vec<String> = [
        ("memory_mb", s.limit_memory_mb),
        ("processes", s.limit_processes),
        ("cpu_seconds", s.limit_cpu_seconds),
        ("open_files", s.limit_open_files),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|n| format!("{name} = {n}")))
    .collect();
    if !limits.is_empty() {
        field("limits", format!("{{ {} }}", limits.join(", ")));
    }
    if let Some(stderr) = &s.stderr {
        field("stderr", lua_string(stderr));
    }
    if s.session_home {
        field("session_home", "true".into());
    }
    if s.restart_on_crash {
        field("restart_on_crash", "true".into());
    }
    for (name, list) in [("allowed_hosts", &s.allowed_hosts), ("allowed_origins", &s.allowed_origins)] {
        if !list.is_empty() {
            let items: Vec<String> = list.iter().map(|h| lua_string(h)).collect();
            field(name, format!("{{ {} }}", items.join(", ")));
        }
    }
    format!(
        "-- Written by `mcp-bridge serve`. It holds the backends' --env values\n\
         -- and the cluster's secret: only its owner (nginx's master reads it)\n\
         -- may read it.\n\
         local standalone = require(\"apisix.plugins.mcp.bridge.standalone\")\n\
         standalone.settings({{\n    runtime_dir = {},\n    host_program = {},\n{}}})\n\
         -- names = \"cli\": messages name `mcp-bridge serve` options, not route fields.\n\
         standalone.define(\"gateway\", {{\n{fields}}}, {{ names = \"cli\" }})\n",
        lua_path(placed.runtime_dir),
        lua_path(placed.host_program),
        placed.cluster.map(Cluster::lua).unwrap_or_default(),
    )
}

/// nginx.conf for the gateway. `libdir` holds the native module; `user` is
/// nginx's `user` directive, if any.
pub fn config(s: &Serve, nginx: &Nginx, prefix: &Path, libdir: &Path, user: Option<&str>) -> String {
    let p = prefix.display();
    let mut load = String::new();
    for m in &nginx.load_modules {
        let _ = writeln!(load, "load_module {};", m.display());
    }
    let user = user.map(|u| format!("{u}\n")).unwrap_or_default();
    let standalone = "require(\"apisix.plugins.mcp.bridge.standalone\")";
    let max = s.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    let too_large = format!("{{\\\"error\\\":\\\"request body is larger than --max-message-bytes ({max})\\\"}}");
    // No allow/deny: status() answers other clients itself, with a JSON 403.
    let mut status = String::new();
    for (uri, report) in [(&s.status_uri, "status"), (&s.metrics_uri, "metrics")] {
        if let Some(uri) = uri {
            let _ = write!(
                status,
                "\n        \
                 location = {uri} {{\n            \
                     content_by_lua_block {{ {standalone}.{report}() }}\n        \
                 }}\n"
            );
        }
    }
    // The metrics are counted in a shared dict only when they are served.
    let metrics_dict = if s.metrics_uri.is_some() { "\n    lua_shared_dict mcp-bridge-metrics 4m;" } else { "" };
    // A node or Redis that is down refuses connections: the bridge logs
    // that itself, once, rather than nginx at [error] on every attempt.
    let cluster = if s.cluster.is_some() { "\n    lua_socket_log_errors off;" } else { "" };
    format!(
        "# Written by `mcp-bridge serve`.\n\
         {load}{user}daemon off;\n\
         master_process on;\n\
         worker_processes {workers};\n\
         pid {p}/nginx.pid;\n\
         error_log stderr {level};\n\
         \n\
         events {{\n    worker_connections 4096;\n}}\n\
         \n\
         http {{\n    \
             access_log off;\n    \
             server_tokens off;\n    \
             default_type application/octet-stream;\n    \
             lua_package_path \"{p}/lua/?.lua;;\";\n    \
             lua_package_cpath \"{lib}/lib?.so;;\";\n    \
             lua_check_client_abort on;\n    \
             lua_shared_dict mcp-bridge-slots 1m;{metrics_dict}{cluster}\n    \
             client_body_temp_path {p}/tmp/body;\n    \
             proxy_temp_path {p}/tmp/proxy;\n    \
             fastcgi_temp_path {p}/tmp/fastcgi;\n    \
             uwsgi_temp_path {p}/tmp/uwsgi;\n    \
             scgi_temp_path {p}/tmp/scgi;\n    \
             client_max_body_size {body_limit};\n    \
             client_body_buffer_size {max};\n    \
             init_by_lua_file {p}/gateway.lua;\n    \
             init_worker_by_lua_block {{ {standalone}.init_worker() }}\n\
             \n    \
             server {{\n        \
                 listen {listen} reuseport;\n        \
                 error_page 413 = @too_large;\n\
                 \n        \
                 location / {{\n            \
                     content_by_lua_block {{ {standalone}.serve(\"gateway\") }}\n            \
                     log_by_lua_block {{ {standalone}.log() }}\n        \
                 }}\n\
                 \n        \
                 location @too_large {{\n            \
                     default_type application/json;\n            \
                     return 413 \"{too_large}\\n\";\n        \
                 }}\n\
                 {status}    \
             }}\n\
         }}\n",
        // Bodies over max_message_bytes get their 413 from the Lua code,
        // which logs nothing for a client's mistake; nginx's own limit, which
        // logs an [error], only stops bodies far beyond it.
        body_limit = (4 * max).max(64 << 20),
        workers = s.workers,
        level = s.log_level,
        lib = libdir.display(),
        listen = s.listen,
    )
}

fn io_error(what: &Path, e: std::io::Error) -> String {
    format!("cannot write {}: {e}", what.display())
}

/// Makes `dir` (if missing) and gives it `mode`. It must be a real
/// directory of ours, not something another user prepared in a shared
/// --prefix (a symbolic link to elsewhere, say).
fn own_dir(dir: &Path, mode: u32, owners: &[u32]) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(dir, e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io_error(dir, e))?;
    if !meta.is_dir() || !owners.contains(&meta.uid()) {
        return Err(format!("{} is not a directory of this user: remove it or choose another --prefix", dir.display()));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| io_error(dir, e))
}

/// Writes `contents` into a new file with exactly `mode`: whatever was
/// there (a file another user can read, a link) is replaced, never
/// written through.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path, e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    // The umask may have taken bits off: set them exactly.
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| io_error(path, e))?;
    file.write_all(contents.as_bytes()).map_err(|e| io_error(path, e))
}

/// Writes the prefix: conf/nginx.conf and gateway.lua (read by nginx's
/// master only, so its user's alone: gateway.lua holds the --env values),
/// lua/** (code, readable by all), tmp/ (nginx makes its temporary
/// directories there, for the workers' user), logs/ and the runtime
/// directory, owned by the workers' user and private to it.
pub fn write_prefix(prefix: &Path, config: &str, route: &str, workers: (u32, u32)) -> Result<(), String> {
    let me = nix::unistd::Uid::effective();
    for (dir, mode) in [("conf", 0o700), ("logs", 0o700), ("tmp", 0o711), ("lua", 0o755)] {
        own_dir(&prefix.join(dir), mode, &[me.as_raw()])?;
    }
    write_file(&prefix.join("conf/nginx.conf"), config, 0o600)?;
    write_file(&prefix.join("gateway.lua"), route, 0o600)?;
    for (path, contents) in LUA_FILES {
        let target = prefix.join("lua").join(path);
        let lua = prefix.join("lua");
        for dir in target.ancestors().skip(1).take_while(|d| *d != lua).collect::<Vec<_>>().into_iter().rev() {
            own_dir(dir, 0o755, &[me.as_raw()])?;
        }
        write_file(&target, contents, 0o644)?;
    }
    // The workers create the hosts' directories and the backends' HOME in
    // it. A prefix used before may hold it already, owned by them.
    let run = runtime_dir(prefix);
    own_dir(&run, 0o700, &[me.as_raw(), workers.0])?;
    if me.is_root() {
        std::os::unix::fs::chown(&run, Some(workers.0), Some(workers.1)).map_err(|e| io_error(&run, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_nginx(name: &str, version: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("mcp-bridge-fake-nginx-{name}-{}", std::process::id()));
        std::fs::write(&path, format!("#!/bin/sh\necho '{version}' >&2\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Another test thread that forks while the file is open for writing
        // holds it open until its child execs: running it meanwhile fails
        // with ETXTBSY. Wait for that to pass.
        for _ in 0..200 {
            match Command::new(&path).output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                _ => break,
            }
        }
        path
    }

    #[test]
    fn a_missing_lua_module_names_the_package_to_install() {
        let nginx = fake_nginx("plain", "nginx version: nginx/1.22.1");
        let err = locate_with(Some(&nginx), &["/nonexistent/modules"]).err().expect("must fail");
        assert!(err.contains("install it with `apt-get install nginx-core libnginx-mod-http-lua`"), "{err}");
        let _ = std::fs::remove_file(nginx);
    }

    #[test]
    fn a_lua_module_compiled_in_needs_no_load_module() {
        let nginx = fake_nginx("openresty", "configure arguments: --add-module=../lua-nginx-module-0.10.26");
        let found = locate_with(Some(&nginx), &["/nonexistent/modules"]).expect("found");
        assert!(found.load_modules.is_empty());
        let _ = std::fs::remove_file(nginx);
    }

    #[test]
    fn a_missing_nginx_is_named() {
        let err = locate_with(Some(Path::new("/nonexistent/nginx")), &MODULE_DIRS).err().expect("must fail");
        assert!(err.contains("/nonexistent/nginx is not an executable nginx"), "{err}");
    }

    #[test]
    fn lua_strings_escape_everything_that_could_break_out() {
        assert_eq!(lua_string("plain"), "\"plain\"");
        assert_eq!(lua_string("q\"b\\n\nend]]"), "\"q\\\"b\\\\n\\010end]]\"");
        assert_eq!(lua_string("é"), "\"\\195\\169\"");
    }

    #[test]
    fn every_lua_module_is_embedded() {
        let names: Vec<&str> = LUA_FILES.iter().map(|(p, _)| *p).collect();
        for needed in [
            "apisix/plugins/mcp-bridge.lua",
            "apisix/plugins/mcp/session_limit.lua",
            "apisix/plugins/mcp/bridge/standalone.lua",
            "apisix/plugins/mcp/bridge/sse.lua",
        ] {
            assert!(names.contains(&needed), "{needed} missing from {names:?}");
        }
    }

    fn placed() -> Placement<'static> {
        Placement { runtime_dir: Path::new("/p/run"), host_program: Path::new("/b/host"), cluster: None }
    }

    #[test]
    fn the_route_carries_the_command_and_only_the_options_given() {
        let s = Serve { env: vec![("K".into(), "v".into())], max_sessions: Some(7), ..Serve::default() };
        let lua = route_lua(&s, &["npx".into(), "-y".into(), "pkg".into()], &placed());
        assert!(lua.contains("command = \"npx\""), "{lua}");
        assert!(lua.contains("args = { \"-y\", \"pkg\" }"), "{lua}");
        assert!(lua.contains("env = { [\"K\"] = \"v\" }"), "{lua}");
        assert!(lua.contains("max_sessions = 7,"), "{lua}");
        assert!(lua.contains("runtime_dir = \"/p/run\""), "{lua}");
        assert!(lua.contains("host_program = \"/b/host\""), "{lua}");
        assert!(lua.contains("}, { names = \"cli\" })"), "{lua}");
        // What was not given is left to config.lua's defaults.
        let plain = route_lua(&Serve::default(), &["cat".into()], &placed());
        for field in [
            "args",
            "env",
            "cwd",
            "kill_grace_ms",
            "max_message_bytes",
            "stderr",
            "session_home",
            "max_sessions",
            "limits",
        ] {
            assert!(!plain.contains(&format!("    {field} =")), "{field} written: {plain}");
        }
        let home = route_lua(&Serve { session_home: true, ..Serve::default() }, &["cat".into()], &placed());
        assert!(home.contains("session_home = true,"), "{home}");
        let limited = Serve { limit_cpu_seconds: Some(30), limit_open_files: Some(64), ..Serve::default() };
        let limited = route_lua(&limited, &["cat".into()], &placed());
        assert!(limited.contains("    limits = { cpu_seconds = 30, open_files = 64 },"), "only those given: {limited}");
    }

    #[test]
    fn the_status_location_leaves_the_loopback_check_to_lua() {
        let nginx = Nginx { binary: "/usr/sbin/nginx".into(), load_modules: Vec::new() };
        let s = Serve { status_uri: Some("/-/status".into()), ..Serve::default() };
        let conf = config(&s, &nginx, Path::new("/p"), Path::new("/lib"), None);
        assert!(conf.contains("location = /-/status {"), "{conf}");
        assert!(!conf.contains("allow ") && !conf.contains("deny "), "{conf}");
        assert!(!conf.contains("user "), "no user directive unless asked: {conf}");
        let conf = config(&s, &nginx, Path::new("/p"), Path::new("/lib"), Some("user \"nobody\" \"nogroup\";"));
        assert!(conf.contains("\nuser \"nobody\" \"nogroup\";\ndaemon off;"), "{conf}");
    }

    #[test]
    fn a_prefix_too_deep_for_a_socket_path_is_refused_with_its_name() {
        let deep = PathBuf::from(format!("/tmp/{}/run", "d".repeat(60)));
        let err = check_socket_room(&deep, 65534).expect_err("too deep");
        assert!(err.starts_with(&format!("/tmp/{} is too deep", "d".repeat(60))), "{err}");
        assert!(err.contains("over the 107 a socket path may have"), "{err}");
        assert!(check_socket_room(Path::new("/tmp/mcp-bridge-serve-abcdef/run"), 65534).is_ok());
        // The boundary: the staging socket path at 107 bytes fits, at 108 not.
        let suffix = "/run/.mcp-bridge-65534.0123456789abcdef.new/host.sock".len();
        let at = |len: usize| PathBuf::from(format!("/{}", "p".repeat(len - suffix - 1))).join("run");
        assert!(check_socket_room(&at(107), 65534).is_ok());
        assert!(check_socket_room(&at(108), 65534).is_err());
    }

    #[test]
    fn the_prefix_keeps_the_route_to_its_owner_and_replaces_what_was_there() {
        let prefix = std::env::temp_dir().join(format!("mcp-bridge-prefix-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&prefix);
        std::fs::create_dir_all(&prefix).expect("prefix");
        // A file others can read, left from before, is replaced, not reused.
        std::fs::write(prefix.join("gateway.lua"), "old").expect("old");
        std::fs::set_permissions(prefix.join("gateway.lua"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let me = (nix::unistd::Uid::effective().as_raw(), nix::unistd::Gid::effective().as_raw());
        write_prefix(&prefix, "conf", "secret", me).expect("write");
        let mode = |p: &str| std::fs::metadata(prefix.join(p)).expect(p).permissions().mode() & 0o777;
        assert_eq!(mode("gateway.lua"), 0o600);
        assert_eq!(std::fs::read_to_string(prefix.join("gateway.lua")).expect("read"), "secret");
        assert_eq!(mode("conf/nginx.conf"), 0o600);
        assert_eq!(mode("run"), 0o700);
        assert_eq!(mode("lua/apisix/plugins/mcp/bridge/standalone.lua"), 0o644);
        // A link planted in a shared prefix is not followed.
        std::fs::remove_dir(prefix.join("run")).expect("rmdir");
        std::os::unix::fs::symlink("/", prefix.join("run")).expect("symlink");
        let err = write_prefix(&prefix, "conf", "secret", me).expect_err("symlink");
        assert!(err.contains("run is not a directory of this user"), "{err}");
        let _ = std::fs::remove_dir_all(&prefix);
    }
}
