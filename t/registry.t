# The cluster registry (registry.lua) and its Redis client (redis.lua)
# against a real redis-server: node leases, the cluster-wide ceiling, what
# happens while Redis is down and after it comes back, and that nothing is
# left in Redis once every node is gone. Several "nodes" (registry.new) run
# in one nginx, with leases of 600 ms.
#
# The suite runs its own redis-server on a free port, under a supervisor
# that starts it again a second after it stops (the tests stop it with
# SHUTDOWN NOSAVE), and stops both at the end.
use t::MCPBridge;
use File::Path qw(make_path);
use IO::Socket::INET ();
use POSIX ();
use Time::HiRes qw(sleep time);

my $redis_server = (grep { -x $_ } "/usr/bin/redis-server",
                    map { "$_/redis-server" } split /:/, $ENV{PATH} // "")[0];
my $redis_cli = (grep { -x $_ } "/usr/bin/redis-cli",
                 map { "$_/redis-cli" } split /:/, $ENV{PATH} // "")[0];
if (!$redis_server || !$redis_cli) {
    plan(skip_all => "redis-server and redis-cli are needed (apt-get install redis-server)");
}
plan('no_plan');

my $redis_port = do {
    my $probe = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
        // die "no free port for redis-server: $!\n";
    $probe->sockport;
};
$ENV{TEST_NGINX_REDIS_PORT} = $redis_port;
env_to_nginx("TEST_NGINX_REDIS_PORT");
my $redis_dir = $ENV{TEST_NGINX_SERVROOT} || "$ENV{TEST_NGINX_ROOT}/t/servroot";
make_path($redis_dir);

# The supervisor: runs redis-server, and again one second after it exits,
# until it gets SIGTERM (then it stops redis-server and exits).
my $supervisor = fork() // die "fork: $!\n";
if ($supervisor == 0) {
    my ($child, $stopping);
    $SIG{TERM} = sub { $stopping = 1; kill 'TERM', $child if $child };
    until ($stopping) {
        $child = fork();
        if (defined $child && $child == 0) {
            open STDOUT, '>', '/dev/null';
            exec({ $redis_server } $redis_server, '--save', '', '--appendonly', 'no',
                 '--bind', '127.0.0.1', '--port', $redis_port, '--dir', $redis_dir)
                or POSIX::_exit(127);
        }
        waitpid($child, 0) if $child;
        $child = undef;
        sleep 1 unless $stopping;
    }
    POSIX::_exit(0);
}

sub stop_redis {
    return unless $supervisor;
    kill 'TERM', $supervisor;
    waitpid($supervisor, 0);
    $supervisor = undef;
}
END { stop_redis() }

my $deadline = time + 10;
until (IO::Socket::INET->new(PeerAddr => "127.0.0.1:$redis_port", Timeout => 1)) {
    die "redis-server did not start on port $redis_port\n" if time > $deadline;
    sleep 0.05;
}

no_shuffle();
run_tests();

# nginx is gone with every node it ran: a lease later nothing is left.
sleep 1;
my $left = `$redis_cli -p $redis_port --scan`;
is($left, "", "no key is left in Redis a lease after every node is gone");
stop_redis();

__DATA__

=== TEST 1: RESP replies: statuses, errors, integers, nil bulks, nested arrays, garbage
--- config
location = /t {
    content_by_lua_block {
        local redis = require("apisix.plugins.mcp.bridge.redis")
        local function sock(data)
            local pos = 1
            return { receive = function(_, pat)
                if pat == "*l" then
                    local e = data:find("\r\n", pos, true)
                    if not e then return nil, "closed" end
                    local line = data:sub(pos, e - 1)
                    pos = e + 2
                    return line
                end
                if pos + pat - 1 > #data then return nil, "closed" end
                local s = data:sub(pos, pos + pat - 1)
                pos = pos + pat
                return s
            end }
        end
        local function show(v)
            if v == ngx.null then return "null" end
            if type(v) ~= "table" then
                return type(v) .. ":" .. tostring(v):gsub("\r", "\\r"):gsub("\n", "\\n")
            end
            if v.err then return "error:" .. v.err end
            local parts = {}
            for i = 1, #v do parts[i] = show(v[i]) end
            return "[" .. table.concat(parts, ",") .. "]"
        end
        for _, raw in ipairs({
            "+OK\r\n", "-ERR wrong type\r\n", ":42\r\n", ":-3\r\n", "$-1\r\n", "$0\r\n\r\n",
            "$8\r\na\r\nb c d\r\n", "*-1\r\n", "*0\r\n",
            "*3\r\n*2\r\n:1\r\n$1\r\na\r\n-NOSCRIPT gone\r\n$-1\r\n",
            "$5\r\nabc\r\n", "$3\r\nabcde", ":x\r\n", "$-7\r\n", "?what\r\n",
            "*2\r\n:1\r\n", "",
        }) do
            local v, err, kind = redis.read_reply(sock(raw))
            if v == nil then
                ngx.say(kind, ": ", err)
            else
                ngx.say(show(v))
            end
        end
        ngx.say(redis.encode({ "SET", "k", "a b", 5 }, 4) == "*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na b\r\n$1\r\n5\r\n")
    }
}
--- response_body
string:OK
reply: ERR wrong type
number:42
number:-3
null
string:
string:a\r\nb c d
null
[]
[[number:1,string:a],error:NOSCRIPT gone,null]
connection: reading from Redis: closed
connection: bulk reply not ended by CRLF
connection: bad integer in Redis reply: x
connection: bad length in Redis reply: -7
connection: unexpected Redis reply: ?what
connection: reading from Redis: closed
connection: reading from Redis: closed
true



=== TEST 2: configure refuses malformed settings with a message naming the field
--- config
location = /t {
    content_by_lua_block {
        local registry = require("apisix.plugins.mcp.bridge.registry")
        local redis = require("apisix.plugins.mcp.bridge.redis")
        local good = { node_address = "10.0.0.1:9080", redis = "redis://127.0.0.1:6379" }
        local function with(k, v)
            local c = {}
            for kk, vv in pairs(good) do c[kk] = vv end
            c[k] = v
            return c
        end
        for _, c in ipairs({
            with("redis", "http://127.0.0.1:6379"),
            with("redis", "redis://"),
            with("redis", "redis://127.0.0.1:"),
            with("redis", "redis://127.0.0.1:70000"),
            with("redis", "redis://127.0.0.1:6379/x"),
            with("redis", "redis://secret@127.0.0.1:6379"),
            with("redis", "redis://:@127.0.0.1:6379"),
            with("redis", "redis://host name:1"),
            with("redis", 6379),
            with("redis", nil),
            with("node_address", nil),
            with("node_address", "10.0.0.1"),
            with("node_address", "10.0.0.1:0"),
            with("name", "a b"),
            with("name", ""),
            with("lease_ms", 100),
            with("lease_ms", 1500.5),
            with("lease_ms", "5000"),
        }) do
            local ok, err = registry.configure(c)
            ngx.say(tostring(ok), " ", err)
        end
        ngx.say("enabled after refusals: ", registry.enabled())

        assert(registry.configure(good))
        ngx.say("enabled: ", registry.enabled())
        assert(registry.configure(nil))
        ngx.say("enabled after nil: ", registry.enabled(), " ", (select(2, registry.acquire("r", 1))))

        local conf = assert(redis.parse_url("redis://:p%40ss:w@localhost:6380/3"))
        ngx.say(conf.host, " ", conf.port, " ", conf.db, " ", conf.password, " ", tostring(conf.user))
        conf = assert(redis.parse_url("redis://me:pw@[::1]"))
        ngx.say(conf.host, " ", conf.port, " ", conf.db, " ", conf.password, " ", conf.user)
    }
}
--- response_body
nil cluster.redis bad Redis URL "http://127.0.0.1:6379": the scheme must be redis:// (expected redis://[:password@]host:port[/db])
nil cluster.redis bad Redis URL "redis://": missing or invalid host (expected redis://[:password@]host:port[/db])
nil cluster.redis bad Redis URL "redis://127.0.0.1:": missing port after the colon (expected redis://[:password@]host:port[/db])
nil cluster.redis bad Redis URL "redis://127.0.0.1:70000": port out of range (expected redis://[:password@]host:port[/db])
nil cluster.redis bad Redis URL "redis://127.0.0.1:6379/x": the database must be a number (expected redis://[:password@]host:port[/db])
nil cluster.redis bad Redis URL "redis://secret@127.0.0.1:6379": the password must follow a colon (redis://:password@...) (expected redis://[:password@]host:port[/db])
nil cluster.redis bad Redis URL "redis://:@127.0.0.1:6379": empty password (expected redis://[:password@]host:port[/db])
nil cluster.redis bad Redis URL "redis://host name:1": missing or invalid host (expected redis://[:password@]host:port[/db])
nil cluster.redis bad Redis URL "6379": not a string (expected redis://[:password@]host:port[/db])
nil cluster.redis is required (redis://[:password@]host:port[/db])
nil cluster.node_address is required ("host:port" where the other nodes reach this node)
nil cluster.node_address must be "host:port", got "10.0.0.1"
nil cluster.node_address must be "host:port", got "10.0.0.1:0"
nil cluster.name must be 1 to 64 letters, digits, '.', '_' or '-'
nil cluster.name must be 1 to 64 letters, digits, '.', '_' or '-'
nil cluster.lease_ms must be an integer from 500 to 3600000, got 100
nil cluster.lease_ms must be an integer from 500 to 3600000, got 1500.5
nil cluster.lease_ms must be an integer from 500 to 3600000, got 5000
enabled after refusals: false
enabled: true
enabled after nil: false cluster mode is off
127.0.0.1 6380 3 p@ss:w nil
::1 6379 0 pw me



=== TEST 3: a node's lease: its key has a TTL of at most a lease, and is gone within a lease once its renewals stop (kill -9)
--- config
location = /t {
    content_by_lua_block {
        local rt = require("registrytest")
        local a = rt.node("lease", "10.0.0.1:9080")
        local b = rt.node("lease", "10.0.0.2:9080")
        ngx.sleep(0.3)
        local client = rt.client()
        local ttl = client:command("PTTL", "mcp-bridge:lease:node:10.0.0.1:9080")
        ngx.say("A's lease: ", ttl > 0 and ttl <= 600)
        ngx.say("keys: ", rt.keys("lease"))
        ngx.say("A alive for B: ", b.reg:node_alive("10.0.0.1:9080"))
        ngx.say("never registered: ", b.reg:node_alive("10.0.0.9:9080"))
        ngx.say("B alive for itself: ", b.reg:node_alive("10.0.0.2:9080"))
        -- Renewals keep the lease alive past its length.
        ngx.sleep(0.8)
        ngx.say("A after 1.1 s: ", (client:command("EXISTS", "mcp-bridge:lease:node:10.0.0.1:9080")))

        a.reg:stop()
        ngx.sleep(0.65)
        ngx.say("keys after A stopped: ", rt.keys("lease"))
        -- A fresh instance: nothing remembered.
        local c = rt.node("lease", "10.0.0.3:9080")
        ngx.say("A alive for C: ", c.reg:node_alive("10.0.0.1:9080"))
        ngx.sleep(0.3)
        ngx.say("report of B: nodes ", b.reg:report().nodes, ", redis ", b.reg:report().redis)
        b.reg:stop()
        c.reg:stop()
    }
}
--- response_body
A's lease: true
keys: mcp-bridge:lease:node:10.0.0.1:9080 mcp-bridge:lease:node:10.0.0.2:9080
A alive for B: true
never registered: false
B alive for itself: true
A after 1.1 s: 1
keys after A stopped: mcp-bridge:lease:node:10.0.0.2:9080
A alive for C: false
report of B: nodes 2, redis up



=== TEST 4: the ceiling holds across nodes; releases and a lapsed node's sessions come back
--- config
location = /t {
    content_by_lua_block {
        local rt = require("registrytest")
        local a = rt.node("ceiling", "10.0.0.1:9080")
        local b = rt.node("ceiling", "10.0.0.2:9080")
        ngx.sleep(0.05)
        ngx.say("A: ", a.acquire("r", 3), " ", a.acquire("r", 3))
        ngx.say("B: ", b.acquire("r", 3), " ", b.acquire("r", 3))
        ngx.say("A at max: ", a.acquire("r", 3))
        ngx.say("other route: ", b.acquire("other", 3))
        ngx.say("fields: ", rt.fields("ceiling", "r"))
        ngx.sleep(0.3)
        ngx.say("report of A: ", a.reg:report().sessions.r, " nodes ", a.reg:report().nodes)

        assert(b.release("r"))
        ngx.say("after B released: ", rt.fields("ceiling", "r"), "; A: ", a.acquire("r", 3),
                " ", a.acquire("r", 3))

        -- Redis forgot the script (a restart, SCRIPT FLUSH): EVAL instead.
        assert(rt.client():command("SCRIPT", "FLUSH"))
        ngx.say("after SCRIPT FLUSH, B: ", b.acquire("r", 4))

        -- A is killed holding 3: they come back once its lease lapsed.
        a.reg:stop()
        ngx.say("B before A's lease lapsed: ", b.acquire("r", 3))
        ngx.sleep(0.7)
        ngx.say("B after: ", b.acquire("r", 3), " ", b.acquire("r", 3), " ", b.acquire("r", 3))
        ngx.say("fields: ", rt.fields("ceiling", "r"))

        -- Releasing every session removes B's field, and an empty hash goes.
        for _ = 1, 3 do assert(b.release("r")) end
        assert(b.release("other"))
        ngx.say("keys: ", rt.keys("ceiling"))
        b.reg:stop()
    }
}
--- response_body
A: true true
B: true false
A at max: false
other route: true
fields: 10.0.0.1:9080=2 10.0.0.2:9080=1
report of A: 3 nodes 2
after B released: 10.0.0.1:9080=2; A: true false
after SCRIPT FLUSH, B: true
B before A's lease lapsed: false
B after: true true false
fields: 10.0.0.2:9080=3
keys: mcp-bridge:ceiling:node:10.0.0.2:9080



=== TEST 5: renewals re-assert the node's counts (from node_slots by default) and drop lapsed nodes' fields
--- config
location = /t {
    content_by_lua_block {
        local rt = require("registrytest")
        local registry = require("apisix.plugins.mcp.bridge.registry")
        local node_slots = require("apisix.plugins.mcp.node_slots")
        -- The default source of a node's counts: the node_slots dict.
        local a = assert(registry.new(rt.settings("reassert", "10.0.0.1:9080")))
        assert(a:start())
        assert(node_slots.acquire("r", nil))
        assert(node_slots.acquire("r", nil))
        ngx.sleep(0.3)
        ngx.say("A's field from node_slots: ", rt.fields("reassert", "r"))
        -- Drift (a lost release, a flushed hash) is corrected by the next renewal.
        assert(rt.client():command("HSET", "mcp-bridge:reassert:sessions:r", "10.0.0.1:9080", 7))
        -- A field of a node without a lease goes at the next renewal too.
        assert(rt.client():command("HSET", "mcp-bridge:reassert:sessions:r", "10.0.0.8:9080", 5))
        ngx.sleep(0.3)
        ngx.say("after a renewal: ", rt.fields("reassert", "r"))
        node_slots.release("r")
        node_slots.release("r")
        ngx.sleep(0.3)
        ngx.say("after node_slots released both: ", rt.keys("reassert"))
        a:stop()
    }
}
--- response_body
A's field from node_slots: 10.0.0.1:9080=2
after a renewal: 10.0.0.1:9080=2
after node_slots released both: mcp-bridge:reassert:node:10.0.0.1:9080



=== TEST 6: Redis down: acquire and node_alive answer nil, err at once and the node serves; back up: the node re-registers and its counts hold the ceiling again
--- config
location = /ping {
    return 200 "pong\n";
}
location = /t {
    content_by_lua_block {
        local rt = require("registrytest")
        local registry = require("apisix.plugins.mcp.bridge.registry")
        local node_slots = require("apisix.plugins.mcp.node_slots")
        local a = assert(registry.new(rt.settings("outage", "10.0.0.1:9080")))
        assert(a:start())
        local b = rt.node("outage", "10.0.0.2:9080")
        ngx.sleep(0.05)
        for _ = 1, 2 do
            assert(a:acquire("r", 3) == true)
            assert(node_slots.acquire("r", nil))
        end
        ngx.say("B: ", b.acquire("r", 3), " ", b.acquire("r", 3))

        -- Stop Redis (the suite's supervisor starts it again a second later).
        rt.client():command("SHUTDOWN", "NOSAVE")
        local took, ok, err = rt.timed(a.acquire, a, "r", 3)
        ngx.say("acquire: ", ok, " (", err ~= nil, ") returned: ", took < 1)
        -- Not tried again at once: a Redis that times out would cost every request.
        ok, err = a:acquire("r", 3)
        ngx.say("acquire again: ", ok, " ", err:match("^Redis not retried yet after: ") ~= nil)
        local c = assert(registry.new(rt.settings("outage", "10.0.0.3:9080")))
        took, ok, err = rt.timed(c.node_alive, c, "10.0.0.1:9080")
        ngx.say("node_alive: ", ok, " (", err ~= nil, ") returned: ", took < 1)
        ngx.say("release: ", (b.release("r")))
        b.held.r = b.held.r + 1 -- the release did not happen: B still counts it

        -- The node serves while Redis is away.
        local sock = ngx.socket.tcp()
        assert(sock:connect("127.0.0.1", ngx.var.server_port))
        assert(sock:send("GET /ping HTTP/1.0\r\nHost: x\r\n\r\n"))
        local answer = sock:receive("*a")
        ngx.say("served: ", answer:match("^HTTP/1.1 200") ~= nil and answer:match("pong") ~= nil)
        ngx.sleep(0.3)
        ngx.say("report while down: ", a:report().redis)

        ngx.say("Redis back: ", rt.wait_redis(5))
        ngx.sleep(0.5)
        ngx.say("keys: ", rt.keys("outage"))
        ngx.say("fields: ", rt.fields("outage", "r"))
        ngx.say("B at max again: ", b.acquire("r", 3))
        local report = a:report()
        ngx.say("report: ", report.redis, " nodes ", report.nodes, " r ", report.sessions.r)
        a:stop()
        b.reg:stop()
        node_slots.release("r")
        node_slots.release("r")
    }
}
--- response_body
B: true false
acquire: nil (true) returned: true
acquire again: nil true
node_alive: nil (true) returned: true
release: nil
served: true
report while down: down
Redis back: true
keys: mcp-bridge:outage:node:10.0.0.1:9080 mcp-bridge:outage:node:10.0.0.2:9080 mcp-bridge:outage:sessions:r
fields: 10.0.0.1:9080=2 10.0.0.2:9080=1
B at max again: false
report: up nodes 2 r 3
--- timeout: 10
--- no_error_log
runtime error
renewal failed
[crit]
[alert]
[emerg]
--- grep_error_log eval
qr/cluster registry: Redis (unreachable|reachable again)/
--- grep_error_log_out
cluster registry: Redis unreachable
cluster registry: Redis unreachable
cluster registry: Redis reachable again
cluster registry: Redis reachable again



=== TEST 7: a password (AUTH) and a database (SELECT) are sent on new connections only, which are pooled
--- config
location = /t {
    content_by_lua_block {
        local rt = require("registrytest")
        local redis = require("apisix.plugins.mcp.bridge.redis")
        local admin = rt.client()
        local function connections()
            local info = assert(admin:command("INFO", "stats"))
            return tonumber(info:match("total_connections_received:(%d+)"))
        end
        assert(admin:command("CONFIG", "SET", "requirepass", "s3cret"))
        local port = os.getenv("TEST_NGINX_REDIS_PORT")
        local good = redis.new(assert(redis.parse_url("redis://:s3cret@127.0.0.1:" .. port .. "/3")))
        local bad = redis.new(assert(redis.parse_url("redis://:wrong@127.0.0.1:" .. port .. "/3")))
        local none = redis.new(assert(redis.parse_url("redis://127.0.0.1:" .. port .. "/3")))
        ngx.say("wrong password: ", (select(2, bad:command("PING"))))
        ngx.say("no password: ", (select(2, none:command("SET", "mcp-bridge:db:k", "v"))))
        -- The admin's pooled connection was authenticated before requirepass.
        local before = connections()
        for _ = 1, 20 do
            assert(good:command("SET", "mcp-bridge:db:k", "v", "PX", 2000))
        end
        ngx.say("new connections for 20 commands: ", connections() - before)
        ngx.say("in db 3: ", good:command("EXISTS", "mcp-bridge:db:k"),
                ", in db 0: ", (admin:command("EXISTS", "mcp-bridge:db:k")))
        assert(good:command("DEL", "mcp-bridge:db:k"))
        assert(good:command("CONFIG", "SET", "requirepass", ""))
    }
}
--- response_body
wrong password: Redis AUTH: WRONGPASS invalid username-password pair or user is disabled.
no password: Redis SELECT 3: NOAUTH Authentication required.
new connections for 20 commands: 1
in db 3: 1, in db 0: 0
--- no_error_log
[error]



=== TEST 8: no key is left once every node is gone
--- config
location = /t {
    content_by_lua_block {
        local rt = require("registrytest")
        local nodes = {}
        for i = 1, 3 do
            nodes[i] = rt.node("gone", "10.0.0." .. i .. ":9080")
        end
        ngx.sleep(0.05)
        for i = 1, 3 do
            assert(nodes[i].acquire("r" .. i, 5))
            assert(nodes[i].acquire("shared", 5))
        end
        ngx.sleep(0.3)
        ngx.say("nodes: ", nodes[1].reg:report().nodes, ", shared: ",
                nodes[1].reg:report().sessions.shared)
        ngx.say("keys: ", select(2, rt.keys("gone"):gsub(" ", " ")) + 1)
        for i = 1, 3 do
            nodes[i].reg:stop()
        end
        ngx.sleep(0.65)
        ngx.say("keys after a lease: [", rt.keys("gone"), "]")
    }
}
--- response_body
nodes: 3, shared: 3
keys: 7
keys after a lease: []



=== TEST 9: one worker of a node renews per period, and another takes over when it is gone
--- config
location = /t {
    content_by_lua_block {
        local rt = require("registrytest")
        local registry = require("apisix.plugins.mcp.bridge.registry")
        -- Two instances of the same node stand for two of its workers.
        local renewals = { 0, 0 }
        local workers = {}
        for i = 1, 2 do
            workers[i] = assert(registry.new(rt.settings("lock", "10.0.0.1:9080"), {
                counts = function() renewals[i] = renewals[i] + 1; return {} end }))
            assert(workers[i]:start())
        end
        ngx.sleep(1.05)
        local total = renewals[1] + renewals[2]
        -- 200 ms periods: about 6 renewals in 1.05 s, not 12.
        ngx.say("renewals in about 5 periods: ", total >= 4 and total <= 8 or total)
        local before = renewals[1] + renewals[2]
        workers[1]:stop()
        workers[2]:stop()
        workers[3] = assert(registry.new(rt.settings("lock", "10.0.0.1:9080"), {
            counts = function() renewals[3] = (renewals[3] or 0) + 1; return {} end }))
        assert(workers[3]:start())
        ngx.sleep(1.05)
        ngx.say("renewals by the first two after they stopped: ", renewals[1] + renewals[2] - before)
        ngx.say("by the one left: ", renewals[3] >= 4 and renewals[3] <= 7 or renewals[3])
        ngx.say("lease kept: ", (rt.client():command("EXISTS", "mcp-bridge:lock:node:10.0.0.1:9080")))
        workers[3]:stop()
    }
}
--- response_body
renewals in about 5 periods: true
renewals by the first two after they stopped: 0
by the one left: true
lease kept: 1



=== TEST 10: a node killed and started again within its lease forgets its previous life's counts
--- config
location = /t {
    content_by_lua_block {
        local rt = require("registrytest")
        local a = rt.node("again", "10.0.0.1:9080")
        local b = rt.node("again", "10.0.0.2:9080")
        ngx.sleep(0.05)
        ngx.say("A: ", a.acquire("r", 3), " ", a.acquire("r", 3), "; B: ", b.acquire("r", 3))
        ngx.say("fields: ", rt.fields("again", "r"))
        -- kill -9 of A, and A again at once: a new nginx, a new slots dict.
        a.reg:stop()
        ngx.shared["mcp-bridge-slots"]:flush_all()
        local again = rt.node("again", "10.0.0.1:9080")
        ngx.sleep(0.1)
        ngx.say("after A started again: ", rt.fields("again", "r"))
        ngx.say("B takes the slots A's previous life held: ", b.acquire("r", 3), " ", b.acquire("r", 3),
                " ", b.acquire("r", 3))
        again.reg:stop()
        b.reg:stop()
    }
}
--- response_body
A: true true; B: true
fields: 10.0.0.1:9080=2 10.0.0.2:9080=1
after A started again: 10.0.0.2:9080=1
B takes the slots A's previous life held: true true false
