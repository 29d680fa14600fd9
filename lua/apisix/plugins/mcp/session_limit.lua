-- Live MCP sessions of a route, bounded per worker and, optionally, per
-- node (all workers of this nginx).
--
-- Keeps the interface of APISIX's own module (acquire(max), release(),
-- count()) over the native counters, and adds optional arguments: a route
-- (each route counts on its own) and a node-wide ceiling, counted in the
-- lua_shared_dict "mcp-bridge-slots" (see node_slots.lua) whenever that
-- dict exists. acquire() returns a slot guard (truthy) and also keeps it in
-- ngx.ctx, so release() without an argument releases the current request's
-- slot. Releasing twice is harmless; a guard garbage-collected while held
-- releases its worker slot, and the node share of a worker that died is
-- reclaimed by the others.
local native = require("apisix.plugins.mcp.bridge.native")
local node_slots = require("apisix.plugins.mcp.node_slots")
local registry = require("apisix.plugins.mcp.bridge.registry")

local floor = math.floor
local ngx = ngx
local ngx_log = ngx.log
local setmetatable = setmetatable
local timer_at = ngx.timer.at
local type = type

local _M = {}

local DEFAULT_ROUTE = "default"
local CTX_KEY = "mcp_bridge_slot"

-- Guards whose slot is also counted on the node, or in the cluster, and
-- under which route.
local node_counted = setmetatable({}, { __mode = "k" })
local cluster_counted = setmetatable({}, { __mode = "k" })

local function release_in_cluster(premature, route)
    if not premature then
        registry.release(route)
    end
end

local function is_ceiling(n)
    return type(n) == "number" and n == n
end

-- Returns a slot guard; or false and "rejected" when `route` already holds
-- `max` slots in this worker, false and "node" when the node already holds
-- `max_per_node` (optional), or false and "cluster" when every node of the
-- cluster together holds `max_per_cluster` (optional; not checked while
-- the cluster's Redis is out of reach). A missing or non-numeric ceiling admits
-- nothing. A `detached` slot is not the current request's: it outlives it,
-- and only release(slot) frees it.
function _M.acquire(max, route, max_per_node, detached, max_per_cluster)
    if not is_ceiling(max) or (max_per_node ~= nil and not is_ceiling(max_per_node))
       or (max_per_cluster ~= nil and not is_ceiling(max_per_cluster)) then
        return false, "invalid ceiling"
    end
    route = route or DEFAULT_ROUTE
    local slot, err = native.slot_acquire(route, floor(max))
    if not slot then
        return false, err
    end
    if max_per_node or node_slots.available() then
        local ok
        ok, err = node_slots.acquire(route, max_per_node and floor(max_per_node))
        if not ok then
            slot:release()
            if err == "rejected" then
                return false, "node"
            end
            ngx_log(ngx.ERR, "mcp-bridge: cannot count a session on the node: ", err)
            return false, err
        end
        node_counted[slot] = route
    end
    if max_per_cluster and registry.enabled() then
        local ok, why = registry.acquire(route, floor(max_per_cluster))
        if ok == false then
            _M.release(slot)
            return false, "cluster"
        end
        if ok then
            cluster_counted[slot] = route
        else
            -- Redis is out of reach: the node serves on, bounded by its own
            -- ceilings; its count reaches Redis again with the next lease.
            ngx_log(ngx.INFO, "mcp-bridge: the cluster ceiling is not checked: ", why)
        end
    end
    if not detached then
        ngx.ctx[CTX_KEY] = slot
    end
    return slot
end

-- Releases `slot`, or the slot this request acquired. Returns true if this
-- call released it.
function _M.release(slot)
    slot = slot or ngx.ctx[CTX_KEY]
    if not slot or not slot:release() then
        return false
    end
    local route = node_counted[slot]
    if route then
        node_counted[slot] = nil
        node_slots.release(route)
    end
    route = cluster_counted[slot]
    if route then
        cluster_counted[slot] = nil
        -- From a timer: release() runs in the log phase too, where no
        -- connection to Redis may be made.
        local ok, err = timer_at(0, release_in_cluster, route)
        if not ok then
            ngx_log(ngx.WARN, "mcp-bridge: a session's end does not reach the cluster until its "
                              .. "next lease: ", err)
        end
    end
    return true
end

function _M.count(route)
    return native.slot_count(route or DEFAULT_ROUTE)
end

return _M
