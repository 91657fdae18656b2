//! Removing a container of ours and everything that goes with it: the container, its network,
//! its staged bind mounts, its shaping device and its recorded stop reason. One path for a `remove` call and for the
//! reaper, so neither leaves something behind that the other would.

use crate::engine::{Engine, EngineError};
use crate::mounts::Staging;
use crate::stops::StopReasons;

/// Removes container `id` (forced) and its network (`network`, may be empty), then its staged
/// bind mounts, shaping device and stop reason; a shaping device that cannot go is logged and
/// left to the reaper.
pub async fn remove_everything(
    engine: &Engine,
    stops: &StopReasons,
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
    stops.forget(id);
    Ok(())
}
