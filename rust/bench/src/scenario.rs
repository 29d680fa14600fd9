//! The scenarios. Each returns one JSON object; `errors` counts what went
//! wrong (the run fails if it is not zero) and `client_cpu_s` is this
//! program's own CPU time over the measured part, to show it was not the
//! bottleneck.

use std::io::Write;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::spawn_local;
use tokio::time::{sleep_until, timeout};

use crate::cli::Options;
use crate::rpc;
use crate::session::{Session, Target};
use crate::stats::{Errors, Samples};
use crate::sys::{self, PidFd};

/// Fills in what every scenario reports.
fn finish(o: &Options, mut out: Value, errors: &Errors, cpu_s: f64, measured_s: f64) -> Value {
    out["target"] = json!(o.target.name());
    out["label"] = json!(o.label);
    out["errors"] = json!(errors.count());
    out["error_samples"] = json!(errors.samples());
    out["client_cpu_s"] = json!((cpu_s * 1000.0).round() / 1000.0);
    out["client_cpu_share"] =
        json!(if measured_s > 0.0 { (cpu_s / measured_s * 1000.0).round() / 1000.0 } else { 0.0 });
    out
}

/// Opens `n` sessions, at most `concurrency` at a time, each optionally
/// through the MCP handshake. Failures are counted in `errors`.
async fn open_many(o: &Options, n: usize, concurrency: usize, handshake: bool, errors: &Errors) -> Vec<Session> {
    let gate = Rc::new(Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (target, limit, gate) = (o.target.clone(), o.timeout, Rc::clone(&gate));
            let post_to = o.post_to.clone();
            spawn_local(async move {
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                let (mut s, _) = Session::open(&target, limit).await?;
                if handshake {
                    s.initialize().await?;
                    if let Some(url) = &post_to {
                        s.post_to(url);
                    }
                }
                Ok::<_, String>(s)
            })
        })
        .collect();
    let mut sessions = Vec::with_capacity(n);
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => sessions.push(s),
            Ok(Err(e)) => errors.add(format!("opening a session: {e}")),
            Err(e) => errors.add(format!("opening a session: task failed: {e}")),
        }
    }
    sessions
}

async fn close_all(sessions: Vec<Session>, errors: &Errors) {
    let tasks: Vec<_> = sessions.into_iter().map(|s| spawn_local(s.close())).collect();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.add(format!("closing a session: {e}")),
            Err(e) => errors.add(format!("closing a session: task failed: {e}")),
        }
    }
}

/// Tells whoever runs this which part of a run begins (a line of JSON on
/// stdout), so that it can measure the gateway over the same window.
fn phase(name: &str) {
    // Nobody listening is no reason to stop.
    let _ = writeln!(std::io::stdout().lock(), "{}", json!({ "phase": name }));
}

/// `tools/call` of `echo` in a closed loop per session: each session sends
/// its next request when the previous response arrived. Only responses that
/// arrive within the measured window (after the warm-up) count. Prints the
/// phases `warmup` (the sessions are open), `window` and `end`.
pub async fn echo(o: &Options) -> Value {
    let errors = Rc::new(Errors::default());
    let sessions = open_many(o, o.sessions, o.sessions, true, &errors).await;
    let text = "x".repeat(o.size);
    let params: Rc<str> = rpc::tool_params("echo", &json!({ "text": text }).to_string()).into();

    phase("warmup");
    let window_start = Instant::now() + o.warmup;
    let end = window_start + o.duration;
    let cpu = spawn_local(async move {
        sleep_until(window_start.into()).await;
        phase("window");
        let before = sys::cpu_seconds();
        sleep_until(end.into()).await;
        let used = sys::cpu_seconds() - before;
        phase("end");
        used
    });
    let loops: Vec<_> = sessions
        .into_iter()
        .map(|mut s| {
            let (params, errors) = (Rc::clone(&params), Rc::clone(&errors));
            spawn_local(async move {
                let mut latencies = Samples::default();
                while Instant::now() < end {
                    match s.call("tools/call", &params).await {
                        Ok((sent, arrival)) => {
                            if arrival.at >= window_start && arrival.at <= end {
                                latencies.push(arrival.at - sent);
                            }
                        }
                        Err(e) => {
                            errors.add(e);
                            break;
                        }
                    }
                }
                (s, latencies)
            })
        })
        .collect();

    let mut latencies = Samples::default();
    let mut sessions = Vec::new();
    for l in loops {
        match l.await {
            Ok((s, samples)) => {
                latencies.extend(samples);
                sessions.push(s);
            }
            Err(e) => errors.add(format!("session task failed: {e}")),
        }
    }
    let cpu_s = cpu.await.unwrap_or(f64::NAN);
    let foreign: u64 = sessions.iter().map(|s| s.router().foreign.get()).sum();
    close_all(sessions, &errors).await;
    let measured = o.duration.as_secs_f64();
    let out = json!({
        "scenario": "echo",
        "sessions": o.sessions,
        "size": o.size,
        "warmup_s": o.warmup.as_secs_f64(),
        "duration_s": measured,
        "round_trips": latencies.len(),
        "throughput_per_s": (latencies.len() as f64 / measured).round(),
        "latency_us": latencies.summary(),
        "foreign_messages": foreign,
    });
    finish(o, out, &errors, cpu_s, measured)
}

