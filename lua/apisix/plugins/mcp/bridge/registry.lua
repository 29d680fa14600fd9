-- The cluster registry in Redis: which nodes are alive, and how many live
-- sessions each route has on all of them together.
--
--   mcp-bridge:<name>:node:<address>   the node's lease (PX lease_ms)
--   mcp-bridge:<name>:sessions:<route> hash: node address -> its sessions
--                                      of the route (PX lease_ms)
--
-- Every lease_ms/3 one worker of the node (a lock in the slots dict) renews
-- the node's lease and re-asserts its count of every route it tracks from
-- node_slots, so counts lost while Redis was away come back. Fields of
-- nodes without a lease are dropped by every admission and renewal, and a
-- hash nobody renews expires: with every node gone nothing stays behind.
--
-- Admission (acquire) and release run in one server-side script, so that
-- the check against the ceiling and the increment are atomic.
local redis = require("apisix.plugins.mcp.bridge.redis")

local concat = table.concat
local find = string.find
local floor = math.floor
local match = string.match
local min = math.min
local ngx = ngx
local ngx_log = ngx.log
local ngx_now = ngx.now
local ngx_sha1_bin = ngx.sha1_bin
local format = string.format
local byte = string.byte
local ipairs = ipairs
local pairs = pairs
local pcall = pcall
local require = require
local setmetatable = setmetatable
local sort = table.sort
local sub = string.sub
local tonumber = tonumber
local tostring = tostring
local type = type
local unpack = unpack

local _M = {}

local SLOTS_DICT = "mcp-bridge-slots"
local DEFAULT_NAME = "mcp-bridge"
local DEFAULT_LEASE_MS = 5000
local MIN_LEASE_MS = 500
local MAX_LEASE_MS = 3600 * 1000
local OFF = "cluster mode is off"
-- node_alive answers remembered, forgotten all at once past this many.
local MAX_REMEMBERED = 1024
-- After Redis could not be reached, requests in this worker fail at once
-- for this long (at most a renewal period): a Redis that times out rather
-- than refuses would otherwise cost every request a connect timeout.
local MAX_BACKOFF_MS = 1000
local MAX_SCAN_ROUNDS = 1000

-- ARGV: operation, key prefix, own address, lease_ms, then per operation:
--   acquire  KEYS = { hash }       ARGV[5] = max ("" = none), ARGV[6] = node info
--                                  -> { 1 | 0, live sessions of the route }
--   release  KEYS = { hash }       -> this node's sessions left
--   renew    KEYS = { node key, hash... }  ARGV[5] = node info, ARGV[5 + k] =
--            this node's count for KEYS[1 + k] ("" = keep as is)
--                                  -> { live sessions of each route }
local SCRIPT = [[
local op, prefix, me, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local function live_total(hash)
    local fields = redis.call('HGETALL', hash)
    local total = 0
    for i = 1, #fields, 2 do
        local node = fields[i]
        if node == me or redis.call('EXISTS', prefix .. 'node:' .. node) == 1 then
            total = total + (tonumber(fields[i + 1]) or 0)
        else
            redis.call('HDEL', hash, node)
        end
    end
    return total
end

local function touch(hash)
    if redis.call('EXISTS', hash) == 1 then
        redis.call('PEXPIRE', hash, lease)
    end
end

if op == 'acquire' then
    local hash, max = KEYS[1], tonumber(ARGV[5])
    local total = live_total(hash)
    if max and total >= max then
        touch(hash)
        return { 0, total }
    end
    redis.call('HINCRBY', hash, me, 1)
    redis.call('PEXPIRE', hash, lease)
    redis.call('SET', prefix .. 'node:' .. me, ARGV[6], 'NX', 'PX', lease)
    return { 1, total + 1 }
elseif op == 'release' then
    local hash = KEYS[1]
    local left = redis.call('HINCRBY', hash, me, -1)
    if left <= 0 then
        redis.call('HDEL', hash, me)
    end
    touch(hash)
    return left
elseif op == 'renew' then
    redis.call('SET', KEYS[1], ARGV[5], 'PX', lease)
    local totals = {}
    for k = 2, #KEYS do
        local hash, own = KEYS[k], tonumber(ARGV[k + 4])
        if own and own > 0 then
            redis.call('HSET', hash, me, own)
        elseif own then
            redis.call('HDEL', hash, me)
        end
        totals[k - 1] = live_total(hash)
        touch(hash)
    end
    return totals
end
return redis.error_reply('mcp-bridge registry: unknown operation ' .. tostring(op))
]]

