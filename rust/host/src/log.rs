//! Log lines in nginx's error-log format, written to stderr, which an nginx
//! worker points at its error log and the host inherits. One `write` per
//! line, so lines from the host and from nginx never interleave mid-line.

use mcp_bridge_core::levels;
use std::cell::Cell;
use std::fmt;
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Notice,
    Warn,
    Error,
    Crit,
    Alert,
    Emerg,
}

impl Level {
    const ALL: [Level; 8] =
        [Level::Debug, Level::Info, Level::Notice, Level::Warn, Level::Error, Level::Crit, Level::Alert, Level::Emerg];

    pub fn parse(s: &str) -> Option<Level> {
        levels::severity(s).map(|i| Level::ALL[i])
    }

    fn name(self) -> &'static str {
        levels::LOG_LEVELS[self as usize]
    }
}

thread_local! {
    static THRESHOLD: Cell<Level> = const { Cell::new(Level::Notice) };
}

/// Lines below `level` are dropped.
pub fn set_level(level: Level) {
    // SAFETY: tzset only reads TZ and /etc/localtime; called before logging.
    unsafe { tzset() };
    THRESHOLD.with(|t| t.set(level));
}

pub fn enabled(level: Level) -> bool {
    THRESHOLD.with(|t| level >= t.get())
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let line = format!("{} [{}] {}#0: mcp-bridge host: {}\n", timestamp(), level.name(), std::process::id(), args);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::write($crate::log::Level::$level, format_args!($($arg)*))
    };
}

extern "C" {
    fn tzset();
}

fn timestamp() -> String {
    // SAFETY: time and localtime_r write into locals we own.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
        libc::localtime_r(&now, tm.as_mut_ptr());
        let tm = tm.assume_init();
        format!(
            "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order_like_nginx() {
        for name in levels::LOG_LEVELS {
            assert_eq!(Level::parse(name).map(Level::name), Some(name));
        }
        assert_eq!(Level::parse("warn"), Some(Level::Warn));
        assert_eq!(Level::parse("verbose"), None);
        assert!(Level::Debug < Level::Info && Level::Warn < Level::Error && Level::Alert < Level::Emerg);
    }

    #[test]
    fn threshold_filters() {
        set_level(Level::Warn);
        assert!(!enabled(Level::Info));
        assert!(enabled(Level::Error));
    }

    #[test]
    fn timestamp_has_nginx_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 19, "{t}");
        assert_eq!(&t[4..5], "/");
        assert_eq!(&t[10..11], " ");
    }
}
