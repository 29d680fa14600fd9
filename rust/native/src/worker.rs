//! Per-worker state behind the Lua functions: the slot registry and the
//! host this worker started.

use mcp_bridge_core::launcher::{self, Host, LaunchConfig};
use mcp_bridge_core::levels;
use mcp_bridge_core::runtime::Layout;
use mcp_bridge_core::slots::{SlotGuard, SlotRegistry};
use mlua::{UserData, UserDataMethods};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;

struct State {
    /// The process this state belongs to: a module loaded in the nginx
    /// master is inherited by every worker at fork, and must not make them
    /// share the master's host.
    pid: u32,
    config: LaunchConfig,
    host: Option<Host>,
    hosts_started: u64,
    exiting: bool,
}

impl State {
    fn new() -> State {
        State {
            pid: std::process::id(),
            config: LaunchConfig { program: default_program(), layout: Layout::new(None), log_level: "notice".into() },
            host: None,
            hosts_started: 0,
            exiting: false,
        }
    }

    fn current(&mut self) -> &mut State {
        if self.pid != std::process::id() {
            let config = self.config.clone();
            // Dropping the inherited host only closes this process's copy
            // of its control channel; the parent's host is unaffected.
            *self = State::new();
            self.config = config;
        }
        self
    }
}

/// Why `host_socket` refuses once the worker is shutting down.
pub const EXITING: &str = "worker is exiting";

static STATE: Lazy<Mutex<State>> = Lazy::new(|| Mutex::new(State::new()));
static SLOTS: Lazy<Arc<SlotRegistry>> = Lazy::new(SlotRegistry::new);

/// The host program installed beside this module.
fn default_program() -> PathBuf {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let anchor = default_program as *const libc::c_void;
    // SAFETY: dladdr fills `info` for an address inside a loaded object;
    // dli_fname then points at a NUL-terminated path owned by the loader.
    let path = unsafe {
        if libc::dladdr(anchor, info.as_mut_ptr()) == 0 || info.assume_init_ref().dli_fname.is_null() {
            None
        } else {
            Some(std::ffi::CStr::from_ptr(info.assume_init_ref().dli_fname).to_string_lossy().into_owned())
        }
    };
    match path.as_deref().map(std::path::Path::new).and_then(|p| p.parent()) {
        Some(dir) => dir.join(launcher::HOST_PROGRAM),
        None => PathBuf::from(launcher::HOST_PROGRAM),
    }
}

pub fn configure(
    program: Option<String>,
    runtime_dir: Option<String>,
    log_level: Option<String>,
) -> Result<(), String> {
    let mut guard = STATE.lock();
    let state = guard.current();
    if let Some(p) = program.filter(|p| !p.is_empty()) {
        state.config.program = PathBuf::from(p);
    }
    if let Some(d) = runtime_dir.filter(|d| !d.is_empty()) {
        if !d.starts_with('/') {
            return Err(format!("runtime_dir must be an absolute path, got \"{d}\""));
        }
        state.config.layout = Layout::new(Some(PathBuf::from(d)));
    }
    if let Some(l) = log_level {
        if levels::severity(&l).is_none() {
            return Err(levels::unknown(&l));
        }
        state.config.log_level = l;
    }
    Ok(())
}

/// The path of this worker's host socket, and whether this call started
/// the host.
pub fn host_socket() -> Result<(String, bool), String> {
    let mut guard = STATE.lock();
    let state = guard.current();
    if state.exiting {
        return Err(EXITING.into());
    }
    if let Some(host) = &state.host {
        if host.is_alive() {
            return Ok((host.socket_path().to_string_lossy().into_owned(), false));
        }
        // Sessions of the dead host saw their connections close; a fresh
        // host takes the new ones.
        state.host = None;
    }
    let host = Host::launch(&state.config).map_err(|e| format!("cannot start the mcp-bridge host: {e}"))?;
    let path = host.socket_path().to_string_lossy().into_owned();
    state.host = Some(host);
    state.hosts_started += 1;
    Ok((path, true))
}

pub fn socket_path(token: &str) -> Option<String> {
    let layout = STATE.lock().current().config.layout.clone();
    // A token from a client may name no host at all, or a directory someone
    // else made: connecting would make nginx log a client's mistake as a
    // critical error, or hand the message to a stranger.
    layout.trusted_socket(token).map(|p| p.to_string_lossy().into_owned())
}

/// Sockets of the hosts of this nginx's workers (this one's included), by
/// token.
pub fn hosts() -> Vec<(String, String)> {
    let layout = STATE.lock().current().config.layout.clone();
    // This worker's parent is the master of every host it may list.
    let master = mcp_bridge_core::procfs::identity(std::os::unix::process::parent_id() as i32);
    layout
        .host_tokens()
        .into_iter()
        .filter(|t| master.is_some() && layout.host_nginx(t) == master)
        .filter_map(|t| layout.trusted_socket(&t).map(|p| (t, p.to_string_lossy().into_owned())))
        .collect()
}

pub fn shutdown() -> bool {
    let mut guard = STATE.lock();
    let state = guard.current();
    state.exiting = true;
    match state.host.take() {
        Some(host) => {
            host.end_sessions();
            true
        }
        None => false,
    }
}

/// A held slot, as Lua userdata. Garbage collection releases it too.
pub struct Slot(SlotGuard);

impl UserData for Slot {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("release", |_, this, ()| Ok(this.0.release()));
        methods.add_method("released", |_, this, ()| Ok(this.0.is_released()));
        methods.add_method("route", |_, this, ()| Ok(this.0.route().to_owned()));
    }
}

pub fn slot_acquire(route: &str, max: usize) -> Option<Slot> {
    SLOTS.try_acquire(route, max).map(Slot)
}

pub fn slot_count(route: &str) -> usize {
    SLOTS.count(route)
}

pub struct Stats {
    /// This worker's parent: nginx's master process.
    pub master_pid: i32,
    pub host_pid: Option<i32>,
    pub host_socket: Option<String>,
    pub hosts_started: u64,
    pub runtime_dir: String,
    pub exiting: bool,
    pub slots: Vec<(String, usize)>,
}

pub fn stats() -> Stats {
    let mut guard = STATE.lock();
    let state = guard.current();
    Stats {
        // SAFETY: getppid cannot fail.
        master_pid: unsafe { libc::getppid() },
        host_pid: state.host.as_ref().filter(|h| h.is_alive()).map(|h| h.pid()),
        host_socket: state
            .host
            .as_ref()
            .filter(|h| h.is_alive())
            .map(|h| h.socket_path().to_string_lossy().into_owned()),
        hosts_started: state.hosts_started,
        runtime_dir: state.config.layout.base().to_string_lossy().into_owned(),
        exiting: state.exiting,
        slots: SLOTS.snapshot(),
    }
}
