# The Streamable HTTP transport at {base_uri} itself, one worker: sessions
# of 2025-03-26..2025-11-25 (their whole life, every refusal with its status
# and JSON-RPC error, replies as JSON or as event streams, the standalone
# GET stream, the idle and absolute lifetimes, backends that die), and
# stateless 2026-07-28 requests on the warm pool (server/discover, completed
# results, the validation order, log levels, saturation, cancellation,
# subscriptions/listen, idle pooled backends). After each block: no recorded
# process left, slots 0, host sessions 0.
use t::MCPBridge 'no_plan';

my $fixture = $ENV{TEST_NGINX_FIXTURE};
my $pids = $ENV{TEST_NGINX_PID_DIR};

add_block_preprocessor(sub {
    my $block = shift;
    if (!defined $block->routes) {
        $block->set_value("routes", <<_EOC_);
mcp = { base_uri = "/mcp", command = "$fixture", args = { "--pid-dir", "$pids" },
        keepalive_interval_ms = 1000, kill_grace_ms = 500, pool_idle_timeout_ms = 1000 },
conf = { base_uri = "/conf", command = "$fixture", args = { "--conformance", "--pid-dir", "$pids" },
         keepalive_interval_ms = 1000, kill_grace_ms = 500, pool_idle_timeout_ms = 1000 },
small = { base_uri = "/small", command = "$fixture", args = { "--pid-dir", "$pids" },
          max_message_bytes = 1024, kill_grace_ms = 500 },
one = { base_uri = "/one", command = "$fixture", args = { "--pid-dir", "$pids" },
        max_sessions = 1, kill_grace_ms = 500 },
missing = { base_uri = "/missing", command = "no-such-mcp-server-xyz" },
brief = { base_uri = "/brief", command = "$fixture",
          args = { "--pid-dir", "$pids", "--stderr-banner", "fatal: no config", "--exit-at-start", "3" } },
guarded = { base_uri = "/guarded", command = "$fixture", args = { "--pid-dir", "$pids" },
            allowed_hosts = { "localhost" }, allowed_origins = { "https://app.example" },
            kill_grace_ms = 500 },
idle = { base_uri = "/idle", command = "$fixture", args = { "--pid-dir", "$pids" },
         session_idle_timeout_ms = 1000, keepalive_interval_ms = 200, kill_grace_ms = 300 },
life = { base_uri = "/life", command = "$fixture", args = { "--pid-dir", "$pids" },
         session_max_lifetime_ms = 1500, kill_grace_ms = 300 },
slowstart = { base_uri = "/slowstart", command = "sh",
              args = { "-c", "sleep 0.5; exec $fixture --pid-dir $pids" }, kill_grace_ms = 300 },
narrow = { base_uri = "/narrow", command = "$fixture", args = { "--pid-dir", "$pids" },
           pool_max_per_key = 1, pool_wait_ms = 200, pool_idle_timeout_ms = 1000,
           kill_grace_ms = 300 },
_EOC_
    }
    if (!defined $block->no_error_log && !defined $block->error_log) {
        $block->set_value("no_error_log", "[error]\n[crit]\n[alert]\nunknown process\n");
    }
    $block->set_value("timeout", 15) unless defined $block->timeout;
});

run_tests();

__DATA__

