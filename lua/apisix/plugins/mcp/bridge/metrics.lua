-- The bridge's metrics, in Prometheus terms. Inside APISIX they go through
-- APISIX's prometheus plugin (its exporter's registry, so they appear with
-- APISIX's own, prefixed "apisix_"); elsewhere they are kept in the
-- lua_shared_dict "mcp-bridge-metrics" and rendered by text() (what
-- `mcp-bridge serve --metrics-uri` serves). Without either, nothing is kept.
--
-- What the worker sees itself (refusals, spawn failures) is counted where it
-- happens; the rest comes from the host's events (see watcher.lua).
local registry = require("apisix.plugins.mcp.bridge.registry")
local watcher = require("apisix.plugins.mcp.bridge.watcher")

local concat = table.concat
local find = string.find
local floor = math.floor
local format = string.format
local gsub = string.gsub
local ipairs = ipairs
local ngx = ngx
local ngx_log = ngx.log
local pairs = pairs
local pcall = pcall
local require = require
local sort = table.sort
local huge = math.huge
local match = string.match
local sub = string.sub
local tonumber = tonumber
local tostring = tostring

local _M = {
    DICT = "mcp-bridge-metrics",
}

local PREFIX = "mcp_bridge_"

local TEARDOWN_BUCKETS = { 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10 }

local DEFS = {
    sessions_live = { "gauge", "MCP sessions alive now", { "route" } },
    backends_live = { "gauge", "backend processes alive now", { "route" } },
    sessions_started_total = { "counter", "MCP sessions started", { "route", "transport" } },
    sessions_ended_total = { "counter", "MCP sessions ended, by why",
                             { "route", "transport", "reason" } },
    sessions_refused_total = { "counter", "sessions refused: 429 over a ceiling, 503 when "
                                          .. "the bridge could not start one",
                               { "route", "status" } },
    spawn_failures_total = { "counter", "backends that could not be started", { "route" } },
    backend_restarts_total = { "counter", "backends that crashed and were started again for "
                                          .. "their session (restart_on_crash)",
                               { "route", "transport" } },
    session_teardown_seconds = { "histogram", "from a session's end until its processes "
                                              .. "were gone", { "route" }, TEARDOWN_BUCKETS },
    forwarded_requests_total = { "counter", "requests for another node's session, passed to "
                                            .. "that node", { "route", "transport" } },
    forward_refusals_total = { "counter", "requests for a session of no live node (404), by "
                                          .. "why: forged, owner_gone or loop",
                               { "route", "reason" } },
    cluster_nodes = { "gauge", "live nodes in the cluster's registry, as last seen", {} },
    cluster_sessions = { "gauge", "live sessions of a route on every node of the cluster, "
                                  .. "as last seen", { "route" } },
    cluster_redis_up = { "gauge", "1 when this node reached the cluster's Redis last time "
                                  .. "it tried, else 0", {} },
    messages_total = { "counter", "JSON-RPC messages, in (client to backend) and out",
                       { "route", "direction" } },
    message_bytes_total = { "counter", "bytes of JSON-RPC messages, in and out",
                            { "route", "direction" } },
}

