//! The warm pool of backends that serve stateless (2026-07-28) requests:
//! stdio servers of the older revisions, started and initialized by the
//! bridge itself, kept per route and consumer (legacy servers keep state
//! for the life of their process, so a backend never serves two
//! consumers), and lent to one request at a time.
//!
//! Bounds, from the route: idle backends kept ready (`pool_min_idle`), the
//! most per route and consumer (`pool_max_per_key`) and per worker
//! (`pool_max_per_worker`); an idle backend ends after
//! `pool_idle_timeout_ms`, any after `pool_max_requests` requests or, once
//! idle, `pool_max_age_ms`. A request waits at most `pool_wait_ms` for one.

use crate::backend::SpawnError;
use crate::binding::Binding;
use crate::child::{Child, Output};
use crate::host::Host;
use crate::limits::limits_note;
use crate::log;
use crate::mcp::{self, Shape};
use crate::message;
use crate::reaper::Exit;
use crate::spec::SpawnSpec;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio::task::spawn_local;

/// The transport name of pooled backends, in events.
pub const TRANSPORT: &str = "pool";

/// How long a new backend may take to answer `initialize`.
const INITIALIZE_LIMIT: Duration = Duration::from_secs(60);

/// After a cancelled call, the backend is lent again once its output has
/// been quiet this long (or the call's response came): what it still says
/// about the cancelled call must not reach the next one.
const QUIET_AFTER_CANCEL: Duration = Duration::from_millis(50);

/// A backend that keeps talking this long after a cancelled call is ended
/// rather than lent again.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long the end of a backend's output waits for its exit, to tell a
/// backend that exited from one that only closed its output.
const EXIT_AFTER_EOF: Duration = Duration::from_millis(100);

/// What a call on a pooled backend hears from it.
pub enum CallEvent {
    /// A notification related to the call (progress, log messages).
    Notification(Value),
    /// The backend asks the client something (elicitation, sampling,
    /// roots) in the middle of the call: the call answers it (see `mrtr`)
    /// with [`Lease::answer`].
    Asked { id: Value, method: String, params: Value },
    /// The response (its id is the bridge's).
    Response(Value),
    /// The backend ended before responding.
    Ended(String),
}

enum Command {
    Call {
        message: Value,
        events: mpsc::Sender<CallEvent>,
    },
    /// Carries the member, so that it outlives the lease it came from
    /// until its task has handled the cancellation and taken it back.
    Cancel {
        id: u64,
        member: Rc<Member>,
    },
    /// A response to a request the backend made during the current call.
    Answer {
        message: Value,
    },
}

/// A backend of the pool, run by its own task.
pub struct Member {
    pub pid: i32,
    commands: mpsc::UnboundedSender<Command>,
}

/// A backend lent to one request; goes back to the pool when the request's
/// response has come (the member's task returns it).
pub struct Lease {
    pub member: Rc<Member>,
    pub pool: Rc<Pool>,
}

impl Lease {
    /// Sends a request (its id already the bridge's) to the backend; what
    /// comes back goes to `events`.
    pub fn call(&self, message: Value, events: mpsc::Sender<CallEvent>) -> bool {
        self.member.commands.send(Command::Call { message, events }).is_ok()
    }

    /// The client gave up on request `id`: the backend is told, and its
    /// response, if it comes, is dropped.
    /// Sends the backend the response to one of its requests.
    pub fn answer(&self, message: Value) -> bool {
        self.member.commands.send(Command::Answer { message }).is_ok()
    }

    pub fn cancel(self, id: u64) {
        let _ = self.member.commands.send(Command::Cancel { id, member: Rc::clone(&self.member) });
    }
}

/// Listeners of `subscriptions/listen` for a pool's list changes.
pub struct Listener {
    /// The notifications it asked for and the backends can send.
    pub methods: Vec<&'static str>,
    pub tx: mpsc::Sender<String>,
}

/// The backends of one route and consumer.
pub struct Pool {
    pub key: Binding,
    spec: RefCell<Rc<SpawnSpec>>,
    idle: RefCell<Vec<Rc<Member>>>,
    members: Cell<usize>,
    init: RefCell<Option<Rc<Value>>>,
    listeners: RefCell<Vec<Listener>>,
}

impl Pool {
    /// The latest `initialize` result of one of its backends.
    pub fn init_result(&self) -> Option<Rc<Value>> {
        self.init.borrow().clone()
    }

    pub fn listen(&self, listener: Listener) {
        self.listeners.borrow_mut().push(listener);
    }

