-- The HTTP+SSE transport of MCP (protocol 2024-11-05):
--   GET  {base_uri}/sse                      opens a session and streams it
--   POST {base_uri}/message?sessionId=<id>   delivers one client message
--
-- A session lives as long as the stream's connection to the host: every
-- way the GET request ends closes that connection, and the host then kills
-- the backend. Nothing here polls: the stream waits on the host socket
-- (the host sends a keepalive frame after each silent interval), and a
-- client abort ends the request at once through ngx.on_abort.
local request_body = require("apisix.plugins.mcp.bridge.body")
local config = require("apisix.plugins.mcp.bridge.config")
local metrics = require("apisix.plugins.mcp.bridge.metrics")
local native = require("apisix.plugins.mcp.bridge.native")
local refusal_log = require("apisix.plugins.mcp.bridge.refusal")
local respond = require("apisix.plugins.mcp.bridge.respond")
local session_limit = require("apisix.plugins.mcp.session_limit")
local wire = require("apisix.plugins.mcp.bridge.wire")
local worker = require("apisix.plugins.mcp.bridge.worker")

local new_semaphore = require("ngx.semaphore").new

local find = string.find
local get_phase = ngx.get_phase
local match = string.match
local ngx = ngx
local ngx_exit = ngx.exit
local ngx_flush = ngx.flush
local ngx_header = ngx.header
local ngx_log = ngx.log
local ngx_on_abort = ngx.on_abort
local ngx_print = ngx.print
local ngx_sleep = ngx.sleep
local ngx_socket_tcp = ngx.socket.tcp
local req = ngx.req
local sub = string.sub
local thread_kill = ngx.thread.kill
local thread_spawn = ngx.thread.spawn
local type = type

local _M = {}

local SESSION_ID_LEN = 48
local TOKEN_LEN = 16
local RETRY_AFTER_SECONDS = "1"

local CONNECT_TIMEOUT_MS = 1000
local SEND_TIMEOUT_MS = 10000
local SPAWN_TIMEOUT_MS = 10000
local ACK_TIMEOUT_MS = 10000
local POOL_IDLE_MS = 60000
local POOL_SIZE = 64
local MAX_URI_ARGS = 32
-- Beyond two keepalive intervals, this much more silence means a stuck host.
local HOST_SILENCE_MARGIN_MS = 5000

local SESSION_POOL_PREFIX = "mcp-bridge session "
local DELIVERY_POOL_PREFIX = "mcp-bridge delivery "

local EVENT_MESSAGE = "event: message\ndata: "
local EVENT_END = "\n\n"
local KEEPALIVE = ": keepalive\n\n"

-- How long the write watchdog waits for the next write to begin.
local WATCHDOG_IDLE_SECONDS = 86400

local warned_abort_off = false

local function on_abort()
    -- Ends the request at once: its cosockets close, so the host sees the
    -- session's connection close and kills the backend; the log phase
    -- releases the slot.
    ngx_exit(499)
end

local function watch_client_abort()
    local ok, err = ngx_on_abort(on_abort)
    if ok or warned_abort_off then
        return
    end
    warned_abort_off = true
    ngx_log(ngx.WARN, "mcp-bridge: cannot watch for client aborts (", err, "): add ",
            "\"lua_check_client_abort on;\" to the http block; until then a client that ",
            "disconnects is noticed only when a write to it fails")
end

-- Ends the request when one write to the client takes longer than the
-- limit. Waiting for each write to finish is the back-pressure (a slow
-- client slows the host, which slows the backend, and nothing piles up
-- here); the watchdog bounds how long that wait may last. It sleeps
-- between writes: `began` is posted when a write starts, `ended` when it
-- has finished.
local function watch_writes(writes, limit_ms)
    local limit = limit_ms / 1000
    while true do
        if writes.began:wait(WATCHDOG_IDLE_SECONDS) and not writes.ended:wait(limit) then
            ngx_log(ngx.WARN, "mcp-bridge: session of backend pid ", writes.pid, " ended: the ",
                    "client took over slow_client_timeout_ms (", limit_ms, " ms) to accept ",
                    "one message")
            -- Ends the request even while the main thread waits in ngx.flush.
            return ngx_exit(ngx.ERROR)
        end
    end
end

local function flush(writes)
    writes.began:post(1)
    local ok, err = ngx_flush(true)
    writes.ended:post(1)
    return ok, err
end

local function write_event(writes, payload)
    local ok, err = ngx_print(EVENT_MESSAGE, payload, EVENT_END)
    if not ok then
        return nil, err
    end
    return flush(writes)
