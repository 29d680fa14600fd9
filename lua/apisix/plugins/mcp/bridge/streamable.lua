-- The Streamable HTTP endpoint of MCP, {base_uri} itself: POST, GET and
-- DELETE, for sessionful clients (2025-03-26 to 2025-11-25) and stateless
-- ones (2026-07-28) alike. This side checks the HTTP (method, media types,
-- size, the session id's shape), finds the host (the session's, or this
-- worker's for a request without one) and writes the reply the host
-- decides (see rust/host/src/http.rs): one JSON document, or an event
-- stream, or nothing.
--
-- A session belongs to the host, not to a request, so the slot its
-- `initialize` took is kept here until the host tells this worker (see
-- watcher.lua) that the session ended.
local admission = require("apisix.plugins.mcp.bridge.admission")
local cluster = require("apisix.plugins.mcp.bridge.cluster")
local config = require("apisix.plugins.mcp.bridge.config")
local eventstream = require("apisix.plugins.mcp.bridge.eventstream")
local forward = require("apisix.plugins.mcp.bridge.forward")
local hosts = require("apisix.plugins.mcp.bridge.hosts")
local json = require("apisix.plugins.mcp.bridge.json")
local new_memo = require("apisix.plugins.mcp.bridge.memo").new
local metrics = require("apisix.plugins.mcp.bridge.metrics")
local native = require("apisix.plugins.mcp.bridge.native")
local has_cjson, cjson = pcall(require, "cjson.safe")
if not has_cjson then
    cjson = nil
end
local request_body = require("apisix.plugins.mcp.bridge.body")
local respond = require("apisix.plugins.mcp.bridge.respond")
local session_limit = require("apisix.plugins.mcp.session_limit")
local watcher = require("apisix.plugins.mcp.bridge.watcher")
local wire = require("apisix.plugins.mcp.bridge.wire")

local bit = require("bit")

local band = bit.band
local char = string.char
local find = string.find
local lower = string.lower
local match = string.match
local ngx = ngx
local ngx_exit = ngx.exit
local pairs = pairs
local req = ngx.req
local rshift = bit.rshift
local tonumber = tonumber

local _M = {}

local SERVER_ERROR = -32000
local PARSE_ERROR = -32700
local SESSION_NOT_FOUND = -32001
local ALLOW = { Allow = "GET, POST, DELETE" }
local RETRY_AFTER = { ["Retry-After"] = admission.RETRY_AFTER_SECONDS }
-- Beyond two keepalive intervals, this much more silence means a stuck host.
local HOST_SILENCE_MARGIN_MS = 5000

-- The retry of a stateless call that waits for its client's input names
-- the host holding it: its requestState starts with that host's token (in
-- cluster mode, after the tag of the node that runs that host).
local REQUEST_STATE = '"requestState"%s*:%s*"([^"]*)"'
local HOST_TOKEN = "^(" .. string.rep("%x", 16) .. ")%."

-- The host of the call a retry's requestState names, connected; or nil and
-- the address of the node that holds it (cluster mode); nil when the
-- request is no such retry or that host is gone (its own host then tells
-- the client the state is of no use).
local function state_host(body)
    if not find(body, '"requestState"', 1, true) then
        return nil
    end
    local state = match(body, REQUEST_STATE)
    if not state then
        return nil
    end
    local where, rest = cluster.resolve_state(state)
    if where == "remote" then
        return nil, nil, rest
    end
    local token = where and match(rest, HOST_TOKEN)
    if token then
        return hosts.connect_session(token, true)
    end
end
-- The host's answer to an initialize that came without a slot.
local NEED_SLOT = 428

-- ngx.ctx keys: a slot taken for an initialize and not yet kept; a new
-- session whose id the client has not been sent yet.
local PENDING_SLOT = "mcp-bridge.streamable.pending_slot"
local UNANSWERED = "mcp-bridge.streamable.unanswered"

-- Slots of this worker's live Streamable sessions, by session id.
local kept = {}
-- Sessions whose end was told before their slot was kept (a race with
-- the reply to initialize), by id.
local ended_early = new_memo(1000)

-- Frees the slot kept for session `id`, and forgets the session unless
-- `deleted` (then its host's "ended" event, which comes once its processes
-- are gone, does that). Returns whether the session was kept here.
local function release(id, deleted)
    local k = kept[id]
    if not k then
        return false
    end
    if not k.freed then
        k.freed = true
        session_limit.release(k.slot)
    end
    if not deleted then
        kept[id] = nil
    end
    return true
end

