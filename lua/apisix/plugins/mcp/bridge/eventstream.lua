-- Writing an event stream to the client: one event per message, a comment
-- for each keepalive, each write waited for (that wait is the
-- back-pressure: a slow client slows the host, which slows the backend, and
-- nothing piles up here), and a watchdog that ends the request when one
-- write takes longer than the limit.
--
-- The watchdog costs a write nothing but two stores: a write notes when it
-- started (ngx.now(), the event loop's cached clock, no system call) and
-- clears that when done. The watchdog is a light thread that sleeps a whole
-- limit at a time while no write is in progress; when it wakes during a
-- write, it sleeps until that write's start + limit, and if a write that
-- started that long ago is still in progress then, it ends the request.
-- So it fires at start + limit exactly, as a timer per write would, for one
-- timer per limit per stream instead of two semaphores and two timers per
-- write.
local wire = require("apisix.plugins.mcp.bridge.wire")

local get_phase = ngx.get_phase
local ngx = ngx
local ngx_exit = ngx.exit
local ngx_flush = ngx.flush
local ngx_log = ngx.log
local ngx_now = ngx.now
local ngx_on_abort = ngx.on_abort
local ngx_print = ngx.print
local ngx_sleep = ngx.sleep
local setmetatable = setmetatable
local thread_kill = ngx.thread.kill
local thread_spawn = ngx.thread.spawn

local _M = {}

local EVENT_MESSAGE = "event: message\ndata: "
local EVENT_END = "\n\n"
local KEEPALIVE = ": keepalive\n\n"

-- The clock has millisecond steps, and sums of seconds in floating point
-- are off by a little: a deadline closer than this counts as reached.
local HALF_MS = 0.0005
-- The shortest sleep. ngx.sleep truncates to whole milliseconds, and a
-- sleep of 0 ms from a timer's handler would run in the same pass over the
-- timers, before the clock moves: the watchdog would never stop.
local MIN_SLEEP = 0.001

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

-- The watchdog (see the top of this file): `stream.write_started` is the
-- start of the write in progress, false between writes.
local function watch_writes(stream)
    local limit = stream.limit_ms / 1000
    while true do
        local wait = limit
        local started = stream.write_started
        if started then
            wait = started + limit - ngx_now()
            if wait < HALF_MS then
                ngx_log(ngx.WARN, "mcp-bridge: ", stream.label, " ended: the client took over ",
                        "slow_client_timeout_ms (", stream.limit_ms, " ms) to accept one message")
                -- Ends the request even while the main thread waits in ngx.flush.
                return ngx_exit(ngx.ERROR)
            end
        end
        -- Rounded to the nearest millisecond, at least one.
        ngx_sleep((wait > MIN_SLEEP and wait or MIN_SLEEP) + HALF_MS)
    end
end

local Stream = {}
Stream.__index = Stream

-- A stream to the client; `label` names it in the log. The response's
-- headers must be set already. `raw`: the raw connection to write to (see
-- respond.start_stream), if not through ngx.print.
function _M.start(slow_client_timeout_ms, label, raw)
    local stream = setmetatable({
        write_started = false, limit_ms = slow_client_timeout_ms, label = label,
        phase = get_phase(), raw = raw, pieces = raw and {},
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
    -- The socket copies the pieces before send() returns or yields.
    local pieces = stream.pieces
    pieces[1], pieces[2], pieces[3] = a, b, c
    stream.write_started = ngx_now()
    local ok, err = stream.raw:send(pieces)
    stream.write_started = false
    pieces[2] = ""
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
    stream.write_started = ngx_now()
    ok, err = ngx_flush(true)
    stream.write_started = false
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
