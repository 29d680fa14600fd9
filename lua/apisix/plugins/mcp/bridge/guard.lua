-- Protection against DNS rebinding, on every endpoint before anything else:
-- a request whose Host is not one of `allowed_hosts` (when the route lists
-- them), or whose Origin is neither one of `allowed_origins` nor an origin
-- on an allowed host, is refused with 403. A request without Origin (any
-- client that is not a browser) passes the Origin check.
local new_memo = require("apisix.plugins.mcp.bridge.memo").new

local find = string.find
local ipairs = ipairs
local lower = string.lower
local match = string.match
local ngx = ngx
local setmetatable = setmetatable

local _M = {}

-- "Host:port" or "[v6]:port" split into host and port (nil without one).
local function split(authority)
    local host, port = match(authority, "^(%[[^%]]+%]):?(%d*)$")
    if not host then
        host, port = match(authority, "^([^:]+):?(%d*)$")
    end
    if not host then
        return nil
    end
    return host, port ~= "" and port or nil
end

-- Whether `authority` is in `list`: an entry without a port allows every
-- port of its host.
local function listed(list, authority)
    local host, port = split(lower(authority))
    if not host then
        return false
    end
    for _, entry in ipairs(list) do
        local h, p = split(lower(entry))
        if h == host and (p == nil or p == port) then
            return true
        end
    end
    return false
end

-- Verdicts on Host values, by list of allowed hosts (a route's
-- configuration holds its list while it is in force): a client sends the
-- same Host with every request, so each is worked out once.
local verdicts = setmetatable({}, { __mode = "k" })
local MAX_VERDICTS = 64

local function host_allowed(list, host)
    local memo = verdicts[list]
    if not memo then
        memo = new_memo(MAX_VERDICTS)
        verdicts[list] = memo
    end
    local verdict = memo:get(host)
    if verdict == nil then
        verdict = memo:set(host, listed(list, host))
    end
    return verdict
end

-- nil when the request may go on; else a message for the 403.
function _M.check(conf)
    local hosts = conf.allowed_hosts
    if hosts and #hosts > 0 then
        local host = ngx.var.http_host
        if not host or not host_allowed(hosts, host) then
            return "Host \"" .. (host or "") .. "\" is not allowed (allowed_hosts)"
        end
    end
    local origin = ngx.var.http_origin
    if not origin then
        return nil
    end
    for _, allowed in ipairs(conf.allowed_origins or {}) do
        if lower(allowed) == lower(origin) then
            return nil
        end
    end
    local authority = match(origin, "^%a[%w+.-]*://([^/]+)$")
    if authority and hosts and #hosts > 0 and not find(authority, "@", 1, true)
       and listed(hosts, authority) then
        return nil
    end
    return "Origin \"" .. origin .. "\" is not allowed (allowed_origins)"
end

return _M
