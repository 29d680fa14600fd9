//! An incremental parser for `text/event-stream` (the WHATWG "server-sent
//! events" format): lines end with LF, CRLF or CR; a blank line dispatches
//! the event; lines starting with `:` are comments (keepalives).

/// Drop consumed bytes from the front of the buffer beyond this much.
const COMPACT_AT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event` field, `message` when absent.
    pub event: String,
    /// The `data` lines joined with LF.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    Comment,
}

#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
    /// Where to resume looking for a line end.
    scan: usize,
    event: Option<String>,
    data: Vec<u8>,
    data_lines: usize,
}

impl Parser {
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scan = 0;
        } else if self.start >= COMPACT_AT {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event or comment, if the input holds one.
    pub fn next_item(&mut self) -> Option<Item> {
        loop {
            let (line_end, next) = self.find_line_end()?;
            let start = self.start;
            self.start = next;
            self.scan = next;
            if let Some(item) = self.line(start, line_end) {
                return Some(item);
            }
        }
    }

    /// The end of the next line and where the line after it starts. A CR
    /// as the last byte may be the first half of a CRLF: wait for more.
    fn find_line_end(&mut self) -> Option<(usize, usize)> {
        let rest = &self.buf[self.scan..];
        let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
            self.scan = self.buf.len();
            return None;
        };
        let at = self.scan + i;
        if self.buf[at] == b'\n' {
            return Some((at, at + 1));
        }
        match self.buf.get(at + 1) {
            Some(b'\n') => Some((at, at + 2)),
            Some(_) => Some((at, at + 1)),
            None => {
                self.scan = at;
                None
            }
        }
    }

    fn line(&mut self, start: usize, end: usize) -> Option<Item> {
        let line = &self.buf[start..end];
        if line.is_empty() {
            let event = self.event.take();
            if self.data_lines == 0 {
                return None;
            }
            self.data_lines = 0;
            let event = event.unwrap_or_else(|| "message".into());
            return Some(Item::Event(Event { event, data: std::mem::take(&mut self.data) }));
        }
        if line[0] == b':' {
            return Some(Item::Comment);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => {
                if self.data_lines > 0 {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.data_lines += 1;
            }
            // id, retry and unknown fields do not matter here.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<Item> {
        let mut p = Parser::default();
        let mut items = Vec::new();
        for part in input.chunks(piece) {
            p.feed(part);
            while let Some(item) = p.next_item() {
                items.push(item);
            }
        }
        items
    }

    fn event(event: &str, data: &str) -> Item {
        Item::Event(Event { event: event.into(), data: data.into() })
    }

    #[test]
    fn events_comments_and_line_ends_split_anywhere() {
        let input = b"event: endpoint\ndata: /mcp/message?sessionId=ab\n\n\
                      : keepalive\n\n\
                      event: message\r\ndata: {\"id\":1}\r\n\r\n\
                      data:two\rdata:  lines\r\r\
                      id: 7\nretry: 10\nbogus\ndata\n\n";
        let want = vec![
            event("endpoint", "/mcp/message?sessionId=ab"),
            Item::Comment,
            event("message", "{\"id\":1}"),
            event("message", "two\n lines"),
            event("message", ""),
        ];
        for piece in 1..=input.len() {
            assert_eq!(parse_in_pieces(input, piece), want, "piece {piece}");
        }
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        assert_eq!(parse_in_pieces(b"\n\nevent: x\n\ndata: y\n\n", 64), vec![event("message", "y")]);
    }

    #[test]
    fn trailing_cr_waits_for_the_next_byte() {
        let mut p = Parser::default();
        p.feed(b"data: a\r");
        assert_eq!(p.next_item(), None);
        p.feed(b"\n\r");
        assert_eq!(p.next_item(), None);
        p.feed(b"\n");
        assert_eq!(p.next_item(), Some(event("message", "a")));
        assert_eq!(p.next_item(), None);
    }

    #[test]
    fn large_data_over_many_feeds() {
        let big = "x".repeat(3 * COMPACT_AT + 17);
        let input = format!("data: {big}\n\ndata: tail\n\n");
        let items = parse_in_pieces(input.as_bytes(), 4000);
        assert_eq!(items, vec![event("message", &big), event("message", "tail")]);
    }
}
