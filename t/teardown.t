# Teardown: however a session ends, its backend and every process the
# backend started are gone, its slot is free and the worker stays healthy.
# After each block: no recorded process left, slots 0, host sessions 0.
use t::MCPBridge 'no_plan';

my $fixture = $ENV{TEST_NGINX_FIXTURE};
my $pids = $ENV{TEST_NGINX_PID_DIR};

add_block_preprocessor(sub {
    my $block = shift;
    if (!defined $block->routes) {
        $block->set_value("routes", <<_EOC_);
mcp = { base_uri = "/mcp", command = "$fixture", args = { "--pid-dir", "$pids" },
        keepalive_interval_ms = 1000, kill_grace_ms = 500 },
patient = { base_uri = "/patient", command = "$fixture", args = { "--pid-dir", "$pids" },
            kill_grace_ms = 5000 },
stubborn = { base_uri = "/stubborn", command = "$fixture",
             args = { "--pid-dir", "$pids", "--ignore-sigterm", "--no-read" }, kill_grace_ms = 400 },
brief = { base_uri = "/brief", command = "$fixture",
          args = { "--pid-dir", "$pids", "--stderr-banner", "fatal: no config at \\027[1m/etc/x\\027[0m",
                   "--exit-at-start", "3" } },
_EOC_
    }
    if (!defined $block->no_error_log && !defined $block->error_log) {
        $block->set_value("no_error_log", "[error]\n[crit]\n[alert]\nunknown process\n");
    }
    $block->set_value("timeout", 10) unless defined $block->timeout;
});

run_tests();

__DATA__

=== TEST 1: client abort at every early stage (right after the request, during spawn, right after the endpoint)
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local delays = { 0, 0, 0, 0.001, 0.002, 0.005, 0.01, 0.02 }
        for round = 1, 3 do
            for _, delay in ipairs(delays) do
                local sock = ngx.socket.tcp()
                assert(sock:connect("127.0.0.1", tonumber(ngx.var.server_port)))
                assert(sock:send("GET /mcp/sse HTTP/1.1\r\nHost: x\r\n\r\n"))
                if delay > 0 then ngx.sleep(delay) end
                sock:close()
            end
        end
        -- and once more after reading the endpoint event
        local s = assert(t.session("/mcp"))
        s:close()
        ngx.sleep(0.3)
        local ok, left = t.wait_all_gone("$TEST_NGINX_PID_DIR", 5)
        ngx.say("processes left: ", ok and "none" or left)
        ngx.say("idle: ", tostring((t.wait_idle("mcp"))))
    }
}
--- response_body
processes left: none
idle: true



=== TEST 2: client abort while a request is in flight: SIGTERM at once, then gone
The grace period is long, so only the SIGTERM can end the backend within
the wait: with a short one a busy machine could delay the backend's signal
handler past it, and SIGKILL would end the backend before it recorded the
SIGTERM.
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/patient"))
        assert(s:initialize())
        local pid = assert(s:backend_pid())
        local status = s:post({ jsonrpc = "2.0", id = 99, method = "tools/call",
                                params = { name = "sleep", arguments = { ms = 10000 } } })
        ngx.say("slow call accepted: ", status)
        s:close()
        ngx.say("gone: ", t.wait_gone(pid, 3))
        ngx.say("got SIGTERM: ", t.got_sigterm("$TEST_NGINX_PID_DIR", pid))
        ngx.say("idle: ", tostring((t.wait_idle("patient"))))
    }
}
--- response_body
slow call accepted: 202
gone: true
got SIGTERM: true
idle: true



=== TEST 3: client abort after many messages
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/mcp"))
        assert(s:initialize())
        local intact = 0
        for i = 1, 200 do
            if s:tool("echo", { text = "message " .. i }) == "message " .. i then
                intact = intact + 1
            end
        end
        ngx.say("round trips: ", intact)
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
round trips: 200
processes left: none
idle: true



=== TEST 4: a backend that ignores SIGTERM is killed with SIGKILL when the grace period ends
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        -- This backend ignores both SIGTERM and the end of its input.
        local s = assert(t.session("/stubborn"))
        ngx.sleep(0.1)
        local pid = t.backend_pid("$TEST_NGINX_PID_DIR")
        s:close()
        ngx.sleep(0.2)
        ngx.say("after 0.2 s: SIGTERM received ", t.got_sigterm("$TEST_NGINX_PID_DIR", pid),
                ", still running ", t.process_state(pid) == "running")
        ngx.say("gone by the grace period: ", t.wait_gone(pid, 3))
        ngx.say("idle: ", tostring((t.wait_idle("stubborn"))))
    }
}
--- response_body
after 0.2 s: SIGTERM received true, still running true
gone by the grace period: true
idle: true
--- error_log
processes ignored SIGTERM, killed with SIGKILL after 400 ms



=== TEST 5: grandchildren die with the session, also ones that ignore SIGTERM
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/mcp"))
        local polite = tonumber((s:tool("spawn_grandchild", {})))
        local stubborn = tonumber((s:tool("spawn_grandchild", { ignore_sigterm = true })))
        local recs = t.records("$TEST_NGINX_PID_DIR")
        ngx.say("grandchildren recorded: ", recs[polite].role, " ", recs[stubborn].role)
        ngx.say("same group: ", recs[polite].pgid == recs[stubborn].pgid)
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
grandchildren recorded: sleeper sleeper
same group: true
processes left: none
idle: true



