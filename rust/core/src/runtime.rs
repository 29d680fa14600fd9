//! Where hosts keep their files, and the checks that make those places safe
//! on a machine shared with other users.
//!
//! Every host gets a directory of its own, `<base>/mcp-bridge-<uid>.<token>`,
//! created with a fresh random token (mode 0700), holding its socket
//! `host.sock` (mode 0600). `<base>` is the configured `runtime_dir` or the
//! system's temporary directory. Nobody can prepare such a directory in
//! advance (the token is drawn when the host starts, and a name already
//! taken is skipped), and the directory is trusted only while it is a real
//! directory owned by the host's user with no permission for anyone else.
//! A session id starts with its host's token, so any worker finds the socket
//! of any session without shared state.

use crate::random;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Length in hex digits of a host token (64 random bits).
pub const TOKEN_LEN: usize = 16;

/// File name of a host's socket inside its directory.
pub const SOCKET_NAME: &str = "host.sock";

/// File in a host's directory naming the nginx it serves: the identity
/// (see `procfs::identity`) of its worker's parent, the master.
pub const NGINX_NAME: &str = "nginx";

/// Room for a socket path in `sockaddr_un`, its terminating NUL excluded.
const MAX_SOCKET_PATH: usize = 107;

/// How many fresh names to try when the random one is taken.
const CREATE_ATTEMPTS: usize = 16;

/// Whether `s` has the shape of a host token.
pub fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The runtime directories of one user under one base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    base: PathBuf,
    uid: u32,
}

impl Layout {
    /// Hosts of the current effective user under `base`, or under the
    /// system's temporary directory.
    pub fn new(base: Option<PathBuf>) -> Layout {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        Layout { base: base.unwrap_or_else(std::env::temp_dir), uid }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    fn prefix(&self) -> String {
        format!("mcp-bridge-{}.", self.uid)
    }

    /// The directory of the host with `token`.
    pub fn host_dir(&self, token: &str) -> PathBuf {
        self.base.join(format!("{}{token}", self.prefix()))
    }

    /// The socket of the host with `token`.
    pub fn socket_path(&self, token: &str) -> PathBuf {
        self.host_dir(token).join(SOCKET_NAME)
    }

    /// The socket of the host with `token`, if its directory can be
    /// trusted; `None` for anything else, a malformed token included.
    pub fn trusted_socket(&self, token: &str) -> Option<PathBuf> {
        if !is_token(token) {
            return None;
        }
        let dir = self.host_dir(token);
        check_private_dir(&dir, self.uid).ok()?;
        let socket = dir.join(SOCKET_NAME);
        let meta = fs::symlink_metadata(&socket).ok()?;
        use std::os::unix::fs::FileTypeExt;
        (meta.file_type().is_socket() && meta.uid() == self.uid).then_some(socket)
    }

    /// The identity of the nginx master the host with `token` serves, as
    /// its directory says.
    pub fn host_nginx(&self, token: &str) -> Option<String> {
        std::fs::read_to_string(self.host_dir(token).join(NGINX_NAME)).ok().map(|s| s.trim().to_string())
    }

    /// Backends' shared default `HOME`, `<base>/mcp-bridge-<uid>-home`,
    /// created if missing. `None` when it cannot be made or trusted (for
    /// instance another user created it first).
    pub fn shared_home(&self) -> Option<PathBuf> {
        let home = self.base.join(format!("mcp-bridge-{}-home", self.uid));
        match fs::DirBuilder::new().mode(0o700).create(&home) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        check_private_dir(&home, self.uid).ok().map(|()| home)
    }

    /// Creates the directory of a new host under a temporary name, so a
    /// host sweeping stale directories never sees one half set up. Returns
    /// the token and that directory; [`Layout::publish`] moves it into place.
    pub fn create_host_dir(&self) -> io::Result<(String, PathBuf)> {
        // The socket is bound in the staging directory, whose name is longer.
        let probe = self.base.join(format!(".{}{}.new", self.prefix(), "0".repeat(TOKEN_LEN))).join(SOCKET_NAME);
        if probe.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "runtime directory {} is too long for a socket path ({})",
                    self.base.display(),
                    probe.display()
                ),
            ));
        }
        match fs::DirBuilder::new().mode(0o755).create(&self.base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(context(e, &format!("cannot create runtime directory {}", self.base.display()))),
        }
        let mut last = None;
        for _ in 0..CREATE_ATTEMPTS {
            let token = random::hex(TOKEN_LEN / 2)?;
            let staging = self.base.join(format!(".{}{token}.new", self.prefix()));
            match fs::DirBuilder::new().mode(0o700).create(&staging) {
                Ok(()) => {
                    // The mode asked for is filtered by the umask: set it exactly.
                    set_mode(&staging, 0o700)?;
                    return Ok((token, staging));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(context(e, &format!("cannot create a host directory in {}", self.base.display())))
                }
            }
        }
        Err(context(last.unwrap_or_else(|| io::Error::other("no name")), "every host directory name tried was taken"))
    }

    /// Moves a directory made by [`Layout::create_host_dir`] into place.
    pub fn publish(&self, staging: &Path, token: &str) -> io::Result<PathBuf> {
        let dir = self.host_dir(token);
        fs::rename(staging, &dir).map_err(|e| context(e, &format!("cannot rename {}", staging.display())))?;
        Ok(dir)
    }

    /// Tokens of every host directory of this user under the base, live or
    /// not (staging directories excluded).
    pub fn host_tokens(&self) -> Vec<String> {
        let prefix = self.prefix();
        let Ok(entries) = fs::read_dir(&self.base) else { return Vec::new() };
        let mut tokens: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(&prefix)).map(str::to_owned))
            .filter(|t| is_token(t))
            .collect();
        tokens.sort();
        tokens
    }

    /// Staging directories of this user (a host being set up, or one whose
    /// worker died during the set-up), as full paths.
    pub fn staging_dirs(&self) -> Vec<PathBuf> {
        let prefix = format!(".{}", self.prefix());
        let Ok(entries) = fs::read_dir(&self.base) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".new")))
            .map(|e| e.path())
            .collect()
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }
}

