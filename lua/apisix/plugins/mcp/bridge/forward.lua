-- Passing a request for another node's session to that node (cluster.lua
-- says which), and its answer back unchanged: status, headers and body,
-- event streams as they come. The client's own headers go along, so the
-- owner checks Host, Origin and credentials as if the client had come to
-- it; the request body was read (and bounded) here already.
--
-- A client that goes away ends this request (ngx.on_abort), which closes
-- the connection to the owner: the owner sees its client leave.
local body = require("apisix.plugins.mcp.bridge.body")
local cluster = require("apisix.plugins.mcp.bridge.cluster")
local eventstream = require("apisix.plugins.mcp.bridge.eventstream")
local metrics = require("apisix.plugins.mcp.bridge.metrics")
local registry = require("apisix.plugins.mcp.bridge.registry")
local respond = require("apisix.plugins.mcp.bridge.respond")

local concat = table.concat
local lower = string.lower
local match = string.match
local ngx = ngx
local ngx_exit = ngx.exit
local ngx_flush = ngx.flush
local ngx_log = ngx.log
local ngx_print = ngx.print
local ngx_socket_tcp = ngx.socket.tcp
local pairs = pairs
local req = ngx.req
local tonumber = tonumber
local type = type

local _M = {
    -- Marks a forwarded request: its receiver never forwards it again.
    HEADER = "X-MCP-Bridge-Forwarded",
}

local CONNECT_TIMEOUT_MS = 500
-- For an owner the registry does not know: a live node on the nodes'
-- network accepts well within this.
local UNLEASED_CONNECT_TIMEOUT_MS = 100
local SEND_TIMEOUT_MS = 10000
local MAX_HEADERS = 100
local MAX_HEAD_LINE = 16384
local PIECE = 65536
-- Beyond two keepalive intervals, this much more silence means a stuck owner.
local SILENCE_MARGIN_MS = 5000

-- Hop-by-hop headers (RFC 9110, 7.6.1) and what this node sets itself.
local NOT_PASSED = {
    connection = true, ["keep-alive"] = true, ["proxy-connection"] = true, te = true,
    trailer = true, ["transfer-encoding"] = true, upgrade = true, ["content-length"] = true,
    ["x-mcp-bridge-forwarded"] = true, expect = true,
}
local NOT_RETURNED = {
    connection = true, ["keep-alive"] = true, ["transfer-encoding"] = true, trailer = true,
    server = true, date = true, ["content-length"] = true,
}

