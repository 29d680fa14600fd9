//! A backend the host keeps for a Streamable HTTP session or for its warm
//! pool: unlike an SSE session's, its life is not one connection's, so the
//! host holds its stdin queue and reads its output as messages until it
//! decides (or the backend decides) that it ends.

use crate::backend::{self, Backend, SpawnError};
use crate::host::Host;
use crate::lines::{Line, LineReader};
use crate::log;
use crate::message;
use crate::reaper::Exit;
use crate::rundir;
use crate::spec::SpawnSpec;
use crate::stderr::{self, StderrTail};
use crate::stdin::Stdin;
use crate::teardown::{Ending, Teardown};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{spawn_local, JoinHandle};

/// Read buffers per backend (a longer line only costs more reads).
const STDOUT_BUFFER: usize = 16 * 1024;

/// Lines read ahead of their owner: beyond this the backend waits, which is
/// the back-pressure of a slow client.
const OUTPUT_QUEUE: usize = 32;

/// Once the backend has exited, its output ends after this much silence:
/// a descendant may hold its stdout open for ever.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_millis(100);

/// What a backend produced.
pub enum Output {
    /// One line of stdout (a JSON-RPC message, not yet checked).
    Message(Vec<u8>),
    /// One line of stderr, when the route wants them as notifications.
    Stderr(Vec<u8>),
    /// Its stdout ended: closed, or a line over `max_message_bytes`.
    Closed { too_long: bool },
}

pub use crate::stdin::Refused;

pub struct Child {
    pub pid: i32,
    pub marker: String,
    pub spec: SpawnSpec,
    pub started: Instant,
    pub tail: Rc<StderrTail>,
    stdin: Stdin,
    output: mpsc::Receiver<Output>,
    exit: oneshot::Receiver<Exit>,
    /// The exit has been received (`exited` says how, if the reaper could).
    exit_seen: bool,
    exited: Option<Exit>,
    tasks: Vec<JoinHandle<()>>,
    home: Option<PathBuf>,
}

impl Child {
    /// Starts a backend for `spec`, with a private home if it asks for one.
    pub fn spawn(host: &Host, spec: SpawnSpec) -> Result<Child, SpawnError> {
        let home = match spec.session_home {
            true => Some(private_home(host)?),
            false => None,
        };
        Child::spawn_in(host, spec, home)
    }

    /// Starts a backend for `spec` with `home` (removed when it ends, or
    /// now if the backend cannot start).
    pub fn spawn_in(host: &Host, spec: SpawnSpec, home: Option<PathBuf>) -> Result<Child, SpawnError> {
        let marker = host.sweeper.new_marker();
        let backend = backend::spawn(&spec, &host.defaults, &marker, home.as_deref()).inspect_err(|_| {
            if let Some(home) = &home {
                rundir::remove(home);
            }
        })?;
        // Watch before yielding, so the exit cannot be reaped unwatched.
        let exit = host.reaper.watch(backend.pid);
        let Backend { pid, stdin, stdout, stderr } = backend;
        host.backend_started(pid);
        let tail = Rc::new(StderrTail::default());
        let (stdin, stdin_task) = Stdin::start(stdin, spec.inbox_limit(), format!("backend {pid}"));
        let (out_tx, output) = mpsc::channel(OUTPUT_QUEUE);
        let tasks = vec![
            stdin_task,
            spawn_local(read_stdout(stdout, out_tx.clone(), spec.max_message_bytes, pid)),
            spawn_local(read_stderr(stderr, out_tx, Rc::clone(&tail), spec.clone(), pid)),
        ];
        Ok(Child {
            pid,
            marker,
            spec,
            started: Instant::now(),
            tail,
            stdin,
            output,
            exit,
            exit_seen: false,
            exited: None,
            tasks,
            home,
        })
    }

    /// Sends one message to stdin (a newline is added).
    pub fn send(&self, mut line: Vec<u8>) -> Result<(), Refused> {
        message::flatten_line_breaks(&mut line);
        self.send_line(line)
    }

    /// [`Child::send`] for a message known to hold no raw line breaks.
    pub fn send_line(&self, mut line: Vec<u8>) -> Result<(), Refused> {
        line.push(b'\n');
        self.stdin.offer(line, 0)
    }

