# Multi round-trip requests (2026-07-28) in front of a legacy stdio server:
# its mid-call elicitation, sampling and roots requests reach stateless
# clients as input_required results, and a retry with the answers and the
# requestState resumes the parked call. The state is signed and good once,
# for its route, method and parameters, until input_wait_ms; parked calls
# are bounded, give way to live requests, and leave nothing behind when the
# client never retries, the backend dies, or the worker reloads.
use t::MCPBridge 'no_plan';

my $fixture = $ENV{TEST_NGINX_FIXTURE};
my $pids = $ENV{TEST_NGINX_PID_DIR};

add_block_preprocessor(sub {
    my $block = shift;
    if (!defined $block->routes) {
        $block->set_value("routes", <<_EOC_);
conf = { base_uri = "/conf", command = "$fixture", args = { "--conformance", "--pid-dir", "$pids" },
         kill_grace_ms = 300, pool_idle_timeout_ms = 1000 },
other = { base_uri = "/other", command = "$fixture", args = { "--conformance", "--pid-dir", "$pids" },
          kill_grace_ms = 300, pool_idle_timeout_ms = 1000 },
short = { base_uri = "/short", command = "$fixture", args = { "--conformance", "--pid-dir", "$pids" },
          input_wait_ms = 1000, pool_max_per_key = 1, kill_grace_ms = 300, pool_idle_timeout_ms = 1000 },
bounded = { base_uri = "/bounded", command = "$fixture", args = { "--conformance", "--pid-dir", "$pids" },
            max_parked_per_consumer = 2, max_parked_per_worker = 3, kill_grace_ms = 300,
            pool_idle_timeout_ms = 1000 },
bounded2 = { base_uri = "/bounded2", command = "$fixture", args = { "--conformance", "--pid-dir", "$pids" },
             max_parked_per_consumer = 2, max_parked_per_worker = 3, kill_grace_ms = 300,
             pool_idle_timeout_ms = 1000 },
tight = { base_uri = "/tight", command = "$fixture", args = { "--conformance", "--pid-dir", "$pids" },
          pool_max_per_key = 1, pool_wait_ms = 3000, kill_grace_ms = 300, pool_idle_timeout_ms = 1000 },
_EOC_
    }
    if (!defined $block->no_error_log && !defined $block->error_log) {
        $block->set_value("no_error_log", "[error]\n[crit]\n[alert]\nunknown process\n");
    }
    $block->set_value("timeout", 20) unless defined $block->timeout;
});

run_tests();

__DATA__

