# The Streamable HTTP transport with two workers: a session's POSTs, GETs
# and DELETE work whichever worker takes them; a reload, a quit and a
# worker killed outright end the sessions and leave no process behind;
# each worker keeps its own pool of backends for stateless requests.
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
        keepalive_interval_ms = 1000, kill_grace_ms = 500, pool_idle_timeout_ms = 1000 },
conf = { base_uri = "/conf", command = "$fixture", args = { "--conformance", "--pid-dir", "$pids" },
         keepalive_interval_ms = 1000, kill_grace_ms = 500, pool_idle_timeout_ms = 1000 },
stubborn = { base_uri = "/stubborn", command = "$fixture", args = { "--pid-dir", "$pids" },
             keepalive_interval_ms = 1000, kill_grace_ms = 1500 },
_EOC_
    }
    my $config = $block->config // "";
    $block->set_value("config", <<'_EOC_' . $config);
location ~ ^/(?<route>mcp|conf|stubborn)(/|$) {
    add_header X-Worker $pid always;
    content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").serve(ngx.var.route) }
    log_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").log() }
}
_EOC_
    # A second listener with reuseport: the kernel spreads its connections
    # over both workers, so requests reliably reach the other worker too.
    my $http_config = $block->http_config // "";
    $block->set_value("http_config", $http_config . <<'_EOC_');
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 reuseport;
        location ~ ^/(?<route>mcp|conf|stubborn)(/|$) {
            add_header X-Worker $pid always;
            content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").serve(ngx.var.route) }
            log_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").log() }
        }
        location = /stats {
            add_header X-Worker $pid always;
            content_by_lua_block {
                local t = require("mcptest")
                local stats = t.host_stats() or {}
                ngx.print(t.slots("mcp") + t.slots("conf") + t.slots("stubborn"), " ",
                          tostring(stats.sessions), " ", tostring(stats.pooled))
            }
        }
    }
_EOC_
    if (!defined $block->no_error_log && !defined $block->error_log) {
        $block->set_value("no_error_log", "[error]\n[crit]\n[alert]\nunknown process\n");
    }
    $block->set_value("timeout", 15) unless defined $block->timeout;
    $block->set_value("main_config", "worker_shutdown_timeout 20s;\n")
        unless defined $block->main_config;
});

run_tests();

__DATA__

=== TEST 1: a session's POSTs, GETs and DELETE taken by the other worker work, each answered in turn
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        t.use_port($TEST_NGINX_RAND_PORT_1)
        local c = t.client("/conf")
        local init = assert(c:initialize())
        local owner = init.headers["x-worker"]
        -- Requests each on a new connection, until enough were taken by the
        -- other worker.
        local crossed, sent, in_turn = 0, 0, true
        while (crossed < 10 or sent < 40) and sent < 400 do
            sent = sent + 1
            local text, _, reply = c:tool("json_schema_2020_12_tool", { name = "m" .. sent }, { id = sent })
            if reply.json.id ~= sent or text ~= 'Called with {"name":"m' .. sent .. '"}' then in_turn = false end
            if reply.headers["x-worker"] ~= owner then crossed = crossed + 1 end
        end
        ngx.say("requests taken by the other worker: ", crossed >= 10, ", each answered in turn: ", in_turn)
        local note, n
        n = 0
        repeat
            note = c:post({ jsonrpc = "2.0", method = "notifications/roots/list_changed" })
            n = n + 1
        until note.headers["x-worker"] ~= owner or n > 200
        ngx.say("a notification through the other worker: ", note.status)
        -- GETs until one is taken by the other worker; each replaces the one before.
        local get = c:get()
        local replaced, ended = 0, 0
        for _ = 1, 200 do
            local g = c:get()
            local _, err = get:next_message()
            replaced = replaced + 1
            if err == "eof" then ended = ended + 1 end
            get:close()
            get = g
            if g.headers["x-worker"] ~= owner then break end
        end
        ngx.say("GET through the other worker: ", get.status, ", those it replaced ended: ",
                replaced > 0 and ended == replaced)
        c:call("tools/call", { name = "test_trigger_tool_change", arguments = { delay_ms = 200 } })
        local m = get:next_message()
        ngx.say("it gets the server's notification: ", m.method)
        -- DELETE on a connection the other worker took (a ping first tells which).
        local deleted
        for _ = 1, 200 do
            local probe = c:post({ jsonrpc = "2.0", id = "probe", method = "ping" }, { keep_open = true })
            if probe.headers["x-worker"] ~= owner then
                deleted = c:delete({ connection = probe.connection })
                break
            end
            probe.connection:close()
        end
        ngx.say("DELETE through the other worker: ", deleted.status, " (", deleted.headers["x-worker"] ~= owner, ")")
        local _, last = get:next_message()
        ngx.say("the GET then: ", last)
        get:close()
        for _ = 1, 10 do
            local after = c:post({ jsonrpc = "2.0", id = 1, method = "ping" })
            if after.status ~= 404 then ngx.say("after DELETE: ", after.status) end
        end
        ngx.say("processes left: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)) and "none" or "some")
        ngx.say("idle in both workers: ", tostring((t.wait_idle_everywhere($TEST_NGINX_RAND_PORT_1, "/stats", 2))))
    }
}
--- response_body
requests taken by the other worker: true, each answered in turn: true
a notification through the other worker: 202
GET through the other worker: 200, those it replaced ended: true
it gets the server's notification: notifications/tools/list_changed
DELETE through the other worker: 200 (true)
the GET then: eof
processes left: none
idle in both workers: true



