# Route configuration: every field's validation names the field, defaults
# are filled in, and the APISIX plugin file delegates to the same checks.
use t::MCPBridge 'no_plan';

run_tests();

__DATA__

=== TEST 1: defaults are filled in (only command given)
--- config
location = /t {
    content_by_lua_block {
        local config = require("apisix.plugins.mcp.bridge.config")
        local conf = { command = "srv" }
        assert(config.check(conf))
        for _, k in ipairs({ "base_uri", "max_sessions", "kill_grace_ms", "max_message_bytes",
                             "stderr", "keepalive_interval_ms", "slow_client_timeout_ms",
                             "max_sessions_per_node" }) do
            ngx.say(k, "=", tostring(conf[k]))
        end
        ngx.say("args=", #conf.args, " env=", next(conf.env) == nil and "{}" or "?")
        ngx.say("cwd=", tostring(conf.cwd))
    }
}
--- response_body
base_uri=
max_sessions=100
kill_grace_ms=2000
max_message_bytes=4194304
stderr=notify
keepalive_interval_ms=15000
slow_client_timeout_ms=30000
max_sessions_per_node=nil
args=0 env={}
cwd=nil



=== TEST 2: every invalid field is refused with a message naming it
--- config
location = /t {
    content_by_lua_block {
        local config = require("apisix.plugins.mcp.bridge.config")
        local cases = {
            {},
            { command = "" },
            { command = 42 },
            { command = "a\0b" },
            { command = "x", args = "a b" },
            { command = "x", args = { "ok", 3 } },
            { command = "x", args = { a = "b" } },
            { command = "x", max_sessions = 0 },
            { command = "x", max_sessions = 1.5 },
            { command = "x", max_sessions = "10" },
            { command = "x", env = { "a", "b" } },
            { command = "x", env = { A = 1 } },
            { command = "x", env = { ["A=B"] = "c" } },
            { command = "x", env = { [""] = "c" } },
            { command = "x", cwd = "relative/dir" },
            { command = "x", cwd = "" },
            { command = "x", kill_grace_ms = -1 },
            { command = "x", kill_grace_ms = 60001 },
            { command = "x", max_message_bytes = 1023 },
            { command = "x", max_message_bytes = 67108865 },
            { command = "x", stderr = "loud" },
            { command = "x", keepalive_interval_ms = 99 },
            { command = "x", base_uri = "mcp" },
            { command = "x", base_uri = "/mcp/" },
            { command = "x", base_uri = "/a//b" },
            { command = "x", base_uri = "/a/../b" },
            { command = "x", base_uri = "/a/." },
            { command = "x", base_uri = "/a b" },
            { command = "x", base_uri = "/a%2Fb" },
            { command = "x", base_uri = "/a?b" },
            { command = "x", max_session = 5 },
            "not a table",
            { command = "x", max_sessions_per_node = 0 },
            { command = "x", max_sessions_per_node = 2.5 },
            { command = "x", slow_client_timeout_ms = 99 },
            { command = "x", slow_client_timeout_ms = 3600001 },
            { command = "x", restart_on_crash = "yes" },
            { command = "x", max_restarts = 0 },
            { command = "x", restart_window_ms = 999 },
        }
        for _, conf in ipairs(cases) do
            local ok, err = config.check(conf)
            ngx.say(ok and "accepted" or err)
        end
    }
}
--- response_body
command is required
command must not be empty
command must be a string, got 42
command must not contain a NUL byte
args must be an array
args[2] must be a string, got 3
args must be an array
max_sessions must be at least 1, got 0
max_sessions must be an integer, got 1.5
max_sessions must be an integer, got "10"
env must be an object
env["A"] must be a string, got 1
env key "A=B" must be a non-empty name without "="
env key "" must be a non-empty name without "="
cwd must be an absolute path, got "relative/dir"
cwd must not be empty
kill_grace_ms must be at least 0, got -1
kill_grace_ms must be at most 60000, got 60001
max_message_bytes must be at least 1024, got 1023
max_message_bytes must be at most 67108864, got 67108865
stderr must be one of "notify", "log", got "loud"
keepalive_interval_ms must be at least 100, got 99
base_uri must be empty or a path such as "/mcp" (a leading "/", no trailing "/", no "." or ".." segments, no spaces, "%", "?" or "#"), got "mcp"
base_uri must be empty or a path such as "/mcp" (a leading "/", no trailing "/", no "." or ".." segments, no spaces, "%", "?" or "#"), got "/mcp/"
base_uri must be empty or a path such as "/mcp" (a leading "/", no trailing "/", no "." or ".." segments, no spaces, "%", "?" or "#"), got "/a//b"
base_uri must be empty or a path such as "/mcp" (a leading "/", no trailing "/", no "." or ".." segments, no spaces, "%", "?" or "#"), got "/a/../b"
base_uri must be empty or a path such as "/mcp" (a leading "/", no trailing "/", no "." or ".." segments, no spaces, "%", "?" or "#"), got "/a/."
base_uri must be empty or a path such as "/mcp" (a leading "/", no trailing "/", no "." or ".." segments, no spaces, "%", "?" or "#"), got "/a b"
base_uri must be empty or a path such as "/mcp" (a leading "/", no trailing "/", no "." or ".." segments, no spaces, "%", "?" or "#"), got "/a%2Fb"
base_uri must be empty or a path such as "/mcp" (a leading "/", no trailing "/", no "." or ".." segments, no spaces, "%", "?" or "#"), got "/a?b"
unknown field(s): max_session
configuration must be an object
max_sessions_per_node must be at least 1, got 0
max_sessions_per_node must be an integer, got 2.5
slow_client_timeout_ms must be at least 100, got 99
slow_client_timeout_ms must be at most 3600000, got 3600001
restart_on_crash must be true or false, got "yes"
max_restarts must be at least 1, got 0
restart_window_ms must be at least 1000, got 999



=== TEST 3: valid edge values are accepted
--- config
location = /t {
    content_by_lua_block {
        local config = require("apisix.plugins.mcp.bridge.config")
        local cases = {
            { command = "x", base_uri = "" },
            { command = "x", base_uri = "/a/b-c_d.e" },
            { command = "x", args = {}, env = {}, cwd = "/" },
            { command = "x", max_sessions = 1, kill_grace_ms = 0, max_message_bytes = 1024 },
            { command = "x", stderr = "log", keepalive_interval_ms = 100 },
            { command = "x", env = { PATH = "/bin", HOME = "/tmp" } },
            { command = "x", _meta = { disable = false } },
            { command = "x", max_sessions_per_node = 1, slow_client_timeout_ms = 100 },
        }
        for _, conf in ipairs(cases) do
            local ok, err = config.check(conf)
            ngx.say(ok and "accepted" or err)
        end
    }
}
--- response_body
accepted
accepted
accepted
accepted
accepted
accepted
accepted
accepted



=== TEST 4: the spawn request is JSON the host understands, arrays and objects intact
--- config
location = /t {
    content_by_lua_block {
        local cjson = require("cjson.safe")
        local config = require("apisix.plugins.mcp.bridge.config")
        local conf = { command = "srv \"quoted\"", args = {}, env = {},
                       cwd = "/tmp/a/b" }
        assert(config.check(conf))
        local req = config.spawn_request(conf)
        ngx.say(req)
        conf = { command = "x", args = { "-a", "b\nc", "/d" }, env = { K = "v\1" } }
        assert(config.check(conf))
        local decoded = cjson.decode(config.spawn_request(conf))
        ngx.say(decoded.args[2] == "b\nc", " ", decoded.args[3], " ", decoded.env.K == "v\1")
    }
}
--- response_body
{"command":"srv \"quoted\"","args":[],"env":{},"kill_grace_ms":2000,"max_message_bytes":4194304,"stderr":"notify","keepalive_interval_ms":15000,"session_home":false,"session_idle_timeout_ms":1800000,"session_max_lifetime_ms":86400000,"restart_on_crash":false,"max_restarts":3,"restart_window_ms":60000,"pool_min_idle":0,"pool_max_per_key":4,"pool_max_per_worker":16,"pool_idle_timeout_ms":300000,"pool_max_requests":1000,"pool_max_age_ms":3600000,"pool_wait_ms":5000,"input_wait_ms":60000,"max_parked_per_consumer":16,"max_parked_per_worker":256,"limits":{"cpu_seconds":null,"memory_mb":null,"open_files":null,"processes":null},"cwd":"/tmp/a/b"}
true /d true



=== TEST 5: an invalid route stops nginx from starting, naming the route and the field
--- config
location = /t {
    content_by_lua_block {
        local standalone = require("apisix.plugins.mcp.bridge.standalone")
        local ok, err = pcall(standalone.define, "broken", { command = "x", max_sessions = 0 })
        ngx.say(err)
        ok, err = pcall(standalone.define, "", { command = "x" })
        ngx.say(err)
    }
}
--- response_body
mcp-bridge: invalid configuration of route "broken": max_sessions must be at least 1, got 0
mcp-bridge: a route needs a name



=== TEST 6: the APISIX plugin exposes the schema and checks with the same rules, and refuses a lua module with the body filter's bug
--- config
location = /t {
    content_by_lua_block {
        -- Just enough of APISIX to load the plugin file.
        package.loaded["apisix.plugin"] = {
            plugin_attr = function(name) return { runtime_dir = nil, seen = name } end,
        }
        local plugin = require("apisix.plugins.mcp-bridge")
        -- APISIX master's own runtime first (Debian's module is older).
        local real = ngx.config.ngx_lua_version
        ngx.config.ngx_lua_version = 10031
        ngx.say(plugin.name, " ", plugin.priority, " ", plugin.schema.required[1])
        ngx.say(plugin.schema.properties.max_sessions.default)
        local conf = { command = "srv", args = { "a" } }
        ngx.say(tostring(plugin.check_schema(conf)), " ", conf.max_sessions, " ", conf.base_uri == "")
        local ok, err = plugin.check_schema({ command = "srv", max_sessions = -1 })
        ngx.say(tostring(ok), " ", err)
        ok, err = plugin.check_schema({ base_uri = "/x" })
        ngx.say(tostring(ok), " ", err)
        -- A lua module with the body filter's bug refuses routes, unless the
        -- build is said to carry the fix.
        ngx.config.ngx_lua_version = 10028
        ok, err = plugin.check_schema({ command = "srv" })
        ngx.say(tostring(ok), " ", err)
        package.loaded["apisix.plugin"].plugin_attr = function()
            return { lua_module_has_body_filter_fix = true }
        end
        ngx.say(tostring(plugin.check_schema({ command = "srv" })))
        ngx.config.ngx_lua_version = real
    }
}
--- response_body
mcp-bridge 510 command
100
true 100 true
false max_sessions must be at least 1, got -1
false command is required
false mcp-bridge needs lua-nginx-module 0.10.29 or newer (OpenResty 1.29 or apisix-runtime 1.3 and later); this nginx has 0.10.28, whose body filter breaks event streams to slow clients. If it carries the fix (lua-nginx-module commit 0581262), set plugin_attr.mcp-bridge.lua_module_has_body_filter_fix: true
true



