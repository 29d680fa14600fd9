# Two workers: a message reaches its session whichever worker takes the
# POST, in order; each worker has its own host; reload, quit and a killed
# worker leave no process behind.
use t::MCPBridge 'no_plan';

master_on();
workers(2);
no_shuffle();

add_block_preprocessor(sub {
    my $block = shift;
    my $config = $block->config // "";
    $block->set_value("config", <<'_EOC_' . $config);
location /mcp/ {
    add_header X-Worker $pid always;
    content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").serve("mcp") }
    log_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").log() }
}
location = /stats {
    content_by_lua_block {
        local t = require("mcptest")
        local stats = t.host_stats() or {}
        ngx.print(ngx.worker.pid(), " ", t.slots("mcp"), " ", stats.sessions, " ", stats.pid)
    }
}
_EOC_
    # A second listener with reuseport: the kernel spreads its connections
    # over both workers, so POSTs reliably reach the other worker too.
    my $http_config = $block->http_config // "";
    $block->set_value("http_config", $http_config . <<'_EOC_');
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 reuseport;
        location /mcp/ {
            add_header X-Worker $pid always;
            content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").serve("mcp") }
            log_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").log() }
        }
    }
_EOC_
    $block->set_value("timeout", 15) unless defined $block->timeout;
    $block->set_value("main_config", "worker_shutdown_timeout 20s;\n")
        unless defined $block->main_config;
});

run_tests();

__DATA__

=== TEST 1: POSTs taken by the other worker reach the session, in the order they were sent
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        t.use_port($TEST_NGINX_RAND_PORT_1)
        local s = assert(t.session("/mcp"))
        local stream_worker = s.headers["x-worker"]
        local crossed, sent = 0, 0
        -- Fire-and-forget echo calls, each on a new connection, until enough
        -- of them were taken by the other worker; then read the answers.
        while (crossed < 20 or sent < 100) and sent < 1000 do
            sent = sent + 1
            local status, headers = s:post({ jsonrpc = "2.0", id = sent, method = "tools/call",
                params = { name = "echo", arguments = { text = "m" .. sent } } })
            assert(status == 202, "status " .. tostring(status))
            if headers["x-worker"] ~= stream_worker then crossed = crossed + 1 end
        end
        local in_order = true
        for i = 1, sent do
            local msg = assert(s:next_message())
            if msg.id ~= i or msg.result.content[1].text ~= "m" .. i then in_order = false end
        end
        ngx.say("taken by the other worker: ", crossed >= 20)
        ngx.say("every answer, in order: ", in_order)
        s:close()
        ngx.say("gone: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)))
    }
}
--- response_body
taken by the other worker: true
every answer, in order: true
gone: true



