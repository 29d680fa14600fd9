# Hostile conditions: descendants that leave their process group, a host
# killed outright, backends that crash with requests in flight or close
# their output or run away with memory or CPU, clients too slow to read,
# and bad input of every kind. Nothing leaks, nothing is orphaned, and
# every client mistake gets a 4xx.
use t::MCPBridge 'no_plan';

my $fixture = $ENV{TEST_NGINX_FIXTURE};
my $pids = $ENV{TEST_NGINX_PID_DIR};

# Errors nginx logs itself in blocks that kill a host and keep using its
# worker, none of them a fault:
# - a stream closed with a keepalive comment unread makes the test client's
#   kernel send a reset;
# - the killed host's listening socket may close a moment before its control
#   channel does (the kernel closes a dying process's files one by one): the
#   next session's connect is refused, logged by nginx's core, and retried
#   on a new host (see "Facts" in docs/architecture.md).
our $errors_other_than_a_host_kills = qr/\[error\](?!.*(recv\(\) failed \(104: Connection reset by peer\)|connect\(\) to unix:\S+ failed \(111: Connection refused\)))/;

add_block_preprocessor(sub {
    my $block = shift;
    if (!defined $block->routes) {
        $block->set_value("routes", <<_EOC_);
mcp = { base_uri = "/mcp", command = "$fixture", args = { "--pid-dir", "$pids" },
        keepalive_interval_ms = 1000, kill_grace_ms = 300 },
slow = { base_uri = "/slow", command = "$fixture", args = { "--pid-dir", "$pids" },
         slow_client_timeout_ms = 300, kill_grace_ms = 300 },
patient = { base_uri = "/patient", command = "$fixture", args = { "--pid-dir", "$pids" },
            slow_client_timeout_ms = 60000, kill_grace_ms = 300 },
limited = { base_uri = "/limited", command = "$fixture", args = { "--pid-dir", "$pids" },
            kill_grace_ms = 300, limits = { memory_mb = 128, cpu_seconds = 1 } },
_EOC_
    }
    if (!defined $block->no_error_log && !defined $block->error_log) {
        $block->set_value("no_error_log", "[error]\n[crit]\n[alert]\nunknown process\n");
    }
    $block->set_value("timeout", 20) unless defined $block->timeout;
});

run_tests();

__DATA__

=== TEST 1: descendants that left the process group (setsid, double fork, ignoring SIGTERM) end with their session
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/mcp"))
        local kinds = {
            { setsid = true },
            { double_fork = true },
            { setsid = true, double_fork = true },
            { setsid = true, ignore_sigterm = true },
        }
        for _, how in ipairs(kinds) do
            assert(tonumber((s:tool("spawn_grandchild", how))))
        end
        local backend = t.backend_pid("$TEST_NGINX_PID_DIR")
        -- Each grandchild records itself once it runs.
        local escaped, sleepers
        for _ = 1, 300 do
            local recs = t.records("$TEST_NGINX_PID_DIR")
            escaped, sleepers = 0, 0
            for _, rec in pairs(recs) do
                if rec.role == "sleeper" then
                    sleepers = sleepers + 1
                    if rec.pgid ~= recs[backend].pgid then escaped = escaped + 1 end
                end
            end
            if sleepers == #kinds then break end
            ngx.sleep(0.01)
        end
        ngx.say("grandchildren outside the backend's group: ", escaped)
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
grandchildren outside the backend's group: 3
processes left: none
idle: true
--- error_log eval
qr/session \d+: ended: client closed; .*; [34] process\(es\) that left the group ended too/



=== TEST 2: a backend that crashes leaves no escaped descendant behind either
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/mcp"))
        s:tool("spawn_grandchild", { setsid = true, ignore_sigterm = true })
        s:post({ jsonrpc = "2.0", id = 99, method = "tools/call",
                 params = { name = "crash", arguments = { code = 1 } } })
        local msg = s:next_message()
        ngx.say("pending call answered: ", msg.id, " ", msg.error.code)
        local _, err = s:next_message()
        ngx.say("stream: ", err)
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
pending call answered: 99 -32000
stream: eof
processes left: none
idle: true



