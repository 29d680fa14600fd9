//! What the host tells its worker as it happens, for the worker's session
//! bookkeeping and metrics: sessions started and ended (why, and how long
//! their processes took to go), and the messages that crossed, counted per
//! route and sent at most once a second while traffic flows.
//!
//! A worker opens a connection with a Watch frame; the host then writes an
//! Event frame per event, until the connection closes or the host, shutting
//! down, has ended every session; a Keepalive frame after each silent
//! minute spares the worker read timeouts. Events that happen before the
//! first watch (the worker starts listening just after it started the host)
//! are kept for it. An event is one line of
//! tab-separated fields (nothing a worker must decode as JSON):
//!
//! | event | fields after the name |
//! |---|---|
//! | `started` | route, consumer, transport, session id |
//! | `ended` | route, consumer, transport, session id, reason, teardown milliseconds |
//! | `traffic` | route, messages in, bytes in, messages out, bytes out |
//! | `changed` | route, consumer, the method of a list-change notification a pooled backend sent |

use crate::binding::Binding;
use crate::frame::{self, Kind};
use crate::log;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Events that may wait for a watcher that does not read; more are dropped
/// (and counted), so a stuck worker cannot make the host grow.
const WATCHER_QUEUE: usize = 10_000;

/// How often traffic counts are sent while messages flow.
const TRAFFIC_INTERVAL: Duration = Duration::from_secs(1);

/// Silence on a watch after which a Keepalive frame is sent.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// Messages and bytes of one route in each direction.
#[derive(Clone, Copy, Default)]
struct Traffic {
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
}

struct Watcher {
    tx: mpsc::Sender<Vec<u8>>,
}

#[derive(Default)]
pub struct Events {
    watchers: RefCell<Vec<Watcher>>,
    /// Events kept for the first watch, until it comes.
    early: RefCell<Vec<Vec<u8>>>,
    watched: Cell<bool>,
    traffic: RefCell<BTreeMap<String, Traffic>>,
    flush_armed: Cell<bool>,
    dropped: Cell<u64>,
    me: RefCell<Weak<Events>>,
}

impl Events {
    pub fn new() -> Rc<Events> {
        let events = Rc::new(Events::default());
        *events.me.borrow_mut() = Rc::downgrade(&events);
        events
    }

    /// Starts sending events on `writer`; returns when the worker stops
    /// watching or `close_all` is called.
    pub async fn watch(&self, mut writer: OwnedWriteHalf) {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WATCHER_QUEUE);
        if !self.watched.replace(true) {
            for frame in self.early.take() {
                let _ = tx.try_send(frame);
            }
        }
        self.watchers.borrow_mut().push(Watcher { tx });
        let keepalive = frame::encode(Kind::Keepalive, b"").unwrap_or_default();
        loop {
            let frame = match tokio::time::timeout(KEEPALIVE_INTERVAL, rx.recv()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => keepalive.clone(),
            };
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    }

    /// Ends every watch: the host has ended its sessions and is going away.
    pub fn close_all(&self) {
        self.flush_traffic();
        self.watchers.borrow_mut().clear();
    }

    /// Whether anyone hears events now, or may soon (no watch came yet).
    fn heard(&self) -> bool {
        !self.watched.get() || !self.watchers.borrow().is_empty()
    }

    fn emit(&self, fields: &[&str]) {
        if !self.heard() {
            return;
        }
        let line: Vec<String> = fields.iter().map(|f| f.replace(['\t', '\n', '\r'], " ")).collect();
        let Ok(frame) = frame::encode(Kind::Event, line.join("\t").as_bytes()) else { return };
        if !self.watched.get() {
            let mut early = self.early.borrow_mut();
            match early.len() < WATCHER_QUEUE {
                true => early.push(frame),
                false => self.dropped.set(self.dropped.get() + 1),
            }
            return;
        }
        self.watchers.borrow_mut().retain(|w| match w.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.set(self.dropped.get() + 1);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Events dropped because a watcher did not read them.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    pub fn session_started(&self, binding: &Binding, transport: &str, id: &str) {
        self.emit(&["started", &binding.route, &binding.consumer, transport, id]);
    }

    /// `reason` is one token (`client_closed`, `backend_exited`, ...);
    /// `teardown` is how long the processes took to go after the end.
    pub fn session_ended(&self, binding: &Binding, transport: &str, id: &str, reason: &str, teardown: Duration) {
        self.flush_traffic();
        let ms = format!("{:.3}", teardown.as_secs_f64() * 1000.0);
        self.emit(&["ended", &binding.route, &binding.consumer, transport, id, reason, &ms]);
    }

    /// A session's backend crashed (`status`) and was started again.
    pub fn backend_restarted(&self, binding: &Binding, transport: &str, id: &str, status: &str) {
        self.emit(&["restarted", &binding.route, &binding.consumer, transport, id, status]);
    }

    /// A pooled backend of `binding` sent a list change (`method`): the
    /// worker passes it to the other hosts, whose listeners want it too.
    pub fn list_changed(&self, binding: &Binding, method: &str) {
        self.emit(&["changed", &binding.route, &binding.consumer, method]);
    }

    /// A client message of `bytes` went to a backend of `route`.
    pub fn message_in(&self, route: &str, bytes: usize) {
        self.count(route, |t| {
            t.messages_in += 1;
            t.bytes_in += bytes as u64;
        });
    }

    /// A backend message of `bytes` went to a client of `route`.
    pub fn message_out(&self, route: &str, bytes: usize) {
        self.count(route, |t| {
            t.messages_out += 1;
            t.bytes_out += bytes as u64;
        });
    }

    fn count(&self, route: &str, add: impl FnOnce(&mut Traffic)) {
        if !self.heard() {
            return;
        }
        {
            let mut traffic = self.traffic.borrow_mut();
            match traffic.get_mut(route) {
                Some(t) => add(t),
                None => add(traffic.entry(route.to_owned()).or_default()),
            }
        }
        if !self.flush_armed.replace(true) {
            let me = self.me.borrow().clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(TRAFFIC_INTERVAL).await;
                if let Some(events) = me.upgrade() {
                    events.flush_traffic();
                }
            });
        }
    }

    fn flush_traffic(&self) {
        self.flush_armed.set(false);
        let traffic = std::mem::take(&mut *self.traffic.borrow_mut());
        for (route, t) in traffic {
            let counts = [t.messages_in, t.bytes_in, t.messages_out, t.bytes_out].map(|n| n.to_string());
            self.emit(&["traffic", &route, &counts[0], &counts[1], &counts[2], &counts[3]]);
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if self.dropped.get() > 0 {
            log!(Warn, "{} event(s) were dropped: the worker did not read them", self.dropped.get());
        }
    }
}