    /// Tells this pool's listeners of a list change.
    pub fn broadcast(&self, method: &str) {
        self.listeners.borrow_mut().retain(|l| {
            if !l.methods.contains(&method) {
                return !l.tx.is_closed();
            }
            !matches!(l.tx.try_send(method.to_string()), Err(mpsc::error::TrySendError::Closed(_)))
        });
    }
}

/// Why no backend could be lent.
pub enum Refusal {
    /// Every backend is busy and no more may start: try again later.
    Saturated,
    /// A backend could not be started or initialized.
    Failed(String),
}

#[derive(Default)]
pub struct Pools {
    pools: RefCell<HashMap<Binding, Rc<Pool>>>,
    /// Members of every pool, started or starting.
    total: Cell<usize>,
    /// A member became free, or ended: waiting requests look again.
    freed: Notify,
}

impl Pools {
    pub fn new() -> Rc<Pools> {
        Rc::new(Pools::default())
    }

    pub fn live(&self) -> usize {
        self.total.get()
    }

    /// A list change a backend of `key` in another host sent: this host's
    /// listeners of `key` hear it too. Returns whether any pool took it.
    pub fn notify(&self, key: &Binding, method: &str) -> bool {
        let pool = self.pools.borrow().get(key).cloned();
        match pool {
            Some(pool) => {
                pool.broadcast(method);
                true
            }
            None => false,
        }
    }

    fn pool(&self, key: &Binding, spec: &Rc<SpawnSpec>) -> Rc<Pool> {
        if let Some(pool) = self.pools.borrow().get(key) {
            // The route may have been changed since: new members follow it.
            if !Rc::ptr_eq(&pool.spec.borrow(), spec) {
                *pool.spec.borrow_mut() = Rc::clone(spec);
            }
            return Rc::clone(pool);
        }
        let pool = Rc::new(Pool {
            key: key.clone(),
            spec: RefCell::new(Rc::clone(spec)),
            idle: RefCell::default(),
            members: Cell::new(0),
            init: RefCell::default(),
            listeners: RefCell::default(),
        });
        self.pools.borrow_mut().insert(key.clone(), Rc::clone(&pool));
        pool
    }

    /// The pool of `key`, with its initialize result: a backend is started
    /// (and initialized) if none ever was.
    pub async fn with_init(
        self: &Rc<Self>,
        host: &Rc<Host>,
        key: &Binding,
        spec: &Rc<SpawnSpec>,
    ) -> Result<(Rc<Pool>, Rc<Value>), Refusal> {
        let pool = self.pool(key, spec);
        if let Some(init) = pool.init_result() {
            return Ok((pool, init));
        }
        let lease = self.lease(host, key, spec).await?;
        let init = lease.pool.init_result().ok_or_else(|| Refusal::Failed("no initialize result".into()))?;
        self.give_back(&lease.pool, lease.member);
        Ok((pool, init))
    }