end

local function write_keepalive(writes)
    local ok, err = ngx_print(KEEPALIVE)
    if not ok then
        return nil, err
    end
    return flush(writes)
end

-- Forwards the host's frames to the client until the session ends. The
-- host sends a keepalive frame after each silent interval, so a read that
-- times out means the host is stuck. Returns why the session ended and
-- whether that deserves a warning.
local function stream(sock, writes)
    local phase = get_phase()
    while true do
        local kind, payload = wire.receive(sock)
        local ok, err
        if kind == wire.MESSAGE then
            ok, err = write_event(writes, payload)
        elseif kind == wire.KEEPALIVE then
            ok, err = write_keepalive(writes)
        elseif kind == wire.EXIT then
            return payload
        elseif kind then
            return "unexpected frame \"" .. kind .. "\" from the host", true
        else
            return "host connection " .. payload, payload ~= "closed"
        end
        if not ok then
            return "client write failed: " .. (err or "unknown")
        end
        if get_phase() ~= phase then
            -- See lua_module_refusal() in mcp-bridge.lua: nothing more can
            -- be written; say why rather than fail on the next call.
            return "the lua module lost the request's phase (" .. get_phase() .. ") after a "
                   .. "write to a slow client: it needs the fix of lua-nginx-module 0.10.29", true
        end
    end
end

local UNAVAILABLE = "the bridge cannot start sessions right now"

-- How long to wait before each new attempt to reach this worker's host,
-- when it could not be reached but does not look dead yet (it is being
-- killed, and something still holds its end of the control channel).
local HOST_RETRY_DELAYS = { 0, 0.01, 0.05 }

-- Asks this worker's host to start a backend for `conf`. Returns
-- { sock =, id =, pid = } for the new session; or nil, an HTTP status and a
-- message for the client.
local function start_backend(conf, binding, attempt)
    attempt = attempt or 1
    local path, err = worker.host_socket()
    if not path then
        -- A worker that is reloading or quitting refuses new sessions; its
        -- client retries and reaches a new worker.
        ngx_log(err == native.EXITING and ngx.INFO or ngx.ERR, "mcp-bridge: ", err)
        return nil, 503, UNAVAILABLE
    end
    local sock = ngx_socket_tcp()
    sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS, SPAWN_TIMEOUT_MS)
    local ok
    -- A session's connection must be a fresh one: never a pooled delivery
    -- connection (this pool name is never given to setkeepalive). The
    -- options go third: APISIX's wrapper of connect drops them second.
    ok, err = sock:connect("unix:" .. path, nil, { pool = SESSION_POOL_PREFIX .. path })
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
            return start_backend(conf, binding, attempt + 1)
        end
        ngx_log(ngx.ERR, "mcp-bridge: host at ", path, ": ", err)
        return nil, 503, UNAVAILABLE
    end
    if kind == wire.UNAVAILABLE then
        sock:close()
        ngx_log(ngx.INFO, "mcp-bridge: ", payload)
        return nil, 503, UNAVAILABLE
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

