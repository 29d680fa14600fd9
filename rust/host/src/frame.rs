//! Frames exchanged between an nginx worker (Lua) and its host.
//!
//! Every frame is a 5-byte header — one byte of kind, then the payload
//! length as a big-endian `u32` — followed by the payload. The Lua side
//! (`apisix/plugins/mcp/bridge/wire.lua`) speaks the same format.
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | `S` Spawn | worker → host | spawn request (JSON, see [`crate::spec`]); makes the connection a session |
//! | `R` Ready | host → worker | `<session id> <backend pid>` |
//! | `F` Failed | host → worker | why the backend could not be started |
//! | `U` Unavailable | host → worker | why the host takes no session now (it is shutting down) |
//! | `M` Message | host → worker | one JSON-RPC message for the client |
//! | `K` Keepalive | host → worker | empty; sent after `keepalive_interval_ms` of silence |
//! | `X` Exit | host → worker | why the session ended; the host closes after it |
//! | `D` Deliver | worker → host | session id (48 bytes), binding, then one client message |
//! | `A` Ack | host → worker | one [`AckStatus`] byte, then a reason for the client |
//! | `Q` Query | worker → host | empty; asks for statistics |
//! | `T` Stats | host → worker | statistics (JSON), the live sessions included |
//! | `E` End | worker → host | a session id, or the start of one (24 characters or more); Ack |
//! | `W` Watch | worker → host | empty; makes the connection a stream of Event frames |
//! | `V` Event | host → worker | one event (see [`crate::events`]) |
//! | `P` Request | worker → host | a request to the Streamable HTTP endpoint (see [`crate::http`]) |
//! | `H` Head | host → worker | status and body type of the reply; Message, Keepalive and Exit frames follow |
//! | `N` Notify | worker → host | binding, then a list-change notification's method, which another host's backend sent; Ack |
//!
//! Spawn and Deliver carry the session's binding (see [`crate::binding`]).

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const HEADER_LEN: usize = 5;

/// Hard ceiling on a payload the host writes.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// The largest `max_message_bytes` a route may set (config.lua's schema).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Room in a Deliver frame for what precedes the message.
const DELIVER_OVERHEAD: usize = 64 << 10;

/// A payload is read in pieces of at most this much, and its buffer grows
/// as they arrive: a header alone never makes the host allocate.
const READ_CHUNK: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Spawn,
    Ready,
    Failed,
    Unavailable,
    Message,
    Keepalive,
    Exit,
    Deliver,
    Ack,
    Query,
    Stats,
    End,
    Watch,
    Event,
    Request,
    Head,
    Notify,
}

impl Kind {
    pub fn byte(self) -> u8 {
        match self {
            Kind::Spawn => b'S',
            Kind::Ready => b'R',
            Kind::Failed => b'F',
            Kind::Unavailable => b'U',
            Kind::Message => b'M',
            Kind::Keepalive => b'K',
            Kind::Exit => b'X',
            Kind::Deliver => b'D',
            Kind::Ack => b'A',
            Kind::Query => b'Q',
            Kind::Stats => b'T',
            Kind::End => b'E',
            Kind::Watch => b'W',
            Kind::Event => b'V',
            Kind::Request => b'P',
            Kind::Head => b'H',
            Kind::Notify => b'N',
        }
    }

    /// The largest payload the host accepts in a frame of this kind from a
    /// worker; `None` for kinds only the host sends.
    pub fn inbound_limit(self) -> Option<usize> {
        match self {
            Kind::Spawn => Some(1 << 20),
            Kind::Deliver | Kind::Request => Some(DELIVER_OVERHEAD + MAX_MESSAGE_BYTES),
            Kind::Query | Kind::End | Kind::Watch | Kind::Notify => Some(4 << 10),
            _ => None,
        }
    }

    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            b'S' => Kind::Spawn,
            b'R' => Kind::Ready,
            b'F' => Kind::Failed,
            b'U' => Kind::Unavailable,
            b'M' => Kind::Message,
            b'K' => Kind::Keepalive,
            b'X' => Kind::Exit,
            b'D' => Kind::Deliver,
            b'A' => Kind::Ack,
            b'Q' => Kind::Query,
            b'T' => Kind::Stats,
            b'E' => Kind::End,
            b'W' => Kind::Watch,
            b'V' => Kind::Event,
            b'P' => Kind::Request,
            b'H' => Kind::Head,
            b'N' => Kind::Notify,
            _ => return None,
        })
    }
}

/// Outcome of a delivery, first byte of an [`Kind::Ack`] payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// Queued for the backend's stdin, behind every message accepted before.
    Accepted,
    /// No live session has this id (never existed, or ended).
    UnknownSession,
    /// Not a JSON object or array in UTF-8.
    InvalidJson,
    /// The backend is not reading its input fast enough; nothing was queued.
    Busy,
    /// Larger than the session's `max_message_bytes`.
    TooLarge,
}

impl AckStatus {
    pub fn byte(self) -> u8 {
        match self {
            AckStatus::Accepted => b'0',
            AckStatus::UnknownSession => b'1',
            AckStatus::InvalidJson => b'2',
            AckStatus::Busy => b'3',
            AckStatus::TooLarge => b'4',
        }
    }

    pub fn from_byte(b: u8) -> Option<AckStatus> {
        Some(match b {
            b'0' => AckStatus::Accepted,
            b'1' => AckStatus::UnknownSession,
            b'2' => AckStatus::InvalidJson,
            b'3' => AckStatus::Busy,
            b'4' => AckStatus::TooLarge,
            _ => return None,
        })
    }
}

