-- Routes a request under a route's base_uri to its transport, after the
-- Host and Origin checks (guard.lua): {base_uri} is the Streamable HTTP
-- endpoint, {base_uri}/sse and {base_uri}/message the HTTP+SSE ones. The log
-- phase releases a request's slot. Works in APISIX's access phase and in a
-- plain nginx content phase alike.
local cluster = require("apisix.plugins.mcp.bridge.cluster")
local guard = require("apisix.plugins.mcp.bridge.guard")
local respond = require("apisix.plugins.mcp.bridge.respond")
local sse = require("apisix.plugins.mcp.bridge.sse")
local streamable = require("apisix.plugins.mcp.bridge.streamable")
local wire = require("apisix.plugins.mcp.bridge.wire")

local ngx = ngx
local req_get_method = ngx.req.get_method

local _M = {}

-- Bindings per consumer that one route keeps, all forgotten when there are
-- more.
local MAX_BINDINGS = 256

-- The binding of `route` and `consumer` (see wire.binding), made once per
-- route object.
local function binding_of(route, consumer)
    local bindings = route.bindings
    if not bindings then
        bindings = { n = 0 }
        route.bindings = bindings
    end
    local key = consumer or ""
    local binding = bindings[key]
    if not binding then
        if bindings.n >= MAX_BINDINGS then
            bindings = { n = 0 }
            route.bindings = bindings
        end
        binding = wire.binding(route.key, consumer)
        bindings[key] = binding
        bindings.n = bindings.n + 1
    end
    return binding
end

-- The URIs of a route's HTTP+SSE endpoints, made once per route object.
local function sse_uris(route, base)
    local uris = route.sse_uris
    if not uris or uris.base ~= base then
        uris = { base = base, sse = base .. "/sse", message = base .. "/message" }
        route.sse_uris = uris
    end
    return uris
end

-- `route` = { key = <slot-counting key>, conf = <checked configuration>,
--             name = <how messages name a field> };
-- `consumer`: who the request authenticated as (APISIX's consumer name), if
-- anyone: a session answers only requests of its own route and consumer.
function _M.handle(route, consumer)
    local uri = ngx.var.uri
    local conf = route.conf
    local base = conf.base_uri
    -- A request another node forwarded was checked there, with the same
    -- settings: its Host is the client's, which may be that node's own.
    local refusal = guard.check(conf)
    if refusal and not cluster.is_forwarded(ngx.var.http_x_mcp_bridge_forwarded) then
        if uri == base or (base == "" and uri == "/") then
            return respond.rpc_error(403, -32000, refusal)
        end
        return respond.error(403, refusal)
    end
    if uri == base or (base == "" and uri == "/") then
        return streamable.handle(route, binding_of(route, consumer))
    end
    local method = req_get_method()
    local uris = sse_uris(route, base)
    if uri == uris.sse then
        if method ~= "GET" then
            return respond.error(405, "use GET to open a session", { Allow = "GET" })
        end
        return sse.open(route, binding_of(route, consumer))
    end
    if uri == uris.message then
        if method ~= "POST" then
            return respond.error(405, "use POST to send a message", { Allow = "POST" })
        end
        return sse.deliver(route, binding_of(route, consumer))
    end
    return respond.error(404, "not found: the MCP endpoints are " .. (base == "" and "/" or base)
                              .. ", " .. base .. "/sse and " .. base .. "/message")
end

function _M.log()
    sse.log()
    streamable.log()
end

return _M
