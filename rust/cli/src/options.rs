//! Command line of `mcp-bridge`.
//!
//! Options that set a route field stay `None` unless given: only what the
//! user gave is written into the route, so config.lua's schema, the one
//! home of defaults, supplies the rest. The defaults shown in brackets below
//! are held to that schema by tests/defaults.rs.

use mcp_bridge_core::levels;
use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: mcp-bridge serve [OPTIONS] [-- COMMAND [ARGS...]]

Serves the stdio MCP server COMMAND over MCP's Streamable HTTP transport
(revisions 2025-03-26 to 2026-07-28, at --base-uri) and its HTTP+SSE
transport (at --base-uri/sse) on a stock nginx with the lua module, one
COMMAND process per client session. Without COMMAND, bridges the bundled
demo server (mcp-fixture --demo).
Backends run as --user, with the PATH of this command (unless given
--env PATH=...), and find COMMAND on it.

options:
  --listen ADDR                 address to listen on [127.0.0.1:9080]
  --base-uri PATH               the Streamable HTTP endpoint, and prefix of the
                                /sse and /message endpoints [/mcp]
  --allowed-host HOST[:PORT]    a Host requests may carry (repeatable); others
                                get 403 [on a loopback --listen: its loopback
                                names on its port; else any]
  --allowed-origin ORIGIN       an Origin requests may carry besides origins on
                                an allowed host (repeatable)
  --workers N                   nginx worker processes [1]
  --max-sessions N              live sessions per worker [100]
  --max-sessions-per-node N     live sessions of all workers together [no limit]
  --slow-client-timeout-ms N    longest a client may take to accept one
                                message before its session ends [30000]
  --kill-grace-ms N             SIGTERM to SIGKILL delay for a backend [2000]
  --max-message-bytes N         largest message in either direction [4194304]
  --keepalive-interval-ms N     SSE keepalive interval [15000]
  --stderr notify|log           where backend stderr goes [notify]
  --env KEY=VALUE               extra backend environment (repeatable)
  --env KEY                     the same, with the value of KEY in this
                                command's environment, so a secret stays
                                out of the command line (which `ps` shows).
                                The values go into a file of the prefix
                                only the user running serve may read
  --cwd DIR                     backend working directory
  --session-home                a private HOME and TMPDIR per session,
                                removed when it ends [off]
  --session-idle-timeout-ms N   a Streamable HTTP session without a request
                                this long ends [1800000]
  --session-max-lifetime-ms N   ... and this long after it started [86400000]
  --restart-on-crash            start a crashed backend again for its session,
                                replaying its initialize [off]
  --max-restarts N              restarts of one session's backend within
                                --restart-window-ms [3]
  --restart-window-ms N         the window of --max-restarts [60000]
  --pool-min-idle N             idle backends kept ready for stateless
                                (2026-07-28) requests, per consumer [0]
  --pool-max-per-key N          backends for stateless requests of one
                                consumer in one worker [4]
  --pool-max-per-worker N       backends for stateless requests in one
                                worker [16]
  --pool-idle-timeout-ms N      an idle pooled backend this long ends [300000]
  --pool-max-requests N         a pooled backend ends after this many
                                requests [1000]
  --pool-max-age-ms N           a pooled backend ends this long after it
                                started, once idle [3600000]
  --pool-wait-ms N              how long a stateless request waits for a
                                pooled backend before 503 [5000]
  --input-wait-ms N             how long a stateless call that asked its
                                client for input waits for the retry [60000]
  --max-parked-per-consumer N   stateless calls of one consumer waiting for
                                input at once, per worker [16]
  --max-parked-per-worker N     stateless calls waiting for input at once,
                                per worker [256]
  --limit-memory-mb N           address space of each backend process, in
                                MiB [inherited from this command]
  --limit-processes N           processes and threads of the backends' user
                                (all of them, not one backend's) at which a
                                backend's fork fails [inherited]
  --limit-cpu-seconds N         CPU time of each backend process: SIGXCPU
                                then, SIGKILL a CPU second later [inherited]
  --limit-open-files N          open files of each backend process [inherited]
  --cluster redis://HOST:PORT[/DB]
                                cluster mode: this node is one of several behind
                                a load balancer, and passes each request to the
                                node that owns its session; Redis keeps the
                                nodes' leases and the cluster's ceiling [off]
  --node-address HOST:PORT      where the other nodes reach this one [--listen,
                                unless it is a wildcard address]
  --cluster-secret-file PATH    the cluster's secret (16 bytes or more, the same
                                on every node) [$MCP_BRIDGE_CLUSTER_SECRET]
  --cluster-name NAME           the cluster's name [mcp-bridge]
  --cluster-lease-ms N          a node that stops renewing its lease leaves the
                                cluster this long after [5000]
  --max-sessions-per-cluster N  live sessions of every node together [no limit]
  --user USER                   user the workers and backends run as; other
                                than yourself only when run as root [you]
  --log-level LEVEL             nginx error log level [notice]
  --status-uri PATH             serve a JSON status report at PATH, to
                                loopback clients only [off]
  --metrics-uri PATH            serve the metrics in Prometheus' text format
                                at PATH, to loopback clients only [off]
  --nginx PATH                  nginx binary [nginx on PATH, or /usr/sbin/nginx]
  --prefix DIR                  keep nginx's files, the hosts' sockets and the
                                backends' HOME in DIR [a temporary directory]
  -h, --help                    this help
  -V, --version                 the version
