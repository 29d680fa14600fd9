//! What a worker asks the host to start: the route's configuration, as
//! validated by the Lua side (`apisix/plugins/mcp/bridge/config.lua`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where a backend's stderr lines go.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StderrMode {
    /// As `notifications/stderr` messages on the session's stream.
    #[default]
    Notify,
    /// To the error log.
    Log,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SpawnSpec {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default = "default_kill_grace_ms")]
    pub kill_grace_ms: u64,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    #[serde(default)]
    pub stderr: StderrMode,
    /// Silence after which the host sends a Keepalive frame; 0 for never.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
}

fn default_keepalive_interval_ms() -> u64 {
    15000
}

fn default_kill_grace_ms() -> u64 {
    2000
}

fn default_max_message_bytes() -> usize {
    4 << 20
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

    /// Bytes of client messages that may wait for the backend to read them.
    /// A message that fits `max_message_bytes` is always admitted into an
    /// empty queue.
    pub fn inbox_limit(&self) -> usize {
        self.max_message_bytes.saturating_mul(2).max(1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_unknown_fields_are_tolerated() {
        let spec = SpawnSpec::parse(br#"{"command":"cat","future_field":1}"#).expect("parse");
        assert!(spec.args.is_empty() && spec.env.is_empty() && spec.cwd.is_none());
        assert_eq!(spec.kill_grace_ms, 2000);
        assert_eq!(spec.max_message_bytes, 4 << 20);
        assert_eq!(spec.stderr, StderrMode::Notify);
        assert_eq!(spec.keepalive_interval(), Some(Duration::from_secs(15)));
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(SpawnSpec::parse(b"{").unwrap_err().contains("invalid spawn request"));
        assert!(SpawnSpec::parse(br#"{"command":""}"#).unwrap_err().contains("empty command"));
        assert!(SpawnSpec::parse(br#"{"command":"a","args":["x\u0000"]}"#).unwrap_err().contains("NUL"));
        assert!(SpawnSpec::parse(br#"{"command":"a","stderr":"loud"}"#).is_err());
    }
}
