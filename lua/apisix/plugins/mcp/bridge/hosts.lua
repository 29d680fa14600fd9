-- Talking to hosts: this worker's, to start a session, and any worker's, to
-- reach a session (its id starts with its host's token). Requests to a host
-- go on pooled connections, one per request at a time; a session's own
-- connection is always a fresh one.
--
-- The socket of a session's host is looked up by its token with
-- native.socket_path, which checks the host's directory (a few system
-- calls), and remembered. A request to a remembered socket takes a free
-- pooled connection when there is one, without looking the socket up
-- again: a pooled connection goes to the host it was checked for. Only a
-- new connection needs the check, and it is made just before connecting,
-- as it always was, so a host that is gone is never connected to (no
-- [crit] from nginx) and a socket someone else put there never reached. A
-- host's socket is retired (a plain file takes its place) well before its
-- directory goes, so a connect that races a host's exit is refused rather
-- than meeting a missing path.
local config = require("apisix.plugins.mcp.bridge.config")
local new_memo = require("apisix.plugins.mcp.bridge.memo").new
local native = require("apisix.plugins.mcp.bridge.native")
local wire = require("apisix.plugins.mcp.bridge.wire")
local worker = require("apisix.plugins.mcp.bridge.worker")

local find = string.find
local match = string.match
local ngx = ngx
local ngx_log = ngx.log
local ngx_sleep = ngx.sleep
local ngx_socket_tcp = ngx.socket.tcp
local sub = string.sub

local _M = {
    SESSION_ID_LEN = 48,
    UNAVAILABLE = "the bridge cannot start sessions right now",
}

local TOKEN_LEN = 16
-- Sockets remembered (by token) and connection arguments (by path), each
-- forgotten all at once when there are more.
local MAX_REMEMBERED = 256
-- An address a connect() takes from the pool but cannot connect to: the
-- lua module looks for a free pooled connection before it reads the
-- address, and fails on this one without a system call or a log line.
local POOLED_ONLY = "unix:"
local CONNECT_TIMEOUT_MS = 1000
local SEND_TIMEOUT_MS = 10000
local SPAWN_TIMEOUT_MS = 10000
local REPLY_TIMEOUT_MS = 60000
local POOL_IDLE_MS = 60000
local POOL_SIZE = 64

local SESSION_POOL_PREFIX = "mcp-bridge session "
local REQUEST_POOL_PREFIX = "mcp-bridge request "

-- How long to wait before each new attempt to reach this worker's host,
-- when it could not be reached but does not look dead yet (it is being
-- killed, and something still holds its end of the control channel).
local HOST_RETRY_DELAYS = { 0, 0.01, 0.05 }

-- Verdicts on ids: a client sends its session's id with every request.
local id_verdicts = new_memo(MAX_REMEMBERED)

function _M.is_session_id(s)
    if #s ~= _M.SESSION_ID_LEN then
        return false
    end
    local verdict = id_verdicts:get(s)
    if verdict == nil then
        verdict = id_verdicts:set(s, not find(s, "[^0-9a-f]"))
    end
    return verdict
end

-- Hosts' sockets by token, as native.socket_path found them.
local socket_of = new_memo(MAX_REMEMBERED)

-- The settings (runtime_dir) may name another directory now.
worker.on_configure(function()
    socket_of:clear()
end)

-- The address and pool options of requests to `path`, made once.
local targets = new_memo(MAX_REMEMBERED)

local function target_of(path)
    return targets:get(path)
           or targets:set(path, { "unix:" .. path, { pool = REQUEST_POOL_PREFIX .. path } })
end

local function new_socket()
    local sock = ngx_socket_tcp()
    sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS, REPLY_TIMEOUT_MS)
    return sock
end

-- A connection to the host of session `id` (a pooled one when one is
-- free), and that host's socket; or nil when no such host runs.
-- `checked`: the caller knows `id` is well formed.
function _M.connect_session(id, checked)
    if not checked and not _M.is_session_id(id) then
        return nil
    end
    local token = sub(id, 1, TOKEN_LEN)
    local sock = new_socket()
    local path = socket_of:get(token)
    -- The options go third: APISIX's wrapper of connect drops them second.
    if path and sock:connect(POOLED_ONLY, nil, target_of(path)[2]) then
        return sock, path
    end
    -- A new connection (see the top of this file).
    path = native.socket_path(token)
    if not path then
        socket_of:forget(token)
        return nil
    end
    socket_of:set(token, path)
    local target = target_of(path)
    if not sock:connect(target[1], nil, target[2]) then
        -- The host of that session is gone, and the session with it.
        return nil
    end
    return sock, path
