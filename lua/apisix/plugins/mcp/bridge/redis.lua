-- A small Redis client over ngx.socket.tcp, for the cluster registry: one
-- command per call (no pipelining), RESP2 replies, pooled connections.
--
--   local conf, err = redis.parse_url("redis://:secret@10.0.0.5:6379/2")
--   local client = redis.new(conf)
--   local res, err, kind = client:command("SET", "k", "v", "PX", 500)
--
-- Replies: a status is a string, an integer a number, a nil bulk or nil
-- array ngx.null, an array a Lua array (an error inside one becomes
-- { err = "<message>" }). A failure returns nil, a message and its kind:
-- "reply" (Redis answered with an error; the connection is fine) or
-- "connection" (Redis could not be reached or spoke garbage).
local byte = string.byte
local concat = table.concat
local find = string.find
local gsub = string.gsub
local match = string.match
local ngx = ngx
local ngx_null = ngx.null
local ngx_md5 = ngx.md5
local ngx_socket_tcp = ngx.socket.tcp
local char = string.char
local select = select
local setmetatable = setmetatable
local sub = string.sub
local tonumber = tonumber
local tostring = tostring
local type = type

local _M = {}

local CONNECT_TIMEOUT_MS = 200
local SEND_TIMEOUT_MS = 500
local READ_TIMEOUT_MS = 500
local POOL_IDLE_MS = 60000
local POOL_SIZE = 32
-- Replies the registry reads are small; anything larger is not Redis.
local MAX_BULK = 16 * 1024 * 1024
local MAX_DEPTH = 8

local function url_error(url, why)
    return nil, "bad Redis URL \"" .. tostring(url) .. "\": " .. why
        .. " (expected redis://[:password@]host:port[/db])"
end

local function unescape(s)
    return (gsub(s, "%%(%x%x)", function(hex) return char(tonumber(hex, 16)) end))
end

