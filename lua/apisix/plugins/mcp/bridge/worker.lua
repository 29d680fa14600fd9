-- This worker's side of the host: settings, starting it on first use, and
-- stopping it when the worker shuts down gracefully (reload or quit), so
-- sessions end at once instead of holding the worker until
-- worker_shutdown_timeout.
local cluster = require("apisix.plugins.mcp.bridge.cluster")
local native = require("apisix.plugins.mcp.bridge.native")
local node_slots = require("apisix.plugins.mcp.node_slots")
local registry = require("apisix.plugins.mcp.bridge.registry")
local watcher = require("apisix.plugins.mcp.bridge.watcher")

local ngx = ngx
local ngx_log = ngx.log
local pcall = pcall
local require = require
local timer_at = ngx.timer.at

local _M = {}

local LEVEL_NAMES = {
    [ngx.STDERR] = "emerg", [ngx.EMERG] = "emerg", [ngx.ALERT] = "alert", [ngx.CRIT] = "crit",
    [ngx.ERR] = "error", [ngx.WARN] = "warn", [ngx.NOTICE] = "notice", [ngx.INFO] = "info",
    [ngx.DEBUG] = "debug",
}

-- A day: the watcher only exists to be fired prematurely at shutdown.
local WATCH_SECONDS = 86400

local settings = {}
local configured = false
local watching = false
-- Called after the settings were passed to the native module.
local configure_hooks = {}

-- Global settings (not per route): runtime_dir, host_program (for hosts
-- started afterwards) and cluster (see cluster.lua). Returns true, or nil
-- and what is wrong with the cluster settings (cluster mode is off then).
function _M.set(opts)
    settings = opts or {}
    configured = false
    local ok, err = cluster.configure(settings.cluster)
    if ok then
        ok, err = registry.configure(cluster.settings())
        if not ok then
            cluster.configure(nil)
        end
    else
        registry.configure(nil)
    end
    return ok, err
end

-- Passes the settings to the native module (once per change of settings).
-- Called as the worker starts: a worker that has not opened a session yet
-- must still find the hosts of the others (their POSTs land anywhere).
local function configure()
    if configured then
        return
    end
    local level = "notice"
    local ok, errlog = pcall(require, "ngx.errlog")
    if ok then
        level = LEVEL_NAMES[errlog.get_sys_filter_level()] or level
    end
    local opts = { log_level = level, runtime_dir = settings.runtime_dir,
                   host_program = settings.host_program }
    local done, err = pcall(native.configure, opts)
    if not done then
        ngx_log(ngx.ERR, "mcp-bridge: bad settings: ", err)
    end
    configured = true
    for i = 1, #configure_hooks do
        configure_hooks[i]()
    end
end

-- Calls `hook` each time settings are passed to the native module (what
-- was derived from the old ones, such as socket paths, is stale then).
function _M.on_configure(hook)
    configure_hooks[#configure_hooks + 1] = hook
end

local watch

local function on_timer(premature)
    watching = false
    if premature then
        -- The worker is exiting: the host ends every session (their
        -- connections close, so their request handlers return) and exits.
        native.shutdown()
        return
    end
    watch()
end

watch = function()
    if watching then
        return
    end
    local ok, err = timer_at(WATCH_SECONDS, on_timer)
    if ok then
        watching = true
    elseif err ~= "process exiting" then
        ngx_log(ngx.WARN, "mcp-bridge: cannot watch for worker shutdown: ", err)
    end
end

_M.watch_shutdown = watch

local function reclaim(premature)
    if not premature then
        node_slots.reclaim()
    end
end

-- Called as a worker starts: takes back the node slots of a worker that
-- died (this one may be its replacement), and keeps the node's lease in
-- the cluster's registry.
function _M.started()
    registry.start()
    local ok, err = timer_at(0, reclaim)
    if not ok and err ~= "process exiting" then
        ngx_log(ngx.WARN, "mcp-bridge: cannot reclaim slots of dead workers: ", err)
    end
end

_M.configure = configure

-- Path of this worker's host socket, starting the host if needed (and
-- listening to its events then).
function _M.host_socket()
    configure()
    watch()
    local path, err, started = native.host_socket()
    if started then
        watcher.start(path)
    end
    return path, err
end

return _M
