-- Route configuration: the schema (APISIX's mcp-bridge fields plus ours),
-- its validation with messages that name the field, defaults, and the spawn
-- request the host receives. Used by the APISIX plugin and the standalone
-- gateway alike, so both accept exactly the same configuration.
local cluster = require("apisix.plugins.mcp.bridge.cluster")
local json = require("apisix.plugins.mcp.bridge.json")

local concat = table.concat
local find = string.find
local floor = math.floor
local format = string.format
local gsub = string.gsub
local ipairs = ipairs
local match = string.match
local next = next
local pairs = pairs
local setmetatable = setmetatable
local sort = table.sort
local sub = string.sub
local tostring = tostring
local type = type
local ngx = ngx

local _M = {
    -- The lua_shared_dict that counts sessions across the node's workers.
    SLOTS_DICT = "mcp-bridge-slots",
}

local MiB = 1024 * 1024

_M.schema = {
    type = "object",
    properties = {
        base_uri = { type = "string", default = "",
                     description = "the Streamable HTTP endpoint, and prefix of the /sse and "
                                   .. "/message endpoints" },
        command = { type = "string", minLength = 1,
                    description = "program to run, found on PATH, never through a shell" },
        args = { type = "array", items = { type = "string" }, default = {},
                 description = "arguments of the program" },
        max_sessions = { type = "integer", minimum = 1, default = 100,
                         description = "live sessions of this route in one worker" },
        max_sessions_per_node = { type = "integer", minimum = 1,
                                  description = "live sessions of this route in all workers "
                                                .. "together (needs lua_shared_dict "
                                                .. "mcp-bridge-slots)" },
        max_sessions_per_cluster = { type = "integer", minimum = 1,
                                     description = "live sessions of this route on every node "
                                                   .. "of the cluster together (needs cluster "
                                                   .. "mode)" },
        slow_client_timeout_ms = { type = "integer", minimum = 100, maximum = 3600000,
                                   default = 30000,
                                   description = "longest a client may take to accept one "
                                                 .. "message before its session ends" },
        env = { type = "object", additionalProperties = { type = "string" }, default = {},
                description = "extra environment of the backend" },
        cwd = { type = "string", minLength = 1, description = "working directory of the backend" },
        kill_grace_ms = { type = "integer", minimum = 0, maximum = 60000, default = 2000,
                          description = "delay between SIGTERM and SIGKILL of the backend" },
        max_message_bytes = { type = "integer", minimum = 1024, maximum = 64 * MiB,
                              default = 4 * MiB,
                              description = "largest POST body and backend output line" },
        stderr = { type = "string", enum = { "notify", "log" }, default = "notify",
                   description = "where backend stderr lines go" },
        keepalive_interval_ms = { type = "integer", minimum = 100, maximum = 3600000,
                                  default = 15000,
                                  description = "interval of SSE keepalive comments" },
        session_home = { type = "boolean", default = false,
                         description = "give each session a private HOME and TMPDIR, "
                                       .. "removed when it ends" },
        session_idle_timeout_ms = { type = "integer", minimum = 1000, maximum = 604800000,
                                    default = 1800000,
                                    description = "a Streamable HTTP session without a request "
                                                  .. "this long ends" },
        session_max_lifetime_ms = { type = "integer", minimum = 1000, maximum = 2592000000,
                                    default = 86400000,
                                    description = "a Streamable HTTP session ends this long "
                                                  .. "after it started" },
        restart_on_crash = { type = "boolean", default = false,
                             description = "start a session's backend again when it crashes, "
                                           .. "replaying its initialize" },
        max_restarts = { type = "integer", minimum = 1, maximum = 100, default = 3,
                         description = "restarts of one session's backend within "
                                       .. "restart_window_ms; one more ends the session" },
        restart_window_ms = { type = "integer", minimum = 1000, maximum = 86400000,
                              default = 60000,
                              description = "the window max_restarts counts in" },
        allowed_hosts = { type = "array", items = { type = "string" },
                          description = "Host values a request may carry (\"name\" for any "
                                        .. "port, or \"name:port\"); unset: any" },
        allowed_origins = { type = "array", items = { type = "string" }, default = {},
                            description = "Origin values a request may carry besides origins "
                                          .. "on an allowed host; requests without Origin pass" },
        pool_min_idle = { type = "integer", minimum = 0, maximum = 64, default = 0,
                          description = "idle backends kept ready per route and consumer "
                                        .. "for stateless (2026-07-28) requests" },
        pool_max_per_key = { type = "integer", minimum = 1, maximum = 1024, default = 4,
                             description = "backends serving stateless requests of one route "
                                           .. "and consumer in one worker" },
        pool_max_per_worker = { type = "integer", minimum = 1, maximum = 4096, default = 16,
                                description = "backends serving stateless requests in one "
                                              .. "worker, all routes and consumers together" },
        pool_idle_timeout_ms = { type = "integer", minimum = 1000, maximum = 86400000,
                                 default = 300000,
                                 description = "an idle pooled backend this long ends" },
        pool_max_requests = { type = "integer", minimum = 1, maximum = 100000000,
                              default = 1000,
                              description = "a pooled backend ends after serving this many "
                                            .. "requests" },
        pool_max_age_ms = { type = "integer", minimum = 1000, maximum = 604800000,
                            default = 3600000,
                            description = "a pooled backend ends this long after it started, "
                                          .. "once idle" },
        pool_wait_ms = { type = "integer", minimum = 0, maximum = 60000, default = 5000,
                         description = "how long a stateless request waits for a pooled "
                                       .. "backend before 503" },
        input_wait_ms = { type = "integer", minimum = 1000, maximum = 600000, default = 60000,
                          description = "how long a stateless call that asked its client "
                                        .. "for input (input_required) waits for the retry" },
        max_parked_per_consumer = { type = "integer", minimum = 1, maximum = 4096, default = 16,
                                    description = "stateless calls of one consumer in one "
                                                  .. "worker that may wait for input at once" },
        max_parked_per_worker = { type = "integer", minimum = 1, maximum = 65536, default = 256,
                                  description = "stateless calls in one worker that may wait "
                                                .. "for input at once" },
        -- No default: a limit not given is the host's own (nginx's).
        limits = {
            type = "object",
            properties = {
                memory_mb = { type = "integer", minimum = 16, maximum = 16777216,
                              description = "address space of each backend process, in MiB "
                                            .. "(RLIMIT_AS)" },
                processes = { type = "integer", minimum = 1, maximum = 4194304,
                              description = "processes and threads of the backends' user at "
                                            .. "which a backend's fork fails (RLIMIT_NPROC, "
                                            .. "counted per user, not per backend)" },
                cpu_seconds = { type = "integer", minimum = 1, maximum = 31536000,
                                description = "CPU time of each backend process: SIGXCPU, then "
                                              .. "SIGKILL a CPU second later (RLIMIT_CPU)" },
                open_files = { type = "integer", minimum = 3, maximum = 1048576,
                               description = "open files of each backend process "
                                             .. "(RLIMIT_NOFILE)" },
            },
            additionalProperties = false,
            description = "resource limits of every backend process of the route, applied "
                          .. "before it starts; a limit not given is the host's own",
        },
    },
    required = { "command" },
}

