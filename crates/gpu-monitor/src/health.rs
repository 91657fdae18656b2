//! Each GPU's health, judged every collection round: `healthy`, `degraded` (the round could not
//! read it: an NVML error) or `unhealthy` with a reason and since when. Unhealthy comes from a
//! critical Xid (those in `[system] ignored_xids`, by default the application Xids 13, 31, 43,
//! 45, 68 and 109, aside), new uncorrectable ECC errors, a pending row remapping, a GPU gone from
//! NVML's list or from the kernel's, or the miner's quarantine. Unhealthy is sticky: it stays
//! until the miner releases the GPU (after a reset, a reboot or a swap), and it is kept with the
//! quarantines in `data_dir/gpu-health.json` (a durable file), so a restart forgets neither.
//! container-runtime never gives an unhealthy GPU to a container and stops work on one that
//! turns unhealthy.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use common::durable::{DurableFile, Opened, StoreError};
use common::proto::gpu::v1::{GpuHealth, GpuInfo, GpuSample};
use serde::{Deserialize, Serialize};

pub const HEALTHY: &str = "healthy";
pub const DEGRADED: &str = "degraded";
pub const UNHEALTHY: &str = "unhealthy";

/// The longest quarantine reason kept.
pub const MAX_REASON: usize = 256;

/// A state with its reason and since when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marked {
    reason: String,
    since: i64,
}

/// What is kept of a GPU across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    index: u32,
    pci_bus_id: String,
    /// Sticky until released.
    unhealthy: Option<Marked>,
    /// The miner's.
    quarantine: Option<Marked>,
}

/// What a round needs to remember of a GPU, not kept: the counters seen (new Xids and new
/// ECC errors are judged against them) and a degraded state.
#[derive(Debug, Clone, Default)]
struct Seen {
    xids: u64,
    ecc_uncorrected: Option<u64>,
    degraded: Option<Marked>,
}

#[derive(Debug, Default)]
struct Book {
    gpus: BTreeMap<String, Kept>,
    seen: BTreeMap<String, Seen>,
}

/// What one collection round read.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    /// The GPUs NVML lists now; None when the inventory could not be read.
    pub inventory: Option<&'a [GpuInfo]>,
    pub samples: &'a [GpuSample],
    /// The PCI bus ids the kernel driver lists; None when they could not be read.
    pub kernel_bus_ids: Option<&'a [String]>,
    /// Why the GPU figures could not be read, if they could not.
    pub error: Option<&'a str>,
    pub now: i64,
}

/// A GPU that changed state in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub uuid: String,
    pub from: String,
    pub to: GpuHealth,
}

/// Why a quarantine or a release was refused, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("uuid: `{0}` is not a GPU of this node")]
    Unknown(String),
    #[error("reason: longer than {MAX_REASON} bytes")]
    ReasonTooLong,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The health of every GPU this node has seen, and its file.
#[derive(Debug)]
pub struct Health {
    file: DurableFile,
    book: Mutex<Book>,
    ignored_xids: Vec<u64>,
}

impl Health {
    /// The health kept in `data_dir/gpu-health.json` (every GPU healthy when there is none).
    pub fn open(data_dir: &std::path::Path, ignored_xids: &[u64]) -> Result<Self, StoreError> {
        let file = DurableFile::new(data_dir.join("gpu-health.json"), "GPU health");
        let (gpus, opened) = file.open::<BTreeMap<String, Kept>>(BTreeMap::len)?;
        if let Opened::Recovered { moved_to, .. } = &opened {
            tracing::warn!(moved_to = %moved_to.display(), "gpu-health.json was damaged; its last good copy is back");
        }
        for (uuid, kept) in &gpus {
            if let Some(m) = kept.quarantine.as_ref().or(kept.unhealthy.as_ref()) {
                tracing::warn!(uuid, reason = %m.reason, since = m.since, "GPU kept out of rentals until it is released");
            }
        }
        let book = Book { gpus, seen: BTreeMap::new() };
        Ok(Self { file, book: Mutex::new(book), ignored_xids: ignored_xids.to_vec() })
    }

