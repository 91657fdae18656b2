//! Which GPUs a container gets: tenants may have the GPUs that `[docker.gpu_config]
//! visible_devices` names (by index or UUID) among those gpu-monitor reports, each GPU to one
//! container at a time, assigned by UUID. What is in use is read from our containers' labels,
//! so a restart forgets nothing; the caller holds the create lock, so concurrent creates never
//! get the same GPU. A GPU gpu-monitor judges unhealthy (or in MIG mode: GPUs are rented whole)
//! is given to nobody ([`unavailable`]).

use std::collections::BTreeMap;

use common::proto::gpu::v1::GpuInfo;

/// Why GPUs cannot be assigned, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("gpu_uuids: `{0}` is not a GPU this executor gives to tenants")]
    Unknown(String),
    #[error("gpu_uuids: `{uuid}` is assigned to container {container}")]
    Busy { uuid: String, container: String },
    #[error("gpu_count: {asked} requested, {free} free of {total}{}", unusable_note(*.unusable))]
    NotEnough { asked: u32, free: usize, total: usize, unusable: usize },
    #[error("gpu_uuids: `{uuid}` cannot be given to a container: {why}")]
    Unavailable { uuid: String, why: String },
    #[error("gpu_count and gpu_uuids: give one or the other")]
    Both,
    #[error("gpu_uuids: `{0}` is listed twice")]
    Duplicate(String),
}

fn unusable_note(unusable: usize) -> String {
    if unusable == 0 { String::new() } else { format!(" ({unusable} unhealthy or in MIG mode)") }
}

/// The GPUs of `inventory` nobody may be given, and why: unhealthy (gpu-monitor's `health`) or
/// in MIG mode.
pub fn unavailable(inventory: &common::proto::gpu::v1::Inventory) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = inventory
        .health
        .iter()
        .filter(|h| h.state == "unhealthy")
        .map(|h| (h.uuid.clone(), format!("unhealthy: {}", h.reason)))
        .collect();
    for g in inventory.gpus.iter().filter(|g| g.mig_enabled) {
        out.entry(g.uuid.clone()).or_insert_with(|| {
            "in MIG mode (this executor rents whole GPUs: turn MIG off, or leave it out of visible_devices)".to_owned()
        });
    }
    out
}

/// GPU UUID → our id of the container holding it, from every container's labels.
pub fn holders<'a>(
    labels: impl IntoIterator<Item = &'a std::collections::HashMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut held = BTreeMap::new();
    for l in labels {
        let id = l.get(crate::labels::LABEL_ID).cloned().unwrap_or_default();
        for uuid in crate::labels::gpus(l) {
            held.insert(uuid.to_owned(), id.clone());
        }
    }
    held
}

/// The GPUs tenants may have: `visible` is `None` for all, or indices and UUIDs.
pub fn tenant_gpus(inventory: &[GpuInfo], visible: Option<&[String]>) -> Vec<String> {
    inventory
        .iter()
        .filter(|g| visible.is_none_or(|v| v.iter().any(|d| *d == g.uuid || d.parse::<u32>().ok() == Some(g.index))))
        .map(|g| g.uuid.clone())
        .collect()
}

/// Picks GPUs for a request. `in_use` maps GPU UUID → the container holding it,
/// `unavailable` GPU UUID → why nobody may have it.
pub fn assign(
    candidates: &[String],
    in_use: &BTreeMap<String, String>,
    unavailable: &BTreeMap<String, String>,
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
            if let Some(why) = unavailable.get(uuid) {
                return Err(GpuError::Unavailable { uuid: uuid.clone(), why: why.clone() });
            }
            if let Some(container) = in_use.get(uuid) {
                return Err(GpuError::Busy { uuid: uuid.clone(), container: container.clone() });
            }
        }
        return Ok(uuids.to_vec());
    }
    let free: Vec<String> =
        candidates.iter().filter(|u| !in_use.contains_key(*u) && !unavailable.contains_key(*u)).cloned().collect();
    if (count as usize) > free.len() {
        let unusable = candidates.iter().filter(|u| unavailable.contains_key(*u)).count();
        return Err(GpuError::NotEnough { asked: count, free: free.len(), total: candidates.len(), unusable });
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
        let none = BTreeMap::new();
        let assign = |in_use: &BTreeMap<String, String>, count, uuids: &[String]| {
            assign(&candidates, in_use, &none, count, uuids)
        };
        assert_eq!(assign(&in_use, 2, &[]).unwrap(), ["GPU-b", "GPU-c"]);
        assert_eq!(assign(&in_use, 3, &[]), Err(GpuError::NotEnough { asked: 3, free: 2, total: 3, unusable: 0 }));
        assert_eq!(assign(&in_use, 0, &["GPU-c".into()]).unwrap(), ["GPU-c"]);
        assert_eq!(
            assign(&in_use, 0, &["GPU-a".into()]),
            Err(GpuError::Busy { uuid: "GPU-a".into(), container: "c-1".into() })
        );
        assert_eq!(assign(&in_use, 0, &["GPU-z".into()]), Err(GpuError::Unknown("GPU-z".into())));
        assert_eq!(assign(&in_use, 0, &["GPU-b".into(), "GPU-b".into()]), Err(GpuError::Duplicate("GPU-b".into())));
        assert_eq!(assign(&in_use, 1, &["GPU-b".into()]), Err(GpuError::Both));
        assert!(assign(&in_use, 0, &[]).unwrap().is_empty());
    }

    #[test]
    fn unhealthy_and_mig_gpus_go_to_nobody() {
        use common::proto::gpu::v1::{GpuHealth, Inventory};
        let inventory = Inventory {
            gpus: vec![gpu(0, "GPU-a"), gpu(1, "GPU-b"), GpuInfo { mig_enabled: true, ..gpu(2, "GPU-c") }],
            health: vec![
                GpuHealth {
                    uuid: "GPU-a".into(),
                    state: "unhealthy".into(),
                    reason: "Xid 79".into(),
                    ..Default::default()
                },
                GpuHealth { uuid: "GPU-b".into(), state: "degraded".into(), ..Default::default() },
            ],
            ..Inventory::default()
        };
        let out = unavailable(&inventory);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["GPU-a", "GPU-c"]);
        let candidates: Vec<String> = ["GPU-a", "GPU-b", "GPU-c"].map(String::from).to_vec();
        let free = BTreeMap::new();
        assert_eq!(assign(&candidates, &free, &out, 1, &[]).unwrap(), ["GPU-b"]);
        let err = assign(&candidates, &free, &out, 2, &[]).unwrap_err();
        assert_eq!(err.to_string(), "gpu_count: 2 requested, 1 free of 3 (2 unhealthy or in MIG mode)");
        let err = assign(&candidates, &free, &out, 0, &["GPU-a".into()]).unwrap_err();
        assert_eq!(err.to_string(), "gpu_uuids: `GPU-a` cannot be given to a container: unhealthy: Xid 79");
        let err = assign(&candidates, &free, &out, 0, &["GPU-c".into()]).unwrap_err();
        assert!(err.to_string().contains("in MIG mode (this executor rents whole GPUs"), "{err}");
    }
}
