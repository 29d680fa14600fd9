//! `require("mcp_bridge_native")`: the part of mcp-bridge that runs inside
//! an nginx worker. Only registers functions; the logic lives in
//! `mcp-bridge-core`.
//!
//! Every function returns in microseconds (the host is started once per
//! worker, and its liveness is checked with a zero-timeout `poll`). Expected
//! failures return `nil, err`; only wrong arguments raise.

mod worker;

use mcp_bridge_core::procfs;
use mlua::prelude::*;
use worker::Slot;

/// `configure{ host_program =, runtime_dir =, log_level = }`: settings for
/// hosts started from now on. Every field is optional.
fn configure(_: &Lua, opts: LuaTable) -> LuaResult<bool> {
    let program: Option<String> = opts.get("host_program")?;
    let runtime_dir: Option<String> = opts.get("runtime_dir")?;
    let log_level: Option<String> = opts.get("log_level")?;
    worker::configure(program, runtime_dir, log_level).map_err(LuaError::external)?;
    Ok(true)
}

/// `host_socket()`: path of this worker's host socket, starting the host if
/// it is not running; the third value is true when this call started it.
/// `nil, err` if it cannot be started.
fn host_socket(_: &Lua, (): ()) -> LuaResult<(Option<String>, Option<String>, bool)> {
    Ok(match worker::host_socket() {
        Ok((path, started)) => (Some(path), None, started),
        Err(e) => (None, Some(e), false),
    })
}

/// `socket_path(token)`: path of the socket of the host with `token` (any
/// worker's), or `nil` if `token` is not a host token, no such host runs,
/// or its directory is not one this user alone controls.
fn socket_path(_: &Lua, token: LuaString) -> LuaResult<Option<String>> {
    Ok(worker::socket_path(&token.to_str()?))
}

/// `hosts()`: `{ [token] = socket path }` of the hosts of every worker of
/// this nginx.
fn hosts(lua: &Lua, (): ()) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    for (token, path) in worker::hosts() {
        t.set(token, path)?;
    }
    Ok(t)
}

/// `shutdown()`: ends every session of this worker's host (their backends
/// are killed; the host itself exits with the worker) and refuses to start
/// another host.
fn shutdown(_: &Lua, (): ()) -> LuaResult<bool> {
    Ok(worker::shutdown())
}

/// `slot_acquire(route, max)`: a slot guard, or `nil, "rejected"` when
/// `route` already holds `max` slots in this worker.
fn slot_acquire(_: &Lua, (route, max): (LuaString, i64)) -> LuaResult<(Option<Slot>, Option<&'static str>)> {
    if max < 0 {
        return Err(LuaError::RuntimeError(format!("bad argument #2 to 'slot_acquire' (max must be >= 0, got {max})")));
    }
    Ok(match worker::slot_acquire(&route.to_str()?, max as usize) {
        Some(slot) => (Some(slot), None),
        None => (None, Some("rejected")),
    })
}

/// `slot_count(route)`: slots `route` holds in this worker.
fn slot_count(_: &Lua, route: LuaString) -> LuaResult<usize> {
    Ok(worker::slot_count(&route.to_str()?))
}

/// `stats()`: `{ master_pid =, host_pid =, host_socket =, hosts_started =, runtime_dir =,
/// exiting =, slots = { [route] = n } }`; the host fields are nil when no host runs.
fn stats(lua: &Lua, (): ()) -> LuaResult<LuaTable> {
    let s = worker::stats();
    let t = lua.create_table()?;
    t.set("master_pid", s.master_pid)?;
    t.set("host_pid", s.host_pid)?;
    t.set("host_socket", s.host_socket)?;
    t.set("hosts_started", s.hosts_started)?;
    t.set("runtime_dir", s.runtime_dir)?;
    t.set("exiting", s.exiting)?;
    let slots = lua.create_table()?;
    for (route, n) in s.slots {
        slots.set(route, n)?;
    }
    t.set("slots", slots)?;
    Ok(t)
}

/// `identity()`: this process's identity, `<pid>-<start time>`, which no
/// later process shares (see `procfs::identity`).
fn identity(_: &Lua, (): ()) -> LuaResult<Option<String>> {
    Ok(procfs::identity(std::process::id() as i32))
}

/// `alive(identity)`: whether the process named by `identity` still runs.
fn alive(_: &Lua, identity: LuaString) -> LuaResult<bool> {
    Ok(procfs::identity_alive(&identity.to_str()?))
}

#[mlua::lua_module]
fn mcp_bridge_native(lua: &Lua) -> LuaResult<LuaTable> {
    let exports = lua.create_table()?;
    exports.set("version", env!("CARGO_PKG_VERSION"))?;
    exports.set("EXITING", worker::EXITING)?;
    exports.set("configure", lua.create_function(configure)?)?;
    exports.set("host_socket", lua.create_function(host_socket)?)?;
    exports.set("socket_path", lua.create_function(socket_path)?)?;
    exports.set("hosts", lua.create_function(hosts)?)?;
    exports.set("shutdown", lua.create_function(shutdown)?)?;
    exports.set("slot_acquire", lua.create_function(slot_acquire)?)?;
    exports.set("slot_count", lua.create_function(slot_count)?)?;
    exports.set("stats", lua.create_function(stats)?)?;
    exports.set("identity", lua.create_function(identity)?)?;
    exports.set("alive", lua.create_function(alive)?)?;
    Ok(exports)
}