-- redis://[[user]:password@]host[:port][/db] -> { host, port, user,
-- password, db }, or nil and a message naming what is wrong.
function _M.parse_url(url)
    if type(url) ~= "string" then
        return url_error(url, "not a string")
    end
    local rest = match(url, "^redis://(.*)$")
    if not rest then
        return url_error(url, "the scheme must be redis://")
    end
    local user, password
    local at = find(rest, "@[^@]*$")
    if at then
        local userinfo = sub(rest, 1, at - 1)
        rest = sub(rest, at + 1)
        local colon = find(userinfo, ":", 1, true)
        if not colon then
            return url_error(url, "the password must follow a colon (redis://:password@...)")
        end
        user = unescape(sub(userinfo, 1, colon - 1))
        password = unescape(sub(userinfo, colon + 1))
        if password == "" then
            return url_error(url, "empty password")
        end
        if user == "" then
            user = nil
        end
    end
    local hostport, db = match(rest, "^([^/]*)/(.*)$")
    if not hostport then
        hostport = rest
    elseif db ~= "" and (not match(db, "^%d+$") or #db > 5) then
        return url_error(url, "the database must be a number")
    end
    local host, colon, port = match(hostport, "^%[([%x:.]+)%](:?)(%d*)$")
    if not host then
        host, colon, port = match(hostport, "^([%w.-]+)(:?)(%d*)$")
    end
    if not host then
        return url_error(url, "missing or invalid host")
    end
    if colon == ":" and port == "" then
        return url_error(url, "missing port after the colon")
    end
    port = port == "" and 6379 or tonumber(port)
    if port < 1 or port > 65535 then
        return url_error(url, "port out of range")
    end
    if host == "localhost" then
        -- Resolving a name needs a `resolver` directive; this one needs none.
        host = "127.0.0.1"
    end
    return { host = host, port = port, user = user, password = password,
             db = tonumber(db) or 0 }
end

-- The RESP array of bulk strings that carries a command.
function _M.encode(args, n)
    local parts = { "*", n, "\r\n" }
    local i = 4
    for k = 1, n do
        local arg = tostring(args[k])
        parts[i], parts[i + 1], parts[i + 2], parts[i + 3] = "$", #arg, "\r\n", arg
        parts[i + 4] = "\r\n"
        i = i + 5
    end
    return concat(parts)
end

local read_reply

local function read_array(sock, n, depth)
    local items = {}
    for k = 1, n do
        local item, err, kind = read_reply(sock, depth + 1)
        if item == nil then
            if kind ~= "reply" then
                return nil, err, kind
            end
            item = { err = err }
        end
        items[k] = item
    end
    return items
end

-- Reads one reply from anything with a cosocket's receive(). A Redis error
-- reply returns nil, its message, "reply".
read_reply = function(sock, depth)
    depth = depth or 0
    if depth > MAX_DEPTH then
        return nil, "Redis reply nested too deeply", "connection"
    end
    local line, err = sock:receive("*l")
    if not line then
        return nil, "reading from Redis: " .. tostring(err), "connection"
    end
    local kind, body = byte(line), sub(line, 2)
    if kind == 43 then -- "+"
        return body
    elseif kind == 45 then -- "-"
        return nil, body, "reply"
    elseif kind == 58 then -- ":"
        local n = match(body, "^%-?%d+$") and tonumber(body)
        if not n then
            return nil, "bad integer in Redis reply: " .. body, "connection"
        end
        return n
    elseif kind == 36 or kind == 42 then -- "$", "*"
        local n = match(body, "^%-?%d+$") and tonumber(body)
        if not n or n < -1 or n > MAX_BULK then
            return nil, "bad length in Redis reply: " .. body, "connection"
        end
        if n == -1 then
            return ngx_null
        end
        if kind == 42 then
            return read_array(sock, n, depth)
        end
        local data, rerr = sock:receive(n + 2)
        if not data then
            return nil, "reading from Redis: " .. tostring(rerr), "connection"
        end
        if sub(data, -2) ~= "\r\n" then
            return nil, "bulk reply not ended by CRLF", "connection"
        end
        return sub(data, 1, n)
    end
    return nil, "unexpected Redis reply: " .. sub(line, 1, 40), "connection"
end
_M.read_reply = read_reply

local client = {}
client.__index = client

function _M.new(conf)
    local pool = "mcp-bridge-redis:" .. conf.host .. ":" .. conf.port .. ":" .. conf.db
    if conf.password then
        -- Connections authenticated with other credentials are not shared.
        pool = pool .. ":" .. ngx_md5((conf.user or "") .. ":" .. conf.password)
    end
    return setmetatable({ conf = conf, pool = pool, pool_opts = { pool = pool } }, client)
end

-- Sends one command on `sock` and reads its reply.
local function call(sock, args, n)
    local ok, err = sock:send(_M.encode(args, n))
    if not ok then
        return nil, "sending to Redis: " .. tostring(err), "connection"
    end
    return read_reply(sock)
end

-- A connected socket, authenticated and on the right database when new.
local function connect(self)
    local conf = self.conf
    local sock = ngx_socket_tcp()
    sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS, READ_TIMEOUT_MS)
    local ok, err = sock:connect(conf.host, conf.port, self.pool_opts)
    if not ok then
        return nil, "connecting to Redis at " .. conf.host .. ":" .. conf.port .. ": "
            .. tostring(err)
    end
    if (sock:getreusedtimes() or 0) > 0 then
        return sock
    end
    if conf.password then
        local args = conf.user and { "AUTH", conf.user, conf.password }
            or { "AUTH", conf.password }
        local res, aerr = call(sock, args, #args)
        if not res then
            sock:close()
            return nil, "Redis AUTH: " .. tostring(aerr)
        end
    end
    if conf.db ~= 0 then
        local res, serr = call(sock, { "SELECT", conf.db }, 2)
        if not res then
            sock:close()
            return nil, "Redis SELECT " .. conf.db .. ": " .. tostring(serr)
        end
    end
    return sock
end

-- client:command(name, arg...) -> reply, or nil, message, kind.
function client:command(...)
    local sock, err = connect(self)
    if not sock then
        return nil, err, "connection"
    end
    local n = select("#", ...)
    local res, cerr, kind = call(sock, { ... }, n)
    if res == nil and kind ~= "reply" then
        sock:close()
        return nil, cerr, kind
    end
    sock:setkeepalive(POOL_IDLE_MS, POOL_SIZE)
    return res, cerr, kind
end

return _M
