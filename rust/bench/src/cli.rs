//! Command-line parsing, by hand like the other tools of the workspace.

use std::path::PathBuf;
use std::time::Duration;

use crate::http::Url;
use crate::session::Target;

pub const USAGE: &str = "\
usage: mcp-load SCENARIO [OPTIONS] (--sse URL | --streamable URL | --stateless URL
                                     | --stdio -- COMMAND [ARGS...])

Drives an MCP server that offers the `echo` and `pid` tools (mcp-fixture)
either directly over its stdio (one process per session, the baseline) or
through a gateway: over HTTP+SSE (MCP 2024-11-05), over Streamable HTTP with
sessions (2025-11-25: initialize, Mcp-Session-Id, DELETE), or with stateless
requests (2026-07-28, echo only). Prints one line of JSON with the results
(echo first prints {\"phase\":...} lines when its warm-up, measured window and
end begin, for whoever measures the gateway meanwhile). Exits 1 if anything
failed.

scenarios:
  echo       tools/call of echo in a closed loop per session: throughput and
             round-trip latency
  setup      sequential sessions: time to the endpoint event (SSE) and to
             the initialize response
  teardown   sequential disconnects (SSE: the stream's connection closed;
             Streamable HTTP: DELETE): time until SIGTERM reaches the
             backend and until it is gone (needs --pid-dir)
  idle       opens sessions, prints {\"phase\":\"ready\"}, holds them until a
             line or EOF on stdin (or --hold), then closes them
  steps      a fixed workload, for instruction counts: --count round trips
             of echo per session unmeasured, then prints {\"phase\":\"window\"}
             and waits for a line on stdin, then --count more per session,
             then prints {\"phase\":\"end\"} and waits again before closing

options:
  --sse URL           the gateway's SSE endpoint, http://HOST:PORT/PATH
  --streamable URL    the gateway's Streamable HTTP endpoint: sessions
  --stateless URL     the gateway's Streamable HTTP endpoint: 2026-07-28
                      requests without a session
  --stdio             spawn COMMAND per session and speak over its pipes
  --sessions N        sessions in parallel (echo, idle) [1]
  --count N           sequential sessions (setup, teardown), round trips
                      per session and phase (steps) [100]
  --size BYTES        length of the echoed text [32]
  --warmup SECS       echo: unmeasured time first [1]
  --duration SECS     echo: measured time [5]
  --pid-dir DIR       teardown: where the backends record <pid>.term
  --hold SECS         idle: hold for SECS instead of waiting on stdin
  --concurrency N     idle: sessions being opened at once [64]
  --timeout SECS      limit of every single wait [30]
  --label TEXT        copied into the output
  --post-to URL       Streamable sessions: after the handshake, send every
                      request to this endpoint instead (another node of a
                      cluster, which forwards it to the session's own)
  -h, --help          this help
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Echo,
    Setup,
    Teardown,
    Idle,
    Steps,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub target: Target,
    pub sessions: usize,
    pub count: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub pid_dir: Option<PathBuf>,
    pub hold: Option<Duration>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub label: Option<String>,
    /// Where a Streamable session's requests go after its handshake.
    pub post_to: Option<Url>,
}

/// Parses the arguments (without argv[0]). `None`: show the help.
pub fn parse(args: Vec<String>) -> Result<Option<Options>, String> {
    let mut scenario = None;
    let (mut http, mut stdio, mut command) = (Vec::new(), false, Vec::new());
    let (mut sessions, mut count, mut size) = (1usize, 100usize, 32usize);
    let (mut warmup, mut duration) = (Duration::from_secs(1), Duration::from_secs(5));
    let (mut pid_dir, mut hold, mut concurrency) = (None, None, 64usize);
    let (mut limit, mut label, mut post_to) = (Duration::from_secs(30), None, None);

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{flag} needs a value ({what})"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--sse" => http.push(Target::Sse(Url::parse(&value("a URL")?)?)),
            "--streamable" => http.push(Target::Streamable(Url::parse(&value("a URL")?)?)),
            "--stateless" => http.push(Target::Stateless(Url::parse(&value("a URL")?)?)),
            "--stdio" => stdio = true,
            "--sessions" => sessions = positive(&flag, &value("a number")?)?,
            "--count" => count = positive(&flag, &value("a number")?)?,
            "--size" => size = number(&flag, &value("bytes")?)?,
            "--warmup" => warmup = seconds(&flag, &value("seconds")?)?,
            "--duration" => duration = seconds(&flag, &value("seconds")?)?,
            "--pid-dir" => pid_dir = Some(PathBuf::from(value("a directory")?)),
            "--hold" => hold = Some(seconds(&flag, &value("seconds")?)?),
            "--concurrency" => concurrency = positive(&flag, &value("a number")?)?,
            "--timeout" => limit = seconds(&flag, &value("seconds")?)?,
            "--label" => label = Some(value("a text")?),
            "--post-to" => post_to = Some(Url::parse(&value("a URL")?)?),
            "--" => {
                command.extend(args.by_ref());
                break;
            }
            s if !s.starts_with('-') && scenario.is_none() => {
                scenario = Some(match s {
                    "echo" => Scenario::Echo,
                    "setup" => Scenario::Setup,
                    "teardown" => Scenario::Teardown,
                    "idle" => Scenario::Idle,
                    "steps" => Scenario::Steps,
                    _ => return Err(format!("unknown scenario {s:?}")),
                })
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
        if inline.is_some() && matches!(flag.as_str(), "--stdio" | "-h" | "--help") {
            return Err(format!("{flag} takes no value"));
        }
    }

    let scenario = scenario.ok_or("no scenario given (echo, setup, teardown, idle or steps)")?;
    if http.len() > 1 {
        return Err("give one of --sse, --streamable and --stateless".into());
    }
    let target = match (http.pop(), stdio, command.is_empty()) {
        (Some(t), false, true) => t,
        (None, true, false) => Target::Stdio(command),
        (None, true, true) => return Err("--stdio needs `-- COMMAND [ARGS...]`".into()),
        (None, false, _) => return Err("give --sse, --streamable or --stateless URL, or --stdio -- COMMAND".into()),
        (Some(t), true, _) => return Err(format!("--{} and --stdio exclude each other", t.name())),
        (Some(_), false, false) => return Err("a command after `--` only goes with --stdio".into()),
    };
    if matches!(target, Target::Stateless(_)) && !matches!(scenario, Scenario::Echo | Scenario::Steps) {
        return Err("stateless requests have no session: --stateless only goes with echo and steps".into());
    }
    if post_to.is_some() && !matches!(target, Target::Streamable(_)) {
        return Err("--post-to only goes with --streamable (sessions)".into());
    }
    if duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    Ok(Some(Options {
        scenario,
        target,
        sessions,
        count,
        size,
        warmup,
        duration,
        pid_dir,
        hold,
        concurrency,
        timeout: limit,
        label,
        post_to,
    }))
}

fn number(flag: &str, v: &str) -> Result<usize, String> {
    v.parse().map_err(|_| format!("{flag}: invalid number {v:?}"))
}

fn positive(flag: &str, v: &str) -> Result<usize, String> {
    match number(flag, v)? {
        0 => Err(format!("{flag} must be at least 1")),
        n => Ok(n),
    }
}

fn seconds(flag: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{flag}: invalid number of seconds {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_list(list: &[&str]) -> Result<Option<Options>, String> {
        parse(list.iter().map(|s| s.to_string()).collect())
    }

    fn options(list: &[&str]) -> Options {
        match parse_list(list) {
            Ok(Some(o)) => o,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    #[test]
    fn sse_and_stdio_targets() {
        let o = options(&["echo", "--sse", "http://127.0.0.1:9/mcp/sse", "--sessions=16", "--duration", "0.5"]);
        assert_eq!(o.scenario, Scenario::Echo);
        assert!(matches!(o.target, Target::Sse(ref u) if u.port == 9 && u.target == "/mcp/sse"));
        assert_eq!(o.sessions, 16);
        assert_eq!(o.duration, Duration::from_millis(500));

        let o = options(&["teardown", "--count", "3", "--pid-dir", "/p", "--stdio", "--", "fx", "--pid-dir", "/p"]);
        assert_eq!(o.scenario, Scenario::Teardown);
        assert!(matches!(o.target, Target::Stdio(ref c) if c == &["fx", "--pid-dir", "/p"]));
        assert_eq!(o.count, 3);
        assert_eq!(o.pid_dir, Some(PathBuf::from("/p")));
        assert!(matches!(parse_list(&["--help"]), Ok(None)));

        let o = options(&["setup", "--streamable", "http://127.0.0.1:9/mcp"]);
        assert!(matches!(o.target, Target::Streamable(ref u) if u.target == "/mcp"));
        let o = options(&["echo", "--stateless=http://127.0.0.1:9/mcp", "--sessions", "4"]);
        assert!(matches!(o.target, Target::Stateless(ref u) if u.port == 9));
    }

    #[test]
    fn post_to_moves_a_streamable_sessions_requests() {
        let o = options(&["echo", "--streamable", "http://h:1/mcp", "--post-to", "http://g:2/mcp"]);
        assert_eq!(o.post_to.map(|u| u.port), Some(2));
        assert!(options(&["echo", "--streamable", "http://h:1/mcp"]).post_to.is_none());
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            &["echo"][..],
            &["--sse", "http://h/sse"],
            &["bogus", "--sse", "http://h/sse"],
            &["echo", "--stdio"],
            &["echo", "--sse", "http://h/sse", "--stdio", "--", "x"],
            &["echo", "--sse", "http://h/sse", "--", "x"],
            &["echo", "--sse", "http://h/sse", "--sessions", "0"],
            &["echo", "--sse", "http://h/sse", "--duration", "-1"],
            &["echo", "--sse", "http://h/sse", "--duration", "0"],
            &["echo", "--sse", "https://h/sse"],
            &["echo", "--sse"],
            &["echo", "--stdio=1", "--", "x"],
            &["echo", "--sse", "http://h/sse", "--streamable", "http://h/mcp"],
            &["echo", "--streamable", "http://h/mcp", "--stdio", "--", "x"],
            &["setup", "--stateless", "http://h/mcp"],
            &["teardown", "--stateless", "http://h/mcp"],
            &["echo", "--sse", "http://h/sse", "--post-to", "http://g/mcp"],
            &["echo", "--stateless", "http://h/mcp", "--post-to", "http://g/mcp"],
            &["echo", "--streamable", "http://h/mcp", "--post-to", "https://g/mcp"],
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?} accepted");
        }
    }
}