";

/// The default of `--max-message-bytes` that config.lua applies when the
/// option is not given; the gateway sizes nginx's body buffers with it.
/// A test holds it to the usage text, which tests/defaults.rs holds to
/// config.lua.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone)]
pub struct Serve {
    pub listen: String,
    /// Not the route's default (""): the gateway serves under /mcp.
    pub base_uri: String,
    pub workers: u32,
    pub status_uri: Option<String>,
    pub metrics_uri: Option<String>,
    pub log_level: String,
    pub nginx: Option<PathBuf>,
    pub prefix: Option<PathBuf>,
    /// None: the user running `serve`.
    pub user: Option<String>,
    /// Cluster mode's Redis URL; None: cluster mode off.
    pub cluster: Option<String>,
    pub node_address: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    /// MCP_BRIDGE_CLUSTER_SECRET, as found when the options were parsed.
    pub cluster_secret_env: Option<String>,
    pub cluster_name: Option<String>,
    pub cluster_lease_ms: Option<u64>,
    pub max_sessions_per_cluster: Option<u64>,
    // Route fields: None (false) leaves config.lua's default.
    pub max_sessions: Option<u64>,
    pub max_sessions_per_node: Option<u64>,
    pub slow_client_timeout_ms: Option<u64>,
    pub kill_grace_ms: Option<u64>,
    pub max_message_bytes: Option<u64>,
    pub keepalive_interval_ms: Option<u64>,
    pub session_idle_timeout_ms: Option<u64>,
    pub session_max_lifetime_ms: Option<u64>,
    pub restart_on_crash: bool,
    pub max_restarts: Option<u64>,
    pub restart_window_ms: Option<u64>,
    pub pool_min_idle: Option<u64>,
    pub pool_max_per_key: Option<u64>,
    pub pool_max_per_worker: Option<u64>,
    pub pool_idle_timeout_ms: Option<u64>,
    pub pool_max_requests: Option<u64>,
    pub pool_max_age_ms: Option<u64>,
    pub pool_wait_ms: Option<u64>,
    pub input_wait_ms: Option<u64>,
    pub max_parked_per_consumer: Option<u64>,
    pub max_parked_per_worker: Option<u64>,
    /// The route's `limits`; None leaves the host's own.
    pub limit_memory_mb: Option<u64>,
    pub limit_processes: Option<u64>,
    pub limit_cpu_seconds: Option<u64>,
    pub limit_open_files: Option<u64>,
    pub stderr: Option<String>,
    pub session_home: bool,
    /// Empty: the default (see `allowed_hosts()` in main.rs).
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// Empty: the bundled demo server.
    pub command: Vec<String>,
}