=== TEST 1: a session's whole life: initialize, initialized, tools/list, tools/call, DELETE; then its id is unknown everywhere and nothing is left
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        local init, initialized = assert(c:initialize({ protocol = "2025-06-18" }))
        local res = init.json.result
        ngx.say("initialize: ", init.status, " ", init.headers["content-type"], " id ", init.json.id,
                " protocol ", res.protocolVersion, " server ", res.serverInfo.name)
        local id = c.session
        ngx.say("session id: visible ASCII ", id:find("^[\33-\126]+$") ~= nil)
        ngx.say("initialized: ", initialized.status, " body \"", initialized.body, "\"")
        local list, reply = assert(c:call("tools/list", {}, { id = 2 }))
        ngx.say("tools/list: ", reply.status, " ", reply.headers["content-type"], " id ", list.id,
                " tools listed ", #list.result.tools > 3)
        local text, _, called = c:tool("echo", { text = "héllo" }, { id = "call-7" })
        ngx.say("tools/call: ", called.status, " ", called.headers["content-type"], " id ",
                called.json.id, " ", text)
        local pid = t.backend_pid("$TEST_NGINX_PID_DIR")
        ngx.say("while open: slots ", t.slots("mcp"), ", host sessions ", t.host_stats().sessions,
                ", backend running ", t.process_state(pid) == "running")
        local deleted = c:delete()
        ngx.say("DELETE: ", deleted.status)
        ngx.say("backend gone: ", t.wait_gone(pid, 3))
        ngx.say("POST after: ", t.refusal(c:post({ jsonrpc = "2.0", id = 9, method = "ping" })))
        ngx.say("notification after: ", t.refusal(c:post({ jsonrpc = "2.0", method = "notifications/x" })))
        ngx.say("GET after: ", t.refusal(c:get()))
        ngx.say("DELETE after: ", t.refusal(c:delete()))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
initialize: 200 application/json id 1 protocol 2025-06-18 server mcp-fixture
session id: visible ASCII true
initialized: 202 body ""
tools/list: 200 application/json id 2 tools listed true
tools/call: 200 application/json id call-7 héllo
while open: slots 1, host sessions 1, backend running true
DELETE: 200
backend gone: true
POST after: 404 -32001 Session not found id 9
notification after: 404 -32001 Session not found
GET after: 404 -32001 Session not found
DELETE after: 404 -32001 Session not found
processes left: none
idle: true



=== TEST 2: refused before a message: 405 with Allow, 415, 406, each with a JSON-RPC error; nothing is started
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        local initialize = '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
                           .. '"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}'
        local function show(label, reply)
            ngx.say(label, ": ", t.refusal(reply), " (", reply.headers["content-type"], ")")
            return reply
        end
        local put = show("PUT", c:request("PUT", initialize))
        ngx.say("  Allow: ", put.headers["allow"])
        show("PATCH", c:request("PATCH", initialize))
        show("POST text/plain", c:post(initialize, { content_type = "text/plain" }))
        show("POST without Content-Type", c:post(initialize, { content_type = false }))
        show("POST Accept json only", c:post(initialize, { accept = "application/json" }))
        show("POST Accept event-stream only", c:post(initialize, { accept = "text/event-stream" }))
        show("POST without Accept", c:post(initialize, { accept = false }))
        show("GET Accept json", c:get({ accept = "application/json", session = string.rep("a", 48) }))
        ngx.say("nothing started: ", next(t.records("$TEST_NGINX_PID_DIR")) == nil,
                ", slots ", t.slots("mcp"))
        -- A media type with parameters is still JSON.
        local ok = c:post(initialize, { content_type = "application/json; charset=utf-8",
                                        accept = "text/event-stream, application/json;q=0.9" })
        ngx.say("charset and q parameters: ", ok.status)
        c.session = ok.headers["mcp-session-id"]
        ngx.say("DELETE: ", c:delete().status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
PUT: 405 -32000 use POST, GET or DELETE on the MCP endpoint (application/json)
  Allow: GET, POST, DELETE
PATCH: 405 -32000 use POST, GET or DELETE on the MCP endpoint (application/json)
POST text/plain: 415 -32000 Content-Type must be application/json (application/json)
POST without Content-Type: 415 -32000 Content-Type must be application/json (application/json)
POST Accept json only: 406 -32000 Accept must list application/json and text/event-stream (application/json)
POST Accept event-stream only: 406 -32000 Accept must list application/json and text/event-stream (application/json)
POST without Accept: 406 -32000 Accept must list application/json and text/event-stream (application/json)
GET Accept json: 406 -32000 Accept must list text/event-stream (application/json)
nothing started: true, slots 0
charset and q parameters: 200
DELETE: 200
processes left: none
idle: true



=== TEST 3: 400 and 404 with their JSON-RPC errors: no session id, unknown and malformed ids, bad JSON, batches, a second initialize, an unsupported MCP-Protocol-Version; the session survives them all
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        assert(c:initialize())
        local id = c.session
        local ping = { jsonrpc = "2.0", id = 3, method = "ping" }
        local function show(label, reply, err)
            ngx.say(label, ": ", t.refusal(reply, err))
        end
        show("request without session", c:post(ping, { session = false }))
        show("notification without session",
             c:post({ jsonrpc = "2.0", method = "notifications/initialized" }, { session = false }))
        show("GET without session", c:get({ session = false }))
        show("DELETE without session", c:delete({ session = false }))
        show("unknown host's id", c:post(ping, { session = string.rep("0", 48) }))
        show("unknown id on this host", c:post(ping, { session = id:sub(1, 16) .. string.rep("0", 32) }))
        show("upper-case id", c:post(ping, { session = id:upper() }))
        show("id too long", c:post(ping, { session = id .. "00" }))
        show("id with a path", c:post(ping, { session = "../../etc/passwd" }))
        show("GET unknown id", c:get({ session = id:sub(1, 16) .. string.rep("0", 32) }))
        show("DELETE unknown id", c:delete({ session = id:sub(1, 16) .. string.rep("0", 32) }))
        show("not JSON", c:post("hello"))
        show("not JSON without session", c:post("hello", { session = false }))
        show("empty body", c:post(""))
        show("truncated", c:post('{"jsonrpc":"2.0","id":4,'))
        show("batch", c:post('[{"jsonrpc":"2.0","id":5,"method":"ping"}]'))
        show("second initialize", c:post({ jsonrpc = "2.0", id = 6, method = "initialize", params = {
            protocolVersion = "2025-06-18", capabilities = {}, clientInfo = { name = "x", version = "1" } } }))
        -- The spec: a request with an unsupported MCP-Protocol-Version gets 400, whatever its method.
        local function bad_version(label, reply)
            ngx.say(label, ": ", reply.status, " error ", type(reply.json) == "table"
                    and type(reply.json.error) == "table")
        end
        bad_version("unsupported version on POST", c:post(ping, { version = "1999-01-01" }))
        bad_version("unsupported version on GET", c:get({ version = "1999-01-01" }))
        ngx.say("the session still serves: ", (c:tool("echo", { text = "yes" })))
        bad_version("unsupported version on DELETE", c:delete({ version = "1999-01-01" }))
        ngx.say("the session still serves: ", (c:tool("echo", { text = "yes" })))
        ngx.say("DELETE: ", c:delete().status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
request without session: 400 -32000 Bad Request: Mcp-Session-Id header is required id 3
notification without session: 400 -32000 Bad Request: Mcp-Session-Id header is required
GET without session: 400 -32000 Bad Request: Mcp-Session-Id header is required
DELETE without session: 400 -32000 Bad Request: Mcp-Session-Id header is required
unknown host's id: 404 -32001 Session not found id 3
unknown id on this host: 404 -32001 Session not found id 3
upper-case id: 404 -32001 Session not found
id too long: 404 -32001 Session not found
id with a path: 404 -32001 Session not found
GET unknown id: 404 -32001 Session not found
DELETE unknown id: 404 -32001 Session not found
not JSON: 400 -32700 message is not valid JSON: expected value at line 1 column 1
not JSON without session: 400 -32700 message is not valid JSON: expected value at line 1 column 1
empty body: 400 -32700 request body is empty; expected a JSON-RPC message
truncated: 400 -32700 message is not valid JSON: EOF while parsing a value at line 1 column 24
batch: 400 -32600 batches are not supported on this endpoint: send one message per request
second initialize: 400 -32600 the session is already initialized id 6
unsupported version on POST: 400 error true
unsupported version on GET: 400 error true
the session still serves: yes
unsupported version on DELETE: 400 error true
the session still serves: yes
DELETE: 200
processes left: none
idle: true



=== TEST 4: a body over max_message_bytes gets 413, declared or chunked, with or without a session; one at the limit passes
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/small")
        -- A notification of exactly `n` bytes.
        local function sized(n)
            local head = '{"jsonrpc":"2.0","method":"notifications/pad","params":{"pad":"'
            return head .. string.rep("x", n - #head - 3) .. '"}}'
        end
        ngx.say("initialize over the limit: ", t.refusal(c:post(sized(1025), { session = false })))
        ngx.say("slots after it: ", t.slots("small"))
        assert(c:initialize())
        ngx.say(#sized(1024), " bytes: ", c:post(sized(1024)).status)
        ngx.say(#sized(1025), " bytes: ", t.refusal(c:post(sized(1025))))
        local over, at = sized(1025), sized(1024)
        ngx.say("chunked, over: ", t.refusal(c:post(nil, { chunks = { over:sub(1, 600), over:sub(601) } })))
        local reply, err = c:post(nil, { chunks = { at:sub(1, 10), at:sub(11) } })
        ngx.say("chunked, at the limit: ", reply and reply.status or "no reply: " .. tostring(err))
        local call = '{"jsonrpc":"2.0","id":"ch","method":"tools/call","params":{"name":"echo",'
                     .. '"arguments":{"text":"in pieces"}}}'
        reply, err = c:post(nil, { chunks = { call:sub(1, 20), call:sub(21, 50), call:sub(51) } })
        ngx.say("chunked request: ", reply and (reply.status .. " " .. tostring(t.response_of(reply, "ch")
                and t.response_of(reply, "ch").result.content[1].text)) or "no reply: " .. tostring(err))
        -- A chunked request whose reply is an event stream (a notification
        -- comes before the result): written on the raw connection too.
        local notify = '{"jsonrpc":"2.0","id":"nt","method":"tools/call","params":{"name":"notify",'
                       .. '"arguments":{"text":"first"}}}'
        reply, err = c:post(nil, { chunks = { notify:sub(1, 25), notify:sub(26) } })
        if reply then
            ngx.say("chunked request, streamed reply: ", reply.status, " ", reply.headers["content-type"],
                    ", ", #reply.messages, " messages, last id ", reply.messages[#reply.messages].id)
        else
            ngx.say("chunked request, streamed reply: no reply: ", err)
        end
        ngx.say("the session still serves: ", (c:tool("echo", { text = "yes" })))
        ngx.say("DELETE: ", c:delete().status)
        -- A chunked initialize: its reply carries the new session's id.
        local init = '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
                     .. '"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}'
        reply, err = c:post(nil, { chunks = { init:sub(1, 30), init:sub(31) }, session = false })
        ngx.say("chunked initialize: ", reply and reply.status or "no reply: " .. tostring(err))
        c.session = reply and reply.headers["mcp-session-id"]
        if c.session then
            ngx.say("DELETE: ", c:delete().status)
        end
        t.say_cleanup("$TEST_NGINX_PID_DIR", "small")
    }
}
--- response_body
initialize over the limit: 413 -32000 request body is larger than max_message_bytes (1024)
slots after it: 0
1024 bytes: 202
1025 bytes: 413 -32000 request body is larger than max_message_bytes (1024)
chunked, over: 413 -32000 request body is larger than max_message_bytes (1024)
chunked, at the limit: 202
chunked request: 200 in pieces
chunked request, streamed reply: 200 text/event-stream, 2 messages, last id nt
the session still serves: yes
DELETE: 200
chunked initialize: 200
DELETE: 200
processes left: none
idle: true



=== TEST 5: over max_sessions an initialize gets 429 with Retry-After and starts nothing; a deleted session frees its slot
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local first = t.client("/one")
        assert(first:initialize())
        local second = t.client("/one")
        local reply = second:post({ jsonrpc = "2.0", id = 1, method = "initialize", params = {
            protocolVersion = "2025-06-18", capabilities = {}, clientInfo = { name = "x", version = "1" } } })
        ngx.say("refusal: ", t.refusal(reply), ", Retry-After ", reply.headers["retry-after"],
                ", session id ", tostring(reply.headers["mcp-session-id"]))
        local n = 0
        for _ in pairs(t.records("$TEST_NGINX_PID_DIR")) do n = n + 1 end
        ngx.say("backends started: ", n, ", slots ", t.slots("one"))
        ngx.say("the first still serves: ", (first:tool("echo", { text = "yes" })))
        -- A grandchild that ignores SIGTERM keeps the first session's
        -- processes until SIGKILL (kill_grace_ms) after its DELETE.
        first:tool("spawn_grandchild", { ignore_sigterm = true })
        ngx.say("DELETE first: ", first:delete().status)
        -- Free once the DELETE is answered, not only once its processes
        -- are gone and the host says so.
        ngx.say("slots right after: ", t.slots("one"))
        local function status_of(reply, err)
            return reply and reply.status or err
        end
        ngx.say("a new session: ", status_of(second:initialize()))
        ngx.say("DELETE it: ", second:delete().status)
        -- Then the host's word on the ended sessions changes nothing.
        ngx.sleep(0.8)
        local fresh = t.client("/one")
        ngx.say("and another: ", status_of(fresh:initialize()), ", slots ", t.slots("one"))
        ngx.say("DELETE it: ", fresh:delete().status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "one")
    }
}
--- response_body
refusal: 429 -32000 too many sessions: at most 1 per worker at a time (max_sessions) id 1, Retry-After 1, session id nil
backends started: 1, slots 1
the first still serves: yes
DELETE first: 200
slots right after: 0
a new session: 200
DELETE it: 200
and another: 200, slots 1
DELETE it: 200
processes left: none
idle: true



=== TEST 6: a command that cannot start: initialize gets 502 with a short reason (the details go to the log), no session, the slot freed
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/missing")
        for _ = 1, 3 do
            local reply = c:post({ jsonrpc = "2.0", id = 1, method = "initialize", params = {
                protocolVersion = "2025-06-18", capabilities = {}, clientInfo = { name = "x", version = "1" } } })
            ngx.say(t.refusal(reply), ", session id ", tostring(reply.headers["mcp-session-id"]))
        end
        ngx.say("slots ", t.slots("missing"))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "missing")
    }
}
--- response_body
502 -32000 the MCP server's command was not found (the gateway's error log says why) id 1, session id nil
502 -32000 the MCP server's command was not found (the gateway's error log says why) id 1, session id nil
502 -32000 the MCP server's command was not found (the gateway's error log says why) id 1, session id nil
slots 0
processes left: none
idle: true
--- error_log eval
qr/cannot start the MCP server: command "no-such-mcp-server-xyz" not found in PATH/
--- no_error_log
[error]
[crit]



