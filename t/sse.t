# The HTTP+SSE transport: sessions, message delivery, and every bad input.
use t::MCPBridge 'no_plan';

my $fixture = $ENV{TEST_NGINX_FIXTURE};
my $pids = $ENV{TEST_NGINX_PID_DIR};

add_block_preprocessor(sub {
    my $block = shift;
    # Routes used by several blocks, on top of the default "mcp".
    if (!defined $block->routes) {
        $block->set_value("routes", <<_EOC_);
mcp = { base_uri = "/mcp", command = "$fixture", args = { "--pid-dir", "$pids" },
        keepalive_interval_ms = 1000, kill_grace_ms = 500 },
small = { base_uri = "/small", command = "$fixture", max_message_bytes = 1024 },
one = { base_uri = "/one", command = "$fixture", max_sessions = 1 },
other = { base_uri = "/other", command = "$fixture", max_sessions = 1 },
missing = { base_uri = "/missing", command = "no-such-mcp-server-xyz" },
logged = { base_uri = "/logged", command = "$fixture", stderr = "log" },
ticking = { base_uri = "/ticking", command = "$fixture", keepalive_interval_ms = 200 },
shaped = { base_uri = "/shaped", command = "$fixture", cwd = "/tmp",
           env = { EXTRA = "yes", LANG = "en_US.UTF-8" } },
root = { base_uri = "", command = "$fixture" },
nested = { base_uri = "/a/b", command = "$fixture" },
_EOC_
    }
});

run_tests();

__DATA__

=== TEST 1: a session round trip (initialize, tools/list, tools/call), then idle again
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        ngx.say("status ", s.status, " ", s.headers["content-type"], " ", s.headers["cache-control"],
                " ", s.headers["x-accel-buffering"])
        ngx.say("endpoint ", (s.endpoint:gsub("%x+$", "<id>")), " id length ", #s.id)
        local init = assert(s:initialize())
        ngx.say("protocol ", init.result.protocolVersion, " server ", init.result.serverInfo.name)
        local list = assert(s:call("tools/list", {}))
        ngx.say("tools listed ", #list.result.tools > 3)
        ngx.say("echo ", (s:tool("echo", { text = "héllo \"world\" \\ /" })))
        ngx.say("slots while open ", t.slots("mcp"))
        s:close()
        assert(t.wait_idle("mcp"))
        ngx.say("slots after close ", t.slots("mcp"))
    }
}
--- response_body
status 200 text/event-stream no-cache no
endpoint /mcp/message?sessionId=<id> id length 48
protocol 2024-11-05 server mcp-fixture
tools listed true
echo héllo "world" \ /
slots while open 1
slots after close 0