=== TEST 3: every request in flight when the backend dies gets an error response with its id, in order
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/mcp"))
        assert(s:initialize())
        local backend = t.backend_pid("$TEST_NGINX_PID_DIR")
        -- String and numeric ids, a notification (no response expected) and
        -- a batch holding one request.
        -- The answered one is not repeated.
        ngx.say("answered: ", (s:tool("echo", { text = "done" })))
        s:post({ jsonrpc = "2.0", id = "first", method = "tools/call",
                 params = { name = "sleep", arguments = { ms = 30000 } } })
        s:post({ jsonrpc = "2.0", id = 2, method = "tools/call",
                 params = { name = "sleep", arguments = { ms = 30000 } } })
        s:post({ jsonrpc = "2.0", method = "notifications/cancelled", params = { requestId = 0 } })
        s:post('[{"jsonrpc":"2.0","id":"b\\"3","method":"tools/call",'
               .. '"params":{"name":"sleep","arguments":{"ms":30000}}}]')
        ngx.sleep(0.2)
        t.kill(backend, 9)
        while true do
            local msg, err = s:next_message()
            if not msg then ngx.say("stream: ", err) break end
            if msg.error then
                ngx.say("id ", msg.id, " error ", msg.error.code, " ",
                        msg.error.message:match("backend killed by signal 9") or msg.error.message)
            end
        end
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
answered: done
id first error -32000 backend killed by signal 9
id 2 error -32000 backend killed by signal 9
id b"3 error -32000 backend killed by signal 9
stream: eof
processes left: none
idle: true



=== TEST 4: a backend that closes its output but keeps running: the session ends, the backend is killed, no busy loop
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/mcp"))
        local before = ngx.now()
        s:post({ jsonrpc = "2.0", id = 5, method = "tools/call",
                 params = { name = "close_stdout", arguments = {} } })
        local msg = s:next_message()
        ngx.say("pending call answered: ", msg.id, " ", msg.error.code, " ",
                msg.error.message:match("backend closed its output") or msg.error.message)
        local _, err = s:next_message()
        ngx.say("stream: ", err)
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
pending call answered: 5 -32000 backend closed its output
stream: eof
processes left: none
idle: true



=== TEST 5: a client too slow to read loses its session after slow_client_timeout_ms, with a log line; the backend waits meanwhile
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/slow"))
        assert(s:initialize())
        local backend = t.backend_pid("$TEST_NGINX_PID_DIR")
        -- 64 MiB of notifications, far more than the socket buffers hold;
        -- this client reads none of it.
        local status = s:post({ jsonrpc = "2.0", id = 1, method = "tools/call",
                                params = { name = "flood", arguments = { count = 65536, size = 1024 } } })
        ngx.say("flood requested: ", status)
        ngx.say("backend gone: ", t.wait_gone(backend, 5))
        ngx.say("slot freed: ", (t.wait_slots("slow", 0, 3)))
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "slow")
    }
}
--- response_body
flood requested: 202
backend gone: true
slot freed: true
processes left: none
idle: true
--- error_log eval
qr/ended: the client took over slow_client_timeout_ms \(300 ms\) to accept one message/



=== TEST 10: a flood the client does not read pauses the backend; memory stays bounded
--- config
location = /t {
    content_by_lua_block {
        local native = require("apisix.plugins.mcp.bridge.native")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local function rss_kib(pid)
            local f = assert(io.open("/proc/" .. pid .. "/status"))
            local kib = tonumber(f:read("*a"):match("VmRSS:%s+(%d+)"))
            f:close()
            return kib
        end
        local s = assert(t.session("/patient"))
        assert(s:initialize())
        local host = native.stats().host_pid
        local host_before, worker_before = rss_kib(host), rss_kib(ngx.worker.pid())
        -- 256 MiB of output; the client reads none of it for 2 s.
        s:post({ jsonrpc = "2.0", id = 1, method = "tools/call",
                 params = { name = "flood", arguments = { count = 262144, size = 1024 } } })
        ngx.sleep(2)
        local host_growth = rss_kib(host) - host_before
        local worker_growth = rss_kib(ngx.worker.pid()) - worker_before
        ngx.say("host grew under 16 MiB: ", host_growth < 16384, ", worker grew under 16 MiB: ",
                worker_growth < 16384)
        local backend = t.backend_pid("$TEST_NGINX_PID_DIR")
        ngx.say("backend still running, paused: ", t.process_state(backend))
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "patient")
    }
}
--- response_body
host grew under 16 MiB: true, worker grew under 16 MiB: true
backend still running, paused: running
processes left: none
idle: true



