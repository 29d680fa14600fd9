# Self-test of the Test::Nginx runner: client timeouts and never-ending
# (SSE-style) responses cut off with --- abort.
#
# On abort the runner parses whatever arrived. An unfinished *chunked* body
# is reported as a failure ("no last chunk found") by the real Test::Nginx
# too, so streaming tests turn chunking off (HTTP/1.1 with
# chunked_transfer_encoding off, or HTTP/1.0 with lua_http10_buffering off):
# the body then simply runs until the connection closes. (Test::Base trims
# trailing blank lines from sections, hence the eval'ed expected bodies.)
use Test::Nginx::Socket::Lua;

plan tests => repeat_each() * 12;

run_tests();

__DATA__

=== TEST 1: never-ending event stream over HTTP/1.1, cut off by the client
--- config
    location = /sse {
        lua_check_client_abort on;
        chunked_transfer_encoding off;
        content_by_lua_block {
            ngx.header.content_type = "text/event-stream"
            ngx.print("data: one\n\n")
            ngx.flush(true)
            ngx.print("data: two\n\n")
            ngx.flush(true)
            while true do
                ngx.sleep(0.05)
            end
        }
    }
--- request
GET /sse
--- timeout: 0.5
--- abort
--- response_headers
Content-Type: text/event-stream
!Content-Length
--- response_body eval
"data: one\n\ndata: two\n\n"
--- no_error_log
[error]



=== TEST 2: never-ending event stream over HTTP/1.0
--- config
    location = /sse {
        lua_check_client_abort on;
        lua_http10_buffering off;
        content_by_lua_block {
            ngx.header.content_type = "text/event-stream"
            ngx.print("data: only\n\n")
            ngx.flush(true)
            ngx.sleep(30)
        }
    }
--- request
GET /sse HTTP/1.0
--- timeout: 300ms
--- abort
--- response_body eval
"data: only\n\n"
--- error_log
client prematurely closed connection



=== TEST 3: a slow response within the timeout
--- config
    location = /slow {
        content_by_lua_block {
            ngx.sleep(0.2)
            ngx.say("late but fine")
        }
    }
--- request
GET /slow
--- timeout: 2
--- response_body
late but fine



=== TEST 4: the timeout is per I/O event, not for the whole response
--- config
    location = /trickle {
        content_by_lua_block {
            for i = 1, 4 do
                ngx.say(i)
                ngx.flush(true)
                ngx.sleep(0.2)
            end
        }
    }
--- request
GET /trickle
--- timeout: 0.5
--- response_body
1
2
3
4