=== TEST 2: bad deliveries get a 4xx with a message, and the session survives them
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        local id = s.id
        local function show(label, status, headers, body)
            ngx.say(label, ": ", status, " ", (body or ""):gsub("\n$", "") .. "")
        end
        show("no id", t.http("POST", "/mcp/message", "{}"))
        show("empty id", t.http("POST", "/mcp/message?sessionId=", "{}"))
        show("id without value", t.http("POST", "/mcp/message?sessionId", "{}"))
        show("repeated id", t.http("POST", "/mcp/message?sessionId=" .. id .. "&sessionId=" .. id, "{}"))
        show("malformed id", t.http("POST", "/mcp/message?sessionId=../../etc/passwd", "{}"))
        show("long id", t.http("POST", "/mcp/message?sessionId=" .. string.rep("a", 2000), "{}"))
        show("unknown host", t.http("POST", "/mcp/message?sessionId=" .. string.rep("0", 48), "{}"))
        show("unknown session", t.http("POST", "/mcp/message?sessionId=" .. id:sub(1, 16)
                                       .. string.rep("0", 32), "{}"))
        show("upper-case id", t.http("POST", "/mcp/message?sessionId=" .. id:upper(), "{}"))
        show("empty body", t.http("POST", s.endpoint, ""))
        show("not json", t.http("POST", s.endpoint, "hello"))
        show("a number", t.http("POST", s.endpoint, "42"))
        show("truncated", t.http("POST", s.endpoint, '{"a":'))
        show("two messages", t.http("POST", s.endpoint, '{"a":1}{"b":2}'))
        show("invalid utf-8", t.http("POST", s.endpoint, '{"a":"\255"}'))
        show("raw newline in a string", t.http("POST", s.endpoint, '{"a":"x\ny"}'))
        show("request id of 600 bytes", t.http("POST", s.endpoint, '{"jsonrpc":"2.0","method":"ping","id":"'
                                                 .. string.rep("i", 598) .. '"}'))
        show("GET on message", t.http("GET", s.endpoint))
        show("POST on sse", t.http("POST", "/mcp/sse", "{}"))
        show("DELETE on sse", t.http("DELETE", "/mcp/sse"))
        show("other path", t.http("GET", "/mcp/other"))
        show("base with a slash", t.http("GET", "/mcp/"))
        ngx.say("still works: ", (s:tool("echo", { text = "yes" })))
        s:close()
        assert(t.wait_idle("mcp"))
    }
}
--- response_body
no id: 400 {"error":"missing sessionId query parameter"}
empty id: 400 {"error":"missing sessionId query parameter"}
id without value: 400 {"error":"missing sessionId query parameter"}
repeated id: 400 {"error":"sessionId must be given once"}
malformed id: 404 {"error":"session not found"}
long id: 404 {"error":"session not found"}
unknown host: 404 {"error":"session not found"}
unknown session: 404 {"error":"session not found"}
upper-case id: 404 {"error":"session not found"}
empty body: 400 {"error":"request body is empty; expected a JSON-RPC message"}
not json: 400 {"error":"message is not valid JSON: expected value at line 1 column 1"}
a number: 400 {"error":"message is not a JSON object or array"}
truncated: 400 {"error":"message is not valid JSON: EOF while parsing a value at line 1 column 5"}
two messages: 400 {"error":"message is not valid JSON: trailing characters at line 1 column 8"}
invalid utf-8: 400 {"error":"message is not valid UTF-8 (at byte 6)"}
raw newline in a string: 400 {"error":"message is not valid JSON: control character (\\u0000-\\u001F) found while parsing a string at line 1 column 7"}
request id of 600 bytes: 400 {"error":"a request id is longer than 512 bytes"}
GET on message: 405 {"error":"use POST to send a message"}
POST on sse: 405 {"error":"use GET to open a session"}
DELETE on sse: 405 {"error":"use GET to open a session"}
other path: 404 {"error":"not found: the MCP endpoints are /mcp, /mcp/sse and /mcp/message"}
base with a slash: 404 {"error":"not found: the MCP endpoints are /mcp, /mcp/sse and /mcp/message"}
still works: yes



=== TEST 3: 405 answers carry Allow
--- request
POST /mcp/sse
{}
--- error_code: 405
--- response_headers
Allow: GET
Content-Type: application/json



