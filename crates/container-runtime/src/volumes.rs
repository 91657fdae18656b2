//! Named volumes with a hard size (issue 21 item 2). A volume is an ext4 filesystem in an image
//! file `<data_dir>/volumes/<name>.img`, reserved in full on that disk when it is made (so one
//! written full never fills the host's disk), with its record `<name>.json` beside it. It is
//! mounted (a loop device, `nosuid,nodev`) on `<runtime_dir>/volumes/<name>` in the engine's
//! mount namespace, and containers get that directory as a bind mount: writes past the size
//! get ENOSPC inside the container and the host is unaffected. A volume outlives the
//! containers that use it; after a restart of this service, of the engine or of the host it is
//! mounted again before it is needed ([`Volumes::mount_all`] at start, and at every create).
//! Which containers have it is in their labels ([`LABEL_VOLUMES`]), read back under the create
//! lock, so two containers never write one volume. Deleting one is refused while any container
//! has it; its bytes are then wiped (every block of the image deallocated, so what is made next
//! reads zeros) before the image is unlinked.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::ProcessSpec;

use common::config::VolumesConfig;
use common::config::values::{MAX_PLAIN_NAME, is_mount_path, is_plain_name};
use common::config::volumes::MIN_VOLUME_BYTES;
use common::proto::runtime::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::mounts::{ENGINE_NAMESPACE, in_mount_namespace};

/// A container's volumes: `name:path:ro|rw`, comma-separated (paths have no commas: checked).
pub const LABEL_VOLUMES: &str = "ai.basilica.executor.volumes";
/// How long making a volume's filesystem may take.
const MKFS_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a volume call failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A request field is malformed or beyond its bound; names the field.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{field}: volume `{name}` does not exist")]
    NotFound { field: String, name: String },
    #[error("name: volume `{0}` exists already")]
    Exists(String),
    #[error(
        "size_bytes: {asked} more bytes of volumes would be {} in all, over docker.volumes.max_total_bytes = {max}",
        asked + used
    )]
    OverTotal { asked: u64, used: u64, max: u64 },
    #[error("name: volume `{name}` is in use by {}; remove them first", containers.join(", "))]
    InUse { name: String, containers: Vec<String> },
    #[error(
        "{field}: volume `{name}` is in use by {container}{}; a volume is shared only when every container has it read-only",
        if *read_only { " (read-only)" } else { " (read-write)" }
    )]
    Shared { field: String, name: String, container: String, read_only: bool },
    /// The host's disk cannot hold the image.
    #[error("size_bytes: the disk of data_dir has no room for {size} more bytes")]
    NoRoom { size: u64 },
    /// Making, mounting, wiping or reading a volume failed on the host.
    #[error("volume `{name}`: {reason}")]
    Host { name: String, reason: String },
}

/// What is kept of a volume in `<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    size_bytes: u64,
    created_at: i64,
}

/// A volume a create asked for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub volume: String,
    pub container_path: String,
    pub read_only: bool,
}

impl Attached {
    pub fn to_proto(&self) -> pb::VolumeMount {
        pb::VolumeMount {
            volume: self.volume.clone(),
            container_path: self.container_path.clone(),
            read_only: self.read_only,
        }
    }
}

/// The label value for `volumes`.
pub fn label(volumes: &[Attached]) -> String {
    volumes
        .iter()
        .map(|v| format!("{}:{}:{}", v.volume, v.container_path, if v.read_only { "ro" } else { "rw" }))
        .collect::<Vec<_>>()
        .join(",")
}