=== TEST 2: an ended session's id is refused by both workers; each worker has its own host
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        local endpoint = s.endpoint
        s:close()
        ngx.sleep(0.2)
        local codes, hosts, workers = {}, {}, {}
        for i = 1, 400 do
            local status, headers = t.http("POST", endpoint, '{"jsonrpc":"2.0","method":"ping","id":1}')
            codes[status] = true
            workers[headers["x-worker"]] = true
            local _, _, body = t.http("GET", "/stats")
            local worker, _, _, host = body:match("^(%d+) (%d+) (%S+) (%S+)$")
            hosts[worker] = host
            if next(workers, next(workers)) and next(hosts, next(hosts)) then break end
        end
        local n, distinct = 0, {}
        for _, host in pairs(hosts) do n = n + 1; distinct[host] = true end
        local d = 0
        for _ in pairs(distinct) do d = d + 1 end
        ngx.say("answers: ", table.concat((function() local c = {} for k in pairs(codes) do c[#c+1] = k end table.sort(c) return c end)(), ","))
        ngx.say("workers answered: ", (next(workers, next(workers))) ~= nil)
        ngx.say("hosts: ", n, " distinct: ", d)
    }
}
--- response_body
answers: 404
workers answered: true
hosts: 2 distinct: 2



=== TEST 3: a reload ends the old workers' sessions at once, and new sessions are served
--- config
location = /t {
    content_by_lua_block {
        local ffi = require("ffi")
        ffi.cdef[[ int kill(int pid, int sig); ]]
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local old = assert(t.session("/mcp"))
        assert(old:initialize())
        local f = assert(io.open(ngx.config.prefix() .. "logs/nginx.pid"))
        local master = tonumber(f:read("*l"))
        f:close()
        ngx.update_time()
        local start = ngx.now()
        ffi.C.kill(master, 1)  -- SIGHUP: reload
        local msg, err = old:next_message()
        ngx.update_time()
        ngx.say("old stream ended: ", tostring(msg), " ", err,
                ", long before worker_shutdown_timeout: ", ngx.now() - start < 5)
        ngx.say("old backends gone: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)))
        ngx.sleep(0.5)
        local new = assert(t.session("/mcp"))
        ngx.say("new session after reload: ", (new:tool("echo", { text = "served" })))
        new:close()
        ngx.say("all gone: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)))
    }
}
--- response_body
old stream ended: nil eof, long before worker_shutdown_timeout: true
old backends gone: true
new session after reload: served
all gone: true
--- no_error_log
[error]
[crit]
unknown process



=== TEST 4: a worker killed with SIGKILL takes its host and backends with it; its replacement serves
--- config
location = /t {
    content_by_lua_block {
        local ffi = require("ffi")
        ffi.cdef[[ int kill(int pid, int sig); ]]
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local me = tostring(ngx.worker.pid())
        -- A session owned by the other worker.
        local s
        for i = 1, 200 do
            local candidate = assert(t.session("/mcp"))
            if candidate.headers["x-worker"] ~= me then s = candidate break end
            candidate:close()
        end
        assert(s, "no session landed on the other worker")
        assert(s:initialize())
        local grandchild = tonumber((s:tool("spawn_grandchild", {})))
        local victim = tonumber(s.headers["x-worker"])
        ffi.C.kill(victim, 9)
        local msg, err = s:next_message()
        ngx.say("stream of the killed worker ended: ", tostring(msg), " ", err)
        local ok, left = t.wait_all_gone("$TEST_NGINX_PID_DIR", 1)
        ngx.say("backend and grandchild gone within 1 s: ", ok or left)
        ngx.sleep(0.5)
        local served
        for i = 1, 50 do
            local fresh = assert(t.session("/mcp"))
            local w = fresh.headers["x-worker"]
            local text = fresh:tool("echo", { text = "ok" })
            fresh:close()
            if w ~= me then served = text break end
        end
        ngx.say("the replacement worker serves: ", served)
        ngx.say("all gone: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)))
    }
}
--- response_body
stream of the killed worker ended: nil closed
backend and grandchild gone within 1 s: true
the replacement worker serves: ok
all gone: true
--- no_error_log
[error]
unknown process
--- error_log eval
qr/worker process \d+ exited on signal 9/



=== TEST 5: quit with a live session: the session ends during shutdown, no alert
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        -- A session held by a timer outlives this request, like a client's.
        t.port()
        local opened = false
        ngx.timer.at(0, function()
            local s = assert(t.session("/mcp"))
            opened = true
            local _, err = s:next_message()
            ngx.log(ngx.WARN, "held session ended: ", err)
        end)
        while not opened do ngx.sleep(0.01) end
        ngx.say("session open")
    }
}
--- response_body
session open
--- shutdown_error_log eval
[qr/session \d+: ended: worker shutting down; backend exited with status \d+; process group gone/,
 qr/held session ended: eof/]
--- no_shutdown_error_log
[alert]
unknown process



=== TEST 6: nothing was left running by the quit above
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local ok, left = t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)
        ngx.say("processes left: ", ok and "none" or left)
    }
}
--- response_body
processes left: none