=== TEST 4: a body over max_message_bytes gets 413, declared or chunked; one at the limit passes, chunked too; a gone host's session gets 404 whatever its body
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/small"))
        assert(s:initialize())
        -- {"pad":"xxx..."} of exactly 1024 bytes
        local at_limit = '{"pad":"' .. string.rep("x", 1024 - 10) .. '"}'
        local over = '{"pad":"' .. string.rep("x", 1025 - 10) .. '"}'
        local status, _, body = t.http("POST", s.endpoint, at_limit)
        ngx.say(#at_limit, ": ", status)
        status, _, body = t.http("POST", s.endpoint, over)
        ngx.say(#over, ": ", status, " ", body)
        -- chunked: no Content-Length to refuse early; counted as it comes
        local function chunked(chunks, tail, endpoint)
            local sock = ngx.socket.tcp()
            assert(sock:connect("127.0.0.1", tonumber(ngx.var.server_port)))
            local parts = { "POST " .. (endpoint or s.endpoint) .. " HTTP/1.1\r\nHost: x\r\n"
                            .. "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" }
            for _, c in ipairs(chunks) do
                parts[#parts + 1] = string.format("%x", #c) .. ";ext=1\r\n" .. c .. "\r\n"
            end
            parts[#parts + 1] = tail or "0\r\n\r\n"
            assert(sock:send(table.concat(parts)))
            local line = sock:receive("*l")
            local headers = {}
            repeat
                local h = sock:receive("*l")
                local k, v = (h or ""):match("^([^:]+):%s*(.*)$")
                if k then headers[k:lower()] = v end
            until not h or h == ""
            local content
            if headers["transfer-encoding"] == "chunked" then
                -- One chunk: every answer here is written at once.
                content = sock:receive(tonumber(sock:receive("*l"), 16))
            else
                content = sock:receive(tonumber(headers["content-length"] or 0))
            end
            sock:close()
            return line .. " " .. (content or ""):gsub("\n$", "")
        end
        ngx.say("chunked over: ", chunked({ over:sub(1, 500), over:sub(501) }))
        local call = '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":'
                     .. '{"name":"echo","arguments":{"text":"in pieces"}}}'
        ngx.say("chunked in pieces: ", chunked({ call:sub(1, 10), call:sub(11, 40), call:sub(41) }))
        local reply
        repeat reply = assert(s:next_message()) until reply.id == 7
        ngx.say("echoed: ", reply.id, " ", reply.result.content[1].text)
        ngx.say("chunked malformed: ", chunked({ call }, "zz\r\n\r\n"))
        -- A session whose host is gone gets 404 whatever its body, read or
        -- not; one gone from a live host, once its body passed.
        local prefix = s.endpoint:sub(1, -49)
        for _, gone in ipairs({ { "session gone", s.endpoint:sub(1, -33) .. string.rep("0", 32) },
                                { "host gone", prefix .. string.rep("0", 48) } }) do
            for _, case in ipairs({ { "at the limit", at_limit }, { "over", over }, { "empty", "" } }) do
                status, _, body = t.http("POST", gone[2], case[2])
                ngx.say(gone[1], ", ", case[1], ": ", status, " ", (body:gsub("\n$", "")))
            end
            ngx.say(gone[1], ", chunked over: ", chunked({ over }, nil, gone[2]))
            ngx.say(gone[1], ", chunked: ", chunked({ call }, nil, gone[2]))
        end
        s:close()
    }
}
--- response_body
1024: 202
1025: 413 {"error":"request body is larger than max_message_bytes (1024)"}

chunked over: HTTP/1.1 413 Payload Too Large {"error":"request body is larger than max_message_bytes (1024)"}
chunked in pieces: HTTP/1.1 202 Accepted 
echoed: 7 in pieces
chunked malformed: HTTP/1.1 400 Bad Request {"error":"the chunked request body is malformed"}
session gone, at the limit: 404 {"error":"session not found"}
session gone, over: 413 {"error":"request body is larger than max_message_bytes (1024)"}
session gone, empty: 400 {"error":"request body is empty; expected a JSON-RPC message"}
session gone, chunked over: HTTP/1.1 413 Payload Too Large {"error":"request body is larger than max_message_bytes (1024)"}
session gone, chunked: HTTP/1.1 404 Not Found {"error":"session not found"}
host gone, at the limit: 404 {"error":"session not found"}
host gone, over: 404 {"error":"session not found"}
host gone, empty: 404 {"error":"session not found"}
host gone, chunked over: HTTP/1.1 404 Not Found {"error":"session not found"}
host gone, chunked: HTTP/1.1 404 Not Found {"error":"session not found"}



=== TEST 5: the ceiling is per route: over it 429 with Retry-After, a closed session frees its slot
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local first = assert(t.session("/one"))
        local status, headers, body = t.http("GET", "/one/sse")
        ngx.say("second on one: ", status, " retry-after ", headers["retry-after"], " ", body)
        local other = assert(t.session("/other"))
        ngx.say("first on other: ", other.status)
        ngx.say("slots one=", t.slots("one"), " other=", t.slots("other"))
        first:close()
        assert(t.wait_slots("one", 0))
        local again = assert(t.session("/one"))
        ngx.say("after close on one: ", again.status)
        again:close()
        other:close()
    }
}
--- response_body
second on one: 429 retry-after 1 {"error":"too many sessions: at most 1 per worker at a time (max_sessions)"}