=== TEST 6: a host killed with SIGKILL: its streams end, its backends die, a new host serves and ends what the old one left
--- config
location = /t {
    content_by_lua_block {
        local native = require("apisix.plugins.mcp.bridge.native")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/mcp"))
        local in_group = tonumber((s:tool("spawn_grandchild", {})))
        local escaped = tonumber((s:tool("spawn_grandchild", { setsid = true })))
        local backend = t.backend_pid("$TEST_NGINX_PID_DIR")
        local stats = native.stats()
        t.kill(stats.host_pid, 9)
        local _, err = s:next_message()
        ngx.say("stream ended: ", err)
        ngx.say("backend died with its host: ", t.wait_gone(backend, 2))
        ngx.say("grandchildren still running: ",
                t.process_state(in_group) ~= nil, " ", t.process_state(escaped) ~= nil)
        local fresh = assert(t.session("/mcp"))
        ngx.say("new session: ", (fresh:tool("echo", { text = "ok" })),
                ", hosts started ", native.stats().hosts_started - stats.hosts_started)
        -- A session asked for the instant its host dies gets a new host.
        t.kill(native.stats().host_pid, 9)
        local quick, err = t.session("/mcp")
        ngx.say("session opened as the host died: ", quick and quick.status or err)
        if quick then quick:close() end
        ngx.say("what the old host left is ended: ",
                t.wait_gone(in_group, 3), " ", t.wait_gone(escaped, 3))
        fresh:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
stream ended: eof
backend died with its host: true
grandchildren still running: true true
new session: ok, hosts started 1
session opened as the host died: 200
what the old host left is ended: true true
processes left: none
idle: true
--- error_log eval
qr/ending 2 process\(es\) left by a host that is gone/
--- no_error_log
[crit]
[emerg]



=== TEST 7: bodies of 10 MiB get their 413, also from a client still uploading, never a reset
--- http_config
client_max_body_size 64m;
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        local path = s.endpoint
        local function raw(declared, sent)
            local sock = ngx.socket.tcp()
            sock:settimeouts(2000, 10000, 10000)
            assert(sock:connect("127.0.0.1", ngx.var.server_port))
            assert(sock:send("POST " .. path .. " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             .. "Content-Length: " .. declared .. "\r\n\r\n"))
            local chunk = string.rep("x", 65536)
            for _ = 1, sent / 65536 do
                local ok, err = sock:send(chunk)
                if not ok then return "send failed: " .. err end
            end
            local line, err = sock:receive("*l")
            sock:close()
            return line or ("no response: " .. err)
        end
        -- Chunked, without end: the answer comes while the client still
        -- sends, once the chunks counted pass the limit (4 MiB).
        local function chunked_forever()
            local sock = ngx.socket.tcp()
            sock:settimeouts(2000, 10000, 10000)
            assert(sock:connect("127.0.0.1", ngx.var.server_port))
            assert(sock:send("POST " .. path .. " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             .. "Transfer-Encoding: chunked\r\n\r\n"))
            local sent, answered_at = 0, nil
            local reading = ngx.thread.spawn(function()
                local line = sock:receive("*l")
                answered_at = sent
                return line
            end)
            local chunk = "10000\r\n" .. string.rep("x", 65536) .. "\r\n"
            while sent < 64 * 1048576 and not answered_at do
                if not sock:send(chunk) then break end
                sent = sent + 65536
            end
            local _, line = ngx.thread.wait(reading)
            sock:close()
            return line, answered_at
        end
        ngx.say("10 MiB sent whole: ", raw(10485760, 10485760))
        ngx.say("10 MiB declared, 64 KiB sent: ", raw(10485760, 65536))
        local line, answered_at = chunked_forever()
        ngx.say("chunked without end: ", line, "; answered before 64 MiB were sent: ",
                answered_at ~= nil and answered_at < 64 * 1048576)
        ngx.say("the session still works: ", (s:tool("echo", { text = "yes" })))
        s:close()
    }
}
--- response_body
10 MiB sent whole: HTTP/1.1 413 Request Entity Too Large
10 MiB declared, 64 KiB sent: HTTP/1.1 413 Request Entity Too Large
chunked without end: HTTP/1.1 413 Payload Too Large; answered before 64 MiB were sent: true
the session still works: yes



=== TEST 8: bad sessionId values and path tricks get a 4xx with a message
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        local id = s.id
        local msg = '{"jsonrpc":"2.0","method":"notifications/x"}'
        local cases = {
            "/mcp/message?sessionId=" .. string.rep("a", 6000),
            "/mcp/message?sessionId=" .. string.rep("f", 48),
            "/mcp/message?sessionId=" .. id:upper(),
            "/mcp/message?sessionId=" .. id .. "&sessionId=" .. id,
            "/mcp/message?sessionId=" .. id:sub(1, 47),
            "/mcp/message?sessionId=../" .. id,
            "/mcp/message?sessionId=%00" .. id,
            "/mcp/message?" .. string.rep("a=1&", 40) .. "sessionId=" .. id,
            "/mcp/message/?sessionId=" .. id,
            "/mcp/sse/..",
        }
        for _, path in ipairs(cases) do
            local status, _, body = t.http("POST", path, msg)
            ngx.say(status, " ", (body:gsub("%s+$", "")))
        end
        -- Normalized by nginx to the endpoint itself.
        local status = t.http("POST", "/mcp/./x/../message?sessionId=" .. id, msg)
        ngx.say("dot segments: ", status)
        s:close()
    }
}
--- response_body
404 {"error":"session not found"}
404 {"error":"session not found"}
404 {"error":"session not found"}
400 {"error":"sessionId must be given once"}
404 {"error":"session not found"}
404 {"error":"session not found"}
404 {"error":"session not found"}
400 {"error":"too many query parameters"}
404 {"error":"not found: the MCP endpoints are /mcp, /mcp/sse and /mcp/message"}
404 {"error":"not found: the MCP endpoints are /mcp, /mcp/sse and /mcp/message"}
dot segments: 202



=== TEST 9: concurrent POSTs to one session: each delivered exactly once, each answered
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/mcp"))
        local n = 12
        local threads = {}
        for i = 1, n do
            threads[i] = ngx.thread.spawn(function()
                return s:post({ jsonrpc = "2.0", id = i, method = "tools/call",
                                params = { name = "echo", arguments = { text = "m" .. i } } })
            end)
        end
        local accepted = 0
        for i = 1, n do
            local _, status = ngx.thread.wait(threads[i])
            if status == 202 then accepted = accepted + 1 end
        end
        local seen, dup, wrong = {}, 0, 0
        for _ = 1, n do
            local msg = assert(s:next_message())
            if seen[msg.id] then dup = dup + 1 end
            seen[msg.id] = true
            if msg.result.content[1].text ~= "m" .. msg.id then wrong = wrong + 1 end
        end
        local missing = 0
        for i = 1, n do if not seen[i] then missing = missing + 1 end end
        ngx.say("accepted ", accepted, ", answered ", n - missing, ", duplicates ", dup,
                ", mismatched ", wrong)
        s:close()
    }
}
--- response_body
accepted 12, answered 12, duplicates 0, mismatched 0



