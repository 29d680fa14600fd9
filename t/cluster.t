# Cluster mode on one node: session ids name their owner and are signed
# with the cluster's secret; a request for another node's session goes to
# that node (here a stand-in owner, a second server of this nginx that
# records what reached it) and its answer comes back unchanged; forged,
# foreign and looping ids get 404 without any connection out; an owner
# that is gone gives 404 at once. No Redis runs here: forwarding goes on
# without it. The three-node tests with Redis are ci/cluster.py's.
use t::MCPBridge 'no_plan';

our $Settings = <<'_EOC_';
cluster = {
    name = "t",
    node_address = "127.0.0.1:$TEST_NGINX_SERVER_PORT",
    secret = "a secret of the test cluster",
    redis = "redis://127.0.0.1:$TEST_NGINX_RAND_PORT_2",
    lease_ms = 1000,
},
_EOC_

# The stand-in owner: answers as an owner node would, and keeps what it got.
our $Owner = <<'_EOC_';
lua_shared_dict owner 1m;
# A node or Redis that is down refuses connections: the bridge says so itself.
lua_socket_log_errors off;
server {
    listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
    location / {
        content_by_lua_block {
            local cjson = require("cjson.safe")
            local seen = ngx.shared.owner
            seen:incr("requests", 1, 0)
            ngx.req.read_body()
            local h = ngx.req.get_headers()
            seen:set("last", cjson.encode({
                method = ngx.req.get_method(), uri = ngx.var.request_uri,
                body = ngx.req.get_body_data() or "", host = h.host,
                forwarded = h["x-mcp-bridge-forwarded"], custom = h["x-custom"],
                session = h["mcp-session-id"], length = h["content-length"],
            }))
            local method = ngx.req.get_method()
            if ngx.var.uri == "/mcp/message" then
                ngx.status = 202
                return ngx.exit(202)
            end
            if method == "DELETE" then
                return ngx.exit(200)
            end
            if method == "GET" and h["x-slow"] then
                -- A stream that would go on for 10 s: when its client (the
                -- forwarding node) goes, it says so.
                ngx.on_abort(function()
                    seen:set("aborted", ngx.now())
                    ngx.exit(499)
                end)
                ngx.header["Content-Type"] = "text/event-stream"
                for i = 1, 100 do
                    ngx.print("event: message\ndata: {\"n\":", i, "}\n\n")
                    ngx.flush(true)
                    ngx.sleep(0.1)
                end
                return
            end
            if method == "GET" then
                ngx.header["Content-Type"] = "text/event-stream"
                ngx.header["X-Owner"] = "yes"
                for i = 1, 3 do
                    ngx.print("event: message\ndata: {\"n\":", i, "}\n\n")
                    ngx.flush(true)
                    ngx.sleep(0.05)
                end
                return
            end
            ngx.status = 418
            ngx.header["Content-Type"] = "application/json"
            ngx.header["Mcp-Session-Id"] = h["mcp-session-id"]
            ngx.header["X-Owner"] = "yes"
            ngx.print('{"owner":"answered"}')
        }
    }
}
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value("settings", $Settings) unless defined $block->settings;
    $block->set_value("http_config", $Owner . ($block->http_config // ""));
});

run_tests();

__DATA__

