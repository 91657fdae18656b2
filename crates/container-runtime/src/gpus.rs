//! Which GPUs a container gets: tenants may have the GPUs that `[docker.gpu_config]
//! visible_devices` names (by index or UUID) among those gpu-monitor reports, each GPU to one
//! container at a time, assigned by UUID. What is in use is read from our containers' labels,
//! so a restart forgets nothing; the caller holds the create lock, so concurrent creates never
//! get the same GPU.

use std::collections::BTreeMap;

use common::proto::gpu::v1::GpuInfo;

/// Why GPUs cannot be assigned, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("gpu_uuids: `{0}` is not a GPU this executor gives to tenants")]
    Unknown(String),
    #[error("gpu_uuids: `{uuid}` is assigned to container {container}")]
    Busy { uuid: String, container: String },
    #[error("gpu_count: {asked} requested, {free} free of {total}")]
    NotEnough { asked: u32, free: usize, total: usize },
    #[error("gpu_count and gpu_uuids: give one or the other")]
    Both,
    #[error("gpu_uuids: `{0}` is listed twice")]
    Duplicate(String),
}

/// The GPUs tenants may have: `visible` is `None` for all, or indices and UUIDs.
pub fn tenant_gpus(inventory: &[GpuInfo], visible: Option<&[String]>) -> Vec<String> {
    inventory
        .iter()
        .filter(|g| visible.is_none_or(|v| v.iter().any(|d| *d == g.uuid || d.parse::<u32>().ok() == Some(g.index))))
        .map(|g| g.uuid.clone())
        .collect()
}

/// Picks GPUs for a request. `in_use` maps GPU UUID → the container holding it.
pub fn assign(
    candidates: &[String],
    in_use: &BTreeMap<String, String>,
    count: u32,
    uuids: &[String],
) -> Result<Vec<String>, GpuError> {
    if count > 0 && !uuids.is_empty() {
        return Err(GpuError::Both);
    }
    if !uuids.is_empty() {
        for (i, uuid) in uuids.iter().enumerate() {
            if uuids[..i].contains(uuid) {
                return Err(GpuError::Duplicate(uuid.clone()));
            }
            if !candidates.contains(uuid) {
                return Err(GpuError::Unknown(uuid.clone()));
            }
            if let Some(container) = in_use.get(uuid) {
                return Err(GpuError::Busy { uuid: uuid.clone(), container: container.clone() });
            }
        }
        return Ok(uuids.to_vec());
    }
    let free: Vec<String> = candidates.iter().filter(|u| !in_use.contains_key(*u)).cloned().collect();
    if (count as usize) > free.len() {
        return Err(GpuError::NotEnough { asked: count, free: free.len(), total: candidates.len() });
    }
    Ok(free.into_iter().take(count as usize).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: &str) -> GpuInfo {
        GpuInfo { index, uuid: uuid.into(), ..GpuInfo::default() }
    }

    #[test]
    fn visible_devices_select_by_index_or_uuid() {
        let inv = [gpu(0, "GPU-a"), gpu(1, "GPU-b"), gpu(2, "GPU-c")];
        assert_eq!(tenant_gpus(&inv, None), ["GPU-a", "GPU-b", "GPU-c"]);
        assert_eq!(tenant_gpus(&inv, Some(&["2".into(), "GPU-a".into()])), ["GPU-a", "GPU-c"]);
        assert!(tenant_gpus(&inv, Some(&["7".into()])).is_empty());
    }

    #[test]
    fn a_gpu_goes_to_one_container_at_a_time() {
        let candidates: Vec<String> = ["GPU-a", "GPU-b", "GPU-c"].map(String::from).to_vec();
        let in_use = BTreeMap::from([("GPU-a".to_owned(), "c-1".to_owned())]);
        assert_eq!(assign(&candidates, &in_use, 2, &[]).unwrap(), ["GPU-b", "GPU-c"]);
        assert_eq!(assign(&candidates, &in_use, 3, &[]), Err(GpuError::NotEnough { asked: 3, free: 2, total: 3 }));
        assert_eq!(assign(&candidates, &in_use, 0, &["GPU-c".into()]).unwrap(), ["GPU-c"]);
        assert_eq!(
            assign(&candidates, &in_use, 0, &["GPU-a".into()]),
            Err(GpuError::Busy { uuid: "GPU-a".into(), container: "c-1".into() })
        );
        assert_eq!(assign(&candidates, &in_use, 0, &["GPU-z".into()]), Err(GpuError::Unknown("GPU-z".into())));
        assert_eq!(
            assign(&candidates, &in_use, 0, &["GPU-b".into(), "GPU-b".into()]),
            Err(GpuError::Duplicate("GPU-b".into()))
        );
        assert_eq!(assign(&candidates, &in_use, 1, &["GPU-b".into()]), Err(GpuError::Both));
        assert!(assign(&candidates, &in_use, 0, &[]).unwrap().is_empty());
    }
}
