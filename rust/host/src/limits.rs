//! A route's resource limits for its backends: what the route asks for
//! (`limits` in the spawn request), the `setrlimit` calls that apply it in
//! a new backend between `fork` and `exec`, and how the reaper tells that
//! the CPU limit is what ended a process.
//!
//! Every limit is an rlimit of the backend process, inherited by what it
//! starts. `processes` (RLIMIT_NPROC) is the odd one: the kernel compares
//! it with the number of processes and threads of the backend's *user*,
//! not of the backend (see docs/architecture.md, "Resource limits").

use crate::log;
use crate::spec::SpawnSpec;
use serde::{Deserialize, Deserializer};
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::io;

/// CPU seconds between SIGXCPU (the soft limit) and SIGKILL (the hard
/// limit), for a backend that handles or ignores SIGXCPU.
pub const CPU_GRACE_SECONDS: u64 = 1;

const MIB: u64 = 1 << 20;

/// What a route asks for; `None` leaves the host's own limit. Every member
/// is required in the spawn request (`null` for unset), like every other
/// field: the worker always sends the whole configuration.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Address space of each backend process, in MiB (RLIMIT_AS).
    #[serde(deserialize_with = "present")]
    pub memory_mb: Option<u64>,
    /// Processes and threads of the backends' user beyond which a
    /// backend's `fork` or new thread fails (RLIMIT_NPROC).
    #[serde(deserialize_with = "present")]
    pub processes: Option<u64>,
    /// CPU time of each backend process, in seconds (RLIMIT_CPU).
    #[serde(deserialize_with = "present")]
    pub cpu_seconds: Option<u64>,
    /// Open descriptors of each backend process (RLIMIT_NOFILE).
    #[serde(deserialize_with = "present")]
    pub open_files: Option<u64>,
}

/// A member that must be there, if only as `null` (serde would otherwise
/// take a missing `Option` for `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<u64>::deserialize(d)
}

impl Limits {
    pub fn any(&self) -> bool {
        *self != Limits::default()
    }

    /// The limits a new backend gets, capped at the host's own hard limits
    /// (which an unprivileged process cannot raise). Worked out before
    /// `fork`, so that applying them allocates nothing.
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::default();
        let wanted = [
            ("memory_mb", libc::RLIMIT_AS, self.memory_mb.map(|mb| (mb.saturating_mul(MIB), mb.saturating_mul(MIB)))),
            ("processes", libc::RLIMIT_NPROC, self.processes.map(|n| (n, n))),
            ("cpu_seconds", libc::RLIMIT_CPU, self.cpu_seconds.map(|s| (s, s.saturating_add(CPU_GRACE_SECONDS)))),
            ("open_files", libc::RLIMIT_NOFILE, self.open_files.map(|n| (n, n))),
        ];
        for (slot, (field, resource, limit)) in plan.settings.iter_mut().zip(wanted) {
            let Some((soft, hard)) = limit else { continue };
            let ceiling = own_hard_limit(resource);
            if hard > ceiling {
                warn_once(field, || {
                    format!(
                        "limits.{field} asks for more than the host's own hard limit ({ceiling} {}): backends get that",
                        unit(resource)
                    )
                });
            }
            let (soft, hard) = (soft.min(ceiling), hard.min(ceiling));
            *slot = Some((resource, libc::rlimit { rlim_cur: soft, rlim_max: hard }));
        }
        plan
    }
}

/// How the limits read in a log line: `memory_mb 64, cpu_seconds 2`.
impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = [
            ("memory_mb", self.memory_mb),
            ("processes", self.processes),
            ("cpu_seconds", self.cpu_seconds),
            ("open_files", self.open_files),
        ];
        let mut first = true;
        for (name, value) in set {
            let Some(value) = value else { continue };
            write!(f, "{}{name} {value}", if first { "" } else { ", " })?;
            first = false;
        }
        Ok(())
    }
}

/// The rlimits to set in a new backend.
#[derive(Clone, Copy, Default)]
pub struct Plan {
    settings: [Option<(libc::__rlimit_resource_t, libc::rlimit)>; 4],
}

