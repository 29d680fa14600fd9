package Test::Nginx::Socket;

# A small stand-in for CPAN's Test::Nginx::Socket (openresty/test-nginx),
# used only when the real module is not installed. It reads the same
# Test::Base block format and follows the real module's conventions for
# everything it supports (config layout, defaults, env vars, test names).
# Sections the real module knows but this one does not make the block fail
# instead of being silently ignored.
#
# Usage (from the repository root, so that t/servroot is used):
#   TEST_NGINX_LOAD_MODULES="/usr/lib/nginx/modules/ndk_http_module.so \
#     /usr/lib/nginx/modules/ngx_http_lua_module.so" prove -I t/lib t/...
# Honoured environment: TEST_NGINX_BINARY, TEST_NGINX_PORT /
# TEST_NGINX_SERVER_PORT, TEST_NGINX_CLIENT_PORT, TEST_NGINX_SERVROOT,
# TEST_NGINX_LOAD_MODULES, TEST_NGINX_LOG_LEVEL, TEST_NGINX_MASTER_PROCESS,
# TEST_NGINX_TIMEOUT, TEST_NGINX_SLEEP, TEST_NGINX_NO_SHUFFLE,
# TEST_NGINX_CHECK_ACCUM_ERR_LOG, TEST_NGINX_FORCE_RESTART_ON_TEST,
# TEST_NGINX_FAST_SHUTDOWN, TEST_NGINX_NO_CLEAN, TEST_NGINX_WORKER_USER,
# TEST_NGINX_EVENT_TYPE, TEST_NGINX_VERBOSE. Concurrent runs need their own
# port and server root.

use strict;
use warnings;

# Lower-case -base: inherit from Test::Base and get its exports, without
# Spiffy's source filter (which would inject "my $self = shift" into subs).
use Test::Base -base;

use File::Path qw(make_path remove_tree);
use File::Spec ();
use IO::Select ();
use IO::Socket::INET ();
use List::Util qw(shuffle);
use POSIX qw(EAGAIN EINTR EWOULDBLOCK);
use Time::HiRes qw(sleep time);

our $VERSION = '0.01';

our @EXPORT = qw(
    run_tests run_test repeat_each
    env_to_nginx is_str bail_out
    no_long_string no_shuffle no_root_location check_accum_error_log
    workers master_on master_off master_process_enabled
    worker_connections log_level timeout config_preamble
    add_block_preprocessor add_cleanup_handler add_test_cleanup_handler
    server_name server_addr server_root html_dir
    server_port server_port_for_client
);

# ---- settings (same env vars and defaults as the real module) ----------

our $NginxBinary         = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $ServerAddr          = '127.0.0.1';
our $ServerName          = 'localhost';
our $ServerPort          = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
our $ServerPortForClient = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort;
our $Workers             = 1;
our $WorkerConnections   = 64;
our $LogLevel            = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcess       = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $Timeout             = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $Sleep               = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $NoShuffle           = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $CheckAccumErrLog    = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
our $LoadModules         = $ENV{TEST_NGINX_LOAD_MODULES};
our $WorkerUser          = $ENV{TEST_NGINX_WORKER_USER};
our $EventType           = $ENV{TEST_NGINX_EVENT_TYPE};
our $Verbose             = $ENV{TEST_NGINX_VERBOSE};
our $RepeatEach          = 1;
our $NoRootLocation      = 0;
our $NoLongString        = 0;
our $ConfigPreamble      = '';
our (@EnvToNginx, @BlockPreprocessors, @CleanupHandlers, @TestCleanupHandlers);

if (defined $WorkerUser && $WorkerUser !~ /^\w[-\w]+(?:\s+\w[-\w]+)?$/) {
    die "Bad value in the env TEST_NGINX_WORKER_USER: $WorkerUser\n";
}

our $ServRoot = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;

our $LogDir     = "$ServRoot/logs";
our $ErrLogFile = "$LogDir/error.log";
our $AccLogFile = "$LogDir/access.log";
our $HtmlDir    = "$ServRoot/html";
our $ConfDir    = "$ServRoot/conf";
our $ConfFile   = "$ConfDir/nginx.conf";
our $PidFile    = "$LogDir/nginx.pid";

# Support code often reads these as $Test::Nginx::Util::<name> (where the
# real module keeps them), e.g. "$Test::Nginx::Util::ErrLogFile" in configs.
for my $v (qw(ServerPort ServerPortForClient ServRoot LogDir ErrLogFile
              AccLogFile HtmlDir ConfFile PidFile NginxBinary RepeatEach)) {
    no strict 'refs';
    *{"Test::Nginx::Util::$v"} = \${"Test::Nginx::Socket::$v"};
}

# Sections of the real module that this runner does not implement.
my @Unsupported = qw(
    curl curl_error curl_options curl_protocol http2 http3 http09
    stap stap_out stap_out_like stap_out_unlike must_die reload_fails
    tcp_listen tcp_reply tcp_query tcp_query_len tcp_shutdown tcp_no_close
    udp_listen udp_reply udp_query skip_nginx skip_nginx2 skip_openssl
    skip_slave todo todo_nginx response_body_filters error_log_file
    server_addr_for_client request_eval response_body_eval init
    post_setup_server_root write_resp_body_file access_log no_access_log
    raw_response_headers_like raw_response_headers_unlike response_body_json_sort
);

