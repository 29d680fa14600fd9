//! The host's parsers run on arbitrary bytes, the way the host runs them,
//! with the properties each must keep checked as it goes: the entry points
//! of the fuzz targets (`rust/fuzz/`, `make fuzz`), and of the tests that replay
//! their kept inputs and feed them generated ones. Each function panics
//! when a property does not hold; any other input must pass.
//!
//! Built for the tests and with the `fuzzing` feature only.

use crate::binding::Binding;
use crate::frame::{self, Kind, HEADER_LEN};
use crate::host::IdHasher;
use crate::http::Request;
use crate::lines::{Line, LineReader};
use crate::mcp::{self, Form, Message, Shape};
use crate::{message, sse, stateless};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

/// The fuzz targets, by name: what `make fuzz` runs and what the tests
/// replay from `rust/fuzz/seeds/<name>` and `rust/fuzz/crashes/<name>`.
pub type Target = fn(&[u8]);

pub const TARGETS: [(&str, Target); 4] =
    [("frame", frame), ("jsonrpc", jsonrpc), ("lines", lines), ("request", request)];

/// The frame codec, as a connection from a worker is read (through a
/// buffer, in pieces). Byte 0 picks the buffer size and how the stream is
/// cut; the rest is the stream.
pub fn frame(data: &[u8]) {
    let Some((&knobs, stream)) = data.split_first() else { return };
    let expected = frames_by_the_book(stream);
    let buffer = 1 + usize::from(knobs & 0x1f) * 256;
    let mut conn = BufReader::with_capacity(buffer, Pieces::new(stream, knobs));
    let mut got = Vec::new();
    let end = block_on(async {
        loop {
            match frame::read(&mut conn).await {
                Ok(Some(f)) => got.push(f),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    assert_eq!(got, expected.0, "frames read");
    assert_eq!(end.is_ok(), expected.1, "how the stream ended: {end:?}");
    // Encoding what was read gives back the bytes it was read from.
    let mut again = Vec::new();
    for (kind, payload) in &got {
        frame::append(&mut again, *kind, payload).expect("a frame read can be written");
        assert!(payload.len() <= kind.inbound_limit().expect("only inbound kinds are read"));
    }
    assert_eq!(again, stream[..again.len()], "frames written again");
}

/// The frames in `stream` by the format's rules, and whether it ends
/// cleanly between two of them.
fn frames_by_the_book(mut stream: &[u8]) -> (Vec<(Kind, Vec<u8>)>, bool) {
    let mut frames = Vec::new();
    loop {
        if stream.is_empty() {
            return (frames, true);
        }
        let Some((header, rest)) = stream.split_first_chunk::<HEADER_LEN>() else { return (frames, false) };
        let Some(kind) = Kind::from_byte(header[0]) else { return (frames, false) };
        let Some(limit) = kind.inbound_limit() else { return (frames, false) };
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > limit || rest.len() < len {
            return (frames, false);
        }
        frames.push((kind, rest[..len].to_vec()));
        stream = &rest[len..];
    }
}

/// The backend line reader, as the host reads a backend's stdout (the
/// message frame's header room ahead of each line) and stderr (a too long
/// line skipped). Bytes 0 to 2 pick the line limit, the read buffer and how
/// the stream is cut; the rest is the stream.
pub fn lines(data: &[u8]) {
    let [max, buffer, knobs, stream @ ..] = data else { return };
    let max = 1 + usize::from(max % 64);
    let buffer = 1 + usize::from(buffer % 32);
    let prefix = if knobs & 1 == 1 { HEADER_LEN } else { 0 };
    let expected = lines_by_the_book(stream, max);
    let mut reader = LineReader::with_capacity(Pieces::new(stream, *knobs), max, buffer);
    let got = block_on(async {
        let mut got = Vec::new();
        loop {
            let mut line = vec![0xaa; prefix];
            match reader.read_into(&mut line).await.expect("reading from memory") {
                Line::Complete => {
                    assert_eq!(line[..prefix], vec![0xaa; prefix], "the room ahead of the line is kept");
                    got.push(Some(line.split_off(prefix)));
                }
                Line::TooLong => {
                    assert_eq!(line, vec![0xaa; prefix], "a too long line leaves nothing");
                    got.push(None);
                    reader.skip_line().await.expect("skipping in memory");
                }
                Line::Eof => return got,
            }
        }
    });
    assert_eq!(got, expected, "lines of at most {max} bytes, read through a {buffer}-byte buffer");
}

/// The lines of `stream` (`None` for one over `max` bytes): split at every
/// newline, a last line without one included.
fn lines_by_the_book(stream: &[u8], max: usize) -> Vec<Option<Vec<u8>>> {
    let mut lines: Vec<_> = stream.split(|&b| b == b'\n').map(|l| (l.len() <= max).then(|| l.to_vec())).collect();
    if stream.is_empty() || stream.ends_with(b"\n") {
        lines.pop();
    }
    lines
}

/// JSON-RPC inspection and ids: the HTTP+SSE leg's check (the scanner
/// against serde_json), the Streamable leg's parse (against the tree), id
/// rewriting and the texts the bridge writes from client bytes.
pub fn jsonrpc(data: &[u8]) {
    message::assert_scanner_agrees_with_serde(data);
    if let Ok(ids) = message::inspect(data) {
        let mut flat = data.to_vec();
        message::flatten_line_breaks(&mut flat);
        assert!(!flat.contains(&b'\n') && !flat.contains(&b'\r'));
        let again = message::inspect(&flat).expect("a flattened message is still one");
        // The same ids (an id's own whitespace may have been a line break).
        let canonical = |ids: &[String]| ids.iter().map(|id| mcp::canonical(id.as_bytes())).collect::<Vec<_>>();
        assert_eq!(canonical(&again.requests), canonical(&ids.requests), "requests flattened");
        assert_eq!(canonical(&again.responses), canonical(&ids.responses), "responses flattened");
        assert_eq!(
            serde_json::from_slice::<Value>(&flat).ok(),
            serde_json::from_slice::<Value>(data).ok(),
            "flattening changed the message"
        );
        for id in ids.requests.iter().chain(&ids.responses) {
            let error = message::no_response_error(id, "why");
            match serde_json::from_str::<Value>(id) {
                Ok(id_value) => {
                    assert_eq!(mcp::canonical(id.as_bytes()), id_value.to_string(), "canonical id");
                    let error: Value = serde_json::from_slice(&error).expect("an error is JSON");
                    assert_eq!(error["id"], id_value, "the error answers the id");
                }
                // JSON's grammar allows a surrogate escape without its pair,
                // which the check passes on (the backend decides); serde_json's
                // tree does not, for the id nor for the whole message.
                Err(e) => {
                    assert!(serde_json::from_slice::<Value>(data).is_err(), "an id that is not JSON: {e}");
                    serde_json::from_str::<serde::de::IgnoredAny>(id).expect("the id is JSON text");
                    serde_json::from_slice::<serde::de::IgnoredAny>(&error).expect("an error is JSON");
                }
            }
        }
    }
    streamable_message(data);
    let shown = message::printable(data, 40);
    assert!(!shown.chars().any(char::is_control), "log text with a control character");
    let note: Value = serde_json::from_slice(&message::stderr_notification(data)).expect("a notification is JSON");
    assert_eq!(note["params"]["content"], String::from_utf8_lossy(data).as_ref());
}

/// A message as the Streamable HTTP leg takes it: as text with its members
/// found, with the same answers as the tree of it.
fn streamable_message(data: &[u8]) {
    let tree = mcp::parse(data);
    let message = match Message::parse(data.to_vec()) {
        Ok(m) => m,
        Err(e) => {
            assert_eq!(tree.map(drop), Err(e), "the text's error is the tree's");
            return;
        }
    };
    let (value, shape) = tree.expect("a text message is a tree too");
    assert!(!message.text().contains(&b'\n') && !message.text().contains(&b'\r'));
    let form = message.form().expect("a parsed message has a form");
    // serde_json reads a float with more digits than an f64 holds to a
    // neighbour of the exact value, which it may write otherwise: such an id
    // is only checked to be a number.
    let same_id = |text: &str, tree: &Value| {
        let id = serde_json::from_str::<Value>(text).expect("an id is JSON");
        match tree {
            Value::Number(n) if n.is_f64() => assert!(id.is_number(), "id {text} for {tree}"),
            _ => assert_eq!(&id, tree, "id"),
        }
    };
    match (&form, &shape) {
        (Form::Request { id, method }, Shape::Request { id: tree_id, method: tree_method }) => {
            same_id(id, tree_id);
            assert_eq!(method.as_ref(), tree_method.as_str());
        }
        (Form::Notification { method }, Shape::Notification { method: tree_method }) => {
            assert_eq!(method.as_ref(), tree_method.as_str());
        }
        (Form::Response { id }, Shape::Response { id: tree_id }) => same_id(id, tree_id),
        _ => panic!("the text is {form:?}, the tree {shape:?}"),
    }
    let token = value.get("params").and_then(|p| p.get("_meta")).and_then(|m| m.get("progressToken"));
    let text_token = message.param(&["_meta", "progressToken"]);
    match token {
        // serde_json reads a float with more digits than an f64 holds to a
        // neighbour of the exact value, so only its presence is compared.
        Some(Value::Number(n)) if n.is_f64() => assert!(text_token.is_some(), "progress token"),
        _ => assert_eq!(text_token, token.map(Value::to_string), "progress token"),
    }
    // A request forwarded under the bridge's own id is the same request.
    if let Form::Request { method, .. } = &form {
        let forwarded = Message::parse(message.with_id(b"\"b-1\"")).expect("a forwarded request parses");
        let same = Form::Request { id: "\"b-1\"", method: method.clone() };
        assert_eq!(forwarded.form().expect("form"), same, "forwarded request");
    }
}

/// Requests as the host takes them from a worker: the binding (route and
/// consumer), the Request frame's blocks with the client's headers, the
/// session id a delivery starts with and its look-up, and the header
/// values a stateless request is checked against.
pub fn request(data: &[u8]) {
    if let Ok((binding, rest)) = Binding::split(data) {
        let mut wire = binding.encode();
        wire.extend_from_slice(rest);
        assert_eq!(wire, data, "a binding written again");
        assert_eq!(binding.strip(data), Some(rest), "strip takes what split found");
    }
    let probe = Binding { route: "mcp".into(), consumer: String::new() };
    match probe.strip(data) {
        Some(rest) => assert_eq!(Binding::split(data).ok(), Some((probe.clone(), rest))),
        None => assert!(Binding::split(data).map_or(true, |(b, _)| b != probe), "strip missed its binding"),
    }
    let sessions = SessionTable::new();
    if let Some((id, rest)) = sse::split_delivery(data) {
        assert_eq!([id.as_bytes(), rest].concat(), data);
        sessions.agree(id);
    }
    if let Ok(r) = Request::parse(data) {
        sessions.agree(&r.headers.session);
        for value in [r.headers.mcp_method.as_deref(), r.headers.mcp_name.as_deref()].into_iter().flatten() {
            header_value(value);
        }
        let again = encode_request(&r);
        let back = Request::parse(&again).expect("a request written again parses");
        assert_eq!(format!("{back:?}"), format!("{r:?}"), "a request written again");
    }
    header_value(&String::from_utf8_lossy(data));
    // What a worker's json.string makes of any header value parses, and
    // says what the client sent (bytes that are not UTF-8 as U+FFFD).
    let mut payload = probe.encode();
    let headers = [&br#"{"method":"POST","version":"#[..], &lua_json_string(data), b"}"].concat();
    for block in [&headers[..], b""] {
        payload.extend_from_slice(&(block.len() as u32).to_be_bytes());
        payload.extend_from_slice(block);
    }
    let r = Request::parse(&payload).expect("a worker's headers parse, whatever the client sent");
    assert_eq!(r.headers.version, String::from_utf8_lossy(data));
}

/// A stateless request's `Mcp-Method` or `Mcp-Name` value, decoded.
fn header_value(value: &str) {
    let decoded = stateless::decode_header(value);
    if let Some(encoded) = value.trim().strip_prefix("=?base64?").and_then(|v| v.strip_suffix("?=")) {
        if let Some(bytes) = stateless::base64_decode(encoded) {
            assert_eq!(stateless::base64_decode(&base64_encode(&bytes)), Some(bytes.clone()), "base64 again");
            assert_eq!(decoded, String::from_utf8(bytes).unwrap_or_default());
        }
    }
}

/// A few live sessions, in a table keyed as the host keys its own, and in
/// one with the standard hasher: a client's id finds the same in both.
struct SessionTable {
    ids: HashMap<String, usize, BuildHasherDefault<IdHasher>>,
    reference: HashMap<String, usize>,
}

impl SessionTable {
    fn new() -> SessionTable {
        let known = [
            "0123456789abcdef0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef0123456789abcdee",
            "fedcba9876543210fedcba9876543210fedcba9876543210",
            "",
        ];
        SessionTable {
            ids: known.iter().enumerate().map(|(n, id)| (id.to_string(), n)).collect(),
            reference: known.iter().enumerate().map(|(n, id)| (id.to_string(), n)).collect(),
        }
    }

    fn agree(&self, id: &str) {
        assert_eq!(self.ids.get(id), self.reference.get(id), "session {id:?}");
    }
}

/// A Request frame's payload from its parts (see `http`).
pub(crate) fn encode_request(r: &Request<'_>) -> Vec<u8> {
    let h = &r.headers;
    let headers = serde_json::json!({
        "method": h.method, "session": h.session, "version": h.version, "mcp_method": h.mcp_method,
        "mcp_name": h.mcp_name, "accept": h.accept, "slot": h.slot,
    })
    .to_string();
    let mut out = r.binding.encode();
    for block in [headers.as_bytes(), r.spec] {
        out.extend_from_slice(&(block.len() as u32).to_be_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(r.body);
    out
}

/// `s` as the worker's `json.string` writes it (json.lua): quotes,
/// backslashes and control characters escaped, every other byte as it is.
pub(crate) fn lua_json_string(s: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &c in s {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 || c == 0x7f => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            c => out.push(c),
        }
    }
    out.push(b'"');
    out
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut word = [0u8; 3];
        word[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from_be_bytes([0, word[0], word[1], word[2]]);
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(DIGITS[(n >> (18 - 6 * i)) as usize & 63] as char),
                false => out.push('='),
            }
        }
    }
    out
}

/// A reader of `data` that hands it out in pieces of varying size (from 1
/// byte), now and then answering "not yet" first, as a socket or a pipe
/// does; `seed` picks the pieces.
pub(crate) struct Pieces<'a> {
    data: &'a [u8],
    state: u32,
    stalled: bool,
}

impl<'a> Pieces<'a> {
    pub(crate) fn new(data: &'a [u8], seed: u8) -> Pieces<'a> {
        Pieces { data, state: 0x9e37_79b9 ^ u32::from(seed), stalled: false }
    }

    fn next(&mut self) -> u32 {
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        self.state
    }
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let roll = self.next();
        if !self.stalled && roll.is_multiple_of(5) {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.stalled = false;
        let piece = match roll % 3 {
            0 => 1,
            1 => 1 + (roll >> 8) as usize % 16,
            _ => 1 + (roll >> 8) as usize % 4096,
        };
        let n = piece.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

struct Wakeful;

impl Wake for Wakeful {
    fn wake(self: Arc<Self>) {}
}

/// Runs a future that only ever waits on a [`Pieces`] reader.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Wakeful));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    /// Every input kept in the repository (`rust/fuzz/seeds`, and each crash
    /// the fuzzers found, once fixed, in `rust/fuzz/crashes`) passes its target.
    #[test]
    fn every_kept_fuzz_input_passes_its_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            for kind in ["seeds", "crashes"] {
                let Ok(entries) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
                for entry in entries {
                    let path = entry.expect("a directory entry").path();
                    let input = std::fs::read(&path).expect("a kept input");
                    let outcome = std::panic::catch_unwind(|| target(&input));
                    assert!(outcome.is_ok(), "{} fails target {name}", path.display());
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= TARGETS.len(), "only {replayed} kept inputs found under {}", root.display());
    }

    #[test]
    fn the_reference_readers_follow_the_formats() {
        assert_eq!(
            lines_by_the_book(b"one\n\ntoo long\nlast", 4),
            vec![Some(b"one".to_vec()), Some(vec![]), None, Some(b"last".to_vec())]
        );
        assert_eq!(lines_by_the_book(b"x\n", 4), vec![Some(b"x".to_vec())]);
        assert_eq!(lines_by_the_book(b"", 4), Vec::<Option<Vec<u8>>>::new());
        assert_eq!(
            frames_by_the_book(b"Q\0\0\0\0E\0\0\0\x01x"),
            (vec![(Kind::Query, vec![]), (Kind::End, b"x".to_vec())], true)
        );
        assert_eq!(frames_by_the_book(b"Q\0\0\0\x01"), (vec![], false));
        assert_eq!(frames_by_the_book(b"M\0\0\0\0"), (vec![], false), "only the host sends messages");
        assert_eq!(base64_encode(b"mcp/bridge"), "bWNwL2JyaWRnZQ==");
        assert_eq!(lua_json_string(b"a\"\\\n\x01\xff"), b"\"a\\\"\\\\\\n\\u0001\xff\"");
    }

    /// Frames of every inbound kind, as a worker writes them.
    fn inbound_frames() -> impl Strategy<Value = Vec<u8>> {
        let kinds = [Kind::Spawn, Kind::Deliver, Kind::Request, Kind::Query, Kind::End, Kind::Watch, Kind::Notify];
        let frame = (prop::sample::select(kinds.to_vec()), prop::collection::vec(any::<u8>(), 0..300));
        prop::collection::vec(frame, 0..8).prop_map(|frames| {
            let mut out = Vec::new();
            for (kind, payload) in frames {
                frame::append(&mut out, kind, &payload).expect("a small frame");
            }
            out
        })
    }

    /// A text, maybe damaged: a byte changed, cut short, or with bytes
    /// added.
    fn damaged(text: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        (text, any::<prop::sample::Index>(), 0u8..4, any::<u8>()).prop_map(|(mut text, at, how, byte)| {
            if !text.is_empty() {
                let i = at.index(text.len());
                match how {
                    0 => text[i] = byte,
                    1 => text.truncate(i),
                    2 => text.insert(i, byte),
                    _ => {}
                }
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Frames written are the frames read, however the stream is cut
        /// and whatever the buffer; a damaged stream is read as far as it
        /// is whole, and never panics.
        #[test]
        fn frames_round_trip_through_any_cut(knobs in any::<u8>(), stream in damaged(inbound_frames())) {
            frame(&[&[knobs][..], &stream].concat());
        }

        /// Any cut of a backend's output into reads gives the same lines,
        /// none over the limit, and a too long line is skipped whole.
        #[test]
        fn lines_are_the_same_however_the_output_is_cut(
            knobs in any::<[u8; 3]>(),
            stream in prop::collection::vec(prop::sample::select(b"ab\n\r{}".to_vec()), 0..400),
        ) {
            lines(&[&knobs[..], &stream].concat());
        }

        /// Requests from a worker: bindings and Request frames round-trip,
        /// session ids are found as the standard table finds them, header
        /// values of any bytes reach the host.
        #[test]
        fn requests_round_trip_and_any_header_value_reaches_the_host(
            route in "[a-z#/0-9]{0,12}",
            consumer in "[a-z\n]{0,6}",
            method in prop::sample::select(vec!["POST", "GET", "DELETE", "PUT", ""]),
            session in prop_oneof!["[0-9a-f]{48}", "[0-9a-f]{0,50}"],
            version in prop::collection::vec(any::<u8>(), 0..30),
            name in prop::option::of(prop_oneof![".{0,20}", "[a-z/]{0,12}".prop_map(|s| format!("=?base64?{}?=", base64_encode(s.as_bytes())))]),
            spec in prop::collection::vec(any::<u8>(), 0..20),
            body in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let binding = Binding { route, consumer };
            let mut payload = binding.encode();
            let mut headers = format!(r#"{{"method":"{method}","session":"{session}","slot":true,"version":"#).into_bytes();
            headers.extend_from_slice(&lua_json_string(&version));
            if let Some(name) = &name {
                headers.extend_from_slice(b",\"mcp_name\":");
                headers.extend_from_slice(&lua_json_string(name.as_bytes()));
            }
            headers.push(b'}');
            for block in [&headers, &spec] {
                payload.extend_from_slice(&(block.len() as u32).to_be_bytes());
                payload.extend_from_slice(block);
            }
            payload.extend_from_slice(&body);
            let r = Request::parse(&payload).expect("a worker's request parses");
            prop_assert_eq!(&r.binding, &binding);
            prop_assert_eq!((&*r.headers.method, r.headers.slot, r.spec, r.body), (method, true, &spec[..], &body[..]));
            prop_assert_eq!(&*r.headers.version, String::from_utf8_lossy(&version));
            request(&payload);
            request(&body);
        }

        /// Header values decode as they were encoded.
        #[test]
        fn base64_header_values_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(stateless::base64_decode(&base64_encode(&bytes)), Some(bytes));
        }

        /// Arbitrary bytes: no parser panics, and every property holds.
        #[test]
        fn no_parser_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
            for (_, target) in TARGETS {
                target(&data);
            }
        }
    }
}