first on other: 200
slots one=1 other=1
after close on one: 200



=== TEST 6: a command that cannot start gets 502 with a short reason (the details, the user included, go to the log), and frees its slot
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        for i = 1, 3 do
            local status, headers, body = t.http("GET", "/missing/sse")
            ngx.print(status, " ", headers["content-type"], " ", body)
        end
        ngx.say("slots ", t.slots("missing"))
    }
}
--- response_body
502 application/json {"error":"the MCP server's command was not found (the gateway's error log says why)"}
502 application/json {"error":"the MCP server's command was not found (the gateway's error log says why)"}
502 application/json {"error":"the MCP server's command was not found (the gateway's error log says why)"}
slots 0
--- error_log eval
qr/cannot start the MCP server: command "no-such-mcp-server-xyz" not found in PATH \(\/usr\/local\/sbin:[^)]*\) of user \w+ \(uid \d+\)/



=== TEST 7: stderr lines reach the client as notifications/stderr, correctly encoded
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        assert(s:initialize())
        ngx.say((s:tool("stderr", { text = 'a "quoted" \\ line\twith tab', count = 2 })))
        for i = 1, 2 do
            local msg = assert(s:next_message())
            ngx.say(msg.method, ": ", msg.params.content)
        end
        s:close()
    }
}
--- response_body
ok
notifications/stderr: a "quoted" \ line	with tab
notifications/stderr: a "quoted" \ line	with tab



=== TEST 8: with stderr = "log", stderr lines go to the error log instead, control characters escaped
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/logged"))
        assert(s:initialize())
        ngx.say((s:tool("stderr", { text = "diagnostic from the backend" })))
        ngx.say((s:tool("stderr", { text = "colour \27[31mred\27[0m" })))
        ngx.say((s:tool("echo", { text = "next" })))
        s:close()
    }
}
--- response_body
ok
ok
next
--- error_log
backend stderr: diagnostic from the backend
backend stderr: colour \x1b[31mred\x1b[0m
--- no_error_log eval
["[error]", qr/\x1b/]



=== TEST 9: a silent stream gets SSE keepalive comments
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/ticking"))
        local comments = 0
        local start = ngx.now()
        while ngx.now() - start < 0.7 do
            local ev = assert(s:read_event())
            if ev.comment then comments = comments + 1 end
            ngx.update_time()
        end
        ngx.say("keepalives in 0.7 s at 0.2 s: ", comments >= 2 and comments <= 4)
        s:close()
    }
}
--- response_body
keepalives in 0.7 s at 0.2 s: true



