-- Whether a new session may start: a slot of the route's ceilings
-- (max_sessions per worker, max_sessions_per_node, max_sessions_per_cluster), refusals logged (see
-- refusal.lua) and counted (metrics.lua).
local metrics = require("apisix.plugins.mcp.bridge.metrics")
local refusal_log = require("apisix.plugins.mcp.bridge.refusal")
local session_limit = require("apisix.plugins.mcp.session_limit")

local hosts = require("apisix.plugins.mcp.bridge.hosts")

local _M = {
    RETRY_AFTER_SECONDS = "1",
    UNAVAILABLE = hosts.UNAVAILABLE,
}

-- What a refusal of session_limit.acquire names: the field, and where.
local CEILINGS = {
    rejected = { "max_sessions", " per worker at a time (" },
    node = { "max_sessions_per_node", " on this node at a time (" },
    cluster = { "max_sessions_per_cluster", " in the cluster at a time (" },
}

-- A slot for a new session of `route`; or nil, the HTTP status (429 or
-- 503) and a message for the client. `detached`: the slot outlives the
-- request (a Streamable session's); the caller releases it.
function _M.take(route, detached)
    local conf = route.conf
    local slot, refusal = session_limit.acquire(conf.max_sessions, route.key,
                                                conf.max_sessions_per_node, detached,
                                                conf.max_sessions_per_cluster)
    if slot then
        return slot
    end
    local ceiling = CEILINGS[refusal]
    if ceiling then
        ceiling = conf[ceiling[1]] .. ceiling[2] .. route.name(ceiling[1]) .. ")"
        local message = "too many sessions: at most " .. ceiling
        _M.refused(route, 429, message)
        return nil, 429, message
    end
    _M.refused(route, 503, _M.UNAVAILABLE)
    return nil, 503, _M.UNAVAILABLE
end

-- Logs and counts a session refused with `status`.
function _M.refused(route, status, message)
    refusal_log.log(route.key, status, message)
    metrics.refused(route.key, status)
end

return _M