local function is_array(t)
    local n = 0
    for k in pairs(t) do
        if type(k) ~= "number" or k < 1 or floor(k) ~= k then
            return false
        end
        n = n + 1
    end
    return n == #t
end

local function describe(v)
    if type(v) == "string" then
        return json.string(v)
    end
    return tostring(v)
end

local check_type

check_type = function(name, spec, v)
    local t = spec.type
    if t == "boolean" then
        if type(v) ~= "boolean" then
            return format("%s must be true or false, got %s", name, describe(v))
        end
    elseif t == "string" then
        if type(v) ~= "string" then
            return format("%s must be a string, got %s", name, describe(v))
        end
        if find(v, "\0", 1, true) then
            return format("%s must not contain a NUL byte", name)
        end
        if spec.minLength and #v < spec.minLength then
            return format("%s must not be empty", name)
        end
        if spec.enum then
            for _, allowed in ipairs(spec.enum) do
                if v == allowed then
                    return nil
                end
            end
            return format("%s must be one of \"%s\", got %s", name,
                          concat(spec.enum, "\", \""), describe(v))
        end
    elseif t == "integer" then
        if type(v) ~= "number" or v ~= v or floor(v) ~= v then
            return format("%s must be an integer, got %s", name, describe(v))
        end
        if spec.minimum and v < spec.minimum then
            return format("%s must be at least %d, got %s", name, spec.minimum, describe(v))
        end
        if spec.maximum and v > spec.maximum then
            return format("%s must be at most %d, got %s", name, spec.maximum, describe(v))
        end
    elseif t == "array" then
        if type(v) ~= "table" or not is_array(v) then
            return format("%s must be an array", name)
        end
        for i, item in ipairs(v) do
            local err = check_type(format("%s[%d]", name, i), spec.items, item)
            if err then
                return err
            end
        end
    elseif t == "object" then
        -- An empty table is a valid empty object (a decoded "[]" or "{}").
        if type(v) ~= "table" or (next(v) ~= nil and is_array(v)) then
            return format("%s must be an object", name)
        end
        if spec.properties then
            -- Members are checked by check_members, which names them.
            return nil
        end
        for k, item in pairs(v) do
            if type(k) ~= "string" then
                return format("%s must have string keys", name)
            end
            local err = check_type(format("%s[%s]", name, json.string(k)),
                                   spec.additionalProperties, item)
            if err then
                return err
            end
        end
    end
    return nil
