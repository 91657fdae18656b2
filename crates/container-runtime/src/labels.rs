//! Our names on the engine: the labels every container and network of ours carries (Docker
//! is the only state, so these are the records), the ids we give containers and networks,
//! and the wall clock the `created` labels are read against. Below every other module: the
//! engine, the pool, the reaper and the domain all read them.

use std::time::SystemTime;

/// Every label we set starts with this; tenants may not use it.
pub const LABEL_PREFIX: &str = "ai.basilica.executor.";
/// A tenant's labels all start with this; any other key is refused. Tools on the host act on
/// labels of their own (Watchtower's `com.centurylinklabs.watchtower.*` recreates a container,
/// Traefik's `traefik.*` routes to it, Compose's `com.docker.compose.*` adopts it), so a tenant
/// may only name things in a namespace none of them reads.
pub const TENANT_LABEL_PREFIX: &str = "ai.basilica.tenant.";
/// Set to `false` on every tenant container: an image may carry Watchtower's label (`LABEL`
/// in its Dockerfile, which Docker copies to the container), and a Watchtower run with
/// `--label-enable` would then recreate the container outside the executor's control.
pub const LABEL_WATCHTOWER_ENABLE: &str = "com.centurylinklabs.watchtower.enable";
pub const LABEL_MANAGED: &str = "ai.basilica.executor.managed";
pub const LABEL_EXECUTOR: &str = "ai.basilica.executor.executor_id";
pub const LABEL_ID: &str = "ai.basilica.executor.id";
pub const LABEL_OWNER: &str = "ai.basilica.executor.owner";
pub const LABEL_CREATED: &str = "ai.basilica.executor.created";
pub const LABEL_TTL: &str = "ai.basilica.executor.ttl_seconds";
pub const LABEL_GPUS: &str = "ai.basilica.executor.gpus";
/// What signature verification found (`Container.image_signature`); absent when not verified.
pub const LABEL_SIGNATURE: &str = "ai.basilica.executor.image_signature";
/// The `[docker.templates]` template a container was created from (`Container.template`).
pub const LABEL_TEMPLATE: &str = "ai.basilica.executor.template";
/// Unix seconds the container was last made again to publish more ports (`Container.recreated_at`).
pub const LABEL_RECREATED: &str = "ai.basilica.executor.recreated";
/// The limits enforced after start (GPU memory, network shaping), kept with the container so a
/// restarted service enforces them again.
pub const LABEL_GPU_MEMORY: &str = "ai.basilica.executor.gpu_memory_bytes";
pub const LABEL_NETWORK_BPS: &str = "ai.basilica.executor.network_bps";
/// The container's writable-layer limit, bytes (`resources.disk_bytes`, resolved).
pub const LABEL_DISK: &str = "ai.basilica.executor.disk_bytes";
/// The GPU UUIDs a container's [`LABEL_GPUS`] names.
pub fn gpus(labels: &std::collections::HashMap<String, String>) -> impl Iterator<Item = &str> {
    labels.get(LABEL_GPUS).map_or("", String::as_str).split(',').filter(|u| !u.is_empty())
}

/// A container's writable-layer limit from its [`LABEL_DISK`]; None for one made before the
/// label (the configured limit applies to it).
pub fn disk_limit(labels: &std::collections::HashMap<String, String>) -> Option<u64> {
    labels.get(LABEL_DISK).and_then(|v| v.parse().ok())
}

/// The container's own network (one of the pool's, see `netpool`), empty when it has none.
pub const LABEL_NETWORK: &str = "ai.basilica.executor.network";
/// Label marking a network made for the pool (see `netpool`).
pub const LABEL_POOL: &str = "ai.basilica.executor.pool";

/// No randomness to name a container or network with.
#[derive(Debug, thiserror::Error)]
#[error("no randomness for a new name")]
pub struct NameError(#[source] pub getrandom::Error);

/// `prefix` and 12 random hex digits: our container ids and spare network names.
pub fn random_name(prefix: &str) -> Result<String, NameError> {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).map_err(NameError)?;
    Ok(format!("{prefix}{}", hex::encode(b)))
}

/// Whether `id` can be one of our container ids (letters, digits, `-`): anything else never
/// reaches the engine or a file name.
pub fn is_container_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Wall-clock Unix seconds, what the `created` labels hold.
pub fn now_secs() -> u64 {
    unix_secs(&common::clock::SystemClock)
}

/// Unix seconds on `clock`.
pub fn unix_secs(clock: &dyn common::clock::Clock) -> u64 {
    clock.system_time().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_prefix_and_twelve_hex_digits() {
        let name = random_name("c-").unwrap();
        assert_eq!(name.len(), 14);
        assert!(name.starts_with("c-") && name[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert!(is_container_id(&name));
        assert!(!is_container_id("") && !is_container_id("../etc") && !is_container_id("a b"));
        let clock = common::clock::ManualClock::default();
        clock.advance(std::time::Duration::from_secs(90));
        assert_eq!(unix_secs(&clock), 90);
    }
}
