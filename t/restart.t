# restart_on_crash: a session whose backend crashes gets a new backend, sent
# the session's initialize and notifications/initialized (the answer stays
# with the bridge), and goes on under the same id; its requests in flight get
# errors and the client a notifications/message warning. Bounded by
# max_restarts within restart_window_ms; a clean exit is never restarted; a
# crash during the replay is one more crash; crashes racing with DELETE or a
# client that leaves leave nothing behind. HTTP+SSE and Streamable HTTP.
use t::MCPBridge 'no_plan';

my $fixture = $ENV{TEST_NGINX_FIXTURE};
my $pids = $ENV{TEST_NGINX_PID_DIR};

add_block_preprocessor(sub {
    my $block = shift;
    if (!defined $block->routes) {
        $block->set_value("routes", <<_EOC_);
mcp = { base_uri = "/mcp", command = "$fixture", args = { "--pid-dir", "$pids" },
        restart_on_crash = true, max_restarts = 2, restart_window_ms = 60000,
        keepalive_interval_ms = 1000, kill_grace_ms = 300 },
off = { base_uri = "/off", command = "$fixture", args = { "--pid-dir", "$pids" },
        keepalive_interval_ms = 1000, kill_grace_ms = 300 },
_EOC_
    }
    if (!defined $block->no_error_log && !defined $block->error_log) {
        $block->set_value("no_error_log", "[error]\n[crit]\n[alert]\nunknown process\n");
    }
    $block->set_value("timeout", 20) unless defined $block->timeout;
});

run_tests();

__DATA__

=== TEST 1: Streamable HTTP: a backend that crashes mid-call is replaced; the call gets an error, the next GET the warning, and the same session id goes on with the client's initialize replayed
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        local c = t.client("/mcp")
        assert(c:initialize())
        local first = tonumber(c:tool("pid"):match('"pid":(%d+)'))
        local response, reply = c:call("tools/call", { name = "crash", arguments = { code = 3 } }, { id = "boom" })
        ngx.say("the crashing call: ", reply.status, " id ", response.id, " ", response.error.code, " ",
                response.error.message)
        local second = tonumber(c:tool("pid"):match('"pid":(%d+)'))
        ngx.say("same session, new backend: ", second ~= nil and second ~= first)
        ngx.say("the crashed one gone: ", t.wait_gone(first, 3))
        ngx.say("echo: ", (c:tool("echo", { text = "still here" })))
        local get = c:get()
        local warning = get:next_message(3)
        get:close()
        ngx.say("warning: ", warning.method, " ", warning.params.level, " ", warning.params.data)
        -- What the new backend received, in order.
        local f = assert(io.open(dir .. "/" .. second .. ".lifecycle"))
        for line in f:lines() do
            local params = line:match("^initialize (.*)$")
            if params then
                local p = require("cjson.safe").decode(params)
                ngx.say("replayed: initialize from ", p.clientInfo.name, " for ", p.protocolVersion)
            else
                ngx.say("replayed: ", line)
            end
        end
        f:close()
        -- A signal is a crash too.
        assert(c:call("tools/call", { name = "kill_self", arguments = {} }))
        local third = tonumber(c:tool("pid"):match('"pid":(%d+)'))
        ngx.say("after SIGKILL, again a new backend: ", third ~= second)
        ngx.say("delete: ", c:delete().status)
        ngx.say("then: ", t.refusal(c:post({ jsonrpc = "2.0", id = 9, method = "ping" })))
        t.say_cleanup(dir, "mcp")
    }
}
--- response_body
the crashing call: 200 id boom -32000 the MCP server ended before responding (the MCP server exited with status 3 and is being restarted)
same session, new backend: true
the crashed one gone: true
echo: still here
warning: notifications/message warning the MCP server exited with status 3 and was restarted (restart 1 of at most 2); requests in flight when it crashed were lost
replayed: initialize from mcptest for 2025-06-18
replayed: initialized
after SIGKILL, again a new backend: true
delete: 200
then: 404 -32001 Session not found id 9
processes left: none
idle: true
--- error_log eval
[qr/\[warn\].*the MCP server "[^"]+" exited with status 3 \d+ ms after it started; .*restarting it \(1 of at most 2\)/,
 qr/restarted as process \d+/]



