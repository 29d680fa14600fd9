-- mcp-bridge: serves a stdio MCP server over MCP's HTTP+SSE transport, one
-- backend process per client session. A drop-in for APISIX's own plugin of
-- the same name (same base_uri, command, args, max_sessions), running on
-- the native module instead of ngx.pipe. The work happens in
-- apisix/plugins/mcp/bridge/; this file is the APISIX shim.
local plugin = require("apisix.plugin")
local config = require("apisix.plugins.mcp.bridge.config")
local control = require("apisix.plugins.mcp.bridge.control")
local handler = require("apisix.plugins.mcp.bridge.handler")
local worker = require("apisix.plugins.mcp.bridge.worker")

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

function _M.check_schema(conf)
    return config.check(conf)
end

-- plugin_attr (both optional):
--   mcp-bridge:
--     runtime_dir: /var/run/mcp-bridge   # parent of the hosts' private directories
--     host_program: /usr/local/apisix/mcp-bridge-host
-- Settings apply at once, so every worker finds every host; the host starts,
-- and worker shutdown is watched, on the first session. A starting worker
-- takes back node slots of workers that died.
function _M.init()
    worker.set(plugin.plugin_attr(plugin_name))
    worker.configure()
    worker.started()
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
local SESSIONS_URI = "/v1/plugin/mcp-bridge/sessions"

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

function _M.control_api()
    return {
        { methods = { "GET" }, uris = { SESSIONS_URI }, handler = list_sessions },
        { methods = { "DELETE" }, uris = { SESSIONS_URI .. "/*" }, handler = end_session },
    }
end

return _M
