-- Test driver for the suites: MCP clients of the HTTP+SSE transport and of
-- the Streamable HTTP transport over cosockets (talking to the nginx under
-- test through its own port), and checks on the processes the fixture
-- server records.
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

-- Sends a request; "Host: localhost" unless `headers` has a Host line.
local function send_request(sock, method, path, headers, body)
    local lines = { method .. " " .. path .. " HTTP/1.1" }
    local has_host = false
    for _, h in ipairs(headers or {}) do
        lines[#lines + 1] = h
        if h:lower():find("^host:") then has_host = true end
    end
    if not has_host then
        insert(lines, 2, "Host: localhost")
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
        -- A body delimited by the connection's end: the last piece may come
        -- with the close.
        if err == "closed" then self.done = true end
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

-- Next message event (decoded), skipping comments. With `within`
-- (seconds), gives up with nil, "no message in time" once a comment comes
-- after that long (keepalives otherwise keep a read from timing out).
function Stream:next_message(within)
    if #self.queue > 0 then
        return remove(self.queue, 1)
    end
    ngx.update_time()
    local deadline = within and now() + within
    while true do
        local ev, err = self:read_event()
        if not ev then
            return nil, err
        end
        ngx.update_time()
        if deadline and ev.event ~= "message" and now() > deadline then
            return nil, "no message in time"
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

-- Streamable HTTP -----------------------------------------------------------
-- One client of the Streamable HTTP endpoint ({base_uri} itself), for the
-- sessionful revisions and the stateless one alike: POST, GET and DELETE
-- with the MCP headers, each on its own connection. Every request returns
-- a reply:
--   { status =, headers = (lower-case names), sse = <an event stream?>,
--     body = <the raw body, when read whole>, json = <the decoded JSON
--     document, when the reply was one>, messages = <every JSON-RPC message
--     of the reply, decoded, whether it came as JSON or as events>,
--     ended = <why an event stream stopped: "eof" when the server ended it> }
-- With `stream = true` an event-stream reply comes back open instead: read
-- it with reply:next_message() (nil, "eof" at its end), end it with
-- reply:close(). GET returns its stream open unless told `stream = false`.
--
-- Options of every request (all optional): `session` (false: none; default
-- the client's), `version` (MCP-Protocol-Version; false: none; default the
-- client's), `accept`, `content_type` (false: none), `host`, `origin`,
-- `headers` (more header lines), `chunks` (send the body in these chunks),
-- `timeout_ms` (read timeout, default 5000), `abandon_after` (close the
-- connection this many seconds after sending, reading nothing: returns
-- nil, "abandoned"), `keep_open` (keep the connection of a reply read
-- whole: it is reply.connection) and `connection` (send on that one: the
-- same worker takes the request).

-- The stateless revision, and the _meta keys of its envelope.
_M.MODERN = "2026-07-28"
_M.VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
_M.CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
_M.LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
_M.SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
_M.SUBSCRIPTION_KEY = "io.modelcontextprotocol/subscriptionId"

local Client = {}
Client.__index = Client

-- A client of the endpoint at `base` ("/mcp"); `opts.host` and
-- `opts.origin` go on each of its requests.
function _M.client(base, opts)
    opts = opts or {}
    return setmetatable({ base = base, next_id = 0, host = opts.host, origin = opts.origin },
                        Client)
end

local function open_reply(sock, status, headers)
    local reply = setmetatable({ sock = sock, status = status, headers = headers,
                                 body = body_reader(sock, headers), queue = {},
                                 messages = {} }, Stream)
    reply.sse = (headers["content-type"] or ""):find("^text/event%-stream") ~= nil
    return reply
end

-- Reads the rest of a reply and closes its connection, unless `keep_open`.
local function finish(reply, keep_open)
    if reply.sse then
        while true do
            local msg, err = reply:next_message()
            if not msg then
                reply.ended = err
                break
            end
            reply.messages[#reply.messages + 1] = msg
        end
    else
        local text = tonumber(reply.headers["content-length"]) == 0 and "" or reply.body:all()
        reply.text = text
        if text and text ~= "" and (reply.headers["content-type"] or ""):find("json") then
            reply.json = cjson.decode(text)
            reply.messages[1] = reply.json
        end
    end
    if keep_open and not reply.sse then
        reply.connection = reply.sock
    else
        reply.sock:close()
    end
    -- `body` is the text of the reply from now on, not its reader.
    reply.body = reply.text
    return reply
end

function Client:request(method, body, opts)
    opts = opts or {}
    local sock = opts.connection
    if not sock then
        local err
        sock, err = connect(opts.timeout_ms)
        if not sock then
            return nil, err
        end
    end
    local h = { opts.keep_open and "Connection: keep-alive" or "Connection: close" }
    local host = opts.host or self.host
    if host then h[#h + 1] = "Host: " .. host end
    local origin = opts.origin or self.origin
    if origin then h[#h + 1] = "Origin: " .. origin end
    local accept = opts.accept
    if accept == nil then
        accept = (method == "POST" and "application/json, text/event-stream")
                 or (method == "GET" and "text/event-stream") or false
    end
    if accept then h[#h + 1] = "Accept: " .. accept end
    if method == "POST" and opts.content_type ~= false then
        h[#h + 1] = "Content-Type: " .. (opts.content_type or "application/json")
    end
    local session = opts.session
    if session == nil then session = self.session end
    if session then h[#h + 1] = "Mcp-Session-Id: " .. session end
    local version = opts.version
    if version == nil then version = self.version end
    if version then h[#h + 1] = "MCP-Protocol-Version: " .. version end
    for _, line in ipairs(opts.headers or {}) do
        h[#h + 1] = line
    end
    if opts.chunks then
        h[#h + 1] = "Transfer-Encoding: chunked"
        local parts = {}
        for _, c in ipairs(opts.chunks) do
            parts[#parts + 1] = string.format("%x", #c) .. "\r\n" .. c .. "\r\n"
        end
        parts[#parts + 1] = "0\r\n\r\n"
        send_request(sock, method, self.base, h, nil)
        sock:send(concat(parts))
    else
        send_request(sock, method, self.base, h, body)
    end
    if opts.abandon_after then
        -- A client that gives up: its connection closes unread.
        sleep(opts.abandon_after)
        sock:close()
        return nil, "abandoned"
    end
    local status, headers = read_head(sock)
    if not status then
        sock:close()
        return nil, headers
    end
    local reply = open_reply(sock, status, headers)
    local stream = opts.stream
    if stream == nil then stream = method == "GET" end
    if reply.sse and stream then
        return reply
    end
    return finish(reply, opts.keep_open)
end

function Client:post(message, opts)
    local body = type(message) == "string" and message or cjson.encode(message)
    return self:request("POST", body, opts)
end

function Client:get(opts)
    return self:request("GET", nil, opts)
end

function Client:delete(opts)
    return self:request("DELETE", nil, opts)
end

function Client:next_request_id()
    self.next_id = self.next_id + 1
    return self.next_id
end

-- The response to request `id` among a reply's messages.
function _M.response_of(reply, id)
    for _, m in ipairs(reply and reply.messages or {}) do
        if m.id == id and m.method == nil then
            return m
        end
    end
end

-- Starts a session: initialize (protocol `opts.protocol`, default
-- 2025-06-18), then notifications/initialized. Returns the initialize
-- reply and the notification's; the client keeps the session id and the
-- negotiated version for its later requests.
function Client:initialize(opts)
    opts = opts or {}
    local id = self:next_request_id()
    local reply, err = self:post({ jsonrpc = "2.0", id = id, method = "initialize", params = {
        protocolVersion = opts.protocol or "2025-06-18", capabilities = opts.capabilities or {},
        clientInfo = { name = "mcptest", version = "1" },
    } }, { session = false, version = false })
    if not reply then
        return nil, err
    end
    local response = _M.response_of(reply, id)
    if reply.status ~= 200 or not response or not response.result then
        return nil, "initialize answered " .. reply.status .. ": " .. tostring(reply.body)
    end
    self.session = reply.headers["mcp-session-id"]
    self.version = response.result.protocolVersion
    local initialized = self:post({ jsonrpc = "2.0", method = "notifications/initialized" })
    return reply, initialized
end

-- Sends request `method` and returns its response and the whole reply.
function Client:call(method, params, opts)
    local id = opts and opts.id or self:next_request_id()
    local reply, err = self:post({ jsonrpc = "2.0", id = id, method = method, params = params }, opts)
    if not reply then
        return nil, err
    end
    local response = _M.response_of(reply, id)
    if not response then
        return nil, "no response to " .. method .. " (status " .. reply.status .. "): "
                    .. tostring(reply.body or cjson.encode(reply.messages)), reply
    end
    return response, reply
end

-- Calls a tool: its text (or nil and why), its result and the reply.
function Client:tool(name, args, opts)
    local response, reply = self:call("tools/call", { name = name, arguments = args or {} }, opts)
    if not response then
        return nil, reply
    end
    if not response.result then
        return nil, cjson.encode(response), reply
    end
    return response.result.content[1].text, response.result, reply
end

-- "<status> <code> <message>" of a reply carrying a JSON-RPC error (with
-- " id <id>" when the error names a request), or what the reply was.
function _M.refusal(reply, err)
    if not reply then
        return "no reply: " .. tostring(err)
    end
    local e = reply.json and reply.json.error
    if type(e) ~= "table" then
        return reply.status .. " (not a JSON-RPC error: " .. tostring(reply.body) .. ")"
    end
    local id = reply.json.id
    return reply.status .. " " .. tostring(e.code) .. " " .. tostring(e.message)
           .. ((id ~= nil and id ~= cjson.null) and (" id " .. cjson.encode(id)) or "")
end

-- A stateless (2026-07-28) request: `params._meta` gets the envelope (the
-- version and `opts.capabilities`, default {}; plus `opts.meta`), and the
-- request the MCP-Protocol-Version, Mcp-Method and (for tools/call,
-- prompts/get and resources/read) Mcp-Name headers. `opts.envelope = false`
-- leaves the envelope out; `opts.mcp_method`/`opts.mcp_name` replace the
-- headers' values (false: no such header).
function Client:modern(method, params, opts)
    opts = opts or {}
    params = params or {}
    local id = opts.id or self:next_request_id()
    if opts.envelope ~= false then
        local meta = params._meta or {}
        meta[_M.VERSION_KEY] = opts.envelope_version or _M.MODERN
        meta[_M.CAPABILITIES_KEY] = opts.capabilities or {}
        for k, v in pairs(opts.meta or {}) do
            meta[k] = v
        end
        params._meta = meta
    end
    local headers = {}
    local mcp_method = opts.mcp_method
    if mcp_method == nil then mcp_method = method end
    if mcp_method then headers[#headers + 1] = "Mcp-Method: " .. mcp_method end
    local mcp_name = opts.mcp_name
    if mcp_name == nil then mcp_name = params.name or params.uri end
    if mcp_name then headers[#headers + 1] = "Mcp-Name: " .. mcp_name end
    local version = opts.version
    if version == nil then version = _M.MODERN end
    local reply, err = self:post({ jsonrpc = "2.0", id = id, method = method, params = params }, {
        session = false, version = version, headers = headers, stream = opts.stream,
        timeout_ms = opts.timeout_ms, abandon_after = opts.abandon_after,
    })
    if not reply then
        return nil, err
    end
    return _M.response_of(reply, id), reply
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
-- Runs a shell command; returns whether it exited with status 0. (What
-- os.execute returns differs: OpenResty's LuaJIT has Lua 5.2's
-- true/"exit"/0, Debian's the exit status.)
function _M.run(command)
    local r = os.execute(command)
    return r == 0 or r == true
end

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

-- Request ids the fixture process `pid` recorded receiving a
-- notifications/cancelled for, as JSON texts in the order they came.
function _M.cancelled(dir, pid)
    local ids = {}
    local f = io_open(dir .. "/" .. pid .. ".cancelled")
    if not f then
        return ids
    end
    for line in f:lines() do
        ids[#ids + 1] = line
    end
    f:close()
    return ids
end

-- Waits until `workers` distinct workers answering GET `path` on
-- `listen_port`
-- (a location that prints "<slots> <host sessions> <pooled backends>" of
-- the worker that takes it, with an X-Worker header) each said 0 0 0.
-- Returns true, or false and what they said last.
function _M.wait_idle_everywhere(listen_port, path, workers, seconds)
    local said = {}
    local function idle()
        local sock = ngx.socket.tcp()
        sock:settimeouts(1000, 1000, 1000)
        if not sock:connect("127.0.0.1", listen_port) then
            return false
        end
        send_request(sock, "GET", path, { "Connection: close" })
        local status, headers = read_head(sock)
        local body = status and body_reader(sock, headers):all()
        sock:close()
        if status == 200 and headers["x-worker"] then
            said[headers["x-worker"]] = body
        end
        local n = 0
        for _, b in pairs(said) do
            if not b:find("^0 0 0") then
                return false
            end
            n = n + 1
        end
        return n >= workers
    end
    if wait_until(idle, seconds) then
        return true
    end
    local parts = {}
    for w, b in pairs(said) do
        parts[#parts + 1] = "worker " .. w .. ": " .. b
    end
    return false, concat(parts, "; ")
end

-- Waits until this worker's host has no pooled backend (stateless
-- requests' backends) left.
function _M.wait_pool_empty(seconds)
    if wait_until(function() return ((_M.host_stats() or {}).pooled or -1) == 0 end, seconds) then
        return true
    end
    return false, "pooled " .. tostring((_M.host_stats() or {}).pooled)
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