/// Checks that `dir` is a real directory (not a symbolic link) owned by
/// `uid` that nobody else may read, write or enter.
pub fn check_private_dir(dir: &Path, uid: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir).map_err(|e| context(e, &format!("cannot stat {}", dir.display())))?;
    let problem = if !meta.file_type().is_dir() {
        Some("is not a directory")
    } else if meta.uid() != uid {
        Some("is owned by another user")
    } else if meta.mode() & 0o077 != 0 {
        Some("is open to other users (it must have mode 0700)")
    } else {
        None
    };
    match problem {
        Some(p) => Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{} {p}", dir.display()))),
        None => Ok(()),
    }
}

/// Sets the permission bits of `path` exactly (no umask).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| context(e, &format!("cannot chmod {}", path.display())))
}

fn context(err: io::Error, what: &str) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mcp-bridge-runtime-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn tokens_are_sixteen_lowercase_hex_digits() {
        assert!(is_token("0123456789abcdef"));
        assert!(!is_token("0123456789ABCDEF"));
        assert!(!is_token("0123456789abcde"));
        assert!(!is_token("../../etc/passwd"));
    }

    #[test]
    fn a_host_directory_is_private_unpredictable_and_found_by_token() {
        let base = scratch("create");
        let layout = Layout::new(Some(base.clone()));
        let (token, staging) = layout.create_host_dir().expect("create");
        assert!(is_token(&token));
        assert_eq!(fs::metadata(&staging).expect("stat").permissions().mode() & 0o777, 0o700);
        assert!(layout.host_tokens().is_empty(), "a staging directory is not a host yet");
        assert_eq!(layout.staging_dirs(), vec![staging.clone()]);
        let dir = layout.publish(&staging, &token).expect("publish");
        assert_eq!(dir, layout.host_dir(&token));
        assert_eq!(layout.host_tokens(), vec![token.clone()]);
        assert_eq!(layout.trusted_socket(&token), None, "no socket yet");
        let (other, _) = layout.create_host_dir().expect("second");
        assert_ne!(token, other, "every host draws its own token");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn directories_that_are_not_private_are_not_trusted() {
        let base = scratch("trust");
        let layout = Layout::new(Some(base.clone()));
        fs::create_dir_all(&base).expect("base");
        let token = "00112233445566aa";
        let dir = layout.host_dir(token);
        fs::create_dir(&dir).expect("dir");
        let listener = std::os::unix::net::UnixListener::bind(dir.join(SOCKET_NAME)).expect("bind");
        set_mode(&dir, 0o700).expect("chmod");
        assert_eq!(layout.trusted_socket(token), Some(dir.join(SOCKET_NAME)));
        set_mode(&dir, 0o755).expect("chmod");
        assert_eq!(layout.trusted_socket(token), None, "a 0755 directory is refused");
        let err = check_private_dir(&dir, layout.uid()).expect_err("0755");
        assert!(err.to_string().contains("mode 0700"), "{err}");
        set_mode(&dir, 0o700).expect("chmod");
        let err = check_private_dir(&dir, layout.uid() + 1).expect_err("other owner");
        assert!(err.to_string().contains("owned by another user"), "{err}");
        // A symbolic link to a private directory is not a private directory.
        let link = layout.host_dir("00112233445566bb");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        assert_eq!(layout.trusted_socket("00112233445566bb"), None);
        assert_eq!(layout.trusted_socket("../../etc/passw"), None);
        drop(listener);
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_base_too_deep_for_a_socket_path_is_refused_with_its_name() {
        let base = PathBuf::from(format!("/tmp/{}", "d".repeat(90)));
        let err = Layout::new(Some(base)).create_host_dir().expect_err("too long");
        assert!(err.to_string().contains("too long for a socket path"), "{err}");
        // At the boundary: the staging socket path, the longest one bound,
        // fits exactly with a base of `fits` bytes.
        let uid = Layout::new(None).uid();
        let tail = format!("/.mcp-bridge-{uid}.{}.new/{SOCKET_NAME}", "0".repeat(TOKEN_LEN)).len();
        let fits = MAX_SOCKET_PATH - tail;
        let base = |n: usize| PathBuf::from(format!("/tmp/{}", "e".repeat(n - 5)));
        let (_, staging) = Layout::new(Some(base(fits))).create_host_dir().expect("a base that fits");
        std::os::unix::net::UnixListener::bind(staging.join(SOCKET_NAME)).expect("its socket binds");
        assert!(Layout::new(Some(base(fits + 1))).create_host_dir().is_err(), "one byte more does not fit");
        let _ = fs::remove_dir_all(base(fits));
    }

    #[test]
    fn the_shared_home_is_used_only_when_it_is_ours_and_private() {
        let base = scratch("home");
        fs::create_dir_all(&base).expect("base");
        let layout = Layout::new(Some(base.clone()));
        let home = layout.shared_home().expect("created");
        assert_eq!(fs::metadata(&home).expect("stat").permissions().mode() & 0o777, 0o700);
        set_mode(&home, 0o777).expect("chmod");
        assert_eq!(layout.shared_home(), None, "a home others can write is refused");
        let _ = fs::remove_dir_all(&base);
    }
}
