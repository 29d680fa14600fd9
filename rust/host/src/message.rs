//! Checks on the JSON that crosses the bridge in either direction.
//!
//! MCP's stdio transport carries one JSON-RPC message per line, and SSE ends
//! a `data:` field at CR or LF. Both sides are therefore given messages
//! without line breaks: in valid JSON a raw CR or LF can only be whitespace
//! between tokens (inside strings they must be escaped), so replacing them
//! with spaces changes nothing a JSON parser sees.

use serde::de::IgnoredAny;

/// Checks that `bytes` is one JSON object or array (a JSON-RPC message or a
/// batch) in UTF-8. The error says why not, for the client or the log.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not valid UTF-8 (at byte {})", e.valid_up_to()))?;
    match text.trim_start().as_bytes().first() {
        Some(b'{') | Some(b'[') => {}
        Some(_) => return Err("not a JSON object or array".into()),
        None => return Err("empty".into()),
    }
    serde_json::from_str::<IgnoredAny>(text).map_err(|e| format!("not valid JSON: {e}"))?;
    Ok(())
}

/// Replaces CR and LF with spaces (see the module documentation).
pub fn flatten_line_breaks(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
}

/// The `notifications/stderr` message that carries one stderr line of the
/// backend to the client (the shape APISIX's own bridge uses). Bytes that
/// are not UTF-8 become U+FFFD.
pub fn stderr_notification(line: &[u8]) -> Vec<u8> {
    let content = String::from_utf8_lossy(line);
    let message = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/stderr",
        "params": { "content": content },
    });
    message.to_string().into_bytes()
}

/// A short, printable excerpt of `bytes` for log messages.
pub fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let shown = &bytes[..bytes.len().min(MAX)];
    let mut s: String = String::from_utf8_lossy(shown).chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if bytes.len() > MAX {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_batches_pass_and_everything_else_is_named() {
        assert!(check(br#"{"jsonrpc":"2.0","method":"ping","id":1}"#).is_ok());
        assert!(check(b" [ {\"jsonrpc\":\"2.0\"} ]\n").is_ok());
        assert!(check(b"42").unwrap_err().contains("object or array"));
        assert!(check(b"   ").unwrap_err().contains("empty"));
        assert!(check(b"{\"a\":").unwrap_err().contains("not valid JSON"));
        assert!(check(b"{\"a\":\"\xff\"}").unwrap_err().contains("UTF-8"));
        assert!(check(b"{\"a\":1} {\"b\":2}").unwrap_err().contains("not valid JSON"), "two messages");
    }

    #[test]
    fn raw_line_breaks_inside_strings_are_rejected_so_flattening_cannot_alter_content() {
        assert!(check(b"{\"a\":\"x\ny\"}").is_err());
        assert!(check(b"{\"a\":\"x\ry\"}").is_err());
        let mut pretty = b"{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1,\n2]\n}".to_vec();
        assert!(check(&pretty).is_ok());
        flatten_line_breaks(&mut pretty);
        assert!(!pretty.contains(&b'\n') && !pretty.contains(&b'\r'));
        let before: serde_json::Value =
            serde_json::from_slice(b"{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1,\n2]\n}").expect("parse");
        let after: serde_json::Value = serde_json::from_slice(&pretty).expect("parse");
        assert_eq!(before, after);
    }

    #[test]
    fn stderr_lines_become_valid_notifications_whatever_they_contain() {
        let n = stderr_notification(b"quote \" backslash \\ ctrl \x01 bad \xff");
        let v: serde_json::Value = serde_json::from_slice(&n).expect("valid JSON");
        assert_eq!(v["method"], "notifications/stderr");
        assert_eq!(v["params"]["content"], "quote \" backslash \\ ctrl \u{1} bad \u{fffd}");
        assert!(!n.contains(&b'\n'));
    }
}
