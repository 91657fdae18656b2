//! Removing a container of ours and everything that goes with it: the container, its network,
//! its staged bind mounts, its shaping device and what was recorded of it. One path for a `remove` call and for the
//! reaper, so neither leaves something behind that the other would.

use crate::engine::{Engine, EngineError};
use crate::mounts::Staging;
use crate::stops::PerContainer;

/// Removes container `id` (forced) and its network (`network`, may be empty), then its staged
/// bind mounts, shaping device and its files in `records` (stop reason, expiry, intent); a shaping device that cannot go is logged and
/// left to the reaper.
pub async fn remove_everything(
    engine: &Engine,
    records: &[&PerContainer],
    staging: &Staging,
    id: &str,
    network: &str,
) -> Result<(), EngineError> {
    engine.remove(id, true).await?;
    staging.release(id);
    if !network.is_empty() {
        engine.remove_network(network).await?;
    }
    if let Err(e) = crate::shaping::release(id).await {
        tracing::warn!(id, error = %e, "cannot remove the container's shaping device");
    }
    for record in records {
        record.forget(id);
    }
    Ok(())
}
