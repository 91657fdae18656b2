//! Host bind mounts without a symlink race (issue 18 item 1). Docker resolves a bind mount's
//! source path again at every start (create and start are separate calls, and an engine restart
//! starts containers again), so a path checked once could be swapped for a symlink to `/` by a
//! tenant who writes under an allowed directory. Instead, each allowed source is opened here one
//! component at a time with `O_PATH | O_NOFOLLOW` (a symlink anywhere on the way is refused) and
//! the very object opened is bind-mounted onto a staging path under `runtime_dir`, which only
//! root can change; Docker mounts the staging path. The staging mount is `nosuid,nodev` (and
//! read-only when asked), flags a bind of it keeps.
//!
//! Staging paths are `<runtime_dir>/mounts/<container id>/<index>`; they go with their container
//! (teardown) and the reaper removes those whose container is gone. Mounts are made in the mount
//! namespace of PID 1, where the engine looks: under the shipped systemd unit
//! (`ProtectSystem=full`, `PrivateTmp=true`) this process has a namespace of its own, whose
//! mounts the engine would never see. After a host reboot the
//! staging paths no longer exist (`runtime_dir` is normally on tmpfs), so Docker cannot start a
//! container with the old sources: it fails safe instead of following a swapped path.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, openat};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, fstat};

/// Why a host path cannot be staged.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("`{path}`: `{component}` is a symbolic link (the path changed after it was checked?)")]
    Symlink { path: String, component: String },
    #[error("`{path}`: {reason}")]
    Open { path: String, reason: String },
    #[error("staging `{path}` at {staging}: {reason}")]
    Mount { path: String, staging: String, reason: String },
}

/// The staging directory of one executor.
#[derive(Debug, Clone)]
pub struct Staging {
    root: PathBuf,
    /// Where mounts are made: the engine's mount namespace.
    namespace: PathBuf,
}

/// Opens `path` (absolute, canonical) one component at a time without following any symlink;
/// returns the descriptor of the object and whether it is a directory.
fn open_no_follow(path: &Path) -> Result<(OwnedFd, bool), StagingError> {
    let shown = path.display().to_string();
    let fail = |reason: String| StagingError::Open { path: shown.clone(), reason };
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd = nix::fcntl::open("/", flags | OFlag::O_DIRECTORY, Mode::empty()).map_err(|e| fail(e.to_string()))?;
    let mut is_dir = true;
    for component in path.components() {
        let name = match component {
            Component::RootDir => continue,
            Component::Normal(name) => name,
            other => {
                return Err(fail(format!(
                    "`{}` in a path that should be canonical",
                    other.as_os_str().to_string_lossy()
                )));
            }
        };
        if !is_dir {
            return Err(fail("a file in the middle of the path".into()));
        }
        let next = openat(&fd, name, flags, Mode::empty()).map_err(|e| fail(e.to_string()))?;
        let kind = SFlag::from_bits_truncate(fstat(&next).map_err(|e| fail(e.to_string()))?.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            return Err(StagingError::Symlink { path: shown, component: name.to_string_lossy().into_owned() });
        }
        is_dir = kind == SFlag::S_IFDIR;
        fd = next;
    }
    Ok((fd, is_dir))
}

/// The engine's mount namespace: PID 1's (dockerd is started by the init system).
pub(crate) const ENGINE_NAMESPACE: &str = "/proc/1/ns/mnt";

