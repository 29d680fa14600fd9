//! One pass over a JSON text that checks it and finds what the bridge needs
//! at its top level, without building anything: where the `id`, `method`,
//! `params`, `result` and `error` members are.
//!
//! It is the fast path in front of serde_json. It answers only when it is
//! certain: for a text it does not accept (invalid, or valid but unusual:
//! escaped or repeated member names, lone surrogates, exponents, long
//! numbers, deep nesting), it answers `None`, and the caller parses the
//! text with serde_json as before, which then decides and words the error.
//! So every accepted text is one serde_json accepts too, with the same ids
//! (a property test holds it to that).

use std::ops::Range;

/// Nesting deeper than this is left to serde_json.
const MAX_DEPTH: usize = 100;

/// serde_json's own nesting limit: no text it wrote from a value it parsed
/// is deeper. (The scanner's stack of 128 bits holds that much.)
const SERDE_DEPTH: usize = 128;

/// Numbers longer than this (or with an exponent) are left to serde_json,
/// which may find them out of range.
const MAX_NUMBER_LEN: usize = 15;

/// The members of one JSON object that say what a JSON-RPC message is, as
/// byte ranges of their values in the text. A member whose value is `null`
/// counts as absent, as serde_json's `Option` has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub id: Option<Range<usize>>,
    pub method: Option<Range<usize>>,
    pub params: Option<Range<usize>>,
    pub result: bool,
    pub error: bool,
}

/// What a checked text is.
#[derive(Debug, PartialEq, Eq)]
pub enum Top {
    /// One object.
    Object(Members),
    /// An array of objects (a batch), possibly empty.
    Array(Vec<Members>),
}

/// A text the scanner accepted.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    pub top: Top,
    /// Whether it has raw line breaks (in valid JSON, only as whitespace).
    pub line_breaks: bool,
}

/// Checks `text` and finds its top-level members. `None`: not certainly
/// valid, or not an object or an array of objects (see the module
/// documentation).
pub fn scan(text: &[u8]) -> Option<Scanned> {
    Scanner { b: text, i: 0, breaks: false, serialized: false }.top()
}

/// [`scan`] for a text serde_json wrote from a value it had parsed: its
/// numbers are certain, whatever their size; a member name it escaped holds
/// a quote, a backslash or a control character, so it is none of those the
/// bridge looks for; its nesting is within serde_json's limit. So every
/// object or array of objects it wrote is accepted.
pub fn scan_serialized(text: &[u8]) -> Option<Scanned> {
    Scanner { b: text, i: 0, breaks: false, serialized: true }.top()
}

impl Scanner<'_> {
    fn top(mut self) -> Option<Scanned> {
        let s = &mut self;
        let text = s.b;
        s.ws();
        let top = match s.peek()? {
            b'{' => Top::Object(s.members(1)?),
            b'[' => {
                s.i += 1;
                let mut batch = Vec::new();
                s.ws();
                if s.peek()? == b']' {
                    s.i += 1;
                } else {
                    loop {
                        s.ws();
                        if s.peek()? != b'{' {
                            return None;
                        }
                        batch.push(s.members(2)?);
                        s.ws();
                        match s.next()? {
                            b',' => continue,
                            b']' => break,
                            _ => return None,
                        }
                    }
                }
                Top::Array(batch)
            }
            _ => return None,
        };
        s.ws();
        (s.i == text.len()).then_some(Scanned { top, line_breaks: s.breaks })
    }
}

/// The value of member `key` of the object at `range` of `text`, a text
/// `scan` accepted: `Some(None)` when the object has no such member, `None`
/// when that is not certain (a name with escapes, the
/// name twice, or `range` is not an object): ask serde_json.
pub fn member(text: &[u8], range: Range<usize>, key: &str) -> Option<Option<Range<usize>>> {
    let mut s = Scanner { b: &text[..range.end], i: range.start, breaks: false, serialized: true };
    if s.peek()? != b'{' {
        return None;
    }
    s.i += 1;
    s.ws();
    if s.peek()? == b'}' {
        return Some(None);
    }
    let mut found = None;
    loop {
        s.ws();
        let name = s.i + 1;
        if s.string()? {
            return None;
        }
        let is_key = &s.b[name..s.i - 1] == key.as_bytes();
        s.ws();
        s.next()?; // ':'
        s.ws();
        let start = s.i;
        s.value(1)?;
        if is_key {
            if found.is_some() {
                return None;
            }
            found = Some(start..s.i);
        }
        s.ws();
        match s.next()? {
            b',' => continue,
            _ => break,
        }
    }
    Some(found)
}

