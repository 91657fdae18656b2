//! `[docker.images]`: images made ready before a renter asks (prefetch) and the image cache's
//! garbage collector (container-runtime).

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::ByteSize;

/// `[docker.images]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Images pulled while nothing else is being created or pulled, in this order, so that a
    /// renter's first create finds them: each from `[docker.registry] allowed_registries` and
    /// through its signature policy like any pull. A create or a `PullImage` that arrives
    /// meanwhile goes first (the prefetch pull is broken off and taken up again after). Never
    /// removed by the garbage collector.
    pub prefetch: Vec<String>,
    /// High-water mark of the image cache, bytes: the images the executor pulled (each its
    /// size as the engine reports it). Past it, the least recently used of them that no
    /// container has and `prefetch` does not list are removed until the cache is under it.
    /// Images the executor did not pull (the operator's own) are never counted nor removed.
    pub gc_high_water_bytes: ByteSize,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self { prefetch: Vec::new(), gc_high_water_bytes: ByteSize::new(200 << 30) }
    }
}

impl ImagesConfig {
    pub(super) fn validate(&self, v: &mut Issues) {
        v.range("docker.images.gc_high_water_bytes", self.gc_high_water_bytes.get() as f64, 0.0, 1e16);
        for (i, image) in self.prefetch.iter().enumerate() {
            if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
                v.fail(&format!("docker.images.prefetch[{i}]"), format!("`{image}` is not an image reference"));
            } else if self.prefetch[..i].contains(image) {
                v.fail(&format!("docker.images.prefetch[{i}]"), format!("`{image}` is listed twice"));
            }
        }
    }
}
