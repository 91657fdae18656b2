//! What the executor says of a container after its create, kept in a file per container because
//! Docker labels cannot change after create: why it stopped it (GPU memory over its limit,
//! ...) in `data_dir/stop-reasons/<id>`, and when it expires once `UpdateContainer` changed its
//! TTL in `data_dir/expiry/<id>`, so `get`, `list` and the reaper have them across restarts of
//! the service; and what the executor last meant for it in `data_dir/intent/<id>` (see
//! [`Intent`]), so a node that starts after a reboot knows which rentals to run again. Each is
//! written atomically (`common::durable::write_atomically`) and removed with the container (the
//! reaper forgets the files of containers that are gone).

use std::path::{Path, PathBuf};

use crate::labels::is_container_id;

/// A store: one short text per container.
#[derive(Debug, Clone)]
pub struct PerContainer {
    dir: PathBuf,
}

/// Why the executor stopped a container.
pub type StopReasons = PerContainer;
/// When a container expires (Unix seconds, 0 for never) after `UpdateContainer`.
pub type Expiries = PerContainer;
/// What the executor last meant for each container (see [`Intent`]).
pub type Intents = PerContainer;

/// What the executor last meant for a container: recorded when it starts one, and when one
/// stops by a request, by the executor, or on its own while the executor watches. Docker
/// cannot tell a container that died in a host's shutdown from one that was stopped, so this
/// is what decides which containers run again when the node starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Started by the executor and not stopped since: run it again if it is found stopped.
    Running,
    /// Stopped, and why (`by <hotkey>`, `gpu_memory: ...`, `exited with code 3`, ...): stays stopped.
    Stopped(String),
}

impl Intent {
    const RUNNING: &str = "running";
    const STOPPED: &str = "stopped: ";

    pub fn text(&self) -> String {
        match self {
            Intent::Running => Self::RUNNING.to_owned(),
            Intent::Stopped(why) => format!("{}{why}", Self::STOPPED),
        }
    }

    /// The intent a file holds; None for a file this version did not write.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            Self::RUNNING => Some(Intent::Running),
            _ => text.strip_prefix(Self::STOPPED).map(|why| Intent::Stopped(why.to_owned())),
        }
    }
}

impl PerContainer {
    /// The stop reasons under `data_dir`, created if needed.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        Self::open_dir(data_dir.join("stop-reasons"))
    }

    /// The expiries under `data_dir`, created if needed.
    pub fn expiries(data_dir: &Path) -> std::io::Result<Self> {
        Self::open_dir(data_dir.join("expiry"))
    }

    /// The intents under `data_dir`, created if needed.
    pub fn intents(data_dir: &Path) -> std::io::Result<Self> {
        Self::open_dir(data_dir.join("intent"))
    }

    /// The intent recorded for `id`, if any.
    pub fn intent(&self, id: &str) -> Option<Intent> {
        self.get(id).as_deref().and_then(Intent::parse)
    }

    fn open_dir(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Forgets the files of containers not in `live` that were written more than `grace` ago.
    pub fn forget_orphans(&self, live: &std::collections::HashSet<String>, grace: std::time::Duration) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let Ok(id) = entry.file_name().into_string() else { continue };
            let old =
                entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() >= grace);
            if is_container_id(&id) && !live.contains(&id) && old {
                self.forget(&id);
            }
        }
    }

    pub fn record(&self, id: &str, reason: &str) -> std::io::Result<()> {
        if !is_container_id(id) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("`{id}` is not a container id")));
        }
        common::durable::write_atomically(&self.dir.join(id), reason.as_bytes(), None)
    }

    pub fn get(&self, id: &str) -> Option<String> {
        is_container_id(id).then(|| std::fs::read_to_string(self.dir.join(id)).ok()).flatten()
    }

    pub fn forget(&self, id: &str) {
        if is_container_id(id) {
            let _ = std::fs::remove_file(self.dir.join(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_survive_a_new_store_and_go_with_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let store = StopReasons::open(dir.path()).unwrap();
        store.record("c-1", "GPU memory over the limit").unwrap();
        assert_eq!(StopReasons::open(dir.path()).unwrap().get("c-1").as_deref(), Some("GPU memory over the limit"));
        store.forget("c-1");
        assert_eq!(store.get("c-1"), None);
        assert!(store.record("../x", "no").is_err());
        assert_eq!(store.get("../etc/passwd"), None);
    }

    #[test]
    fn intents_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Intents::intents(dir.path()).unwrap();
        for intent in [Intent::Running, Intent::Stopped("exited with code 3".into()), Intent::Stopped(String::new())] {
            store.record("c-1", &intent.text()).unwrap();
            assert_eq!(Intents::intents(dir.path()).unwrap().intent("c-1"), Some(intent));
        }
        store.record("c-1", "something else").unwrap();
        assert_eq!(store.intent("c-1"), None);
        assert_eq!(store.intent("c-2"), None);
    }
}
