//! nginx's error-log levels, the one list every part of mcp-bridge checks
//! a level against (the native module's settings, the host's `--log-level`,
//! `mcp-bridge serve --log-level`).

/// The levels, from the most verbose to the most severe.
pub const LOG_LEVELS: [&str; 8] = ["debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"];

/// The position of `name` in [`LOG_LEVELS`] (higher is more severe).
pub fn severity(name: &str) -> Option<usize> {
    LOG_LEVELS.iter().position(|&l| l == name)
}

/// Why `name` is not a level, naming the levels there are.
pub fn unknown(name: &str) -> String {
    format!("unknown log level \"{name}\" (one of {})", LOG_LEVELS.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_like_nginx_and_unknown_names_are_explained() {
        assert!(severity("debug") < severity("info") && severity("warn") < severity("error"));
        assert_eq!(severity("emerg"), Some(7));
        assert_eq!(severity("verbose"), None);
        assert!(unknown("loud").contains("debug, info, notice"));
    }
}
