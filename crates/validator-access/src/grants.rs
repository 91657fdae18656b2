//! Grants: a validator hotkey may log in with one SSH key until a time. Kept in
//! `data_dir/validator-grants.json`, a [`DurableFile`]: written atomically with a last good
//! copy, recovered from the copy when damaged; when the copy is bad too the service refuses to
//! start and says which files.

use std::path::Path;
use std::sync::Mutex;

use russh::keys::{HashAlg, PublicKey};
use serde::{Deserialize, Serialize};

use common::durable::DurableFile;

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

/// What opening the store found.
pub use common::durable::Opened;
/// Errors of the store, naming the file.
pub use common::durable::StoreError as GrantError;

/// Grants removed from memory whose removal could not be written to the grants file: they are
/// gone for this process (sessions end), but the file still names them until the next write.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Unstored {
    pub removed: Vec<GrantRecord>,
    #[source]
    pub source: GrantError,
}

/// Why an SSH public key cannot be granted (the text goes after `ssh_public_key: `).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("required: the OpenSSH public key line of the key the grant is for")]
    Missing,
    #[error("not an OpenSSH public key line: {0}")]
    Malformed(russh::keys::ssh_key::Error),
    #[error("{0} keys are not accepted; use ssh-ed25519 or ecdsa-sha2-nistp256/384/521")]
    Algorithm(russh::keys::Algorithm),
}

/// The key of an `ssh_public_key` field: ed25519 or ECDSA only.
pub fn parse_key(line: &str) -> Result<PublicKey, KeyError> {
    if line.trim().is_empty() {
        return Err(KeyError::Missing);
    }
    let key = PublicKey::from_openssh(line.trim()).map_err(KeyError::Malformed)?;
    match key.algorithm() {
        russh::keys::Algorithm::Ed25519 | russh::keys::Algorithm::Ecdsa { .. } => Ok(key),
        other => Err(KeyError::Algorithm(other)),
    }
}

/// The fingerprint authentication compares.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The store.
#[derive(Debug)]
pub struct GrantStore {
    file: DurableFile,
    grants: Mutex<Vec<GrantRecord>>,
}

impl GrantStore {
    /// Loads `data_dir/validator-grants.json` (none yet: no grants), recovering from the last
    /// good copy when it is damaged.
    pub fn open(data_dir: &Path) -> Result<(Self, Opened), GrantError> {
        let file = DurableFile::new(data_dir.join(GRANTS_FILE), "grants");
        let (grants, opened) = file.open(Vec::<GrantRecord>::len)?;
        Ok((Self { file, grants: Mutex::new(grants) }, opened))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<GrantRecord>> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, grants: &[GrantRecord]) -> Result<(), GrantError> {
        self.file.store(&grants)
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
    pub fn revoke(&self, id: &str) -> Result<Option<GrantRecord>, Unstored> {
        self.remove_where(|g| g.id == id).map(|mut v| v.pop())
    }

    /// Removes the grants expired at `now`, returning them.
    pub fn expire(&self, now: i64) -> Result<Vec<GrantRecord>, Unstored> {
        self.remove_where(|g| g.expires_at <= now)
    }

    /// Fails closed: the grants leave memory first, so a disk that cannot take the change never
    /// keeps a revoked or expired grant live; the error says the file still holds them.
    fn remove_where(&self, gone: impl Fn(&GrantRecord) -> bool) -> Result<Vec<GrantRecord>, Unstored> {
        let mut grants = self.lock();
        let (removed, kept): (Vec<_>, Vec<_>) = grants.iter().cloned().partition(|g| gone(g));
        if removed.is_empty() {
            return Ok(removed);
        }
        let persisted = self.persist(&kept);
        *grants = kept;
        match persisted {
            Ok(()) => Ok(removed),
            Err(source) => Err(Unstored { removed, source }),
        }
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
        let (store, opened) = GrantStore::open(dir.path()).unwrap();
        assert_eq!(opened, Opened::Clean);
        store.add(grant("g-1", 100)).unwrap();
        store.add(grant("g-2", 200)).unwrap();
        let (again, _) = GrantStore::open(dir.path()).unwrap();
        assert_eq!(again.live(50).len(), 2);
        let fp = again.live(50)[0].fingerprint.clone();
        assert_eq!(again.for_key(&fp, 150).map(|g| g.id), Some("g-2".into()));
        assert_eq!(again.expire(150).unwrap().len(), 1);
        assert_eq!(again.revoke("g-2").unwrap().map(|g| g.id), Some("g-2".into()));
        assert_eq!(again.revoke("g-2").unwrap(), None);
        assert!(GrantStore::open(dir.path()).unwrap().0.live(0).is_empty());
    }

    /// Issue 17 item 4: a revocation that cannot be written down (a full or vanished disk)
    /// still ends the grant in memory, and says it was not stored.
    #[test]
    fn a_revocation_that_cannot_be_stored_still_ends_the_grant() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let (store, _) = GrantStore::open(&dir).unwrap();
        store.add(grant("g-1", 200)).unwrap();
        store.add(grant("g-2", 100)).unwrap();
        // The data directory becomes a file: every write fails, also for root.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, "").unwrap();
        let unstored = store.revoke("g-1").unwrap_err();
        assert_eq!(unstored.removed.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["g-1"]);
        assert!(unstored.to_string().contains("validator-grants.json"), "{unstored}");
        assert!(!store.is_live("g-1", 0), "the revoked grant is still live");
        let unstored = store.expire(150).unwrap_err();
        assert_eq!(unstored.removed.len(), 1);
        assert!(store.live(0).is_empty());
    }

    #[test]
    fn a_damaged_file_comes_back_from_the_last_good_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = GrantStore::open(dir.path()).unwrap();
        store.add(grant("g-1", 100)).unwrap();
        drop(store);
        let file = dir.path().join(GRANTS_FILE);
        std::fs::write(&file, "{torn wri").unwrap();
        let (store, opened) = GrantStore::open(dir.path()).unwrap();
        let Opened::Recovered { moved_to, entries: grants } = opened else { panic!("{opened:?}") };
        assert_eq!(grants, 1);
        assert_eq!(store.live(0)[0].id, "g-1");
        assert_eq!(std::fs::read_to_string(moved_to).unwrap(), "{torn wri");
        assert!(serde_json::from_slice::<Vec<GrantRecord>>(&std::fs::read(&file).unwrap()).is_ok());
    }

    #[test]
    fn a_damaged_file_without_a_good_copy_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(GRANTS_FILE), "{not json").unwrap();
        let err = GrantStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("validator-grants.json: not a grants file"), "{err}");
        assert!(err.contains("no good copy in"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join(GRANTS_FILE)).unwrap(), "{not json");
    }

    #[test]
    fn only_modern_key_types_are_granted() {
        assert!(parse_key(KEY).is_ok());
        assert!(parse_key("ssh-ed25519 AAAA").unwrap_err().to_string().contains("not an OpenSSH public key"));
        assert!(parse_key("garbage").is_err());
        assert!(parse_key(" ").unwrap_err().to_string().starts_with("required: "));
    }
}
