package Test::Nginx::Socket::Lua;

# Minimal stand-in for CPAN's Test::Nginx::Socket::Lua: the same runner as
# Test::Nginx::Socket (see there), under the name ngx_lua test suites use.

use strict;
use warnings;

use Test::Nginx::Socket -base;

our $VERSION = '0.01';

1;