=== TEST 11: POSTs that find a pooled connection cost no look-up of the host's socket; a killed host's sessions get 404, a new host's are reached
--- config
location = /t {
    content_by_lua_block {
        local native = require("apisix.plugins.mcp.bridge.native")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local socket_path, looked_up = native.socket_path, 0
        native.socket_path = function(token)
            looked_up = looked_up + 1
            return socket_path(token)
        end
        local s = assert(t.session("/mcp"))
        assert(s:initialize())
        local before, echoed = looked_up, 0
        for i = 1, 20 do
            if s:tool("echo", { text = "m" .. i }) == "m" .. i then echoed = echoed + 1 end
        end
        ngx.say("round trips: ", echoed, ", look-ups: ", looked_up - before)
        local dir = socket_path(s.id:sub(1, 16)):match("^(.*)/[^/]+$")
        t.kill(native.stats().host_pid, 9)
        local _, err = s:next_message()
        ngx.say("stream ended: ", err)
        local fresh = assert(t.session("/mcp"))
        ngx.say("a new host: ", (fresh:tool("echo", { text = "ok" })))
        -- The new host removes what the killed one left.
        local gone = false
        for _ = 1, 60 do
            local f = io.open(dir .. "/nginx")
            if not f then gone = true break end
            f:close()
            ngx.sleep(0.05)
        end
        ngx.say("the killed host's directory is gone: ", gone)
        before = looked_up
        local status, _, body = s:post({ jsonrpc = "2.0", method = "notifications/x" })
        ngx.say("a POST to the killed host's session: ", status, " ", (body:gsub("%s+$", "")),
                ", look-ups: ", looked_up - before)
        status, _, body = s:post({ jsonrpc = "2.0", method = "notifications/x" })
        ngx.say("and again: ", status, " ", (body:gsub("%s+$", "")))
        ngx.say("the new host's session: ", (fresh:tool("echo", { text = "still" })))
        native.socket_path = socket_path
        fresh:close()
        s:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
round trips: 20, look-ups: 0
stream ended: eof
a new host: ok
the killed host's directory is gone: true
a POST to the killed host's session: 404 {"error":"session not found"}, look-ups: 1
and again: 404 {"error":"session not found"}
the new host's session: still
processes left: none
idle: true
--- no_error_log eval
[$::errors_other_than_a_host_kills, "[crit]", "[emerg]"]



=== TEST 12: a remembered host's directory, taken by someone else once the host is gone: nothing connects there, the session gets 404
--- config
location = /t {
    content_by_lua_block {
        local native = require("apisix.plugins.mcp.bridge.native")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local s = assert(t.session("/mcp"))
        assert(s:initialize())
        assert(s:tool("echo", { text = "x" }) == "x")
        local path = native.socket_path(s.id:sub(1, 16))
        local dir = path:match("^(.*)/[^/]+$")
        t.kill(native.stats().host_pid, 9)
        s:next_message()
        local fresh = assert(t.session("/mcp"))
        for _ = 1, 60 do
            local f = io.open(dir .. "/nginx")
            if not f then break end
            f:close()
            ngx.sleep(0.05)
        end
        -- A directory of the same name that is not private, and a socket
        -- listening in it that reports whether anyone connected.
        local out = "$TEST_NGINX_PID_DIR/planted.out"
        os.remove(out)
        assert(t.run("mkdir -m 0755 " .. dir))
        os.execute("python3 -c 'import socket, sys\n"
                   .. "s = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(8)\n"
                   .. "s.settimeout(1.5)\ntry:\n    s.accept()\n    said = \"a connection\"\n"
                   .. "except socket.timeout:\n    said = \"no connection\"\n"
                   .. "open(sys.argv[2], \"w\").write(said)' " .. path .. " " .. out .. " &")
        for _ = 1, 100 do
            if t.run("test -S " .. path) then break end
            ngx.sleep(0.02)
        end
        local status, _, body = s:post({ jsonrpc = "2.0", method = "notifications/x" })
        ngx.say("a POST to the session: ", status, " ", (body:gsub("%s+$", "")))
        local said
        for _ = 1, 150 do
            local f = io.open(out)
            if f then said = f:read("*a") f:close() if said ~= "" then break end end
            ngx.sleep(0.02)
        end
        ngx.say("the planted socket saw: ", said)
        os.execute("rm -rf " .. dir)
        os.remove(out)
        ngx.say("the new host's session: ", (fresh:tool("echo", { text = "ok" })))
        fresh:close()
        s:close()
    }
}
--- response_body
a POST to the session: 404 {"error":"session not found"}
the planted socket saw: no connection
the new host's session: ok
--- no_error_log eval
[$::errors_other_than_a_host_kills, "[crit]", "[emerg]"]



=== TEST 13: a client slower than its backend whose every write completes within slow_client_timeout_ms keeps its session, however long the stream takes
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local s = assert(t.session("/slow"))
        assert(s:initialize())
        ngx.update_time()
        local start = ngx.now()
        local status = s:post({ jsonrpc = "2.0", id = 7, method = "tools/call",
                                params = { name = "flood", arguments = { count = 3000, size = 1024 } } })
        ngx.say("flood requested: ", status)
        local notes, result = 0, nil
        while true do
            local msg, err = s:next_message()
            if not msg then ngx.say("stream ended: ", err) break end
            if msg.id == 7 then result = msg.result.content[1].text break end
            notes = notes + 1
            -- About 2 MB/s: each write waits for the reader 10 ms at most.
            if notes % 20 == 0 then ngx.sleep(0.01) end
        end
        ngx.update_time()
        ngx.say("notifications: ", notes, ", then: ", result)
        ngx.say("the stream took over 3 times the limit: ", ngx.now() - start > 0.9)
        ngx.say("the session still works: ", (s:tool("echo", { text = "yes" })))
        s:close()
    }
}
--- response_body
flood requested: 202
notifications: 3000, then: flooded 3000
the stream took over 3 times the limit: true
the session still works: yes
--- timeout: 30