our $ForceRestart = $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST} // 1;
our ($RandPorts, $ErrLogPos, $NginxV, $RunningPid, $PrevConfig, $PrevBlock);

# ---- exported setters/getters ------------------------------------------

sub repeat_each { $RepeatEach = shift if @_; $RepeatEach }
sub workers { $Workers = shift if @_; $Workers }
sub worker_connections { $WorkerConnections = shift if @_; $WorkerConnections }
sub log_level { $LogLevel = shift if @_; $LogLevel }
sub timeout { $Timeout = shift if @_; $Timeout }
sub server_name { $ServerName = shift if @_; $ServerName }
sub server_addr { $ServerAddr = shift if @_; $ServerAddr }
sub server_port { $ServerPort = shift if @_; $ServerPort }
sub server_port_for_client { $ServerPortForClient = shift if @_; $ServerPortForClient }
sub server_root () { $ServRoot }
sub html_dir () { $HtmlDir }
sub master_on () { $MasterProcess = 'on' }
sub master_off () { $MasterProcess = 'off' }
sub master_process_enabled { $MasterProcess = $_[0] ? 'on' : 'off' if @_; $MasterProcess }
sub no_shuffle () { $NoShuffle = 1 }
sub no_root_location () { $NoRootLocation = 1 }
sub no_long_string () { $NoLongString = 1 }
sub check_accum_error_log () { $CheckAccumErrLog = 1 }
sub config_preamble ($) { $ConfigPreamble = shift }
sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }
sub add_cleanup_handler ($) { unshift @CleanupHandlers, shift }
sub add_test_cleanup_handler ($) { unshift @TestCleanupHandlers, shift }

sub env_to_nginx {
    require Carp;
    Carp::croak("env_to_nginx: no arguments specified") unless @_;
    for my $v (@_) {
        Carp::croak("env_to_nginx: bad argument value: $v\n")
            if $v !~ /^[A-Za-z_]/ || $v =~ /\n/;
        push @EnvToNginx, $v;
    }
}

# No Test::LongString here: plain is()/like() report the same pass/fail.
sub is_str {
    my ($got, $expected, $desc) = @_;
    return Test::More::like($got, $expected, $desc) if ref $expected eq 'Regexp';
    return Test::More::is($got, $expected, $desc);
}

sub bail_out {
    cleanup();
    Test::More::BAIL_OUT(join '', @_);
}

sub cleanup {
    $_->() for @CleanupHandlers;
}

# ---- main loop -----------------------------------------------------------