end

-- This worker's host's socket (started if needed), or nil and why not.
function _M.own()
    local path, err = worker.host_socket()
    if not path then
        -- A worker that is reloading or quitting refuses new sessions; its
        -- client retries and reaches a new worker.
        ngx_log(err == native.EXITING and ngx.INFO or ngx.ERR, "mcp-bridge: ", err)
    end
    return path, err
end

-- Sends a request frame (payload pieces `a` to `f`) on `sock`, a
-- connection to a host, and reads the first frame of the answer. Returns
-- the connection (for the rest of the answer; give it to done()), the
-- frame's kind and payload; or nil and why not (the connection is closed).
function _M.exchange(sock, kind, a, b, c, d, e, f)
    local ok, err = wire.send(sock, kind, a, b, c, d, e, f)
    local answer, payload
    if ok then
        answer, payload = wire.receive(sock)
        err = payload
    end
    if not answer then
        sock:close()
        return nil, err
    end
    return sock, answer, payload
end

-- exchange() on a pooled connection to the host at `path`; nil, "connect"
-- and why not when the host is not there.
function _M.request(path, kind, a, b, c, d, e, f)
    local sock = new_socket()
    local target = target_of(path)
    local ok, err = sock:connect(target[1], nil, target[2])
    if not ok then
        return nil, "connect", err
    end
    return _M.exchange(sock, kind, a, b, c, d, e, f)
end

-- Returns a request's connection to the pool once its answer was read
-- whole; closes it otherwise.
function _M.done(sock, whole)
    if whole then
        sock:setkeepalive(POOL_IDLE_MS, POOL_SIZE)
    else
        sock:close()
    end
end

-- Asks this worker's host to start a backend for an SSE session of `conf`.
-- Returns { sock =, id =, pid = } for the new session; or nil, an HTTP
-- status and a message for the client.
function _M.start_session(conf, binding, attempt)
    attempt = attempt or 1
    local path = _M.own()
    if not path then
        return nil, 503, _M.UNAVAILABLE
    end
    local sock = ngx_socket_tcp()
    sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS, SPAWN_TIMEOUT_MS)
    -- A session's connection must be a fresh one: never a pooled request
    -- connection (this pool name is never given to setkeepalive).
    local ok, err = sock:connect("unix:" .. path, nil, { pool = SESSION_POOL_PREFIX .. path })
    if ok then
        ok, err = wire.send(sock, wire.SPAWN, binding, config.spawn_request(conf))
    end
    local kind, payload
    if ok then
        kind, payload = wire.receive(sock)
        err = payload
    end
    if not kind then
        sock:close()
        local delay = HOST_RETRY_DELAYS[attempt]
        if delay then
            -- The host may have died since it was last seen alive; asking
            -- again starts a new one once it is seen dead.
            if delay > 0 then
                ngx_sleep(delay)
            end
            return _M.start_session(conf, binding, attempt + 1)
        end
        ngx_log(ngx.ERR, "mcp-bridge: host at ", path, ": ", err)
        return nil, 503, _M.UNAVAILABLE
    end
    if kind == wire.UNAVAILABLE then
        sock:close()
        ngx_log(ngx.INFO, "mcp-bridge: ", payload)
        return nil, 503, _M.UNAVAILABLE
    end
    if kind == wire.FAILED then
        -- The host logged the details (paths, the user); the client gets
        -- the short reason.
        sock:close()
        return nil, 502, payload .. " (the gateway's error log says why)"
    end
    local session_id, pid = match(payload, "^(%x+) (%d+)$")
    if kind ~= wire.READY or not session_id then
        sock:close()
        ngx_log(ngx.ERR, "mcp-bridge: unexpected answer from the host: ", kind)
        return nil, 502, "the bridge could not start the session"
    end
    return { sock = sock, id = session_id, pid = pid }
end

return _M
