-- Writing an event stream to the client: one event per message, a comment
-- for each keepalive, each write waited for (that wait is the
-- back-pressure: a slow client slows the host, which slows the backend, and
-- nothing piles up here), and a watchdog that ends the request when one
-- write takes longer than the limit.
local wire = require("apisix.plugins.mcp.bridge.wire")

local new_semaphore = require("ngx.semaphore").new

local get_phase = ngx.get_phase
local ngx = ngx
local ngx_exit = ngx.exit
local ngx_flush = ngx.flush
local ngx_log = ngx.log
local ngx_on_abort = ngx.on_abort
local ngx_print = ngx.print
local setmetatable = setmetatable
local thread_kill = ngx.thread.kill
local thread_spawn = ngx.thread.spawn

local _M = {}

local EVENT_MESSAGE = "event: message\ndata: "
local EVENT_END = "\n\n"
local KEEPALIVE = ": keepalive\n\n"

-- How long the write watchdog waits for the next write to begin.
local WATCHDOG_IDLE_SECONDS = 86400

local warned_abort_off = false

local function on_abort()
    -- Ends the request at once: its cosockets close, so its host sees the
    -- connection close; the log phase releases what the request held.
    ngx_exit(499)
end

-- Ends the request as soon as the client goes away.
function _M.watch_client_abort()
    local ok, err = ngx_on_abort(on_abort)
    if ok or warned_abort_off then
        return
    end
    warned_abort_off = true
    ngx_log(ngx.WARN, "mcp-bridge: cannot watch for client aborts (", err, "): add ",
            "\"lua_check_client_abort on;\" to the http block; until then a client that ",
            "disconnects is noticed only when a write to it fails")
end

-- Sleeps between writes: `began` is posted when a write starts, `ended`
-- when it has finished.
local function watch_writes(stream)
    local limit = stream.limit_ms / 1000
    while true do
        if stream.began:wait(WATCHDOG_IDLE_SECONDS) and not stream.ended:wait(limit) then
            ngx_log(ngx.WARN, "mcp-bridge: ", stream.label, " ended: the client took over ",
                    "slow_client_timeout_ms (", stream.limit_ms, " ms) to accept one message")
            -- Ends the request even while the main thread waits in ngx.flush.
            return ngx_exit(ngx.ERROR)
        end
    end
end

local Stream = {}
Stream.__index = Stream

-- A stream to the client; `label` names it in the log. The response's
-- headers must be set already. `raw`: the raw connection to write to (see
-- respond.start_stream), if not through ngx.print.
function _M.start(slow_client_timeout_ms, label, raw)
    local stream = setmetatable({
        began = new_semaphore(), ended = new_semaphore(), limit_ms = slow_client_timeout_ms,
        label = label, phase = get_phase(), raw = raw,
    }, Stream)
    stream.watchdog = thread_spawn(watch_writes, stream)
    return stream
end

function Stream:stop()
    if self.watchdog then
        thread_kill(self.watchdog)
        self.watchdog = nil
    end
end

local function write_raw(stream, a, b, c)
    stream.began:post(1)
    local ok, err = stream.raw:send({ a, b, c })
    stream.ended:post(1)
    if not ok then
        return nil, "client write failed: " .. (err or "unknown")
    end
    return true
end

local function write(stream, a, b, c)
    if stream.raw then
        return write_raw(stream, a, b, c)
    end
    local ok, err = ngx_print(a, b, c)
    if not ok then
        return nil, "client write failed: " .. (err or "unknown")
    end
    stream.began:post(1)
    ok, err = ngx_flush(true)
    stream.ended:post(1)
    if not ok then
        return nil, "client write failed: " .. (err or "unknown")
    end
    if get_phase() ~= stream.phase then
        -- See lua_module_refusal() in mcp-bridge.lua: nothing more can be
        -- written; say why rather than fail on the next call.
        return nil, "the lua module lost the request's phase (" .. get_phase() .. ") after a "
                    .. "write to a slow client: it needs the fix of lua-nginx-module 0.10.29"
    end
    return true
end

function Stream:event(payload)
    return write(self, EVENT_MESSAGE, payload, EVENT_END)
end

function Stream:keepalive()
    return write(self, KEEPALIVE, "", "")
end

-- Forwards a host's frames (see rust/host/src/frame.rs) until its Exit
-- frame. Returns the Exit payload; or nil, why the stream ended otherwise,
-- and whether that deserves a warning.
function Stream:relay(sock)
    while true do
        local kind, payload = wire.receive(sock)
        local ok, err
        if kind == wire.MESSAGE then
            ok, err = self:event(payload)
        elseif kind == wire.KEEPALIVE then
            ok, err = self:keepalive()
        elseif kind == wire.EXIT then
            return payload
        elseif kind then
            return nil, "unexpected frame \"" .. kind .. "\" from the host", true
        else
            return nil, "host connection " .. payload, payload ~= "closed"
        end
        if not ok then
            return nil, err, err and err:find("phase", 1, true) ~= nil
        end
    end
end

return _M