=== TEST 7: a backend that exits at once: initialize gets 502, no session, the slot freed, nothing left, the log says why
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/brief")
        for _ = 1, 3 do
            local reply = c:post({ jsonrpc = "2.0", id = 1, method = "initialize", params = {
                protocolVersion = "2025-06-18", capabilities = {}, clientInfo = { name = "x", version = "1" } } })
            ngx.say(t.refusal(reply), ", session id ", tostring(reply.headers["mcp-session-id"]))
        end
        local n = 0
        for _ in pairs(t.records("$TEST_NGINX_PID_DIR")) do n = n + 1 end
        ngx.say("backends that ran: ", n)
        ngx.say("slots ", t.slots("brief"))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "brief")
        local s = t.client("/mcp")
        ngx.say("the worker still serves: ", (select(1, s:initialize())).status)
        s:delete()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
502 -32000 the MCP server ended before answering id 1, session id nil
502 -32000 the MCP server ended before answering id 1, session id nil
502 -32000 the MCP server ended before answering id 1, session id nil
backends that ran: 3
slots 0
processes left: none
idle: true
the worker still serves: 200
processes left: none
idle: true
--- error_log eval
qr/the MCP server did not answer initialize: .*exited with status 3.*fatal: no config/



=== TEST 8: a foreign Host (allowed_hosts) or Origin gets 403 on {base_uri}, /sse and /message alike; allowed ones pass, however many Hosts came before
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local port = tonumber(ngx.var.server_port)
        local init = '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
                     .. '"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}'
        local function all(label, route, extra)
            local c = t.client("/" .. route, extra)
            ngx.say(label, " on /", route, ": ", t.refusal(c:post(init)))
            local h = {}
            if extra.host then h[#h + 1] = "Host: " .. extra.host end
            if extra.origin then h[#h + 1] = "Origin: " .. extra.origin end
            local status, _, body = t.http("GET", "/" .. route .. "/sse", nil, h)
            ngx.print(label, " on /", route, "/sse: ", status, " ", body)
            status, _, body = t.http("POST", "/" .. route .. "/message?sessionId=" .. string.rep("0", 48),
                                     "{}", h)
            ngx.print(label, " on /", route, "/message: ", status, " ", body)
        end
        all("foreign Host", "guarded", { host = "evil.example" })
        all("foreign Host with a port", "guarded", { host = "evil.example:8080" })
        all("foreign Origin", "guarded", { origin = "http://evil.example" })
        all("Origin null", "guarded", { origin = "null" })
        all("foreign Origin", "mcp", { origin = "http://evil.example" })
        ngx.say("nothing started: ", next(t.records("$TEST_NGINX_PID_DIR")) == nil)
        -- Allowed: the listed host on any port, an origin on it, a listed origin, no Origin.
        for _, extra in ipairs({ { host = "localhost:" .. port },
                                 { origin = "http://localhost:" .. port },
                                 { origin = "https://app.example" }, {} }) do
            local c = t.client("/guarded", extra)
            local reply = c:post(init)
            c.session = reply.headers["mcp-session-id"]
            local label = (extra.host or extra.origin or "without Origin"):gsub(":" .. port .. "$", ":<port>")
            ngx.say("allowed ", label, ": ", reply.status,
                    ", DELETE ", c:delete().status)
        end
        -- More Hosts than the bridge keeps verdicts on: each still judged.
        local unknown = "/guarded/message?sessionId=" .. string.rep("0", 48)
        local refused = 0
        for i = 1, 100 do
            if t.http("POST", unknown, "{}", { "Host: h" .. i .. ".example" }) == 403 then
                refused = refused + 1
            end
        end
        ngx.say("100 foreign Hosts refused: ", refused, "; then evil.example: ",
                (t.http("POST", unknown, "{}", { "Host: evil.example" })), ", LocalHost:<port>: ",
                (t.http("POST", unknown, "{}", { "Host: LocalHost:" .. port })))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "guarded")
    }
}
--- response_body
foreign Host on /guarded: 403 -32000 Host "evil.example" is not allowed (allowed_hosts)
foreign Host on /guarded/sse: 403 {"error":"Host \"evil.example\" is not allowed (allowed_hosts)"}
foreign Host on /guarded/message: 403 {"error":"Host \"evil.example\" is not allowed (allowed_hosts)"}
foreign Host with a port on /guarded: 403 -32000 Host "evil.example:8080" is not allowed (allowed_hosts)
foreign Host with a port on /guarded/sse: 403 {"error":"Host \"evil.example:8080\" is not allowed (allowed_hosts)"}
foreign Host with a port on /guarded/message: 403 {"error":"Host \"evil.example:8080\" is not allowed (allowed_hosts)"}
foreign Origin on /guarded: 403 -32000 Origin "http://evil.example" is not allowed (allowed_origins)
foreign Origin on /guarded/sse: 403 {"error":"Origin \"http://evil.example\" is not allowed (allowed_origins)"}
foreign Origin on /guarded/message: 403 {"error":"Origin \"http://evil.example\" is not allowed (allowed_origins)"}
Origin null on /guarded: 403 -32000 Origin "null" is not allowed (allowed_origins)
Origin null on /guarded/sse: 403 {"error":"Origin \"null\" is not allowed (allowed_origins)"}
Origin null on /guarded/message: 403 {"error":"Origin \"null\" is not allowed (allowed_origins)"}
foreign Origin on /mcp: 403 -32000 Origin "http://evil.example" is not allowed (allowed_origins)
foreign Origin on /mcp/sse: 403 {"error":"Origin \"http://evil.example\" is not allowed (allowed_origins)"}
foreign Origin on /mcp/message: 403 {"error":"Origin \"http://evil.example\" is not allowed (allowed_origins)"}
nothing started: true
allowed localhost:<port>: 200, DELETE 200
allowed http://localhost:<port>: 200, DELETE 200
allowed https://app.example: 200, DELETE 200
allowed without Origin: 200, DELETE 200
100 foreign Hosts refused: 100; then evil.example: 403, LocalHost:<port>: 404
processes left: none
idle: true