=== TEST 1: ids: a node's own ids resolve to its host's id; another node's to that node; anything else to nothing
--- config
location = /t {
    content_by_lua_block {
        local cluster = require("apisix.plugins.mcp.bridge.cluster")
        local id_of = require("clustertest").id
        local host_id = string.rep("0123456789abcdef", 3)
        local own = cluster.tag(host_id)
        ngx.say("own id: ", own:find("^" .. host_id .. "%-%x+%-" .. string.rep("%x", 32) .. "$") ~= nil)
        ngx.say("own resolves: ", cluster.resolve(own), " ", select(2, cluster.resolve(own)) == host_id)
        local other = id_of(host_id, { node_address = "10.1.2.3:9080" })
        ngx.say("other node's: ", cluster.resolve(other), " ", select(2, cluster.resolve(other)))
        local v6 = id_of(host_id, { node_address = "[fd00::1]:9080" })
        ngx.say("IPv6 node's: ", cluster.resolve(v6), " ", select(2, cluster.resolve(v6)))
        local flipped = other:sub(1, -2) .. (other:sub(-1) == "0" and "1" or "0")
        local cases = {
            { "a flipped MAC digit", flipped },
            { "another secret", id_of(host_id, { node_address = "10.1.2.3:9080", secret = "another secret, as long" }) },
            { "another cluster", id_of(host_id, { node_address = "10.1.2.3:9080", name = "other" }) },
            { "the host's id alone", host_id },
            { "upper case", other:upper() },
            { "no MAC", other:sub(1, -34) },
            { "an odd address", host_id .. "-abc-" .. string.rep("0", 32) },
            { "a made-up address", host_id .. "-" .. ("evil.example:80"):gsub(".", function(c) return ("%02x"):format(c:byte()) end) .. "-" .. other:sub(-32) },
            { "empty", "" },
            { "huge", string.rep("a", 5000) },
        }
        for _, case in ipairs(cases) do
            ngx.say(case[1], ": ", tostring(cluster.resolve(case[2])))
        end
    }
}
--- response_body
own id: true
own resolves: local true
other node's: remote 10.1.2.3:9080
IPv6 node's: remote [fd00::1]:9080
a flipped MAC digit: nil
another secret: nil
another cluster: nil
the host's id alone: nil
upper case: nil
no MAC: nil
an odd address: nil
a made-up address: nil
empty: nil
huge: nil



