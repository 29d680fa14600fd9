-- Live MCP sessions of a route in this worker, bounded by a ceiling.
--
-- Keeps the interface of APISIX's own module (acquire(max), release(),
-- count()) over the native counters, and adds an optional route argument:
-- each route counts on its own. acquire() returns a slot guard (truthy) and
-- also keeps it in ngx.ctx, so release() without an argument releases the
-- current request's slot. Releasing twice is harmless, and a guard that is
-- garbage-collected while held releases its slot.
local native = require("apisix.plugins.mcp.bridge.native")

local floor = math.floor
local ngx = ngx
local type = type

local _M = {}

local DEFAULT_ROUTE = "default"
local CTX_KEY = "mcp_bridge_slot"

-- Returns a slot guard, or false and "rejected" when `route` already holds
-- `max` slots. A missing or non-numeric ceiling admits nothing.
function _M.acquire(max, route)
    if type(max) ~= "number" or max ~= max then
        return false, "invalid ceiling"
    end
    local slot, err = native.slot_acquire(route or DEFAULT_ROUTE, floor(max))
    if not slot then
        return false, err
    end
    ngx.ctx[CTX_KEY] = slot
    return slot
end

-- Releases `slot`, or the slot this request acquired. Returns true if this
-- call released it.
function _M.release(slot)
    slot = slot or ngx.ctx[CTX_KEY]
    if not slot then
        return false
    end
    return slot:release()
end

function _M.count(route)
    return native.slot_count(route or DEFAULT_ROUTE)
end

return _M