=== TEST 6: a backend that exits at once: the stream ends after the endpoint, the slot is freed, the log says why
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        for i = 1, 3 do
            local s = assert(t.session("/brief"))
            -- Its stderr line may come first, as a notification.
            local ev, err = s:read_event()
            while ev and ev.data:find("notifications/stderr", 1, true) do
                ev, err = s:read_event()
            end
            ngx.say("stream after endpoint: ", tostring(ev), " ", err)
            s:close()
        end
        ngx.say("idle: ", tostring((t.wait_idle("brief"))))
        local s = assert(t.session("/mcp"))
        ngx.say("worker still serves: ", (s:tool("echo", { text = "yes" })))
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR")
    }
}
--- response_body
stream after endpoint: nil eof
stream after endpoint: nil eof
stream after endpoint: nil eof
idle: true
worker still serves: yes
processes left: none
--- error_log eval
qr/\[warn\].*the MCP server "[^"]+" ended the session \d+ ms after it started: backend exited with status 3; its last stderr lines: "fatal: no config at \\x1b\[1m\/etc\/x\\x1b\[0m"/
--- no_error_log eval
["[error]", "[crit]", "[alert]", "unknown process", qr/\x1b/]



=== TEST 7: an older session ends at once while newer ones stay open and working
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local sessions, pids = {}, {}
        for i = 1, 4 do
            sessions[i] = assert(t.session("/mcp"))
            pids[i] = sessions[i]:backend_pid()
        end
        sessions[1]:close()
        ngx.say("oldest gone within 1 s: ", t.wait_gone(pids[1], 1))
        for i = 2, 4 do
            ngx.say("session ", i, ": ", (sessions[i]:tool("echo", { text = "alive" })),
                    " ", t.process_state(pids[i]))
        end
        for i = 2, 4 do sessions[i]:close() end
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
oldest gone within 1 s: true
session 2: alive running
session 3: alive running
session 4: alive running
processes left: none
idle: true



=== TEST 8: a backend that dies with its stream open ends the stream; the worker stays idle and responsive
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local function cpu_ticks()
            local f = io.open("/proc/self/stat")
            local stat = f:read("*a")
            f:close()
            local fields = {}
            for x in stat:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = x end
            return tonumber(fields[12]) + tonumber(fields[13])
        end
        for _, how in ipairs({ { "crash", { code = 3 } }, { "kill_self", { signal = "SIGKILL" } } }) do
            local s = assert(t.session("/mcp"))
            assert(s:initialize())
            local status = s:post({ jsonrpc = "2.0", id = 7, method = "tools/call",
                                    params = { name = how[1], arguments = how[2] } })
            -- The call in flight is answered with an error, then the stream ends.
            local msg = s:next_message()
            local _, err = s:next_message()
            local why = msg.error.message:match("^the MCP server ended before responding %((.*)%)$")
            ngx.say(how[1], ": post ", status, ", id ", msg.id, " error ", msg.error.code, ": ",
                    why:match("backend [%w ]+$"), ", stream ", err)
            s:close()
        end
        ngx.say("idle: ", tostring((t.wait_idle("mcp"))))
        local before = cpu_ticks()
        ngx.sleep(1)
        local used = cpu_ticks() - before
        ngx.say("worker CPU over 1 s under 0.2 s: ", used < 20)
        local status = t.http("GET", "/mcp/nothing")
        ngx.say("still answers: ", status)
        t.say_cleanup("$TEST_NGINX_PID_DIR")
    }
}
--- response_body
crash: post 202, id 7 error -32000: backend exited with status 3, stream eof
kill_self: post 202, id 7 error -32000: backend killed by signal 9, stream eof
idle: true
worker CPU over 1 s under 0.2 s: true
still answers: 404
processes left: none
--- timeout: 15



=== TEST 9: a Lua error in the request that owns a session still ends the session
--- config
location = /raise {
    content_by_lua_block {
        local wire = require("apisix.plugins.mcp.bridge.wire")
        local worker = require("apisix.plugins.mcp.bridge.worker")
        local config = require("apisix.plugins.mcp.bridge.config")
        local conf = { command = "$TEST_NGINX_FIXTURE", args = { "--pid-dir", "$TEST_NGINX_PID_DIR" } }
        assert(config.check(conf))
        local sock = ngx.socket.tcp()
        assert(sock:connect("unix:" .. assert(worker.host_socket()), { pool = "raise" }))
        assert(wire.send(sock, wire.SPAWN, config.spawn_request(conf)))
        local kind, payload = wire.receive(sock)
        ngx.log(ngx.WARN, "raise: backend pid ", payload:match(" (%d+)$"))
        error("something went wrong while the session was open")
    }
}
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local status = t.http("GET", "/raise")
        ngx.say("status ", status)
        ngx.sleep(0.1)
        t.say_cleanup("$TEST_NGINX_PID_DIR")
        local stats = t.host_stats()
        ngx.say("host sessions: ", stats.sessions)
    }
}
--- response_body
status 500
processes left: none
host sessions: 0
--- error_log
something went wrong while the session was open



=== TEST 10: without lua_check_client_abort the session still ends, on the first failed write
--- no_abort_check: 1
--- routes
mcp = { base_uri = "/mcp", command = "$TEST_NGINX_FIXTURE", args = { "--pid-dir", "$TEST_NGINX_PID_DIR" },
        keepalive_interval_ms = 200 },
stubborn = { base_uri = "/stubborn", command = "$TEST_NGINX_FIXTURE" },
brief = { base_uri = "/brief", command = "$TEST_NGINX_FIXTURE" },
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        for i = 1, 2 do
            local s = assert(t.session("/mcp"))
            local pid = s:backend_pid()
            s:close()
            ngx.say("gone after a failed keepalive write: ", t.wait_gone(pid, 3))
        end
        ngx.say("idle: ", tostring((t.wait_idle("mcp"))))
    }
}
--- response_body
gone after a failed keepalive write: true
gone after a failed keepalive write: true
idle: true
--- grep_error_log eval
qr/cannot watch for client aborts/
--- grep_error_log_out
cannot watch for client aborts
