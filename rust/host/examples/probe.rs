//! For the host's tests (not an example of use): asks the host at the
//! socket named by its argument for statistics. Exits 10 if it answered,
//! 11 if it closed the connection, 12 if it could not connect.

use std::io::{Read, Write};
use std::time::Duration;

fn main() {
    let path = std::env::args_os().nth(1).expect("usage: probe <socket>");
    let Ok(mut conn) = std::os::unix::net::UnixStream::connect(&path) else { std::process::exit(12) };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut header = [0u8; 5];
    // A refused connection may already be closed when we write.
    let answered = conn.write_all(b"Q\0\0\0\0").is_ok() && conn.read_exact(&mut header).is_ok() && header[0] == b'T';
    std::process::exit(if answered { 10 } else { 11 });
}
