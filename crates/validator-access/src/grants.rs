//! Grants: a validator hotkey may log in with one SSH key until a time. Kept in
//! `data_dir/validator-grants.json`, rewritten atomically (temporary file, fsync, rename, fsync
//! of the directory) on every change, so a crash never leaves half a file; a file that cannot
//! be read is an error at start, never silently replaced.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use russh::keys::{HashAlg, PublicKey};
use serde::{Deserialize, Serialize};

/// File name under `data_dir`.
pub const GRANTS_FILE: &str = "validator-grants.json";

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRecord {
    pub id: String,
    pub hotkey: String,
    /// The key as an OpenSSH line without comment.
    pub public_key: String,
    /// `SHA256:...`, what authentication compares.
    pub fingerprint: String,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
}

/// Errors of the store, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a grants file ({source}); fix or move it, nothing was changed")]
    Corrupt { path: String, source: serde_json::Error },
}

/// Why an SSH public key cannot be granted, for the `ssh_public_key` field.
pub fn parse_key(line: &str) -> Result<PublicKey, String> {
    let key = PublicKey::from_openssh(line.trim()).map_err(|e| format!("not an OpenSSH public key line: {e}"))?;
    match key.algorithm() {
        russh::keys::Algorithm::Ed25519 | russh::keys::Algorithm::Ecdsa { .. } => Ok(key),
        other => Err(format!("{other} keys are not accepted; use ssh-ed25519 or ecdsa-sha2-nistp256/384/521")),
    }
}

/// The fingerprint authentication compares.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The store.
#[derive(Debug)]
pub struct GrantStore {
    path: PathBuf,
    grants: Mutex<Vec<GrantRecord>>,
}

impl GrantStore {
    /// Loads `data_dir/validator-grants.json` (none yet: no grants).
    pub fn open(data_dir: &Path) -> Result<Self, GrantError> {
        let path = data_dir.join(GRANTS_FILE);
        let shown = path.display().to_string();
        let grants = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| GrantError::Corrupt { path: shown, source })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(GrantError::Io { path: shown, source }),
        };
        Ok(Self { path, grants: Mutex::new(grants) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<GrantRecord>> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, grants: &[GrantRecord]) -> Result<(), GrantError> {
        let io = |source| GrantError::Io { path: self.path.display().to_string(), source };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(grants).map_err(|e| io(std::io::Error::other(e)))?;
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    /// Adds a grant; on a write failure nothing changes.
    pub fn add(&self, grant: GrantRecord) -> Result<(), GrantError> {
        let mut grants = self.lock();
        let mut next = grants.clone();
        next.push(grant);
        self.persist(&next)?;
        *grants = next;
        Ok(())
    }

    /// Removes a grant; None when there is none with that id.
    pub fn revoke(&self, id: &str) -> Result<Option<GrantRecord>, GrantError> {
        self.remove_where(|g| g.id == id).map(|mut v| v.pop())
    }

    /// Removes the grants expired at `now`, returning them.
    pub fn expire(&self, now: i64) -> Result<Vec<GrantRecord>, GrantError> {
        self.remove_where(|g| g.expires_at <= now)
    }

    fn remove_where(&self, gone: impl Fn(&GrantRecord) -> bool) -> Result<Vec<GrantRecord>, GrantError> {
        let mut grants = self.lock();
        let (removed, kept): (Vec<_>, Vec<_>) = grants.iter().cloned().partition(|g| gone(g));
        if !removed.is_empty() {
            self.persist(&kept)?;
            *grants = kept;
        }
        Ok(removed)
    }

    /// The grants live at `now`.
    pub fn live(&self, now: i64) -> Vec<GrantRecord> {
        self.lock().iter().filter(|g| g.expires_at > now).cloned().collect()
    }

    /// The live grant for a key, by fingerprint.
    pub fn for_key(&self, fingerprint: &str, now: i64) -> Option<GrantRecord> {
        self.lock().iter().find(|g| g.fingerprint == fingerprint && g.expires_at > now).cloned()
    }

    /// Whether a grant with this id is live at `now`.
    pub fn is_live(&self, id: &str, now: i64) -> bool {
        self.lock().iter().any(|g| g.id == id && g.expires_at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@host";

    fn grant(id: &str, expires_at: i64) -> GrantRecord {
        let key = parse_key(KEY).unwrap();
        GrantRecord {
            id: id.into(),
            hotkey: "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into(),
            public_key: key.to_openssh().unwrap(),
            fingerprint: fingerprint(&key),
            created_at: 0,
            expires_at,
        }
    }

    #[test]
    fn grants_persist_expire_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = GrantStore::open(dir.path()).unwrap();
        store.add(grant("g-1", 100)).unwrap();
        store.add(grant("g-2", 200)).unwrap();
        let again = GrantStore::open(dir.path()).unwrap();
        assert_eq!(again.live(50).len(), 2);
        let fp = again.live(50)[0].fingerprint.clone();
        assert_eq!(again.for_key(&fp, 150).map(|g| g.id), Some("g-2".into()));
        assert_eq!(again.expire(150).unwrap().len(), 1);
        assert_eq!(again.revoke("g-2").unwrap().map(|g| g.id), Some("g-2".into()));
        assert_eq!(again.revoke("g-2").unwrap(), None);
        assert!(GrantStore::open(dir.path()).unwrap().live(0).is_empty());
    }

    #[test]
    fn a_damaged_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(GRANTS_FILE), "{not json").unwrap();
        let err = GrantStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("validator-grants.json: not a grants file"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join(GRANTS_FILE)).unwrap(), "{not json");
    }

    #[test]
    fn only_modern_key_types_are_granted() {
        assert!(parse_key(KEY).is_ok());
        assert!(parse_key("ssh-ed25519 AAAA").unwrap_err().contains("not an OpenSSH public key"));
        assert!(parse_key("garbage").is_err());
    }
}