=== TEST 1: a call that needs input comes back input_required, holds its backend parked, and the retry completes it; the state is good once, and each round gets a new one
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        local caps = { capabilities = { elicitation = {}, sampling = {}, roots = {} } }
        local c = t.client("/conf")
        local name = "test_input_required_result_elicitation"
        local first, reply = c:modern("tools/call", { name = name, arguments = {} }, caps)
        local r = first.result
        local asked = r.inputRequests.user_name
        ngx.say("first: ", reply.status, " ", r.resultType, ", asks ", asked.method, " \"",
                asked.params.message, "\", key hint left out: ", asked.params._meta == nil)
        local stats = t.host_stats()
        ngx.say("state names this host: ", r.requestState:sub(1, 16) == stats.token,
                "; parked ", stats.parked, ", pooled ", stats.pooled)
        local answer = { user_name = { action = "accept", content = { name = "Alice" } } }
        local done = c:modern("tools/call", { name = name, arguments = {}, inputResponses = answer,
                                              requestState = r.requestState }, caps)
        ngx.say("retry: ", done.result.resultType, " ", done.result.content[1].text,
                "; parked ", t.host_stats().parked)
        local again, again_reply = c:modern("tools/call", { name = name, arguments = {}, inputResponses = answer,
                                                            requestState = r.requestState }, caps)
        ngx.say("the same state again: ", t.refusal(again_reply))
        -- Answers given up front need no round trip.
        local upfront = c:modern("tools/call", { name = name, arguments = {}, inputResponses = answer }, caps)
        ngx.say("answered up front: ", upfront.result.resultType, " ", upfront.result.content[1].text)
        -- Two rounds: the second state differs, and the first is spent.
        name = "test_input_required_result_multi_round"
        local r1 = c:modern("tools/call", { name = name, arguments = {} }, caps).result
        local r2 = c:modern("tools/call", { name = name, arguments = {}, requestState = r1.requestState,
            inputResponses = { step1 = { action = "accept", content = { name = "Bo" } } } }, caps).result
        ngx.say("round 2: ", r2.resultType, ", asks ", next(r2.inputRequests), ", new state ",
                r2.requestState ~= r1.requestState)
        local _, stale = c:modern("tools/call", { name = name, arguments = {}, requestState = r1.requestState,
            inputResponses = { step1 = { action = "accept", content = { name = "Bo" } } } }, caps)
        ngx.say("round 1's state now: ", t.refusal(stale))
        local r3 = c:modern("tools/call", { name = name, arguments = {}, requestState = r2.requestState,
            inputResponses = { step2 = { action = "accept", content = { color = "green" } } } }, caps).result
        ngx.say("round 3: ", r3.resultType, " ", r3.content[1].text)
        -- Several questions in one round.
        name = "test_input_required_result_multiple_inputs"
        local m = c:modern("tools/call", { name = name, arguments = {} }, caps).result
        local keys = {}
        for k, v in pairs(m.inputRequests) do keys[#keys + 1] = k .. "=" .. v.method end
        table.sort(keys)
        ngx.say("one round asks: ", table.concat(keys, " "))
        -- A retry without every answer is asked again for what is missing.
        local partial = c:modern("tools/call", { name = name, arguments = {}, requestState = m.requestState,
            inputResponses = { user_name = { action = "accept", content = { name = "Cy" } } } }, caps).result
        keys = {}
        for k in pairs(partial.inputRequests) do keys[#keys + 1] = k end
        table.sort(keys)
        ngx.say("still asked: ", table.concat(keys, " "))
        local full = c:modern("tools/call", { name = name, arguments = {}, requestState = partial.requestState,
            inputResponses = { greeting = { role = "assistant", content = { type = "text", text = "Hi" } },
                               client_roots = { roots = { { uri = "file:///r" } } } } }, caps).result
        ngx.say("then: ", full.resultType, " ", full.content[1].text)
        ngx.say("parked ", t.host_stats().parked, ", pool empty after idle: ", (t.wait_pool_empty(5)))
        t.say_cleanup(dir)
    }
}
--- response_body
first: 200 input_required, asks elicitation/create "What is your name?", key hint left out: true
state names this host: true; parked 1, pooled 1
retry: complete Hello, Alice!; parked 0
the same state again: 400 -32602 requestState is unknown, used, expired or of another request; call again without it id 3
answered up front: complete Hello, Alice!
round 2: input_required, asks step2, new state true
round 1's state now: 400 -32602 requestState is unknown, used, expired or of another request; call again without it id 7
round 3: complete Multi-round complete for Bo who likes green
one round asks: client_roots=roots/list greeting=sampling/createMessage user_name=elicitation/create
still asked: client_roots greeting
then: complete Name: Cy; Greeting: Hi; Roots: 1
parked 0, pool empty after idle: true
processes left: none



