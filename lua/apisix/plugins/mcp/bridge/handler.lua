-- Routes a request under a route's base_uri to its transport, after the
-- Host and Origin checks (guard.lua): {base_uri} is the Streamable HTTP
-- endpoint, {base_uri}/sse and {base_uri}/message the HTTP+SSE ones. The log
-- phase releases a request's slot. Works in APISIX's access phase and in a
-- plain nginx content phase alike.
local guard = require("apisix.plugins.mcp.bridge.guard")
local respond = require("apisix.plugins.mcp.bridge.respond")
local sse = require("apisix.plugins.mcp.bridge.sse")
local streamable = require("apisix.plugins.mcp.bridge.streamable")
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
    local conf = route.conf
    local base = conf.base_uri
    local refusal = guard.check(conf)
    if refusal then
        if uri == base or (base == "" and uri == "/") then
            return respond.rpc_error(403, -32000, refusal)
        end
        return respond.error(403, refusal)
    end
    if uri == base or (base == "" and uri == "/") then
        return streamable.handle(route, wire.binding(route.key, consumer))
    end
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
    return respond.error(404, "not found: the MCP endpoints are " .. (base == "" and "/" or base)
                              .. ", " .. base .. "/sse and " .. base .. "/message")
end

function _M.log()
    sse.log()
    streamable.log()
end

return _M