/// [`label`] read back; what does not parse is left out.
pub fn parse_label(value: &str) -> Vec<Attached> {
    value
        .split(',')
        .filter_map(|item| {
            let (rest, mode) = item.rsplit_once(':')?;
            let (volume, path) = rest.split_once(':')?;
            Some(Attached { volume: volume.to_owned(), container_path: path.to_owned(), read_only: mode == "ro" })
        })
        .collect()
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> VolumeError {
    VolumeError::Invalid { field: field.into(), message: message.into() }
}

/// The volumes of one executor.
#[derive(Debug)]
pub struct Volumes {
    /// `<data_dir>/volumes`: images and records.
    dir: PathBuf,
    /// `<runtime_dir>/volumes`: mount points.
    mounts: PathBuf,
    namespace: PathBuf,
    config: VolumesConfig,
    /// Held (by the runtime) around a volume's create, its delete and a container's create
    /// that attaches volumes, so that a volume is never deleted while a container is being
    /// given it.
    lock: tokio::sync::Mutex<()>,
}

impl Volumes {
    pub fn new(data_dir: &Path, runtime_dir: &Path, config: &VolumesConfig) -> Self {
        Self {
            dir: data_dir.join("volumes"),
            mounts: runtime_dir.join("volumes"),
            namespace: PathBuf::from(ENGINE_NAMESPACE),
            config: config.clone(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The lock a create holds while it attaches volumes.
    pub fn lock(&self) -> &tokio::sync::Mutex<()> {
        &self.lock
    }

    fn image(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Where volume `name` is mounted on the host.
    pub fn mount_point(&self, name: &str) -> PathBuf {
        self.mounts.join(name)
    }

    fn records(&self) -> BTreeMap<String, Record> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return BTreeMap::new() };
        let mut records = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
            {
                Ok(record) if is_plain_name(&record.name) && self.image(&record.name).exists() => {
                    records.insert(record.name.clone(), record);
                }
                Ok(_) => tracing::warn!(path = %path.display(), "a volume record without its image; left alone"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "an unreadable volume record; left alone"),
            }
        }
        records
    }

    /// Makes volume `name` of `size_bytes`: the image reserved in full, an ext4 filesystem in
    /// it, its record, and its mount. Call under [`Volumes::lock`], as [`Volumes::delete`].
    pub async fn create(&self, name: &str, size_bytes: u64) -> Result<pb::Volume, VolumeError> {
        if !is_plain_name(name) {
            return Err(invalid(
                "name",
                format!(
                    "`{name}` is not a volume name (letters, digits, `_`, `.`, `-`, starting with a letter or digit, at most {MAX_PLAIN_NAME})"
                ),
            ));
        }
        let max = self.config.max_volume_bytes.get();
        if size_bytes < MIN_VOLUME_BYTES || size_bytes > max {
            return Err(invalid(
                "size_bytes",
                format!("{size_bytes} is not between {MIN_VOLUME_BYTES} and docker.volumes.max_volume_bytes = {max}"),
            ));
        }
        let records = self.records();
        if records.contains_key(name) || self.image(name).exists() {
            return Err(VolumeError::Exists(name.to_owned()));
        }
        let used = reserved(&records);
        let total = self.config.max_total_bytes.get();
        if used + size_bytes > total {
            return Err(VolumeError::OverTotal { asked: size_bytes, used, max: total });
        }
        let record = Record { name: name.to_owned(), size_bytes, created_at: crate::labels::now_secs() as i64 };
        let (image, record_path, dir) = (self.image(name), self.record_path(name), self.dir.clone());
        let made = make(&dir, &image, &record_path, &record).await;
        if let Err(e) = made {
            let _ = std::fs::remove_file(self.image(name));
            let _ = std::fs::remove_file(self.record_path(name));
            return Err(e);
        }
        // A volume that cannot be mounted is not made: the caller may ask again.
        if let Err(e) = self.mount(name).await {
            let _ = std::fs::remove_file(self.record_path(name));
            let _ = std::fs::remove_file(self.image(name));
            return Err(e);
        }
        tracing::info!(name, size_bytes, "volume created");
        Ok(self.describe(name, size_bytes, record.created_at, Vec::new()))
    }

    fn describe(&self, name: &str, size_bytes: u64, created_at: i64, containers: Vec<String>) -> pb::Volume {
        let point = self.mount_point(name);
        let used_bytes = nix::sys::statvfs::statvfs(&point)
            .ok()
            .filter(|_| is_mount_point(&point))
            .map_or(0, |s| (s.blocks() - s.blocks_free()) * s.fragment_size());
        pb::Volume { name: name.to_owned(), size_bytes, used_bytes, created_at, containers }
    }

    /// Volume `name`'s size and the bytes in use on it (zeros when it is gone or not mounted).
    pub fn usage(&self, name: &str) -> (u64, u64) {
        match self.records().get(name) {
            Some(r) => {
                let described = self.describe(name, r.size_bytes, r.created_at, Vec::new());
                (described.size_bytes, described.used_bytes)
            }
            None => (0, 0),
        }
    }

    /// The bytes all volumes take together (each is reserved in full).
    pub fn reserved_bytes(&self) -> u64 {
        reserved(&self.records())
    }

    /// Every volume, with the containers that have it (`users`: volume name → our ids).
    pub fn list(&self, users: &HashMap<String, Vec<String>>) -> Vec<pb::Volume> {
        self.records()
            .into_values()
            .map(|r| {
                let containers = users.get(&r.name).cloned().unwrap_or_default();
                self.describe(&r.name, r.size_bytes, r.created_at, containers)
            })
            .collect()
    }

    /// Deletes volume `name` when no container has it (`users` as in [`Volumes::list`]):
    /// unmounted, its image wiped and unlinked, its record removed.
    pub async fn delete(&self, name: &str, users: &HashMap<String, Vec<String>>) -> Result<(), VolumeError> {
        if !self.records().contains_key(name) {
            return Err(VolumeError::NotFound { field: "name".into(), name: name.to_owned() });
        }
        if let Some(containers) = users.get(name).filter(|c| !c.is_empty()) {
            return Err(VolumeError::InUse { name: name.to_owned(), containers: containers.clone() });
        }
        let point = self.mount_point(name);
        in_mount_namespace(&self.namespace, || {
            if is_mount_point(&point) {
                nix::mount::umount2(&point, nix::mount::MntFlags::empty()).map_err(|e| format!("unmount: {e}"))?;
            }
            let _ = std::fs::remove_dir(&point);
            Ok::<(), String>(())
        })
        .map_err(|e| host(name, e))?
        .map_err(|e| host(name, e))?;
        let (image, record) = (self.image(name), self.record_path(name));
        tokio::task::spawn_blocking(move || {
            wipe(&image)?;
            std::fs::remove_file(&record).map_err(|e| format!("{}: {e}", record.display()))?;
            std::fs::remove_file(&image).map_err(|e| format!("{}: {e}", image.display()))
        })
        .await
        .map_err(|e| host(name, e.to_string()))?
        .map_err(|e| host(name, e))?;
        tracing::info!(name, "volume deleted and wiped");
        Ok(())
    }

    /// Mounts volume `name` unless it is: after a restart of this service, of the engine or
    /// of the host.
    async fn mount(&self, name: &str) -> Result<PathBuf, VolumeError> {
        let (image, point, namespace) = (self.image(name), self.mount_point(name), self.namespace.clone());
        let mounts = self.mounts.clone();
        tokio::task::spawn_blocking(move || {
            in_mount_namespace(&namespace, || {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&mounts).map_err(|e| e.to_string())?;
                match std::fs::DirBuilder::new().mode(0o755).create(&point) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("{}: {e}", point.display())),
                }
                if is_mount_point(&point) {
                    return Ok(());
                }
                // Started from this thread, which entered the engine's mount namespace: a
                // ProcessSpec child is started by tokio's threads, in this process's namespace.
                #[allow(clippy::disallowed_methods)]
                run(Command::new("mount")
                    .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
                    .arg(&image)
                    .arg(&point))
            })?
        })
        .await
        .map_err(|e| host(name, e.to_string()))?
        .map_err(|e| host(name, e))?;
        Ok(self.mount_point(name))
    }

    /// Mounts the volumes a container has (its [`LABEL_VOLUMES`]) before it starts again: a
    /// mount lost meanwhile (an engine whose mount namespace went with it) must never leave
    /// the container writing into the empty directory under `runtime_dir`.
    pub async fn mount_for(&self, labels: &HashMap<String, String>) -> Result<(), VolumeError> {
        for attached in labels.get(LABEL_VOLUMES).map(|l| parse_label(l)).unwrap_or_default() {
            self.mount(&attached.volume).await?;
        }
        Ok(())
    }

    /// Mounts every volume (at start); what fails is logged and tried again at its next use.
    pub async fn mount_all(&self) {
        for name in self.records().into_keys() {
            if let Err(e) = self.mount(&name).await {
                tracing::warn!(name, error = %e, "cannot mount a volume");
            }
        }
    }

    /// Checks a create's volumes against what exists and what other containers hold
    /// (`others`: each container's [`Attached`] volumes, by our id), mounts them, and returns
    /// them with their host mount points. Call under [`Volumes::lock`].
    pub async fn attach(
        &self,
        asked: &[pb::VolumeMount],
        others: &[(String, Vec<Attached>)],
        mount_paths: &[String],
    ) -> Result<Vec<(Attached, PathBuf)>, VolumeError> {
        let records = self.records();
        let mut out: Vec<(Attached, PathBuf)> = Vec::new();
        for (i, v) in asked.iter().enumerate() {
            let field = |f: &str| format!("volumes[{i}].{f}");
            let path = &v.container_path;
            if !is_mount_path(path) {
                return Err(invalid(
                    field("container_path"),
                    format!("`{path}` is not an absolute path below / (without `..`, `,` or `:`)"),
                ));
            }
            if out.iter().any(|(a, _)| &a.container_path == path) || mount_paths.contains(path) {
                return Err(invalid(field("container_path"), format!("`{path}` is mounted twice")));
            }
            if !records.contains_key(&v.volume) {
                return Err(VolumeError::NotFound { field: field("volume"), name: v.volume.clone() });
            }
            if out.iter().any(|(a, _)| a.volume == v.volume) {
                return Err(invalid(field("volume"), format!("volume `{}` is asked for twice", v.volume)));
            }
            for (container, theirs) in others {
                if let Some(held) = theirs.iter().find(|a| a.volume == v.volume && !(a.read_only && v.read_only)) {
                    return Err(VolumeError::Shared {
                        field: field("volume"),
                        name: v.volume.clone(),
                        container: container.clone(),
                        read_only: held.read_only,
                    });
                }
            }
            let point = self.mount(&v.volume).await?;
            let attached = Attached { volume: v.volume.clone(), container_path: path.clone(), read_only: v.read_only };
            out.push((attached, point));
        }
        Ok(out)
    }
}

