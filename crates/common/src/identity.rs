//! The executor's persistent ed25519 identity.
//!
//! The key lives in `<data_dir>/executor_identity.key` as its 32-byte seed, created once with
//! mode 0600 and never rewritten. The executor id is derived from the public key, so it is
//! stable across restarts and can be checked by anyone holding the public key.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// File name of the identity key inside `data_dir`.
pub const IDENTITY_FILE: &str = "executor_identity.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: identity key is {len} bytes, expected 32 (corrupt or not ours)")]
    Corrupt { path: PathBuf, len: usize },
    #[error("{path}: identity key has mode {mode:o}; it must not be readable by group or others (chmod 600)")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// The executor's signing key.
pub struct ExecutorIdentity {
    key: SigningKey,
}

impl std::fmt::Debug for ExecutorIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("ExecutorIdentity").field("executor_id", &self.executor_id()).finish()
    }
}

impl ExecutorIdentity {
    /// Loads the key from `data_dir`, creating it (and `data_dir`, mode 0700) on first start.
    /// Concurrent first starts agree on one key: the file is published with a no-clobber link.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| IdentityError::Io { path, source }
        };
        match Self::load(&path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(|e| IdentityError::Random(e.to_string()))?;
        let tmp = data_dir.join(format!(".{IDENTITY_FILE}.{}.tmp", u64::from_le_bytes(tag)));
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&seed).and_then(|()| file.sync_all()).map_err(io_err(&tmp))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Ok(dir) = fs::File::open(data_dir) {
                    let _ = dir.sync_all();
                }
                Ok(Self { key: SigningKey::from_bytes(&seed) })
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(&path),
            Err(e) => Err(IdentityError::Io { path, source: e }),
        }
    }

    /// Loads an existing key, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io_err = |source| IdentityError::Io { path: path.to_owned(), source };
        let mut file = fs::File::open(path).map_err(io_err)?;
        let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions { path: path.to_owned(), mode });
        }
        let mut bytes = Vec::with_capacity(33);
        Read::by_ref(&mut file).take(33).read_to_end(&mut bytes).map_err(io_err)?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Corrupt { path: path.to_owned(), len: bytes.len() })?;
        Ok(Self { key: SigningKey::from_bytes(&seed) })
    }

    /// An identity that lives only in memory (tests, tools).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(&seed) }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// `executor-` and the first 16 bytes of SHA-256("basilica/executor-id/v1" ‖ public key), hex.
    pub fn executor_id(&self) -> String {
        executor_id_of(&self.public_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// The executor id belonging to an ed25519 public key.
pub fn executor_id_of(public_key: &[u8; 32]) -> String {
    let digest = Sha256::new().chain_update(b"basilica/executor-id/v1").chain_update(public_key).finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("executor-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn created_once_with_0600_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = ExecutorIdentity::load_or_create(&data).unwrap();
        let mode = fs::metadata(data.join(IDENTITY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = ExecutorIdentity::load_or_create(&data).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.executor_id(), second.executor_id());
        assert!(first.executor_id().starts_with("executor-") && first.executor_id().len() == 41);
        let sig = ed25519_dalek::Signature::from_bytes(&first.sign(b"report"));
        second.verifying_key().verify(b"report", &sig).unwrap();
    }

    #[test]
    fn refuses_open_permissions_and_corrupt_keys() {
        let dir = tempfile::tempdir().unwrap();
        ExecutorIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = ExecutorIdentity::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("mode 644"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, b"short").unwrap();
        let err = ExecutorIdentity::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("5 bytes, expected 32"), "{err}");
    }

    #[test]
    fn concurrent_first_starts_agree() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ExecutorIdentity::load_or_create(dir.path()).unwrap().public_key()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }
}
