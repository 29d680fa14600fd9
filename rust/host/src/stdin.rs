//! A backend's stdin: each message is written at once when nothing waits
//! before it (the backend then wakes before the client hears back), and
//! otherwise queued for a task that writes as the pipe takes it. The queue
//! is bounded in bytes: a backend that does not read makes its senders
//! busy, never the host's memory grow.

use crate::log;
use std::cell::Cell;
use std::io;
use std::rc::Rc;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::{spawn_local, JoinHandle};

/// Why a message was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The backend is not reading fast enough.
    Busy,
    /// Its stdin is closed.
    Closed,
}

/// Bytes on their way: `bytes[from..]`.
struct Input {
    bytes: Vec<u8>,
    from: usize,
}

pub struct Stdin {
    pipe: Rc<pipe::Sender>,
    tx: mpsc::UnboundedSender<Input>,
    /// Bytes taken and not yet written; while not 0, the task writes them
    /// and anything new queues behind.
    queued: Rc<Cell<usize>>,
    limit: usize,
}

impl Stdin {
    /// Takes over `pipe`; `limit` bounds the queue in bytes, though a
    /// message always goes into an empty queue. The task ends when the pipe
    /// fails or the `Stdin` is dropped; aborting it closes the pipe once the
    /// `Stdin` is gone too.
    pub fn start(pipe: pipe::Sender, limit: usize, who: String) -> (Stdin, JoinHandle<()>) {
        let pipe = Rc::new(pipe);
        let queued = Rc::new(Cell::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = spawn_local(feed(Rc::clone(&pipe), rx, Rc::clone(&queued), who));
        (Stdin { pipe, tx, queued, limit }, task)
    }

    /// Writes `bytes[from..]` (a whole line) or queues what the pipe did
    /// not take.
    pub fn offer(&self, bytes: Vec<u8>, mut from: usize) -> Result<(), Refused> {
        let queued = self.queued.get();
        if queued == 0 {
            match self.pipe.try_write(&bytes[from..]) {
                Ok(n) if from + n == bytes.len() => return Ok(()),
                Ok(n) => from += n,
                // Full, or failing: the task waits, or meets the error and
                // says so.
                Err(_) => {}
            }
        } else if queued + (bytes.len() - from) > self.limit {
            return Err(Refused::Busy);
        }
        let len = bytes.len() - from;
        self.queued.set(queued + len);
        if self.tx.send(Input { bytes, from }).is_err() {
            self.queued.set(queued);
            return Err(Refused::Closed);
        }
        Ok(())
    }
}

async fn feed(pipe: Rc<pipe::Sender>, mut rx: mpsc::UnboundedReceiver<Input>, queued: Rc<Cell<usize>>, who: String) {
    while let Some(Input { bytes, mut from }) = rx.recv().await {
        let len = bytes.len() - from;
        let written = loop {
            if from == bytes.len() {
                break Ok(());
            }
            if let Err(e) = pipe.writable().await {
                break Err(e);
            }
            match pipe.try_write(&bytes[from..]) {
                Ok(n) => from += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => break Err(e),
            }
        };
        queued.set(queued.get().saturating_sub(len));
        if let Err(e) = written {
            log!(Info, "{who}: backend stopped taking input: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn pipe_pair() -> (pipe::Sender, pipe::Receiver) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        (pipe::Sender::from_owned_fd(w).expect("sender"), pipe::Receiver::from_owned_fd(r).expect("receiver"))
    }

    #[tokio::test]
    async fn lines_arrive_whole_and_in_order_when_the_pipe_fills_and_the_queue_is_bounded() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (w, mut r) = pipe_pair();
                let (stdin, _task) = Stdin::start(w, 1 << 20, "test".into());
                // More than a pipe holds (64 KiB): the rest queues, in order.
                let line = |n: u8| {
                    let mut l = vec![b'a' + n; 40_000];
                    l.push(b'\n');
                    l
                };
                for n in 0..5 {
                    stdin.offer(line(n), 0).expect("taken");
                }
                assert!(stdin.queued.get() > 0, "the pipe cannot hold it all");
                // A full queue refuses, however small the message.
                let big = Stdin { limit: 10, ..stdin };
                assert_eq!(big.offer(b"x\n".to_vec(), 0), Err(Refused::Busy));
                let mut got = vec![0u8; 5 * 40_001];
                r.read_exact(&mut got).await.expect("read");
                for n in 0..5u8 {
                    assert_eq!(&got[n as usize * 40_001..(n as usize + 1) * 40_001], &line(n)[..]);
                }
                while big.queued.get() > 0 {
                    tokio::task::yield_now().await;
                }
                // Offsets skip what precedes the line.
                big.offer(b"skip:y\n".to_vec(), 5).expect("taken");
                let mut two = [0u8; 2];
                r.read_exact(&mut two).await.expect("read");
                assert_eq!(&two, b"y\n");
            })
            .await;
    }
}