-- The sink: "apisix" (APISIX's prometheus registry), "dict", or false.
local sink
local apisix_metrics

local exporter_missing = false

local function apisix_registry()
    if exporter_missing then
        return nil
    end
    local ok, exporter = pcall(require, "apisix.plugins.prometheus.exporter")
    if not ok then
        exporter_missing = true
        return nil
    end
    local prometheus = exporter.get_prometheus and exporter.get_prometheus()
    if not prometheus then
        return nil
    end
    local registered = {}
    for name, def in pairs(DEFS) do
        local typ, help, labels, buckets = def[1], def[2], def[3], def[4]
        local metric
        if typ == "histogram" then
            metric = prometheus:histogram(PREFIX .. name, help, labels, buckets)
        else
            metric = prometheus[typ](prometheus, PREFIX .. name, help, labels)
        end
        registered[name] = metric
    end
    return registered
end

local function current_sink()
    if sink ~= nil then
        return sink
    end
    apisix_metrics = apisix_registry()
    if apisix_metrics then
        sink = "apisix"
    elseif ngx.shared[_M.DICT] then
        sink = "dict"
    else
        -- APISIX's exporter may not be ready yet: look again next time.
        return false
    end
    return sink
end

-- Registers the metrics with APISIX's registry now, rather than on the
-- first event: the exporter (in APISIX's privileged agent, which serves no
-- session) only types and describes metrics registered in its process.
function _M.register()
    return current_sink()
end

local function escape(value)
    return (gsub(value, '[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function series(name, labels, values, extra)
    local parts = {}
    for i, label in ipairs(labels) do
        parts[i] = label .. '="' .. escape(values[i] or "") .. '"'
    end
    if extra then
        parts[#parts + 1] = extra
    end
    return PREFIX .. name .. "{" .. concat(parts, ",") .. "}"
end

local function dict_add(key, n)
    local ok, err = ngx.shared[_M.DICT]:incr(key, n, 0)
    if not ok then
        ngx_log(ngx.WARN, "mcp-bridge: cannot count ", key, ": ", err)
    end
end

local function add(name, n, values)
    local s = current_sink()
    if s == "apisix" then
        apisix_metrics[name]:inc(n, values)
    elseif s == "dict" then
        dict_add(series(name, DEFS[name][3], values), n)
    end
end

local function observe(name, v, values)
    local s = current_sink()
    if s == "apisix" then
        apisix_metrics[name]:observe(v, values)
    elseif s == "dict" then
        local def = DEFS[name]
        -- Every bucket exists from the first observation on, empty or not.
        for _, bound in ipairs(def[4]) do
            dict_add(series(name .. "_bucket", def[3], values, format('le="%g"', bound)),
                     v <= bound and 1 or 0)
        end
        dict_add(series(name .. "_bucket", def[3], values, 'le="+Inf"'), 1)
        dict_add(series(name .. "_sum", def[3], values), v)
        dict_add(series(name .. "_count", def[3], values), 1)
    end
end

local function set(name, v, values)
    local s = current_sink()
    if s == "apisix" then
        apisix_metrics[name]:set(v, values)
    elseif s == "dict" then
        local ok, err = ngx.shared[_M.DICT]:set(series(name, DEFS[name][3], values), v)
        if not ok then
            ngx_log(ngx.WARN, "mcp-bridge: cannot set ", name, ": ", err)
        end
    end
end

-- Counted by the worker.

function _M.forwarded(route_key, transport)
    add("forwarded_requests_total", 1, { route_key, transport })
end

function _M.forward_refused(route_key, reason)
    add("forward_refusals_total", 1, { route_key, reason })
end

-- The cluster as the registry's last renewal saw it: report = { redis =
-- "up"|"down", nodes = n, sessions = { [route] = n } }.
function _M.cluster(report)
    set("cluster_redis_up", report.redis == "up" and 1 or 0, {})
    if report.redis == "up" then
        set("cluster_nodes", report.nodes or 0, {})
        for route, n in pairs(report.sessions or {}) do
            set("cluster_sessions", n, { route })
        end
    end
end

registry.on_report(_M.cluster)

function _M.refused(route_key, status)
    add("sessions_refused_total", 1, { route_key, tostring(status) })
end

function _M.spawn_failed(route_key)
    add("spawn_failures_total", 1, { route_key })
end

-- From the host's events. Live sessions are also remembered per host, so
-- that those of a host killed outright (which tells nothing) stop counting.

local live = {} -- [host socket path] = { [session id] = route key }

watcher.on("started", function(fields, path)
    local route, transport, id = fields[2], fields[4], fields[5]
    local of_host = live[path] or {}
    live[path] = of_host
    of_host[id] = route
    add("sessions_started_total", 1, { route, transport })
    add("sessions_live", 1, { route })
    add("backends_live", 1, { route })
end)

watcher.on("ended", function(fields, path)
    local route, transport, id, reason = fields[2], fields[4], fields[5], fields[6]
    local of_host = live[path]
    if of_host and of_host[id] then
        of_host[id] = nil
        add("sessions_live", -1, { route })
        add("backends_live", -1, { route })
    end
    add("sessions_ended_total", 1, { route, transport, reason })
    observe("session_teardown_seconds", (tonumber(fields[7]) or 0) / 1000, { route })
end)

watcher.on("restarted", function(fields)
    add("backend_restarts_total", 1, { fields[2], fields[4] })
end)

watcher.on("traffic", function(fields)
    local route = fields[2]
    add("messages_total", tonumber(fields[3]) or 0, { route, "in" })
    add("message_bytes_total", tonumber(fields[4]) or 0, { route, "in" })
    add("messages_total", tonumber(fields[5]) or 0, { route, "out" })
    add("message_bytes_total", tonumber(fields[6]) or 0, { route, "out" })
end)

watcher.on("host_gone", function(_, path)
    local of_host = live[path]
    live[path] = nil
    for _, route in pairs(of_host or {}) do
        add("sessions_live", -1, { route })
        add("backends_live", -1, { route })
    end
end)

-- Orders series by name and labels, and a histogram's buckets by bound (as
-- Prometheus wants them), not as text ("+Inf" and "10" before "2.5").
local function bucket_bound(key)
    local le = match(key, 'le="([^"]*)"}$')
    if not le then
        return nil
    end
    return le == "+Inf" and huge or tonumber(le)
end

local function series_order(a, b)
    local la, lb = bucket_bound(a), bucket_bound(b)
    if la and lb then
        local base_a, base_b = gsub(a, 'le="[^"]*"}$', ""), gsub(b, 'le="[^"]*"}$', "")
        if base_a == base_b then
            return la < lb
        end
    end
    return a < b
end

-- The metrics kept in the shared dict, in Prometheus' text format; nil and
-- why when there is no such dict.
function _M.text()
    local dict = ngx.shared[_M.DICT]
    if not dict then
        return nil, "no lua_shared_dict " .. _M.DICT
    end

    local keys = dict:get_keys(0)
    sort(keys, series_order)
    local out, described = {}, {}
    for _, key in ipairs(keys) do
        local value = dict:get(key)
        local brace = find(key, "{", 1, true)
        if value and brace then
            local name = sub(key, #PREFIX + 1, brace - 1)
            local family = DEFS[name] and name or gsub(name, "_[a-z]+$", "")
            local def = DEFS[family]
            if def and not described[family] then
                described[family] = true
                out[#out + 1] = format("# HELP %s%s %s\n# TYPE %s%s %s\n", PREFIX, family, def[2],
                                       PREFIX, family, def[1])
            end
            out[#out + 1] = format("%s %s\n", key, value == floor(value)
                                                   and format("%d", value)
                                                   or format("%.6g", value))
        end
    end
    return concat(out)
end

return _M