    /// Every GPU's health now, by index.
    pub fn current(&self) -> Vec<GpuHealth> {
        let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        report(&book)
    }

    /// Judges a round; returns the GPUs whose state changed. What must outlive a restart is
    /// written before it is reported.
    pub fn judge(&self, round: Round<'_>) -> Result<Vec<Change>, StoreError> {
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let before: BTreeMap<String, String> = report(&book).into_iter().map(|h| (h.uuid, h.state)).collect();
        let kept_before = book.gpus.clone();
        if let Some(inventory) = round.inventory {
            for g in inventory {
                let kept = book.gpus.entry(g.uuid.clone()).or_default();
                kept.index = g.index;
                kept.pci_bus_id = g.pci_bus_id.clone();
            }
        }
        let uuids: Vec<String> = book.gpus.keys().cloned().collect();
        for uuid in uuids {
            let info = round.inventory.and_then(|inv| inv.iter().find(|g| g.uuid == uuid));
            let sample = round.samples.iter().find(|s| s.uuid == uuid);
            let bus_id = book.gpus[&uuid].pci_bus_id.clone();
            let seen = book.seen.entry(uuid.clone()).or_default();
            let found = findings(seen, &bus_id, info.is_some(), sample, &round, &self.ignored_xids);
            seen.degraded = match (round.error, seen.degraded.take()) {
                (None, _) => None,
                (Some(_), Some(earlier)) => Some(earlier),
                (Some(e), None) => Some(Marked { reason: format!("NVML error: {e}"), since: round.now }),
            };
            let kept = book.gpus.get_mut(&uuid).expect("listed above");
            if kept.unhealthy.is_none()
                && let Some(reason) = found
            {
                kept.unhealthy = Some(Marked { reason, since: round.now });
            }
        }
        if book.gpus != kept_before {
            self.file.store(&book.gpus)?;
        }
        Ok(report(&book)
            .into_iter()
            .filter(|h| before.get(&h.uuid) != Some(&h.state))
            .map(|h| Change { uuid: h.uuid.clone(), from: before.get(&h.uuid).cloned().unwrap_or_default(), to: h })
            .collect())
    }

    /// Takes GPU `uuid` out of rentals for `reason` (kept until released).
    pub fn quarantine(&self, uuid: &str, reason: &str, now: i64) -> Result<GpuHealth, HealthError> {
        if reason.len() > MAX_REASON {
            return Err(HealthError::ReasonTooLong);
        }
        self.change(uuid, |kept| {
            let since = kept.quarantine.as_ref().map_or(now, |q| q.since);
            kept.quarantine = Some(Marked { reason: reason.to_owned(), since });
        })
    }

    /// Puts GPU `uuid` back: its quarantine and its unhealthy state end, and new Xids and ECC
    /// errors are judged from what it has now.
    pub fn release(&self, uuid: &str) -> Result<GpuHealth, HealthError> {
        let health = self.change(uuid, |kept| {
            kept.quarantine = None;
            kept.unhealthy = None;
        })?;
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(seen) = book.seen.get_mut(uuid) {
            seen.ecc_uncorrected = None;
        }
        Ok(health)
    }

    fn change(&self, uuid: &str, apply: impl FnOnce(&mut Kept)) -> Result<GpuHealth, HealthError> {
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let mut gpus = book.gpus.clone();
        apply(gpus.get_mut(uuid).ok_or_else(|| HealthError::Unknown(uuid.to_owned()))?);
        self.file.store(&gpus)?;
        book.gpus = gpus;
        let health = report(&book).into_iter().find(|h| h.uuid == uuid).expect("known");
        tracing::warn!(uuid, state = %health.state, reason = %health.reason, "GPU health set by the miner");
        Ok(health)
    }
}