local SCRIPT_SHA = (function()
    local digest = ngx_sha1_bin(SCRIPT)
    local hex = {}
    for i = 1, #digest do
        hex[i] = format("%02x", byte(digest, i))
    end
    return concat(hex)
end)()

local function field_error(field, why)
    return nil, "cluster." .. field .. " " .. why
end

-- The node's own count of every route, node-wide: node_slots' counts in the
-- slots dict, or nil without the dict.
local function node_slots_counts()
    local ok, node_slots = pcall(require, "apisix.plugins.mcp.node_slots")
    if not ok then
        return nil
    end
    local snap = node_slots.snapshot()
    return snap and snap.routes
end

local instance = {}
instance.__index = instance

-- Checks the registry's part of the `cluster` settings (name,
-- node_address, redis, lease_ms). Returns { name =, address =, conn =,
-- lease_ms = } with the defaults filled in, or nil and what is wrong.
function _M.check(cluster)
    if type(cluster) ~= "table" then
        return nil, "cluster settings must be a table"
    end
    local name = cluster.name
    if name == nil then
        name = DEFAULT_NAME
    elseif type(name) ~= "string" or not match(name, "^[%w._-]+$") or #name > 64 then
        return field_error("name", "must be 1 to 64 letters, digits, '.', '_' or '-'")
    end
    local address = cluster.node_address
    if type(address) ~= "string" then
        return field_error("node_address", "is required (\"host:port\" where the other "
                           .. "nodes reach this node)")
    end
    local port = match(address, "^[%w.-]+:(%d+)$") or match(address, "^%[[%x:.]+%]:(%d+)$")
    if not port or tonumber(port) < 1 or tonumber(port) > 65535 then
        return field_error("node_address", "must be \"host:port\", got \"" .. address .. "\"")
    end
    if cluster.redis == nil then
        return field_error("redis", "is required (redis://[:password@]host:port[/db])")
    end
    local conn, err = redis.parse_url(cluster.redis)
    if not conn then
        return field_error("redis", err)
    end
    local lease_ms = cluster.lease_ms
    if lease_ms == nil then
        lease_ms = DEFAULT_LEASE_MS
    elseif type(lease_ms) ~= "number" or lease_ms ~= floor(lease_ms)
        or lease_ms < MIN_LEASE_MS or lease_ms > MAX_LEASE_MS then
        return field_error("lease_ms", "must be an integer from " .. MIN_LEASE_MS .. " to "
                           .. MAX_LEASE_MS .. ", got " .. tostring(lease_ms))
    end
    return { name = name, address = address, conn = conn, lease_ms = lease_ms }
end

-- registry.new(cluster [, { counts = function() -> { [route] = n } | nil }]):
-- an independent registry for the settings `cluster`. `counts` replaces
-- node_slots as the source of this node's counts (tests run several nodes
-- in one nginx).
function _M.new(cluster, opts)
    local checked, err = _M.check(cluster)
    if not checked then
        return nil, err
    end
    local name, address, lease_ms = checked.name, checked.address, checked.lease_ms
    local counts = opts and opts.counts or node_slots_counts
    if type(counts) ~= "function" then
        return nil, "opts.counts must be a function"
    end
    local prefix = "mcp-bridge:" .. name .. ":"
    local period_ms = floor(lease_ms / 3)
    local shm_prefix = "registry|" .. name .. "|" .. address .. "|"
    return setmetatable({
        name = name,
        address = address,
        prefix = prefix,
        node_key = prefix .. "node:" .. address,
        lease_ms = lease_ms,
        period_ms = period_ms,
        backoff = min(period_ms, MAX_BACKOFF_MS) / 1000,
        client = redis.new(checked.conn),
        counts = counts,
        lock_key = shm_prefix .. "lock",
        report_key = shm_prefix .. "report",
        fresh_key = shm_prefix .. "fresh",
        since = ngx_now(),
        routes_seen = {},
        alive_cache = {},
        alive_cached = 0,
        down_until = 0,
        last_report = nil,
    }, instance)