=== TEST 2: the cluster settings are checked, each problem named (the Redis URL as the registry reads it)
--- config
location = /t {
    content_by_lua_block {
        local cluster = require("apisix.plugins.mcp.bridge.cluster")
        local function try(changes)
            ngx.say(require("clustertest").check(changes))
        end
        try({ name = "a b" })
        try({ node_address = false })
        try({ node_address = "10.0.0.1" })
        try({ node_address = "10.0.0.1:70000" })
        try({ secret = "short" })
        try({ redis = "http://x" })
        try({ redis = "redis://127.0.0.1:notaport" })
        try({ lease_ms = 100 })
        try({ lease_ms = 1500 })
        ngx.say(select(2, cluster.check("x")))
    }
}
--- response_body
cluster.name must be 1 to 64 letters, digits, '.', '_' or '-'
cluster.node_address is required ("host:port" where the other nodes reach this node)
cluster.node_address must be "host:port", got "10.0.0.1"
cluster.node_address must be "host:port", got "10.0.0.1:70000"
cluster.secret must be at least 16 bytes
cluster.redis bad Redis URL "http://x": the scheme must be redis:// (expected redis://[:password@]host:port[/db])
cluster.redis bad Redis URL "redis://127.0.0.1:notaport": missing or invalid host (expected redis://[:password@]host:port[/db])
cluster.lease_ms must be an integer from 500 to 3600000, got 100
ok
cluster settings must be a table



=== TEST 3: max_sessions_per_cluster needs cluster mode
--- settings
--- config
location = /t {
    content_by_lua_block {
        local config = require("apisix.plugins.mcp.bridge.config")
        local cluster = require("apisix.plugins.mcp.bridge.cluster")
        ngx.say(select(2, config.check({ command = "x", max_sessions_per_cluster = 3 })))
        assert(cluster.configure({ node_address = "127.0.0.1:1", secret = "0123456789abcdef",
                                   redis = "redis://127.0.0.1:1" }))
        ngx.say(config.check({ command = "x", max_sessions_per_cluster = 3 }))
        ngx.say(select(2, config.check({ command = "x", max_sessions_per_cluster = 0 })))
        cluster.configure(nil)
    }
}
--- response_body
max_sessions_per_cluster needs cluster mode (in APISIX: plugin_attr.mcp-bridge.cluster)
true
max_sessions_per_cluster must be at least 1, got 0



=== TEST 4: a request for another node's session goes to that node, and its answer comes back unchanged
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local cjson = require("cjson.safe")
        local cluster = require("apisix.plugins.mcp.bridge.cluster")
        local id = require("clustertest").id(string.rep("ab", 24),
                                             { node_address = "127.0.0.1:$TEST_NGINX_RAND_PORT_1" })
        local seen = ngx.shared.owner
        local function last() return cjson.decode(seen:get("last")) end

        -- Streamable POST: status, headers and body pass both ways.
        local c = t.client("/mcp")
        c.session = id
        local body = '{"jsonrpc":"2.0","id":5,"method":"tools/list"}'
        local reply = c:request("POST", body, { headers = { "X-Custom: kept" } })
        local got = last()
        ngx.say("POST: ", reply.status, " ", reply.headers["x-owner"], " ", reply.headers["mcp-session-id"] == id,
                " ", reply.body)
        ngx.say("owner got: ", got.method, " ", got.uri, " session ", got.session == id, " custom ", got.custom,
                " host ", got.host, " forwarded by ", got.forwarded:match("^%S+"), " (signed ",
                cluster.is_forwarded(got.forwarded), ") length ", got.length)
        ngx.say("body: ", got.body)

        -- A stream: each event as the owner sends it.
        local stream = c:get()
        ngx.say("GET: ", stream.status, " ", stream.headers["content-type"], " ", stream.headers["x-owner"])
        for _ = 1, 3 do
            local m = stream:next_message()
            ngx.say("  event ", m and m.n)
        end
        ngx.say("  then ", select(2, stream:next_message()))
        stream:close()

        -- DELETE, and an HTTP+SSE POST with its query.
        ngx.say("DELETE: ", c:delete().status, " ", last().method)
        local status = t.http("POST", "/mcp/message?sessionId=" .. id, '{"jsonrpc":"2.0","method":"x"}',
                              { "Content-Type: application/json" })
        got = last()
        ngx.say("SSE POST: ", status, " owner got ", got.uri == "/mcp/message?sessionId=" .. id, " ", got.body)

        -- A body sent in chunks (read from the raw connection here).
        reply = c:request("POST", nil, { chunks = { '{"jsonrpc":"2.0",', '"id":6,"method":"ping"}' } })
        ngx.say("chunked POST: ", reply.status, " ", reply.body, " owner got ", last().body)
        ngx.say("requests at the owner: ", seen:get("requests"))
    }
}
--- response_body
POST: 418 yes true {"owner":"answered"}
owner got: POST /mcp session true custom kept host localhost forwarded by 127.0.0.1:$TEST_NGINX_SERVER_PORT (signed true) length 46
body: {"jsonrpc":"2.0","id":5,"method":"tools/list"}
GET: 200 text/event-stream yes
  event 1
  event 2
  event 3
  then eof
DELETE: 200 DELETE
SSE POST: 202 owner got true {"jsonrpc":"2.0","method":"x"}
chunked POST: 418 {"owner":"answered"} owner got {"jsonrpc":"2.0","id":6,"method":"ping"}
requests at the owner: 5