impl Plan {
    /// Sets the limits in the calling process. Async-signal-safe: for
    /// `pre_exec`, between `fork` and `exec`.
    pub fn apply(&self) -> io::Result<()> {
        for (resource, limit) in self.settings.iter().flatten() {
            // SAFETY: setrlimit reads the struct we pass.
            if unsafe { libc::setrlimit(*resource, limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn unit(resource: libc::__rlimit_resource_t) -> &'static str {
    match resource {
        libc::RLIMIT_AS => "bytes",
        libc::RLIMIT_CPU => "seconds",
        _ => "",
    }
}

/// This process's hard limit of `resource` (infinity if it cannot be read).
fn own_hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        match libc::getrlimit(resource, &mut limit) {
            0 => limit.rlim_max,
            _ => libc::RLIM_INFINITY,
        }
    }
}

thread_local! {
    static WARNED: RefCell<HashSet<&'static str>> = RefCell::default();
}

/// A route's limit the host cannot grant is said once per host, not once
/// per session.
fn warn_once(field: &'static str, message: impl FnOnce() -> String) {
    if WARNED.with(|warned| warned.borrow_mut().insert(field)) {
        log!(Warn, "{}", message());
    }
}

/// For the log line of a backend that ended its session: the limits it ran
/// under, which may be why (a failed allocation or `fork` usually ends a
/// program, and only the program knows).
pub fn limits_note(spec: &SpawnSpec) -> String {
    match spec.limits.any() {
        true => format!("; it ran under limits: {}", spec.limits),
        false => String::new(),
    }
}

/// Whether process `pid`, a zombie killed by SIGKILL that is not reaped
/// yet, used up its CPU time: then the kernel's hard CPU limit killed it
/// (it ignored or handled SIGXCPU). Its own CPU time, not its children's,
/// is what the kernel counts, so that is what is compared, with the soft
/// limit, which the kernel moves up to the hard one a second at a time as
/// it sends SIGXCPU. `/proc` shows CPU time in ticks scaled from the
/// scheduler's count, a little short of it: half a second of slack.
pub fn cpu_limit_reached(pid: i32) -> bool {
    // SAFETY: prlimit with a null new limit only reads; sysconf cannot fail
    // for _SC_CLK_TCK.
    let (soft, ticks_per_second) = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::prlimit(pid, libc::RLIMIT_CPU, std::ptr::null(), &mut limit) != 0 {
            return false;
        }
        (limit.rlim_cur, libc::sysconf(libc::_SC_CLK_TCK))
    };
    if soft == libc::RLIM_INFINITY || ticks_per_second <= 0 {
        return false;
    }
    let ticks_per_second = ticks_per_second as u64;
    let used = mcp_bridge_core::procfs::stat(pid).map(|s| s.cpu_ticks).unwrap_or(0);
    used + ticks_per_second / 2 >= soft.saturating_mul(ticks_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Limits, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn every_member_is_required_and_null_means_unset() {
        let none = parse(r#"{"memory_mb":null,"processes":null,"cpu_seconds":null,"open_files":null}"#).expect("nulls");
        assert!(!none.any());
        let some = parse(r#"{"memory_mb":64,"processes":null,"cpu_seconds":2,"open_files":null}"#).expect("some");
        assert_eq!((some.memory_mb, some.cpu_seconds, some.processes), (Some(64), Some(2), None));
        assert_eq!(some.to_string(), "memory_mb 64, cpu_seconds 2");
        let missing = parse(r#"{"memory_mb":64}"#).expect_err("missing members");
        assert!(missing.to_string().contains("missing field"), "{missing}");
        let unknown = parse(r#"{"memory_mb":1,"processes":1,"cpu_seconds":1,"open_files":1,"stack_mb":1}"#);
        assert!(unknown.expect_err("unknown").to_string().contains("unknown field"));
        assert!(parse(r#"{"memory_mb":-1,"processes":null,"cpu_seconds":null,"open_files":null}"#).is_err());
    }

    #[test]
    fn the_plan_sets_what_is_asked_capped_at_the_hosts_hard_limits() {
        let asked = Limits { memory_mb: Some(64), processes: None, cpu_seconds: Some(3), open_files: Some(u64::MAX) };
        let plan = asked.plan();
        let set: Vec<_> = plan.settings.iter().flatten().map(|(r, l)| (*r, l.rlim_cur, l.rlim_max)).collect();
        let files_ceiling = own_hard_limit(libc::RLIMIT_NOFILE);
        let cpu = (3.min(own_hard_limit(libc::RLIMIT_CPU)), 4.min(own_hard_limit(libc::RLIMIT_CPU)));
        assert_eq!(
            set,
            [
                (libc::RLIMIT_AS, 64 * MIB, 64 * MIB),
                (libc::RLIMIT_CPU, cpu.0, cpu.1),
                (libc::RLIMIT_NOFILE, files_ceiling, files_ceiling),
            ]
        );
        assert!(Limits::default().plan().settings.iter().all(Option::is_none));
    }

    #[test]
    fn a_running_process_has_not_used_up_its_cpu() {
        assert!(!cpu_limit_reached(std::process::id() as i32), "no CPU limit here");
        assert!(!cpu_limit_reached(i32::MAX), "no such process");
    }
}