end

function instance:enabled()
    return true
end

function instance:node_info()
    return format("pid %d since %.3f", ngx.worker.pid(), self.since)
end

-- Runs the script: EVALSHA, and EVAL when Redis does not have it (yet, or
-- any more after a restart).
function instance:script(keys, args)
    local nkeys = #keys
    local argv = { "EVALSHA", SCRIPT_SHA, nkeys }
    for i = 1, nkeys do
        argv[3 + i] = keys[i]
    end
    local base = 3 + nkeys
    for i = 1, #args do
        argv[base + i] = args[i]
    end
    local res, err, kind = self.client:command(unpack(argv, 1, base + #args))
    if res == nil and kind == "reply" and find(err, "^NOSCRIPT") then
        argv[1], argv[2] = "EVAL", SCRIPT
        res, err, kind = self.client:command(unpack(argv, 1, base + #args))
    end
    return res, err, kind
end

-- Whether Redis is worth asking from a request: not right after it could
-- not be reached.
function instance:reachable()
    if ngx_now() < self.down_until then
        return nil, self.down_err
    end
    return true
end

function instance:failed(err, kind)
    if kind == "connection" then
        self.down_until = ngx_now() + self.backoff
        self.down_err = "Redis not retried yet after: " .. tostring(err)
    end
    return nil, err
end

function instance:hash_key(route)
    return self.prefix .. "sessions:" .. route
end

-- true (a slot of the route is taken on the cluster), false (the cluster
-- has `max` already), or nil and an error (Redis down: the caller decides).
-- The second value is the route's live sessions on the cluster.
function instance:acquire(route, max)
    if type(route) ~= "string" or route == "" then
        return nil, "acquire: the route must be a non-empty string"
    end
    if max ~= nil and (type(max) ~= "number" or max < 1 or max ~= floor(max)) then
        return nil, "acquire: max must be an integer >= 1"
    end
    self.routes_seen[route] = true
    local ok, err = self:reachable()
    if not ok then
        return nil, err
    end
    local res, serr, kind = self:script({ self:hash_key(route) },
        { "acquire", self.prefix, self.address, self.lease_ms, max or "", self:node_info() })
    if type(res) ~= "table" then
        return self:failed(serr or "unexpected reply to acquire", kind)
    end
    return res[1] == 1, res[2]
end

-- Best effort: a release that does not reach Redis is corrected by the
-- next renewal, which re-asserts this node's count.
function instance:release(route)
    if type(route) ~= "string" or route == "" then
        return nil, "release: the route must be a non-empty string"
    end
    local ok, err = self:reachable()
    if not ok then
        return nil, err
    end
    local res, serr, kind = self:script({ self:hash_key(route) },
        { "release", self.prefix, self.address, self.lease_ms })
    if res == nil then
        return self:failed(serr, kind)
    end
    return true
end

-- true, false (no lease: the node is gone), or nil and an error (unknown).
-- A node found alive is remembered so for a renewal period at most.
function instance:node_alive(address)
    if address == self.address then
        return true
    end
    if type(address) ~= "string" or address == "" then
        return nil, "node_alive: the address must be a non-empty string"
    end
    local now = ngx_now()
    local cached = self.alive_cache[address]
    if cached and cached.expires > now then
        return cached.alive
    end
    local ok, err = self:reachable()
    if not ok then
        return nil, err
    end
    local res, eerr, kind = self.client:command("EXISTS", self.prefix .. "node:" .. address)
    if type(res) ~= "number" then
        return self:failed(eerr or "unexpected reply to EXISTS", kind)
    end
    if res ~= 1 then
        -- Never remembered: a node started again on that address (within
        -- what would be a remembered answer) would have its new sessions
        -- refused. A dead node costs its clients' requests one EXISTS each.
        return false
    end
    if self.alive_cached >= MAX_REMEMBERED then
        self.alive_cache, self.alive_cached = {}, 0
    end
    if not cached then
        self.alive_cached = self.alive_cached + 1
    end
    self.alive_cache[address] = { alive = true, expires = now + self.period_ms / 1000 }
    return true
end

-- The report travels between workers in the slots dict as
-- "<up|down> <nodes>" then "\n<sessions> <length> <route>" per route.
local function encode_report(report)
    local parts = { report.redis .. " " .. report.nodes }
    for route, n in pairs(report.sessions) do
        parts[#parts + 1] = n .. " " .. #route .. " " .. route
    end
    return concat(parts, "\n")
end

local function decode_report(s)
    local state, nodes, pos = match(s, "^(%a+) (%d+)()")
    if not state then
        return nil
    end
    local sessions = {}
    while pos <= #s do
        local n, len, start = match(s, "^\n(%d+) (%d+) ()", pos)
        if not n then
            return nil
        end
        len = tonumber(len)
        sessions[sub(s, start, start + len - 1)] = tonumber(n)
        pos = start + len
    end
    return { redis = state, nodes = tonumber(nodes), sessions = sessions }
end

-- The last report any worker of the node published, or nil.
function instance:stored_report()
    local shm = ngx.shared[SLOTS_DICT]
    local stored = shm and shm:get(self.report_key)
    return stored and decode_report(stored) or self.last_report
end

-- { redis = "up" | "down", nodes = n, sessions = { [route] = n } }, as the
-- last renewal (by any worker of the node) saw them.
function instance:report()
    local report = self:stored_report()
    if not report then
        return { redis = "down", nodes = 0, sessions = {} }
    end
    local copy = {}
    for route, n in pairs(report.sessions) do
        copy[route] = n
    end
    return { redis = report.redis, nodes = report.nodes, sessions = copy }
end

function instance:publish(report)
    self.last_report = report
    if self.on_report then
        self.on_report(report)
    end
    local shm = ngx.shared[SLOTS_DICT]
    if shm then
        shm:set(self.report_key, encode_report(report))
    end
end

function instance:count_nodes()
    local cursor, nodes = "0", 0
    local pattern = self.prefix .. "node:*"
    for _ = 1, MAX_SCAN_ROUNDS do
        local res, err, kind = self.client:command("SCAN", cursor, "MATCH", pattern,
                                                   "COUNT", 1000)
        if type(res) ~= "table" or type(res[2]) ~= "table" then
            return nil, err or "unexpected reply to SCAN", kind
        end
        nodes = nodes + #res[2]
        cursor = res[1]
        if cursor == "0" then
            break
        end
    end
    return nodes
end

-- A node that starts counts no session yet (its slots dict is new), so what
-- Redis still holds under its address is a previous life's: a node killed
-- outright and started again within a lease would otherwise keep those
-- counts, which no renewal touches once the route has no session here.
-- Done once per start of the node, before its first renewal that reaches
-- Redis; a reload keeps the dict, and its counts stand.
function instance:forget_previous_life()
    local shm = ngx.shared[SLOTS_DICT]
    if self.fresh_done or (shm and shm:get(self.fresh_key)) then
        return true
    end
    local cursor, pattern = "0", self.prefix .. "sessions:*"
    for _ = 1, MAX_SCAN_ROUNDS do
        local res, err, kind = self.client:command("SCAN", cursor, "MATCH", pattern,
                                                   "COUNT", 1000)
        if type(res) ~= "table" or type(res[2]) ~= "table" then
            return nil, err or "unexpected reply to SCAN", kind
        end
        for _, hash in ipairs(res[2]) do
            local ok
            ok, err, kind = self.client:command("HDEL", hash, self.address)
            if not ok then
                return nil, err, kind
            end
        end
        cursor = res[1]
        if cursor == "0" then
            break
        end
    end
    self.fresh_done = true
    if shm then
        shm:set(self.fresh_key, true)
    end
    return true
end

-- One renewal: the node's lease, its counts, the report. An outage is
-- logged when it starts and when it ends (the state the node's workers
-- share in the report), not at every period.
function instance:renew_now()
    local previous = self:stored_report()
    local counts = self.counts()
    local routes = {}
    for route in pairs(counts or self.routes_seen) do
        routes[#routes + 1] = route
    end
    sort(routes)
    local keys = { self.node_key }
    local args = { "renew", self.prefix, self.address, self.lease_ms, self:node_info() }
    for i, route in ipairs(routes) do
        keys[i + 1] = self:hash_key(route)
        local own = counts and tonumber(counts[route])
        args[i + 5] = own and tostring(own < 0 and 0 or own) or ""
    end

    local totals, err, kind = self:forget_previous_life()
    if totals then
        totals, err, kind = self:script(keys, args)
    end
    local nodes
    if type(totals) == "table" then
        nodes, err, kind = self:count_nodes()
    elseif totals ~= nil then
        err = "unexpected reply to renew"
    end
    if not nodes then
        self:failed(err, kind)
        if not previous or previous.redis ~= "down" then
            ngx_log(ngx.WARN, "mcp-bridge: cluster registry: Redis unreachable; the cluster ",
                    "ceiling and node checks are unknown until it is back: ", err)
        end
        local report = previous or { nodes = 0, sessions = {} }
        report.redis = "down"
        self:publish(report)
        return nil, err
    end
    self.down_until = 0
    if previous and previous.redis == "down" then
        ngx_log(ngx.NOTICE, "mcp-bridge: cluster registry: Redis reachable again; node ",
                self.address, " registered with its session counts")
    end
    local sessions = {}
    for i, route in ipairs(routes) do
        sessions[route] = tonumber(totals[i]) or 0
    end
    self:publish({ redis = "up", nodes = nodes, sessions = sessions })
    return true
end

-- One worker of the node renews per period: whoever takes the lock first.
-- The lock lapses a little before the next period, so the renewals go on
-- when the worker that took it last is gone.
function instance:renew()
    if self.stopped or self.renewing then
        return
    end
    local shm = ngx.shared[SLOTS_DICT]
    if shm then
        local ok, err = shm:add(self.lock_key, "worker " .. ngx.worker.pid(),
                                self.period_ms * 0.9 / 1000)
        if not ok and err == "exists" then
            return
        end
    end
    self.renewing = true
    local ok, err = pcall(self.renew_now, self)
    self.renewing = false
    if not ok then
        ngx_log(ngx.ERR, "mcp-bridge: cluster registry: renewal failed: ", err)
    end
end

local function on_timer(premature, self)
    if premature then
        return
    end
    self:renew()
end

-- Starts the renewals in this worker (from init_worker), the first at once.
function instance:start()
    if self.started then
        return true
    end
    local ok, err = ngx.timer.every(self.period_ms / 1000, on_timer, self)
    if not ok then
        return nil, "cannot start the cluster registry's timer: " .. tostring(err)
    end
    self.started = true
    ngx.timer.at(0, on_timer, self)
    return true
end

-- Stops this worker's renewals, leaving everything in Redis as it is (to
-- Redis, as if the node had been killed).
function instance:stop()
    self.stopped = true
end

-- The node's registry, set by configure, and who hears its reports.
local default, report_listener

-- Calls `fn(report)` after each renewal of the node's registry (in the
-- worker that renewed): the metrics' gauges.
function _M.on_report(fn)
    report_listener = fn
    if default then
        default.on_report = fn
    end
end

function _M.configure(cluster)
    if cluster == nil then
        if default then
            default:stop()
        end
        default = nil
        return true
    end
    local inst, err = _M.new(cluster)
    if not inst then
        return nil, err
    end
    inst.on_report = report_listener
    local old = default
    default = inst
    if old then
        old:stop()
        if old.started then
            return inst:start()
        end
    end
    return true
end

function _M.start()
    if not default then
        return true
    end
    return default:start()
end

function _M.enabled()
    return default ~= nil
end

function _M.node_alive(address)
    if not default then
        return nil, OFF
    end
    return default:node_alive(address)
end

function _M.acquire(route, max)
    if not default then
        return nil, OFF
    end
    return default:acquire(route, max)
end

function _M.release(route)
    if not default then
        return nil, OFF
    end
    return default:release(route)
end

function _M.report()
    if not default then
        return nil
    end
    return default:report()
end

-- For tests: the script's digest, and the report's encoding.
_M.SCRIPT_SHA = SCRIPT_SHA
_M._encode_report, _M._decode_report = encode_report, decode_report

return _M