=== TEST 2: a stateless call waiting for input is resumed whichever worker takes its retry; a reload ends the parked calls, their states are refused, nothing is left
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        t.use_port($TEST_NGINX_RAND_PORT_1)
        local caps = { capabilities = { elicitation = {} } }
        local name = "test_input_required_result_elicitation"
        local answer = { user_name = { action = "accept", content = { name = "W" } } }
        -- Calls parked by one worker, retried until a retry lands on the other.
        local crossed = false
        for _ = 1, 50 do
            local first, reply = t.client("/conf"):modern("tools/call", { name = name, arguments = {} }, caps)
            local done, retry = t.client("/conf"):modern("tools/call", { name = name, arguments = {},
                requestState = first.result.requestState, inputResponses = answer }, caps)
            if done.result.content[1].text ~= "Hello, W!" then
                ngx.say("a retry failed: ", require("cjson.safe").encode(done))
                break
            end
            if retry.headers["x-worker"] ~= reply.headers["x-worker"] then
                crossed = true
                break
            end
        end
        ngx.say("a retry taken by the other worker resumed its call: ", crossed)
        -- One call parked in each worker, then a reload.
        local states, workers = {}, {}
        for _ = 1, 100 do
            local first, reply = t.client("/conf"):modern("tools/call", { name = name, arguments = {} }, caps)
            local w = reply.headers["x-worker"]
            if not workers[w] then
                workers[w] = true
                states[#states + 1] = first.result.requestState
            else
                t.client("/conf"):modern("tools/call", { name = name, arguments = {},
                    requestState = first.result.requestState, inputResponses = answer }, caps)
            end
            if #states == 2 then break end
        end
        ngx.say("calls parked in both workers: ", #states)
        local f = assert(io.open(ngx.config.prefix() .. "logs/nginx.pid"))
        local master = tonumber(f:read("*l"))
        f:close()
        t.kill(master, 1)  -- SIGHUP: reload
        ngx.say("every process gone: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)))
        for i, state in ipairs(states) do
            local _, reply = t.client("/conf"):modern("tools/call", { name = name, arguments = {},
                requestState = state, inputResponses = answer }, caps)
            ngx.say("retry ", i, " after the reload: ", (t.refusal(reply):gsub(" id %d+$", "")))
        end
        ngx.say("pools empty in both workers: ", tostring((t.wait_idle_everywhere($TEST_NGINX_RAND_PORT_1, "/stats", 2))))
        ngx.say("processes left: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)) and "none" or "some")
    }
}
--- response_body
a retry taken by the other worker resumed its call: true
calls parked in both workers: 2
every process gone: true
retry 1 after the reload: 400 -32602 requestState is unknown, used, expired or of another request; call again without it
retry 2 after the reload: 400 -32602 requestState is unknown, used, expired or of another request; call again without it
pools empty in both workers: true
processes left: none



=== TEST 2: a reload ends both workers' sessions within 1 s (SIGTERM-ignoring processes too), their ids are refused, new sessions are served
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        t.use_port($TEST_NGINX_RAND_PORT_1)
        -- A session on each worker, each with a grandchild that ignores
        -- SIGTERM (kill_grace_ms 1500: shutdown must not wait for it), and
        -- a GET open on each.
        local sessions, workers = {}, {}
        for _ = 1, 200 do
            local c = t.client("/stubborn")
            local init = assert(c:initialize())
            local w = init.headers["x-worker"]
            if workers[w] then
                c:delete()
            else
                workers[w] = true
                assert(tonumber((c:tool("spawn_grandchild", { ignore_sigterm = true }))))
                c.stream = c:get()
                sessions[#sessions + 1] = c
            end
            if #sessions == 2 then break end
        end
        ngx.say("sessions on both workers: ", #sessions)
        local f = assert(io.open(ngx.config.prefix() .. "logs/nginx.pid"))
        local master = tonumber(f:read("*l"))
        f:close()
        ngx.update_time()
        local start = ngx.now()
        t.kill(master, 1)  -- SIGHUP: reload
        local ends = {}
        for i, c in ipairs(sessions) do
            local _, err = c.stream:next_message()
            ends[i] = err
            c.stream:close()
        end
        ngx.update_time()
        ngx.say("their GETs ended: ", table.concat(ends, " "), ", within 1 s: ", ngx.now() - start < 1)
        ngx.say("every process gone within 1 s: ",
                (t.wait_all_gone("$TEST_NGINX_PID_DIR", 1 - (ngx.now() - start))))
        ngx.sleep(0.3)
        for i, c in ipairs(sessions) do
            ngx.say("old session ", i, ": ", (t.refusal(c:post({ jsonrpc = "2.0", id = 1, method = "ping" }))
                                              :gsub(" id 1$", "")))
        end
        local new = t.client("/mcp")
        assert(new:initialize())
        ngx.say("a new session: ", (new:tool("echo", { text = "served" })), ", DELETE ", new:delete().status)
        ngx.say("processes left: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)) and "none" or "some")
        ngx.say("idle in both workers: ", tostring((t.wait_idle_everywhere($TEST_NGINX_RAND_PORT_1, "/stats", 2))))
    }
}
--- response_body
sessions on both workers: 2
their GETs ended: eof eof, within 1 s: true
every process gone within 1 s: true
old session 1: 404 -32001 Session not found
old session 2: 404 -32001 Session not found
a new session: served, DELETE 200
processes left: none
idle in both workers: true
--- error_log eval
qr/session \d+: ended: worker shutting down; .*processes ignored SIGTERM, killed with SIGKILL after 500 ms/



=== TEST 3: a worker killed with SIGKILL takes its host and its sessions with it; their ids are refused; the replacement serves
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local me = tostring(ngx.worker.pid())
        -- A session owned by the other worker.
        local c
        for _ = 1, 200 do
            c = t.client("/mcp")
            local init = assert(c:initialize())
            if init.headers["x-worker"] ~= me then break end
            c:delete()
            c = nil
        end
        assert(c, "no session landed on the other worker")
        local grandchild = tonumber((c:tool("spawn_grandchild", { setsid = true, ignore_sigterm = true })))
        local get = c:get()
        local pid = tonumber(c:tool("pid"):match('"pid":(%d+)'))
        local host = t.records("$TEST_NGINX_PID_DIR")[pid].ppid
        local f = io.open("/proc/" .. host .. "/stat")
        local worker = tonumber(f:read("*a"):match("%) %a (%d+)"))
        f:close()
        ngx.say("the session's host belongs to the other worker: ", worker ~= tonumber(me))
        ngx.update_time()
        local start = ngx.now()
        t.kill(worker, 9)
        local doomed = { host, pid, grandchild }
        ngx.say("host, backend and its escaped grandchild gone within 1 s: ",
                t.wait_all_exited(doomed, 1 - (ngx.now() - start)))
        ngx.sleep(0.3)
        local refusals = {}
        for _ = 1, 20 do
            refusals[(t.refusal(c:post({ jsonrpc = "2.0", id = 1, method = "ping" })):gsub(" id 1$", ""))] = true
        end
        for r in pairs(refusals) do ngx.say("its id: ", r) end
        local served
        for _ = 1, 50 do
            local fresh = t.client("/mcp")
            local init = assert(fresh:initialize())
            local text = fresh:tool("echo", { text = "ok" })
            fresh:delete()
            if init.headers["x-worker"] ~= me then served = text break end
        end
        ngx.say("the replacement worker serves: ", served)
        get:close()
        ngx.say("processes left: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 3)) and "none" or "some")
        ngx.say("idle in both workers: ", tostring((t.wait_idle_everywhere($TEST_NGINX_RAND_PORT_1, "/stats", 2))))
    }
}
--- response_body
the session's host belongs to the other worker: true
host, backend and its escaped grandchild gone within 1 s: true
its id: 404 -32001 Session not found
the replacement worker serves: ok
processes left: none
idle in both workers: true
--- no_error_log
[error]
[crit]
unknown process
--- error_log eval
qr/worker process \d+ exited on signal 9/



=== TEST 4: each worker keeps its own pool for stateless requests: its backends are its host's children
--- config
location = /t {
    content_by_lua_block {
        local cjson = require("cjson.safe")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        t.use_port($TEST_NGINX_RAND_PORT_1)
        local c = t.client("/mcp")
        local by_worker, calls = {}, 0
        while calls < 400 do
            calls = calls + 1
            local response, reply = c:modern("tools/call", { name = "pid", arguments = {} })
            local ids = cjson.decode(response.result.content[1].text)
            local w = reply.headers["x-worker"]
            by_worker[w] = by_worker[w] or {}
            by_worker[w][ids.pid] = ids.ppid
            local n = 0
            for _ in pairs(by_worker) do n = n + 1 end
            if n == 2 and calls >= 20 then break end
        end
        local function parent(pid)
            local f = io.open("/proc/" .. pid .. "/stat")
            local stat = f and f:read("*a") or ""
            if f then f:close() end
            return tonumber(stat:match("%) %a (%d+)"))
        end
        local own, shared, workers = true, false, 0
        local seen = {}
        for w, backends in pairs(by_worker) do
            workers = workers + 1
            for pid, host in pairs(backends) do
                if parent(host) ~= tonumber(w) then own = false end
                if seen[pid] and seen[pid] ~= w then shared = true end
                seen[pid] = w
            end
        end
        ngx.say("workers that served: ", workers, ", each from its own host's backends: ", own,
                ", a backend serving both: ", shared)
        -- pool_idle_timeout_ms is 1000 here.
        ngx.say("processes left: ", (t.wait_all_gone("$TEST_NGINX_PID_DIR", 4)) and "none" or "some")
        ngx.say("idle in both workers: ", tostring((t.wait_idle_everywhere($TEST_NGINX_RAND_PORT_1, "/stats", 2))))
    }
}
--- response_body
workers that served: 2, each from its own host's backends: true, a backend serving both: false
processes left: none
idle in both workers: true



=== TEST 5: quit with live sessions, open GETs and pooled backends in both workers: all end during shutdown, no alert
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        t.use_port($TEST_NGINX_RAND_PORT_1)
        -- Sessions held by timers outlive this request, as a client's do;
        -- one per worker.
        local workers, held = {}, 0
        for _ = 1, 100 do
            local c = t.client("/mcp")
            local init = assert(c:initialize())
            local w = init.headers["x-worker"]
            if workers[w] then c:delete() else
                workers[w] = true
                ngx.timer.at(0, function()
                    local get = c:get()
                    held = held + 1
                    local _, err = get:next_message()
                    ngx.log(ngx.WARN, "held GET ended: ", err)
                end)
            end
            if next(workers, next(workers)) then break end
        end
        -- Pooled backends in both workers (kept: pool_idle_timeout_ms is 5 minutes there).
        local pooled = {}
        for _ = 1, 200 do
            local _, reply = t.client("/stubborn"):modern("tools/call", { name = "echo", arguments = { text = "x" } })
            pooled[reply.headers["x-worker"]] = true
            if next(pooled, next(pooled)) then break end
        end
        while held < 2 do ngx.sleep(0.01) end
        local n = 0
        for _ in pairs(pooled) do n = n + 1 end
        ngx.say("sessions held: ", held, ", workers with pooled backends: ", n)
    }
}
--- response_body
sessions held: 2, workers with pooled backends: 2
--- shutdown_error_log eval
[qr/session \d+: ended: worker shutting down/,
 qr/pooled backend \d+ of .* ended: the worker is shutting down/,
 qr/held GET ended: eof/]
--- no_shutdown_error_log
[alert]
[error]
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