/// Why a GPU is unhealthy in this round, if it is; updates the counters seen.
fn findings(
    seen: &mut Seen,
    bus_id: &str,
    listed: bool,
    sample: Option<&GpuSample>,
    round: &Round<'_>,
    ignored_xids: &[u64],
) -> Option<String> {
    if round.inventory.is_some() && !listed {
        return Some("missing from NVML's GPU list".to_owned());
    }
    if let Some(kernel) = round.kernel_bus_ids
        && listed
        && !crate::kernel::lists(kernel, bus_id)
    {
        return Some(format!("missing from the kernel's GPU list ({bus_id})"));
    }
    let sample = sample?;
    let new_xids = sample.xid_count.saturating_sub(seen.xids).min(sample.xid_events.len() as u64) as usize;
    seen.xids = sample.xid_count;
    let recent = &sample.xid_events[sample.xid_events.len() - new_xids..];
    if let Some(xid) = recent.iter().find(|x| !ignored_xids.contains(x)) {
        return Some(format!("Xid {xid}"));
    }
    if sample.remapping_pending {
        return Some("row remapping pending (the GPU needs a reset)".to_owned());
    }
    let baseline = *seen.ecc_uncorrected.get_or_insert(sample.ecc_errors_uncorrected);
    if sample.ecc_errors_uncorrected > baseline {
        return Some(format!("{} new uncorrectable ECC errors", sample.ecc_errors_uncorrected - baseline));
    }
    None
}

