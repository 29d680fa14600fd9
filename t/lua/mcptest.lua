-- Test driver for the suites: an MCP client of the HTTP+SSE transport over
-- cosockets (talking to the nginx under test through its own port), and
-- checks on the processes the fixture server records.
local cjson = require("cjson.safe")
local ffi = require("ffi")
local native = require("apisix.plugins.mcp.bridge.native")
local wire = require("apisix.plugins.mcp.bridge.wire")

local concat = table.concat
local find = string.find
local insert = table.insert
local io_open = io.open
local match = string.match
local ngx = ngx
local now = ngx.now
local remove = table.remove
local sleep = ngx.sleep
local sub = string.sub
local tonumber = tonumber

local _M = {}

-- Routes by name, as the support module defined them.
local route_bases = {}

function _M.routes(routes)
    for name, conf in pairs(routes) do
        route_bases[name] = conf.base_uri or ""
    end
end

-- Serves the request with the route whose base_uri is the longest prefix
-- of the path: one location for every route of a block.
function _M.serve()
    local uri = ngx.var.uri
    local best, best_len = nil, -1
    for name, base in pairs(route_bases) do
        if (uri == base or sub(uri, 1, #base + 1) == base .. "/") and #base > best_len then
            best, best_len = name, #base
        end
    end
    if not best then
        return ngx.exit(404)
    end
    return require("apisix.plugins.mcp.bridge.standalone").serve(best)
end

local server_port

-- The port under test, remembered from request context so timers can use
-- it too (ngx.var is not available in a timer).
local function port()
    if not server_port then
        server_port = tonumber(ngx.var.server_port)
    end
    return server_port
end
_M.port = port

-- Talks to `p` from now on (another listener of the nginx under test).
function _M.use_port(p)
    server_port = p
end

local function connect(timeout_ms)
    local sock = ngx.socket.tcp()
    sock:settimeouts(2000, 5000, timeout_ms or 5000)
    local ok, err = sock:connect("127.0.0.1", port())
    if not ok then
        return nil, err
    end
    return sock
end

local function send_request(sock, method, path, headers, body)
    local lines = { method .. " " .. path .. " HTTP/1.1", "Host: localhost" }
    for _, h in ipairs(headers or {}) do
        lines[#lines + 1] = h
    end
    if body then
        lines[#lines + 1] = "Content-Length: " .. #body
    end
    lines[#lines + 1] = ""
    lines[#lines + 1] = body or ""
    return sock:send(concat(lines, "\r\n"))
end

local function read_head(sock)
    local status_line, err = sock:receive("*l")
    if not status_line then
        return nil, err
    end
    local status = tonumber(match(status_line, "^HTTP/1%.%d (%d+)"))
    local headers = {}
    while true do
        local line
        line, err = sock:receive("*l")
        if not line then
            return nil, err
        end
        if line == "" then
            break
        end
        local k, v = match(line, "^([^:]+):%s*(.*)$")
        if k then
            headers[k:lower()] = v
        end
    end
    return status, headers
end

-- A response body reader that undoes chunked transfer encoding.
local Body = {}
Body.__index = Body

local function body_reader(sock, headers)
    return setmetatable({ sock = sock, chunked = headers["transfer-encoding"] == "chunked",
                          left = tonumber(headers["content-length"]), buf = "", done = false }, Body)
end

function Body:fill()
    if self.done then
        return nil, "eof"
    end
    local sock = self.sock
    if not self.chunked then
        local data, err, partial = sock:receive(self.left or 4096)
        data = data or partial
        if data and data ~= "" then
            self.buf = self.buf .. data
            if self.left then
                self.left = self.left - #data
                if self.left <= 0 then self.done = true end
            end
            return true
        end
        if err == "closed" then self.done = true end
        return nil, err
    end
    local size_line, err = sock:receive("*l")
    if not size_line then
        if err == "closed" then self.done = true end
        return nil, err
    end
    local size = tonumber(match(size_line, "^(%x+)"), 16)
    if not size then
        return nil, "bad chunk size: " .. size_line
    end
    if size == 0 then
        sock:receive("*l")
        self.done = true
        return nil, "eof"
    end
    local data
    data, err = sock:receive(size)
    if not data then
        return nil, err
    end
    sock:receive(2)
    self.buf = self.buf .. data
    return true
end

function Body:line()
    while true do
        local i = find(self.buf, "\n", 1, true)
        if i then
            local line = sub(self.buf, 1, i - 1)
            self.buf = sub(self.buf, i + 1)
            return line
        end
        local ok, err = self:fill()
        if not ok then
            return nil, err
        end
    end
end

function Body:all()
    while not self.done do
        local ok, err = self:fill()
        if not ok and err ~= "eof" then
            if err == "closed" then break end
            return nil, err
        end
    end
    local all = self.buf
    self.buf = ""
    return all
end

-- Plain request on its own connection: status, headers, body.
function _M.http(method, path, body, headers)
    local sock, err = connect()
    if not sock then
        return nil, err
    end
    local h = { "Connection: close" }
    for _, x in ipairs(headers or {}) do
        h[#h + 1] = x
    end
    send_request(sock, method, path, h, body)
    local status, hdrs = read_head(sock)
    if not status then
        return nil, hdrs
    end
    local data = body_reader(sock, hdrs):all()
    sock:close()
    return status, hdrs, data
end

-- An SSE stream. read_event() returns { event =, data = } or a comment as
-- { comment = }.
local Stream = {}
Stream.__index = Stream

function _M.open(path, timeout_ms)
    local sock, err = connect(timeout_ms)
    if not sock then
        return nil, err
    end
    send_request(sock, "GET", path, { "Accept: text/event-stream" })
    local status, headers = read_head(sock)
    if not status then
        return nil, headers
    end
    local stream = setmetatable({ sock = sock, status = status, headers = headers,
                                  body = body_reader(sock, headers), queue = {} }, Stream)
    return stream
end

function Stream:read_event()
    local event = {}
    while true do
        local line, err = self.body:line()
        if not line then
            return nil, err
        end
        if line == "" then
            if next(event) then
                return event
            end
        elseif sub(line, 1, 1) == ":" then
            return { comment = line }
        else
            local k, v = match(line, "^(%w+): ?(.*)$")
            if k then
                event[k] = event[k] and (event[k] .. "\n" .. v) or v
            end
        end
    end
end

-- Next message event (decoded), skipping comments.
function Stream:next_message()
    if #self.queue > 0 then
        return remove(self.queue, 1)
    end
    while true do
        local ev, err = self:read_event()
        if not ev then
            return nil, err
        end
        if ev.event == "message" then
            local msg, derr = cjson.decode(ev.data)
            if not msg then
                return nil, "undecodable event data: " .. derr .. ": " .. ev.data
            end
            return msg
        end
    end
end

function Stream:close()
    self.sock:close()
end

-- Opens a session: the stream and its message URL.
function _M.session(base)
    local stream, err = _M.open(base .. "/sse")
    if not stream then
        return nil, err
    end
    if stream.status ~= 200 then
        local body = stream.body:all()
        stream:close()
        return nil, "status " .. stream.status .. ": " .. (body or "")
    end
    local ev
    ev, err = stream:read_event()
    if not ev or ev.event ~= "endpoint" then
        return nil, "no endpoint event: " .. (err or cjson.encode(ev))
    end
    stream.endpoint = ev.data
    stream.id = match(ev.data, "sessionId=(%x+)$")
    stream.next_id = 0
    return stream
end

function Stream:post(message)
    local body = type(message) == "string" and message or cjson.encode(message)
    return _M.http("POST", self.endpoint, body, { "Content-Type: application/json" })
end

-- Sends a JSON-RPC request and waits for its response; other messages seen
-- meanwhile are queued for next_message().
function Stream:call(method, params)
    self.next_id = self.next_id + 1
    local id = self.next_id
    local status, _, body = self:post({ jsonrpc = "2.0", id = id, method = method, params = params })
    if status ~= 202 then
        return nil, "POST answered " .. tostring(status) .. ": " .. tostring(body)
    end
    local skipped = {}
    while true do
        local msg, err = self:next_message()
        if not msg then
            for _, m in ipairs(skipped) do insert(self.queue, m) end
            return nil, err
        end
        if msg.id == id then
            for _, m in ipairs(skipped) do insert(self.queue, m) end
            return msg
        end
        skipped[#skipped + 1] = msg
    end
end

function Stream:initialize()
    local res, err = self:call("initialize", {
        protocolVersion = "2024-11-05", capabilities = {},
        clientInfo = { name = "mcptest", version = "1" },
    })
    if not res then
        return nil, err
    end
    self:post({ jsonrpc = "2.0", method = "notifications/initialized" })
    return res
end

-- Text of a tools/call result.
function Stream:tool(name, args)
    local res, err = self:call("tools/call", { name = name, arguments = args or {} })
    if not res then
        return nil, err
    end
    if not res.result then
        return nil, cjson.encode(res)
    end
    return res.result.content[1].text, res.result.isError
end

-- Files -------------------------------------------------------------------
-- Through the FFI: io.popen or os.execute would fork children of the worker,
-- which nginx reaps and logs as "unknown process".

ffi.cdef [[
    typedef struct mcptest_dir mcptest_dir;
    struct mcptest_dirent {
        uint64_t d_ino;
        int64_t d_off;
        unsigned short d_reclen;
        unsigned char d_type;
        char d_name[256];
    };
    mcptest_dir *opendir(const char *name);
    struct mcptest_dirent *readdir(mcptest_dir *dir);
    int closedir(mcptest_dir *dir);
    int unlink(const char *path);
    int mkdir(const char *path, unsigned int mode);
    int chmod(const char *path, unsigned int mode);
    int kill(int pid, int sig);
]]

local function list_dir(dir)
    local names = {}
    local d = ffi.C.opendir(dir)
    if d == nil then
        return names
    end
    while true do
        local entry = ffi.C.readdir(d)
        if entry == nil then
            break
        end
        local name = ffi.string(entry.d_name)
        if name ~= "." and name ~= ".." then
            names[#names + 1] = name
        end
    end
    ffi.C.closedir(d)
    return names
end

-- Waits until `done()` is true; false after `seconds`. Tests have no event
-- for "a process is gone", so this checks every 10 ms.
local function wait_until(done, seconds)
    local deadline = now() + (seconds or 5)
    while not done() do
        if now() > deadline then
            return false
        end
        sleep(0.01)
        ngx.update_time()
    end
    return true
end

-- The backend's pid, as the fixture reports it.
function Stream:backend_pid()
    local text, err = self:tool("pid")
    if not text then
        return nil, err
    end
    return tonumber(match(text, '"pid":(%d+)'))
end

-- Processes ---------------------------------------------------------------

-- "running", "zombie" or nil (gone) for `pid`, checking its start time
-- against `starttime` when given so a reused pid is not mistaken.
function _M.process_state(pid, starttime)
    local f = io_open("/proc/" .. pid .. "/stat")
    if not f then
        return nil
    end
    local stat = f:read("*a")
    f:close()
    -- The process may vanish between open and read.
    local rest = stat and match(stat, "%) (.*)$")
    if not rest then
        return nil
    end
    local fields = {}
    for field in rest:gmatch("%S+") do
        fields[#fields + 1] = field
    end
    -- fields[1] is the state (field 3 of stat); starttime is field 22.
    if starttime and tonumber(fields[20]) ~= tonumber(starttime) then
        return nil
    end
    return fields[1] == "Z" and "zombie" or "running"
end

-- Pids of the children of `pid` (from /proc).
function _M.children(pid)
    local kids = {}
    for _, name in ipairs(list_dir("/proc")) do
        local f = match(name, "^%d+$") and io_open("/proc/" .. name .. "/stat")
        if f then
            local stat = f:read("*a") or ""
            f:close()
            if tonumber(match(stat, "%) %a (%d+)")) == pid then
                kids[#kids + 1] = tonumber(name)
            end
        end
    end
    return kids
end

-- Pids of every descendant of `pid`.
function _M.descendants(pid)
    local all, i = _M.children(pid), 1
    while all[i] do
        for _, kid in ipairs(_M.children(all[i])) do
            all[#all + 1] = kid
        end
        i = i + 1
    end
    return all
end

-- Waits until every pid of `pids` has exited (see wait_exited).
function _M.wait_all_exited(pids, seconds)
    return wait_until(function()
        for _, pid in ipairs(pids) do
            if _M.process_state(pid) == "running" then
                return false
            end
        end
        return true
    end, seconds)
end

-- Waits until `pid` is gone; returns true, or false after `seconds`.
function _M.wait_gone(pid, seconds, starttime)
    return wait_until(function() return not _M.process_state(pid, starttime) end, seconds)
end

-- Waits until `pid` has exited (a zombie counts: an orphan's new parent
-- may reap it late); returns true, or false after `seconds`.
function _M.wait_exited(pid, seconds)
    return wait_until(function() return _M.process_state(pid) ~= "running" end, seconds)
end

-- Records the fixture wrote in `dir`: { [pid] = { pid=, pgid=, role=, starttime= } }.
function _M.records(dir)
    local records = {}
    for _, name in ipairs(list_dir(dir)) do
        local pid = match(name, "^(%d+)%.pid$")
        if pid then
            local f = io_open(dir .. "/" .. name)
            if f then
                local rec = cjson.decode(f:read("*a"))
                f:close()
                if rec then
                    records[tonumber(pid)] = rec
                end
            end
        end
    end
    return records
end

-- Whether the fixture process `pid` recorded receiving SIGTERM.
function _M.got_sigterm(dir, pid)
    local f = io_open(dir .. "/" .. pid .. ".term")
    if not f then
        return false
    end
    f:close()
    return true
end

-- Recorded processes of `dir` still running (or zombies), as a sorted list
-- of "pid role state" strings; empty when nothing leaked.
function _M.leftovers(dir)
    local left = {}
    for pid, rec in pairs(_M.records(dir)) do
        local state = _M.process_state(pid, rec.starttime)
        if state then
            left[#left + 1] = pid .. " " .. (rec.role or "?") .. " " .. state
        end
    end
    table.sort(left)
    return left
end

-- Waits until every recorded process of `dir` is gone.
function _M.wait_all_gone(dir, seconds)
    if wait_until(function() return #_M.leftovers(dir) == 0 end, seconds) then
        return true
    end
    return false, concat(_M.leftovers(dir), ", ")
end

-- Statistics of this worker's host (sessions, backends, ...).
function _M.host_stats()
    local path, err = native.host_socket()
    if not path then
        return nil, err
    end
    local sock = ngx.socket.tcp()
    local ok
    ok, err = sock:connect("unix:" .. path)
    if not ok then
        return nil, err
    end
    wire.send(sock, wire.QUERY, "")
    local kind, payload = wire.receive(sock)
    sock:close()
    if kind ~= wire.STATS then
        return nil, payload
    end
    return cjson.decode(payload)
end

-- Sends signal number `sig` to `pid`.
function _M.kill(pid, sig)
    return ffi.C.kill(pid, sig) == 0
end

-- The node's slot counts (see node_slots.snapshot()).
function _M.node()
    return require("apisix.plugins.mcp.node_slots").snapshot()
end

-- Slots `route` holds in this worker.
function _M.slots(route)
    return native.slot_count(route or "mcp")
end

-- Waits until this worker's slots of `route` and host sessions are 0.
function _M.wait_idle(route, seconds)
    local function idle()
        return _M.slots(route) == 0 and (_M.host_stats() or {}).sessions == 0
    end
    if wait_until(idle, seconds) then
        return true
    end
    return false, "slots " .. _M.slots(route) .. ", host sessions "
                  .. tostring((_M.host_stats() or {}).sessions)
end

-- Waits until this worker's slots of `route` are down to `n`.
function _M.wait_slots(route, n, seconds)
    if wait_until(function() return _M.slots(route) == (n or 0) end, seconds) then
        return true
    end
    return false, "slots " .. _M.slots(route)
end

-- Says whether anything of route `route` and of the fixture's records in
-- `dir` is left, waiting a little for teardown to finish.
function _M.say_cleanup(dir, route)
    local gone, left = _M.wait_all_gone(dir, 3)
    ngx.say("processes left: ", gone and "none" or left)
    if route then
        ngx.say("idle: ", tostring((_M.wait_idle(route))))
    end
end

-- Clears `dir` of records (between scenarios of one block).
function _M.clear(dir)
    ffi.C.mkdir(dir, tonumber("1777", 8))
    for _, name in ipairs(list_dir(dir)) do
        ffi.C.unlink(dir .. "/" .. name)
    end
    ffi.C.chmod(dir, tonumber("1777", 8))
end

-- Pid of the only backend recorded in `dir`.
function _M.backend_pid(dir)
    for pid, rec in pairs(_M.records(dir)) do
        if rec.role == "backend" then
            return pid
        end
    end
end

return _M
