-- Responses the bridge writes itself: JSON errors and empty acknowledgements.
-- After a chunked body was read from the raw connection (see body.lua),
-- they are written there, whole, and the connection is closed after them.
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
    [404] = "Not Found", [405] = "Method Not Allowed", [413] = "Payload Too Large",
    [429] = "Too Many Requests", [500] = "Internal Server Error", [502] = "Bad Gateway",
    [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

local function send_raw(sock, status, headers, content)
    local lines = { "HTTP/1.1 ", status, " ", REASONS[status] or "", "\r\n",
                    "Content-Length: ", #content, "\r\nConnection: close\r\n" }
    for k, v in pairs(headers) do
        lines[#lines + 1] = k .. ": " .. v .. "\r\n"
    end
    lines[#lines + 1] = "\r\n"
    lines[#lines + 1] = content
    sock:send(concat(lines))
    return ngx_exit(ngx.HTTP_OK)
end

-- Ends the request with `status` and {"error": message}.
function _M.error(status, message, headers)
    local content = '{"error":' .. json.string(message) .. "}\n"
    local raw = ngx.ctx[body.RAW_CTX_KEY]
    if raw then
        local all = { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-store" }
        for k, v in pairs(headers or {}) do
            all[k] = v
        end
        return send_raw(raw, status, all, content)
    end
    ngx.status = status
    ngx_header["Content-Type"] = "application/json"
    ngx_header["Cache-Control"] = "no-store"
    if headers then
        for k, v in pairs(headers) do
            ngx_header[k] = v
        end
    end
    ngx_print(content)
    return ngx_exit(status)
end

-- Ends the request with `status` and a JSON-RPC error without an id, as the
-- Streamable HTTP endpoint answers what it refuses before a message.
function _M.rpc_error(status, code, message, headers)
    local content = '{"jsonrpc":"2.0","id":null,"error":{"code":' .. code .. ',"message":'
                    .. json.string(message) .. "}}\n"
    local raw = ngx.ctx[body.RAW_CTX_KEY]
    local all = { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-store" }
    for k, v in pairs(headers or {}) do
        all[k] = v
    end
    if raw then
        return send_raw(raw, status, all, content)
    end
    ngx.status = status
    for k, v in pairs(all) do
        ngx_header[k] = v
    end
    ngx_print(content)
    return ngx_exit(status)
end

-- Ends the request with `status` and no body.
function _M.empty(status)
    local raw = ngx.ctx[body.RAW_CTX_KEY]
    if raw then
        return send_raw(raw, status, {}, "")
    end
    ngx.status = status
    ngx_header["Content-Length"] = 0
    return ngx_exit(status)
end

return _M