=== TEST 9: two concurrent requests with the same client id each get their own response
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        assert(c:initialize())
        local function call(ms)
            local text, _, reply = c:tool("sleep", { ms = ms }, { id = 1 })
            ngx.update_time()
            return reply.status .. " id " .. reply.json.id .. " " .. text, ngx.now()
        end
        local slow = ngx.thread.spawn(call, 600)
        ngx.sleep(0.05)
        local quick = ngx.thread.spawn(call, 100)
        local _, quick_text, quick_at = ngx.thread.wait(quick)
        local _, slow_text, slow_at = ngx.thread.wait(slow)
        ngx.say("quick: ", quick_text)
        ngx.say("slow: ", slow_text)
        ngx.say("quick answered first: ", quick_at < slow_at)
        -- The same id once more, after both were answered.
        local text = c:tool("echo", { text = "again" }, { id = 1 })
        ngx.say("id 1 again: ", text)
        ngx.say("DELETE: ", c:delete().status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
quick: 200 id 1 slept 100
slow: 200 id 1 slept 600
quick answered first: true
id 1 again: again
DELETE: 200
processes left: none
idle: true



=== TEST 10: a reply as an event stream: progress with the client's token, then the result, then the stream ends
--- config
location = /t {
    content_by_lua_block {
        local cjson = require("cjson.safe")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/conf")
        assert(c:initialize({ protocol = "2025-11-25" }))
        ngx.say("protocol ", c.version)
        for _, token in ipairs({ "tok-1", 7 }) do
            local response, reply = c:call("tools/call", { name = "test_tool_with_progress",
                                                            arguments = {}, _meta = { progressToken = token } },
                                           { id = "p-" .. token })
            ngx.say("status ", reply.status, " ", reply.headers["content-type"], ", ", #reply.messages,
                    " events, then ", reply.ended)
            for i = 1, #reply.messages - 1 do
                local m = reply.messages[i]
                ngx.say("  ", m.method, " token ", cjson.encode(m.params.progressToken), " ",
                        m.params.progress, "/", m.params.total)
            end
            ngx.say("  last: id ", reply.messages[#reply.messages].id, " ", response.result.content[1].text)
        end
        local _, plain = c:call("tools/call", { name = "test_tool_with_progress", arguments = {} })
        ngx.say("without a token: ", plain.status, " ", plain.headers["content-type"], " ",
                #plain.messages, " message")
        -- Log messages sent during the only request in flight go on its stream too.
        local _, logged = c:call("tools/call", { name = "test_tool_with_logging", arguments = {} })
        local methods = {}
        for _, m in ipairs(logged.messages) do methods[#methods + 1] = m.method or ("result " .. m.id) end
        ngx.say("logging: ", logged.headers["content-type"], ": ", table.concat(methods, ", "))
        ngx.say("DELETE: ", c:delete().status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "conf")
    }
}
--- response_body
protocol 2025-11-25
status 200 text/event-stream, 4 events, then eof
  notifications/progress token "tok-1" 0/100
  notifications/progress token "tok-1" 50/100
  notifications/progress token "tok-1" 100/100
  last: id p-tok-1 Reported progress for token "tok-1".
status 200 text/event-stream, 4 events, then eof
  notifications/progress token 7 0/100
  notifications/progress token 7 50/100
  notifications/progress token 7 100/100
  last: id p-7 Reported progress for token 7.
without a token: 200 application/json 1 message
logging: text/event-stream: notifications/message, notifications/message, notifications/message, result 3
DELETE: 200
processes left: none
idle: true



=== TEST 11: the standalone GET stream gets what the server sends while no request is in flight; a second GET replaces the first; DELETE ends it
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/conf")
        assert(c:initialize())
        ngx.update_time()
        local start = ngx.now()
        local first = c:get()
        ngx.update_time()
        -- Its headers come at once, not with the first keepalive (keepalive_interval_ms 1000).
        ngx.say("GET: ", first.status, " ", first.headers["content-type"], ", answered at once ",
                ngx.now() - start < 0.5)
        local _, reply = c:call("tools/call", { name = "test_trigger_tool_change", arguments = { delay_ms = 300 } })
        ngx.say("trigger answered: ", reply.status, " ", reply.headers["content-type"], " ", #reply.messages,
                " message")
        local m, err = first:next_message()
        ngx.say("first GET got: ", m and m.method or err)
        local second = c:get()
        ngx.say("second GET: ", second.status)
        local _, ended = first:next_message()
        ngx.say("first GET then: ", ended)
        first:close()
        c:call("tools/call", { name = "test_trigger_prompt_change", arguments = { delay_ms = 200 } })
        m, err = second:next_message()
        ngx.say("second GET got: ", m and m.method or err)
        ngx.say("DELETE: ", c:delete().status)
        _, ended = second:next_message()
        ngx.say("second GET then: ", ended)
        second:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "conf")
    }
}
--- response_body
GET: 200 text/event-stream, answered at once true
trigger answered: 200 application/json 1 message
first GET got: notifications/tools/list_changed
second GET: 200
first GET then: eof
second GET got: notifications/prompts/list_changed
DELETE: 200
second GET then: eof
processes left: none
idle: true



=== TEST 12: a client that vanishes with a GET open: the session still ends after session_idle_timeout_ms, its backend goes, its id is unknown
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/idle")
        assert(c:initialize())
        ngx.update_time()
        local start = ngx.now()
        local pid = t.backend_pid("$TEST_NGINX_PID_DIR")
        -- Held open, never read: keepalive comments pile up in its buffers.
        local held = c:get()
        local gone = t.wait_gone(pid, 5)
        ngx.update_time()
        local took = ngx.now() - start
        ngx.say("backend gone: ", gone, ", after the idle timeout: ", took > 0.9, ", within 1 s of it: ",
                took < 2)
        local comments, ended = 0
        while true do
            local ev, err = held:read_event()
            if not ev then ended = err break end
            if ev.comment then comments = comments + 1 end
        end
        ngx.say("the GET had keepalives: ", comments > 0, ", then ", ended)
        held:close()
        ngx.say("POST: ", t.refusal(c:post({ jsonrpc = "2.0", id = 2, method = "ping" })))
        ngx.say("GET: ", t.refusal(c:get()))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "idle")
    }
}
--- response_body
backend gone: true, after the idle timeout: true, within 1 s of it: true
the GET had keepalives: true, then eof
POST: 404 -32001 Session not found id 2
GET: 404 -32001 Session not found
processes left: none
idle: true
--- error_log eval
qr/session \d+: ended: the session was idle too long/