fn reserved(records: &BTreeMap<String, Record>) -> u64 {
    records.values().map(|r| r.size_bytes).sum()
}

fn host(name: &str, reason: impl Into<String>) -> VolumeError {
    VolumeError::Host { name: name.to_owned(), reason: reason.into() }
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    let (Ok(here), Some(Ok(parent))) = (std::fs::metadata(path), path.parent().map(std::fs::metadata)) else {
        return false;
    };
    here.dev() != parent.dev()
}

/// Runs a host tool; its stderr is the error.
fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{:?}: {e}", command.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{:?}: {}", command.get_program(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The image reserved in full, the filesystem made, the record written (atomically, last).
async fn make(dir: &Path, image: &Path, record_path: &Path, record: &Record) -> Result<(), VolumeError> {
    let name = &record.name;
    let (dir_, image_, size) = (dir.to_owned(), image.to_owned(), record.size_bytes);
    tokio::task::spawn_blocking(move || reserve(&dir_, &image_, size))
        .await
        .map_err(|e| host(name, e.to_string()))?
        .map_err(|e| match e {
            nix::errno::Errno::ENOSPC => VolumeError::NoRoom { size },
            e => host(name, format!("reserving {size} bytes: {e}")),
        })?;
    // No blocks reserved for root: the tenant is the filesystem's only user.
    let mkfs = ProcessSpec::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L"])
        .arg(name.chars().take(16).collect::<String>())
        .arg(image);
    let out = mkfs.output(MKFS_TIMEOUT, 1 << 16).await.map_err(|e| host(name, format!("mkfs.ext4: {e}")))?;
    if !out.status.success() {
        return Err(host(name, format!("mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let bytes = serde_json::to_vec(record).map_err(|e| host(name, e.to_string()))?;
    common::durable::write_atomically(record_path, &bytes, None).map_err(|e| host(name, e.to_string()))
}

/// Creates the image file (never over an existing one) and reserves `size` bytes for it.
fn reserve(dir: &Path, image: &Path, size: u64) -> Result<(), nix::errno::Errno> {
    let io = |e: std::io::Error| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::errno::Errno::EIO as i32));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(image).map_err(io)?;
    nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, size as i64)
}

/// Deallocates every block of the image (reads of the range are zeros after it), synced.
fn wipe(image: &Path) -> Result<(), String> {
    use nix::fcntl::FallocateFlags as F;
    let file = std::fs::OpenOptions::new().write(true).open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    nix::fcntl::fallocate(&file, F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE, 0, len as i64)
        .map_err(|e| format!("wiping {}: {e}", image.display()))?;
    file.sync_all().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_back() {
        let volumes = vec![
            Attached { volume: "data".into(), container_path: "/data".into(), read_only: false },
            Attached { volume: "ds.v2".into(), container_path: "/mnt/ds".into(), read_only: true },
        ];
        assert_eq!(label(&volumes), "data:/data:rw,ds.v2:/mnt/ds:ro");
        assert_eq!(parse_label(&label(&volumes)), volumes);
        assert!(parse_label("").is_empty());
    }

    #[test]
    fn names() {
        for good in ["a", "data", "ds.v2", "my_vol-1", &"x".repeat(64)] {
            assert!(is_plain_name(good), "{good}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a:b", "a,b", "..", &"x".repeat(65), "vol name"] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }
}