impl Default for Serve {
    fn default() -> Self {
        Serve {
            listen: "127.0.0.1:9080".into(),
            base_uri: "/mcp".into(),
            workers: 1,
            status_uri: None,
            metrics_uri: None,
            log_level: "notice".into(),
            nginx: None,
            prefix: None,
            user: None,
            cluster: None,
            node_address: None,
            cluster_secret_file: None,
            cluster_secret_env: None,
            cluster_name: None,
            cluster_lease_ms: None,
            max_sessions_per_cluster: None,
            max_sessions: None,
            max_sessions_per_node: None,
            slow_client_timeout_ms: None,
            kill_grace_ms: None,
            max_message_bytes: None,
            keepalive_interval_ms: None,
            session_idle_timeout_ms: None,
            session_max_lifetime_ms: None,
            restart_on_crash: false,
            max_restarts: None,
            restart_window_ms: None,
            pool_min_idle: None,
            pool_max_per_key: None,
            pool_max_per_worker: None,
            pool_idle_timeout_ms: None,
            pool_max_requests: None,
            pool_max_age_ms: None,
            pool_wait_ms: None,
            input_wait_ms: None,
            max_parked_per_consumer: None,
            max_parked_per_worker: None,
            limit_memory_mb: None,
            limit_processes: None,
            limit_cpu_seconds: None,
            limit_open_files: None,
            stderr: None,
            session_home: false,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            env: Vec::new(),
            cwd: None,
            command: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub enum Action {
    Serve(Box<Serve>),
    Help,
    Version,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag} needs a whole number, got \"{value}\""))
}

/// `--env KEY=VALUE`, or `--env KEY` with the value looked up by `getenv`.
fn env_entry(v: &str, getenv: &dyn Fn(&str) -> Option<OsString>) -> Result<(String, String), String> {
    if let Some((k, val)) = v.split_once('=') {
        return Ok((k.to_string(), val.to_string()));
    }
    if v.is_empty() {
        return Err("--env needs KEY=VALUE or KEY, got \"\"".into());
    }
    let val = getenv(v)
        .ok_or_else(|| format!("--env {v}: {v} is not set in this environment (export it, or give --env {v}=VALUE)"))?;
    let val = val.into_string().map_err(|_| format!("--env {v}: the value of {v} is not valid UTF-8"))?;
    Ok((v.to_string(), val))
}

/// The environment variable a cluster's secret may come from.
pub const CLUSTER_SECRET_VAR: &str = "MCP_BRIDGE_CLUSTER_SECRET";

/// The cluster options go together: each needs --cluster, and --cluster
/// needs a secret (never on the command line, which `ps` shows).
fn check_cluster(s: &mut Serve, getenv: &dyn Fn(&str) -> Option<OsString>) -> Result<(), String> {
    let Some(url) = &s.cluster else {
        let given = [
            ("--node-address", s.node_address.is_some()),
            ("--cluster-secret-file", s.cluster_secret_file.is_some()),
            ("--cluster-name", s.cluster_name.is_some()),
            ("--cluster-lease-ms", s.cluster_lease_ms.is_some()),
            ("--max-sessions-per-cluster", s.max_sessions_per_cluster.is_some()),
        ];
        return match given.iter().find(|(_, set)| *set) {
            Some((option, _)) => Err(format!("{option} needs --cluster redis://HOST:PORT")),
            None => Ok(()),
        };
    };
    if !url.starts_with("redis://") || url.len() <= "redis://".len() {
        return Err(format!("--cluster needs a redis:// URL such as redis://127.0.0.1:6379, got \"{url}\""));
    }
    if s.cluster_secret_file.is_none() {
        let secret = getenv(CLUSTER_SECRET_VAR).ok_or_else(|| {
            format!("--cluster needs the cluster's secret: --cluster-secret-file PATH, or {CLUSTER_SECRET_VAR} in the environment")
        })?;
        s.cluster_secret_env =
            Some(secret.into_string().map_err(|_| format!("{CLUSTER_SECRET_VAR} is not valid UTF-8"))?);
    }
    Ok(())
}

