-- The HTTP+SSE transport of MCP (protocol 2024-11-05):
--   GET  {base_uri}/sse                      opens a session and streams it
--   POST {base_uri}/message?sessionId=<id>   delivers one client message
--
-- A session lives as long as the stream's connection to the host: every
-- way the GET request ends closes that connection, and the host then kills
-- the backend. Nothing here polls: the stream waits on the host socket
-- (the host sends a keepalive frame after each silent interval), and a
-- client abort ends the request at once through ngx.on_abort.
local admission = require("apisix.plugins.mcp.bridge.admission")
local cluster = require("apisix.plugins.mcp.bridge.cluster")
local eventstream = require("apisix.plugins.mcp.bridge.eventstream")
local forward = require("apisix.plugins.mcp.bridge.forward")
local hosts = require("apisix.plugins.mcp.bridge.hosts")
local metrics = require("apisix.plugins.mcp.bridge.metrics")
local request_body = require("apisix.plugins.mcp.bridge.body")
local respond = require("apisix.plugins.mcp.bridge.respond")
local session_limit = require("apisix.plugins.mcp.session_limit")
local wire = require("apisix.plugins.mcp.bridge.wire")

local find = string.find
local ngx = ngx
local ngx_exit = ngx.exit
local ngx_flush = ngx.flush
local ngx_header = ngx.header
local ngx_log = ngx.log
local ngx_print = ngx.print
local req = ngx.req
local sub = string.sub
local tonumber = tonumber
local type = type

local _M = {}

local CONNECT_TIMEOUT_MS = 1000
local SEND_TIMEOUT_MS = 10000
local MAX_URI_ARGS = 32
-- The query string of every POST a client makes of the endpoint event.
local PLAIN_ARGS = "^sessionId=[0-9a-f]+$"
local PLAIN_ARGS_LEN = #"sessionId=" + hosts.SESSION_ID_LEN
-- Beyond two keepalive intervals, this much more silence means a stuck host.
local HOST_SILENCE_MARGIN_MS = 5000

local RETRY_AFTER = { ["Retry-After"] = admission.RETRY_AFTER_SECONDS }

-- A refusal that does not read the body; a body found malformed meanwhile
-- gets 400 instead.
local function refuse(status, message)
    if not request_body.discard() then
        return respond.error(400, request_body.MALFORMED)
    end
    return respond.error(status, message)
end

-- GET {base_uri}/sse
function _M.open(route, binding)
    local conf = route.conf
    -- ngx_lua holds an HTTP/1.0 response back until it is complete
    -- (lua_http10_buffering), so a stream would pile up in memory instead.
    if (req.http_version() or 1.1) < 1.1 then
        return respond.error(505, "the event stream needs HTTP/1.1 or later")
    end
    local slot, refused, why = admission.take(route)
    if not slot then
        return respond.error(refused, why, RETRY_AFTER)
    end
    eventstream.watch_client_abort()

    local session, status, message = hosts.start_session(conf, binding)
    if not session then
        session_limit.release(slot)
        if status == 503 then
            admission.refused(route, 503, message)
            return respond.error(status, message, RETRY_AFTER)
        end
        metrics.spawn_failed(route.key)
        return respond.error(status, message)
    end
    local sock, pid = session.sock, session.pid

    ngx.status = 200
    ngx_header["Content-Type"] = "text/event-stream"
    ngx_header["Cache-Control"] = "no-cache"
    ngx_header["X-Accel-Buffering"] = "no"
    ngx_log(ngx.INFO, "mcp-bridge: session started, backend pid ", pid)
    local ok, err = ngx_print("event: endpoint\ndata: ", conf.base_uri, "/message?sessionId=",
                              cluster.tag(session.id), "\n\n")
    if ok then
        ok, err = ngx_flush(true)
    end
    local ended, noteworthy
    if ok then
        sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS,
                         2 * conf.keepalive_interval_ms + HOST_SILENCE_MARGIN_MS)
        local stream = eventstream.start(conf.slow_client_timeout_ms,
                                         "session of backend pid " .. pid)
        local exit
        exit, ended, noteworthy = stream:relay(sock)
        ended = exit or ended
        stream:stop()
    else
        ended = "client write failed: " .. (err or "unknown")
    end
    sock:close()
    session_limit.release(slot)
    ngx_log(noteworthy and ngx.WARN or ngx.INFO, "mcp-bridge: session of backend pid ", pid,
            " ended: ", ended)
    return ngx_exit(ngx.HTTP_OK)
