# Self-test of the Test::Nginx runner: master process with two workers, and
# the other global settings.
use Test::Nginx::Socket::Lua;

master_on();
workers(2);
worker_connections(128);
log_level('info');
env_to_nginx("RUNNER_ENV_FROM_PERL=from-perl");

repeat_each(2);

plan tests => repeat_each() * (3 * blocks()) + 2;

run_tests();

__DATA__

=== TEST 1: two workers under a master process
--- config
    location = /t {
        content_by_lua_block {
            -- the pid file holds the master's pid; it must be our parent
            local f = assert(io.open(ngx.config.prefix() .. "logs/nginx.pid"))
            local master = tonumber(f:read("*l"))
            f:close()
            f = assert(io.open("/proc/self/stat"))
            local ppid = tonumber(f:read("*l"):match("^%d+ %b() %S+ (%d+)"))
            f:close()
            ngx.say("count=", ngx.worker.count(), " id=", ngx.worker.id(),
                    " child_of_master=", ppid == master)
        }
    }
--- request
GET /t
--- response_body_like chomp
^count=2 id=[01] child_of_master=true$
--- no_error_log
[debug]



=== TEST 2: env_to_nginx, and a graceful worker shutdown
--- config
    location = /t {
        content_by_lua_block {
            ngx.timer.at(100, function(premature)
                if premature then
                    ngx.log(ngx.WARN, "timer cut short by shutdown")
                end
            end)
            ngx.say(os.getenv("RUNNER_ENV_FROM_PERL"))
        }
    }
--- request
GET /t
--- response_body
from-perl
--- no_error_log
timer cut short by shutdown
--- shutdown_error_log
timer cut short by shutdown
gracefully shutting down