=== TEST 7: the plugin doc's attribute table matches the schema (names, types, defaults, required)
--- config
location = /t {
    content_by_lua_block {
        local config = require("apisix.plugins.mcp.bridge.config")
        local f = assert(io.open("$TEST_NGINX_ROOT/docs/mcp-bridge.md"))
        local doc = f:read("*a")
        f:close()
        local section = doc:match("## Attributes\n(.-)\n## ")
        local documented = {}
        for name, typ, required, default in section:gmatch("\n| (%S+) | (%S+) | (%a+) |%s*([^|]-)%s*|") do
            if name ~= "Name" and name ~= "---" then
                documented[name] = { typ = typ, required = required, default = default }
            end
        end
        local required = {}
        for _, k in ipairs(config.schema.required) do required[k] = true end
        -- Members of an object field with fixed members have rows of their
        -- own, named field.member.
        local fields = {}
        for name, spec in pairs(config.schema.properties) do
            fields[name] = spec
            for member, member_spec in pairs(spec.properties or {}) do
                fields[name .. "." .. member] = member_spec
            end
        end
        local problems = 0
        for name, spec in pairs(fields) do
            local d = documented[name]
            local typ = spec.type == "array" and "array[" .. spec.items.type .. "]" or spec.type
            local default = spec.default
            if type(default) == "table" then
                default = spec.type == "array" and "[]" or "{}"
            elseif type(default) == "string" then
                default = '"' .. default .. '"'
            end
            local want = { typ = typ, required = required[name] and "True" or "False",
                           default = default ~= nil and tostring(default) or "" }
            if not d then
                problems = problems + 1
                ngx.say("undocumented: ", name)
            else
                for _, k in ipairs({ "typ", "required", "default" }) do
                    if d[k] ~= want[k] then
                        problems = problems + 1
                        ngx.say(name, " ", k, ": doc says ", d[k], ", schema says ", want[k])
                    end
                end
                documented[name] = nil
            end
        end
        for name in pairs(documented) do
            problems = problems + 1
            ngx.say("documented but not in the schema: ", name)
        end
        ngx.say("problems: ", problems)
    }
}
--- response_body
problems: 0