/// Runs `f` in the mount namespace `target` names: on a thread of its own that leaves this
/// process's namespace alone, or on this thread when it is already there. A target that cannot be
/// read (a sandbox hiding PID 1) leaves `f` in this thread's namespace, with a warning.
pub(crate) fn in_mount_namespace<T: Send>(target: &Path, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let ours = std::fs::read_link("/proc/thread-self/ns/mnt").map_err(|e| format!("/proc/thread-self/ns/mnt: {e}"))?;
    let theirs = match std::fs::read_link(target) {
        Ok(theirs) => theirs,
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(target = %target.display(), error = %e, "cannot see the engine's mount namespace; staging mounts are made in this process's");
            });
            return Ok(f());
        }
    };
    if ours == theirs {
        return Ok(f());
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            use nix::sched::{CloneFlags, setns, unshare};
            // A thread may change its mount namespace only once it shares no filesystem state.
            unshare(CloneFlags::CLONE_FS).map_err(|e| format!("unshare(CLONE_FS): {e}"))?;
            let ns = std::fs::File::open(target).map_err(|e| format!("{}: {e}", target.display()))?;
            setns(&ns, CloneFlags::CLONE_NEWNS).map_err(|e| format!("entering the engine's mount namespace: {e}"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

impl Staging {
    /// The staging root under `runtime_dir` (created 0700 when first used).
    pub fn new(runtime_dir: &Path) -> Self {
        Self { root: runtime_dir.join("mounts"), namespace: PathBuf::from(ENGINE_NAMESPACE) }
    }

    fn dir_of(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Bind-mounts the object at `source` (checked against the allow-list by the caller) onto
    /// the staging path of mount `index` of container `id`, and returns that path.
    pub fn stage(&self, id: &str, index: usize, source: &Path, read_only: bool) -> Result<PathBuf, StagingError> {
        let staging = self.dir_of(id).join(index.to_string());
        let fail = |reason: String| StagingError::Mount {
            path: source.display().to_string(),
            staging: staging.display().to_string(),
            reason,
        };
        in_mount_namespace(&self.namespace, || self.stage_here(id, source, &staging, read_only)).map_err(fail)??;
        Ok(staging)
    }

    /// [`Staging::stage`] in the current mount namespace.
    fn stage_here(&self, id: &str, source: &Path, staging: &Path, read_only: bool) -> Result<(), StagingError> {
        let (fd, is_dir) = open_no_follow(source)?;
        let fail = |reason: String| StagingError::Mount {
            path: source.display().to_string(),
            staging: staging.display().to_string(),
            reason,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.dir_of(id))
            .map_err(|e| fail(e.to_string()))?;
        if is_dir {
            std::fs::DirBuilder::new().mode(0o700).create(staging).map_err(|e| fail(e.to_string()))?;
        } else {
            std::fs::OpenOptions::new().write(true).create_new(true).open(staging).map_err(|e| fail(e.to_string()))?;
        }
        // The descriptor's /proc entry names the object itself, whatever its path is now.
        let object = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(Some(object.as_str()), staging, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| fail(format!("bind: {e}")))?;
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        if let Err(e) = mount(None::<&str>, staging, None::<&str>, flags, None::<&str>) {
            let _ = umount2(staging, MntFlags::MNT_DETACH);
            return Err(fail(format!("remount nosuid,nodev: {e}")));
        }
        Ok(())
    }

    /// Unmounts and removes every staging path of container `id`; what cannot go is logged and
    /// left to the reaper.
    pub fn release(&self, id: &str) {
        if let Err(e) = in_mount_namespace(&self.namespace, || self.release_here(id)) {
            tracing::warn!(id, error = %e, "cannot release a container's staged mounts");
        }
    }

    fn release_here(&self, id: &str) {
        let dir = self.dir_of(id);
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            // Not mounted (a failed stage) is fine: EINVAL.
            let _ = umount2(&path, MntFlags::MNT_DETACH);
            let removed = if path.is_dir() { std::fs::remove_dir(&path) } else { std::fs::remove_file(&path) };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a staging path");
            }
        }
        if let Err(e) = std::fs::remove_dir(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a container's staging directory");
        }
    }

    /// Releases the staging paths of containers not in `live` that are older than `grace` (a
    /// container being created right now has its staging before Docker lists it); returns their
    /// ids.
    pub fn release_orphans(&self, live: &HashSet<String>, grace: std::time::Duration) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let old_enough = |e: &std::fs::DirEntry| {
            e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() >= grace)
        };
        let orphans: Vec<String> = entries
            .flatten()
            .filter(old_enough)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|id| crate::labels::is_container_id(id) && !live.contains(id))
            .collect();
        for id in &orphans {
            self.release(id);
        }
        orphans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_anywhere_on_the_path_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(real.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/", real.join("a/link")).unwrap();
        std::os::unix::fs::symlink(real.join("a"), real.join("hop")).unwrap();
        assert!(open_no_follow(&real.join("a/b")).unwrap().1);
        for bad in ["a/link", "hop/b"] {
            let err = open_no_follow(&real.join(bad)).unwrap_err().to_string();
            assert!(err.contains("is a symbolic link"), "{bad}: {err}");
        }
        std::fs::write(real.join("a/file"), b"x").unwrap();
        assert!(!open_no_follow(&real.join("a/file")).unwrap().1);
        assert!(open_no_follow(&real.join("a/file/x")).is_err());
        assert!(open_no_follow(&real.join("missing")).is_err());
    }

    /// A temporary directory (canonical) with `shared/mine` in it, or None with a printed reason
    /// where bind mounts cannot be made (not root).
    fn shared_dir() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: namespaces and bind mounts need root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        let shared = real.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("mine"), b"data").unwrap();
        Some((dir, real, shared))
    }

    /// The object opened is what is mounted: swapping the path for a symlink to `/` afterwards
    /// changes nothing at the staging path.
    #[test]
    fn the_staged_object_survives_a_swap_of_its_path() {
        let Some((_dir, real, shared)) = shared_dir() else { return };
        let staging = Staging::new(&real.join("run"));
        let id = "c-0123456789ab";
        let staged = staging.stage(id, 0, &shared, false).unwrap();
        std::fs::rename(&shared, real.join("moved")).unwrap();
        std::os::unix::fs::symlink("/", &shared).unwrap();
        assert_eq!(std::fs::read(staged.join("mine")).unwrap(), b"data");
        assert!(!staged.join("etc").exists(), "the staging path followed the swap");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mounts.lines().find(|l| l.contains(&staged.display().to_string())).unwrap();
        assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
        staging.release(id);
        assert!(!staged.exists());
        assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&staged.display().to_string()));
        // Orphans: a staging directory whose container is gone.
        staging.stage("c-00000000000a", 0, &real.join("moved"), true).unwrap();
        let young = std::time::Duration::from_secs(60);
        assert!(staging.release_orphans(&HashSet::new(), young).is_empty(), "a staging being created is left");
        let live = HashSet::from(["c-00000000000a".to_owned()]);
        assert!(staging.release_orphans(&live, std::time::Duration::ZERO).is_empty());
        assert_eq!(
            staging.release_orphans(&HashSet::new(), std::time::Duration::ZERO),
            vec!["c-00000000000a".to_owned()]
        );
    }

    /// Under the systemd unit this process has a mount namespace of its own: the staging mount
    /// is still made where the engine sees it. Here a thread with a private namespace plays the
    /// service and the test's main thread plays the engine.
    #[test]
    fn mounts_are_made_where_the_engine_sees_them() {
        let Some((_dir, real, shared)) = shared_dir() else { return };
        let mut staging = Staging::new(&real.join("run"));
        // The thread group leader's namespace: this test's main thread.
        staging.namespace = PathBuf::from("/proc/self/ns/mnt");
        let id = "c-0000000000ff";
        let staged = std::thread::scope(|s| {
            s.spawn(|| {
                use nix::sched::{CloneFlags, unshare};
                unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).unwrap();
                mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
                staging.stage(id, 0, &shared, true).unwrap()
            })
            .join()
            .unwrap()
        });
        // This thread shares PID 1's namespace (as the engine does): the mount is here.
        let mounts = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert!(mounts.contains(&staged.display().to_string()), "the staging mount stayed in a private namespace");
        assert_eq!(std::fs::read(staged.join("mine")).unwrap(), b"data");
        staging.release(id);
        assert!(!staged.exists());
    }
}