=== TEST 5: forged, foreign and looping ids get 404 from both transports, and nothing connects to the address they name
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local function id_of(changes)
            return require("clustertest").id(string.rep("cd", 24), changes)
        end
        local owner = "127.0.0.1:$TEST_NGINX_RAND_PORT_1"
        local good = id_of({ node_address = owner })
        local ids = {
            { "forged MAC", good:sub(1, -2) .. (good:sub(-1) == "0" and "1" or "0") },
            { "another cluster's", id_of({ node_address = owner, name = "other" }) },
            { "another secret's", id_of({ node_address = owner, secret = "not the secret of this cluster" }) },
            { "no tag", string.rep("cd", 24) },
        }
        local c = t.client("/mcp")
        for _, case in ipairs(ids) do
            c.session = case[2]
            local post = c:post({ jsonrpc = "2.0", id = 1, method = "ping" })
            local status = t.http("POST", "/mcp/message?sessionId=" .. case[2], "{}",
                                  { "Content-Type: application/json" })
            ngx.say(case[1], ": ", t.refusal(post), "; SSE POST ", status)
        end
        -- A forwarded request whose id names another node again: not passed on.
        c.session = good
        local looped = c:post({ jsonrpc = "2.0", id = 2, method = "ping" },
                              { headers = { "X-MCP-Bridge-Forwarded: 127.0.0.1:1" } })
        local status = t.http("POST", "/mcp/message?sessionId=" .. good, "{}",
                              { "Content-Type: application/json", "X-MCP-Bridge-Forwarded: 127.0.0.1:1" })
        ngx.say("looped: ", t.refusal(looped), "; SSE POST ", status)
        ngx.say("requests at the owner: ", ngx.shared.owner:get("requests") or 0)
        require("clustertest").say_metrics("mcp_bridge_forward_refusals_total")
    }
}
location = /-/metrics {
    content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").metrics() }
}
--- response_body
forged MAC: 404 -32001 Session not found; SSE POST 404
another cluster's: 404 -32001 Session not found; SSE POST 404
another secret's: 404 -32001 Session not found; SSE POST 404
no tag: 404 -32001 Session not found; SSE POST 404
looped: 404 -32001 Session not found; SSE POST 404
requests at the owner: 0
mcp_bridge_forward_refusals_total{route="mcp",reason="forged"} 8
mcp_bridge_forward_refusals_total{route="mcp",reason="loop"} 2



=== TEST 6: a session whose owner is gone gets 404 at once, on both transports
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local id = require("clustertest").id(string.rep("ef", 24),
                                             { node_address = "127.0.0.1:$TEST_NGINX_RAND_PORT_3" })
        local c = t.client("/mcp")
        c.session = id
        ngx.update_time()
        local started = ngx.now()
        local post = c:post({ jsonrpc = "2.0", id = 3, method = "ping" })
        local get = c:get({ stream = false })
        local status = t.http("POST", "/mcp/message?sessionId=" .. id, "{}", { "Content-Type: application/json" })
        ngx.update_time()
        ngx.say("POST: ", t.refusal(post))
        ngx.say("GET: ", t.refusal(get))
        ngx.say("SSE POST: ", status)
        ngx.say("at once: ", ngx.now() - started < 1)
        require("clustertest").say_metrics("mcp_bridge_forward")
    }
}
location = /-/metrics {
    content_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").metrics() }
}
--- response_body
POST: 404 -32001 Session not found id 3
GET: 404 -32001 Session not found
SSE POST: 404
at once: true
mcp_bridge_forward_refusals_total{route="mcp",reason="owner_gone"} 3



=== TEST 7: this node's own sessions, on both transports, under ids that name it
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local cluster = require("apisix.plugins.mcp.bridge.cluster")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp")
        assert(c:initialize({ protocol = "2025-06-18" }))
        local kind, host_id = cluster.resolve(c.session)
        ngx.say("Streamable id: ", kind, " ", #host_id)
        local text = c:tool("echo", { text = "here" })
        ngx.say("call: ", text)
        ngx.say("DELETE: ", c:delete().status)
        ngx.say("after: ", t.refusal(c:post({ jsonrpc = "2.0", id = 9, method = "ping" })))

        local stream = assert(t.session("/mcp"))
        local id = stream.endpoint:match("sessionId=(.+)$")
        ngx.say("SSE id: ", (cluster.resolve(id)))
        assert(stream:initialize())
        ngx.say("SSE call: ", (stream:tool("echo", { text = "there" })))
        stream:close()
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
        ngx.say("requests at the owner: ", ngx.shared.owner:get("requests") or 0)
    }
}
--- response_body
Streamable id: local 48
call: here
DELETE: 200
after: 404 -32001 Session not found id 9
SSE id: local
SSE call: there
processes left: none
idle: true
requests at the owner: 0