=== TEST 8: max_sessions_per_node without the shared dict is refused, naming what to add
--- no_slots_dict: 1
--- config
location = /t {
    content_by_lua_block {
        local config = require("apisix.plugins.mcp.bridge.config")
        ngx.say(select(2, config.check({ command = "x", max_sessions_per_node = 3 })))
        ngx.say(config.check({ command = "x" }))
    }
}
--- response_body
max_sessions_per_node needs "lua_shared_dict mcp-bridge-slots 1m;" in the http block (in APISIX: nginx_config.http.custom_lua_shared_dict)
true



=== TEST 9: limits: each member is checked and named, an unknown member is refused, none is filled in
--- config
location = /t {
    content_by_lua_block {
        local config = require("apisix.plugins.mcp.bridge.config")
        local cases = {
            { command = "x", limits = 5 },
            { command = "x", limits = { 64 } },
            { command = "x", limits = { memory_mb = -1 } },
            { command = "x", limits = { memory_mb = 15 } },
            { command = "x", limits = { cpu_seconds = "2" } },
            { command = "x", limits = { processes = 0.5 } },
            { command = "x", limits = { processes = 0 } },
            { command = "x", limits = { open_files = 2 } },
            { command = "x", limits = { cpu_seconds = 31536001 } },
            { command = "x", limits = { memory = 64, cpu_seconds = 1 } },
            { command = "x", limits = {} },
            { command = "x", limits = { memory_mb = 16, processes = 1, cpu_seconds = 1, open_files = 3 } },
        }
        for _, conf in ipairs(cases) do
            local ok, err = config.check(conf)
            ngx.say(ok and "accepted" or err)
        end
        local conf = { command = "x" }
        assert(config.check(conf))
        ngx.say("limits not given: ", tostring(conf.limits))
        -- As `mcp-bridge serve` names them.
        ngx.say(select(2, config.check({ command = "x", limits = { memory_mb = 1 } }, config.namer("cli"))))
        ngx.say(select(2, config.check({ command = "x", limits = { cpu_seconds = 0 } }, config.namer("cli"))))
    }
}
--- response_body
limits must be an object
limits must be an object
limits.memory_mb must be at least 16, got -1
limits.memory_mb must be at least 16, got 15
limits.cpu_seconds must be an integer, got "2"
limits.processes must be an integer, got 0.5
limits.processes must be at least 1, got 0
limits.open_files must be at least 3, got 2
limits.cpu_seconds must be at most 31536000, got 31536001
unknown field(s) in limits: memory (it knows cpu_seconds, memory_mb, open_files, processes)
accepted
accepted
limits not given: nil
--limit-memory-mb must be at least 16, got 1
--limit-cpu-seconds must be at least 1, got 0



=== TEST 10: the spawn request carries every limit, null for those not given
--- config
location = /t {
    content_by_lua_block {
        local config = require("apisix.plugins.mcp.bridge.config")
        local conf = { command = "x", limits = { memory_mb = 64, cpu_seconds = 2 } }
        assert(config.check(conf))
        ngx.say(config.spawn_request(conf):match(',"limits":(%b{})'))
        conf = { command = "x" }
        assert(config.check(conf))
        ngx.say(config.spawn_request(conf):match(',"limits":(%b{})'))
    }
}
--- response_body
{"cpu_seconds":2,"memory_mb":64,"open_files":null,"processes":null}
{"cpu_seconds":null,"memory_mb":null,"open_files":null,"processes":null}