=== TEST 13: a busy session still ends at session_max_lifetime_ms
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/life")
        ngx.update_time()
        local start = ngx.now()
        assert(c:initialize())
        local pid = t.backend_pid("$TEST_NGINX_PID_DIR")
        local served, refusal = 0
        while ngx.now() - start < 5 do
            local reply = c:post({ jsonrpc = "2.0", id = served + 1, method = "tools/call",
                                   params = { name = "echo", arguments = { text = "x" } } })
            if reply.status ~= 200 then refusal = reply break end
            served = served + 1
            ngx.sleep(0.1)
            ngx.update_time()
        end
        local took = ngx.now() - start
        ngx.say("served while it lived: ", served > 5)
        ngx.say("then: ", (t.refusal(refusal):gsub(" id %d+$", "")))
        ngx.say("at its lifetime: ", took > 1.4, ", within 1 s of it: ", took < 2.5)
        ngx.say("backend gone: ", t.wait_gone(pid, 3))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "life")
    }
}
--- response_body
served while it lived: true
then: 404 -32001 Session not found
at its lifetime: true, within 1 s of it: true
backend gone: true
processes left: none
idle: true
--- error_log eval
qr/session \d+: ended: the session reached its lifetime/



=== TEST 14: a backend that dies mid-request: the pending request gets a JSON-RPC error with its id, the session ends, nothing is left
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        -- Killed from outside while a slow call waits.
        local c = t.client("/mcp")
        assert(c:initialize())
        local pid = tonumber(c:tool("pid"):match('"pid":(%d+)'))
        local slow = ngx.thread.spawn(function()
            local _, reply = c:call("tools/call", { name = "sleep", arguments = { ms = 5000 } }, { id = "slow" })
            return reply
        end)
        ngx.sleep(0.2)
        t.kill(pid, 9)
        local _, reply = ngx.thread.wait(slow)
        ngx.say("pending call: ", reply.status, " ", reply.headers["content-type"], " id ", reply.json.id,
                " ", reply.json.error.code, " ",
                (reply.json.error.message:match("^the MCP server ended before responding")))
        ngx.say("backend gone: ", t.wait_gone(pid, 3))
        ngx.say("then: ", t.refusal(c:post({ jsonrpc = "2.0", id = 2, method = "ping" })))
        -- A backend that kills itself while answering.
        c = t.client("/mcp")
        assert(c:initialize())
        local response, died = c:call("tools/call", { name = "kill_self", arguments = {} }, { id = 33 })
        ngx.say("the call that killed it: ", died.status, " id ", response.id, " ", response.error.code, " ",
                (response.error.message:match("^the MCP server ended before responding")))
        ngx.say("then: ", t.refusal(c:get()))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
pending call: 200 application/json id slow -32000 the MCP server ended before responding
backend gone: true
then: 404 -32001 Session not found id 2
the call that killed it: 200 id 33 -32000 the MCP server ended before responding
then: 404 -32001 Session not found
processes left: none
idle: true



=== TEST 15: stateless: server/discover is answered by the bridge; results of tools/list and tools/call are completed for 2026-07-28
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        local d, reply = c:modern("server/discover", {}, { id = "d-1" })
        local r = d.result
        ngx.say("discover: ", reply.status, " ", reply.headers["content-type"], " id ", d.id,
                ", session id ", tostring(reply.headers["mcp-session-id"]))
        ngx.say("  resultType ", r.resultType, ", first version ", r.supportedVersions[1])
        local versions = {}
        for _, v in ipairs(r.supportedVersions) do versions[v] = true end
        ngx.say("  supports 2026-07-28 ", versions["2026-07-28"] == true, ", 2025-11-25 ",
                versions["2025-11-25"] == true)
        ngx.say("  capabilities: tools ", type(r.capabilities.tools), ", logging ", type(r.capabilities.logging))
        ngx.say("  serverInfo ", r._meta[t.SERVER_INFO_KEY].name)
        local list = c:modern("tools/list", {})
        r = list.result
        ngx.say("tools/list: ", #r.tools > 3, " tools, resultType ", r.resultType, ", ttlMs ", type(r.ttlMs),
                ", cacheScope ", type(r.cacheScope), ", serverInfo ", r._meta[t.SERVER_INFO_KEY].name)
        local call
        call, reply = c:modern("tools/call", { name = "echo", arguments = { text = "stateless" } }, { id = 41 })
        r = call.result
        ngx.say("tools/call: ", reply.status, " id ", call.id, " ", r.content[1].text, ", resultType ",
                r.resultType, ", serverInfo ", r._meta[t.SERVER_INFO_KEY].name)
        local failed = c:modern("tools/call", { name = "no_such_tool", arguments = {} })
        ngx.say("a failing tool: isError ", tostring(failed.result.isError), ", resultType ",
                failed.result.resultType)
        ngx.say("no session was made: host sessions ", t.host_stats().sessions, ", slots ", t.slots("mcp"))
        ngx.say("pooled backends gone: ", (t.wait_pool_empty(5)))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
discover: 200 application/json id d-1, session id nil
  resultType complete, first version 2026-07-28
  supports 2026-07-28 true, 2025-11-25 true
  capabilities: tools table, logging nil
  serverInfo mcp-fixture
tools/list: true tools, resultType complete, ttlMs number, cacheScope string, serverInfo mcp-fixture
tools/call: 200 id 41 stateless, resultType complete, serverInfo mcp-fixture
a failing tool: isError true, resultType complete
no session was made: host sessions 0, slots 0
pooled backends gone: true
processes left: none
idle: true



