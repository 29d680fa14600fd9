//! `restart_on_crash`: what a session keeps so that a backend that crashed
//! can be replaced without the client noticing more than the requests it
//! had in flight.
//!
//! The session records the client's `initialize` and
//! `notifications/initialized` as they pass. When its backend exits with a
//! failure, a new backend is started and sent both (the `initialize` under
//! the bridge's own id, so its answer can be told apart and kept from the
//! client), and the client is told with a `notifications/message` warning.
//! Restarts are bounded per session within a sliding window; a backend that
//! exits with status 0, or that the bridge ended, is never restarted.

use crate::mcp::{Form, Message};
use crate::message;
use crate::reaper::Exit;
use crate::spec::SpawnSpec;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The id of a replayed `initialize` on an HTTP+SSE session, whose client
/// chooses every other id: a string no client is likely to use.
pub const SSE_REPLAY_ID: &str = "\"mcp-bridge:replayed-initialize\"";

/// What a session needs to restart its backend, when the route wants that.
pub struct Restarts {
    max: usize,
    window: Duration,
    /// When the backend was restarted, within the window, oldest first.
    recent: VecDeque<Instant>,
    initialize: Option<Value>,
    initialized: Option<Vec<u8>>,
}

/// Whether an exit is one a restart answers: a failure status or a signal
/// (a CPU limit's included). An exit the reaper could not tell (`None`) is
/// not.
pub fn is_crash(exit: Option<Exit>) -> bool {
    match exit {
        Some(Exit::Code(c)) => c != 0,
        Some(Exit::Signal(_) | Exit::CpuLimit(_) | Exit::MemoryLimit { .. }) => true,
        None => false,
    }
}

impl Restarts {
    /// None unless `spec` asks for restarts.
    pub fn new(spec: &SpawnSpec) -> Option<Restarts> {
        spec.restart_on_crash.then(|| Restarts {
            max: spec.max_restarts as usize,
            window: Duration::from_millis(spec.restart_window_ms),
            recent: VecDeque::new(),
            initialize: None,
            initialized: None,
        })
    }

    /// Whether both messages a replay needs have been seen.
    pub fn recorded(&self) -> bool {
        self.initialize.is_some() && self.initialized.is_some()
    }

    /// Keeps the session's `initialize` request (any id: the replay uses
    /// its own).
    pub fn record_initialize(&mut self, message: Value) {
        if self.initialize.is_none() {
            self.initialize = Some(message);
        }
    }

    /// Keeps `message` if it is the client's first `notifications/initialized`.
    pub fn record_initialized(&mut self, message: &[u8]) {
        if self.initialized.is_none() {
            self.initialized = Some(message.to_vec());
        }
    }

    /// Looks at a message from an HTTP+SSE client and keeps it if it is one
    /// a replay needs. Parses only until both are kept.
    pub fn record_client_message(&mut self, bytes: &[u8]) {
        if self.recorded() {
            return;
        }
        let Ok(message) = Message::parse(bytes.to_vec()) else { return };
        match message.form() {
            Ok(Form::Request { method, .. }) if method == "initialize" => self.record_initialize(message.value()),
            Ok(Form::Notification { method }) if method == "notifications/initialized" => {
                self.record_initialized(bytes)
            }
            _ => {}
        }
    }

    /// Counts a restart at `now` if the bound allows one; returns which
    /// restart of the window it is, or None when the bound is reached.
    pub fn allow(&mut self, now: Instant) -> Option<usize> {
        while self.recent.front().is_some_and(|&t| now.duration_since(t) >= self.window) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return None;
        }
        self.recent.push_back(now);
        Some(self.recent.len())
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// The lines a new backend is sent, in order: the `initialize` under
    /// `replay_id` (JSON text), then `notifications/initialized` if the
    /// client had sent it. Nothing if no `initialize` was seen.
    pub fn replay(&self, replay_id: &str) -> Vec<Vec<u8>> {
        let Some(initialize) = &self.initialize else { return Vec::new() };
        let mut initialize = initialize.clone();
        initialize["id"] = serde_json::from_str(replay_id).unwrap_or(Value::Null);
        let mut lines = vec![message::to_bytes(&initialize)];
        lines.extend(self.initialized.clone());
        lines
    }
}

/// The warning the client gets on its stream after a restart.
pub fn warning(exit: Option<Exit>, restart: usize, max: usize) -> Vec<u8> {
    let status = exit.map(|e| e.to_string()).unwrap_or_else(|| "ended".into());
    let data = format!(
        "the MCP server {status} and was restarted (restart {restart} of at most {max}); \
         requests in flight when it crashed were lost"
    );
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/message",
        "params": {"level": "warning", "logger": "mcp-bridge", "data": data},
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restarts(max: u32, window_ms: u64) -> Restarts {
        let mut spec = SpawnSpec::for_tests();
        (spec.restart_on_crash, spec.max_restarts, spec.restart_window_ms) = (true, max, window_ms);
        let on = Restarts::new(&spec).expect("on");
        spec.restart_on_crash = false;
        assert!(Restarts::new(&spec).is_none());
        on
    }

    #[test]
    fn only_failures_are_crashes() {
        assert!(is_crash(Some(Exit::Code(1))));
        assert!(is_crash(Some(Exit::Signal(9))));
        assert!(is_crash(Some(Exit::CpuLimit(24))));
        assert!(!is_crash(Some(Exit::Code(0))));
        assert!(!is_crash(None));
    }

    #[test]
    fn the_bound_counts_within_a_sliding_window() {
        let mut r = restarts(2, 1000);
        let t0 = Instant::now();
        assert_eq!(r.allow(t0), Some(1));
        assert_eq!(r.allow(t0 + Duration::from_millis(500)), Some(2));
        assert_eq!(r.allow(t0 + Duration::from_millis(900)), None);
        // The first restart left the window: one more is allowed.
        assert_eq!(r.allow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(r.allow(t0 + Duration::from_millis(1200)), None);
    }

    #[test]
    fn the_replay_is_the_clients_initialize_under_the_bridges_id() {
        let mut r = restarts(3, 60_000);
        assert!(r.replay(SSE_REPLAY_ID).is_empty());
        r.record_client_message(br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#);
        r.record_client_message(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"a":1}}"#);
        r.record_client_message(br#"{"jsonrpc":"2.0","id":2,"method":"initialize","params":{"a":2}}"#);
        assert!(!r.recorded());
        r.record_client_message(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(r.recorded());
        let lines = r.replay(SSE_REPLAY_ID);
        assert_eq!(lines.len(), 2);
        let first: Value = serde_json::from_slice(&lines[0]).expect("json");
        assert_eq!(first["id"], json!("mcp-bridge:replayed-initialize"));
        assert_eq!(first["params"], json!({"a": 1}));
        assert_eq!(lines[1], br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec());
    }

    #[test]
    fn the_warning_is_a_logging_notification() {
        let w: Value = serde_json::from_slice(&warning(Some(Exit::Code(3)), 1, 3)).expect("json");
        assert_eq!(w["method"], "notifications/message");
        assert_eq!(w["params"]["level"], "warning");
        assert!(w["params"]["data"].as_str().expect("text").contains("exited with status 3"));
    }
}
