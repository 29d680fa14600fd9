-- Writing responses: whole ones (JSON errors, empty acknowledgements,
-- relayed JSON) and the heads of event streams. After a chunked body was
-- read from the raw connection (see body.lua), the response goes there, and
-- the connection is closed after it.
local body = require("apisix.plugins.mcp.bridge.body")
local json = require("apisix.plugins.mcp.bridge.json")

local concat = table.concat
local ngx = ngx
local ngx_exit = ngx.exit
local ngx_header = ngx.header
local ngx_print = ngx.print
local pairs = pairs

local _M = {}

local REASONS = {
    [200] = "OK", [202] = "Accepted", [400] = "Bad Request", [403] = "Forbidden",
    [404] = "Not Found", [405] = "Method Not Allowed", [406] = "Not Acceptable",
    [413] = "Payload Too Large", [415] = "Unsupported Media Type", [429] = "Too Many Requests",
    [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable",
    [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}

-- `content_length`: the line to add, if any.
local function raw_head(status, headers, content_length)
    local lines = { "HTTP/1.1 ", status, " ", REASONS[status] or "", "\r\nConnection: close\r\n" }
    for k, v in pairs(headers) do
        if k ~= "Content-Length" then
            lines[#lines + 1] = k .. ": " .. v .. "\r\n"
        end
    end
    if content_length then
        lines[#lines + 1] = "Content-Length: " .. content_length .. "\r\n"
    end
    lines[#lines + 1] = "\r\n"
    return concat(lines)
end

local NO_HEADERS = {}

-- Ends the request with a whole response: `status`, `headers` (a table, or
-- nil for none; left as it is) and `content` (a string).
function _M.send(status, headers, content)
    headers = headers or NO_HEADERS
    local raw = ngx.ctx[body.RAW_CTX_KEY]
    if raw then
        raw:send(raw_head(status, headers, #content) .. content)
        return ngx_exit(ngx.HTTP_OK)
    end
    ngx.status = status
    for k, v in pairs(headers) do
        ngx_header[k] = v
    end
    if content == "" then
        -- No body, so no type (rather than nginx's default_type).
        if not headers["Content-Type"] then
            ngx_header["Content-Type"] = nil
        end
        ngx_header["Content-Length"] = 0
    else
        ngx_print(content)
    end
    return ngx_exit(status)
end

-- Starts a response whose body follows in pieces (an event stream), and
-- sends its head at once. Returns the raw connection to write the body to
-- when the request body came from there (that body then ends with the
-- connection), or nil when ngx.print serves; and an error if the head
-- could not be sent.
function _M.start_stream(status, headers)
    local raw = ngx.ctx[body.RAW_CTX_KEY]
    if raw then
        local ok, err = raw:send(raw_head(status, headers, nil))
        return raw, not ok and err or nil
    end
    ngx.status = status
    for k, v in pairs(headers) do
        ngx_header[k] = v
    end
    ngx.send_headers()
    local ok, err = ngx.flush(true)
    return nil, not ok and err or nil
end

-- Ends the request with `status` and {"error": message}.
function _M.error(status, message, headers)
    local all = { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-store" }
    for k, v in pairs(headers or {}) do
        all[k] = v
    end
    return _M.send(status, all, '{"error":' .. json.string(message) .. "}\n")
end

-- Ends the request with `status` and a JSON-RPC error, as the Streamable
-- HTTP endpoint answers what it refuses; `id` is the request's id (a string
-- or a number), if it is known.
function _M.rpc_error(status, code, message, headers, id)
    local all = { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-store" }
    for k, v in pairs(headers or {}) do
        all[k] = v
    end
    return _M.send(status, all, '{"jsonrpc":"2.0","id":' .. (id ~= nil and json.value(id) or "null")
                                .. ',"error":{"code":' .. code .. ',"message":'
                                .. json.string(message) .. "}}\n")
end

-- Ends the request with `status` and no body.
function _M.empty(status, headers)
    return _M.send(status, headers, "")
end

return _M
