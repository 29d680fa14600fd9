//! Starting a backend: no shell, argv as given, a minimal environment, its
//! own process group, and a clean signal state.

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
    /// The soft descriptor limit the host started with, which backends get
    /// back (the host raises its own).
    pub descriptor_limit: Option<u64>,
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
/// (see `escapees`), which the configuration cannot override.
pub fn environment(spec: &SpawnSpec, defaults: &Defaults, marker: &str) -> BTreeMap<String, OsString> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), OsString::from(DEFAULT_PATH));
    env.insert("HOME".to_string(), defaults.home.clone().into_os_string());
    env.insert("LANG".to_string(), OsString::from("C.UTF-8"));
    for (k, v) in &spec.env {
        env.insert(k.clone(), OsString::from(v));
    }
    env.insert(MARKER_VAR.to_string(), OsString::from(marker));
    env
}

/// Finds `command` the way a shell would, in the backend's own `PATH`, so a
/// missing program is reported by name instead of as a failed `exec`.
pub fn resolve(command: &str, path_var: &str) -> Result<PathBuf, String> {
    if command.contains('/') {
        let path = Path::new(command);
        return match access(path, AccessFlags::X_OK) {
            Ok(()) if path.is_file() => Ok(path.to_path_buf()),
            Ok(()) => Err(format!("command \"{command}\" is not a file")),
            Err(e) => Err(format!("command \"{command}\": {}", e.desc())),
        };
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(command);
        if candidate.is_file() && access(&candidate, AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
    }
    Err(format!("command \"{command}\" not found in PATH ({path_var})"))
}

/// Starts the backend described by `spec`. Must run on the host's main
/// thread (see `procs::die_with_parent`).
pub fn spawn(spec: &SpawnSpec, defaults: &Defaults, marker: &str) -> Result<Backend, String> {
    let env = environment(spec, defaults, marker);
    let path_var = env.get("PATH").and_then(|p| p.to_str()).unwrap_or(DEFAULT_PATH);
    let program = resolve(&spec.command, path_var)?;
    if let Some(cwd) = &spec.cwd {
        if !Path::new(cwd).is_dir() {
            return Err(format!("working directory \"{cwd}\" does not exist"));
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
    // SAFETY: only async-signal-safe system calls in the closure.
    unsafe {
        command.pre_exec(move || {
            procs::reset_signals()?;
            if let Some(soft) = descriptor_limit {
                procs::restore_descriptor_limit(soft)?;
            }
            procs::cloexec_from(3)?;
            // If the host is killed outright, its backends must not outlive it.
            procs::die_with_parent(libc::SIGKILL, host)
        });
    }
    let mut child = command.spawn().map_err(|e| format!("cannot start \"{}\": {e}", spec.command))?;
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
        format!("cannot set up pipes of \"{}\": {e}", spec.command)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_finds_programs_on_the_given_path_only() {
        assert_eq!(resolve("sh", "/nonexistent:/bin").expect("sh"), PathBuf::from("/bin/sh"));
        let err = resolve("no-such-program-xyz", "/bin:/usr/bin").unwrap_err();
        assert!(err.contains("not found in PATH (/bin:/usr/bin)"), "{err}");
        assert!(resolve("/bin/sh", "").is_ok());
        assert!(resolve("/etc/passwd", "").unwrap_err().contains("/etc/passwd"));
        assert!(resolve("/", "").is_err());
    }

    #[test]
    fn environment_is_minimal_and_configuration_wins() {
        let spec = SpawnSpec::parse(
            br#"{"command":"x","env":{"LANG":"en_US.UTF-8","TOKEN":"t","MCP_BRIDGE_SESSION":"forged"}}"#,
        )
        .expect("spec");
        let env = environment(&spec, &Defaults { home: PathBuf::from("/h"), descriptor_limit: None }, "1-2.3");
        let keys: Vec<_> = env.keys().cloned().collect();
        assert_eq!(keys, ["HOME", "LANG", "MCP_BRIDGE_SESSION", "PATH", "TOKEN"]);
        assert_eq!(env["MCP_BRIDGE_SESSION"], "1-2.3");
        assert_eq!(env["LANG"], "en_US.UTF-8");
        assert_eq!(env["HOME"], "/h");
    }
}
