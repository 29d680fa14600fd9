# Self-test of the Test::Nginx runner: error log checks.
use Test::Nginx::Socket::Lua 'no_plan';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: error_log and no_error_log with plain lines
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.ERR, "runner marker one")
            ngx.log(ngx.WARN, "runner marker two")
            ngx.say("ok")
        }
    }
--- request
GET /t
--- response_body
ok
--- error_log
runner marker one
runner marker two
--- no_error_log
[crit]
[alert]



=== TEST 2: eval arrays of strings and regexes
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.WARN, "marker three")
            ngx.log(ngx.WARN, "marker 42 four")
            ngx.say("ok")
        }
    }
--- request
GET /t
--- error_log eval
["marker three", qr/marker \d+ four/]
--- no_error_log eval
[qr/\[error\]/, "never logged"]



=== TEST 3: the error log starts afresh with each restarted server
--- config
    location = /t { content_by_lua_block { ngx.say("ok") } }
--- request
GET /t
--- no_error_log
runner marker one
marker three



=== TEST 4: grep_error_log
--- config
    location = /t {
        content_by_lua_block {
            for i = 1, 3 do
                ngx.log(ngx.WARN, "grep-item-", i, " done")
            end
            ngx.say("ok")
        }
    }
--- request
GET /t
--- grep_error_log eval
qr/grep-item-\d+/
--- grep_error_log_out
grep-item-1
grep-item-2
grep-item-3



=== TEST 5: with several requests each check sees only its own part of the log
--- config
    location = /log {
        content_by_lua_block {
            ngx.log(ngx.WARN, "got x=", ngx.var.arg_x)
            ngx.say(ngx.var.arg_x)
        }
    }
--- request eval
["GET /log?x=first", "GET /log?x=second"]
--- response_body eval
["first\n", "second\n"]
--- grep_error_log eval
qr/got x=\w+/
--- grep_error_log_out eval
qr/\Agot x=(?:first|second)\n\z/



=== TEST 6: wait for a timer before checking the log
--- config
    location = /t {
        content_by_lua_block {
            ngx.timer.at(0.1, function()
                ngx.log(ngx.WARN, "timer fired late")
            end)
            ngx.say("ok")
        }
    }
--- request
GET /t
--- wait: 0.3
--- error_log
timer fired late



=== TEST 7: per-block log_level
--- log_level: warn
--- config
    location = /t {
        content_by_lua_block {
            ngx.log(ngx.INFO, "info-level message")
            ngx.log(ngx.WARN, "warn-level message")
            ngx.say("ok")
        }
    }
--- request
GET /t
--- error_log
warn-level message
--- no_error_log
info-level message
[debug]



=== TEST 8: shutdown_error_log and no_shutdown_error_log
--- config
    location = /t { content_by_lua_block { ngx.say("ok") } }
--- request
GET /t
--- no_error_log
SIGQUIT
--- shutdown_error_log eval
["shutting down", qr/signal \d+ \(SIGQUIT\) received/]
--- no_shutdown_error_log
[alert]