=== TEST 10: the backend gets a minimal environment, its own process group and clean signal state
--- config
location = /t {
    content_by_lua_block {
        local cjson = require("cjson.safe")
        local t = require("mcptest")
        local s = assert(t.session("/shaped"))
        local env = cjson.decode((s:tool("env")))
        local keys = {}
        for k in pairs(env) do keys[#keys + 1] = k end
        table.sort(keys)
        ngx.say("env: ", table.concat(keys, " "))
        ngx.say("LANG=", env.LANG, " EXTRA=", env.EXTRA, " HOME ends ", env.HOME:match("%-home$"))
        local ok = io.open(env.HOME, "r")
        ngx.say("HOME exists: ", ok ~= nil)
        if ok then ok:close() end
        ngx.say("cwd: ", (s:tool("cwd")))
        local ids = cjson.decode((s:tool("pid")))
        ngx.say("own process group: ", ids.pgid == ids.pid)
        local sig = cjson.decode((s:tool("signals")))
        ngx.say("blocked ", sig.blocked, " ignored ", sig.ignored)
        local fds = s:tool("fds")
        local n = 0
        for line in fds:gmatch("[^\n]+") do n = n + 1 end
        ngx.say("descriptors: ", n)
        s:close()
    }
}
--- response_body
env: EXTRA HOME LANG MCP_BRIDGE_SESSION PATH
LANG=en_US.UTF-8 EXTRA=yes HOME ends -home
HOME exists: true
cwd: /tmp
own process group: true
blocked 0000000000000000 ignored 0000000000000000
descriptors: 3



=== TEST 11: base_uri "" and a nested base_uri serve their own endpoints
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local root = assert(t.session(""))
        ngx.say((root.endpoint:gsub("%x+$", "<id>")), " ", (root:tool("echo", { text = "root" })))
        local nested = assert(t.session("/a/b"))
        ngx.say((nested.endpoint:gsub("%x+$", "<id>")), " ", (nested:tool("echo", { text = "nested" })))
        local status = t.http("GET", "/a/sse")
        ngx.say("/a/sse: ", status)
        root:close()
        nested:close()
    }
}
--- response_body
/message?sessionId=<id> root
/a/b/message?sessionId=<id> nested
/a/sse: 404



=== TEST 12: messages of any size up to the limit, pretty-printed bodies and batches
--- config
location = /t {
    content_by_lua_block {
        local cjson = require("cjson.safe")
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        local big = string.rep("0123456789abcdef", 65536)
        local text = s:tool("echo", { text = big })
        ngx.say("1 MiB echo intact: ", text == big)
        local status = s:post('{\n  "jsonrpc": "2.0",\r\n  "id": 100,\n  "method": "ping"\n}')
        local pong = assert(s:next_message())
        ngx.say("pretty ping: ", status, " id ", pong.id, " ", cjson.encode(pong.result))
        status = s:post('[{"jsonrpc":"2.0","id":201,"method":"ping"},{"jsonrpc":"2.0","id":202,"method":"ping"}]')
        local batch = assert(s:next_message())
        ngx.say("batch: ", status, " ", #batch, " ", batch[1].id, " ", batch[2].id)
        s:close()
    }
}
--- response_body
1 MiB echo intact: true
pretty ping: 202 id 100 {}
batch: 202 2 201 202



=== TEST 13: backend output that is not JSON never reaches the client and is logged
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        ngx.say((s:tool("junk_stdout", { text = "npm WARN deprecated thing" })))
        ngx.say((s:tool("invalid_utf8")))
        ngx.say((s:tool("echo", { text = "after" })))
        ngx.say("queued: ", #s.queue)
        s:close()
    }
}
--- response_body
ok
ok
after
queued: 0
--- error_log eval
[qr/dropped a backend output line that is not valid JSON: [^:]+: npm WARN deprecated thing/,
 "dropped a backend output line that is not valid UTF-8"]