sub run_tests () {
    $NginxV = `$NginxBinary -V 2>&1`;
    bail_out("Failed to get the version of the Nginx in PATH: " . ($NginxV // ''))
        if !defined $NginxV || $? != 0;
    $ENV{TEST_NGINX_SERVER_PORT} //= $ServerPort;

    my @blocks = Test::Base::blocks();
    @blocks = shuffle @blocks unless $NoShuffle;
    for my $block (@blocks) {
        $_->($block) for @BlockPreprocessors;
        $block->set_value(name => "$0 " . $block->name);
        run_test($block);
        $_->($block) for @TestCleanupHandlers;
        $PrevBlock = $block;
    }

    # TEST_NGINX_NO_CLEAN leaves the last server running for inspection.
    my $no_clean = $ENV{TEST_NGINX_NO_CLEAN};
    stop_nginx('run_tests') unless $no_clean;
    check_shutdown_error_log($PrevBlock, $no_clean) if $PrevBlock;
    cleanup();
}

# Like the real runner: a block with a --- config section gets a freshly
# started server (the previous one is stopped with QUIT first, and its
# shutdown log checked); a block without one reuses the running server.
sub run_test {
    my $block = shift;
    return if defined $block->SKIP;
    my $name = $block->name;

    for my $sec (@Unsupported) {
        next unless defined $block->$sec;
        Test::More::fail("$name - section '--- $sec' is not supported by the "
                         . "bundled minimal Test::Nginx (t/lib)");
        return;
    }

    local $RandPorts = {};
    local $LogLevel = $block->log_level || $LogLevel;
    my $config = expand_env(scalar $block->config, $name);
    my $restart;
    if (defined $config) {
        $restart = $ForceRestart || !defined $PrevConfig || $config ne $PrevConfig;
    } elsif (!defined $PrevConfig) {
        bail_out("$name - No '--- config' section specified and could not get previous one.");
    }

    if (defined(my $skip = $block->skip_eval)) {
        $skip =~ /^\s*(\d+)\s*:\s*(.*)/s
            or bail_out("$name - Invalid --- skip_eval spec: $skip");
        my ($n, $code) = ($1, $2);
        my $should = eval $code;
        bail_out("$name - skip_eval - failed to eval the Perl code \"$code\": $@") if $@;
        if ($should) {
            for (1 .. $RepeatEach) { SKIP: { Test::More::skip("$name - skip_eval", $n) } }
            return;
        }
    }

    if ($restart) {
        $PrevConfig = $config;
        stop_nginx($name);
        check_shutdown_error_log($PrevBlock) if $PrevBlock;
        start_nginx($block, $config);
    }

    $ErrLogPos = 0;
    for my $rep (0 .. $RepeatEach - 1) {
        write_user_files($block) if $rep > 0;
        run_test_helper($block, $rep);
    }
}

sub run_test_helper {
    my ($block, $rep) = @_;
    my $name = $block->name;
    my $reqs = build_requests($block);
    my $timeout = parse_time(scalar $block->timeout) // $Timeout;
    my $pipelined = $block->pipelined_requests;
    my $nresp = $pipelined ? @$pipelined : 1;    # responses per connection
    my $need_array = $pipelined ? 1 : @$reqs > 1;
    my $idx = 0;

    for my $r (0 .. $#$reqs) {
        my $raw = send_request($block, $reqs->[$r], $timeout);
        my $head_req = (join '', map { $_->{value} } @{ $reqs->[$r] }) =~ /^\s*HEAD\s+/;
        warn "!!! resp: [", $raw // '', "]\n" if $Verbose;

        for my $k (1 .. $nresp) {
            if (!defined $block->ignore_response) {
                my ($res, $raw_headers, $left) = parse_response($name, $raw // '', $head_req);
                if ($k < $nresp) {
                    $raw = $left;
                } elsif (defined $left) {
                    (my $l = $left) =~ s/([\0-\037\200-\377])/sprintf('\x{%02x}', ord $1)/eg;
                    warn "WARNING: $name - unexpected extra bytes after last chunk in response: \"$l\"\n";
                }
                check_error_code($block, $res, $idx, $need_array);
                check_response_headers($block, $res, $raw_headers // '', $idx, $need_array);
                check_response_body($block, $res, $idx, $rep, $need_array);
            }
            if ($k < $nresp || $r < $#$reqs) {
                sleep scalar $block->wait if $block->wait;
                check_error_log($block, $rep);
            }
            $idx++;
        }
    }

    sleep scalar $block->wait if $block->wait;
    check_error_log($block, $rep);
}

# ---- nginx lifecycle -------------------------------------------------------

sub start_nginx {
    my ($block, $config) = @_;
    my $name = $block->name;

    setup_server_root();
    write_user_files($block);
    write_config_file($block, $config);

    my @cmd = ($NginxBinary, '-e', $ErrLogFile, '-p', "$ServRoot/", '-c', $ConfFile);
    my $deadline = time + 10;
    while (1) {
        my $status = system_quiet(@cmd);
        last if $status == 0;
        # Retry only while the port is still held (e.g. a dying server).
        if (time < $deadline && slurp($ErrLogFile) =~ /Address already in use/) {
            sleep 0.2;
            next;
        }
        bail_out("$name - Cannot start nginx using command \"@cmd\" (status code $status).");
    }

    # daemon on: the command returns once the listen socket is bound, but the
    # pid file is written by the daemonised child, so wait for it.
    my $pid;
    for (1 .. 200) {
        last if $pid = read_pid();
        sleep 0.01;
    }
    $RunningPid = $pid;
    sleep $Sleep;
}

# Run a command with stdout discarded (as the real runner does), keep stderr.
sub system_quiet {
    my @cmd = @_;
    my $pid = fork // bail_out("fork() failed: $!");
    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        exec { $cmd[0] } @cmd or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return $?;
}

# Stops our server, or one left in the pid file by an interrupted run.
sub stop_nginx {
    my $name = shift // '';
    my $pid = $RunningPid;
    undef $RunningPid;
    if (!$pid) {
        $pid = read_pid();
        return unless $pid && is_nginx($pid);
    }
    kill_nginx($pid, $name);
}

sub kill_nginx {
    my ($pid, $name) = @_;
    # QUIT lets workers shut down gracefully, so shutdown_error_log can be checked.
    kill($ENV{TEST_NGINX_FAST_SHUTDOWN} ? 'TERM' : 'QUIT', $pid);
    my $left = $Timeout;
    while ($left > 0 && is_running($pid)) {
        sleep 0.02;
        $left -= 0.02;
    }
    return unless is_running($pid);
    warn "$name - timeout when waiting for the process $pid to exit\n";
    # nginx daemonises with setsid(), so its pid is also its process group.
    kill('KILL', getpgrp($pid) == $pid ? -$pid : $pid);
    sleep 0.05;
}

# A daemonised nginx is not our child; its zombie may linger until reaped
# by init, so treat the zombie state as "gone".
sub is_running {
    my $pid = shift;
    return 0 unless kill 0, $pid;
    open my $in, '<', "/proc/$pid/stat" or return 1;
    my $stat = <$in> // '';
    return $stat !~ /^\d+ \(.*\) [ZX]/;
}

sub is_nginx {
    my $pid = shift;
    return 0 unless is_running($pid);
    open my $in, '<', "/proc/$pid/cmdline" or return 1;
    my $cmd = <$in> // '';
    (my $bin = $NginxBinary) =~ s{.*/}{};
    return $cmd =~ /nginx/ || index($cmd, $bin) >= 0;
}

sub read_pid {
    open my $in, '<', $PidFile or return;
    my $pid = <$in>;
    return defined $pid && $pid =~ /^(\d+)/ ? $1 : undef;
}

sub setup_server_root {
    if (-d $ServRoot) {
        # Remove only what we create, so a mistaken TEST_NGINX_SERVROOT
        # cannot wipe unrelated data.
        remove_tree($ConfDir, $HtmlDir, $LogDir, "$ServRoot/cache",
                    glob("$ServRoot/*_cache"), glob("$ServRoot/*_temp"));
        rmdir $ServRoot or bail_out("Can't remove $ServRoot (not empty?): $!");
    }
    for my $d ($ServRoot, $LogDir, $HtmlDir, $ConfDir) {
        mkdir $d or bail_out("Failed to do mkdir $d: $!");
    }
    spew("$HtmlDir/index.html",
         '<html><head><title>It works!</title></head><body>It works!</body></html>');
}

sub write_user_files {
    my $block = shift;
    my $name = $block->name;
    my $files = $block->user_files or return;

    if (!ref $files) {
        my @list;
        for my $line (split /^/, $files) {
            if ($line =~ /^>>> (\S+)(?:\s+(.+))?/) {
                push @list, [$1, undef, $2];
            } elsif (@list) {
                $list[-1][1] .= $line;
            }
        }
        $files = \@list;
    } elsif (ref $files ne 'ARRAY') {
        bail_out("$name - wrong value type: ", ref $files, ", only scalar or ARRAY are accepted");
    }

    for my $f (@$files) {
        my ($fname, $body, $date) = @$f;
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        (my $dir = $path) =~ s{/[^/]*$}{};
        make_path($dir) unless -d $dir;
        warn "WARNING: $name - user_files: mtime of $fname not supported, ignored\n" if $date;
        spew($path, expand_env($body // '', $name));
    }
}

sub write_config_file {
    my ($block, $config) = @_;
    my $name = $block->name;

    my $http_config = expand_env($block->http_config // '', $name);
    my $main_config = $block->main_config // '';
    if ($LoadModules) {
        my @mods = map { "load_module $_;" } grep { length } split /\s+/, $LoadModules;
        $main_config = join ' ', @mods, $main_config;
    }
    $main_config = expand_env($main_config, $name);
    my $post_main_config = expand_env($block->post_main_config // '', $name);
    (my $server_name = $block->server_name // $ServerName) =~ s/(['\\])/\\$1/g;

    # nginx clears the workers' environment; pass the same variables as the
    # real runner (preload/sanitizer/mockeagain knobs) plus env_to_nginx().
    my @env = map { /\s/ ? "env '$_';" : "env $_;" }
              qw(MOCKEAGAIN_VERBOSE MOCKEAGAIN MOCKEAGAIN_WRITE_TIMEOUT_PATTERN
                 LD_PRELOAD LD_LIBRARY_PATH DYLD_INSERT_LIBRARIES
                 DYLD_FORCE_FLAT_NAMESPACE), @EnvToNginx;

    # Temp dirs under the server root, unless nginx lacks the module or the
    # test sets its own.
    my @temps;
    for my $t (qw(client_body proxy fastcgi scgi uwsgi)) {
        next if $NginxV =~ /--without-http_${t}_module/;
        next if $http_config =~ /\b${t}_temp_path\b/;
        push @temps, "${t}_temp_path $ServRoot/${t}_temp;";
    }

    my $root_location = $NoRootLocation ? '' : <<"EOT";
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
EOT

    my $user = defined $WorkerUser ? "user $WorkerUser;"
             : $> == 0             ? 'user root;'
             :                       '';
    my $use_event = $EventType ? "    use $EventType;\n" : '';
    my $env = join "\n", @env;
    my $temps = join ' ', @temps;

    # Lines sit where the real runner puts them, so "nginx.conf:NN" in log
    # messages (and tests matching them) are the same under both runners.
    spew($ConfFile, <<"EOT");
worker_processes  $Workers;
daemon on;
master_process $MasterProcess;
error_log $ErrLogFile $LogLevel;
pid       $PidFile;
$env
# Other variables do not reach Lua's os.getenv(): use env_to_nginx()
# or an "env" directive in --- main_config.

$main_config

http {
    access_log $AccLogFile; $temps
    # (temp paths live under the server root)

    default_type text/plain;
    keepalive_timeout  68000ms;

$http_config
    server {
        listen          $ServerPort;
        # (the test server)
        server_name     '$server_name';

        client_max_body_size 30M;
        # (large enough for upload tests)

        # Begin preamble config...
$ConfigPreamble
        # End preamble config...

        # Begin test case config...
$config
        # End test case config.

$root_location    }
}

$post_main_config

# (events)

events {
    accept_mutex off;

    worker_connections  $WorkerConnections;
$use_event}
env ASAN_OPTIONS;
env MOCKNOEAGAIN_VERBOSE;
env MOCKNOEAGAIN;
$user
EOT
}

# ---- requests --------------------------------------------------------------

# Returns a list of requests; each request is a list of packets
# ({ value => $bytes, delay_before => $secs }) sent on one connection.
sub build_requests {
    my $block = shift;
    my $name = $block->name;

    if (defined(my $raw = $block->raw_request)) {
        return [[ map { { value => $_ } } ref $raw eq 'ARRAY' ? @$raw : $raw ]];
    }

    my $more = $block->more_headers // '';
    my $headers_for = sub {
        my $i = shift;
        return $more unless ref $more eq 'ARRAY';
        return $more->[$i] // bail_out("$name - --- more_headers lacks data for request $i");
    };

    if (defined(my $pl = $block->pipelined_requests)) {
        bail_out("$name - invalid entries in --- pipelined_requests") if ref $pl ne 'ARRAY';
        my $all = '';
        for my $i (0 .. $#$pl) {
            my $conn = $i == $#$pl ? 'close' : 'keep-alive';
            my $pk = build_request($name, [expand_env($pl->[$i], $name)], $headers_for->($i), $conn);
            $all .= join '', map { $_->{value} } @$pk;
        }
        return [[{ value => $all }]];
    }

    my $req = $block->request;
    if (!ref $req) {
        # Leading blank lines and "# comment" lines are allowed.
        $req //= '';
        1 while $req =~ s/^\s*#[^\n]+\s+|^\s+//gs;
        return [ build_request($name, [$req], $headers_for->(0), 'close') ];
    }
    bail_out("$name - invalid --- request: MUST be string or array of requests")
        if ref $req ne 'ARRAY';

    my @out;
    for my $i (0 .. $#$req) {
        my $one = $req->[$i];
        my @packets = ref $one eq 'ARRAY' ? @$one : ($one);
        push @out, build_request($name, \@packets, $headers_for->($i), 'close');
    }
    return \@out;
}

# Turns "METHOD [URI [VERSION]]\nbody" (possibly split into packets) into
# wire format: adds Host, Connection, more_headers and Content-Length.
sub build_request {
    my ($name, $packets, $more, $conn) = @_;
    my @pk = map { ref $_ eq 'HASH' ? {%$_} : { value => $_ } } @$packets;
    $_->{value} //= '' for @pk;
    # The request line has to be complete in the first packet.
    while (@pk > 1 && $pk[0]{value} !~ /\n/) {
        $pk[0]{value} .= (splice @pk, 1, 1)->{value};
    }
    my ($line, $rest) = split /\n/, $pk[0]{value}, 2;
    bail_out("$name - Request line should be non-empty") if !defined $line || $line eq '';
    $line =~ /^\s*(\S+)(?: +(\S+))?(?: +(\S+))?\s*$/
        or bail_out("$name - Request line is not valid. Should be 'meth [url [version]]' "
                    . "but got \"$line\".");
    my ($meth, $url, $ver) = ($1, $2 // '/', $3 // 'HTTP/1.1');

    my ($hdrs, $chunked) = parse_more_headers($more);
    my @body = ($rest // '', map { $_->{value} } @pk[1 .. $#pk]);

    my $head = "$meth $url $ver\r\n";
    $head .= "Host: $ServerName\r\n" if $hdrs !~ /(?:^|\n)Host:/i;
    $head .= "Connection: $conn\r\n" if $hdrs !~ /(?:^|\n)Connection/i;
    $head .= $hdrs;
    if (!$chunked && join('', @body) ne '' && $hdrs !~ /(?:^|\n)Content-Length:/) {
        # The body is trimmed, as the real runner does, before measuring it.
        for my $i (0 .. $#body) {
            $body[$i] =~ s/^\s+//;
            last if $body[$i] ne '';
        }
        for my $i (reverse 0 .. $#body) {
            $body[$i] =~ s/\s+$//;
            last if $body[$i] ne '';
        }
        $head .= 'Content-Length: ' . length(join '', @body) . "\r\n";
    }
    $pk[0]{value} = "$head\r\n$body[0]";
    $pk[$_]{value} = $body[$_] for 1 .. $#pk;
    return \@pk;
}

sub parse_more_headers {
    my $in = shift // '';
    my ($out, $chunked) = ('', 0);
    for my $h (split /\n+/, $in) {
        next if $h =~ /^\s*#/;
        my ($k, $v) = split /:\s*/, $h, 2;
        $v //= '';
        $chunked = 1 if lc $k eq 'transfer-encoding' && $v eq 'chunked';
        $out .= "$k: $v\r\n";
    }
    return ($out, $chunked);
}

sub connect_server {
    my ($name, $timeout) = @_;
    my $err;
    for my $try (1 .. 20) {
        my $sock = IO::Socket::INET->new(
            PeerAddr => $ServerAddr,
            PeerPort => $ServerPortForClient,
            Proto    => 'tcp',
            Timeout  => $timeout,
        );
        return $sock if $sock;
        $err = $!;
        sleep($try < 10 ? 0.05 * $try : 0.5);
    }
    Test::More::fail("$name - Can't connect to $ServerAddr:$ServerPortForClient: $err (aborted)\n");
    return;
}

# Sends the packets and reads until the server closes the connection.
# $timeout bounds the wait for each I/O event, not the whole exchange.
sub send_request {
    my ($block, $packets, $timeout) = @_;
    my $name = $block->name;
    local $SIG{PIPE} = 'IGNORE';

    my $sock = connect_server($name, $timeout) or return;
    $sock->blocking(0);
    my @queue = @$packets;
    my $buf = (shift @queue)->{value};
    my $resp = '';
    my $writing = 1;
    my $sel = IO::Select->new($sock);

    while (1) {
        $! = 0;
        my ($r, $w) = IO::Select->select($sel, $writing ? $sel : undef, undef, $timeout);
        if (!$r && !$w) {
            next if $! == EINTR;
            if (defined $block->abort) {
                sleep 0.005;
            } else {
                Test::More::fail("ERROR: client socket timed out - $name\n");
            }
            last;
        }
        if ($w && @$w) {
            my $n = syswrite $sock, $buf;
            if (!defined $n) {
                if ($! != EAGAIN && $! != EWOULDBLOCK) {
                    warn "write failed: $!\n";
                    $writing = 0;
                }
            } elsif ($n < length $buf) {
                substr($buf, 0, $n) = '';
            } elsif (my $next = shift @queue) {
                my $delay = $next->{delay_before} // $block->raw_request_middle_delay;
                sleep $delay if $delay;
                $buf = $next->{value};
            } else {
                $writing = 0;
                if (defined(my $how = $block->shutdown)) {
                    shutdown $sock, ($how =~ /\d/ ? $how : 1);
                }
            }
        }
        if ($r && @$r) {
            my $n = sysread $sock, my $chunk, 65536;
            if (defined $n) {
                last if $n == 0;
                $resp .= $chunk;
            } elsif ($! != EAGAIN && $! != EWOULDBLOCK) {
                warn "WARNING: $name - HTTP response read failure: $!\n";
                last;
            }
        }
    }
    close $sock;
    return $resp;
}

# ---- responses -------------------------------------------------------------

# Returns ($res, $raw_headers, $left) where $res = { code, headers, content },
# or an empty list after reporting a malformed chunked body.
sub parse_response {
    my ($name, $raw, $head_req) = @_;
    my $raw_headers = $raw =~ /(.*?\r\n)\r\n/s ? $1 : '';

    my ($status, $rest) = $raw =~ /^(.*?)\n(.*)\z/s ? ($1, $2) : ($raw, '');
    $status =~ s/\r\z//;
    my @headers;
    while (1) {
        if ($rest =~ s/^([^\s:]+)[ \t]*: ?(.*)\n?//) {
            my ($k, $v) = ($1, $2);
            $v =~ s/\r\z//;
            push @headers, [$k, $v];
        } elsif (@headers && $rest =~ s/^([ \t].*)\n?//) {
            (my $c = $1) =~ s/\r\z//;
            $headers[-1][1] .= "\n$c";
        } else {
            $rest =~ s/^\r?\n//;
            last;
        }
    }
    my @st = split ' ', $status, 3;
    my $code = $status =~ /^\d{3} / ? $st[0] : $st[1];
    undef $code if defined $code && $code !~ /^\d+$/;
    my $res = { code => $code, headers => \@headers, content => $rest };

    return ($res, $raw_headers) if $code && ($code == 304 || $code == 101);

    my $te = header_value($res, 'Transfer-Encoding');
    my $len = header_value($res, 'Content-Length');
    my $left;
    if (defined $te && $te eq 'chunked') {
        my ($body, $err);
        ($body, $left, $err) = decode_chunked($rest);
        if (defined $err) {
            Test::More::fail("$name - $err");
            return;
        }
        $res->{content} = $body;
    } elsif (defined $len && $len =~ /^\s*(\d+)\s*$/) {
        $len = $1;
        if (length $rest < $len) {
            warn "WARNING: $name - response body truncated: $len expected, but got ",
                 length $rest, "\n" unless $head_req;
        } elsif (length $rest > $len) {
            $left = substr $rest, $len;
            $res->{content} = substr $rest, 0, $len;
        }
    }
    return ($res, $raw_headers, $left);
}

# Returns ($body, $left_over, $error).
sub decode_chunked {
    my $raw = shift;
    my $out = '';
    while (1) {
        if ($raw =~ /\G0+[ \t]*(?:;[^\r\n]*)?\r\n/gc) {
            1 while $raw =~ /\G[^\r\n]+\r\n/gc;    # trailer fields
            return (undef, undef, 'invalid chunked data received (expected CRLF).')
                unless $raw =~ /\G\r\n/gc;
            my $left = substr $raw, pos $raw;
            return ($out, length $left ? $left : undef);
        }
        if ($raw =~ /\G[ \t]*([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r\n/gc) {
            my $size = hex $1;
            my $p = pos $raw;
            return (undef, undef, 'invalid chunked data received '
                    . '(not enought octets for the data section)')
                if length($raw) - $p < $size;
            $out .= substr $raw, $p, $size;
            pos($raw) = $p + $size;
            return (undef, undef, 'invalid chunked data received (expected CRLF).')
                unless $raw =~ /\G\r\n/gc;
            next;
        }
        return (undef, undef, "invalid chunked body received: $1") if $raw =~ /\G(.+)/gcs;
        return (undef, undef, "no last chunk found - $raw");
    }
}

# Case-insensitive lookup; repeated headers are joined with ", ".
sub header_value {
    my ($res, $key) = @_;
    return undef unless $res;
    my @v = map { $_->[1] } grep { lc $_->[0] eq lc $key } @{ $res->{headers} };
    return @v ? join(', ', @v) : undef;
}

sub get_indexed_value {
    my ($name, $value, $idx, $need_array) = @_;
    if ($need_array) {
        return $value->[$idx] if ref $value eq 'ARRAY';
        bail_out("$name - You asked for many requests, the expected results should be arrays as well.");
    }
    return ref $value eq 'ARRAY' ? $value->[0] : $value;
}

sub check_error_code {
    my ($block, $res, $idx, $need_array) = @_;
    my $name = $block->name;
    my $code = ($res && $res->{code}) || '';
    if (defined $block->error_code_like) {
        my $pat = get_indexed_value($name, scalar $block->error_code_like, $idx, $need_array);
        Test::More::like($code, qr/$pat/sm, "$name - status code ok");
    } else {
        my $want = defined $block->error_code
            ? get_indexed_value($name, scalar $block->error_code, $idx, $need_array) : 200;
        Test::More::is($code, $want, "$name - status code ok");
    }
}

# "Name: value" lines; "!Name" means the header must be absent.
sub parse_header_spec {
    my $text = shift // '';
    my (@order, %val);
    for my $line (split /\n/, $text) {
        $line =~ s/^\s+|\s+$//g;
        next if $line eq '';
        my ($k, $v);
        if ($line =~ s/^!\s*//) {
            $k = $line;
        } else {
            ($k, $v) = split /\s*:\s*/, $line, 2;
        }
        push @order, $k unless exists $val{$k};
        $val{$k} = $v;
    }
    return map { [$_, $val{$_}] } @order;
}

sub subst_ports {
    my $s = shift;
    $s =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
    $s =~ s/\$ServerPort\b/$ServerPort/g;
    return $s;
}

sub check_response_headers {
    my ($block, $res, $raw_headers, $idx, $need_array) = @_;
    my $name = $block->name;
    if (defined $block->response_headers) {
        my $spec = get_indexed_value($name, scalar $block->response_headers, $idx, $need_array);
        for my $h (parse_header_spec($spec)) {
            my ($key, $val) = @$h;
            if (!defined $val) {
                # Like the real runner: a case-sensitive search in the raw headers.
                Test::More::unlike($raw_headers, qr/^\s*\Q$key\E\s*:/ms,
                                   "$name - header $key not present in the raw headers");
                next;
            }
            Test::More::is(header_value($res, $key) // '', subst_ports($val),
                           "$name - header $key ok");
        }
    } elsif (defined $block->response_headers_like) {
        my $spec = get_indexed_value($name, scalar $block->response_headers_like, $idx, $need_array);
        for my $h (parse_header_spec($spec)) {
            my ($key, $val) = @$h;
            $val //= '';
            Test::More::like(header_value($res, $key) // '', qr/^$val$/,
                             "$name - header $key like ok");
        }
    }
}

sub check_response_body {
    my ($block, $res, $idx, $rep, $need_array) = @_;
    my $name = $block->name;
    my $content = $res ? $res->{content} : undef;

    if (defined $block->response_body) {
        my $expected = get_indexed_value($name, scalar $block->response_body, $idx, $need_array);
        if (defined $expected && !ref $expected) {
            $expected = expand_env(subst_ports($expected), $name);
        }
        my $what = "(repeated req $rep, req $idx)";
        if (ref $expected) {
            Test::More::like($content, $expected, "$name - response_body - like $what");
        } else {
            Test::More::is($content, $expected,
                           "$name - response_body - response is expected $what");
        }
    } elsif (defined $block->response_body_like || defined $block->response_body_unlike) {
        my $like = defined $block->response_body_like;
        my $type = $like ? 'like' : 'unlike';
        my $pat = get_indexed_value($name, $like ? scalar $block->response_body_like
                                                 : scalar $block->response_body_unlike,
                                    $idx, $need_array);
        $pat = subst_ports($pat);
        my $summary = trim($content) // '';
        my $cmp = $like ? \&Test::More::like : \&Test::More::unlike;
        $cmp->($content, qr/$pat/s, "$name - response_body_$type - response is expected ($summary)");
    }
}

# ---- logs ------------------------------------------------------------------

# Section value -> list of patterns (plain lines, or an eval'ed array/qr//).
sub patterns {
    my $v = shift;
    return () unless defined $v;
    return @$v if ref $v eq 'ARRAY';
    return ($v) if ref $v;
    chomp $v;
    return split /\n+/, $v;
}

sub line_matches {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ $pat : index($line, $pat) >= 0;
}

sub fmt_str {
    my $s = shift;
    chomp $s;
    $s =~ s/"/\\"/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\n/\\n/g;
    return $s;
}

# Every pattern must match some line.
sub expect_lines {
    my ($name, $pats, $lines, $file, $suffix) = @_;
    my @pats = @$pats;
    for my $line (@$lines) {
        for my $pat (@pats) {
            next unless defined $pat && line_matches($line, $pat);
            Test::More::pass("$name - pattern \"$pat\" matches a line in $file$suffix");
            undef $pat;
        }
    }
    for my $pat (grep { defined } @pats) {
        Test::More::fail("$name - pattern \"$pat\" should match a line in $file$suffix");
    }
}

# No pattern may match any line; each offending line is a failure.
sub reject_lines {
    my ($name, $pats, $lines, $file, $suffix) = @_;
    my %found;
    for my $i (0 .. $#$lines) {
        for my $pat (@$pats) {
            next unless line_matches($lines->[$i], $pat);
            $found{$pat} = 1;
            my @more = @$lines[$i + 1 .. ($i + 9 < $#$lines ? $i + 9 : $#$lines)];
            Test::More::fail("$name - pattern \"" . fmt_str($pat) . "\" should not match any line in "
                . "$file but matches line \"" . fmt_str($lines->[$i]) . "\"$suffix\n"
                . join '', @more);
        }
    }
    for my $pat (grep { !$found{$_} } @$pats) {
        Test::More::pass("$name - pattern \"" . fmt_str($pat) . "\" does not match a line in $file$suffix");
    }
}

# The part of error.log written since the previous check.
sub error_log_data {
    sleep $Sleep * 3;    # let log-phase handlers finish after the response
    open my $in, '<', $ErrLogFile or return [];
    seek $in, $ErrLogPos, 0 if !$CheckAccumErrLog && $ErrLogPos;
    my @lines = <$in>;
    $ErrLogPos = tell $in unless $CheckAccumErrLog;
    return \@lines;
}

sub check_error_log {
    my ($block, $rep) = @_;
    my $name = $block->name;
    my $lines = error_log_data();

    my $grep = $block->grep_error_log;
    my $grep_out = $block->grep_error_log_out;
    bail_out("$name - No --- grep_error_log defined but --- grep_error_log_out is defined")
        if !defined $grep && defined $grep_out;
    $grep = $grep->[$rep] if ref $grep eq 'ARRAY';
    if (defined $grep) {
        bail_out("$name - No --- grep_error_log_out defined but --- grep_error_log is defined")
            unless defined $grep_out;
        my $expected = ref $grep_out ? $grep_out : expand_env($grep_out, $name);
        $expected = $expected->[$rep] if ref $expected eq 'ARRAY';
        my $got = '';
        for my $line (@$lines) {
            next unless ref $grep ? $line =~ $grep : $line =~ /\Q$grep\E/;
            $got .= "$&\n" if $& !~ /\n/;
        }
        if (ref $expected eq 'Regexp') {
            Test::More::like($got, $expected, "$name - grep_error_log_out (req $rep)");
        } else {
            Test::More::is($got, $expected, "$name - grep_error_log_out (req $rep)");
        }
    }

    my @want = patterns(scalar $block->error_log);
    my @reject = patterns(scalar $block->no_error_log);
    expect_lines($name, \@want, $lines, 'error.log', " (req $rep)") if defined $block->error_log;
    reject_lines($name, \@reject, $lines, 'error.log', " (req $rep)") if defined $block->no_error_log;

    # Surface serious messages the test did not ask about.
    my @mentioned = (@want, @reject);
    for my $kind ('[alert', '[crit', '[emerg', 'writing a global lua variable') {
        next if grep { !ref && index($_, $kind) >= 0 } @mentioned;
        for my $line (grep { index($_, $kind) >= 0 } @$lines) {
            warn "WARNING: $name - " . fmt_str($line) . "\n";
        }
    }
}

# Runs after nginx has been stopped: looks at what it logged while exiting.
sub check_shutdown_error_log {
    my ($block, $dry_run) = @_;
    my $name = $block->name;
    return unless defined $block->shutdown_error_log || defined $block->no_shutdown_error_log;
    if ($dry_run) {
        my $n = () = (patterns(scalar $block->shutdown_error_log),
                      patterns(scalar $block->no_shutdown_error_log));
        SKIP: { Test::More::skip("$name - shutdown_error_log - server left running", $n) }
        return;
    }
    my $lines = error_log_data();
    if (defined $block->shutdown_error_log) {
        expect_lines($name, [patterns(scalar $block->shutdown_error_log)], $lines, 'error.log', '');
    }
    if (defined $block->no_shutdown_error_log) {
        reject_lines($name, [patterns(scalar $block->no_shutdown_error_log)], $lines, 'error.log', '');
    }
}

# ---- helpers ---------------------------------------------------------------

sub parse_time {
    my $t = shift;
    return undef unless defined $t;
    return $1 / 1000 if $t =~ /^\s*([\d.]+)\s*ms\s*$/;
    return $1 if $t =~ /^\s*([\d.]+)\s*s?\s*$/;
    return $t;
}

sub trim {
    my $s = shift;
    return undef unless defined $s;
    $s =~ s/^\s+|\s+$//g;
    $s =~ s/\s+/ /g;
    return $s;
}

sub slurp {
    my $f = shift;
    open my $in, '<', $f or return '';
    local $/;
    return scalar <$in>;
}

sub spew {
    my ($f, $data) = @_;
    open my $out, '>', $f or bail_out("Can't open $f for writing: $!");
    binmode $out;
    print $out $data;
    close $out;
}

# A port nobody listens on now (for $TEST_NGINX_RAND_PORT_N).
sub free_port {
    my $used = shift;
    for (1 .. 1000) {
        my $port = 1988 + int rand 63547;
        next if $used->{$port};
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                                      Proto => 'tcp', Listen => 1, ReuseAddr => 1)
            or next;
        close $s;
        return $port;
    }
    return undef;
}

# Replaces $TEST_NGINX_* with environment values; $TEST_NGINX_RAND_PORT_N
# gets a free port that stays the same within one block.
sub expand_env {
    my ($text, $name) = @_;
    return $text unless defined $text;
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        my $var = $1;
        if ($var =~ /^TEST_NGINX_RAND_PORT_\d+$/) {
            # Look the port up before assigning: `//=` would first create the
            # key with an undefined value, which the list of taken ports sees.
            unless (defined $RandPorts->{$var}) {
                my $port = free_port({ $ServerPort => 1, map { $_ => 1 } values %$RandPorts })
                    // bail_out("$name - Cannot find an available listening port number for $var.\n");
                $RandPorts->{$var} = $port;
            }
            $RandPorts->{$var};
        } else {
            $ENV{$var} // bail_out("$name - No environment $var defined.\n");
        }
    }ge;
    return $text;
}

# Turn INT/TERM into a normal exit so that END below still stops the
# server (signals that are ignored, e.g. in background jobs, stay ignored).
for my $sig (qw(INT TERM)) {
    $SIG{$sig} = sub { exit 1 } if !$SIG{$sig} || $SIG{$sig} eq 'DEFAULT';
}

END {
    local $?;
    # Never leave a server behind, even when the test script died midway.
    stop_nginx('END') if $RunningPid && !$ENV{TEST_NGINX_NO_CLEAN};
}

1;
