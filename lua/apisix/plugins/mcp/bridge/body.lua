-- Reading a client message (a POST body) with a bound on its size, counted
-- while it is read: a body over the bound is refused before it is read
-- whole, whether it declares its length or comes in chunks, and wherever
-- nginx's own client_max_body_size is set (APISIX leaves it unlimited).
--
-- A chunked HTTP/1.1 body is read from the raw connection (nginx's Lua
-- request-body reader takes no chunks), so its response must go there too:
-- respond.lua does that when it finds the raw connection in ngx.ctx.
local find = string.find
local io_open = io.open
local match = string.match
local ngx = ngx
local pcall = pcall
local req = ngx.req
local tonumber = tonumber

local _M = {
    -- Where ngx.ctx keeps the raw connection a body was read from.
    RAW_CTX_KEY = "mcp_bridge_raw_socket",
}

-- A chunk-size line longer than this (extensions included) is malformed.
local MAX_CHUNK_LINE = 1024
local READ_TIMEOUT_MS = 30000

-- Reads the next CRLF-terminated line of at most `max` bytes.
local function read_line(sock, max)
    local reader = sock:receiveuntil("\r\n")
    local line, err = reader(max + 1)
    if not line then
        return nil, err
    end
    if #line > max then
        return nil, "line too long"
    end
    -- The reader stops at the delimiter; one more call consumes it.
    local rest = reader(1)
    if rest and rest ~= "" then
        return nil, "line too long"
    end
    return line
end

local MALFORMED = "the chunked request body is malformed"
local EMPTY = "request body is empty; expected a JSON-RPC message"
_M.MALFORMED = MALFORMED

-- Discards the request body, as a refusal that does not read it must, so
-- that the client gets the answer rather than a reset. Returns false when
-- the body is malformed (a chunked body nginx cannot parse: the lua module
-- raises an error for it, which was a 500): the client gets 400 for that.
function _M.discard()
    return (pcall(req.discard_body))
end

-- Reads a chunked body from the raw connection. Returns the body, or nil
-- and 413 (over `max`) or 400 (malformed).
local function read_chunked(max)
    local sock, err = req.socket(true)
    if not sock then
        ngx.log(ngx.ERR, "mcp-bridge: cannot read a chunked body: ", err)
        return nil, 400
    end
    ngx.ctx[_M.RAW_CTX_KEY] = sock
    sock:settimeout(READ_TIMEOUT_MS)
    local parts, total = {}, 0
    while true do
        local line = read_line(sock, MAX_CHUNK_LINE)
        local hex = line and match(line, "^(%x+)%s*;?")
        local size = hex and #hex <= 12 and tonumber(hex, 16)
        if not size then
            return nil, 400
        end
        if size == 0 then
            break
        end
        total = total + size
        if total > max then
            return nil, 413
        end
        local data = sock:receive(size)
        if not data or sock:receive(2) ~= "\r\n" then
            return nil, 400
        end
        parts[#parts + 1] = data
    end
    -- Trailer fields, if any, up to the empty line that ends the message.
    while true do
        local line = read_line(sock, MAX_CHUNK_LINE)
        if not line then
            return nil, 400
        end
        if line == "" then
            break
        end
    end
    return table.concat(parts)
end

-- Reads the request body. Returns it; or nil, 413 when it is larger than
-- `max`, or nil, 400 and why when it is empty or malformed. A body refused
-- for its size is not read any further: nginx discards the rest.
-- `declared`: its Content-Length, when the caller read it already.
function _M.read(max, declared)
    declared = declared or tonumber(ngx.var.http_content_length)
    if declared and declared > max then
        -- nginx reads and drops the rest, so the client gets the answer
        -- instead of a reset.
        _M.discard()
        return nil, 413
    end
    local body
    if not declared and find(ngx.var.http_transfer_encoding or "", "chunked", 1, true)
       and (req.http_version() or 2) < 2 then
        local status
        body, status = read_chunked(max)
        if not body then
            return nil, status, MALFORMED
        end
    else
        req.read_body()
        body = req.get_body_data()
        if not body then
            -- nginx spilled the body to a temporary file (a body larger than
            -- client_body_buffer_size, or an HTTP/2 body without a length,
            -- which only client_max_body_size bounds). Just written, so this
            -- read comes from the page cache.
            local file = req.get_body_file()
            local f = file and io_open(file, "rb")
            if f then
                if f:seek("end") > max then
                    f:close()
                    return nil, 413
                end
                f:seek("set")
                body = f:read("*a")
                f:close()
            end
        end
    end
    if not body or body == "" then
        return nil, 400, EMPTY
    end
    if #body > max then
        return nil, 413
    end
    return body
end

return _M
