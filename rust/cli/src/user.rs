//! Who the backends run as. nginx started by root runs its workers, and so
//! their hosts and every backend, as the user of its `user` directive
//! (`nobody` when there is none); started by anyone else, as that user.
//! `serve` makes that choice explicit: `--user`, by default the user
//! running it.

use nix::unistd::{Gid, Group, Uid, User};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The user the workers and backends run as.
#[derive(Debug, Clone)]
pub struct RunAs {
    /// None: the uid has no name (possible only when it is ours and we
    /// are not root, so no `user` directive needs it).
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// nginx's `user` directive: only when `serve` runs as root, since
    /// nginx ignores it (with a warning) otherwise.
    pub directive: Option<String>,
}

impl RunAs {
    /// `root (uid 0)`, or `uid 1234` for a user without a name.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }

    /// Whether the workers run as someone other than `serve` itself.
    pub fn is_other_user(&self) -> bool {
        self.uid != Uid::effective().as_raw()
    }
}

/// An nginx configuration string (quoted: user names may hold anything
/// but `:` and a newline).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn lookup(name: &str) -> Result<User, String> {
    let found = match User::from_name(name) {
        Ok(Some(u)) => Some(u),
        Ok(None) | Err(_) => match name.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
            Err(_) => None,
        },
    };
    found.ok_or_else(|| format!("--user {name}: no such user"))
}

/// Resolves `--user` (None: the user running `serve`).
pub fn resolve(requested: Option<&str>) -> Result<RunAs, String> {
    let me = Uid::effective();
    let user = match requested {
        Some(name) => Some(lookup(name)?),
        None => User::from_uid(me).ok().flatten(),
    };
    if !me.is_root() {
        // nginx cannot switch users: its workers run as us.
        if let (Some(name), Some(u)) = (requested, &user) {
            if u.uid != me {
                return Err(format!(
                    "--user {name}: only root can run backends as another user (mcp-bridge serve runs as uid {me})"
                ));
            }
        }
        return Ok(RunAs {
            name: user.map(|u| u.name),
            uid: me.as_raw(),
            gid: Gid::effective().as_raw(),
            directive: None,
        });
    }
    let user = user.ok_or_else(|| format!("cannot look up user {me}: the workers' `user` directive needs a name"))?;
    // nginx's `user NAME` alone takes a group of the same name, which
    // nobody's is not (nogroup): name the user's primary group.
    let group = Group::from_gid(user.gid).ok().flatten().ok_or_else(|| {
        format!(
            "--user {}: its primary group {} has no name, which nginx's `user` directive needs",
            user.name, user.gid
        )
    })?;
    Ok(RunAs {
        directive: Some(format!("user {} {};", quoted(&user.name), quoted(&group.name))),
        name: Some(user.name),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// Access a check asks for (see access(2)).
pub const SEARCH: libc::c_int = libc::X_OK;
pub const WRITE_AND_SEARCH: libc::c_int = libc::W_OK | libc::X_OK;

/// The first of `checks` that `run_as` may not do, asked of the kernel by a
/// child process that becomes that user (so ACLs, groups and every parent
/// directory count). Only root can ask; anyone else only runs workers as
/// itself, which reaches what it was given.
pub fn first_denied(run_as: &RunAs, checks: &[(PathBuf, libc::c_int)]) -> Result<Option<PathBuf>, String> {
    if !Uid::effective().is_root() || !run_as.is_other_user() {
        return Ok(None);
    }
    let name = run_as.name.as_deref().unwrap_or_default();
    let groups: Vec<libc::gid_t> = CString::new(name)
        .ok()
        .and_then(|n| nix::unistd::getgrouplist(&n, Gid::from_raw(run_as.gid)).ok())
        .map(|g| g.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_else(|| vec![run_as.gid]);
    let paths: Vec<CString> = checks
        .iter()
        .map(|(p, _)| CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} holds a NUL byte", p.display())))
        .collect::<Result<_, _>>()?;
    let (uid, gid) = (run_as.uid, run_as.gid);
    // SAFETY: the child makes only system calls (async-signal-safe) on data
    // prepared before the fork, then _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("cannot fork to check access as {name}: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(255);
            }
            for (i, (path, (_, mode))) in paths.iter().zip(checks).enumerate() {
                if libc::access(path.as_ptr(), *mode) != 0 {
                    libc::_exit(i as libc::c_int + 1);
                }
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(format!("cannot check access as {name}: {}", std::io::Error::last_os_error()));
        }
    }
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(None),
        Some(255) | None => Err(format!("cannot become {name} to check what it may access")),
        Some(i) => Ok(checks.get(i as usize - 1).map(|(p, _)| p.clone())),
    }
}

/// The usual reason a user cannot reach `path`: the first directory on
/// the way that it may not enter (for the message).
pub fn blocking_dir(run_as: &RunAs, path: &Path) -> Option<PathBuf> {
    let ancestors: Vec<PathBuf> = path.ancestors().skip(1).map(Path::to_path_buf).collect();
    let checks: Vec<(PathBuf, libc::c_int)> = ancestors.into_iter().rev().map(|p| (p, SEARCH)).collect();
    first_denied(run_as, &checks).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_user_running_serve() {
        let run_as = resolve(None).expect("resolve");
        assert_eq!(run_as.uid, Uid::effective().as_raw());
        assert!(!run_as.is_other_user());
        // The directive only when nginx will switch users, i.e. as root.
        assert_eq!(run_as.directive.is_some(), Uid::effective().is_root());
        assert!(run_as.describe().contains(&format!("uid {}", run_as.uid)));
    }

    #[test]
    fn unknown_users_and_other_users_without_root_are_refused() {
        let err = resolve(Some("no-such-user-mcp-bridge")).expect_err("unknown");
        assert_eq!(err, "--user no-such-user-mcp-bridge: no such user");
        if !Uid::effective().is_root() {
            assert!(resolve(Some("root"))
                .expect_err("not root")
                .contains("only root can run backends as another user"));
        }
    }

    #[test]
    fn as_root_nobody_gets_its_primary_group_named() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let run_as = resolve(Some("nobody")).expect("nobody");
        assert_eq!(run_as.uid, 65534);
        let group = Group::from_gid(Gid::from_raw(run_as.gid)).expect("getgrgid").expect("named").name;
        assert_eq!(run_as.directive.as_deref(), Some(format!("user \"nobody\" \"{group}\";").as_str()));
        assert!(run_as.is_other_user());
        // nobody may enter / but not root's home.
        let denied = first_denied(&run_as, &[("/".into(), SEARCH), ("/root/.".into(), SEARCH)]).expect("check");
        let closed = std::fs::metadata("/root").map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        if closed.is_ok_and(|mode| mode & 0o001 == 0) {
            assert_eq!(denied, Some(PathBuf::from("/root/.")));
            assert_eq!(blocking_dir(&run_as, Path::new("/root/x/y")), Some(PathBuf::from("/root")));
        }
        assert_eq!(first_denied(&run_as, &[("/".into(), SEARCH)]).expect("check"), None);
    }
}