end

local ACK_STATUS = {
    ["0"] = 202,
    ["1"] = 404,
    ["2"] = 400,
    ["3"] = 503,
    ["4"] = 413,
}

-- The POST's body, bounded by max_message_bytes; ends the request with 413
-- or 400 when it cannot be had.
local function read_message(route, declared)
    local conf = route.conf
    local body, status, why = request_body.read(conf.max_message_bytes, declared)
    if body then
        return body
    end
    if status == 413 then
        return respond.error(413, "request body is larger than "
                                  .. route.name("max_message_bytes") .. " ("
                                  .. conf.max_message_bytes .. ")")
    end
    return respond.error(400, why)
end

-- A POST for a session of another node of the cluster: the owner answers.
local function forward_message(route, owner)
    if ngx.var.http_x_mcp_bridge_forwarded then
        -- Forwarded to the wrong node: never passed on again.
        metrics.forward_refused(route.key, "loop")
        return refuse(404, "session not found")
    end
    local body = read_message(route)
    forward.relay(route, owner, "sse", body)
    return respond.error(404, "session not found")
end

-- POST {base_uri}/message?sessionId=<id>
function _M.deliver(route, binding)
    local session_id, checked
    local query = ngx.var.args
    if query and #query == PLAIN_ARGS_LEN and find(query, PLAIN_ARGS) then
        -- The query is the well-formed id alone, as the endpoint event gives it.
        session_id, checked = sub(query, #query - hosts.SESSION_ID_LEN + 1), true
    else
        local args, err = req.get_uri_args(MAX_URI_ARGS)
        if err == "truncated" then
            return refuse(400, "too many query parameters")
        end
        session_id = args.sessionId
        if type(session_id) == "table" then
            return refuse(400, "sessionId must be given once")
        end
        if type(session_id) ~= "string" or session_id == "" then
            return refuse(400, "missing sessionId query parameter")
        end
    end
    -- The owner's address, or this node's host's id.
    local where, found = cluster.resolve(session_id)
    if where == "remote" then
        return forward_message(route, found)
    elseif not where then
        metrics.forward_refused(route.key, "forged")
        return refuse(404, "session not found")
    end
    if found ~= session_id then
        -- The host's part of a cluster id, checked with it.
        session_id, checked = found, true
    end
    -- A client gets 404 for a session whose host is gone whatever its
    -- body. A body of a declared length within the bound (every client's
    -- message) cannot be refused, so it is read first and one connection
    -- serves; any other body is read only once the host was found.
    local declared = tonumber(ngx.var.http_content_length)
    if not declared or declared == 0 or declared > route.conf.max_message_bytes then
        local sock = hosts.connect_session(session_id, checked)
        if not sock then
            return refuse(404, "session not found")
        end
        -- Back to the pool while the body arrives, which may take long.
        hosts.done(sock, true)
    end

    local body = read_message(route, declared)
    local sock, path = hosts.connect_session(session_id, checked)
    if not sock then
        return respond.error(404, "session not found")
    end

    local kind, payload
    sock, kind, payload = hosts.exchange(sock, wire.DELIVER, session_id, binding, body)
    if not sock or kind ~= wire.ACK or payload == "" then
        if sock then
            hosts.done(sock, false)
        end
        if kind == "timeout" then
            ngx_log(ngx.ERR, "mcp-bridge: host at ", path, " did not acknowledge a message")
            return respond.error(504, "the bridge did not acknowledge the message in time")
        end
        -- The host of that session is gone, and the session with it.
        return respond.error(404, "session not found")
    end
    hosts.done(sock, true)

    local code = ACK_STATUS[sub(payload, 1, 1)] or 502
    if code == 202 then
        return respond.empty(202)
    end
    local reason = sub(payload, 2)
    if code == 503 then
        return respond.error(503, reason, RETRY_AFTER)
    end
    return respond.error(code, reason ~= "" and reason or "message refused")
end

-- Releases the request's slot (session_limit keeps it in ngx.ctx), whatever
-- path the request ended by.
function _M.log()
    session_limit.release()
end

return _M