end

-- How messages name a field: as the route attribute, or as the option of
-- `mcp-bridge serve` that sets it.
local CLI_NAMES = { command = "COMMAND", args = "ARGS" }

local function attribute_name(field)
    return field
end

local function option_name(field)
    -- A member of limits: limits.memory_mb is --limit-memory-mb.
    local limit = match(field, "^limits%.(.+)$")
    if limit then
        return "--limit-" .. gsub(limit, "_", "-")
    end
    return CLI_NAMES[field] or "--" .. gsub(field, "_", "-")
end

-- A function naming fields in messages: `style` "cli" names them as
-- `mcp-bridge serve` options, anything else as route attributes.
function _M.namer(style)
    return style == "cli" and option_name or attribute_name
end

-- The endpoints are matched against nginx's normalized $uri, so only a
-- plain absolute path without a trailing slash can ever match.
local function check_base_uri(v, name)
    if v == "" then
        return nil
    end
    if sub(v, 1, 1) ~= "/" or sub(v, -1) == "/" or find(v, "//", 1, true)
       or find(v, "[%s%%?#%c\\]") or find(v, "/%.%.?/") or find(v, "/%.%.?$") then
        return format("%s must be empty or a path such as \"/mcp\" (a leading \"/\", no "
                      .. "trailing \"/\", no \".\" or \"..\" segments, no spaces, \"%%\", "
                      .. "\"?\" or \"#\"), got %s", name("base_uri"), json.string(v))
    end
    return nil
end

local function check_env(env, name)
    for k in pairs(env) do
        if k == "" or find(k, "=", 1, true) then
            return format("%s key %s must be a non-empty name without \"=\"", name("env"),
                          json.string(k))
        end
    end
    return nil
