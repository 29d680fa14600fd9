-- Live sessions of a route across every worker of this nginx (the node),
-- counted in the lua_shared_dict "mcp-bridge-slots" so that a ceiling holds
-- node-wide.
--
--   node|<route>                 sessions of the route on the node
--   worker|<identity>|<route>    the share of one worker process
--
-- A worker that dies without releasing (kill -9) leaves its share behind;
-- any worker reclaims it once that process is gone: when a ceiling is
-- reached, and when a worker starts. A worker's identity is its pid and
-- start time, so a reused pid never passes for the dead worker.
local config = require("apisix.plugins.mcp.bridge.config")
local native = require("apisix.plugins.mcp.bridge.native")

local ipairs = ipairs
local match = string.match
local ngx = ngx
local ngx_log = ngx.log
local tonumber = tonumber

local _M = {}

local NODE_PREFIX = "node|"
local WORKER_PREFIX = "worker|"

local own_identity
local own_pid

-- nil only if /proc/self/stat cannot be read; a share kept under a made-up
-- name would look dead to the other workers and be taken away.
local function identity()
    local pid = ngx.worker.pid()
    if own_pid ~= pid then
        own_identity = native.identity()
        own_pid = pid
    end
    return own_identity
end

local function dict()
    return ngx.shared[config.SLOTS_DICT]
end

function _M.available()
    return dict() ~= nil
end

local function worker_key(id, route)
    return WORKER_PREFIX .. id .. "|" .. route
end

-- Moves the share of a dead worker out of the node count. Of several
-- workers reclaiming the same share at once, only the one whose decrement
-- empties it takes it; the others undo theirs.
local function reclaim_share(shm, key, route)
    local held = shm:get(key)
    if not held or held <= 0 then
        shm:delete(key)
        return 0
    end
    local left = shm:incr(key, -held)
    if left ~= 0 then
        if left then
            shm:incr(key, held)
        end
        return 0
    end
    shm:delete(key)
    shm:incr(NODE_PREFIX .. route, -held, 0)
    return held
end

-- Reclaims the shares of workers that are gone. Returns how many slots
-- came back.
function _M.reclaim()
    local shm = dict()
    if not shm then
        return 0
    end
    local me = identity()
    local alive = {}
    local total = 0
    for _, key in ipairs(shm:get_keys(0)) do
        local id, route = match(key, "^worker|([^|]+)|(.*)$")
        if id and id ~= me then
            if alive[id] == nil then
                alive[id] = native.alive(id)
            end
            if not alive[id] then
                local n = reclaim_share(shm, key, route)
                if n > 0 then
                    ngx_log(ngx.NOTICE, "mcp-bridge: reclaimed ", n, " session slot(s) of route \"",
                            route, "\" held by worker ", id, ", which is gone")
                end
                total = total + n
            end
        end
    end
    return total
end

-- Takes one slot of `route` on the node unless it already has `max`
-- (nil: no ceiling, only counting). Returns true, or nil and "rejected",
-- or nil and an error.
function _M.acquire(route, max)
    local shm = dict()
    if not shm then
        return nil, "no lua_shared_dict \"" .. config.SLOTS_DICT .. "\""
    end
    local me = identity()
    if not me then
        return nil, "cannot read this worker's identity from /proc"
    end
    local node_key = NODE_PREFIX .. route
    for attempt = 1, 2 do
        local n, err = shm:incr(node_key, 1, 0)
        if not n then
            return nil, err
        end
        if not max or n <= max then
            local _, werr = shm:incr(worker_key(me, route), 1, 0)
            if werr then
                shm:incr(node_key, -1)
                return nil, werr
            end
            return true
        end
        shm:incr(node_key, -1)
        if attempt == 1 and _M.reclaim() == 0 then
            break
        end
    end
    return nil, "rejected"
end

function _M.release(route)
    local shm = dict()
    if not shm then
        return
    end
    shm:incr(NODE_PREFIX .. route, -1, 0)
    local key = worker_key(identity(), route)
    local left = shm:incr(key, -1)
    if left and left <= 0 then
        -- Only this worker changes its own share, so nothing races this.
        shm:delete(key)
    end
end

-- { routes = { [route] = n }, workers = { [identity] = { [route] = n } },
--   keys_held = <keys that hold a slot>, own = <this worker's identity> },
-- or nil without the dict. A node count back at 0 stays in the dict as a
-- key (deleting it would race other workers) but holds nothing.
function _M.snapshot()
    local shm = dict()
    if not shm then
        return nil
    end
    local routes, workers, held = {}, {}, 0
    for _, key in ipairs(shm:get_keys(0)) do
        local n = tonumber(shm:get(key)) or 0
        local route = match(key, "^node|(.*)$")
        if route then
            routes[route] = n
        else
            local id, wroute = match(key, "^worker|([^|]+)|(.*)$")
            if id then
                workers[id] = workers[id] or {}
                workers[id][wroute] = n
            end
        end
        if n ~= 0 then
            held = held + 1
        end
    end
    return { routes = routes, workers = workers, keys_held = held, own = identity() }
end

return _M
