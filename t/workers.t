# Two workers: a message reaches its session whichever worker takes the
# POST, in order; each worker has its own host; reload, quit and a killed
# worker leave no process behind.
use t::MCPBridge 'no_plan';

master_on();
workers(2);
no_shuffle();

my $fixture = $ENV{TEST_NGINX_FIXTURE};
my $pids = $ENV{TEST_NGINX_PID_DIR};

add_block_preprocessor(sub {
    my $block = shift;
    if (!defined $block->routes) {
        $block->set_value("routes", <<_EOC_);
mcp = { base_uri = "/mcp", command = "$fixture", args = { "--pid-dir", "$pids" },
        keepalive_interval_ms = 1000, kill_grace_ms = 500 },
stubborn = { base_uri = "/stubborn", command = "$fixture",
             args = { "--pid-dir", "$pids", "--ignore-sigterm", "--no-read" }, kill_grace_ms = 1500 },
capped = { base_uri = "/capped", command = "$fixture", args = { "--pid-dir", "$pids" },
           max_sessions = 5, max_sessions_per_node = 2 },
missing = { base_uri = "/missing", command = "no-such-mcp-server-xyz" },
_EOC_
    }
    my $config = $block->config // "";
    $block->set_value("config", <<'_EOC_' . $config);
location ~ ^/(?<route>mcp|stubborn|capped|missing)/ {
    add_header X-Worker $pid always;
    content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").serve(ngx.var.route) }
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
        location ~ ^/(?<route>mcp|stubborn|capped|missing)/ {
            add_header X-Worker $pid always;
            content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").serve(ngx.var.route) }
            log_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").log() }
        }
        location = /status {
            add_header X-Worker $pid always;
            content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").status() }
        }
        location = /metrics {
            content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").metrics() }
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



=== TEST 3: a reload ends the old workers' sessions within 1 s, SIGTERM-ignoring ones too, and new sessions are served
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local old = assert(t.session("/mcp"))
        assert(old:initialize())
        -- Ignores SIGTERM, with kill_grace_ms 1500: shutdown must not wait for it.
        local stubborn = assert(t.session("/stubborn"))
        local f = assert(io.open(ngx.config.prefix() .. "logs/nginx.pid"))
        local master = tonumber(f:read("*l"))
        f:close()
        ngx.update_time()
        local start = ngx.now()
        t.kill(master, 1)  -- SIGHUP: reload
        local msg, err = old:next_message()
        local _, stubborn_err = stubborn:next_message()
        ngx.update_time()
        ngx.say("old streams ended: ", tostring(msg), " ", err, " ", stubborn_err,
                ", within 1 s: ", ngx.now() - start < 1)
        ngx.say("old backends gone within 1 s: ",
                (t.wait_all_gone("$TEST_NGINX_PID_DIR", 1 - (ngx.now() - start))))
        ngx.sleep(0.5)
        local new = assert(t.session("/mcp"))
        ngx.say("new session after reload: ", (new:tool("echo", { text = "served" })))
        new:close()
        ngx.say("all gone: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)))
    }
}
--- response_body
old streams ended: nil eof eof, within 1 s: true
old backends gone within 1 s: true
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
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local me = tostring(ngx.worker.pid())
        -- Sessions owned by the other worker; those that land on this one
        -- stay open until the end.
        local kept = {}
        local function elsewhere(base)
            for i = 1, 200 do
                local candidate = assert(t.session(base))
                if candidate.headers["x-worker"] ~= me then return candidate end
                kept[#kept + 1] = candidate
            end
            error("no session landed on the other worker")
        end
        local s = elsewhere("/mcp")
        assert(s:initialize())
        local grandchild = tonumber((s:tool("spawn_grandchild", {})))
        local escaped = tonumber((s:tool("spawn_grandchild", { setsid = true, ignore_sigterm = true })))
        local stubborn = elsewhere("/stubborn")
        local victim = tonumber(s.headers["x-worker"])
        local host = t.children(victim)[1]
        local doomed = t.descendants(host)
        doomed[#doomed + 1] = host
        ngx.update_time()
        local start = ngx.now()
        t.kill(victim, 9)
        local msg, err = s:next_message()
        ngx.say("stream of the killed worker ended: ", tostring(msg), " ", err)
        ngx.say("host, ", #doomed - 1, " backends and grandchildren (escaped, SIGTERM-ignoring) ",
                "gone within 1 s: ", t.wait_all_exited(doomed, 1 - (ngx.now() - start)))
        for _, k in ipairs(kept) do k:close() end
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
host, 4 backends and grandchildren (escaped, SIGTERM-ignoring) gone within 1 s: true
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
        local opened = 0
        for _, base in ipairs({ "/mcp", "/stubborn" }) do
            ngx.timer.at(0, function()
                local s = assert(t.session(base))
                opened = opened + 1
                local _, err = s:next_message()
                ngx.log(ngx.WARN, "held session of ", base, " ended: ", err)
            end)
        end
        while opened < 2 do ngx.sleep(0.01) end
        ngx.say("session open")
    }
}
--- response_body
session open
--- shutdown_error_log eval
[qr/session \d+: ended: worker shutting down; backend exited with status \d+; process group gone/,
 qr/session \d+: ended: worker shutting down; backend killed by signal 9; processes ignored SIGTERM, killed with SIGKILL after 500 ms/,
 qr/held session of \/mcp ended: eof/,
 qr/held session of \/stubborn ended: eof/]
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



=== TEST 7: max_sessions_per_node holds across both workers; slots of a worker killed with SIGKILL are reclaimed
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local me = tostring(ngx.worker.pid())
        -- Two sessions, one on each worker (max_sessions per worker is 5).
        local mine, theirs
        for i = 1, 200 do
            local s = assert(t.session("/capped"))
            if s.headers["x-worker"] == me and not mine then mine = s
            elseif s.headers["x-worker"] ~= me and not theirs then theirs = s
            else s:close() end
            if mine and theirs then break end
            ngx.sleep(0.01)
        end
        assert(mine and theirs, "sessions did not land on both workers")
        local node = t.node()
        local shares = {}
        for _, routes in pairs(node.workers) do shares[#shares + 1] = routes.capped end
        ngx.say("node count ", node.routes.capped, ", shares ", table.concat(shares, " "))
        local status, headers, body = t.http("GET", "/capped/sse")
        ngx.say("third: ", status, " retry-after ", headers["retry-after"], " ", (body:gsub("%s+$", "")))
        mine:close()
        assert(t.wait_slots("capped", 0))
        local again = assert(t.session("/capped"))
        ngx.say("after a close, a new session: ", again.status)
        again:close()
        assert(t.wait_slots("capped", 0))

        -- The other worker dies holding its slot; its replacement reclaims it.
        t.kill(tonumber(theirs.headers["x-worker"]), 9)
        theirs:next_message()
        local reclaimed = false
        for i = 1, 300 do
            local n = t.node().routes.capped
            if n == 0 then reclaimed = true break end
            ngx.sleep(0.01)
        end
        ngx.say("the dead worker's slot reclaimed: ", reclaimed, ", keys held ", t.node().keys_held)
        local a = assert(t.session("/capped"))
        local b = assert(t.session("/capped"))
        ngx.say("two sessions again: ", a.status, " ", b.status)
        a:close()
        b:close()
        ngx.say("all gone: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)))
    }
}
--- response_body
node count 2, shares 1 1
third: 429 retry-after 1 {"error":"too many sessions: at most 2 on this node at a time (max_sessions_per_node)"}
after a close, a new session: 200
the dead worker's slot reclaimed: true, keys held 0
two sessions again: 200 200
all gone: true
--- no_error_log
[error]
unknown process
--- error_log eval
[qr/worker process \d+ exited on signal 9/,
 qr/reclaimed \d+ session slot\(s\) of route "capped" held by worker \d+-\d+, which is gone/]



=== TEST 8: the status report lists both workers' hosts, whichever worker answers; the metrics count what both did
--- config
location = /t {
    content_by_lua_block {
        local cjson = require("cjson.safe")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        t.use_port($TEST_NGINX_RAND_PORT_1)
        -- A session on each worker, with a round trip each.
        local sessions, workers, opened = {}, {}, 0
        while #sessions < 2 do
            local s = assert(t.session("/mcp"))
            opened = opened + 1
            local w = s.headers["x-worker"]
            if workers[w] then s:close() else
                workers[w] = true
                assert(s:initialize())
                assert(s:tool("echo", { text = "hello" }) == "hello")
                sessions[#sessions + 1] = s
            end
        end
        local answered = {}
        for _ = 1, 40 do
            local status, headers, body = t.http("GET", "/status")
            local report = cjson.decode(body)
            local live = 0
            for _, h in ipairs(report.hosts) do live = live + h.sessions end
            answered[headers["x-worker"]] = #report.hosts .. " hosts, " .. live .. " sessions"
        end
        local seen = {}
        for _, v in pairs(answered) do seen[#seen + 1] = v end
        ngx.say("workers answering the status: ", #seen, "; each saw: ", table.concat(seen, " / "))
        for _, s in ipairs(sessions) do s:close() end
        -- Over the node ceiling, and a command that cannot start.
        local a, b = assert(t.session("/capped")), assert(t.session("/capped"))
        local over = t.http("GET", "/capped/sse")
        a:close() b:close()
        local failed = t.http("GET", "/missing/sse")
        ngx.say("refused: ", over, ", failed: ", failed)
        assert(t.wait_all_gone("$TEST_NGINX_PID_DIR", 5))
        -- Sessions opened on a worker that had one already were closed at once.
        local want = {
            'mcp_bridge_sessions_started_total{route="mcp",transport="sse"} ' .. opened,
            'mcp_bridge_sessions_ended_total{route="mcp",transport="sse",reason="client_closed"} '
                .. opened,
            'mcp_bridge_sessions_live{route="mcp"} 0',
            'mcp_bridge_backends_live{route="capped"} 0',
            'mcp_bridge_session_teardown_seconds_count{route="mcp"} ' .. opened,
            'mcp_bridge_sessions_refused_total{route="capped",status="429"} 1',
            'mcp_bridge_spawn_failures_total{route="missing"} 1',
            'mcp_bridge_messages_total{route="mcp",direction="in"} 6',
            'mcp_bridge_messages_total{route="mcp",direction="out"} 4',
        }
        local text
        for _ = 1, 100 do
            local _, _, body = t.http("GET", "/metrics")
            text = body
            local all = true
            for _, line in ipairs(want) do
                if not text:find(line, 1, true) then all = false end
            end
            if all then break end
            ngx.sleep(0.05)
        end
        for _, line in ipairs(want) do
            ngx.say(text:find(line, 1, true) and "" or "MISSING ", (line:gsub(" %d+$", " n")))
        end
        ngx.say("help and type: ", text:find("# TYPE mcp_bridge_session_teardown_seconds histogram", 1, true) ~= nil)
        local buckets = {}
        for le in text:gmatch('mcp_bridge_session_teardown_seconds_bucket{route="mcp",le="([^"]+)"}') do
            buckets[#buckets + 1] = le
        end
        ngx.say("buckets in order: ", table.concat(buckets, " "))
    }
}
--- response_body
workers answering the status: 2; each saw: 2 hosts, 2 sessions / 2 hosts, 2 sessions
refused: 429, failed: 502
mcp_bridge_sessions_started_total{route="mcp",transport="sse"} n
mcp_bridge_sessions_ended_total{route="mcp",transport="sse",reason="client_closed"} n
mcp_bridge_sessions_live{route="mcp"} n
mcp_bridge_backends_live{route="capped"} n
mcp_bridge_session_teardown_seconds_count{route="mcp"} n
mcp_bridge_sessions_refused_total{route="capped",status="429"} n
mcp_bridge_spawn_failures_total{route="missing"} n
mcp_bridge_messages_total{route="mcp",direction="in"} n
mcp_bridge_messages_total{route="mcp",direction="out"} n
help and type: true
buckets in order: 0.001 0.005 0.01 0.05 0.1 0.5 1 2.5 5 10 +Inf
--- no_error_log
[error]
[crit]



=== TEST 9: an operator lists every worker's sessions and ends one by the start of its id
--- config
location = /t {
    content_by_lua_block {
        local control = require("apisix.plugins.mcp.bridge.control")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        t.use_port($TEST_NGINX_RAND_PORT_1)
        local sessions, workers = {}, {}
        while #sessions < 2 do
            local s = assert(t.session("/mcp"))
            local w = s.headers["x-worker"]
            if workers[w] then s:close() else workers[w] = true sessions[#sessions + 1] = s end
        end
        local listed = control.sessions()
        local by_prefix = {}
        for _, e in ipairs(listed) do by_prefix[e.id_prefix] = e end
        local doomed, other = sessions[1], sessions[2]
        local entry = by_prefix[doomed.id:sub(1, 24)]
        ngx.say("listed: ", #listed, ", full ids shown: ", listed[1].id_prefix == doomed.id)
        ngx.say("entry: ", entry.route, " ", entry.transport, " consumer '", entry.consumer,
                "' on worker ", tostring(entry.worker_pid == tonumber(doomed.headers["x-worker"])))
        local ended = control.end_session(doomed.id:sub(1, 24))
        ngx.say("ended: ", tostring(ended))
        local _, err = doomed:next_message()
        ngx.say("its stream: ", err)
        ngx.say("the other still answers: ", (select(1, other:initialize())) ~= nil)
        local _, code, why = control.end_session(doomed.id:sub(1, 10))
        ngx.say("too short: ", code, " ", why)
        _, code = control.end_session(doomed.id:sub(1, 24))
        ngx.say("again: ", code)
        _, code = control.end_session(string.rep("0", 24))
        ngx.say("no such host: ", code)
        other:close()
        ngx.say("all gone: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 5)))
    }
}
--- response_body
listed: 2, full ids shown: false
entry: mcp sse consumer '' on worker true
ended: true
its stream: eof
the other still answers: true
too short: 400 give the first 24 or more characters of a session id (lowercase hex), as the list shows them
again: 404
no such host: 404
all gone: true
--- no_error_log
[error]
[crit]