=== TEST 16: stateless: every malformed request gets its status and code, checked in the revision's order (envelope, version header, version, method headers, method)
--- config
location = /t {
    content_by_lua_block {
        local cjson = require("cjson.safe")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        local function show(label, _, reply)
            ngx.say(label, ": ", (t.refusal(reply):gsub(" id %d+$", "")))
            return reply
        end
        local echo = function() return { name = "echo", arguments = { text = "x" } } end
        show("no _meta", c:modern("tools/list", {}, { envelope = false }))
        show("no clientCapabilities", nil, c:post({ jsonrpc = "2.0", id = 1, method = "tools/list",
            params = { _meta = { [t.VERSION_KEY] = t.MODERN } } },
            { version = t.MODERN, headers = { "Mcp-Method: tools/list" } }))
        show("no version in _meta", nil, c:post({ jsonrpc = "2.0", id = 1, method = "tools/list",
            params = { _meta = { [t.CAPABILITIES_KEY] = {} } } },
            { version = t.MODERN, headers = { "Mcp-Method: tools/list" } }))
        show("no version header", c:modern("tools/list", {}, { version = false }))
        show("version header differs", c:modern("tools/list", {}, { version = "2025-11-25" }))
        local _, unsupported = c:modern("tools/list", {}, { version = "2099-01-01", envelope_version = "2099-01-01" })
        show("unsupported version", nil, unsupported)
        local data = unsupported.json.error.data
        ngx.say("  data: requested ", data.requested, ", supported lists 2026-07-28 ",
                table.concat(data.supported, " "):find("2026-07-28", 1, true) ~= nil)
        show("no Mcp-Method", c:modern("tools/list", {}, { mcp_method = false }))
        show("Mcp-Method differs", c:modern("tools/list", {}, { mcp_method = "tools/call" }))
        show("no Mcp-Name", c:modern("tools/call", echo(), { mcp_name = false }))
        show("Mcp-Name differs", c:modern("tools/call", echo(), { mcp_name = "add" }))
        show("removed: logging/setLevel", c:modern("logging/setLevel", { level = "info" }))
        show("removed: resources/subscribe", c:modern("resources/subscribe", { uri = "test://x" },
                                                       { mcp_name = false }))
        show("removed: initialize", c:modern("initialize", { protocolVersion = t.MODERN }))
        show("unknown method", c:modern("no/such/method", {}))
        -- Two faults at once: the one checked first wins.
        show("no _meta and a wrong Mcp-Method", c:modern("tools/list", {}, { envelope = false, mcp_method = "x" }))
        show("version header differs from an unsupported version",
             c:modern("tools/list", {}, { version = "2026-07-28", envelope_version = "2099-01-01" }))
        show("unsupported version and no Mcp-Method",
             c:modern("tools/list", {}, { version = "2099-01-01", envelope_version = "2099-01-01", mcp_method = false }))
        show("a wrong Mcp-Method and an unknown method", c:modern("no/such/method", {}, { mcp_method = "tools/list" }))
        local _, refused = c:modern("tools/list", {}, { id = "r-9", version = false })
        ngx.say("refusals carry the request's id: ", cjson.encode(refused.json.id))
        ngx.say("nothing started for them: ", next(t.records("$TEST_NGINX_PID_DIR")) == nil)
        -- Header values may come base64-encoded, or with surrounding whitespace.
        local response, reply = c:modern("tools/call", echo(), { mcp_name = "=?base64?ZWNobw==?=" })
        ngx.say("base64 Mcp-Name: ", reply.status, " ", response.result.content[1].text)
        ngx.say("pooled backends gone: ", (t.wait_pool_empty(5)))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
no _meta: 400 -32602 the request has no params._meta
no clientCapabilities: 400 -32602 the request has no params._meta["io.modelcontextprotocol/clientCapabilities"]
no version in _meta: 400 -32602 the request has no params._meta["io.modelcontextprotocol/protocolVersion"]
no version header: 400 -32020 the MCP-Protocol-Version header is missing
version header differs: 400 -32020 the MCP-Protocol-Version header (2025-11-25) differs from params._meta (2026-07-28)
unsupported version: 400 -32022 unsupported protocol version "2099-01-01"
  data: requested 2099-01-01, supported lists 2026-07-28 true
no Mcp-Method: 400 -32020 the Mcp-Method header is missing
Mcp-Method differs: 400 -32020 the Mcp-Method header (tools/call) differs from the method (tools/list)
no Mcp-Name: 400 -32020 the Mcp-Name header is missing
Mcp-Name differs: 400 -32020 the Mcp-Name header (add) differs from the request (echo)
removed: logging/setLevel: 404 -32601 method "logging/setLevel" is not served in 2026-07-28
removed: resources/subscribe: 404 -32601 method "resources/subscribe" is not served in 2026-07-28
removed: initialize: 404 -32601 method "initialize" is not served in 2026-07-28
unknown method: 404 -32601 method "no/such/method" is not served in 2026-07-28
no _meta and a wrong Mcp-Method: 400 -32602 the request has no params._meta
version header differs from an unsupported version: 400 -32020 the MCP-Protocol-Version header (2026-07-28) differs from params._meta (2099-01-01)
unsupported version and no Mcp-Method: 400 -32022 unsupported protocol version "2099-01-01"
a wrong Mcp-Method and an unknown method: 400 -32020 the Mcp-Method header (tools/list) differs from the method (no/such/method)
refusals carry the request's id: "r-9"
nothing started for them: true
base64 Mcp-Name: 200 x
pooled backends gone: true
processes left: none
idle: true



=== TEST 17: stateless: log messages reach only a client that asked for them, at its level
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/conf")
        for _, level in ipairs({ false, "info", "error" }) do
            local response, reply = c:modern("tools/call", { name = "test_tool_with_logging", arguments = {} },
                                             { meta = level and { [t.LOG_LEVEL_KEY] = level } or nil })
            local logs = {}
            for _, m in ipairs(reply.messages) do
                if m.method == "notifications/message" then logs[#logs + 1] = m.params.data end
            end
            ngx.say(level or "no logLevel", ": ", reply.status, " ", reply.headers["content-type"], ", ",
                    #logs, " log message(s)", #logs > 0 and " (" .. table.concat(logs, "; ") .. ")" or "",
                    ", then ", response.result.content[1].text)
        end
        ngx.say("pooled backends gone: ", (t.wait_pool_empty(5)))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "conf")
    }
}
--- response_body
no logLevel: 200 application/json, 0 log message(s), then Sent three log messages.
info: 200 text/event-stream, 3 log message(s) (logging tool: started; logging tool: working; logging tool: done), then Sent three log messages.
error: 200 application/json, 0 log message(s), then Sent three log messages.
pooled backends gone: true
processes left: none
idle: true



=== TEST 18: stateless: with every pooled backend busy a request waits pool_wait_ms, then gets 503 with Retry-After; the pool serves again once free
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/narrow")
        local pid = c:modern("tools/call", { name = "pid", arguments = {} }).result.content[1].text:match('"pid":(%d+)')
        local slow = ngx.thread.spawn(function()
            local response = c:modern("tools/call", { name = "sleep", arguments = { ms = 1200 } })
            return response.result.content[1].text
        end)
        ngx.sleep(0.2)
        ngx.update_time()
        local start = ngx.now()
        local _, busy = c:modern("tools/call", { name = "echo", arguments = { text = "x" } }, { id = 12 })
        ngx.update_time()
        local waited = ngx.now() - start
        ngx.say("while busy: ", t.refusal(busy), ", Retry-After ", busy.headers["retry-after"])
        ngx.say("waited pool_wait_ms: ", waited > 0.15 and waited < 1)
        local _, text = ngx.thread.wait(slow)
        ngx.say("the slow call: ", text)
        local again = c:modern("tools/call", { name = "pid", arguments = {} }).result.content[1].text
        ngx.say("then served by the same backend: ", again:match('"pid":(%d+)') == pid)
        ngx.say("pooled backends gone: ", (t.wait_pool_empty(5)))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "narrow")
    }
}
--- response_body
while busy: 503 -32000 every backend is busy; try again later id 12, Retry-After 1
waited pool_wait_ms: true
the slow call: slept 1200
then served by the same backend: true
pooled backends gone: true
processes left: none
idle: true