local function request_head(content)
    local uri = ngx.var.request_uri
    local lines = { req.get_method(), " ", uri, " HTTP/1.1\r\n" }
    for name, value in pairs(req.get_headers(MAX_HEADERS, true)) do
        if not NOT_PASSED[lower(name)] then
            if type(value) == "table" then
                for i = 1, #value do
                    lines[#lines + 1] = name .. ": " .. value[i] .. "\r\n"
                end
            else
                lines[#lines + 1] = name .. ": " .. value .. "\r\n"
            end
        end
    end
    lines[#lines + 1] = _M.HEADER .. ": " .. cluster.forwarded_mark() .. "\r\nConnection: close\r\n"
    if content ~= "" or req.get_method() == "POST" then
        lines[#lines + 1] = "Content-Length: " .. #content .. "\r\n"
    end
    lines[#lines + 1] = "\r\n"
    return concat(lines)
end

-- The owner's status and headers: status, { name = value }, how the body
-- comes ("chunked", a length, or "close"); or nil and why not.
local function response_head(sock)
    local line, err = sock:receive("*l")
    if not line then
        return nil, err
    end
    local status = tonumber(match(line, "^HTTP/1%.[01] (%d%d%d)"))
    if not status then
        return nil, "not an HTTP response"
    end
    local headers, framing = {}, "close"
    for _ = 1, MAX_HEADERS do
        line, err = sock:receive("*l")
        if not line then
            return nil, err
        end
        if line == "" then
            return status, headers, framing
        end
        if #line > MAX_HEAD_LINE then
            return nil, "header too long"
        end
        local name, value = match(line, "^([^:%s]+):%s*(.-)%s*$")
        if not name then
            return nil, "malformed header"
        end
        local key = lower(name)
        if key == "transfer-encoding" and lower(value) == "chunked" then
            framing = "chunked"
        elseif key == "content-length" then
            framing = tonumber(value)
            if not framing then
                return nil, "bad Content-Length"
            end
        end
        if not NOT_RETURNED[key] then
            headers[name] = value
        end
    end
    return nil, "too many headers"
end

-- The writer of a streamed body: to the raw connection when the request
-- came in chunks (see body.lua), else through nginx.
local function writer(raw)
    if raw then
        return function(data)
            return raw:send(data)
        end
    end
    return function(data)
        local ok, err = ngx_print(data)
        if ok then
            ok, err = ngx_flush(true)
        end
        return ok, err
    end
end

-- Copies a chunked body from `sock` through `write`, chunk by chunk.
local function copy_chunked(sock, write)
    while true do
        local line, err = sock:receive("*l")
        if not line then
            return nil, err
        end
        local size = tonumber(match(line, "^%s*(%x+)"), 16)
        if not size then
            return nil, "malformed chunk"
        end
        if size == 0 then
            return true
        end
        while size > 0 do
            local piece
            piece, err = sock:receive(size < PIECE and size or PIECE)
            if not piece then
                return nil, err
            end
            size = size - #piece
            local ok, werr = write(piece)
            if not ok then
                return nil, "client: " .. (werr or "gone")
            end
        end
        line, err = sock:receive("*l")
        if line ~= "" then
            return nil, err or "malformed chunk"
        end
    end
end

local function copy_until_close(sock, write)
    while true do
        local piece, err, partial = sock:receive(PIECE)
        piece = piece or partial
        if piece and piece ~= "" then
            local ok, werr = write(piece)
            if not ok then
                return nil, "client: " .. (werr or "gone")
            end
        end
        if err == "closed" then
            return true
        end
        if err then
            return nil, err
        end
    end
end

-- Forwards the current request to `owner` ("host:port") with `content` as
-- its body; `transport` names it in the metrics. Returns nothing once the owner
-- answered (the request is over); nil when the owner is gone (nothing was
-- sent to the client: the caller answers 404).
function _M.relay(route, owner, transport, content)
    -- A node without a lease is gone, or has only just started (or Redis
    -- has just restarted empty): the connection decides, soon.
    local leased = not registry.enabled() or registry.node_alive(owner) ~= false
    local host, port = match(owner, "^%[?(.-)%]?:(%d+)$")
    local sock = ngx_socket_tcp()
    sock:settimeouts(leased and CONNECT_TIMEOUT_MS or UNLEASED_CONNECT_TIMEOUT_MS,
                     SEND_TIMEOUT_MS, 2 * route.conf.keepalive_interval_ms + SILENCE_MARGIN_MS)
    local ok, err = sock:connect(host, tonumber(port))
    if not ok then
        ngx_log(ngx.INFO, "mcp-bridge: owner ", owner, " of a session is not reachable: ", err)
        metrics.forward_refused(route.key, "owner_gone")
        return nil
    end
    eventstream.watch_client_abort()
    ok, err = sock:send(request_head(content) .. content)
    local status, headers, framing
    if ok then
        status, headers, framing = response_head(sock)
        err = headers
    end
    if not status then
        sock:close()
        ngx_log(ngx.WARN, "mcp-bridge: forwarding to ", owner, " failed: ", err)
        metrics.forward_refused(route.key, "owner_gone")
        return nil
    end
    metrics.forwarded(route.key, transport)
    if type(framing) == "number" then
        local whole
        whole, err = sock:receive(framing)
        sock:close()
        if not whole then
            ngx_log(ngx.WARN, "mcp-bridge: the answer of ", owner, " was cut short: ", err)
            return ngx_exit(ngx.ERROR)
        end
        return respond.send(status, headers, whole)
    end
    local raw
    raw, err = respond.start_stream(status, headers)
    if err then
        sock:close()
        return ngx_exit(ngx.HTTP_OK)
    end
    local write = writer(raw or ngx.ctx[body.RAW_CTX_KEY])
    if framing == "chunked" then
        ok, err = copy_chunked(sock, write)
    else
        ok, err = copy_until_close(sock, write)
    end
    sock:close()
    if not ok then
        ngx_log(ngx.INFO, "mcp-bridge: a forwarded stream from ", owner, " ended: ", err)
    end
    return ngx_exit(ngx.HTTP_OK)
end

return _M