=== TEST 8: the retry of a stateless call goes to the node holding the call; a state whose node tag is forged goes nowhere else
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local cluster = require("apisix.plugins.mcp.bridge.cluster")
        local prefix = require("clustertest").state_prefix({ node_address = "127.0.0.1:$TEST_NGINX_RAND_PORT_1" })
        ngx.say("own prefix names this node: ", (cluster.resolve_state(cluster.state_prefix() .. "x")))
        local c = t.client("/mcp")
        local function retry(state)
            local r, reply = c:modern("tools/call", { name = "echo", arguments = {}, requestState = state,
                                                     inputResponses = { a = { action = "decline" } } })
            return reply or r
        end
        local there = retry(prefix .. "0123456789abcdef.00.00")
        ngx.say("held elsewhere: ", there.status, " ", there.body)
        local flipped = prefix:sub(1, -3) .. (prefix:sub(-2, -2) == "0" and "1" or "0") .. "~"
        local forged = retry(flipped .. "0123456789abcdef.00.00")
        ngx.say("forged tag: ", t.refusal(forged))
        ngx.say("requests at the owner: ", ngx.shared.owner:get("requests"))
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
own prefix names this node: local
held elsewhere: 418 {"owner":"answered"}
forged tag: 400 -32602 requestState is unknown, used, expired or of another request; call again without it id 2
requests at the owner: 1
processes left: none
idle: true



=== TEST 9: a request another node forwarded skips the Host check, which that node made; a forged mark does not
--- routes
mcp = { base_uri = "/mcp", command = "$TEST_NGINX_FIXTURE", args = { "--pid-dir", "$TEST_NGINX_PID_DIR" },
        allowed_hosts = { "localhost" }, kill_grace_ms = 500 },
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local cluster = require("apisix.plugins.mcp.bridge.cluster")
        t.clear("$TEST_NGINX_PID_DIR")
        local c = t.client("/mcp", { host = "node-b.internal:9080" })
        local function init(mark)
            local reply = c:request("POST", '{"jsonrpc":"2.0","id":1,"method":"initialize","params":'
                .. '{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}',
                { session = false, headers = mark and { "X-MCP-Bridge-Forwarded: " .. mark } or nil })
            return reply.status, reply.headers["mcp-session-id"]
        end
        ngx.say("another Host: ", (init()))
        ngx.say("with a made-up mark: ", (init("127.0.0.1:1 " .. string.rep("0", 32))))
        local mark = cluster.forwarded_mark()
        ngx.say("with another cluster's mark: ", (init(mark:sub(1, -2) .. (mark:sub(-1) == "0" and "1" or "0"))))
        local status, id = init(mark)
        ngx.say("forwarded by a node: ", status)
        c.session = id
        ngx.say("DELETE, forwarded: ", c:delete({ headers = { "X-MCP-Bridge-Forwarded: " .. mark } }).status)
        t.say_cleanup("$TEST_NGINX_PID_DIR", "mcp")
    }
}
--- response_body
another Host: 403
with a made-up mark: 403
with another cluster's mark: 403
forwarded by a node: 200
DELETE, forwarded: 200
processes left: none
idle: true



=== TEST 10: a client that leaves a forwarded stream closes the connection to the owner, which sees it leave
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local c = t.client("/mcp")
        c.session = require("clustertest").id(string.rep("ab", 24),
                                              { node_address = "127.0.0.1:$TEST_NGINX_RAND_PORT_1" })
        local stream = c:get({ headers = { "X-Slow: 1" } })
        ngx.say("GET: ", stream.status, ", first event ", stream:next_message().n)
        ngx.update_time()
        local left = ngx.now()
        stream:close()
        local seen = ngx.shared.owner
        for _ = 1, 40 do
            if seen:get("aborted") then break end
            ngx.sleep(0.05)
        end
        local aborted = seen:get("aborted")
        ngx.say("the owner saw its client leave: ", aborted ~= nil,
                ", within a second: ", aborted ~= nil and aborted - left < 1)
    }
}
--- response_body
GET: 200, first event 1
the owner saw its client leave: true, within a second: true