=== TEST 2: states that must not resume a call: tampered, of another route, method or parameters, malformed inputs; the genuine retry still works after them
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        local caps = { capabilities = { elicitation = {} } }
        local name = "test_input_required_result_elicitation"
        local answer = { user_name = { action = "accept", content = { name = "Al" } } }
        local c = t.client("/conf")
        local state = c:modern("tools/call", { name = name, arguments = {} }, caps).result.requestState
        local function try(label, client, method, params)
            local _, reply = client:modern(method, params, caps)
            ngx.say(label, ": ", t.refusal(reply))
        end
        local flipped = state:sub(1, 20) .. (state:sub(21, 21) == "0" and "1" or "0") .. state:sub(22)
        try("tampered", c, "tools/call", { name = name, arguments = {}, inputResponses = answer,
                                           requestState = flipped })
        try("appended to", c, "tools/call", { name = name, arguments = {}, inputResponses = answer,
                                              requestState = state .. "-TAMPERED" })
        try("another route", t.client("/other"), "tools/call", { name = name, arguments = {},
                                                                 inputResponses = answer, requestState = state })
        try("other arguments", c, "tools/call", { name = name, arguments = { x = 1 }, inputResponses = answer,
                                                  requestState = state })
        try("another method", c, "prompts/get", { name = "test_input_required_result_prompt",
                                                  inputResponses = answer, requestState = state })
        try("not a string", c, "tools/call", { name = name, arguments = {}, requestState = 42 })
        try("inputResponses null", c, "tools/call", { name = name, arguments = {},
                                                      inputResponses = ngx.null })
        try("an answer that is a number", c, "tools/call", { name = name, arguments = {},
                                                             inputResponses = { user_name = 12345 } })
        local done = c:modern("tools/call", { name = name, arguments = {}, inputResponses = answer,
                                              requestState = state }, caps)
        ngx.say("the genuine retry: ", done.result.resultType, " ", done.result.content[1].text)
        -- What the client did not declare is never asked: the backend gets an error.
        local only = c:modern("tools/call", { name = "test_input_required_result_capabilities", arguments = {} },
                              { capabilities = { sampling = {} } }).result
        local keys = {}
        for k, v in pairs(only.inputRequests) do keys[#keys + 1] = k .. "=" .. v.method end
        ngx.say("declared sampling only: ", table.concat(keys, " "))
        local finished = c:modern("tools/call", { name = "test_input_required_result_capabilities", arguments = {},
            requestState = only.requestState, inputResponses = { sample_input = { role = "assistant",
            content = { type = "text", text = "s" } } } }, { capabilities = { sampling = {} } }).result
        ngx.say("and then: ", finished.content[1].text)
        local _, missing = c:modern("tools/call", { name = "test_missing_capability", arguments = {} },
                                    { capabilities = {} })
        ngx.say("a tool that fails for want of it: ", missing.status, " ", missing.json.error.code)
        ngx.say("parked ", t.host_stats().parked, ", pool empty after idle: ", (t.wait_pool_empty(5)))
        t.say_cleanup(dir)
    }
}
--- response_body_like
^tampered: 400 -32602 requestState is unknown, used, expired or of another request; call again without it id \d+
appended to: 400 -32602 requestState is unknown, .* id \d+
another route: 400 -32602 requestState is unknown, .* id \d+
other arguments: 400 -32602 requestState is unknown, .* id \d+
another method: 400 -32602 requestState is unknown, .* id \d+
not a string: 400 -32602 requestState must be a string id \d+
inputResponses null: 400 -32602 inputResponses must be an object id \d+
an answer that is a number: 400 -32602 inputResponses\["user_name"\] must be an object id \d+
the genuine retry: complete Hello, Al!
declared sampling only: sample_input=sampling/createMessage
and then: capabilities-ok: received \[sample_input\]; refused \[elicit_input \(-32601 the client did not declare the elicitation capability\)\]
a tool that fails for want of it: 400 -32021
parked 0, pool empty after idle: true
processes left: none



=== TEST 3: a client that never retries: after input_wait_ms the backend's question gets an error, the call is cancelled, its backend serves the next call, and the state is refused
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        local caps = { capabilities = { elicitation = {} } }
        local name = "test_input_required_result_elicitation"
        local c = t.client("/short")
        local state = c:modern("tools/call", { name = name, arguments = {} }, caps).result.requestState
        local pid = t.backend_pid(dir)
        ngx.say("parked: ", t.host_stats().parked)
        ngx.sleep(1.3)
        ngx.say("after input_wait_ms: parked ", t.host_stats().parked, ", the call cancelled in its backend: ",
                #t.cancelled(dir, pid))
        local _, late = c:modern("tools/call", { name = name, arguments = {}, requestState = state,
            inputResponses = { user_name = { action = "accept", content = { name = "Late" } } } }, caps)
        ngx.say("the late retry: ", t.refusal(late))
        -- pool_max_per_key is 1: the same backend serves the next call.
        local next_call = c:modern("tools/call", { name = "test_simple_text", arguments = {} })
        ngx.say("next call: ", next_call.result.resultType, ", same backend: ", t.backend_pid(dir) == pid)
        ngx.say("pool empty after idle: ", (t.wait_pool_empty(5)))
        t.say_cleanup(dir)
    }
}
--- response_body_like
^parked: 1
after input_wait_ms: parked 0, the call cancelled in its backend: 1
the late retry: 400 -32602 requestState is unknown, .* id \d+
next call: complete, same backend: true
pool empty after idle: true
processes left: none



