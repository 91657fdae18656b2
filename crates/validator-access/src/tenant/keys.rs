//! Renters' SSH keys, per container: `data_dir/tenant-keys.json`, a [`DurableFile`] (written
//! atomically with a last good copy). A key opens only the container it was given for; a
//! container's keys go when the container goes ([`TenantKeyStore::retain_containers`]).
//! Changes that cannot be written are not made (adding) or are made in memory first (removing:
//! a removed key stops working even when the disk refuses the change, and the error says so).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::grants::{KeyError, fingerprint, parse_key};
use common::durable::{DurableFile, Opened, StoreError};

/// File name under `data_dir`.
pub const KEYS_FILE: &str = "tenant-keys.json";

/// One key of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKey {
    /// The key as an OpenSSH line without comment.
    pub public_key: String,
    /// `SHA256:...`, what authentication compares.
    pub fingerprint: String,
    /// The comment of the line given, for the renter's own bookkeeping.
    pub comment: String,
    /// Unix seconds.
    pub added_at: i64,
}

/// Every container's keys, by container id.
pub type KeysByContainer = BTreeMap<String, Vec<TenantKey>>;

/// Why keys cannot be added; the field is named by the caller.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("ssh_public_keys[{index}]: {source}")]
    Key { index: usize, source: KeyError },
    #[error("ssh_public_keys: required: at least one OpenSSH public key line")]
    None,
    #[error(
        "ssh_public_keys: container {container} would hold {would} keys, more than tenant_access.max_keys_per_container ({max})"
    )]
    TooMany { container: String, would: usize, max: u32 },
    #[error("cannot store the keys: {0}")]
    Store(#[from] StoreError),
}

/// Parses `lines` (ed25519 and ECDSA only) into keys added at `now`; the error names the index.
pub fn parse_keys(lines: &[String], now: i64) -> Result<Vec<TenantKey>, AddError> {
    if lines.is_empty() {
        return Err(AddError::None);
    }
    lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            let key = parse_key(line).map_err(|source| AddError::Key { index, source })?;
            let comment = key.comment().to_string();
            let mut bare = key.clone();
            bare.set_comment("");
            let public_key = bare.to_openssh().map_err(|e| AddError::Key { index, source: KeyError::Malformed(e) })?;
            Ok(TenantKey { public_key, fingerprint: fingerprint(&key), comment, added_at: now })
        })
        .collect()
}

/// The store.
#[derive(Debug)]
pub struct TenantKeyStore {
    file: DurableFile,
    keys: Mutex<KeysByContainer>,
    max_per_container: u32,
}

impl TenantKeyStore {
    /// Loads `data_dir/tenant-keys.json` (none yet: no keys), recovering from the last good
    /// copy when it is damaged.
    pub fn open(data_dir: &Path, max_per_container: u32) -> Result<(Self, Opened), StoreError> {
        let file = DurableFile::new(data_dir.join(KEYS_FILE), "tenant keys");
        let (keys, opened) = file.open(|k: &KeysByContainer| k.values().map(Vec::len).sum())?;
        Ok((Self { file, keys: Mutex::new(keys), max_per_container }, opened))
    }

    fn lock(&self) -> MutexGuard<'_, KeysByContainer> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `keys` to `container` (a key it has already is kept once, with its first date);
    /// on a write failure nothing changes. Returns the container's keys now.
    pub fn add(&self, container: &str, keys: Vec<TenantKey>) -> Result<Vec<TenantKey>, AddError> {
        let mut all = self.lock();
        let mut next = all.clone();
        let held = next.entry(container.to_owned()).or_default();
        for key in keys {
            if !held.iter().any(|k| k.fingerprint == key.fingerprint) {
                held.push(key);
            }
        }
        if held.len() > self.max_per_container as usize {
            return Err(AddError::TooMany {
                container: container.to_owned(),
                would: held.len(),
                max: self.max_per_container,
            });
        }
        let now = held.clone();
        self.file.store(&next)?;
        *all = next;
        Ok(now)
    }

    /// Removes `container`'s key with `fingerprint`; `Ok(None)` when it has none such.
    /// Fails closed: the key leaves memory even when the file cannot be written.
    pub fn remove(&self, container: &str, fingerprint: &str) -> Result<Option<TenantKey>, StoreError> {
        let mut all = self.lock();
        let Some(held) = all.get_mut(container) else { return Ok(None) };
        let Some(at) = held.iter().position(|k| k.fingerprint == fingerprint) else { return Ok(None) };
        let removed = held.remove(at);
        if held.is_empty() {
            all.remove(container);
        }
        self.file.store(&*all)?;
        Ok(Some(removed))
    }