    /// Lends a backend of `key`, starting one if the bounds allow, else
    /// waiting for one (at most `pool_wait_ms`).
    pub async fn lease(
        self: &Rc<Self>,
        host: &Rc<Host>,
        key: &Binding,
        spec: &Rc<SpawnSpec>,
    ) -> Result<Lease, Refusal> {
        let pool = self.pool(key, spec);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(spec.pool_wait_ms);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if host.shutting_down() {
                return Err(Refusal::Saturated);
            }
            let idle = pool.idle.borrow_mut().pop();
            if let Some(member) = idle {
                self.keep_warm(host, &pool);
                return Ok(Lease { member, pool });
            }
            if pool.members.get() < spec.pool_max_per_key && self.total.get() < spec.pool_max_per_worker {
                let member = self.start(host, &pool).await.map_err(Refusal::Failed)?;
                self.keep_warm(host, &pool);
                return Ok(Lease { member, pool });
            }
            // A call waiting for its client's input (see `mrtr`) gives its
            // backend up to a request that is here now.
            let worker_full = self.total.get() >= spec.pool_max_per_worker;
            host.parked.evict_oldest(|b| worker_full || b == key, "a live request needed its backend");
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Refusal::Saturated);
            }
        }
    }

    /// Starts backends in the background until `pool_min_idle` are idle.
    fn keep_warm(self: &Rc<Self>, host: &Rc<Host>, pool: &Rc<Pool>) {
        let spec = Rc::clone(&pool.spec.borrow());
        let wanted = spec.pool_min_idle.saturating_sub(pool.idle.borrow().len());
        for _ in 0..wanted {
            if pool.members.get() >= spec.pool_max_per_key || self.total.get() >= spec.pool_max_per_worker {
                return;
            }
            let (pools, host, pool) = (Rc::clone(self), Rc::clone(host), Rc::clone(pool));
            spawn_local(async move {
                match pools.start(&host, &pool).await {
                    Ok(member) => pools.give_back(&pool, member),
                    Err(e) => log!(Warn, "cannot keep a backend ready for {}: {e}", pool.key),
                }
            });
        }
    }

    fn give_back(&self, pool: &Pool, member: Rc<Member>) {
        if member.commands.is_closed() {
            return;
        }
        pool.idle.borrow_mut().push(member);
        self.freed.notify_waiters();
    }

    fn gone(&self, pool: &Pool, pid: i32) {
        pool.idle.borrow_mut().retain(|m| m.pid != pid);
        pool.members.set(pool.members.get().saturating_sub(1));
        self.total.set(self.total.get().saturating_sub(1));
        self.freed.notify_waiters();
    }

    /// Starts and initializes a backend for `pool`; returns it lent.
    async fn start(self: &Rc<Self>, host: &Rc<Host>, pool: &Rc<Pool>) -> Result<Rc<Member>, String> {
        let spec = SpawnSpec::clone(&pool.spec.borrow());
        pool.members.set(pool.members.get() + 1);
        self.total.set(self.total.get() + 1);
        let mut child = match Child::spawn(host, spec) {
            Ok(c) => c,
            Err(SpawnError { reason, detail }) => {
                log!(Warn, "cannot start the MCP server: {detail}");
                self.gone(pool, 0);
                return Err(reason.to_string());
            }
        };
        let id = format!("pool-{}", child.pid);
        host.events.session_started(&pool.key, TRANSPORT, &id);
        match initialize(&mut child).await {
            Ok(result) => *pool.init.borrow_mut() = Some(Rc::new(result)),
            Err(why) => {
                let (pid, tail) = (child.pid, child.tail.describe());
                let (_, took, exit) = child.end(host, Instant::now()).await;
                let status = exit.map(|e| e.to_string()).unwrap_or_else(|| "ended".into());
                log!(Warn, "backend {pid}: the MCP server did not answer initialize: {why} ({status}); {tail}");
                host.events.session_ended(&pool.key, TRANSPORT, &id, "initialize_failed", took);
                self.gone(pool, pid);
                return Err(format!("the MCP server {why}"));
            }
        }
        let (commands, rx) = mpsc::unbounded_channel();
        let member = Rc::new(Member { pid: child.pid, commands });
        let task = MemberTask {
            host: Rc::clone(host),
            pools: Rc::downgrade(self),
            pool: Rc::clone(pool),
            me: Rc::downgrade(&member),
            child,
            id,
            current: None,
            cancelled: Vec::new(),
            draining: None,
            served: 0,
        };
        spawn_local(task.run(rx));
        Ok(member)
    }
}

/// Has a new backend answer `initialize` as a client that can be asked
/// nothing, then tells it the bridge is initialized.
async fn initialize(child: &mut Child) -> Result<Value, &'static str> {
    let request = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {
            "protocolVersion": mcp::LEGACY_VERSIONS[0],
            // Each call's client decides what may really be asked (see
            // `mrtr`); a server that checks capabilities must not give up first.
            "capabilities": {"elicitation": {}, "sampling": {}, "roots": {}},
            "clientInfo": {"name": "mcp-bridge", "version": env!("CARGO_PKG_VERSION")},
        },
    });
    if child.send(message::to_bytes(&request)).is_err() {
        return Err("stopped reading its input");
    }
    let answer = tokio::time::timeout(INITIALIZE_LIMIT, async {
        loop {
            match child.next().await {
                Output::Message(line) => {
                    if let Ok((value, Shape::Response { id })) = mcp::parse(&line) {
                        if id == json!(0) {
                            return Some(value);
                        }
                    }
                }
                Output::Stderr(_) => {}
                Output::Closed { .. } => return None,
            }
        }
    })
    .await;
    let response = match answer {
        Ok(Some(r)) => r,
        Ok(None) => return Err("ended before answering"),
        Err(_) => return Err("did not answer in time"),
    };
    let Some(result) = response.get("result").cloned() else { return Err("refused to initialize") };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let _ = child.send(message::to_bytes(&initialized));
    Ok(result)
}

/// A member's task: the only reader of its backend's output, busy or idle.
struct MemberTask {
    host: Rc<Host>,
    pools: Weak<Pools>,
    pool: Rc<Pool>,
    me: Weak<Member>,
    child: Child,
    id: String,
    current: Option<(u64, mpsc::Sender<CallEvent>)>,
    /// Requests the client gave up on, whose late responses are dropped.
    cancelled: Vec<u64>,
    /// After a cancelled call: the backend, kept until it is lent again,
    /// with when it may be at the earliest and when it must end instead.
    draining: Option<Drain>,
    served: u64,
}