=== TEST 4: a backend that dies while its call is parked: the retry gets an error, nothing is left
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        local caps = { capabilities = { elicitation = {} } }
        local name = "test_input_required_result_elicitation"
        local c = t.client("/conf")
        local state = c:modern("tools/call", { name = name, arguments = {} }, caps).result.requestState
        local pid = t.backend_pid(dir)
        t.kill(pid, 9)
        ngx.say("backend gone: ", t.wait_gone(pid, 3))
        local retry, reply = c:modern("tools/call", { name = name, arguments = {}, requestState = state,
            inputResponses = { user_name = { action = "accept", content = { name = "A" } } } }, caps)
        ngx.say("the retry: ", reply.status, " ", retry.error.code, " ",
                (retry.error.message:match("^the MCP server ended before responding")))
        ngx.say("parked ", t.host_stats().parked, ", pooled ", t.host_stats().pooled)
        t.say_cleanup(dir)
    }
}
--- response_body
backend gone: true
the retry: 200 -32000 the MCP server ended before responding
parked 0, pooled 0
processes left: none



=== TEST 5: the bounds: per consumer the oldest parked call gives way; past the worker's bound a call that needs input gets 503; a live request takes the backend of a parked call rather than wait
--- config
location = /t {
    content_by_lua_block {
        local t = require("mcptest")
        local dir = "$TEST_NGINX_PID_DIR"
        t.clear(dir)
        local caps = { capabilities = { elicitation = {} } }
        local name = "test_input_required_result_elicitation"
        local answer = { user_name = { action = "accept", content = { name = "B" } } }
        local function park(base)
            local r, reply = t.client(base):modern("tools/call", { name = name, arguments = {} }, caps)
            return r and r.result and r.result.requestState, reply
        end
        local s1, s2, s3 = park("/bounded"), park("/bounded"), park("/bounded")
        ngx.say("three parked by one consumer (bound 2): parked ", t.host_stats().parked)
        local _, gone = t.client("/bounded"):modern("tools/call", { name = name, arguments = {},
            requestState = s1, inputResponses = answer }, caps)
        ngx.say("the oldest gave way: ", t.refusal(gone))
        local s4 = park("/bounded2")
        local _, full = park("/bounded2")
        ngx.say("past the worker's bound (3): ", t.refusal(full))
        for _, s in ipairs({ { "/bounded", s2 }, { "/bounded", s3 }, { "/bounded2", s4 } }) do
            local ok = t.client(s[1]):modern("tools/call", { name = name, arguments = {},
                requestState = s[2], inputResponses = answer }, caps)
            ngx.say("a parked call resumed: ", ok.result.content[1].text)
        end
        -- /tight has one backend: a parked call holds it until a live call needs it.
        local held = park("/tight")
        local live, reply = t.client("/tight"):modern("tools/call", { name = "test_simple_text", arguments = {} })
        ngx.say("a live call on a full pool: ", reply.status, " ", live.result.resultType)
        local _, evicted = t.client("/tight"):modern("tools/call", { name = name, arguments = {},
            requestState = held, inputResponses = answer }, caps)
        ngx.say("the parked call it displaced: ", t.refusal(evicted))
        ngx.say("parked ", t.host_stats().parked, ", pool empty after idle: ", (t.wait_pool_empty(5)))
        t.say_cleanup(dir)
    }
}
--- response_body_like
^three parked by one consumer \(bound 2\): parked 2
the oldest gave way: 400 -32602 requestState is unknown, .* id \d+
past the worker's bound \(3\): 503 -32000 too many calls wait for their client's input; try again later id \d+
a parked call resumed: Hello, B!
a parked call resumed: Hello, B!
a parked call resumed: Hello, B!
a live call on a full pool: 200 complete
the parked call it displaced: 400 -32602 requestState is unknown, .* id \d+
parked 0, pool empty after idle: true
processes left: none