=== TEST 14: runaway backends (memory, CPU) are stopped by the route's limits: the call in flight gets an error, the session ends, another session keeps answering meanwhile, nothing is left, and the metrics name the limit
--- config
location = /t {
    content_by_lua_block {
        local metrics = require("apisix.plugins.mcp.bridge.metrics")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local other = assert(t.session("/limited"))
        assert(other:initialize())
        -- Calls `tool` in a new session and reads its stream to the end,
        -- while the other session is asked to echo every 50 ms.
        local function runaway(tool, args)
            local s = assert(t.session("/limited"))
            assert(s:initialize())
            local backend = s:backend_pid()
            local done = false
            local pinger = ngx.thread.spawn(function()
                local calls, slowest = 0, 0
                repeat
                    ngx.update_time()
                    local asked = ngx.now()
                    local text, err = other:tool("echo", { text = "ping" })
                    if text ~= "ping" then return "the other session: " .. tostring(err) end
                    ngx.update_time()
                    slowest = math.max(slowest, ngx.now() - asked)
                    calls = calls + 1
                    ngx.sleep(0.05)
                until done
                -- Not starved: no speed claim beyond that.
                return calls > 0 and slowest < 2
            end)
            s:post({ jsonrpc = "2.0", id = 7, method = "tools/call",
                     params = { name = tool, arguments = args } })
            local r = {}
            while true do
                local msg, err = s:next_message()
                if not msg then r.stream = err break end
                if msg.method == "notifications/stderr" then r.said = msg.params.content end
                if msg.id == 7 then r.answer = msg end
            end
            done = true
            r.prompt = select(2, ngx.thread.wait(pinger))
            r.gone = t.wait_gone(backend, 3)
            s:close()
            return r
        end
        local r = runaway("hog_memory", { max_mb = 1024 })
        local mb = tonumber(r.said:match("an allocation failed after (%d+) MiB"))
        ngx.say("memory: an allocation failed under 128 MiB: ", mb ~= nil and mb < 128)
        ngx.say("memory: the call: ", r.answer.error.code, " ", r.answer.error.message)
        ngx.say("memory: stream ", r.stream, ", the other session answered: ", tostring(r.prompt),
                ", backend gone: ", r.gone)
        for _, ignore in ipairs({ false, true }) do
            r = runaway("spin", { ignore_sigxcpu = ignore })
            ngx.say("cpu", ignore and " (SIGXCPU ignored)" or "", ": the call: ", r.answer.error.code,
                    " ", r.answer.error.message)
            ngx.say("cpu: stream ", r.stream, ", the other session answered: ", tostring(r.prompt),
                    ", backend gone: ", r.gone)
        end
        other:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "limited")
        local function count(reason)
            local line = 'mcp_bridge_sessions_ended_total{route="limited",transport="sse",reason="'
                         .. reason .. '"} '
            for _ = 1, 300 do
                local n = tonumber((metrics.text() or ""):match(line:gsub("%p", "%%%0") .. "(%d+)"))
                if n then return n end
                ngx.sleep(0.01)
            end
        end
        ngx.say("ended by the CPU limit: ", count("limit_cpu"), ", by the memory limit: ", count("limit_memory"))
    }
}
--- response_body
memory: an allocation failed under 128 MiB: true
memory: the call: -32000 the MCP server ended before responding (backend exited with status 1 on reaching its memory limit)
memory: stream eof, the other session answered: true, backend gone: true
cpu: the call: -32000 the MCP server ended before responding (backend killed by signal 24 on reaching its CPU time limit)
cpu: stream eof, the other session answered: true, backend gone: true
cpu (SIGXCPU ignored): the call: -32000 the MCP server ended before responding (backend killed by signal 9 on reaching its CPU time limit)
cpu: stream eof, the other session answered: true, backend gone: true
processes left: none
idle: true
ended by the CPU limit: 2, by the memory limit: 1
--- error_log eval
[qr/the MCP server "\S+" ended the session \d+ ms after it started: backend exited with status 1 on reaching its memory limit; its last stderr lines?: .*an allocation failed after \d+ MiB.*; it ran under limits: memory_mb 128, cpu_seconds 1/,
 qr/ended the session \d+ ms after it started: backend killed by signal 24 on reaching its CPU time limit; .*it ran under limits: memory_mb 128, cpu_seconds 1/]