watcher.on("ended", function(fields)
    if fields[4] ~= "streamable" then
        return
    end
    local id = fields[5]
    if not release(id) then
        ended_early:set(id, true)
    end
end)

watcher.on("host_gone", function(_, path)
    for id, k in pairs(kept) do
        if k.path == path then
            release(id)
        end
    end
end)

-- A pooled backend of this worker's host sent a list change: the
-- listeners of that route and consumer on the other workers' hosts want
-- it too (each worker keeps its own pool).
watcher.on("changed", function(fields, own)
    local binding = wire.binding(fields[2], fields[3])
    for _, path in pairs(native.hosts()) do
        if path ~= own then
            local sock = hosts.request(path, wire.NOTIFY, binding, fields[4])
            if sock then
                hosts.done(sock, true)
            end
        end
    end
end)

local function keep(id, slot, path)
    if ended_early:forget(id) then
        session_limit.release(slot)
        return
    end
    kept[id] = { slot = slot, path = path }
end

-- Live Streamable sessions whose slot this worker keeps.
function _M.kept()
    local n = 0
    for _ in pairs(kept) do
        n = n + 1
    end
    return n
end

local function u32(n)
    return char(band(rshift(n, 24), 0xff), band(rshift(n, 16), 0xff), band(rshift(n, 8), 0xff),
                band(n, 0xff))
end

-- The id of the request in `body`, for the errors Lua writes itself: nil
-- when it has none, or when no JSON decoder is at hand (APISIX always has
-- cjson; a plain nginx may not).
local function request_id(body)
    if not cjson or body == "" then
        return nil
    end
    local message = cjson.decode(body)
    local id = type(message) == "table" and message.id
    if type(id) == "string" or type(id) == "number" then
        return id
    end
    return nil
end

-- A refusal that does not read the body; a body found malformed meanwhile
-- gets 400 instead.
local function refuse(status, code, message, headers)
    if not request_body.discard() then
        return respond.rpc_error(400, PARSE_ERROR, request_body.MALFORMED)
    end
    return respond.rpc_error(status, code, message, headers)
end

local function accepts(accept, media)
    return find(accept, media, 1, true) or find(accept, "*/*", 1, true)
end

local json_string = json.string

-- The node's tag for input_required states, in cluster mode.
local function state_prefix()
    local prefix = cluster.state_prefix()
    return prefix ~= "" and ',"state_prefix":"' .. prefix .. '"' or ""
end

-- The headers block of a Request frame (see Headers in rust/host/src/http.rs):
-- json.value of the same fields, written straight out. `method` is one of
-- three names and `session` empty or a checked id; neither needs escaping.
local function request_headers(method, session, version, mcp_method, mcp_name, accept, slot)
    return '{"accept":' .. json_string(accept)
           .. (mcp_method and ',"mcp_method":' .. json_string(mcp_method) or "")
           .. (mcp_name and ',"mcp_name":' .. json_string(mcp_name) or "")
           .. ',"method":"' .. method .. '","session":"' .. session .. '","slot":'
           .. (slot and "true" or "false")
           .. state_prefix()
           .. (version and ',"version":' .. json_string(version) or "") .. "}"
end

