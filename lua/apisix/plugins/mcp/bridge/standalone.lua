-- The bridge on a stock nginx with the lua module, without APISIX: what
-- `mcp-bridge serve` and the test suites use.
--
--   init_by_lua_block   { require("apisix.plugins.mcp.bridge.standalone").define("mcp", conf) }
--   location / {
--       content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").serve("mcp") }
--       log_by_lua_block     { require("apisix.plugins.mcp.bridge.standalone").log() }
--   }
local config = require("apisix.plugins.mcp.bridge.config")
local handler = require("apisix.plugins.mcp.bridge.handler")
local metrics = require("apisix.plugins.mcp.bridge.metrics")
local respond = require("apisix.plugins.mcp.bridge.respond")
local status = require("apisix.plugins.mcp.bridge.status")
local worker = require("apisix.plugins.mcp.bridge.worker")

local error = error
local ngx = ngx
local type = type

local _M = {}

local routes = {}

-- Global settings: { runtime_dir =, host_program =, cluster = } (all
-- optional; see cluster.lua). Raises when the cluster settings are wrong.
function _M.settings(opts)
    local ok, err = worker.set(opts)
    if not ok then
        error("mcp-bridge: invalid settings: " .. err, 2)
    end
end

-- Defines route `name` from `conf`. Raises with a message naming the field
-- when `conf` is invalid, so nginx refuses to start with that message.
-- `opts.names = "cli"` names fields as `mcp-bridge serve` options in every
-- message (see config.namer).
function _M.define(name, conf, opts)
    if type(name) ~= "string" or name == "" then
        error("mcp-bridge: a route needs a name", 2)
    end
    local namer = config.namer(opts and opts.names)
    local ok, err = config.check(conf, namer)
    if not ok then
        error("mcp-bridge: invalid configuration" .. (opts and opts.names == "cli" and ""
              or " of route \"" .. name .. "\"") .. ": " .. err, 2)
    end
    routes[name] = { key = name, conf = conf, name = namer }
end

function _M.init_worker()
    worker.configure()
    worker.watch_shutdown()
    worker.started()
end

-- The status report (see status.lua), to loopback clients only.
function _M.status()
    if not status.from_loopback() then
        return respond.error(403, "the status report is served to loopback clients only")
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    ngx.say(status.json())
end

-- The metrics (see metrics.lua) in Prometheus' text format, to loopback
-- clients only.
function _M.metrics()
    if not status.from_loopback() then
        return respond.error(403, "the metrics are served to loopback clients only")
    end
    local text, err = metrics.text()
    if not text then
        return respond.error(500, "metrics are not kept: " .. err)
    end
    ngx.header["Content-Type"] = "text/plain; version=0.0.4"
    ngx.header["Cache-Control"] = "no-store"
    ngx.print(text)
end

function _M.serve(name)
    local route = routes[name]
    if not route then
        ngx.log(ngx.ERR, "mcp-bridge: no route named \"", name, "\" was defined")
        return respond.error(500, "mcp-bridge route is not configured")
    end
    return handler.handle(route)
end

function _M.log()
    handler.log()
end

return _M