    /// Drops the keys of every container `keep` says is gone, returning those containers.
    pub fn retain_containers(&self, keep: impl Fn(&str, &[TenantKey]) -> bool) -> Result<Vec<String>, StoreError> {
        let mut all = self.lock();
        let gone: Vec<String> = all.iter().filter(|(c, k)| !keep(c, k)).map(|(c, _)| c.clone()).collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        for c in &gone {
            all.remove(c);
        }
        self.file.store(&*all)?;
        Ok(gone)
    }

    /// The keys of `container`.
    pub fn of(&self, container: &str) -> Vec<TenantKey> {
        self.lock().get(container).cloned().unwrap_or_default()
    }

    /// Whether `container` holds a key with `fingerprint`.
    pub fn opens(&self, container: &str, fingerprint: &str) -> bool {
        self.lock().get(container).is_some_and(|keys| keys.iter().any(|k| k.fingerprint == fingerprint))
    }

    /// Keys over all containers.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The containers holding keys.
    pub fn containers(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn max_per_container(&self) -> u32 {
        self.max_per_container
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl renter@laptop";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEdLkKV0y3JqbXE6CyDrOdp8ygn/DdgqHrJOONvW6qULzXa3eZ7OrMRUJOWkdF3VQxcAq5jBUFb8sAAyqIcO/Zg=";

    #[test]
    fn keys_persist_per_container_and_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, opened) = TenantKeyStore::open(dir.path(), 2).unwrap();
        assert_eq!(opened, Opened::Clean);
        let keys = parse_keys(&[ED.into(), ECDSA.into()], 10).unwrap();
        assert_eq!(keys[0].comment, "renter@laptop");
        assert!(!keys[0].public_key.contains("renter@laptop"), "{}", keys[0].public_key);
        store.add("c-1", keys.clone()).unwrap();
        // The same key again is kept once; a third key is one too many.
        assert_eq!(store.add("c-1", keys[..1].to_vec()).unwrap().len(), 2);
        store.add("c-2", keys[..1].to_vec()).unwrap();
        let (again, _) = TenantKeyStore::open(dir.path(), 2).unwrap();
        assert!(again.opens("c-1", &keys[1].fingerprint));
        assert!(!again.opens("c-2", &keys[1].fingerprint), "a key opened another container");
        assert!(!again.opens("c-3", &keys[0].fingerprint));
        assert_eq!(again.remove("c-1", &keys[1].fingerprint).unwrap().unwrap().fingerprint, keys[1].fingerprint);
        assert_eq!(again.remove("c-1", &keys[1].fingerprint).unwrap(), None);
        assert_eq!(again.retain_containers(|c, _| c != "c-2").unwrap(), ["c-2"]);
        let (last, _) = TenantKeyStore::open(dir.path(), 2).unwrap();
        assert_eq!(last.containers(), ["c-1"]);
        assert_eq!(last.of("c-1").len(), 1);
    }

    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDdULGwN7U8LXGPSfG2HNwUjW4fLzbqUXVksIImQMSGixM3//XAe4/39yTiJKL+pIvGxXlB839bS5LE0TeFaaO6Z631Ssju9nUmQW6uWnu8SfFFMd47yGWcdUlzIHxrK3ZD7CuG1OtKwYnQZJ0c8mrZDEjBe2ALX05eVBPVnh+lfw==";

    #[test]
    fn bad_keys_and_too_many_are_refused_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = TenantKeyStore::open(dir.path(), 1).unwrap();
        let err = parse_keys(&[ED.into(), RSA.into()], 0).unwrap_err();
        assert!(err.to_string().starts_with("ssh_public_keys[1]: ssh-rsa keys are not accepted"), "{err}");
        let err = parse_keys(&["ssh-ed25519 AAAA".into()], 0).unwrap_err();
        assert!(err.to_string().starts_with("ssh_public_keys[0]: not an OpenSSH public key line"), "{err}");
        let err = parse_keys(&[], 0).unwrap_err();
        assert!(err.to_string().starts_with("ssh_public_keys: required"), "{err}");
        let both = parse_keys(&[ED.into(), ECDSA.into()], 0).unwrap();
        let err = store.add("c-1", both).unwrap_err();
        assert!(err.to_string().contains("more than tenant_access.max_keys_per_container (1)"), "{err}");
        assert!(store.of("c-1").is_empty(), "a refused add changed the store");
    }
}
