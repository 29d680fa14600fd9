-- Sessions refused (429, 503) leave a trace in the log at info, at most one
-- line per route and status every few seconds, counting the ones in
-- between: a burst over a limit must not flood the log.
local ngx = ngx
local ngx_log = ngx.log
local now = ngx.now

local _M = {}

local INTERVAL_SECONDS = 10

-- [route key .. status] = { at = <time of the last line>, quiet = <refusals since> }
local recent = {}

function _M.log(route_key, status, why)
    local key = route_key .. " " .. status
    local seen = recent[key]
    local t = now()
    if seen and t - seen.at < INTERVAL_SECONDS then
        seen.quiet = seen.quiet + 1
        return
    end
    local more = seen and seen.quiet > 0
                 and " (and " .. seen.quiet .. " more in the last " .. INTERVAL_SECONDS .. " s)"
                 or ""
    recent[key] = { at = t, quiet = 0 }
    ngx_log(ngx.INFO, "mcp-bridge: refused a session of route \"", route_key, "\" with ", status,
            ": ", why, more)
end

return _M