--- timeout: 30



=== TEST 15: Streamable sessions and pooled (stateless) backends run under the limits too: a runaway's request gets an error, its session is gone, and the metrics name the CPU limit
--- config
location = /t {
    content_by_lua_block {
        local metrics = require("apisix.plugins.mcp.bridge.metrics")
        local t = require("mcptest")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/limited")
        assert(c:initialize())
        local _, err = c:tool("spin", {})
        local answer = require("cjson.safe").decode(err)
        ngx.say("session: ", answer.error.code, " ", answer.error.message)
        local reply = c:post({ jsonrpc = "2.0", id = 99, method = "ping" })
        ngx.say("the session afterwards: ", reply.status)
        local modern = t.client("/limited")
        local response = modern:modern("tools/call", { name = "spin", arguments = {} })
        ngx.say("stateless: ", response.error.code, " ", response.error.message)
        ngx.say("pooled backends gone: ", (t.wait_pool_empty(5)))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "limited")
        local text
        for _ = 1, 300 do
            text = metrics.text() or ""
            if text:find('transport="pool",reason="limit_cpu"', 1, true) then break end
            ngx.sleep(0.01)
        end
        for line in text:gmatch("[^\n]+") do
            if line:find("sessions_ended_total", 1, true) and not line:find("^#") then ngx.say(line) end
        end
    }
}
--- response_body
session: -32000 the MCP server ended before responding (backend killed by signal 24 on reaching its CPU time limit)
the session afterwards: 404
stateless: -32000 the MCP server ended before responding (backend killed by signal 24 on reaching its CPU time limit)
pooled backends gone: true
processes left: none
idle: true
mcp_bridge_sessions_ended_total{route="limited",transport="pool",reason="limit_cpu"} 1
mcp_bridge_sessions_ended_total{route="limited",transport="streamable",reason="limit_cpu"} 1
--- timeout: 30



