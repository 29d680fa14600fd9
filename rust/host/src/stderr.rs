//! A backend's stderr: read line by line, its last lines kept for the log,
//! each line logged or passed on as the route says.

use crate::lines::{Line, LineReader};
use crate::log;
use crate::message;
use crate::spec::StderrMode;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use tokio::net::unix::pipe;

/// Read buffer per backend (a longer line only costs more reads).
const STDERR_BUFFER: usize = 1024;

/// The last stderr lines kept for the log, and how much of each.
const TAIL_LINES: usize = 5;
const TAIL_LINE_BYTES: usize = 300;

/// How much of a stderr line goes to the log with `stderr: log`.
const LOGGED_STDERR_BYTES: usize = 4096;

/// The last few stderr lines of a backend, for the log when it ends on its own.
#[derive(Default)]
pub struct StderrTail(RefCell<VecDeque<String>>);

impl StderrTail {
    pub fn push(&self, line: &[u8]) {
        let mut lines = self.0.borrow_mut();
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(message::printable(line, TAIL_LINE_BYTES));
    }

    pub fn describe(&self) -> String {
        let lines = self.0.borrow();
        if lines.is_empty() {
            return "it wrote nothing to stderr".into();
        }
        let quoted: Vec<String> = lines.iter().map(|l| format!("\"{l}\"")).collect();
        format!("its last stderr lines: {}", quoted.join(", "))
    }
}

/// Reads `err` until it ends. Every line goes into `tail`, then to the log
/// (`StderrMode::Log`, as `<who> stderr: …`) or to `notify`
/// (`StderrMode::Notify`), which says false once nobody takes them.
pub async fn read<F, Fut>(
    err: pipe::Receiver,
    tail: Rc<StderrTail>,
    mode: StderrMode,
    max: usize,
    who: &str,
    mut notify: F,
) where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut lines = LineReader::with_capacity(err, max, STDERR_BUFFER);
    loop {
        let mut line = Vec::new();
        match lines.read_into(&mut line).await {
            Ok(Line::Complete) => {}
            Ok(Line::Eof) | Err(_) => return,
            Ok(Line::TooLong) => {
                log!(Warn, "{who}: skipped a stderr line over max_message_bytes ({max})");
                if lines.skip_line().await.is_err() {
                    return;
                }
                continue;
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        tail.push(&line);
        match mode {
            StderrMode::Log => log!(Warn, "{who}: backend stderr: {}", message::printable(&line, LOGGED_STDERR_BYTES)),
            StderrMode::Notify => {
                if !notify(line).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stderr_tail_keeps_the_last_lines_printable() {
        let tail = StderrTail::default();
        assert_eq!(tail.describe(), "it wrote nothing to stderr");
        for i in 0..7 {
            tail.push(format!("line {i}\x1b[0m").as_bytes());
        }
        let text = tail.describe();
        assert!(text.starts_with("its last stderr lines: \"line 2\\x1b[0m\""), "{text}");
        assert!(text.ends_with("\"line 6\\x1b[0m\""), "{text}");
        assert!(!text.contains('\x1b'));
    }
}
