-- Helpers of t/registry.t: "nodes" (registry instances) that count their
-- own sessions, a plain Redis client to look at what they left there, and
-- waits on Redis coming back.
local redis = require("apisix.plugins.mcp.bridge.redis")
local registry = require("apisix.plugins.mcp.bridge.registry")

local ngx = ngx
local now = ngx.now
local sleep = ngx.sleep
local tonumber = tonumber

local _M = {}

function _M.url(db)
    return "redis://127.0.0.1:" .. tonumber(os.getenv("TEST_NGINX_REDIS_PORT"))
        .. (db and "/" .. db or "")
end

-- A plain client of the test's Redis.
function _M.client(db)
    return redis.new(assert(redis.parse_url(_M.url(db))))
end

function _M.settings(name, address, extra)
    local cluster = { name = name, node_address = address, redis = _M.url(), lease_ms = 600 }
    for k, v in pairs(extra or {}) do
        cluster[k] = v
    end
    return cluster
end

-- A started node whose own counts are what it acquired and released (what
-- node_slots does node-wide in production), or, with `counts`, whatever
-- that function says.
function _M.node(name, address, counts)
    local held = {}
    local reg = assert(registry.new(_M.settings(name, address),
                                    { counts = counts or function() return held end }))
    local node = { reg = reg, held = held, address = address }
    function node.acquire(route, max)
        local ok, err = reg:acquire(route, max)
        if ok then
            held[route] = (held[route] or 0) + 1
        end
        if ok == nil then
            return nil, err
        end
        return ok
    end
    function node.release(route)
        held[route] = (held[route] or 0) - 1
        return reg:release(route)
    end
    assert(reg:start())
    return node
end

-- Keys of the cluster `name` in Redis, sorted, joined by spaces.
function _M.keys(name)
    local client = _M.client()
    local found, cursor = {}, "0"
    repeat
        local res = assert(client:command("SCAN", cursor, "MATCH", "mcp-bridge:" .. name .. ":*",
                                          "COUNT", 1000))
        cursor = res[1]
        for _, key in ipairs(res[2]) do
            found[#found + 1] = key
        end
    until cursor == "0"
    table.sort(found)
    return table.concat(found, " ")
end

-- The node addresses with a field in the route's hash, as "addr=n ...".
function _M.fields(name, route)
    local res = assert(_M.client():command("HGETALL", "mcp-bridge:" .. name .. ":sessions:" .. route))
    local pairs_ = {}
    for i = 1, #res, 2 do
        pairs_[#pairs_ + 1] = res[i] .. "=" .. res[i + 1]
    end
    table.sort(pairs_)
    return table.concat(pairs_, " ")
end

-- Waits until Redis answers again (the suite's supervisor restarts it a
-- second after it stops), at most `timeout` seconds.
function _M.wait_redis(timeout)
    local deadline = now() + timeout
    local client = _M.client()
    while now() < deadline do
        if client:command("PING") == "PONG" then
            return true
        end
        sleep(0.05)
    end
    return false
end

-- Runs fn and returns its results after the seconds it took.
function _M.timed(fn, ...)
    ngx.update_time()
    local started = now()
    local a, b = fn(...)
    ngx.update_time()
    return now() - started, a, b
end

return _M