/// `count` round trips of echo on each session, one after the other.
async fn echo_rounds(sessions: Vec<Session>, params: &Rc<str>, count: usize, errors: &Rc<Errors>) -> Vec<Session> {
    let loops: Vec<_> = sessions
        .into_iter()
        .map(|mut s| {
            let (params, errors) = (Rc::clone(params), Rc::clone(errors));
            spawn_local(async move {
                for _ in 0..count {
                    if let Err(e) = s.call("tools/call", &params).await {
                        errors.add(e);
                        break;
                    }
                }
                s
            })
        })
        .collect();
    let mut out = Vec::new();
    for l in loops {
        match l.await {
            Ok(s) => out.push(s),
            Err(e) => errors.add(format!("session task failed: {e}")),
        }
    }
    out
}

/// Waits for a line (or EOF) on stdin: whoever runs this is ready.
async fn wait_for_go() {
    let mut stdin = tokio::io::stdin();
    let mut byte = [0u8; 1];
    while let Ok(1) = stdin.read(&mut byte).await {
        if byte[0] == b'\n' {
            break;
        }
    }
}

/// A fixed workload between two phase lines, each held until a line on
/// stdin, so that whoever runs this counts the gateway's instructions for
/// exactly `count` round trips per session (the same number ran before, so
/// what starts on first use is not counted).
pub async fn steps(o: &Options) -> Value {
    let errors = Rc::new(Errors::default());
    let sessions = open_many(o, o.sessions, o.sessions, true, &errors).await;
    let text = "x".repeat(o.size);
    let params: Rc<str> = rpc::tool_params("echo", &json!({ "text": text }).to_string()).into();
    let sessions = echo_rounds(sessions, &params, o.count, &errors).await;
    phase("window");
    wait_for_go().await;
    let (cpu0, t0) = (sys::cpu_seconds(), Instant::now());
    let sessions = echo_rounds(sessions, &params, o.count, &errors).await;
    let (cpu_s, wall) = (sys::cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    phase("end");
    wait_for_go().await;
    let opened = sessions.len();
    close_all(sessions, &errors).await;
    let out = json!({
        "scenario": "steps",
        "sessions": opened,
        "size": o.size,
        "round_trips": opened * o.count,
    });
    finish(o, out, &errors, cpu_s, wall)
}

/// Sequential session setups: from the connection (or the spawn) to the
/// `endpoint` event, and to the `initialize` response.
pub async fn setup(o: &Options) -> Value {
    let errors = Errors::default();
    let (mut endpoint, mut initialize) = (Samples::default(), Samples::default());
    let (cpu0, t0) = (sys::cpu_seconds(), Instant::now());
    for _ in 0..o.count {
        let start = Instant::now();
        let (mut s, endpoint_at) = match Session::open(&o.target, o.timeout).await {
            Ok(opened) => opened,
            Err(e) => {
                errors.add(e);
                continue;
            }
        };
        if let Some(at) = endpoint_at {
            endpoint.push(at - start);
        }
        match s.initialize().await {
            Ok(at) => initialize.push(at - start),
            Err(e) => errors.add(e),
        }
        if let Err(e) = s.close().await {
            errors.add(e);
        }
    }
    let (cpu_s, wall) = (sys::cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let out = json!({
        "scenario": "setup",
        "count": o.count,
        "endpoint_us": endpoint.summary(),
        "initialize_us": initialize.summary(),
    });
    finish(o, out, &errors, cpu_s, wall)
}

/// One teardown: returns (disconnect to SIGTERM at the backend, disconnect
/// to the backend gone), in microseconds.
async fn teardown_once(o: &Options, pid_dir: &Path) -> Result<(f64, f64), String> {
    let (mut s, _) = Session::open(&o.target, o.timeout).await?;
    s.initialize().await?;
    let (_, arrival) = s.call("tools/call", &rpc::tool_params("pid", "{}")).await?;
    let text = rpc::tool_text(&arrival.data)?;
    let pid = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| format!("the pid tool answered {text:?}"))?;
    let pidfd = PidFd::open(pid).map_err(|e| format!("pidfd_open({pid}): {e}"))?;
    let term_file = pid_dir.join(format!("{pid}.term"));

    let (real0, t0) = (sys::realtime_ns(), Instant::now());
    if s.stdio_child().is_some() {
        // Over pipes the client itself stops the server: SIGTERM, then EOF.
        sys::sigterm(pid).map_err(|e| format!("kill({pid}, SIGTERM): {e}"))?;
    }
    s.disconnect().await?;
    timeout(o.timeout, pidfd.exited())
        .await
        .map_err(|_| format!("backend {pid} still running {:?} after the disconnect", o.timeout))?
        .map_err(|e| format!("waiting on the pidfd of {pid}: {e}"))?;
    let gone = t0.elapsed();
    let term = std::fs::read_to_string(&term_file).map_err(|e| {
        format!("backend {pid} is gone but {} cannot be read ({e}): did it get SIGTERM?", term_file.display())
    })?;
    let term_ns: i128 =
        term.trim().parse().map_err(|_| format!("{}: not a timestamp: {term:?}", term_file.display()))?;
    if let Err(e) = s.close().await {
        return Err(format!("closing: {e}"));
    }
    Ok(((term_ns - real0) as f64 / 1000.0, gone.as_secs_f64() * 1e6))
}

/// Sequential disconnects (over Streamable HTTP, `DELETE`s): until SIGTERM
/// reaches the backend (the fixture records when its handler ran in
/// `<pid>.term`) and until it is gone.
pub async fn teardown(o: &Options) -> Value {
    let errors = Errors::default();
    let (mut sigterm, mut gone) = (Samples::default(), Samples::default());
    let (cpu0, t0) = (sys::cpu_seconds(), Instant::now());
    match &o.pid_dir {
        None => errors.add("teardown needs --pid-dir (the backends' --pid-dir)".into()),
        Some(dir) => {
            for _ in 0..o.count {
                match teardown_once(o, dir).await {
                    Ok((term_us, gone_us)) => {
                        sigterm.push_us(term_us);
                        gone.push_us(gone_us);
                    }
                    Err(e) => errors.add(e),
                }
            }
        }
    }
    let (cpu_s, wall) = (sys::cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let out = json!({
        "scenario": "teardown",
        "count": o.count,
        "sigterm_us": sigterm.summary(),
        "gone_us": gone.summary(),
    });
    finish(o, out, &errors, cpu_s, wall)
}

/// Opens sessions, prints a `ready` line, holds them (for `--hold`, else
/// until a line or EOF on stdin), then closes them. Whoever runs this
/// measures the gateway meanwhile.
pub async fn idle(o: &Options) -> Value {
    let errors = Errors::default();
    let t0 = Instant::now();
    // A Streamable HTTP session exists once initialized; an SSE one once
    // its stream is open.
    let handshake = matches!(o.target, Target::Streamable(_));
    let sessions = open_many(o, o.sessions, o.concurrency, handshake, &errors).await;
    let open_s = t0.elapsed().as_secs_f64();
    let ready = json!({"phase": "ready", "sessions": sessions.len(), "open_s": open_s, "label": o.label});
    if let Err(e) = writeln!(std::io::stdout().lock(), "{ready}") {
        // Whoever waits for this line is gone: hold nothing.
        errors.add(format!("writing the ready line: {e}"));
    }

    let (cpu0, held) = (sys::cpu_seconds(), Instant::now());
    match o.hold {
        Some(hold) => tokio::time::sleep(hold).await,
        None => {
            let mut stdin = tokio::io::stdin();
            let mut byte = [0u8; 1];
            // Any byte or EOF releases the sessions.
            let _ = stdin.read(&mut byte).await;
        }
    }
    let (cpu_s, hold_s) = (sys::cpu_seconds() - cpu0, held.elapsed().as_secs_f64());

    let ended = sessions.iter().filter(|s| s.router().is_closed()).count();
    if ended > 0 {
        errors.add(format!("{ended} sessions ended while idle"));
    }
    let keepalives: u64 = sessions.iter().map(|s| s.router().comments.get()).sum();
    let opened = sessions.len();
    close_all(sessions, &errors).await;
    let out = json!({
        "scenario": "idle",
        "sessions": opened,
        "open_s": (open_s * 1000.0).round() / 1000.0,
        "hold_s": (hold_s * 1000.0).round() / 1000.0,
        "keepalives": keepalives,
    });
    finish(o, out, &errors, cpu_s, hold_s)
}
