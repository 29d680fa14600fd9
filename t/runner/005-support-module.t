# Self-test of the Test::Nginx runner: a Spiffy -Base support module with a
# block preprocessor, config-less blocks, skip_eval and LAST.
# prove does not put the current directory on @INC (projects usually pass
# -I.); find t/runner/Support.pm from here instead.
use FindBin ();
use lib "$FindBin::Bin/../..";
use t::runner::Support 'no_plan';

repeat_each(1);
no_shuffle();
run_tests();

__DATA__

=== TEST 1: request and no_error_log come from the preprocessor
--- http_config
    lua_shared_dict hits 1m;
--- config
    location = /t {
        content_by_lua_block {
            ngx.say("hits=", ngx.shared.hits:incr("n", 1, 0),
                    " html_dir=", "$TEST_NGINX_HTML_DIR" == ngx.config.prefix() .. "html")
        }
    }
--- response_body
hits=1 html_dir=true



=== TEST 2: a block without --- config reuses the running server
--- response_body
hits=2 html_dir=true



=== TEST 3: no_root_location leaves out "location /"
--- config
    location = /t {
        content_by_lua_block {
            local f = assert(io.open(ngx.config.prefix() .. "conf/nginx.conf"))
            local conf = f:read("*a")
            f:close()
            ngx.say("root location: ", conf:find("location " .. "/ {", 1, true) ~= nil)
        }
    }
--- response_body
root location: false



=== TEST 4: skip_eval that skips
--- skip_eval: 3: 1
--- config
    location = /t { return 500; }
--- response_body
never checked



=== TEST 5: skip_eval that does not skip
--- skip_eval: 3: 0
--- config
    location = /t { return 200 "ran\n"; }
--- response_body
ran



=== TEST 6: last block that runs
--- LAST
--- config
    location = /t { return 200 "last\n"; }
--- response_body
last



=== TEST 7: after LAST, never runs
--- config
    location = /t { return 500; }
--- response_body
never checked
