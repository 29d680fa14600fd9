-- What the bridge holds right now, as JSON: this worker's slots, the hosts
-- of every worker of this nginx, and the node's slot counts. For operators
-- and the chaos run; the standalone gateway serves it on loopback when
-- asked to (--status-uri).
local cluster = require("apisix.plugins.mcp.bridge.cluster")
local json = require("apisix.plugins.mcp.bridge.json")
local native = require("apisix.plugins.mcp.bridge.native")
local node_slots = require("apisix.plugins.mcp.node_slots")
local registry = require("apisix.plugins.mcp.bridge.registry")
local wire = require("apisix.plugins.mcp.bridge.wire")

local concat = table.concat
local ipairs = ipairs
local match = string.match
local ngx = ngx
local ngx_socket_tcp = ngx.socket.tcp
local pairs = pairs
local sort = table.sort
local sub = string.sub
local tonumber = tonumber

local _M = {}

local TIMEOUT_MS = 2000

-- A host's own statistics (JSON text), or nil and why not.
function _M.host_stats(path)
    local sock = ngx_socket_tcp()
    sock:settimeout(TIMEOUT_MS)
    local ok, err = sock:connect("unix:" .. path)
    if not ok then
        return nil, err
    end
    ok, err = wire.send(sock, wire.QUERY, "")
    local kind, payload
    if ok then
        kind, payload = wire.receive(sock)
        err = payload
    end
    sock:close()
    if kind ~= wire.STATS then
        return nil, err or "unexpected answer"
    end
    return payload
end

-- The statistics (JSON texts) of the hosts of every worker of this nginx,
-- by host token. Hosts of other nginx instances of the same user share the
-- runtime directory; they name another master.
function _M.hosts()
    local master = native.stats().master_pid
    local found = {}
    for token, path in pairs(native.hosts()) do
        local stats = _M.host_stats(path)
        if stats and tonumber(match(stats, '"master":(%d+)')) == master then
            found[token] = stats
        end
    end
    return found
end

-- Whether the client is on this machine.
function _M.from_loopback()
    local addr = ngx.var.remote_addr or ""
    return sub(addr, 1, 4) == "127." or addr == "::1" or addr == "unix:"
end

-- This node in its cluster, as the registry last saw it; nil outside
-- cluster mode.
function _M.cluster()
    local c = cluster.settings()
    if not c then
        return nil
    end
    local report = registry.report() or {}
    return { name = c.name, node = c.node_address, redis = report.redis, nodes = report.nodes,
             sessions = report.sessions }
end

local function cluster_json()
    local state = _M.cluster()
    return state and ',"cluster":' .. json.value(state) or ""
end

-- Reclaims slots of dead workers first, so the figures are current.
function _M.json()
    node_slots.reclaim()
    local stats = native.stats()
    local worker = {
        pid = ngx.worker.pid(),
        exiting = stats.exiting,
        host_pid = stats.host_pid,
        hosts_started = stats.hosts_started,
        slots = stats.slots,
    }
    local tokens, hosts = {}, _M.hosts()
    for token in pairs(hosts) do
        tokens[#tokens + 1] = token
    end
    sort(tokens)
    local list = {}
    for i, token in ipairs(tokens) do
        list[i] = hosts[token]
    end
    return concat({
        '{"worker":', json.value(worker),
        ',"hosts":[', concat(list, ","), "]",
        ',"node":', json.value(node_slots.snapshot()),
        cluster_json(),
        "}",
    })
end

return _M