/// Writes the header for a payload of `len` bytes into `out[..HEADER_LEN]`.
pub fn put_header(out: &mut [u8], kind: Kind, len: usize) -> io::Result<()> {
    let len = u32::try_from(len)
        .ok()
        .filter(|&l| l as usize <= MAX_PAYLOAD)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("frame payload of {len} bytes")))?;
    out[0] = kind.byte();
    out[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Fills in the header of a frame built in place: `frame` holds
/// `HEADER_LEN` placeholder bytes followed by the payload.
pub fn seal(frame: &mut [u8], kind: Kind) -> io::Result<()> {
    let len = frame.len() - HEADER_LEN;
    put_header(frame, kind, len)
}

/// Encodes a whole frame into a new buffer.
pub fn encode(kind: Kind, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; HEADER_LEN];
    out.extend_from_slice(payload);
    seal(&mut out, kind)?;
    Ok(out)
}

/// Appends a whole frame to `out`, so that several go in one write.
pub fn append(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(payload);
    put_header(&mut out[start..], kind, payload.len())
}

/// Writes one frame in a single write where the kernel allows.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, kind: Kind, payload: &[u8]) -> io::Result<()> {
    w.write_all(&encode(kind, payload)?).await
}

/// Reads one frame sent by a worker. `Ok(None)` is a clean end of stream
/// between frames. A kind the host never receives, or a payload over its
/// kind's limit, is an error before anything is allocated.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a frame header"));
        }
        got += n;
    }
    let kind = Kind::from_byte(header[0])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unknown frame kind 0x{:02x}", header[0])))?;
    let limit = kind
        .inbound_limit()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("a worker sent a {kind:?} frame")))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{kind:?} frame of {len} bytes (at most {limit})"),
        ));
    }
    // One byte more than announced: a message delivered to a backend gets
    // its line end in place.
    let mut payload = Vec::with_capacity(len.min(READ_CHUNK) + 1);
    read_payload(r, len, &mut payload).await?;
    Ok(Some((kind, payload)))
}

/// Reads `len` bytes into `buf`, which grows only as the bytes arrive.
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(len.min(READ_CHUNK));
    (&mut *r).take(len as u64).read_to_end(buf).await?;
    if buf.len() < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a frame"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_eof_between_frames_is_clean() {
        let mut buf = Vec::new();
        write(&mut buf, Kind::Deliver, b"{\"a\":1}").await.expect("write");
        write(&mut buf, Kind::Query, b"").await.expect("write");
        assert_eq!(&buf[..HEADER_LEN], &[b'D', 0, 0, 0, 7]);
        let mut appended = Vec::new();
        append(&mut appended, Kind::Deliver, b"{\"a\":1}").expect("append");
        append(&mut appended, Kind::Query, b"").expect("append");
        assert_eq!(appended, buf, "appended frames are written frames");
        let mut r = &buf[..];
        assert_eq!(read(&mut r).await.expect("read"), Some((Kind::Deliver, b"{\"a\":1}".to_vec())));
        assert_eq!(read(&mut r).await.expect("read"), Some((Kind::Query, Vec::new())));
        assert_eq!(read(&mut r).await.expect("read"), None);
    }

    #[tokio::test]
    async fn truncated_unknown_outbound_and_oversized_frames_are_errors() {
        let mut r: &[u8] = &[b'D', 0, 0];
        assert!(read(&mut r).await.is_err(), "header cut short");
        let mut r: &[u8] = &[b'D', 0, 0, 0, 9, b'x'];
        assert!(read(&mut r).await.is_err(), "payload cut short");
        let mut r: &[u8] = &[b'?', 0, 0, 0, 0];
        assert!(read(&mut r).await.is_err(), "unknown kind");
        let mut r: &[u8] = &[b'M', 0, 0, 0, 0];
        let err = read(&mut r).await.expect_err("only the host sends messages");
        assert!(err.to_string().contains("a worker sent a Message frame"), "{err}");
        let mut r: &[u8] = &[b'D', 0xff, 0xff, 0xff, 0xff];
        assert!(read(&mut r).await.is_err(), "absurd length");
        let mut r: &[u8] = &[b'Q', 0, 1, 0, 0];
        let err = read(&mut r).await.expect_err("a query has no body to speak of");
        assert!(err.to_string().contains("Query frame of 65536 bytes"), "{err}");
        let mut r: &[u8] = &[b'S', 0, 0x20, 0, 0];
        assert!(read(&mut r).await.is_err(), "a 2 MiB spawn request");
    }

    #[tokio::test]
    async fn a_header_alone_does_not_make_the_host_allocate_its_length() {
        // A payload announced at 64 MiB of which 3 bytes arrive: the buffer
        // holds what arrived, not what was announced.
        let mut r: &[u8] = b"abc";
        let mut buf = Vec::new();
        let err = read_payload(&mut r, MAX_MESSAGE_BYTES, &mut buf).await.expect_err("cut short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(buf, b"abc");
        assert!(buf.capacity() <= READ_CHUNK, "capacity {}", buf.capacity());
    }

    #[test]
    fn every_kind_and_status_maps_back_from_its_byte() {
        for k in [
            Kind::Spawn,
            Kind::Ready,
            Kind::Failed,
            Kind::Message,
            Kind::Keepalive,
            Kind::Exit,
            Kind::Deliver,
            Kind::Ack,
            Kind::Query,
            Kind::Stats,
            Kind::End,
            Kind::Watch,
            Kind::Event,
            Kind::Unavailable,
            Kind::Request,
            Kind::Head,
            Kind::Notify,
        ] {
            assert_eq!(Kind::from_byte(k.byte()), Some(k));
        }
        for s in [
            AckStatus::Accepted,
            AckStatus::UnknownSession,
            AckStatus::InvalidJson,
            AckStatus::Busy,
            AckStatus::TooLarge,
        ] {
            assert_eq!(AckStatus::from_byte(s.byte()), Some(s));
        }
    }
}
