//! What a worker asks the host to start: the route's configuration, as
//! validated by the Lua side (`apisix/plugins/mcp/bridge/config.lua`, the
//! one place that knows the defaults). Every field but `cwd` is required:
//! the worker always sends the whole configuration.

use crate::limits::Limits;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where a backend's stderr lines go.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StderrMode {
    /// As `notifications/stderr` messages on the session's stream.
    Notify,
    /// To the error log.
    Log,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    pub kill_grace_ms: u64,
    pub max_message_bytes: usize,
    pub stderr: StderrMode,
    /// Silence after which the host sends a Keepalive frame; 0 for never.
    pub keepalive_interval_ms: u64,
    /// A private `HOME` and `TMPDIR` per session, removed when it ends.
    pub session_home: bool,
    /// A Streamable HTTP session ends after this long without a request or
    /// a completed response (an open GET stream does not count).
    pub session_idle_timeout_ms: u64,
    /// ... and after this long in any case.
    pub session_max_lifetime_ms: u64,
    /// A session's backend that exits with a failure is started again and
    /// sent the session's `initialize` (see `restart`), at most
    /// `max_restarts` times within `restart_window_ms`.
    pub restart_on_crash: bool,
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    /// The warm pool of backends serving stateless (2026-07-28) requests,
    /// per route and consumer.
    pub pool_min_idle: usize,
    pub pool_max_per_key: usize,
    pub pool_max_per_worker: usize,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_requests: u64,
    pub pool_max_age_ms: u64,
    /// How long a request waits for a pooled backend before 503.
    pub pool_wait_ms: u64,
    /// How long a stateless call that asked its client for input waits for
    /// the retry, and how many may wait per consumer and per worker.
    pub input_wait_ms: u64,
    pub max_parked_per_consumer: usize,
    pub max_parked_per_worker: usize,
    /// Resource limits of every backend of the route, pooled ones too.
    pub limits: Limits,
}

impl SpawnSpec {
    pub fn parse(payload: &[u8]) -> Result<SpawnSpec, String> {
        let spec: SpawnSpec = serde_json::from_slice(payload).map_err(|e| format!("invalid spawn request: {e}"))?;
        if spec.command.is_empty() {
            return Err("invalid spawn request: empty command".into());
        }
        if spec.command.contains('\0') || spec.args.iter().any(|a| a.contains('\0')) {
            return Err("invalid spawn request: NUL byte in command or args".into());
        }
        if spec.max_message_bytes == 0 {
            return Err("invalid spawn request: max_message_bytes is 0".into());
        }
        Ok(spec)
    }

    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0).then(|| Duration::from_millis(self.keepalive_interval_ms))
    }

    pub fn kill_grace(&self) -> Duration {
        Duration::from_millis(self.kill_grace_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.session_idle_timeout_ms)
    }

    pub fn max_lifetime(&self) -> Duration {
        Duration::from_millis(self.session_max_lifetime_ms)
    }

    /// Bytes of client messages that may wait for the backend to read them.
    /// A message that fits `max_message_bytes` is always admitted into an
    /// empty queue.
    pub fn inbox_limit(&self) -> usize {
        self.max_message_bytes.saturating_mul(2).max(1 << 20)
    }
}

#[cfg(test)]
impl SpawnSpec {
    /// A whole spawn request (of `cat`), for tests to change what they test.
    pub fn for_tests() -> SpawnSpec {
        SpawnSpec::parse(tests::FULL.as_bytes()).expect("the tests' spawn request parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const FULL: &str = r#"{"command":"cat","args":[],"env":{},"kill_grace_ms":2000,"max_message_bytes":4194304,
        "stderr":"notify","keepalive_interval_ms":15000,"session_home":false,
        "session_idle_timeout_ms":1800000,"session_max_lifetime_ms":86400000,"restart_on_crash":false,"max_restarts":3,
        "restart_window_ms":60000,"pool_min_idle":0,"pool_max_per_key":4,"pool_max_per_worker":16,"pool_idle_timeout_ms":300000,"pool_max_requests":1000,
        "pool_max_age_ms":3600000,"pool_wait_ms":5000,
        "input_wait_ms":60000,"max_parked_per_consumer":16,"max_parked_per_worker":256,
        "limits":{"memory_mb":null,"processes":null,"cpu_seconds":null,"open_files":null}}"#;

    #[test]
    fn a_whole_request_parses() {
        let spec = SpawnSpec::parse(FULL.as_bytes()).expect("parse");
        assert!(spec.args.is_empty() && spec.env.is_empty() && spec.cwd.is_none());
        assert_eq!(spec.kill_grace(), Duration::from_secs(2));
        assert_eq!(spec.stderr, StderrMode::Notify);
        assert_eq!(spec.keepalive_interval(), Some(Duration::from_secs(15)));
        assert!(!spec.limits.any(), "null limits leave the host's");
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(SpawnSpec::parse(b"{").unwrap_err().contains("invalid spawn request"));
        let missing = SpawnSpec::parse(br#"{"command":"cat"}"#).unwrap_err();
        assert!(missing.contains("missing field"), "no defaults here: {missing}");
        let with = |field: &str, value: &str| {
            let mut v: serde_json::Value = serde_json::from_str(FULL).expect("json");
            v[field] = serde_json::from_str(value).expect("value");
            SpawnSpec::parse(v.to_string().as_bytes())
        };
        assert!(with("command", r#""""#).unwrap_err().contains("empty command"));
        assert!(with("args", r#"["x\u0000"]"#).unwrap_err().contains("NUL"));
        assert!(with("stderr", r#""loud""#).is_err());
        assert!(with("max_message_bytes", "0").unwrap_err().contains("is 0"));
        assert!(with("future_field", "1").unwrap_err().contains("unknown field"));
        assert!(with("limits", "{}").unwrap_err().contains("missing field"), "every limit is sent");
        assert!(with("limits", r#"{"memory_mb":"64","processes":null,"cpu_seconds":null,"open_files":null}"#).is_err());
    }
}
