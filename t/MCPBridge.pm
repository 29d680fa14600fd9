package t::MCPBridge;

# Shared set-up of the mcp-bridge suites, for the real Test::Nginx and for
# the project's runner in t/lib alike (the same way APISIX's t/APISIX.pm
# works):
#   - http_config: package paths, lua_check_client_abort, the routes;
#   - `--- routes`: Lua table fields defining routes by name (default: one
#     route "mcp" at /mcp bridging the fixture server);
#   - `--- settings`: more fields of the global settings (a cluster);
#   - a `location /` that hands each request to the route whose base_uri
#     matches it best, unless the block's config already calls serve();
#   - the lua_shared_dict that counts sessions node-wide, unless the block
#     says `--- no_slots_dict: 1`;
#   - no [error], [crit], [alert] or [emerg] in the log unless the block says
#     what it expects there.

use Cwd qw(abs_path);
use File::Basename qw(dirname);

my ($root, $fixture, $pid_dir, $run_dir);

# Test::Nginx reads TEST_NGINX_* settings when it is loaded: set them first.
BEGIN {
    $root = abs_path(dirname(__FILE__) . "/..");
    $fixture = "$root/target/release/mcp-fixture";

    # Scratch directory the fixture records its processes in; workers may
    # run as nobody, so anyone may write there.
    $pid_dir = $ENV{TEST_NGINX_PID_DIR} ||= "$root/t/servroot-pids";
    system("mkdir", "-p", $pid_dir) == 0 or die "cannot create $pid_dir\n";
    chmod 01777, $pid_dir;

    # Hosts' sockets and the backends' shared HOME: kept with the suites'
    # scratch files, not in /tmp.
    $run_dir = $ENV{TEST_NGINX_RUN_DIR} ||= "$root/t/servroot-run";

    $ENV{TEST_NGINX_FIXTURE} = $fixture;
    $ENV{TEST_NGINX_ROOT} = $root;

    if (!defined $ENV{TEST_NGINX_LOAD_MODULES}) {
        my @modules = grep { -f $_ } map { "/usr/lib/nginx/modules/$_" }
            qw(ndk_http_module.so ngx_http_lua_module.so);
        $ENV{TEST_NGINX_LOAD_MODULES} = join(" ", @modules) if @modules;
    }

    die "build the workspace first (cargo build --release): $fixture is missing\n"
        unless -x $fixture;
}

use Test::Nginx::Socket::Lua -Base;

no_long_string();
no_root_location();
log_level("info");

my $default_routes = <<"_EOC_";
mcp = {
    base_uri = "/mcp",
    command = "$fixture",
    args = { "--pid-dir", "$pid_dir" },
    keepalive_interval_ms = 1000,
    kill_grace_ms = 500,
},
_EOC_

add_block_preprocessor(sub {
    my $block = shift;

    my $routes = $block->routes // $default_routes;
    my $abort_check = $block->no_abort_check ? "off" : "on";
    my $slots_dict = $block->no_slots_dict ? "" : "lua_shared_dict mcp-bridge-slots 1m;";
    $slots_dict .= "\n    lua_shared_dict mcp-bridge-metrics 1m;";
    my $http_config = $block->http_config // "";
    # `--- settings`: more global settings (cluster = { ... }).
    my $settings = $block->settings // "";
    $block->set_value("http_config", <<_EOC_ . $http_config);
    lua_package_path "$root/lua/?.lua;$root/t/lua/?.lua;;";
    lua_package_cpath "$root/target/release/lib?.so;;";
    lua_check_client_abort $abort_check;
    client_body_buffer_size 8m;
    $slots_dict

    init_by_lua_block {
        local standalone = require("apisix.plugins.mcp.bridge.standalone")
        standalone.settings({ runtime_dir = "$run_dir", $settings })
        local routes = {
$routes
        }
        for name, conf in pairs(routes) do
            standalone.define(name, conf)
        end
        require("mcptest").routes(routes)
    }

    init_worker_by_lua_block {
        require("apisix.plugins.mcp.bridge.standalone").init_worker()
    }
_EOC_

    my $config = $block->config // "";
    if ($config !~ /serve\(/) {
        $block->set_value("config", <<_EOC_ . $config);
        location / {
            content_by_lua_block { require("mcptest").serve() }
            log_by_lua_block { require("apisix.plugins.mcp.bridge.standalone").log() }
        }
_EOC_
    }

    if (!defined $block->no_error_log && !defined $block->error_log) {
        $block->set_value("no_error_log", "[error]\n[crit]\n[alert]\n[emerg]\n");
    }

    if (!defined $block->request && !defined $block->raw_request
        && !defined $block->pipelined_requests) {
        $block->set_value("request", "GET /t");
    }
});

1;
