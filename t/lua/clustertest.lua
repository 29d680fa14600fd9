-- What other nodes of the test cluster, or nodes of another cluster, would
-- make: ids, input_required state prefixes. Settings are changed for the
-- call only, and put back.
local cluster = require("apisix.plugins.mcp.bridge.cluster")

local _M = {}

-- Calls `fn` with this node's cluster settings changed by `changes`.
function _M.as(changes, fn)
    local mine = cluster.settings()
    local s = {}
    for k, v in pairs(mine) do s[k] = v end
    for k, v in pairs(changes) do s[k] = v end
    assert(cluster.configure(s))
    local ok, result = pcall(fn)
    assert(cluster.configure(mine))
    assert(ok, result)
    return result
end

-- The id the node `changes` describe would give the host's `host_id`.
function _M.id(host_id, changes)
    -- Says each line of this gateway's metrics that starts with `prefix` (the
-- block serves them at /-/metrics).
function _M.say_metrics(prefix)
    local _, _, text = require("mcptest").http("GET", "/-/metrics")
    for line in text:gmatch("[^\n]+") do
        if line:find(prefix, 1, true) == 1 then ngx.say(line) end
    end
end

return _M.as(changes, function() return cluster.tag(host_id) end)
end

-- That node's prefix of input_required states.
function _M.state_prefix(changes)
    -- Says each line of this gateway's metrics that starts with `prefix` (the
-- block serves them at /-/metrics).
function _M.say_metrics(prefix)
    local _, _, text = require("mcptest").http("GET", "/-/metrics")
    for line in text:gmatch("[^\n]+") do
        if line:find(prefix, 1, true) == 1 then ngx.say(line) end
    end
end

return _M.as(changes, cluster.state_prefix)
end

-- The settings check's message for this node's settings changed by `changes`.
function _M.check(changes)
    local s = {}
    for k, v in pairs(cluster.settings()) do s[k] = v end
    for k, v in pairs(changes) do s[k] = v end
    if changes.node_address == false then s.node_address = nil end
    return select(2, cluster.check(s)) or "ok"
end

-- Says each line of this gateway's metrics that starts with `prefix` (the
-- block serves them at /-/metrics).
function _M.say_metrics(prefix)
    local _, _, text = require("mcptest").http("GET", "/-/metrics")
    for line in text:gmatch("[^\n]+") do
        if line:find(prefix, 1, true) == 1 then ngx.say(line) end
    end
end

return _M
