//! Files inside a running container, looked at from the host without running anything in it:
//! a path is resolved under the container's root (`/proc/<pid>/root` of its init) with
//! `openat2` and `RESOLVE_IN_ROOT`, so an absolute symlink such as `/bin/sh -> /bin/busybox`
//! resolves inside the container, and neither `..` nor a symlink can lead out of it. The file
//! is opened once (`O_PATH`) and what is asked is read from that handle.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// How often a resolution is tried again when the kernel says a rename raced it (`EAGAIN`).
const RETRIES: usize = 4;

/// Why a path inside a container could not be looked at.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The container's root is gone: its process ended.
    #[error("the root of process {pid} is gone")]
    Gone { pid: u32 },
    #[error("cannot resolve `{path}` under {}", root.display())]
    Resolve { root: PathBuf, path: String, source: std::io::Error },
}

/// The root directory of process `pid` (a container's init), opened.
fn open_root(pid: u32) -> Result<OwnedFd, RootError> {
    let path = PathBuf::from(format!("/proc/{pid}/root"));
    match nix::fcntl::open(&path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT | Errno::ESRCH) => Err(RootError::Gone { pid }),
        Err(e) => Err(RootError::Resolve { root: path, path: "/".to_owned(), source: e.into() }),
    }
}

/// Whether `path` is an executable regular file inside the root `root` (an open directory
/// that stands for `/`), symlinks resolved within it. A path that does not resolve is false.
fn executable_under(root: &OwnedFd, root_name: &Path, path: &str) -> Result<bool, RootError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    let fd = loop {
        match nix::fcntl::openat2(root, path, how) {
            Ok(fd) => break fd,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EACCES) => return Ok(false),
            Err(Errno::EAGAIN) if tries < RETRIES => tries += 1,
            Err(e) => {
                return Err(RootError::Resolve { root: root_name.to_owned(), path: path.to_owned(), source: e.into() });
            }
        }
    };
    let metadata = std::fs::File::from(fd).metadata().map_err(|source| RootError::Resolve {
        root: root_name.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    Ok(metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Whether `path` is an executable regular file inside the container whose init is `pid`.
pub fn executable(pid: u32, path: &str) -> Result<bool, RootError> {
    let root = open_root(pid)?;
    executable_under(&root, Path::new(&format!("/proc/{pid}/root")), path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// Absolute and relative symlinks resolve inside the root; nothing outside it is seen.
    #[test]
    fn paths_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("bin/busybox"), b"").unwrap();
        std::fs::set_permissions(root.join("bin/busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("etc/motd"), b"").unwrap();
        symlink("/bin/busybox", root.join("bin/sh")).unwrap();
        symlink("busybox", root.join("bin/ash")).unwrap();
        symlink("/bin", root.join("usrbin")).unwrap();
        // Outside the root this would be the host's shell.
        symlink("../../../../../../../../bin/sh", root.join("bin/escape")).unwrap();
        symlink("/proc/self/exe", root.join("bin/magic")).unwrap();
        let fd = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let check = |path: &str| executable_under(&fd, root, path).unwrap();
        assert!(check("/bin/busybox"));
        assert!(check("/bin/sh"));
        assert!(check("/bin/ash"));
        assert!(check("/usrbin/sh"));
        assert!(check("/../../bin/sh"));
        // `../` from the root stays at the root, where there is still our busybox.
        assert!(check("/bin/escape"));
        std::fs::remove_file(root.join("bin/busybox")).unwrap();
        assert!(!check("/bin/escape"), "the host's /bin/sh was reached");
        assert!(!check("/bin/sh"));
        assert!(!check("/bin/bash"));
        assert!(!check("/etc/motd"), "not executable");
        assert!(!check("/bin"), "not a file");
        assert!(!check("/bin/magic"));
    }

    #[test]
    fn our_own_root_is_seen_through_proc() {
        assert!(executable(std::process::id(), "/bin/sh").unwrap());
        assert!(matches!(executable(u32::MAX - 1, "/bin/sh"), Err(RootError::Gone { .. })));
    }
}
