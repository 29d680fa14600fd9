//! Starting a backend: no shell, argv as given, a minimal environment, its
//! own process group, a clean signal state and the route's resource limits.

use crate::escapees::MARKER_VAR;
use crate::spec::SpawnSpec;
use mcp_bridge_core::procs;
use nix::unistd::{access, AccessFlags};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tokio::net::unix::pipe;

/// `PATH` of a backend whose configuration sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host-wide facts every backend's environment is built from.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// `HOME` of a backend whose configuration sets none: a directory the
    /// worker's user can write to (npx fails without one, and `nobody`'s
    /// home usually does not exist).
    pub home: PathBuf,
    /// The host's own directory, where private session homes are made.
    pub dir: PathBuf,
    /// The soft descriptor limit the host started with, which backends get
    /// back (the host raises its own).
    pub descriptor_limit: Option<u64>,
}

/// Why a backend could not be started: a short reason for the client, and
/// the details (paths, the user, what to check) for the log.
#[derive(Debug)]
pub struct SpawnError {
    pub reason: &'static str,
    pub detail: String,
}

impl SpawnError {
    fn new(reason: &'static str, detail: String) -> SpawnError {
        SpawnError { reason, detail }
    }
}

/// Who backends run as, for messages about what that user may reach.
fn running_as() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("user {} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// A started backend. Its exit is reported by the reaper.
pub struct Backend {
    pub pid: i32,
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// The environment a backend gets: `PATH`, `HOME` and `LANG` defaults,
/// overridden or extended by the configuration, and the session's marker
/// (see `escapees`), which the configuration cannot override. A private
/// session `home` overrides `HOME` and sets `TMPDIR` (`<home>/tmp`).
pub fn environment(
    spec: &SpawnSpec,
    defaults: &Defaults,
    marker: &str,
    home: Option<&Path>,
) -> BTreeMap<String, OsString> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), OsString::from(DEFAULT_PATH));
    env.insert("HOME".to_string(), defaults.home.clone().into_os_string());
    env.insert("LANG".to_string(), OsString::from("C.UTF-8"));
    for (k, v) in &spec.env {
        env.insert(k.clone(), OsString::from(v));
    }
    if let Some(home) = home {
        env.insert("HOME".to_string(), home.as_os_str().to_owned());
        env.insert("TMPDIR".to_string(), home.join("tmp").into_os_string());
    }
    env.insert(MARKER_VAR.to_string(), OsString::from(marker));
    env
}

/// Finds `command` the way a shell would, in the backend's own `PATH`, so a
/// missing program is reported by name instead of as a failed `exec`.
pub fn resolve(command: &str, path_var: &str) -> Result<PathBuf, SpawnError> {
    let cannot_run = |detail: String| {
        SpawnError::new(
            "the MCP server's command cannot be run",
            format!("{detail}; backends run as {}, which must be able to reach and execute it", running_as()),
        )
    };
    if command.contains('/') {
        let path = Path::new(command);
        return match access(path, AccessFlags::X_OK) {
            Ok(()) if path.is_file() => Ok(path.to_path_buf()),
            Ok(()) => Err(cannot_run(format!("command \"{command}\" is not a file"))),
            Err(nix::errno::Errno::ENOENT) => Err(SpawnError::new(
                "the MCP server's command was not found",
                format!("command \"{command}\" does not exist (as seen by {})", running_as()),
            )),
            Err(e) => Err(cannot_run(format!("command \"{command}\": {}", e.desc()))),
        };
    }
    let mut denied = None;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(command);
        match access(&candidate, AccessFlags::X_OK) {
            Ok(()) if candidate.is_file() => return Ok(candidate),
            Err(nix::errno::Errno::EACCES) => denied = denied.or(Some(candidate)),
            _ => {}
        }
    }
    if let Some(path) = denied {
        return Err(cannot_run(format!("command \"{command}\" found as {} but permission denied", path.display())));
    }
    Err(SpawnError::new(
        "the MCP server's command was not found",
        format!("command \"{command}\" not found in PATH ({path_var}) of {}", running_as()),
    ))
}

