-- Listens to this worker's host: the host tells, as they happen, which
-- sessions started and ended (why, and how long their processes took to
-- go) and how many messages crossed (see rust/host/src/events.rs). One
-- connection per host, held by a timer that waits on it (the host sends a
-- keepalive each silent minute); it ends when the host goes away, and when
-- the host, at the worker's shutdown, has ended every session.
local wire = require("apisix.plugins.mcp.bridge.wire")

local find = string.find
local ngx = ngx
local ngx_log = ngx.log
local ngx_socket_tcp = ngx.socket.tcp
local pcall = pcall
local sub = string.sub
local timer_at = ngx.timer.at

local _M = {}

local CONNECT_TIMEOUT_MS = 1000
local SEND_TIMEOUT_MS = 5000
-- Three of the host's keepalive intervals (a minute each).
local READ_TIMEOUT_MS = 180000

-- [event name] = { function(fields), ... }; fields[1] is the name.
local handlers = {}

-- Calls `fn(fields, host socket path)` for every event named `name`; the
-- event "host_gone" comes when the host this worker listened to is gone.
function _M.on(name, fn)
    local list = handlers[name]
    if not list then
        list = {}
        handlers[name] = list
    end
    list[#list + 1] = fn
end

local function dispatch(fields, path)
    local list = handlers[fields[1]]
    if not list then
        return
    end
    for i = 1, #list do
        local ok, err = pcall(list[i], fields, path)
        if not ok then
            ngx_log(ngx.ERR, "mcp-bridge: handling a host event \"", fields[1], "\": ", err)
        end
    end
end

-- Splits a tab-separated event; empty fields stay (an empty consumer).
local function split(line)
    local fields, at = {}, 1
    while true do
        local tab = find(line, "\t", at, true)
        if not tab then
            fields[#fields + 1] = sub(line, at)
            return fields
        end
        fields[#fields + 1] = sub(line, at, tab - 1)
        at = tab + 1
    end
end
_M.split = split

local function listen(premature, path)
    if premature then
        return
    end
    local sock = ngx_socket_tcp()
    sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS, READ_TIMEOUT_MS)
    local ok, err = sock:connect("unix:" .. path)
    if ok then
        ok, err = wire.send(sock, wire.WATCH, "")
    end
    while ok do
        local kind, payload = wire.receive(sock)
        if kind == wire.EVENT then
            dispatch(split(payload), path)
        elseif not kind then
            err = payload
            break
        end
    end
    sock:close()
    if err ~= "closed" then
        ngx_log(ngx.INFO, "mcp-bridge: stopped listening to the host at ", path, ": ", err)
    end
    dispatch({ "host_gone" }, path)
end

-- Listens to the host at `path`, which this worker has just started.
function _M.start(path)
    local ok, err = timer_at(0, listen, path)
    if not ok and err ~= "process exiting" then
        ngx_log(ngx.WARN, "mcp-bridge: cannot listen to the host's events: ", err)
    end
end

return _M