=== TEST 14: a backend line over max_message_bytes ends the session without a partial event
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/small"))
        local status = s:post({ jsonrpc = "2.0", id = 1, method = "tools/call",
                                params = { name = "huge_line", arguments = { bytes = 5000 } } })
        ngx.say("post ", status)
        -- The unanswered call gets an error response, then the stream ends.
        local msg = s:next_message()
        ngx.say("id ", msg.id, ", error ", msg.error.code, ": ",
                msg.error.message:match("^(the MCP server ended before responding %(backend wrote "
                                        .. "a line over max_message_bytes %(1024%)); backend "))
        local _, err = s:next_message()
        ngx.say("stream: ", err)
        s:close()
        assert(t.wait_idle("small"))
        ngx.say("slots ", t.slots("small"))
    }
}
--- response_body
post 202
id 1, error -32000: the MCP server ended before responding (backend wrote a line over max_message_bytes (1024)
stream: eof
slots 0
--- error_log
backend wrote an output line over max_message_bytes (1024); ending the session



=== TEST 15: an HTTP/1.0 client is refused a stream it could not receive
--- request
GET /mcp/sse HTTP/1.0
--- error_code: 505
--- response_body
{"error":"the event stream needs HTTP/1.1 or later"}



=== TEST 16: a backend that stops reading its input: 503 with Retry-After, not a queue without bound
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/small"))
        ngx.say((s:tool("stop_reading")))
        local message = '{"jsonrpc":"2.0","method":"notifications/x","params":{"pad":"'
                        .. string.rep("x", 900) .. '"}}'
        local accepted, status, headers, body = 0
        repeat
            status, headers, body = s:post(message)
            if status == 202 then accepted = accepted + 1 end
        until status ~= 202 or accepted > 5000
        ngx.say("then: ", status, " retry-after ", headers["retry-after"], " ", body)
        -- at most the 1 MiB inbox plus the pipe's 64 KiB were taken
        ngx.say("bounded: ", accepted * #message < 1024 * 1024 + 128 * 1024)
        s:close()
        ngx.say("idle: ", tostring((t.wait_idle("small"))))
    }
}
--- response_body
ok
then: 503 retry-after 1 {"error":"the backend is not reading its input; try again later"}

bounded: true
idle: true
--- timeout: 30



=== TEST 17: when the host cannot be started: 503, the reason in the log, the slot freed
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local native = require("apisix.plugins.mcp.bridge.native")
        native.configure({ host_program = "/nonexistent/mcp-bridge-host" })
        for i = 1, 2 do
            local status, headers, body = t.http("GET", "/mcp/sse")
            ngx.print(status, " retry-after ", headers["retry-after"], " ", body)
        end
        ngx.say("slots ", t.slots("mcp"))
    }
}
--- response_body
503 retry-after 1 {"error":"the bridge cannot start sessions right now"}
503 retry-after 1 {"error":"the bridge cannot start sessions right now"}
slots 0
--- error_log
cannot start the mcp-bridge host: mcp-bridge host program /nonexistent/mcp-bridge-host not found



=== TEST 18: the session id reaches the session in any spelling of the query string, and only once
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        local id = s.id
        local msg = '{"jsonrpc":"2.0","method":"notifications/x"}'
        local function show(label, query)
            local status, _, body = t.http("POST", "/mcp/message?" .. query, msg)
            body = (body or ""):gsub("%s+$", "")
            ngx.say(label, ": ", status, body ~= "" and " " .. body or "")
        end
        show("as the endpoint event gives it", "sessionId=" .. id)
        show("another parameter after it", "sessionId=" .. id .. "&x=1")
        show("another parameter before it", "x=1&sessionId=" .. id)
        show("a trailing &", "sessionId=" .. id .. "&")
        show("percent-encoded", "sessionId=%" .. string.format("%02X", id:byte(1)) .. id:sub(2))
        show("another spelling of the name", "sessionid=" .. id)
        show("one character short", "sessionId=" .. id:sub(1, 47))
        show("one character more", "sessionId=" .. id .. "0")
        show("twice", "sessionId=" .. id .. "&sessionId=" .. id)
        show("a bare name after it", "sessionId=" .. id .. "&sessionId")
        ngx.say("still works: ", (s:tool("echo", { text = "yes" })))
        s:close()
        assert(t.wait_idle("mcp"))
    }
}
--- response_body
as the endpoint event gives it: 202
another parameter after it: 202
another parameter before it: 202
a trailing &: 202
percent-encoded: 202
another spelling of the name: 400 {"error":"missing sessionId query parameter"}
one character short: 404 {"error":"session not found"}
one character more: 404 {"error":"session not found"}
twice: 400 {"error":"sessionId must be given once"}
a bare name after it: 400 {"error":"sessionId must be given once"}
still works: yes