=== TEST 19: stateless: a client that closes its stream mid-call cancels it (the backend gets notifications/cancelled) and the pooled backend serves the next request
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/narrow")
        local pid = tonumber(c:modern("tools/call", { name = "pid", arguments = {} })
                            .result.content[1].text:match('"pid":(%d+)'))
        ngx.say("cancelled before: ", #t.cancelled("$TEST_NGINX_PID_DIR", pid))
        -- Gives up after 300 ms: its connection closes with the call in flight.
        local _, err = c:modern("tools/call", { name = "sleep", arguments = { ms = 4000 } }, { abandon_after = 0.3 })
        ngx.say("the client gave up: ", err)
        local ids
        for _ = 1, 300 do
            ids = t.cancelled("$TEST_NGINX_PID_DIR", pid)
            if #ids > 0 then break end
            ngx.sleep(0.01)
        end
        ngx.say("the backend got notifications/cancelled: ", #ids, " (a number: ", ids[1] ~= nil
                and ids[1]:find("^%d+$") ~= nil, ")")
        ngx.update_time()
        local start = ngx.now()
        local response, reply = c:modern("tools/call", { name = "pid", arguments = {} })
        ngx.update_time()
        ngx.say("next request: ", reply.status, ", same backend ",
                tonumber(response.result.content[1].text:match('"pid":(%d+)')) == pid,
                ", at once ", ngx.now() - start < 1)
        ngx.say("pooled backends gone: ", (t.wait_pool_empty(5)))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "narrow")
    }
}
--- response_body
cancelled before: 0
the client gave up: abandoned
the backend got notifications/cancelled: 1 (a number: true)
next request: 200, same backend true, at once true
pooled backends gone: true
processes left: none
idle: true



=== TEST 20: stateless: subscriptions/listen is acknowledged first, then gets the list changes its filter asks for, tagged with its id
--- config
location = /t {
    content_by_lua_block {
        local cjson = require("cjson.safe")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/conf")
        local function listen(id, filter)
            local _, reply = c:modern("subscriptions/listen", { notifications = filter }, { id = id, stream = true })
            local ack = reply:next_message()
            ngx.say(id, ": ", reply.status, " ", reply.headers["content-type"], ", first ", ack.method,
                    " for ", cjson.encode(ack.params._meta[t.SUBSCRIPTION_KEY]), " honouring ",
                    cjson.encode(ack.params.notifications))
            return reply
        end
        local tools = listen("sub-tools", { toolsListChanged = true })
        local prompts = listen("sub-prompts", { promptsListChanged = true })
        local function trigger(name)
            local response = c:modern("tools/call", { name = name, arguments = {} })
            ngx.say(name, ": ", response.result.content[1].text)
        end
        trigger("test_trigger_tool_change")
        local m = tools:next_message()
        ngx.say("sub-tools got ", m.method, " tagged ", cjson.encode(m.params._meta[t.SUBSCRIPTION_KEY]))
        trigger("test_trigger_prompt_change")
        m = prompts:next_message()
        ngx.say("sub-prompts got ", m.method, " tagged ", cjson.encode(m.params._meta[t.SUBSCRIPTION_KEY]))
        -- And nothing else: the next thing on each is the next change of its kind.
        trigger("test_trigger_prompt_change")
        trigger("test_trigger_tool_change")
        m = tools:next_message()
        ngx.say("sub-tools next: ", m.method)
        m = prompts:next_message()
        ngx.say("sub-prompts next: ", m.method)
        tools:close()
        prompts:close()
        ngx.say("pooled backends gone: ", (t.wait_pool_empty(5)))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "conf")
    }
}
--- response_body
sub-tools: 200 text/event-stream, first notifications/subscriptions/acknowledged for "sub-tools" honouring {"toolsListChanged":true}
sub-prompts: 200 text/event-stream, first notifications/subscriptions/acknowledged for "sub-prompts" honouring {"promptsListChanged":true}
test_trigger_tool_change: tools list change announced
sub-tools got notifications/tools/list_changed tagged "sub-tools"
test_trigger_prompt_change: prompts list change announced
sub-prompts got notifications/prompts/list_changed tagged "sub-prompts"
test_trigger_prompt_change: prompts list change announced
test_trigger_tool_change: tools list change announced
sub-tools next: notifications/tools/list_changed
sub-prompts next: notifications/prompts/list_changed
pooled backends gone: true
processes left: none
idle: true



=== TEST 21: stateless: pooled backends end after pool_idle_timeout_ms, and nothing is left
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        -- Two calls at once: two backends.
        local function call()
            return c:modern("tools/call", { name = "sleep", arguments = { ms = 200 } }).result.content[1].text
        end
        local a, b = ngx.thread.spawn(call), ngx.thread.spawn(call)
        local _, ta = ngx.thread.wait(a)
        local _, tb = ngx.thread.wait(b)
        ngx.update_time()
        local start = ngx.now()
        local stats = t.host_stats()
        local pids = {}
        for pid in pairs(t.records("$TEST_NGINX_PID_DIR")) do pids[#pids + 1] = pid end
        ngx.say(ta, ", ", tb, "; pooled ", stats.pooled, ", backends running ", #pids, ", host sessions ",
                stats.sessions)
        local gone = t.wait_all_exited(pids, 5)
        ngx.update_time()
        local took = ngx.now() - start
        ngx.say("gone after the idle timeout: ", gone, " ", took > 0.8, " ", took < 2.5)
        ngx.say("pooled: ", (t.wait_pool_empty(1)) and 0 or t.host_stats().pooled)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
slept 200, slept 200; pooled 2, backends running 2, host sessions 0
gone after the idle timeout: true true true
pooled: 0
processes left: none
idle: true
--- error_log eval
qr/pooled backend \d+ of .* ended: it was idle too long/



=== TEST 22: the server asks the client mid-call on that call's stream; the client's answer, POSTed, reaches it; then the result ends the stream
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/conf")
        assert(c:initialize({ protocol = "2025-11-25", capabilities = { elicitation = {} } }))
        local call = c:post({ jsonrpc = "2.0", id = "e-1", method = "tools/call",
                              params = { name = "test_elicitation", arguments = { message = "Who?" } } },
                            { stream = true })
        ngx.say("call: ", call.status, " ", call.headers["content-type"])
        local ask = call:next_message()
        ngx.say("asked: ", ask.method, " \"", ask.params.message, "\", with an id ", ask.id ~= nil)
        local answer = c:post({ jsonrpc = "2.0", id = ask.id, result = { action = "accept",
                                content = { username = "ann", email = "ann@example.org" } } })
        ngx.say("answer: ", answer.status)
        local result = call:next_message()
        ngx.say("result: id ", result.id, " ", result.result.content[1].text:match("^User response: action=accept"))
        local _, ended = call:next_message()
        ngx.say("then: ", ended)
        call:close()
        ngx.say("DELETE: ", c:delete().status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "conf")
    }
}
--- response_body
call: 200 text/event-stream
asked: elicitation/create "Who?", with an id true
answer: 202
result: id e-1 User response: action=accept
then: eof
DELETE: 200
processes left: none
idle: true



=== TEST 23: a client's notifications/cancelled reaches its request in the backend, under the id the backend knows it by
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/conf")
        assert(c:initialize({ protocol = "2025-11-25", capabilities = { elicitation = {} } }))
        local pid = t.backend_pid("$TEST_NGINX_PID_DIR")
        local call = c:post({ jsonrpc = "2.0", id = "e-2", method = "tools/call",
                              params = { name = "test_elicitation", arguments = { message = "Who?" } } },
                            { stream = true })
        local ask = call:next_message()
        ngx.say("asked: ", ask.method)
        local cancel = c:post({ jsonrpc = "2.0", method = "notifications/cancelled",
                                params = { requestId = "e-2", reason = "changed my mind" } })
        ngx.say("cancel: ", cancel.status)
        -- A call cancelled in the backend withdraws its question.
        local withdrawn, err = call:next_message(2)
        ngx.say("the backend withdrew its question: ", withdrawn and withdrawn.method or err,
                withdrawn and (" for " .. tostring(withdrawn.params.requestId == ask.id)) or "")
        call:close()
        local ids = t.cancelled("$TEST_NGINX_PID_DIR", pid)
        ngx.say("the backend was told: ", #ids, " cancellation(s), of a request id it knows: ",
                ids[1] ~= nil and ids[1]:find("^%d+$") ~= nil)
        ngx.say("DELETE: ", c:delete().status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "conf")
    }
}
--- response_body
asked: elicitation/create
cancel: 202
the backend withdrew its question: notifications/cancelled for true
the backend was told: 1 cancellation(s), of a request id it knows: true
DELETE: 200
processes left: none
idle: true



