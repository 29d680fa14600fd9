-- mcp-bridge: serves a stdio MCP server over MCP's HTTP+SSE transport, one
-- backend process per client session. A drop-in for APISIX's own plugin of
-- the same name (same base_uri, command, args, max_sessions), running on
-- the native module instead of ngx.pipe. The work happens in
-- apisix/plugins/mcp/bridge/; this file is the APISIX shim.
local plugin = require("apisix.plugin")
local config = require("apisix.plugins.mcp.bridge.config")
local control = require("apisix.plugins.mcp.bridge.control")
local handler = require("apisix.plugins.mcp.bridge.handler")
local metrics = require("apisix.plugins.mcp.bridge.metrics")
local respond = require("apisix.plugins.mcp.bridge.respond")
local worker = require("apisix.plugins.mcp.bridge.worker")

local floor = math.floor
local format = string.format
local ngx = ngx
local setmetatable = setmetatable
local sub = string.sub
local tostring = tostring

local plugin_name = "mcp-bridge"

local _M = {
    version = 0.2,
    priority = 510,
    name = plugin_name,
    schema = config.schema,
}

-- lua-nginx-module before 0.10.29 loses track of the request's phase when a
-- write to a slow client completes while a body filter is set, as APISIX
-- always sets one; the next call of a stream then fails ("API disabled in
-- the context of body_filter_by_lua*") and the stream dies mid-way. Fixed
-- by its commit 0581262 (OpenResty 1.29, apisix-runtime 1.3). Sessions are
-- refused on an older module, unless plugin_attr says the build has the fix.
local MIN_LUA_MODULE = 10029

local function lua_module_refusal()
    local version = ngx.config.ngx_lua_version or 0
    if version >= MIN_LUA_MODULE then
        return nil
    end
    local attr = plugin.plugin_attr(plugin_name) or {}
    if attr.lua_module_has_body_filter_fix then
        return nil
    end
    return format("mcp-bridge needs lua-nginx-module 0.10.29 or newer (OpenResty 1.29 or "
                  .. "apisix-runtime 1.3 and later); this nginx has %d.%d.%d, whose body "
                  .. "filter breaks event streams to slow clients. If it carries the fix "
                  .. "(lua-nginx-module commit 0581262), set plugin_attr.mcp-bridge."
                  .. "lua_module_has_body_filter_fix: true", floor(version / 1000000),
                  floor(version / 1000) % 1000, version % 1000)
end

function _M.check_schema(conf)
    local refusal = lua_module_refusal()
    if refusal then
        return false, refusal
    end
    return config.check(conf)
end

-- plugin_attr (all optional):
--   mcp-bridge:
--     runtime_dir: /var/run/mcp-bridge   # parent of the hosts' private directories
--     host_program: /usr/local/apisix/mcp-bridge-host
--     lua_module_has_body_filter_fix: true   # see lua_module_refusal()
--     cluster:                  # several nodes behind one load balancer
--       node_address: 10.0.0.5:9080   # where the other nodes reach this one
--       secret: ...             # the same on every node, 16 bytes or more
--       redis: redis://10.0.0.9:6379/0
--       name: mcp-bridge        # optional; lease_ms: 5000, optional
-- Settings apply at once, so every worker finds every host; the host starts,
-- and worker shutdown is watched, on the first session. A starting worker
-- takes back node slots of workers that died.
function _M.init()
    local refusal = lua_module_refusal()
    if refusal then
        ngx.log(ngx.ERR, refusal)
    end
    local ok, err = worker.set(plugin.plugin_attr(plugin_name))
    if not ok then
        ngx.log(ngx.ERR, "mcp-bridge: plugin_attr: ", err, "; cluster mode is off")
    end
    worker.configure()
    worker.started()
    -- After every plugin's init: the prometheus plugin's registry exists
    -- only once its own init has run.
    ngx.timer.at(0, metrics.register)
end

-- One route object per conf table (APISIX makes a new one per route version).
local routes = setmetatable({}, { __mode = "k" })

local name_attribute = config.namer()

-- A route's key names it in slot counts, bindings and metrics: its id, as
-- APISIX's own metrics name routes (a plugin on a service or a global rule
-- is named with its kind too).
local function route_key(ctx)
    local kind, id = ctx.conf_type or "route", tostring(ctx.conf_id or "?")
    return kind == "route" and id or kind .. "#" .. id
end

function _M.access(conf, ctx)
    local refusal = lua_module_refusal()
    if refusal then
        return respond.error(503, refusal)
    end
    local route = routes[conf]
    if not route then
        route = { key = route_key(ctx), conf = conf, name = name_attribute }
        routes[conf] = route
    end
    return handler.handle(route, ctx.consumer_name)
end

function _M.log()
    handler.log()
end

-- APISIX's control API (127.0.0.1:9090 by default):
--   GET    /v1/plugin/mcp-bridge/sessions            every worker's live sessions
--   DELETE /v1/plugin/mcp-bridge/sessions/<id start>  ends that session
--   GET    /v1/plugin/mcp-bridge/cluster             this node in its cluster
local SESSIONS_URI = "/v1/plugin/mcp-bridge/sessions"
local CLUSTER_URI = "/v1/plugin/mcp-bridge/cluster"

local function list_sessions()
    return 200, { sessions = control.sessions() }
end

local function end_session()
    local prefix = sub(ngx.var.uri, #SESSIONS_URI + 2)
    local ok, status, err = control.end_session(prefix)
    if not ok then
        return status, { error_msg = err }
    end
    return 200, { ended = prefix }
end

local function cluster_state()
    local state = control.cluster()
    if not state then
        return 404, { error_msg = "this node is not in a cluster (plugin_attr.mcp-bridge.cluster)" }
    end
    return 200, state
end

function _M.control_api()
    return {
        { methods = { "GET" }, uris = { SESSIONS_URI }, handler = list_sessions },
        { methods = { "GET" }, uris = { CLUSTER_URI }, handler = cluster_state },
        { methods = { "DELETE" }, uris = { SESSIONS_URI .. "/*" }, handler = end_session },
    }
end

return _M
