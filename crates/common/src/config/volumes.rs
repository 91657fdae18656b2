//! `[docker.volumes]`: named volumes with a hard size (container-runtime), their bounds.

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::ByteSize;

/// The smallest volume: an ext4 filesystem needs room for its journal and tables.
pub const MIN_VOLUME_BYTES: u64 = 16 << 20;

/// `[docker.volumes]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumesConfig {
    /// Largest volume one `CreateVolume` may ask for, bytes (at least 16 MiB).
    pub max_volume_bytes: ByteSize,
    /// All volumes together, bytes. Each volume's image is reserved in full on `data_dir`'s disk
    /// when it is made (a volume written full never fills the host's disk), so this is also
    /// the most of that disk volumes take.
    pub max_total_bytes: ByteSize,
}

impl Default for VolumesConfig {
    fn default() -> Self {
        Self { max_volume_bytes: ByteSize::new(100 << 30), max_total_bytes: ByteSize::new(500 << 30) }
    }
}

impl VolumesConfig {
    pub(super) fn validate(&self, v: &mut Issues) {
        let (each, all) = (self.max_volume_bytes.get() as f64, self.max_total_bytes.get() as f64);
        v.range("docker.volumes.max_volume_bytes", each, MIN_VOLUME_BYTES as f64, 1e15);
        v.range("docker.volumes.max_total_bytes", all, each.max(MIN_VOLUME_BYTES as f64), 1e16);
    }
}