=== TEST 24: a backend that exits while a grandchild of its own still holds its stdout: its requests get errors at once, its session ends, and the grandchild with it; stateless alike
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        assert(c:initialize())
        ngx.say("grandchild: ", c:tool("spawn_grandchild", { setsid = true }) ~= nil)
        ngx.update_time()
        local start = ngx.now()
        local response = c:call("tools/call", { name = "crash", arguments = { code = 4 } })
        ngx.update_time()
        ngx.say("session: ", response.error and response.error.message, ", within a second ",
                ngx.now() - start < 1)
        ngx.say("then: ", c:post({ jsonrpc = "2.0", id = 99, method = "ping" }).status)
        local m = t.client("/narrow")
        m:modern("tools/call", { name = "spawn_grandchild", arguments = { setsid = true } })
        ngx.update_time()
        start = ngx.now()
        response = m:modern("tools/call", { name = "crash", arguments = { code = 5 } })
        ngx.update_time()
        ngx.say("stateless: ", response.error and response.error.message, ", within a second ",
                ngx.now() - start < 1)
        local next_call = m:modern("tools/call", { name = "echo", arguments = { text = "fresh" } })
        ngx.say("the next stateless call: ", next_call.result.content[1].text)
        ngx.say("pooled backends gone: ", (t.wait_pool_empty(5)))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
grandchild: true
session: the MCP server ended before responding (backend exited with status 4), within a second true
then: 404
stateless: the MCP server ended before responding (backend exited with status 5), within a second true
the next stateless call: fresh
pooled backends gone: true
processes left: none
idle: true



=== TEST 25: stateless: what a backend still says about a call its client gave up on never reaches the next call it serves
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local m = t.client("/narrow")
        local logs = { [t.LOG_LEVEL_KEY] = "info" }
        local _, err = m:modern("tools/call", { name = "flood", arguments = { count = 3000, size = 2000 } },
                                { meta = logs, abandon_after = 0.05 })
        ngx.say("the first client gave up: ", err)
        local response, reply = m:modern("tools/call", { name = "flood", arguments = { count = 3 } },
                                         { meta = logs })
        local notes = 0
        for _, msg in ipairs(reply.messages) do
            if msg.method == "notifications/message" then notes = notes + 1 end
        end
        ngx.say("the next call: ", notes, " notifications, then ", response.result and "its result")
        ngx.say("pooled backends gone: ", (t.wait_pool_empty(5)))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "narrow")
    }
}
--- response_body
the first client gave up: abandoned
the next call: 3 notifications, then its result
pooled backends gone: true
processes left: none
idle: true



=== TEST 26: a client that leaves while its initialize waits for the backend: no slot held, no session made, nothing left
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/slowstart")
        for _ = 1, 3 do
            local _, err = c:post({ jsonrpc = "2.0", id = 1, method = "initialize", params = {
                protocolVersion = "2025-11-25", capabilities = {},
                clientInfo = { name = "x", version = "1" } } }, { session = false, abandon_after = 0.1 })
            ngx.say("gave up: ", err)
        end
        -- (The worker notices the last one leave a moment later.)
        ngx.say("slots back to 0: ", (t.wait_slots("slowstart", 0)))
        ngx.sleep(0.8)
        ngx.say("host sessions: ", t.host_stats().sessions)
        local ok = assert(c:initialize())
        ngx.say("a patient client: ", ok.status, ", slots ", t.slots("slowstart"))
        ngx.say("DELETE: ", c:delete().status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "slowstart")
    }
}
--- response_body
gave up: abandoned
gave up: abandoned
gave up: abandoned
slots back to 0: true
host sessions: 0
a patient client: 200, slots 1
DELETE: 200
processes left: none
idle: true



=== TEST 27: header values that are not UTF-8 get the answer any wrong value gets (a fuzz find: they got 503, and an [error] in the log)
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        local init = { jsonrpc = "2.0", id = 1, method = "initialize", params = {
            protocolVersion = "2025-11-25", capabilities = {}, clientInfo = { name = "x", version = "1" } } }
        ngx.say("initialize, version \\xff: ",
                t.refusal(c:post(init, { session = false, version = "\xff2025-11-25" })))
        local _, reply = c:modern("tools/list", {}, { mcp_method = "tools/\xc3" })
        ngx.say("stateless, Mcp-Method tools/\\xc3: ", t.refusal(reply))
        _, reply = c:modern("tools/list", {}, { version = "2026-07-28\xfe" })
        ngx.say("stateless, version 2026-07-28\\xfe: ", t.refusal(reply))
        assert(c:initialize())
        ngx.say("in a session, version \\x80: ", t.refusal(c:post({ jsonrpc = "2.0", id = 2, method = "ping" },
                                                                  { version = "\x80" })))
        ngx.say("GET, Accept text/event-stream\\xff: ", c:get({ accept = "text/event-stream\xff", version = "\xff" }).status)
        ngx.say("the session still serves: ", (c:tool("echo", { text = "yes" })))
        ngx.say("DELETE: ", c:delete().status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
initialize, version \xff: 400 -32602 the request has no params._meta id 1
stateless, Mcp-Method tools/\xc3: 400 -32020 the Mcp-Method header (tools/�) differs from the method (tools/list) id 1
stateless, version 2026-07-28\xfe: 400 -32020 the MCP-Protocol-Version header (2026-07-28�) differs from params._meta (2026-07-28) id 2
in a session, version \x80: 400 -32000 unsupported MCP-Protocol-Version "�" id 2
GET, Accept text/event-stream\xff: 400
the session still serves: yes
DELETE: 200
processes left: none
idle: true



=== TEST 28: a refusal that does not read the body, of a request whose chunked body is malformed: 400, never a 500 (a fuzz find: the lua module raised an error when discarding it)
--- config
location = /t {
    content_by_lua_block {
        local function raw(request)
            local sock = ngx.socket.tcp()
            sock:settimeouts(2000, 2000, 5000)
            assert(sock:connect("127.0.0.1", ngx.var.server_port))
            assert(sock:send(request))
            local line, err = sock:receive("*l")
            sock:close()
            return line or ("no answer: " .. err)
        end
        local bad = "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
        ngx.say("unknown session id: ", raw("POST /mcp HTTP/1.1\r\nHost: x\r\nMcp-Session-Id: abc\r\n"
                                             .. "Content-Type: application/json\r\n" .. bad))
        ngx.say("wrong Content-Type: ", raw("POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n" .. bad))
        ngx.say("no sessionId: ", raw("POST /mcp/message HTTP/1.1\r\nHost: x\r\n" .. bad))
        ngx.say("unknown sessionId: ", raw("POST /mcp/message?sessionId=" .. string.rep("0", 48)
                                           .. " HTTP/1.1\r\nHost: x\r\n" .. bad))
    }
}
--- response_body
unknown session id: HTTP/1.1 400 Bad Request
wrong Content-Type: HTTP/1.1 400 Bad Request
no sessionId: HTTP/1.1 400 Bad Request
unknown sessionId: HTTP/1.1 400 Bad Request
--- no_error_log
[crit]
[alert]
runtime error