    /// The next thing the backend produced; `Closed` once stdout ended, or
    /// once the backend has exited and [`OUTPUT_AFTER_EXIT`] passed without
    /// output (whatever still holds its stdout).
    pub async fn next(&mut self) -> Output {
        loop {
            if self.exit_seen {
                return match tokio::time::timeout(OUTPUT_AFTER_EXIT, self.output.recv()).await {
                    Ok(Some(output)) => output,
                    _ => Output::Closed { too_long: false },
                };
            }
            tokio::select! {
                // Output first: what the backend wrote before it exited goes out.
                biased;
                output = self.output.recv() => return output.unwrap_or(Output::Closed { too_long: false }),
                status = &mut self.exit => {
                    self.exit_seen = true;
                    self.exited = status.ok();
                }
            }
        }
    }

    /// Resolves when the backend process exits.
    pub async fn wait_exit(&mut self) -> Option<Exit> {
        if !self.exit_seen {
            self.exited = (&mut self.exit).await.ok();
            self.exit_seen = true;
        }
        self.exited
    }

    /// How it exited, if it has (without waiting).
    pub fn exit_status(&mut self) -> Option<Exit> {
        if !self.exit_seen {
            match self.exit.try_recv() {
                Ok(exit) => (self.exit_seen, self.exited) = (true, Some(exit)),
                Err(oneshot::error::TryRecvError::Closed) => self.exit_seen = true,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        self.exited
    }

    /// Takes its private home, which then outlives it (for the backend
    /// that replaces it).
    pub fn take_home(&mut self) -> Option<PathBuf> {
        self.home.take()
    }

    /// Ends the backend's processes (see `teardown`). `since` is when the
    /// end was decided. Returns what happened and how long it took.
    pub async fn end(mut self, host: &Host, since: Instant) -> (Teardown, Duration, Option<Exit>) {
        let mut ending = Ending::begin(self.pid, since);
        // Closing stdin too, after the SIGTERM, so the signal is never late.
        for task in &self.tasks {
            task.abort();
        }
        ending.find_escaped(host, &self.marker).await;
        let teardown = ending.finish(host, &self.marker, self.spec.kill_grace()).await;
        let took = since.elapsed();
        host.backend_ended(self.pid);
        if let Some(home) = &self.home {
            rundir::remove(home);
        }
        let exit = self.exit_status();
        (teardown, took, exit)
    }
}

/// A fresh `HOME` (with a `tmp` directory for `TMPDIR`) for one session,
/// in the host's private directory.
pub fn private_home(host: &Host) -> Result<PathBuf, SpawnError> {
    use std::os::unix::fs::DirBuilderExt;
    let home = host.defaults.dir.join(format!("session-{}", host.next_session_number()));
    let made = std::fs::DirBuilder::new().mode(0o700).create(&home).and_then(|()| {
        std::fs::DirBuilder::new().mode(0o700).create(home.join("tmp"))?;
        Ok(home.clone())
    });
    made.map_err(|e| SpawnError {
        reason: "the MCP server could not be started",
        detail: format!("cannot create the session home {}: {e}", home.display()),
    })
}

async fn read_stdout(out: pipe::Receiver, tx: mpsc::Sender<Output>, max: usize, pid: i32) {
    let mut lines = LineReader::with_capacity(out, max, STDOUT_BUFFER);
    loop {
        let mut line = Vec::new();
        let end = match lines.read_into(&mut line).await {
            Ok(Line::Complete) => None,
            Ok(Line::Eof) => Some(false),
            Ok(Line::TooLong) => {
                log!(Warn, "backend {pid} wrote an output line over max_message_bytes ({max})");
                Some(true)
            }
            Err(e) => {
                log!(Info, "backend {pid}: reading its output: {e}");
                Some(false)
            }
        };
        if let Some(too_long) = end {
            let _ = tx.send(Output::Closed { too_long }).await;
            return;
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if tx.send(Output::Message(line)).await.is_err() {
            return;
        }
    }
}

async fn read_stderr(err: pipe::Receiver, tx: mpsc::Sender<Output>, tail: Rc<StderrTail>, spec: SpawnSpec, pid: i32) {
    let who = format!("backend {pid}");
    stderr::read(err, tail, spec.stderr, spec.max_message_bytes, &who, |line| {
        let tx = tx.clone();
        async move { tx.send(Output::Stderr(line)).await.is_ok() }
    })
    .await;
}
