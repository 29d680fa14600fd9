//! Finding Debian's nginx and its lua module, and writing a private prefix
//! (nginx.conf, the Lua code, the route's configuration) to run it from.

use crate::options::{Serve, DEFAULT_MAX_MESSAGE_BYTES};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
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

/// The Lua that defines the gateway's route (run by init_by_lua_file).
/// Only the fields the user gave are written, so config.lua's defaults
/// apply to the rest. The host program is named, as the native module may
/// not be beside it (see beside_me).
pub fn route_lua(s: &Serve, command: &[String], host_program: &Path) -> String {
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
        ("kill_grace_ms", s.kill_grace_ms),
        ("max_message_bytes", s.max_message_bytes),
        ("keepalive_interval_ms", s.keepalive_interval_ms),
        ("slow_client_timeout_ms", s.slow_client_timeout_ms),
    ];
    for (name, value) in numbers {
        if let Some(n) = value {
            field(name, n.to_string());
        }
    }
    if let Some(stderr) = &s.stderr {
        field("stderr", lua_string(stderr));
    }
    if s.session_home {
        field("session_home", "true".into());
    }
    format!(
        "-- Written by `mcp-bridge serve`.\n\
         local standalone = require(\"apisix.plugins.mcp.bridge.standalone\")\n\
         standalone.settings({{ host_program = {} }})\n\
         -- names = \"cli\": messages name `mcp-bridge serve` options, not route fields.\n\
         standalone.define(\"gateway\", {{\n{fields}}}, {{ names = \"cli\" }})\n",
        lua_path(host_program),
    )
}

/// nginx.conf for the gateway. `libdir` holds the native module.
pub fn config(s: &Serve, nginx: &Nginx, prefix: &Path, libdir: &Path) -> String {
    let p = prefix.display();
    let mut load = String::new();
    for m in &nginx.load_modules {
        let _ = writeln!(load, "load_module {};", m.display());
    }
    let standalone = "require(\"apisix.plugins.mcp.bridge.standalone\")";
    let max = s.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    let too_large = format!("{{\\\"error\\\":\\\"request body is larger than --max-message-bytes ({max})\\\"}}");
    // No allow/deny: status() answers other clients itself, with a JSON 403.
    let status = match &s.status_uri {
        Some(uri) => format!(
            "\n        \
             location = {uri} {{\n            \
                 content_by_lua_block {{ {standalone}.status() }}\n        \
             }}\n"
        ),
        None => String::new(),
    };
    format!(
        "# Written by `mcp-bridge serve`.\n\
         {load}daemon off;\n\
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
             lua_shared_dict mcp-bridge-slots 1m;\n    \
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

/// Writes the prefix: conf/nginx.conf, gateway.lua, lua/**, tmp/.
pub fn write_prefix(prefix: &Path, config: &str, route: &str) -> Result<(), String> {
    let io = |what: &Path, e: std::io::Error| format!("cannot write {}: {e}", what.display());
    for dir in ["conf", "lua", "tmp", "logs"] {
        let d = prefix.join(dir);
        std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
    }
    let conf = prefix.join("conf/nginx.conf");
    std::fs::write(&conf, config).map_err(|e| io(&conf, e))?;
    let gateway = prefix.join("gateway.lua");
    std::fs::write(&gateway, route).map_err(|e| io(&gateway, e))?;
    for (path, contents) in LUA_FILES {
        let target = prefix.join("lua").join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&target, contents).map_err(|e| io(&target, e))?;
    }
    // Workers run as nobody when nginx starts as root: they must read it all.
    chmod_tree(prefix).map_err(|e| io(prefix, e))
}

fn chmod_tree(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            chmod_tree(&path)?;
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        }
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

    #[test]
    fn the_route_carries_the_command_and_only_the_options_given() {
        let s = Serve { env: vec![("K".into(), "v".into())], max_sessions: Some(7), ..Serve::default() };
        let lua = route_lua(&s, &["npx".into(), "-y".into(), "pkg".into()], Path::new("/b/host"));
        assert!(lua.contains("command = \"npx\""), "{lua}");
        assert!(lua.contains("args = { \"-y\", \"pkg\" }"), "{lua}");
        assert!(lua.contains("env = { [\"K\"] = \"v\" }"), "{lua}");
        assert!(lua.contains("max_sessions = 7,"), "{lua}");
        assert!(lua.contains("}, { names = \"cli\" })"), "{lua}");
        assert!(lua.contains("standalone.settings({ host_program = \"/b/host\" })"), "{lua}");
        // What was not given is left to config.lua's defaults.
        let plain = route_lua(&Serve::default(), &["cat".into()], Path::new("/b/host"));
        for field in
            ["args", "env", "cwd", "kill_grace_ms", "max_message_bytes", "stderr", "session_home", "max_sessions"]
        {
            assert!(!plain.contains(&format!("    {field} =")), "{field} written: {plain}");
        }
        let home = route_lua(&Serve { session_home: true, ..Serve::default() }, &["cat".into()], Path::new("/b/host"));
        assert!(home.contains("session_home = true,"), "{home}");
    }

    #[test]
    fn the_status_location_leaves_the_loopback_check_to_lua() {
        let nginx = Nginx { binary: "/usr/sbin/nginx".into(), load_modules: Vec::new() };
        let s = Serve { status_uri: Some("/-/status".into()), ..Serve::default() };
        let conf = config(&s, &nginx, Path::new("/p"), Path::new("/lib"));
        assert!(conf.contains("location = /-/status {"), "{conf}");
        assert!(!conf.contains("allow ") && !conf.contains("deny "), "{conf}");
    }
}