=== TEST 16: what a worker remembers of strings clients send stays within its bound, and what it keeps is right
--- config
location = /t {
    content_by_lua_block {
        local memo = require("apisix.plugins.mcp.bridge.memo").new(3)
        for i = 1, 3 do memo:set("k" .. i, i) end
        memo:set("k3", 30)
        ngx.say("set again, not counted twice: ", memo.count, " k1=", memo:get("k1"), " k3=", memo:get("k3"))
        ngx.say("forgotten: ", memo:forget("k2"), ", again: ", tostring(memo:forget("k2")),
                ", count ", memo.count)
        memo:set("k4", 4)
        memo:set("k5", 5)
        ngx.say("over the bound, all forgotten but the newest: k1=", tostring(memo:get("k1")),
                " k5=", memo:get("k5"), " count ", memo.count)
        local most = 0
        for i = 1, 10000 do
            memo:set("endless" .. i, i)
            most = math.max(most, memo.count)
        end
        ngx.say("10000 new strings, most kept at once: ", most)
        memo:clear()
        ngx.say("cleared: ", tostring(memo:get("endless10000")), " count ", memo.count)
    }
}
--- response_body
set again, not counted twice: 3 k1=1 k3=30
forgotten: 2, again: nil, count 2
over the bound, all forgotten but the newest: k1=nil k5=5 count 1
10000 new strings, most kept at once: 3
cleared: nil count 0
