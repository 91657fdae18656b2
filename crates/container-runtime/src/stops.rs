//! Why the executor stopped a container (GPU memory over its limit, ...), kept in
//! `data_dir/stop-reasons/<id>` so `get` and `list` report it across restarts of the service.
//! Docker labels cannot change after create, hence a file per container, written atomically
//! (temporary file, fsync, rename) and removed with the container.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::labels::is_container_id;

/// The store.
#[derive(Debug, Clone)]
pub struct StopReasons {
    dir: PathBuf,
}

impl StopReasons {
    /// The store under `data_dir`, created (mode 0700) if needed.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("stop-reasons");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn record(&self, id: &str, reason: &str) -> std::io::Result<()> {
        if !is_container_id(id) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("`{id}` is not a container id")));
        }
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(reason.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(id))
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
}
