-- Responses the bridge writes itself: JSON errors and empty acknowledgements.
local json = require("apisix.plugins.mcp.bridge.json")

local ngx = ngx
local ngx_exit = ngx.exit
local ngx_header = ngx.header
local ngx_print = ngx.print
local pairs = pairs

local _M = {}

-- Ends the request with `status` and {"error": message}.
function _M.error(status, message, headers)
    ngx.status = status
    ngx_header["Content-Type"] = "application/json"
    ngx_header["Cache-Control"] = "no-store"
    if headers then
        for k, v in pairs(headers) do
            ngx_header[k] = v
        end
    end
    ngx_print('{"error":', json.string(message), "}\n")
    return ngx_exit(status)
end

-- Ends the request with `status` and no body.
function _M.empty(status)
    ngx.status = status
    ngx_header["Content-Length"] = 0
    return ngx_exit(status)
end

return _M
