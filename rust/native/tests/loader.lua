-- Loads the built module into a real LuaJIT and checks its Lua interface.
-- Run by loader.rs with the module's directory as arg[1].
local dir = assert(arg[1], "usage: luajit loader.lua <dir of libmcp_bridge_native.so> <runtime dir> <host>")
local runtime_dir = assert(arg[2])
local host_program = assert(arg[3])
package.cpath = dir .. "/lib?.so;" .. package.cpath

local native = require("mcp_bridge_native")
assert(type(native.version) == "string", "version")

-- Slots: ceiling per route, idempotent release, garbage collection backstop.
local a1 = assert(native.slot_acquire("route-a", 2))
local a2 = assert(native.slot_acquire("route-a", 2))
local none, err = native.slot_acquire("route-a", 2)
assert(none == nil and err == "rejected", "third slot must be rejected")
assert(native.slot_acquire("route-b", 1), "other routes count on their own")
collectgarbage(); collectgarbage()
assert(native.slot_count("route-b") == 0, "an unreferenced guard is released by the GC")
assert(a1:release() == true and a1:release() == false, "release is idempotent")
assert(a1:released() and a1:route() == "route-a")
assert(native.slot_count("route-a") == 1)
a2:release()
assert(native.slot_count("route-a") == 0)

-- Caller bugs raise; runtime outcomes return nil, err.
assert(not pcall(native.slot_acquire, "r", -1), "negative ceiling raises")
assert(not pcall(native.slot_acquire), "missing arguments raise")
assert(not pcall(native.configure, { runtime_dir = "relative" }), "relative runtime_dir raises")
assert(native.socket_path("../../etc/passwd") == nil, "tokens are checked")

-- The host starts on first use, beside the module, and stops on shutdown.
assert(native.configure({ runtime_dir = runtime_dir, log_level = "warn",
                          host_program = host_program }))
local path, herr = native.host_socket()
assert(path, herr)
assert(path:sub(1, #runtime_dir) == runtime_dir, "socket in the configured runtime dir: " .. path)
local token = path:match("mcp%-bridge%-%d+%.([0-9a-f]+)/host%.sock$")
assert(token, "the socket is in the host's own directory: " .. path)
assert(native.socket_path(token) == path)
assert(native.socket_path("0123456789abcdef") == nil, "no such host")
assert(native.hosts()[token] == path, "the host is listed")
assert(native.host_socket() == path, "the same host is reused while it lives")
local stats = native.stats()
assert(type(stats.master_pid) == "number", "the parent process")
assert(stats.hosts_started == 1 and type(stats.host_pid) == "number", "stats")
local host_pid = stats.host_pid
assert(native.shutdown() == true)
local again, serr = native.host_socket()
assert(again == nil and serr == "worker is exiting", "no new host after shutdown")
io.write(host_pid, "\n")
