-- Routes a request under a route's base_uri to the transport, and the log
-- phase to the slot release. Works in APISIX's access phase and in a plain
-- nginx content phase alike.
local respond = require("apisix.plugins.mcp.bridge.respond")
local sse = require("apisix.plugins.mcp.bridge.sse")
local wire = require("apisix.plugins.mcp.bridge.wire")

local ngx = ngx
local req_get_method = ngx.req.get_method

local _M = {}

-- `route` = { key = <slot-counting key>, conf = <checked configuration>,
--             name = <how messages name a field> };
-- `consumer`: who the request authenticated as (APISIX's consumer name), if
-- anyone: a session answers only requests of its own route and consumer.
function _M.handle(route, consumer)
    local uri = ngx.var.uri
    local base = route.conf.base_uri
    local method = req_get_method()
    if uri == base .. "/sse" then
        if method ~= "GET" then
            return respond.error(405, "use GET to open a session", { Allow = "GET" })
        end
        return sse.open(route, wire.binding(route.key, consumer))
    end
    if uri == base .. "/message" then
        if method ~= "POST" then
            return respond.error(405, "use POST to send a message", { Allow = "POST" })
        end
        return sse.deliver(route, wire.binding(route.key, consumer))
    end
    return respond.error(404, "not found: the MCP endpoints are " .. base .. "/sse and "
                              .. base .. "/message")
end

function _M.log()
    sse.log()
end

return _M