=== TEST 2: HTTP+SSE: the crashing call gets an error, then the warning on the stream; the replay's answer never reaches the client; the session goes on
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        local s = assert(t.session("/mcp"))
        assert(s:initialize())
        local first = tonumber(s:tool("pid"):match('"pid":(%d+)'))
        local crashed = assert(s:call("tools/call", { name = "crash", arguments = { code = 5 } }))
        ngx.say("the crashing call: id ", crashed.id, " ", crashed.error.code, " ", crashed.error.message)
        local warning = assert(s:next_message(3))
        ngx.say("then: ", warning.method, " ", warning.params.level, " ", warning.params.data)
        local second = tonumber(s:tool("pid"):match('"pid":(%d+)'))
        ngx.say("new backend: ", second ~= first, "; crashed one gone: ", t.wait_gone(first, 3))
        ngx.say("echo: ", (s:tool("echo", { text = "same session" })))
        -- Anything else that came is queued; none of it may be the replay's answer.
        local others = 0
        for _, m in ipairs(s.queue) do
            others = others + 1
            ngx.say("unexpected message: ", require("cjson.safe").encode(m))
        end
        ngx.say("other messages: ", others)
        local f = assert(io.open(dir .. "/" .. second .. ".lifecycle"))
        ngx.say("replayed: ", (f:read("*a"):gsub("{.*}", "{...}"):gsub("\n", "; ")))
        f:close()
        s:close()
        t.say_cleanup(dir, "mcp")
    }
}
--- response_body
the crashing call: id 3 -32000 the MCP server ended before responding (the MCP server exited with status 5 and is being restarted)
then: notifications/message warning the MCP server exited with status 5 and was restarted (restart 1 of at most 2); requests in flight when it crashed were lost
new backend: true; crashed one gone: true
echo: same session
other messages: 0
replayed: initialize {...}; initialized; 
processes left: none
idle: true



=== TEST 3: the crash past max_restarts ends the session as without restarts: Streamable gets 404 after, SSE's stream ends; the log names the bound
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        local c = t.client("/mcp")
        assert(c:initialize())
        for i = 1, 3 do
            local response = c:call("tools/call", { name = "crash", arguments = { code = 7 } })
            ngx.say("crash ", i, ": ", response.error.message)
        end
        ngx.say("then: ", t.refusal(c:post({ jsonrpc = "2.0", id = 9, method = "ping" })))
        local s = assert(t.session("/mcp"))
        assert(s:initialize())
        for i = 1, 3 do
            local response = s:call("tools/call", { name = "crash", arguments = { code = 7 } })
            ngx.say("sse crash ", i, ": ", response.error.message)
            if i < 3 then
                assert(s:next_message(3))
            end
        end
        local last, err = s:next_message(3)
        ngx.say("sse stream: ", tostring(last), " ", err)
        t.say_cleanup(dir, "mcp")
    }
}
--- response_body
crash 1: the MCP server ended before responding (the MCP server exited with status 7 and is being restarted)
crash 2: the MCP server ended before responding (the MCP server exited with status 7 and is being restarted)
crash 3: the MCP server ended before responding (backend exited with status 7, past the restart bound (max_restarts))
then: 404 -32001 Session not found id 9
sse crash 1: the MCP server ended before responding (the MCP server exited with status 7 and is being restarted)
sse crash 2: the MCP server ended before responding (the MCP server exited with status 7 and is being restarted)
sse crash 3: the MCP server ended before responding (backend exited with status 7, past the restart bound (max_restarts))
sse stream: nil eof
processes left: none
idle: true
--- error_log eval
qr/ended the session \d+ ms after it started: backend exited with status 7, past the restart bound/



=== TEST 4: a backend that crashes during the replay counts as one more crash: the next one takes over, and the session works
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        for _, transport in ipairs({ "streamable", "sse" }) do
            local c, s
            if transport == "streamable" then
                c = t.client("/mcp")
                assert(c:initialize())
            else
                s = assert(t.session("/mcp"))
                assert(s:initialize())
            end
            -- The first restarted backend crashes on the replayed initialize.
            local f = assert(io.open(dir .. "/crash-initialize", "w"))
            f:write("1\n")
            f:close()
            local before = 0
            for _ in pairs(t.records(dir)) do before = before + 1 end
            -- Both warnings first: a request sent before the second restart
            -- would be in flight on the backend that crashes on the replay.
            if c then
                c:call("tools/call", { name = "crash", arguments = { code = 3 } })
                -- The backend that crashed on initialize said why on stderr
                -- (a notifications/stderr message): only the warnings count here.
                local get = c:get()
                local warnings = 0
                while warnings < 2 do
                    local w = assert(get:next_message(3))
                    if w.method == "notifications/message" then
                        warnings = warnings + 1
                        ngx.say("warning: ", (w.params.data:match("^[^;]*")))
                    end
                end
                get:close()
                ngx.say(transport, " echo: ", (c:tool("echo", { text = "after two restarts" })))
            else
                s:call("tools/call", { name = "crash", arguments = { code = 3 } })
                local warnings = 0
                while warnings < 2 do
                    local w = assert(s:next_message(3))
                    if w.method == "notifications/message" then
                        warnings = warnings + 1
                        ngx.say("warning: ", (w.params.data:match("^[^;]*")))
                    end
                end
                ngx.say(transport, " echo: ", (s:tool("echo", { text = "after two restarts" })))
            end
            local after = 0
            for _ in pairs(t.records(dir)) do after = after + 1 end
            ngx.say("backends started by the crash: ", after - before)
            if c then
                c:delete()
            else
                s:close()
            end
            t.say_cleanup(dir)
            t.clear(dir)
        end
    }
}
--- response_body
warning: the MCP server exited with status 3 and was restarted (restart 1 of at most 2)
warning: the MCP server exited with status 3 and was restarted (restart 2 of at most 2)
streamable echo: after two restarts
backends started by the crash: 2
processes left: none
warning: the MCP server exited with status 3 and was restarted (restart 1 of at most 2)
warning: the MCP server exited with status 3 and was restarted (restart 2 of at most 2)
sse echo: after two restarts
backends started by the crash: 2
processes left: none
--- no_error_log
[error]
[crit]
[alert]
refused the replayed initialize