/// Starts the backend described by `spec`, with `home` as its private
/// home if it has one. Must run on the host's main thread (see
/// `procs::die_with_parent`).
pub fn spawn(spec: &SpawnSpec, defaults: &Defaults, marker: &str, home: Option<&Path>) -> Result<Backend, SpawnError> {
    let env = environment(spec, defaults, marker, home);
    let path_var = env.get("PATH").and_then(|p| p.to_str()).unwrap_or(DEFAULT_PATH);
    let program = resolve(&spec.command, path_var)?;
    if let Some(cwd) = &spec.cwd {
        if !Path::new(cwd).is_dir() {
            return Err(SpawnError::new(
                "the MCP server's working directory is missing",
                format!("working directory \"{cwd}\" does not exist or is not reachable by {}", running_as()),
            ));
        }
    }

    let host = std::process::id() as libc::pid_t;
    let mut command = Command::new(&program);
    command
        .arg0(&spec.command)
        .args(&spec.args)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let descriptor_limit = defaults.descriptor_limit;
    let limits = spec.limits.plan();
    // SAFETY: only async-signal-safe system calls in the closure.
    unsafe {
        command.pre_exec(move || {
            procs::reset_signals()?;
            if let Some(soft) = descriptor_limit {
                procs::restore_descriptor_limit(soft)?;
            }
            // After the descriptor limit: the route's open_files wins.
            limits.apply()?;
            procs::cloexec_from(3)?;
            // If the host is killed outright, its backends must not outlive it.
            procs::die_with_parent(libc::SIGKILL, host)
        });
    }
    let mut child = command.spawn().map_err(|e| {
        let reason = match e.kind() {
            io::ErrorKind::PermissionDenied => "the MCP server's command cannot be run",
            _ => "the MCP server could not be started",
        };
        let limits = match spec.limits.any() {
            true => format!(" (it runs under limits: {})", spec.limits),
            false => String::new(),
        };
        SpawnError::new(reason, format!("cannot start \"{}\" as {}: {e}{limits}", spec.command, running_as()))
    })?;
    let pid = child.id() as i32;
    let pipes = (|| -> io::Result<Backend> {
        let stdin = child.stdin.take().ok_or_else(|| io::Error::other("stdin pipe missing"))?;
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("stdout pipe missing"))?;
        let stderr = child.stderr.take().ok_or_else(|| io::Error::other("stderr pipe missing"))?;
        Ok(Backend {
            pid,
            stdin: pipe::Sender::from_owned_fd(OwnedFd::from(stdin))?,
            stdout: pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))?,
            stderr: pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))?,
        })
    })();
    pipes.map_err(|e| {
        let _ = procs::signal_group(pid, libc::SIGKILL);
        SpawnError::new(
            "the MCP server could not be started",
            format!("cannot set up pipes of \"{}\": {e}", spec.command),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_finds_programs_on_the_given_path_only_and_explains_failures() {
        assert_eq!(resolve("sh", "/nonexistent:/bin").expect("sh"), PathBuf::from("/bin/sh"));
        let err = resolve("no-such-program-xyz", "/bin:/usr/bin").unwrap_err();
        assert_eq!(err.reason, "the MCP server's command was not found");
        assert!(err.detail.contains("not found in PATH (/bin:/usr/bin) of "), "{}", err.detail);
        assert!(err.detail.contains("uid "), "the log names the user: {}", err.detail);
        assert!(resolve("/bin/sh", "").is_ok());
        let err = resolve("/etc/passwd", "").unwrap_err();
        assert_eq!(err.reason, "the MCP server's command cannot be run");
        assert!(err.detail.contains("/etc/passwd") && err.detail.contains("backends run as"), "{}", err.detail);
        assert!(!err.reason.contains('/'), "no path reaches the client");
        assert_eq!(resolve("/nonexistent/x", "").unwrap_err().reason, "the MCP server's command was not found");
        assert!(resolve("/", "").is_err());
    }

    #[test]
    fn environment_is_minimal_and_configuration_wins() {
        let mut spec = SpawnSpec::for_tests();
        spec.env = [("LANG", "en_US.UTF-8"), ("TOKEN", "t"), ("MCP_BRIDGE_SESSION", "forged")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let defaults = Defaults { home: PathBuf::from("/h"), dir: PathBuf::from("/d"), descriptor_limit: None };
        let env = environment(&spec, &defaults, "1-2.3", None);
        let keys: Vec<_> = env.keys().cloned().collect();
        assert_eq!(keys, ["HOME", "LANG", "MCP_BRIDGE_SESSION", "PATH", "TOKEN"]);
        assert_eq!(env["MCP_BRIDGE_SESSION"], "1-2.3");
        assert_eq!(env["LANG"], "en_US.UTF-8");
        assert_eq!(env["HOME"], "/h");
        let env = environment(&spec, &defaults, "1-2.3", Some(Path::new("/d/session-1")));
        assert_eq!(env["HOME"], "/d/session-1");
        assert_eq!(env["TMPDIR"], "/d/session-1/tmp");
    }
}