end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do
        keys[#keys + 1] = tostring(k)
    end
    sort(keys)
    return keys
end

-- The members of an object field with fixed members (limits): each is
-- named `field.member`, and a member the schema does not know is refused.
local function check_members(field, spec, v, name)
    local unknown = {}
    for k in pairs(v) do
        if type(k) ~= "string" or spec.properties[k] == nil then
            unknown[#unknown + 1] = tostring(k)
        end
    end
    if #unknown > 0 then
        sort(unknown)
        return format("unknown field(s) in %s: %s (it knows %s)", name(field),
                      concat(unknown, ", "), concat(sorted_keys(spec.properties), ", "))
    end
    for _, k in ipairs(sorted_keys(spec.properties)) do
        if v[k] ~= nil then
            local err = check_type(name(field .. "." .. k), spec.properties[k], v[k])
            if err then
                return err
            end
        end
    end
    return nil
end

-- Checks `conf` and fills in defaults, in place. Returns true, or false and
-- a message naming the offending field; `name` (see namer) says how.
function _M.check(conf, name)
    name = name or attribute_name
    if type(conf) ~= "table" then
        return false, "configuration must be an object"
    end
    local properties = _M.schema.properties
    local unknown = {}
    for k in pairs(conf) do
        -- APISIX adds "_meta" (and other "_" fields) to every plugin's conf.
        if type(k) ~= "string" or (properties[k] == nil and sub(k, 1, 1) ~= "_") then
            unknown[#unknown + 1] = tostring(k)
        end
    end
    if #unknown > 0 then
        sort(unknown)
        return false, "unknown field(s): " .. concat(unknown, ", ")
    end
    for _, k in ipairs(_M.schema.required) do
        if conf[k] == nil then
            return false, format("%s is required", name(k))
        end
    end
    for k, spec in pairs(properties) do
        local v = conf[k]
        if v == nil and spec.default ~= nil then
            v = spec.default
            if type(v) == "table" then
                v = {}
            end
            conf[k] = v
        end
        if v ~= nil then
            local err = check_type(name(k), spec, v)
                        or (spec.properties and check_members(k, spec, v, name))
            if err then
                return false, err
            end
        end
    end
    local err = check_base_uri(conf.base_uri, name)
        or check_env(conf.env, name)
        or (conf.max_sessions_per_node and not (ngx and ngx.shared and ngx.shared[_M.SLOTS_DICT])
            and format("%s needs \"lua_shared_dict %s 1m;\" in the http "
                       .. "block (in APISIX: nginx_config.http.custom_lua_shared_dict)",
                       name("max_sessions_per_node"), _M.SLOTS_DICT))
        or (conf.max_sessions_per_cluster and not cluster.enabled()
            and format("%s needs cluster mode (in APISIX: plugin_attr.mcp-bridge.cluster)",
                       name("max_sessions_per_cluster")))
        or (conf.cwd and sub(conf.cwd, 1, 1) ~= "/"
            and format("%s must be an absolute path, got %s", name("cwd"), json.string(conf.cwd)))
    if err then
        return false, err
    end
    return true
end

local spawn_requests = setmetatable({}, { __mode = "k" })

local LIMIT_NAMES = sorted_keys(_M.schema.properties.limits.properties)

-- Every limit the host knows, null when not given (the host requires each).
local function limits_json(limits)
    local parts = {}
    for i, k in ipairs(LIMIT_NAMES) do
        local v = limits and limits[k]
        parts[i] = json.string(k) .. ":" .. (v and json.integer(v) or "null")
    end
    return "{" .. concat(parts, ",") .. "}"
end

-- The Spawn frame payload for a checked `conf` (cached per conf table).
function _M.spawn_request(conf)
    local cached = spawn_requests[conf]
    if cached then
        return cached
    end
    local parts = {
        '{"command":', json.string(conf.command),
        ',"args":', json.array_of_strings(conf.args),
        ',"env":', json.object_of_strings(conf.env),
        ',"kill_grace_ms":', json.integer(conf.kill_grace_ms),
        ',"max_message_bytes":', json.integer(conf.max_message_bytes),
        ',"stderr":', json.string(conf.stderr),
        ',"keepalive_interval_ms":', json.integer(conf.keepalive_interval_ms),
        ',"session_home":', conf.session_home and "true" or "false",
        ',"session_idle_timeout_ms":', json.integer(conf.session_idle_timeout_ms),
        ',"session_max_lifetime_ms":', json.integer(conf.session_max_lifetime_ms),
        ',"restart_on_crash":', conf.restart_on_crash and "true" or "false",
        ',"max_restarts":', json.integer(conf.max_restarts),
        ',"restart_window_ms":', json.integer(conf.restart_window_ms),
        ',"pool_min_idle":', json.integer(conf.pool_min_idle),
        ',"pool_max_per_key":', json.integer(conf.pool_max_per_key),
        ',"pool_max_per_worker":', json.integer(conf.pool_max_per_worker),
        ',"pool_idle_timeout_ms":', json.integer(conf.pool_idle_timeout_ms),
        ',"pool_max_requests":', json.integer(conf.pool_max_requests),
        ',"pool_max_age_ms":', json.integer(conf.pool_max_age_ms),
        ',"pool_wait_ms":', json.integer(conf.pool_wait_ms),
        ',"input_wait_ms":', json.integer(conf.input_wait_ms),
        ',"max_parked_per_consumer":', json.integer(conf.max_parked_per_consumer),
        ',"max_parked_per_worker":', json.integer(conf.max_parked_per_worker),
        ',"limits":', limits_json(conf.limits),
    }
    if conf.cwd then
        parts[#parts + 1] = ',"cwd":'
        parts[#parts + 1] = json.string(conf.cwd)
    end
    parts[#parts + 1] = "}"
    local request = concat(parts)
    spawn_requests[conf] = request
    return request
end

return _M