-- GET {base_uri}/sse
function _M.open(route, binding)
    local conf = route.conf
    -- ngx_lua holds an HTTP/1.0 response back until it is complete
    -- (lua_http10_buffering), so a stream would pile up in memory instead.
    if (req.http_version() or 1.1) < 1.1 then
        return respond.error(505, "the event stream needs HTTP/1.1 or later")
    end
    local slot, refusal = session_limit.acquire(conf.max_sessions, route.key,
                                                conf.max_sessions_per_node)
    if not slot then
        if refusal == "rejected" or refusal == "node" then
            local ceiling = refusal == "node"
                and conf.max_sessions_per_node .. " on this node at a time ("
                    .. route.name("max_sessions_per_node") .. ")"
                or conf.max_sessions .. " per worker at a time (" .. route.name("max_sessions")
                    .. ")"
            local message = "too many sessions: at most " .. ceiling
            refusal_log.log(route.key, 429, message)
            metrics.refused(route.key, 429)
            return respond.error(429, message, { ["Retry-After"] = RETRY_AFTER_SECONDS })
        end
        refusal_log.log(route.key, 503, UNAVAILABLE)
        metrics.refused(route.key, 503)
        return respond.error(503, UNAVAILABLE, { ["Retry-After"] = RETRY_AFTER_SECONDS })
    end
    watch_client_abort()

    local session, status, message = start_backend(conf, binding)
    if not session then
        session_limit.release(slot)
        if status == 503 then
            refusal_log.log(route.key, 503, message)
            metrics.refused(route.key, 503)
            return respond.error(status, message, { ["Retry-After"] = RETRY_AFTER_SECONDS })
        end
        metrics.spawn_failed(route.key)
        return respond.error(status, message)
    end
    local sock, pid = session.sock, session.pid
    local ok, err

    ngx.status = 200
    ngx_header["Content-Type"] = "text/event-stream"
    ngx_header["Cache-Control"] = "no-cache"
    ngx_header["X-Accel-Buffering"] = "no"
    ngx_log(ngx.INFO, "mcp-bridge: session started, backend pid ", pid)
    ok, err = ngx_print("event: endpoint\ndata: ", conf.base_uri, "/message?sessionId=",
                        session.id, EVENT_END)
    if ok then
        ok, err = ngx_flush(true)
    end
    local why, noteworthy
    if ok then
        sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS,
                         2 * conf.keepalive_interval_ms + HOST_SILENCE_MARGIN_MS)
        local writes = { began = new_semaphore(), ended = new_semaphore(), pid = pid }
        local watchdog = thread_spawn(watch_writes, writes, conf.slow_client_timeout_ms)
        why, noteworthy = stream(sock, writes)
        thread_kill(watchdog)
    else
        why = "client write failed: " .. (err or "unknown")
    end
    sock:close()
    session_limit.release(slot)
    ngx_log(noteworthy and ngx.WARN or ngx.INFO, "mcp-bridge: session of backend pid ", pid,
            " ended: ", why)
    return ngx_exit(ngx.HTTP_OK)
end

local ACK_STATUS = {
    ["0"] = 202,
    ["1"] = 404,
    ["2"] = 400,
    ["3"] = 503,
    ["4"] = 413,
}

local function is_session_id(s)
    return #s == SESSION_ID_LEN and not find(s, "[^0-9a-f]")
end

-- POST {base_uri}/message?sessionId=<id>
function _M.deliver(route, binding)
    local conf = route.conf
    local args, err = req.get_uri_args(MAX_URI_ARGS)
    if err == "truncated" then
        req.discard_body()
        return respond.error(400, "too many query parameters")
    end
    local session_id = args.sessionId
    if type(session_id) == "table" then
        req.discard_body()
        return respond.error(400, "sessionId must be given once")
    end
    if type(session_id) ~= "string" or session_id == "" then
        req.discard_body()
        return respond.error(400, "missing sessionId query parameter")
    end
    local path = is_session_id(session_id) and native.socket_path(sub(session_id, 1, TOKEN_LEN))
    if not path then
        req.discard_body()
        return respond.error(404, "session not found")
    end

    local body, status, why = request_body.read(conf.max_message_bytes)
    if not body then
        if status == 413 then
            return respond.error(413, "request body is larger than "
                                      .. route.name("max_message_bytes") .. " ("
                                      .. conf.max_message_bytes .. ")")
        end
        return respond.error(400, why)
    end

    local sock = ngx_socket_tcp()
    sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS, ACK_TIMEOUT_MS)
    local ok = sock:connect("unix:" .. path, nil, { pool = DELIVERY_POOL_PREFIX .. path })
    if not ok then
        -- The host of that session is gone, and the session with it.
        return respond.error(404, "session not found")
    end
    ok, err = wire.send(sock, wire.DELIVER, session_id, binding, body)
    local kind, payload
    if ok then
        kind, payload = wire.receive(sock)
        err = payload
    end
    if kind ~= wire.ACK or payload == "" then
        sock:close()
        if err == "timeout" then
            ngx_log(ngx.ERR, "mcp-bridge: host at ", path, " did not acknowledge a message")
            return respond.error(504, "the bridge did not acknowledge the message in time")
        end
        return respond.error(404, "session not found")
    end
    sock:setkeepalive(POOL_IDLE_MS, POOL_SIZE)

    local code = ACK_STATUS[sub(payload, 1, 1)] or 502
    if code == 202 then
        return respond.empty(202)
    end
    local reason = sub(payload, 2)
    if code == 503 then
        return respond.error(503, reason, { ["Retry-After"] = RETRY_AFTER_SECONDS })
    end
    return respond.error(code, reason ~= "" and reason or "message refused")
end

-- Releases the request's slot (session_limit keeps it in ngx.ctx), whatever
-- path the request ended by.
function _M.log()
    session_limit.release()
end

return _M