-- Writes the rest of a host's reply to the client: `head` is the Head
-- frame's payload; `new_session`: the reply carries the id of a session
-- this request made (see UNANSWERED). Returns nothing; ends the request.
local function relay_reply(route, sock, head, new_session, asked_session)
    local conf = route.conf
    local status, body, session, retry = match(head, "^(%d+) (%a+) (%S+) ?(%d*)$")
    status = tonumber(status)
    if not status then
        hosts.done(sock, false)
        return respond.rpc_error(502, SERVER_ERROR, "the bridge gave an unreadable answer")
    end
    local headers = {}
    if session ~= "-" then
        headers["Mcp-Session-Id"] = cluster.tag(session)
    end
    if retry ~= "" then
        headers["Retry-After"] = retry
    end
    if body == "none" then
        local kind = wire.receive(sock)
        hosts.done(sock, kind == wire.EXIT)
        if status == 200 and req.get_method() == "DELETE" then
            -- The session is gone from its host: a slot this worker keeps
            -- for it is free now, not only once its processes are (the
            -- host's event says so to the other workers).
            release(asked_session, true)
        end
        return respond.empty(status, headers)
    end
    if body == "json" then
        local kind, payload = wire.receive(sock)
        local whole = kind == wire.MESSAGE and wire.receive(sock) == wire.EXIT
        hosts.done(sock, whole)
        if kind ~= wire.MESSAGE then
            return respond.rpc_error(502, SERVER_ERROR, "the bridge's answer was cut short")
        end
        if new_session then
            ngx.ctx[UNANSWERED] = nil
        end
        headers["Content-Type"] = "application/json"
        headers["Cache-Control"] = "no-store"
        return respond.send(status, headers, payload)
    end
    headers["Content-Type"] = "text/event-stream"
    headers["Cache-Control"] = "no-cache"
    headers["X-Accel-Buffering"] = "no"
    -- The head goes out now: a GET stream may stay silent for long, and
    -- clients and proxies wait for its answer.
    local raw, err = respond.start_stream(status, headers)
    if err then
        hosts.done(sock, false)
        return ngx_exit(ngx.HTTP_OK)
    end
    sock:settimeouts(1000, 10000, 2 * conf.keepalive_interval_ms + HOST_SILENCE_MARGIN_MS)
    local stream = eventstream.start(conf.slow_client_timeout_ms, "a stream of route " .. route.key,
                                     raw)
    local exit, why, noteworthy = stream:relay(sock)
    stream:stop()
    hosts.done(sock, exit ~= nil)
    if noteworthy then
        ngx.log(ngx.WARN, "mcp-bridge: a stream of route ", route.key, " ended: ", why)
    end
    return ngx_exit(ngx.HTTP_OK)
end

-- Sends a request to the host at `path` (see hosts.request), on `conn` if
-- given (a connection to it); `slot` says whether this worker took a
-- session slot for it.
local function ask(conn, path, binding, method, session, accept, slot, spec, body)
    local var = ngx.var
    local headers = request_headers(method, session, var.http_mcp_protocol_version,
                                    var.http_mcp_method, var.http_mcp_name, accept, slot)
    if conn then
        return hosts.exchange(conn, wire.REQUEST, binding, u32(#headers), headers, u32(#spec),
                              spec, body)
    end
    return hosts.request(path, wire.REQUEST, binding, u32(#headers), headers, u32(#spec), spec,
                         body)
end

-- Takes a slot for a request that may start a session. Returns it; or nil,
-- an HTTP status and why not.
local function take_slot(route)
    local slot, refused, why = admission.take(route, true)
    if not slot then
        return nil, refused, why
    end
    -- Until the session keeps it, or it is released below: if the client
    -- leaves meanwhile, the log phase releases it.
    ngx.ctx[PENDING_SLOT] = slot
    return slot
end

function _M.handle(route, binding)
    local conf = route.conf
    local method = req.get_method()
    if method ~= "POST" and method ~= "GET" and method ~= "DELETE" then
        return respond.rpc_error(405, SERVER_ERROR, "use POST, GET or DELETE on the MCP endpoint",
                                 ALLOW)
    end
    local var = ngx.var
    local session = var.http_mcp_session_id or ""
    local owner
    if session ~= "" then
        local where, found = cluster.resolve(session)
        if where == "remote" and not var.http_x_mcp_bridge_forwarded then
            owner = found
        elseif where == "local" and hosts.is_session_id(found) then
            session = found
        else
            if cluster.enabled() then
                metrics.forward_refused(route.key, where and "loop" or "forged")
            end
            return refuse(404, SESSION_NOT_FOUND, "Session not found")
        end
    end
    local accept = lower(var.http_accept or "")
    local body = ""
    if method == "POST" then
        local media = var.http_content_type
        if media ~= "application/json" then
            -- Parameters, spaces and case allowed.
            media = lower(match(media or "", "^%s*([^;%s]*)") or "")
        end
        if media ~= "application/json" then
            return refuse(415, SERVER_ERROR, "Content-Type must be application/json")
        end
        if not (accepts(accept, "application/json") and accepts(accept, "text/event-stream")) then
            return refuse(406, SERVER_ERROR, "Accept must list application/json and "
                                             .. "text/event-stream")
        end
        local status, why
        body, status, why = request_body.read(conf.max_message_bytes)
        if not body then
            if status == 413 then
                return respond.rpc_error(413, SERVER_ERROR, "request body is larger than "
                                         .. route.name("max_message_bytes") .. " ("
                                         .. conf.max_message_bytes .. ")")
            end
            return respond.rpc_error(400, PARSE_ERROR, why)
        end
    elseif method == "GET" then
        if not accepts(accept, "text/event-stream") then
            return respond.rpc_error(406, SERVER_ERROR, "Accept must list text/event-stream")
        end
        -- ngx_lua holds an HTTP/1.0 response back until it is complete.
        if (req.http_version() or 1.1) < 1.1 then
            return respond.rpc_error(505, SERVER_ERROR, "the event stream needs HTTP/1.1 or later")
        end
    end

    if owner then
        forward.relay(route, owner, "streamable", body)
        return respond.rpc_error(404, SESSION_NOT_FOUND, "Session not found", nil,
                                 request_id(body))
    end
    local path, conn
    if session ~= "" then
        conn, path = hosts.connect_session(session, true)
        if not conn then
            return respond.rpc_error(404, SESSION_NOT_FOUND, "Session not found", nil,
                                     request_id(body))
        end
    else
        local holder
        if method == "POST" then
            conn, path, holder = state_host(body)
        end
        if holder and not var.http_x_mcp_bridge_forwarded then
            -- The call waits on another node; if that node is gone, this
            -- node's host tells the client the state is of no use.
            forward.relay(route, holder, "stateless", body)
        end
        path = path or hosts.own()
        if not path then
            admission.refused(route, 503, admission.UNAVAILABLE)
            return respond.rpc_error(503, SERVER_ERROR, admission.UNAVAILABLE, RETRY_AFTER,
                                     request_id(body))
        end
    end
    eventstream.watch_client_abort()

    local spec = session == "" and config.spawn_request(conf) or ""
    -- An initialize takes a slot first; one the host finds without a slot
    -- (its method spelt unusually) comes back once to take it.
    local slot, sock, kind, head
    if session == "" and method == "POST" and find(body, "initialize", 1, true) then
        slot, kind, head = take_slot(route)
        if slot then
            sock, kind, head = ask(nil, path, binding, method, session, accept, true, spec, body)
        end
    else
        sock, kind, head = ask(conn, path, binding, method, session, accept, false, spec, body)
    end
    if sock and kind == wire.HEAD and tonumber(match(head, "^(%d+)")) == NEED_SLOT then
        wire.receive(sock)
        hosts.done(sock, true)
        if not slot then
            slot, kind, head = take_slot(route)
        end
        if slot then
            sock, kind, head = ask(nil, path, binding, method, session, accept, true, spec, body)
        else
            sock = nil
        end
    end
    if not sock then
        if slot then
            session_limit.release(slot)
        end
        if kind == 429 or kind == 503 then
            return respond.rpc_error(kind, SERVER_ERROR, head, RETRY_AFTER, request_id(body))
        end
        if kind == "connect" and session ~= "" then
            -- That session's host is gone, and the session with it.
            return respond.rpc_error(404, SESSION_NOT_FOUND, "Session not found", nil,
                                     request_id(body))
        end
        ngx.log(ngx.ERR, "mcp-bridge: host at ", path, ": ", head or kind)
        return respond.rpc_error(503, SERVER_ERROR, admission.UNAVAILABLE, RETRY_AFTER,
                                 request_id(body))
    end
    if kind ~= wire.HEAD then
        hosts.done(sock, false)
        if slot then
            session_limit.release(slot)
        end
        return respond.rpc_error(502, SERVER_ERROR, "the bridge gave an unexpected answer", nil,
                                 request_id(body))
    end
    local new_session = false
    if slot then
        ngx.ctx[PENDING_SLOT] = nil
        local id = match(head, "^%d+ %a+ (%x+)")
        if id then
            keep(id, slot, path)
            -- Until the answer goes out (see relay_reply).
            ngx.ctx[UNANSWERED] = { id = id, path = path, binding = binding }
            new_session = true
        else
            session_limit.release(slot)
            if match(head, "^502 ") then
                metrics.spawn_failed(route.key)
            end
        end
    end
    return relay_reply(route, sock, head, new_session, session)
end

-- Ends session `id` at the host at `path` as a DELETE would (from a timer:
-- the log phase cannot talk to a host).
local function delete_session(premature, path, binding, id)
    if premature then
        return
    end
    local headers = request_headers("DELETE", id, nil, nil, nil, "", false)
    local sock = hosts.request(path, wire.REQUEST, binding, u32(#headers), headers, u32(0), "")
    if sock then
        local kind = wire.receive(sock)
        hosts.done(sock, kind == wire.EXIT)
    end
    release(id, true)
end

-- The log phase. A slot taken for an initialize whose client left before
-- the host answered is free again (the host ends a session whose id it
-- could not give); a session the host made while its client was leaving,
-- whose id the client never got, is ended.
function _M.log()
    local ctx = ngx.ctx
    local slot = ctx[PENDING_SLOT]
    if slot then
        ctx[PENDING_SLOT] = nil
        session_limit.release(slot)
    end
    local unanswered = ctx[UNANSWERED]
    if unanswered then
        ctx[UNANSWERED] = nil
        ngx.timer.at(0, delete_session, unanswered.path, unanswered.binding, unanswered.id)
    end
end

return _M
