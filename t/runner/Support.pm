package t::runner::Support;

# A project support module in the style of APISIX's t/APISIX.pm: subclasses
# Test::Nginx::Socket::Lua with Spiffy's -Base and fills in defaults through
# a block preprocessor. Used by t/runner/005-support-module.t.

use Test::Nginx::Socket::Lua -Base;

no_long_string();
no_root_location();
log_level('info');

$ENV{TEST_NGINX_HTML_DIR} ||= html_dir();

add_block_preprocessor(sub {
    my ($block) = @_;

    if (!defined $block->request) {
        $block->set_value("request", "GET /t");
    }

    if (!defined $block->error_log && !defined $block->no_error_log) {
        $block->set_value("no_error_log", "[error]\n[alert]");
    }
});

1;
