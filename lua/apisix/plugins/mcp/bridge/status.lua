-- What the bridge holds right now, as JSON: this worker's slots and host,
-- and the node's slot counts. For operators and the chaos run; the
-- standalone gateway serves it on loopback when asked to (--status-uri).
local json = require("apisix.plugins.mcp.bridge.json")
local native = require("apisix.plugins.mcp.bridge.native")
local node_slots = require("apisix.plugins.mcp.node_slots")
local wire = require("apisix.plugins.mcp.bridge.wire")

local concat = table.concat
local ngx = ngx
local ngx_socket_tcp = ngx.socket.tcp

local _M = {}

local TIMEOUT_MS = 2000

-- The host's own statistics (JSON text), or nil and why not. Never starts
-- a host.
local function host_stats(path)
    if not path then
        return nil, "no host runs"
    end
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
    local host = host_stats(stats.host_socket)
    return concat({
        '{"worker":', json.value(worker),
        ',"host":', host or "null",
        ',"node":', json.value(node_slots.snapshot()),
        "}",
    })
end

return _M