struct Drain {
    /// Keeps the member alive meanwhile (the lease that held it is gone).
    _member: Rc<Member>,
    quiet_until: Instant,
    limit: Instant,
}

impl MemberTask {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut shutdown = self.host.shutdown_watch();
        let mut idle_since = Instant::now();
        let why = loop {
            // Read, not cloned: this runs for every message.
            let (idle_ms, min_idle) = {
                let spec = self.pool.spec.borrow();
                (spec.pool_idle_timeout_ms, spec.pool_min_idle)
            };
            let idle_until = tokio::time::Instant::from_std(idle_since + Duration::from_millis(idle_ms));
            let idle = self.current.is_none() && self.draining.is_none();
            let quiet_until = tokio::time::Instant::from_std(
                self.draining.as_ref().map(|d| d.quiet_until).unwrap_or_else(Instant::now),
            );
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Call { message, events }) => {
                        let id = message.get("id").and_then(Value::as_u64).unwrap_or(0);
                        let bytes = message::to_bytes(&message);
                        let len = bytes.len();
                        if self.child.send(bytes).is_err() {
                            let _ = events.send(CallEvent::Ended("the MCP server stopped reading its input".into())).await;
                            break "it stopped reading its input";
                        }
                        self.host.events.message_in(&self.pool.key.route, len);
                        self.current = Some((id, events));
                    }
                    Some(Command::Cancel { id, member }) => {
                        if self.current.as_ref().is_some_and(|(c, _)| *c == id) {
                            self.current = None;
                            self.cancelled.push(id);
                            let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                                "params": {"requestId": id, "reason": "the client closed its stream"}});
                            let _ = self.child.send(message::to_bytes(&cancel));
                            let now = Instant::now();
                            self.draining =
                                Some(Drain { _member: member, quiet_until: now + QUIET_AFTER_CANCEL, limit: now + DRAIN_LIMIT });
                        }
                    }
                    Some(Command::Answer { message }) => {
                        let bytes = message::to_bytes(&message);
                        let len = bytes.len();
                        if self.child.send(bytes).is_ok() {
                            self.host.events.message_in(&self.pool.key.route, len);
                        }
                    }
                    None => break "the pool let it go",
                },
                out = self.child.next() => match out {
                    Output::Message(line) => {
                        self.host.events.message_out(&self.pool.key.route, line.len());
                        let cancelled_before = self.cancelled.len();
                        if self.output(&line).await {
                            if self.finished_call() {
                                break "it served its share of requests";
                            }
                            idle_since = Instant::now();
                        } else if let Some(drain) = &mut self.draining {
                            // The cancelled call's response ends the drain;
                            // anything else only delays it.
                            if self.cancelled.len() < cancelled_before {
                                drain.quiet_until = Instant::now();
                            } else if Instant::now() >= drain.limit {
                                break "it kept talking after a cancelled call";
                            } else {
                                drain.quiet_until = Instant::now() + QUIET_AFTER_CANCEL;
                            }
                        }
                    }
                    Output::Stderr(_) => {}
                    Output::Closed { too_long: true } => break "it wrote a line over max_message_bytes",
                    Output::Closed { too_long: false } => {
                        // A backend that exits closes its output first: its
                        // exit, a moment later, says why it went.
                        match tokio::time::timeout(EXIT_AFTER_EOF, self.child.wait_exit()).await {
                            Ok(Some(_)) => break "it exited",
                            _ => break "it closed its output",
                        }
                    }
                },
                _ = tokio::time::sleep_until(quiet_until), if self.draining.is_some() => {
                    // Quiet since the cancelled call: lent again from here.
                    let drained = self.draining.take();
                    if self.finished_call() {
                        break "it served its share of requests";
                    }
                    drop(drained);
                    idle_since = Instant::now();
                }
                _ = tokio::time::sleep_until(idle_until), if idle => {
                    if self.pool.members.get() > min_idle {
                        break "it was idle too long";
                    }
                    idle_since = Instant::now();
                }
                _ = shutdown.wait_for(|&down| down) => break "the worker is shutting down",
            }
        };
        self.end(why).await;
    }

    /// Returns the backend to the pool after a call, or says it should end.
    fn finished_call(&mut self) -> bool {
        self.served += 1;
        let (max_age_ms, max_requests) = {
            let spec = self.pool.spec.borrow();
            (spec.pool_max_age_ms, spec.pool_max_requests)
        };
        let old = self.child.started.elapsed() > Duration::from_millis(max_age_ms);
        if self.served >= max_requests || old {
            return true;
        }
        if let (Some(pools), Some(me)) = (self.pools.upgrade(), self.me.upgrade()) {
            pools.give_back(&self.pool, me);
        }
        false
    }

    /// Handles one line of output; returns true when it ended the call.
    async fn output(&mut self, line: &[u8]) -> bool {
        let Ok((value, shape)) = mcp::parse(line) else {
            log!(Warn, "backend {}: dropped an output line that is not a JSON-RPC message", self.child.pid);
            return false;
        };
        match shape {
            Shape::Response { id } => {
                let id = id.as_u64();
                if let Some(pos) = self.cancelled.iter().position(|c| Some(*c) == id) {
                    self.cancelled.remove(pos);
                    return false;
                }
                match self.current.take() {
                    Some((current, events)) if Some(current) == id => {
                        let _ = events.send(CallEvent::Response(value)).await;
                        true
                    }
                    other => {
                        self.current = other;
                        false
                    }
                }
            }
            Shape::Request { id, method } => {
                // What a 2026-07-28 client can be asked goes to its call,
                // which turns it into an input_required result.
                if mcp::asks_client(&method) {
                    if let Some((_, events)) = &self.current {
                        let params = value.get("params").cloned().unwrap_or(Value::Null);
                        let _ = events.send(CallEvent::Asked { id, method, params }).await;
                        return false;
                    }
                }
                // Nobody to ask: ping is answered here, everything else refused.
                let answer = match method.as_str() {
                    "ping" => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
                    _ => mcp::error(
                        &id,
                        mcp::code::METHOD_NOT_FOUND,
                        "the client cannot take requests on this transport",
                        None,
                    ),
                };
                let _ = self.child.send(message::to_bytes(&answer));
                false
            }
            Shape::Notification { method } => {
                if method.ends_with("/list_changed") {
                    self.pool.broadcast(&method);
                    self.host.events.list_changed(&self.pool.key, &method);
                } else if let Some((_, events)) = &self.current {
                    let _ = events.send(CallEvent::Notification(value)).await;
                }
                false
            }
        }
    }

    async fn end(mut self, why: &str) {
        if let Some((_, events)) = self.current.take() {
            let status = self.child.exit_status().map(|e| e.to_string()).unwrap_or_else(|| "ended".into());
            let _ = events.try_send(CallEvent::Ended(format!("backend {status}")));
        }
        if let Some(pools) = self.pools.upgrade() {
            pools.gone(&self.pool, self.child.pid);
        }
        let (pid, limits) = (self.child.pid, limits_note(&self.child.spec));
        let (teardown, took, exit) = self.child.end(&self.host, Instant::now()).await;
        let reason = match why {
            "it was idle too long" => "idle_timeout",
            "it served its share of requests" => "recycled",
            "the worker is shutting down" => "worker_shutdown",
            "it wrote a line over max_message_bytes" => "oversized_line",
            "it closed its output" => "backend_closed_output",
            "it kept talking after a cancelled call" => "recycled",
            _ => exit.and_then(Exit::limit_reason).unwrap_or("backend_exited"),
        };
        self.host.events.session_ended(&self.pool.key, TRANSPORT, &self.id, reason, took);
        let status = exit.map(|e| format!(", backend {e}")).unwrap_or_default();
        let limits = if reason == "backend_exited" { limits.as_str() } else { "" };
        log!(Info, "pooled backend {pid} of {} ended: {why}{status}{limits}; {teardown}", self.pool.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_shares_its_routes_spawn_request_and_follows_a_change() {
        let pools = Pools::new();
        let key = Binding { route: "r".into(), consumer: String::new() };
        let first = Rc::new(SpawnSpec::for_tests());
        let pool = pools.pool(&key, &first);
        assert!(Rc::ptr_eq(&pools.pool(&key, &first), &pool), "one pool per route and consumer");
        assert!(Rc::ptr_eq(&pool.spec.borrow(), &first), "shared, not copied");
        let mut changed = SpawnSpec::for_tests();
        changed.command = "changed".into();
        assert!(Rc::ptr_eq(&pools.pool(&key, &Rc::new(changed)), &pool), "the same pool");
        assert_eq!(pool.spec.borrow().command, "changed", "its new members follow the route");
        let other = Binding { route: "r".into(), consumer: "c".into() };
        assert!(!Rc::ptr_eq(&pools.pool(&other, &first), &pool), "another consumer, another pool");
    }
}