/// The text of a string value (its range includes the quotes) when it has
/// no escapes, as method names do.
pub fn plain_str<'a>(text: &'a [u8], range: &Range<usize>) -> Option<&'a str> {
    let inner = text.get(range.start + 1..range.end.checked_sub(1)?)?;
    if text.get(range.start) != Some(&b'"') || inner.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// Whether whitespace so far held a line break.
    breaks: bool,
    /// Whether the text is serde_json's (see [`scan_serialized`]), or one
    /// `scan` accepted already.
    serialized: bool,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b' ' | b'\t' => {}
                b'\n' | b'\r' => self.breaks = true,
                _ => return,
            }
            self.i += 1;
        }
    }

    /// A message's object at `self.i`, at `depth`: its members of interest.
    fn members(&mut self, depth: usize) -> Option<Members> {
        self.i += 1;
        let mut m = Members::default();
        // Names seen of those of interest, null or not: a repeated one is
        // left to serde_json.
        let mut seen = 0u8;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(m);
        }
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return None;
            }
            let name_start = self.i + 1;
            if self.string()? && !self.serialized {
                // An escaped name might spell one of interest.
                return None;
            }
            let name = &self.b[name_start..self.i - 1];
            self.colon()?;
            let start = self.i;
            self.value(depth)?;
            let bit = match name {
                b"id" => 1,
                b"method" => 2,
                b"params" => 4,
                b"result" => 8,
                b"error" => 16,
                _ => 0,
            };
            if bit != 0 {
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                let value = start..self.i;
                let present = &self.b[value.clone()] != b"null";
                match bit {
                    1 => m.id = present.then_some(value),
                    2 => m.method = present.then_some(value),
                    4 => m.params = present.then_some(value),
                    8 => m.result = true,
                    _ => m.error = true,
                }
            }
            self.ws();
            match self.next()? {
                b',' => continue,
                b'}' => return Some(m),
                _ => return None,
            }
        }
    }

    /// Whitespace, a colon, whitespace.
    #[inline(always)]
    fn colon(&mut self) -> Option<()> {
        self.ws();
        if self.next()? != b':' {
            return None;
        }
        self.ws();
        Some(())
    }

    /// One whole value at `self.i`, inside `depth` levels already. It
    /// runs as one loop, with what encloses the current point as a stack of
    /// bits (1: an object), rather than a call per value.
    fn value(&mut self, depth: usize) -> Option<()> {
        let mut stack: u128 = 0;
        let mut level = 0;
        loop {
            // A value starts here.
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    if depth + level >= if self.serialized { SERDE_DEPTH } else { MAX_DEPTH } {
                        return None;
                    }
                    let object = open == b'{';
                    self.i += 1;
                    self.ws();
                    // `}` and `]` are two past `{` and `[`.
                    if self.peek()? == open + 2 {
                        self.i += 1;
                    } else {
                        stack = (stack << 1) | u128::from(object);
                        level += 1;
                        if object {
                            self.name()?;
                        }
                        continue;
                    }
                }
                b'"' => drop(self.string()?),
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value ended: it ends what encloses it, or another follows.
            loop {
                if level == 0 {
                    return Some(());
                }
                self.ws();
                let object = stack & 1 == 1;
                match self.next()? {
                    b',' => {
                        self.ws();
                        if object {
                            self.name()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                stack >>= 1;
                level -= 1;
            }
        }
    }

    /// A member's name and its colon, inside an object.
    #[inline(always)]
    fn name(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.string()?;
        self.colon()
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? != word {
            return None;
        }
        self.i += word.len();
        Some(())
    }

    fn number(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if self.serialized {
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.i += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.i += 1;
                }
                if !self.peek()?.is_ascii_digit() {
                    return None;
                }
                self.digits();
            }
            return Some(());
        }
        if matches!(self.peek(), Some(b'e' | b'E')) || self.i - start > MAX_NUMBER_LEN {
            return None;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    /// A string at `self.i` (its opening quote); returns whether it holds
    /// escapes.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        self.i += 1;
        let start = self.i;
        self.skip_plain();
        if self.peek()? == b'"' {
            self.i += 1;
            return Some(false);
        }
        self.string_rest(start)
    }

    /// The rest of a string that is not plain ASCII text: escapes, wider
    /// characters, or an error.
    #[inline(never)]
    fn string_rest(&mut self, start: usize) -> Option<bool> {
        let (mut escaped, mut wide) = (false, false);
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let unit = self.hex4()?;
                            if (0xDC00..0xE000).contains(&unit) {
                                return None;
                            }
                            if (0xD800..0xDC00).contains(&unit) {
                                // Only a whole surrogate pair is certain.
                                if self.next()? != b'\\' || self.next()? != b'u' {
                                    return None;
                                }
                                if !(0xDC00..0xE000).contains(&self.hex4()?) {
                                    return None;
                                }
                            }
                        }
                        _ => return None,
                    }
                }
                c if c < 0x20 => return None,
                _ => {
                    wide = true;
                    self.i += 1;
                }
            }
            self.skip_plain();
        }
        if wide {
            std::str::from_utf8(&self.b[start..self.i]).ok()?;
        }
        self.i += 1;
        Some(escaped)
    }

    /// Skips plain ASCII text in a string: anything but a quote, a
    /// backslash, a control character or a byte of a wider character.
    /// Eight bytes at a time while there are that many.
    #[inline(always)]
    fn skip_plain(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        // Nonzero when some byte of `x` is below `n` (n <= 0x80), or zero
        // for `x ^ (ONES * c)` when some byte equals `c`.
        let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let x = u64::from_le_bytes(word);
            let stop = below(x ^ (ONES * u64::from(b'"')), 1)
                | below(x ^ (ONES * u64::from(b'\\')), 1)
                | below(x, 0x20)
                | (x & HIGH);
            if stop != 0 {
                // Borrows only spill into bytes above a true stop, so the
                // lowest flagged byte is the first stop.
                self.i += (stop.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
        while let Some(&c) = self.b.get(self.i) {
            if c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c) {
                return;
            }
            self.i += 1;
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut unit = 0;
        for &d in digits {
            unit = unit * 16 + (d as char).to_digit(16)?;
        }
        self.i += 4;
        Some(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(text: &str) -> Members {
        match scan(text.as_bytes()).map(|s| s.top) {
            Some(Top::Object(m)) => m,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn text<'a>(t: &'a str, r: &Option<Range<usize>>) -> &'a str {
        r.clone().map(|r| &t[r]).unwrap_or("-")
    }

    #[test]
    fn finds_the_members_of_a_message() {
        let t = r#" {"jsonrpc":"2.0","id":"a\"b","method":"tools/call","params":{"id":9,"x":[1,{"y":null}]}} "#;
        let m = object(t);
        assert_eq!(text(t, &m.id), r#""a\"b""#);
        assert_eq!(text(t, &m.method), r#""tools/call""#);
        assert_eq!(text(t, &m.params), r#"{"id":9,"x":[1,{"y":null}]}"#);
        assert!(!m.result && !m.error);
        let t = r#"{"id":7,"result":{}}"#;
        let m = object(t);
        assert_eq!((text(t, &m.id), m.result, m.error), ("7", true, false));
        let m = object(r#"{"id":null,"method":null,"error":null}"#);
        assert_eq!((m.id, m.method, m.error), (None, None, true));
        assert_eq!(scan(b"[]"), Some(Scanned { top: Top::Array(vec![]), line_breaks: false }));
        assert!(matches!(scan(b"[{\"id\":1},{}]").map(|s| s.top), Some(Top::Array(v)) if v.len() == 2));
        assert_eq!(scan(b"{\"a\":\r\n[1,\n2]}").map(|s| s.line_breaks), Some(true));
        assert_eq!(scan(b"{\"a\":\"\\n\"}").map(|s| s.line_breaks), Some(false));
    }

    #[test]
    fn leaves_to_serde_json_what_it_is_not_sure_of() {
        for t in [
            "",
            " ",
            "42",
            "\"x\"",
            "[1]",
            "[{},2]",
            "{",
            "{}x",
            "{} {}",
            "{\"a\":}",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":1e5}",
            "{\"a\":12345678901234567}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\n\"}",
            "{\"a\":\"\u{1}\"}",
            "{\"id\":1,\"id\":2}",
            "{\"\\u0069d\":1}",
            "{\"a\":\"\\u12\"}",
            "\u{feff}{}",
        ] {
            assert_eq!(scan(t.as_bytes()), None, "{t:?}");
        }
        assert_eq!(scan(b"{\"a\":\"\xff\"}"), None);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(scan(format!("{{\"a\":{deep}}}").as_bytes()), None);
        // What it is sure of, it accepts.
        assert!(scan("{\"a\":\"\\ud83d\\ude00 é \\n\",\"b\":[true,false,null,-0.5,0]}".as_bytes()).is_some());
        assert!(scan(b"{\"x\":1,\"x\":{\"id\":1,\"id\":2}}").is_some(), "other names may repeat");
    }

    #[test]
    fn finds_members_inside_a_value() {
        let t = r#"{"params":{"a":{"progressToken":"t"},"_meta":{"progressToken":5}}}"#;
        let params = object(t).params.expect("params");
        let meta = member(t.as_bytes(), params, "_meta").expect("sure").expect("_meta");
        assert_eq!(&t[member(t.as_bytes(), meta, "progressToken").expect("sure").expect("token")], "5");
        let t = r#"{"params":{"_meta":null,"x":{}}}"#;
        let params = object(t).params.expect("params");
        assert_eq!(member(t.as_bytes(), params.clone(), "_meta").map(|r| r.map(|r| &t[r])), Some(Some("null")));
        assert_eq!(member(t.as_bytes(), params, "y"), Some(None));
        let t = r#"{"params":{"\u005fmeta":{}}}"#;
        assert_eq!(member(t.as_bytes(), object(t).params.expect("params"), "_meta"), None, "escaped name");
        let t = r#"{"params":{"_meta":1,"_meta":2}}"#;
        assert_eq!(member(t.as_bytes(), object(t).params.expect("params"), "_meta"), None, "twice");
        assert_eq!(plain_str(br#""a/b""#, &(0..5)), Some("a/b"));
        assert_eq!(plain_str(br#""a\nb""#, &(0..6)), None);
        assert_eq!(plain_str(b"12", &(0..2)), None);
    }
}
