//! Reading newline-terminated lines with a length limit, so a backend that
//! never writes a newline cannot make the host buffer without bound.

use std::io;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// What [`LineReader::read_into`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line was appended (without its `\n`); a last line without a
    /// newline before end of stream counts too.
    Complete,
    /// The line is longer than the limit; what was read of it is discarded.
    TooLong,
    /// End of stream.
    Eof,
}

pub struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(reader: R, max: usize) -> Self {
        Self::with_capacity(reader, max, 64 * 1024)
    }

    /// `buffer` is the read size; lines may still grow up to `max`.
    pub fn with_capacity(reader: R, max: usize, buffer: usize) -> Self {
        LineReader { inner: BufReader::with_capacity(buffer, reader), max }
    }

    /// Appends the next line to `out`.
    pub async fn read_into(&mut self, out: &mut Vec<u8>) -> io::Result<Line> {
        let start = out.len();
        let mut limited = (&mut self.inner).take(self.max as u64 + 1);
        let n = limited.read_until(b'\n', out).await?;
        if n == 0 {
            return Ok(Line::Eof);
        }
        if out.last() == Some(&b'\n') {
            out.pop();
            return Ok(Line::Complete);
        }
        if n > self.max {
            out.truncate(start);
            return Ok(Line::TooLong);
        }
        Ok(Line::Complete)
    }

    /// Discards input up to and including the next newline.
    pub async fn skip_line(&mut self) -> io::Result<()> {
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                return Ok(());
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.inner.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let len = buf.len();
                    self.inner.consume(len);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(r: &mut LineReader<&[u8]>) -> (Line, String) {
        let mut buf = Vec::new();
        let line = r.read_into(&mut buf).await.expect("read");
        (line, String::from_utf8(buf).expect("utf8"))
    }

    #[tokio::test]
    async fn lines_limits_and_a_final_unterminated_line() {
        let input: &[u8] = b"one\n\nthree\r\nfour-is-long\nlast";
        let mut r = LineReader::new(input, 6);
        assert_eq!(next(&mut r).await, (Line::Complete, "one".into()));
        assert_eq!(next(&mut r).await, (Line::Complete, "".into()));
        assert_eq!(next(&mut r).await, (Line::Complete, "three\r".into()));
        assert_eq!(next(&mut r).await, (Line::TooLong, "".into()));
        r.skip_line().await.expect("skip");
        assert_eq!(next(&mut r).await, (Line::Complete, "last".into()));
        assert_eq!(next(&mut r).await, (Line::Eof, "".into()));
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_accepted() {
        let input: &[u8] = b"123456\n1234567\n";
        let mut r = LineReader::new(input, 6);
        let mut out = Vec::new();
        assert_eq!(r.read_into(&mut out).await.expect("read"), Line::Complete);
        assert_eq!(out, b"123456");
        out.clear();
        assert_eq!(r.read_into(&mut out).await.expect("read"), Line::TooLong);
    }
}