=== TEST 5: never restarted: a backend that exits with status 0, and any crash on a route without restart_on_crash
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        for _, base in ipairs({ "/mcp", "/off" }) do
            local c = t.client(base)
            assert(c:initialize())
            local code = base == "/mcp" and 0 or 3
            local response = c:call("tools/call", { name = "crash", arguments = { code = code } })
            ngx.say(base, " exit ", code, ": ", response.error.message)
            ngx.say("then: ", t.refusal(c:post({ jsonrpc = "2.0", id = 9, method = "ping" })))
            local s = assert(t.session(base))
            assert(s:initialize())
            response = s:call("tools/call", { name = "crash", arguments = { code = code } })
            ngx.say(base, " sse exit ", code, ": ", response.error.message)
            local last, err = s:next_message(3)
            ngx.say("sse stream: ", tostring(last), " ", err)
        end
        t.say_cleanup(dir, "mcp")
    }
}
--- response_body
/mcp exit 0: the MCP server ended before responding (backend exited with status 0)
then: 404 -32001 Session not found id 9
/mcp sse exit 0: the MCP server ended before responding (backend exited with status 0)
sse stream: nil eof
/off exit 3: the MCP server ended before responding (backend exited with status 3)
then: 404 -32001 Session not found id 9
/off sse exit 3: the MCP server ended before responding (backend exited with status 3)
sse stream: nil eof
processes left: none
idle: true
--- no_error_log
[error]
[crit]
[alert]
restarting it



=== TEST 6: crashes racing with the session's end: a DELETE sent as the backend crashes, a client that leaves as it crashes, and a crash while a SIGTERM-ignoring grandchild still runs; nothing is left, no slot held
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        for delay = 0, 0.02, 0.01 do
            local c = t.client("/mcp")
            assert(c:initialize())
            local crash = ngx.thread.spawn(function()
                return c:call("tools/call", { name = "crash", arguments = { code = 3 } })
            end)
            ngx.sleep(delay)
            local deleted = c:delete()
            ngx.thread.wait(crash)
            ngx.say("delete after ", delay * 1000, " ms: ", deleted.status, "; then ",
                    t.refusal(c:post({ jsonrpc = "2.0", id = 9, method = "ping" })))
        end
        for delay = 0, 0.02, 0.01 do
            local s = assert(t.session("/mcp"))
            assert(s:initialize())
            s:post({ jsonrpc = "2.0", id = 50, method = "tools/call",
                     params = { name = "crash", arguments = { code = 3 } } })
            ngx.sleep(delay)
            s:close()
        end
        ngx.say("sse clients gone as their backends crashed")
        -- The crashed backend's grandchild ignores SIGTERM: it is ended
        -- with the old group, while the session goes on.
        local c = t.client("/mcp")
        assert(c:initialize())
        assert(c:tool("spawn_grandchild", { ignore_sigterm = true }))
        c:call("tools/call", { name = "crash", arguments = { code = 3 } })
        ngx.say("echo after: ", (c:tool("echo", { text = "fine" })))
        c:delete()
        t.say_cleanup(dir, "mcp")
    }
}
--- response_body
delete after 0 ms: 200; then 404 -32001 Session not found id 9
delete after 10 ms: 200; then 404 -32001 Session not found id 9
delete after 20 ms: 200; then 404 -32001 Session not found id 9
sse clients gone as their backends crashed
echo after: fine
processes left: none
idle: true
