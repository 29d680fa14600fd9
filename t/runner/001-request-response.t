# Self-test of the Test::Nginx runner: requests and response checks.
use Test::Nginx::Socket::Lua;

repeat_each(2);

plan tests => repeat_each() * 49;

$ENV{TEST_NGINX_RUNNER_GREETING} = 'hi there';

run_tests();

__DATA__

=== TEST 1: sanity
--- config
    location = /t {
        content_by_lua_block {
            ngx.say("hello")
        }
    }
--- request
GET /t
--- response_body
hello
--- no_error_log
[error]



=== TEST 2: response_headers, including an absent header
--- config
    location = /t {
        content_by_lua_block {
            ngx.header["X-Foo"] = "bar"
            ngx.header.content_type = "application/json"
            ngx.say('{"ok":true}')
        }
    }
--- request
GET /t
--- response_headers
X-Foo: bar
content-type: application/json
!X-Missing
--- response_body
{"ok":true}



=== TEST 3: response_headers_like and error_code
--- config
    location = /t {
        content_by_lua_block {
            ngx.status = 201
            ngx.header["X-Num"] = "42"
            ngx.say("created")
        }
    }
--- request
GET /t
--- error_code: 201
--- response_headers_like
X-Num: \d+
Content-Type: text/pl\w+



=== TEST 4: default location, 404 and response_body_like
--- config
--- request
GET /does-not-exist.html
--- error_code: 404
--- response_body_like: 404 Not Found



=== TEST 5: request body, Content-Length and more_headers
--- config
    location = /echo {
        content_by_lua_block {
            ngx.req.read_body()
            ngx.say(ngx.req.get_body_data(), "|", ngx.var.http_x_test, "|",
                    ngx.var.http_content_length)
        }
    }
--- more_headers
X-Test: foo
--- request
POST /echo
hello world
--- response_body
hello world|foo|11



=== TEST 6: comments before the request line, explicit HTTP/1.0, default headers
--- config
    location = /proto {
        content_by_lua_block {
            ngx.say(ngx.var.server_protocol, " ", ngx.var.request_uri, " ",
                    ngx.var.http_host, " ", ngx.var.http_connection)
        }
    }
--- request
# a comment
# another comment
GET /proto?a=1 HTTP/1.0
--- response_body
HTTP/1.0 /proto?a=1 localhost close



=== TEST 7: method only, URI defaults to /
--- config
--- request
GET
--- response_body_like: It works!



=== TEST 8: several requests in one block
--- config
    location = /a { content_by_lua_block { ngx.say("a") } }
    location = /b { content_by_lua_block { ngx.say("b") } }
    location = /gone { return 404; }
--- request eval
["GET /a", "GET /b", "GET /gone"]
--- error_code eval
[200, 200, 404]
--- response_body_like eval
["^a\n\$", "^b\n\$", "404 Not Found"]
--- no_error_log
[error]



=== TEST 9: raw_request
--- config
    location = /t { content_by_lua_block { ngx.say("raw ok") } }
--- raw_request eval
"GET /t HTTP/1.1\r
Host: localhost\r
Connection: close\r
\r
"
--- response_body
raw ok



=== TEST 10: raw_request split into packets
--- config
    location = /t { content_by_lua_block { ngx.say("split ok") } }
--- raw_request eval
["GET /t HTTP/1.1\r\nHost: loc", "alhost\r\nConnection: close\r\n\r\n"]
--- raw_request_middle_delay: 0.05
--- response_body
split ok



=== TEST 11: request body sent in two packets
--- config
    location = /echo {
        content_by_lua_block {
            ngx.req.read_body()
            ngx.say(ngx.req.get_body_data(), "|", ngx.var.http_content_length)
        }
    }
--- request eval
[["POST /echo\nhel", {value => "lo", delay_before => 0.05}]]
--- response_body
hello|5



=== TEST 12: pipelined requests
--- config
    location = /a { content_by_lua_block { ngx.say("a") } }
    location = /b { content_by_lua_block { ngx.say("b") } }
--- pipelined_requests eval
["GET /a", "GET /b"]
--- response_body eval
["a\n", "b\n"]



=== TEST 13: main_config, http_config and $TEST_NGINX_* expansion
--- main_config
    env TEST_NGINX_RUNNER_GREETING;
--- http_config
    lua_shared_dict runner_dict 1m;
--- config
    location = /t {
        content_by_lua_block {
            ngx.shared.runner_dict:set("k", "v")
            ngx.say(ngx.var.server_port, " $TEST_NGINX_SERVER_PORT ",
                    os.getenv("TEST_NGINX_RUNNER_GREETING"), " ",
                    ngx.shared.runner_dict:get("k"))
        }
    }
--- request
GET /t
--- response_body
$TEST_NGINX_SERVER_PORT $TEST_NGINX_SERVER_PORT $TEST_NGINX_RUNNER_GREETING v



=== TEST 14: user_files
--- config
--- user_files
>>> sub/foo.txt
file content
--- request
GET /sub/foo.txt
--- response_body
file content



=== TEST 15: response_body eval with binary data
--- config
    location = /t { content_by_lua_block { ngx.print("a\tb\0c") } }
--- request
GET /t
--- response_body eval
"a\tb\0c"



=== TEST 16: chunked response decoding
--- config
    location = /t {
        content_by_lua_block {
            ngx.print("one")
            ngx.flush(true)
            ngx.print("two")
        }
    }
--- request
GET /t
--- response_headers
Transfer-Encoding: chunked
--- response_body chomp
onetwo



=== TEST 17: HEAD request
--- config
    location = /t { content_by_lua_block { ngx.say("body") } }
--- request
HEAD /t
--- response_body eval
""



=== TEST 18: skipped block
--- SKIP
--- request
GET /t
--- response_body
this block must never run
