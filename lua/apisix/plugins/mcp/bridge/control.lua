-- What an operator may do with live sessions: list those of every worker
-- (route, consumer, transport, the start of the id, backend pid, age, time
-- since the last message), and end one; and see the node in its cluster.
-- APISIX serves these through its control API (see mcp-bridge.lua); they
-- decode the hosts' reports with cjson, which APISIX always has.
local cjson = require("cjson.safe")
local native = require("apisix.plugins.mcp.bridge.native")
local status = require("apisix.plugins.mcp.bridge.status")
local wire = require("apisix.plugins.mcp.bridge.wire")

local find = string.find
local ipairs = ipairs
local ngx = ngx
local ngx_socket_tcp = ngx.socket.tcp
local pairs = pairs
local sort = table.sort
local sub = string.sub
local type = type

local _M = {}

local TOKEN_LEN = 16
-- The host token and 32 random bits: what the list shows of an id, and the
-- least that names a session to end.
local MIN_PREFIX_LEN = 24
local TIMEOUT_MS = 2000

-- This node in its cluster (see status.cluster); nil outside cluster mode.
_M.cluster = status.cluster

-- Every live session of this nginx's workers, oldest first.
function _M.sessions()
    local list = {}
    for _, text in pairs(status.hosts()) do
        local host = cjson.decode(text)
        for _, s in ipairs(host and host.live or {}) do
            s.worker_pid = host.worker
            s.host_pid = host.pid
            list[#list + 1] = s
        end
    end
    sort(list, function(a, b) return a.age_s > b.age_s end)
    return list
end

-- Ends the session whose id starts with `prefix`. Returns true; or nil, an
-- HTTP status and why not.
function _M.end_session(prefix)
    if type(prefix) ~= "string" or #prefix < MIN_PREFIX_LEN or #prefix > 48
       or find(prefix, "[^0-9a-f]") then
        return nil, 400, "give the first " .. MIN_PREFIX_LEN .. " or more characters of a "
                         .. "session id (lowercase hex), as the list shows them"
    end
    local path = native.socket_path(sub(prefix, 1, TOKEN_LEN))
    if not path then
        return nil, 404, "no live session starts with " .. prefix
    end
    local sock = ngx_socket_tcp()
    sock:settimeout(TIMEOUT_MS)
    local ok, err = sock:connect("unix:" .. path)
    if ok then
        ok, err = wire.send(sock, wire.END, prefix)
    end
    local kind, payload
    if ok then
        kind, payload = wire.receive(sock)
        err = payload
    end
    sock:close()
    if kind ~= wire.ACK then
        return nil, 503, "the session's host did not answer: " .. (err or "unexpected answer")
    end
    if sub(payload, 1, 1) ~= "0" then
        return nil, 404, "no live session starts with " .. prefix
    end
    return true
end

return _M