/// Every GPU's health from the book, by index.
fn report(book: &Book) -> Vec<GpuHealth> {
    let mut all: Vec<GpuHealth> = book
        .gpus
        .iter()
        .map(|(uuid, kept)| {
            let degraded = book.seen.get(uuid).and_then(|s| s.degraded.as_ref());
            let (state, marked) = match (&kept.quarantine, &kept.unhealthy, degraded) {
                (Some(q), _, _) => {
                    (UNHEALTHY, Some(Marked { reason: format!("quarantined: {}", q.reason), ..q.clone() }))
                }
                (None, Some(u), _) => (UNHEALTHY, Some(u.clone())),
                (None, None, Some(d)) => (DEGRADED, Some(d.clone())),
                (None, None, None) => (HEALTHY, None),
            };
            GpuHealth {
                uuid: uuid.clone(),
                index: kept.index,
                state: state.to_owned(),
                reason: marked.as_ref().map(|m| m.reason.clone()).unwrap_or_default(),
                since: marked.map_or(0, |m| m.since),
                quarantined: kept.quarantine.is_some(),
            }
        })
        .collect();
    all.sort_by(|a, b| (a.index, &a.uuid).cmp(&(b.index, &b.uuid)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(index: u32, uuid: &str) -> GpuInfo {
        GpuInfo { index, uuid: uuid.into(), pci_bus_id: format!("00000000:0{index}:00.0"), ..GpuInfo::default() }
    }

    fn sample(uuid: &str, xids: &[u64], ecc: u64) -> GpuSample {
        GpuSample {
            uuid: uuid.into(),
            xid_events: xids.to_vec(),
            xid_count: xids.len() as u64,
            ecc_errors_uncorrected: ecc,
            ..GpuSample::default()
        }
    }

    const IGNORED: &[u64] = &[13, 31, 43, 45, 68, 109];

    fn round<'a>(inventory: &'a [GpuInfo], samples: &'a [GpuSample], now: i64) -> Round<'a> {
        Round { inventory: Some(inventory), samples, kernel_bus_ids: None, error: None, now }
    }

    fn states(health: &Health) -> Vec<(String, String)> {
        health.current().into_iter().map(|h| (h.state, h.reason)).collect()
    }

    #[test]
    fn critical_xids_ecc_and_remaps_make_a_gpu_unhealthy_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::open(dir.path(), IGNORED).unwrap();
        let inv = [info(0, "GPU-a"), info(1, "GPU-b")];
        health.judge(round(&inv, &[sample("GPU-a", &[], 2), sample("GPU-b", &[], 0)], 10)).unwrap();
        assert_eq!(states(&health), [(HEALTHY.into(), String::new()), (HEALTHY.into(), String::new())]);
        // Application Xids are the tenant's own doing; old ECC errors are the baseline.
        let changes = health.judge(round(&inv, &[sample("GPU-a", &[13, 43], 2), sample("GPU-b", &[], 0)], 11)).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        let changes = health.judge(round(&inv, &[sample("GPU-a", &[13, 43, 79], 2), sample("GPU-b", &[], 1)], 12));
        let changes = changes.unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(
            (changes[0].to.state.as_str(), changes[0].to.reason.as_str(), changes[0].to.since),
            (UNHEALTHY, "Xid 79", 12)
        );
        assert_eq!(changes[1].to.reason, "1 new uncorrectable ECC errors");
        // Sticky: the Xid scrolled away, still unhealthy; kept across a restart.
        health.judge(round(&inv, &[sample("GPU-a", &[], 2), sample("GPU-b", &[], 1)], 13)).unwrap();
        let again = Health::open(dir.path(), IGNORED).unwrap();
        assert_eq!(states(&again)[0], (UNHEALTHY.into(), "Xid 79".into()));
        // Released: healthy, the ECC count it has now is the new baseline.
        assert_eq!(again.release("GPU-b").unwrap().state, HEALTHY);
        assert!(again.judge(round(&inv, &[sample("GPU-a", &[], 2), sample("GPU-b", &[], 1)], 14)).unwrap().is_empty());
        assert_eq!(states(&again)[1].0, HEALTHY);
        let pending = GpuSample { remapping_pending: true, ..sample("GPU-b", &[], 1) };
        again.judge(round(&inv, &[sample("GPU-a", &[], 2), pending], 15)).unwrap();
        assert_eq!(states(&again)[1].1, "row remapping pending (the GPU needs a reset)");
    }

    #[test]
    fn a_gpu_gone_from_nvml_or_the_kernel_is_unhealthy_and_errors_degrade() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::open(dir.path(), IGNORED).unwrap();
        let both = [info(0, "GPU-a"), info(1, "GPU-b")];
        health.judge(round(&both, &[], 1)).unwrap();
        let changes = health.judge(round(&both[..1], &[], 2)).unwrap();
        assert_eq!(changes[0].to.reason, "missing from NVML's GPU list");
        let kernel = ["0000:01:00.0".to_owned()];
        health.judge(Round { kernel_bus_ids: Some(&kernel[..]), ..round(&both, &[], 3) }).unwrap();
        assert_eq!(states(&health)[0].1, "missing from the kernel's GPU list (00000000:00:00.0)");
        let dir = tempfile::tempdir().unwrap();
        let health = Health::open(dir.path(), IGNORED).unwrap();
        health.judge(round(&both, &[], 1)).unwrap();
        health.judge(Round { inventory: None, error: Some("timed out"), ..round(&both, &[], 2) }).unwrap();
        assert_eq!(states(&health)[0], (DEGRADED.into(), "NVML error: timed out".into()));
        health.judge(round(&both, &[], 3)).unwrap();
        assert_eq!(states(&health)[0].0, HEALTHY);
    }

    #[test]
    fn quarantine_is_the_miners_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::open(dir.path(), IGNORED).unwrap();
        health.judge(round(&[info(0, "GPU-a")], &[], 1)).unwrap();
        let q = health.quarantine("GPU-a", "fan noise", 5).unwrap();
        assert_eq!(
            (q.state.as_str(), q.reason.as_str(), q.since, q.quarantined),
            (UNHEALTHY, "quarantined: fan noise", 5, true)
        );
        assert!(matches!(health.quarantine("GPU-z", "", 5), Err(HealthError::Unknown(_))));
        assert!(matches!(health.quarantine("GPU-a", &"x".repeat(300), 5), Err(HealthError::ReasonTooLong)));
        let again = Health::open(dir.path(), IGNORED).unwrap();
        assert!(again.current()[0].quarantined);
        assert_eq!(again.release("GPU-a").unwrap().state, HEALTHY);
        assert!(!Health::open(dir.path(), IGNORED).unwrap().current()[0].quarantined);
    }
}