/// Parses the command line; `getenv` reads this process's environment
/// (for `--env KEY`).
pub fn parse(args: &[String], getenv: &dyn Fn(&str) -> Option<OsString>) -> Result<Action, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("serve") => {}
        Some("-h") | Some("--help") | Some("help") => return Ok(Action::Help),
        Some("-V") | Some("--version") => return Ok(Action::Version),
        Some(other) => return Err(format!("unknown command \"{other}\"")),
        None => return Err("missing command".into()),
    }
    let mut s = Serve::default();
    while let Some(flag) = it.next() {
        if flag == "--" {
            s.command = it.by_ref().cloned().collect();
            if s.command.is_empty() {
                return Err("nothing after \"--\": give the MCP server's command".into());
            }
            break;
        }
        if flag == "-h" || flag == "--help" {
            return Ok(Action::Help);
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (flag.as_str(), None),
        };
        if !name.starts_with("--") {
            return Err(format!("unexpected argument \"{flag}\" (put the server's command after \"--\")"));
        }
        if name == "--session-home" || name == "--restart-on-crash" {
            if inline.is_some() {
                return Err(format!("{name} takes no value"));
            }
            match name {
                "--session-home" => s.session_home = true,
                _ => s.restart_on_crash = true,
            }
            continue;
        }
        let mut value = || -> Result<String, String> {
            inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| format!("{name} needs a value"))
        };
        match name {
            "--listen" => s.listen = value()?,
            "--base-uri" => s.base_uri = value()?,
            "--workers" => s.workers = number(name, &value()?)?,
            "--max-sessions" => s.max_sessions = Some(number(name, &value()?)?),
            "--max-sessions-per-node" => s.max_sessions_per_node = Some(number(name, &value()?)?),
            "--slow-client-timeout-ms" => s.slow_client_timeout_ms = Some(number(name, &value()?)?),
            "--status-uri" => s.status_uri = Some(value()?),
            "--metrics-uri" => s.metrics_uri = Some(value()?),
            "--kill-grace-ms" => s.kill_grace_ms = Some(number(name, &value()?)?),
            "--max-message-bytes" => s.max_message_bytes = Some(number(name, &value()?)?),
            "--keepalive-interval-ms" => s.keepalive_interval_ms = Some(number(name, &value()?)?),
            "--session-idle-timeout-ms" => s.session_idle_timeout_ms = Some(number(name, &value()?)?),
            "--session-max-lifetime-ms" => s.session_max_lifetime_ms = Some(number(name, &value()?)?),
            "--max-restarts" => s.max_restarts = Some(number(name, &value()?)?),
            "--restart-window-ms" => s.restart_window_ms = Some(number(name, &value()?)?),
            "--pool-min-idle" => s.pool_min_idle = Some(number(name, &value()?)?),
            "--pool-max-per-key" => s.pool_max_per_key = Some(number(name, &value()?)?),
            "--pool-max-per-worker" => s.pool_max_per_worker = Some(number(name, &value()?)?),
            "--pool-idle-timeout-ms" => s.pool_idle_timeout_ms = Some(number(name, &value()?)?),
            "--pool-max-requests" => s.pool_max_requests = Some(number(name, &value()?)?),
            "--pool-max-age-ms" => s.pool_max_age_ms = Some(number(name, &value()?)?),
            "--pool-wait-ms" => s.pool_wait_ms = Some(number(name, &value()?)?),
            "--input-wait-ms" => s.input_wait_ms = Some(number(name, &value()?)?),
            "--max-parked-per-consumer" => s.max_parked_per_consumer = Some(number(name, &value()?)?),
            "--max-parked-per-worker" => s.max_parked_per_worker = Some(number(name, &value()?)?),
            "--limit-memory-mb" => s.limit_memory_mb = Some(number(name, &value()?)?),
            "--limit-processes" => s.limit_processes = Some(number(name, &value()?)?),
            "--limit-cpu-seconds" => s.limit_cpu_seconds = Some(number(name, &value()?)?),
            "--limit-open-files" => s.limit_open_files = Some(number(name, &value()?)?),
            "--stderr" => s.stderr = Some(value()?),
            "--env" => s.env.push(env_entry(&value()?, getenv)?),
            "--allowed-host" => s.allowed_hosts.push(value()?),
            "--allowed-origin" => s.allowed_origins.push(value()?),
            "--cwd" => s.cwd = Some(value()?),
            "--user" => {
                let user = value()?;
                if user.is_empty() {
                    return Err("--user needs a user name".into());
                }
                s.user = Some(user);
            }
            "--cluster" => s.cluster = Some(value()?),
            "--node-address" => s.node_address = Some(value()?),
            "--cluster-secret-file" => s.cluster_secret_file = Some(PathBuf::from(value()?)),
            "--cluster-name" => s.cluster_name = Some(value()?),
            "--cluster-lease-ms" => s.cluster_lease_ms = Some(number(name, &value()?)?),
            "--max-sessions-per-cluster" => s.max_sessions_per_cluster = Some(number(name, &value()?)?),
            "--log-level" => s.log_level = value()?,
            "--nginx" => s.nginx = Some(PathBuf::from(value()?)),
            "--prefix" => s.prefix = Some(PathBuf::from(value()?)),
            _ => return Err(format!("unknown option {name}")),
        }
    }
    check_cluster(&mut s, getenv)?;
    if s.workers == 0 || s.workers > 256 {
        return Err(format!("--workers must be between 1 and 256, got {}", s.workers));
    }
    for (option, uri, example) in
        [("--status-uri", &s.status_uri, "/-/status"), ("--metrics-uri", &s.metrics_uri, "/-/metrics")]
    {
        let Some(uri) = uri else { continue };
        let plain = uri.starts_with('/') && uri.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        if !plain || uri.contains("//") || uri.contains("/.") {
            return Err(format!("{option} must be a plain path such as {example}, got \"{uri}\""));
        }
    }
    if s.status_uri.is_some() && s.status_uri == s.metrics_uri {
        return Err("--status-uri and --metrics-uri must differ".into());
    }
    if levels::severity(&s.log_level).is_none() {
        return Err(format!("--log-level: {}", levels::unknown(&s.log_level)));
    }
    Ok(Action::Serve(Box::new(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn try_parse(s: &str) -> Result<Action, String> {
        parse(&args(s), &no_env)
    }

    fn serve(s: &str) -> Serve {
        match try_parse(s).expect("parse") {
            Action::Serve(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cluster_options_go_together_and_the_secret_never_comes_from_the_command_line() {
        let err = |s: &str| try_parse(s).expect_err("refused");
        assert!(err("serve --node-address 10.0.0.1:9080").contains("--node-address needs --cluster"));
        assert!(err("serve --max-sessions-per-cluster 3").contains("needs --cluster"));
        assert!(err("serve --cluster http://x").contains("redis:// URL"));
        assert!(err("serve --cluster redis://127.0.0.1:6379").contains("MCP_BRIDGE_CLUSTER_SECRET"));
        assert!(err("serve --cluster-secret x --cluster redis://r:1").contains("unknown option --cluster-secret"));
        let from_file = serve("serve --cluster redis://r:1 --cluster-secret-file /s --max-sessions-per-cluster 4");
        assert_eq!(from_file.cluster_secret_file.as_deref(), Some(std::path::Path::new("/s")));
        assert_eq!(from_file.max_sessions_per_cluster, Some(4));
        let env = |k: &str| (k == CLUSTER_SECRET_VAR).then(|| OsString::from("sixteen bytes at least"));
        match parse(&args("serve --cluster redis://r:1 --cluster-lease-ms 900"), &env).expect("parse") {
            Action::Serve(s) => {
                assert_eq!(s.cluster_secret_env.as_deref(), Some("sixteen bytes at least"));
                assert_eq!(s.cluster_lease_ms, Some(900));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_the_command_after_the_separator() {
        let s = serve("serve -- npx -y @modelcontextprotocol/server-filesystem /data");
        assert_eq!(s.listen, "127.0.0.1:9080");
        assert_eq!(s.base_uri, "/mcp");
        assert_eq!(s.command, ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/data"]);
        assert!(serve("serve").command.is_empty(), "no command: the demo");
    }

    #[test]
    fn route_fields_not_given_are_left_to_config_lua() {
        let s = serve("serve");
        assert_eq!(
            (s.max_sessions, s.slow_client_timeout_ms, s.kill_grace_ms, s.max_message_bytes, s.keepalive_interval_ms),
            (None, None, None, None, None)
        );
        assert_eq!((s.stderr, s.session_home, s.user), (None, false, None));
        assert_eq!(
            (s.limit_memory_mb, s.limit_processes, s.limit_cpu_seconds, s.limit_open_files),
            (None, None, None, None)
        );
    }

    #[test]
    fn options_take_separate_or_inline_values() {
        let s = serve("serve --listen 0.0.0.0:8000 --workers=2 --max-sessions 5 --env A=1 --env B=x=y -- cat");
        assert_eq!((s.listen.as_str(), s.workers, s.max_sessions), ("0.0.0.0:8000", 2, Some(5)));
        let s2 = serve("serve --max-sessions-per-node 7 --slow-client-timeout-ms 900 --status-uri /-/status");
        assert_eq!((s2.max_sessions_per_node, s2.slow_client_timeout_ms), (Some(7), Some(900)));
        assert_eq!(s2.status_uri.as_deref(), Some("/-/status"));
        assert_eq!(s.env, [("A".to_string(), "1".to_string()), ("B".to_string(), "x=y".to_string())]);
        let limits =
            serve("serve --limit-memory-mb 512 --limit-cpu-seconds=30 --limit-processes 4000 --limit-open-files 64");
        assert_eq!(
            (limits.limit_memory_mb, limits.limit_cpu_seconds, limits.limit_processes, limits.limit_open_files),
            (Some(512), Some(30), Some(4000), Some(64))
        );
        let s3 = serve("serve --session-home --user nobody --stderr log");
        assert!(s3.session_home);
        assert_eq!((s3.user.as_deref(), s3.stderr.as_deref()), (Some("nobody"), Some("log")));
    }

    #[test]
    fn env_without_a_value_takes_it_from_the_environment() {
        let getenv = |k: &str| (k == "TOKEN").then(|| OsString::from("s3cret"));
        let Ok(Action::Serve(s)) = parse(&args("serve --env TOKEN --env A=1"), &getenv) else { panic!("parse") };
        assert_eq!(s.env, [("TOKEN".to_string(), "s3cret".to_string()), ("A".to_string(), "1".to_string())]);
        let err = parse(&args("serve --env MISSING"), &getenv).expect_err("unset");
        assert!(err.contains("MISSING is not set in this environment"), "{err}");
        let bytes = |_: &str| Some(std::os::unix::ffi::OsStringExt::from_vec(vec![0xff]));
        assert!(parse(&args("serve --env BIN"), &bytes).expect_err("not UTF-8").contains("not valid UTF-8"));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |s: &str| try_parse(s).expect_err(s);
        assert!(err("serve --workers two").contains("--workers needs a whole number"));
        assert!(err("serve --workers 0").contains("between 1 and 256"));
        assert!(err("serve --bogus 1").contains("unknown option --bogus"));
        assert!(err("serve cat").contains("after \"--\""));
        assert!(err("serve --listen").contains("needs a value"));
        assert!(err("serve --").contains("nothing after"));
        assert!(err("run").contains("unknown command"));
        assert!(err("serve --log-level loud").contains("--log-level: unknown log level \"loud\" (one of debug,"));
        assert!(err("serve --max-sessions-per-node x").contains("whole number"));
        assert!(err("serve --limit-memory-mb -1").contains("--limit-memory-mb needs a whole number"));
        assert!(err("serve --session-home=yes").contains("takes no value"));
        assert!(parse(&[String::from("serve"), String::from("--env"), String::new()], &no_env).is_err());
        for option in ["--status-uri", "--metrics-uri"] {
            for bad in ["status", "/a b", "/a//b", "/a/../b", "/a;b", "/{x}"] {
                let err = parse(&[String::from("serve"), option.into(), bad.into()], &no_env).expect_err(bad);
                assert!(err.starts_with(option), "{err}");
            }
        }
        assert!(err("serve --status-uri /-/x --metrics-uri /-/x").contains("must differ"));
    }

    #[test]
    fn the_body_limit_default_is_the_one_the_usage_shows() {
        assert!(USAGE.contains(&format!(
            "--max-message-bytes N         largest message in either direction [{DEFAULT_MAX_MESSAGE_BYTES}]"
        )));
    }
}
