//! JSON files in `data_dir` that survive crashes and damage: rewritten atomically (temporary
//! file, fsync, rename, fsync of the directory) on every change, so a crash never leaves half a
//! file, with a copy of the last good version beside it (`.bak`, written the same way). A file
//! that cannot be parsed (a disk error, a hand edit) is moved aside (`.corrupt-<unix time>`, so
//! nothing is lost) and the contents come back from the copy; when the copy is bad too, opening
//! fails and says which files. validator-access keeps grants and tenant keys this way, container-runtime its image cache.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors of a file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "{path}: not a {what} file ({source}), and no good copy in {backup}; fix or move them, nothing was changed"
    )]
    Corrupt { path: String, what: &'static str, backup: String, source: serde_json::Error },
}

/// What opening a file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The file was fine (or absent: nothing stored yet).
    Clean,
    /// The file was damaged: moved to `moved_to`, contents restored from the last good copy,
    /// which held `entries` entries.
    Recovered { moved_to: PathBuf, entries: usize },
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new file, never half of
/// one: `<path>.tmp`, fsync, rename, fsync of the directory. `mode` sets the permissions.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

/// One durable JSON file holding a `T`; `what` names its kind in errors ("grants").
#[derive(Debug)]
pub struct DurableFile {
    path: PathBuf,
    what: &'static str,
}

impl DurableFile {
    pub fn new(path: PathBuf, what: &'static str) -> Self {
        Self { path, what }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn backup(&self) -> PathBuf {
        self.path.with_extension("json.bak")
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io { path: self.path.display().to_string(), source }
    }

    fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| StoreError::Corrupt {
                path: path.display().to_string(),
                what: self.what,
                backup: String::new(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path: path.display().to_string(), source }),
        }
    }

    /// Loads the file (absent: `T::default()`), recovering from the last good copy when it is
    /// damaged; `entries` counts what a recovered copy holds, for the report.
    pub fn open<T>(&self, entries: impl Fn(&T) -> usize) -> Result<(T, Opened), StoreError>
    where
        T: DeserializeOwned + Serialize + Default,
    {
        match self.read(&self.path) {
            Ok(value) => Ok((value.unwrap_or_default(), Opened::Clean)),
            Err(StoreError::Corrupt { source, .. }) => {
                let backup = self.backup();
                let Ok(Some(good)) = self.read::<T>(&backup) else {
                    return Err(StoreError::Corrupt {
                        path: self.path.display().to_string(),
                        what: self.what,
                        backup: backup.display().to_string(),
                        source,
                    });
                };
                let moved_to = self.path.with_extension(format!(
                    "json.corrupt-{}",
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
                ));
                std::fs::rename(&self.path, &moved_to).map_err(|e| self.io(e))?;
                let bytes = serde_json::to_vec_pretty(&good).map_err(|e| self.io(std::io::Error::other(e)))?;
                write_atomically(&self.path, &bytes, None).map_err(|e| self.io(e))?;
                let n = entries(&good);
                Ok((good, Opened::Recovered { moved_to, entries: n }))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `value`, then the copy once the file itself is safely down.
    pub fn store<T: Serialize>(&self, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| self.io(std::io::Error::other(e)))?;
        write_atomically(&self.path, &bytes, None).map_err(|e| self.io(e))?;
        write_atomically(&self.backup(), &bytes, None).map_err(|e| self.io(e))
    }
}
