//! The image cache: images made ready before a renter asks for them. Every pull goes through
//! [`Admission`] (allow-list checked by the caller, signature policy, the engine's pull); an
//! image the executor pulled is recorded in `data_dir/images.json` (a [`DurableFile`]) with
//! when it was pulled and last asked for. Images the engine had before (the operator's own)
//! are never recorded, counted or removed.
//!
//! `[docker.images] prefetch` images are pulled by [`Images::prefetch`] while nothing else
//! wants the registry: each create or `PullImage` holds a [`Demand`] for as long as it runs,
//! and a prefetch pull under way when one arrives is broken off (the engine keeps the layers
//! it finished) and taken up again once none is left.
//!
//! The garbage collector ([`Images::collect`]) runs with the reaper: past
//! `gc_high_water_bytes` it removes the least recently used cached images that no container
//! has and `prefetch` does not list, until the cache is under the mark. It takes the cache's
//! write lock, which every [`Demand`] holds for reading, so no image goes between a create's
//! admission and its container.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use common::config::ImagesConfig;
use common::durable::{DurableFile, Opened, StoreError};
use common::proto::runtime::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedRwLockReadGuard, RwLock, watch};

use crate::admission::{Admission, AdmissionError, Admitted, Progress};
use crate::reference::{ImageRef, RegistryPolicy};

/// Who the signature decision of a prefetch pull is recorded for.
pub const PREFETCH_OWNER: &str = "prefetch";
/// How often the prefetch list is looked over once everything on it is there.
const PREFETCH_RECHECK: Duration = Duration::from_secs(30);
/// The first wait before a failed prefetch pull is tried again; it doubles up to
/// [`PREFETCH_RETRY_MAX`].
const PREFETCH_RETRY: Duration = Duration::from_secs(30);
const PREFETCH_RETRY_MAX: Duration = Duration::from_secs(3600);

/// Why the image cache cannot be set up; each names the key or the file.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("docker.images.prefetch[{index}]: {message}")]
    Prefetch { index: usize, message: String },
    #[error("docker.templates.{name}.image: {message}")]
    Template { name: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an image call failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image: `{image}` is not in the executor's image cache (only images it pulled can be removed)")]
    NotCached { image: String },
    #[error("image: `{image}` is listed in docker.images.prefetch; take it off the list first")]
    Prefetched { image: String },
    #[error("image: `{image}` is used by container(s) {}; remove them first", .containers.join(", "))]
    InUse { image: String, containers: Vec<String> },
    /// The engine refused the removal: another container (not ours) uses it.
    #[error("image: `{image}` is used by a container the executor does not manage")]
    Conflict { image: String, source: DockerError },
    #[error("image: the engine failed removing `{image}`")]
    Engine { image: String, source: DockerError },
    #[error("image cache: {0}")]
    Store(#[from] StoreError),
}

/// A cached image, as `images.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What the engine has: the reference asked for, or pinned by digest.
    pub pulled: String,
    pub id: String,
    pub size_bytes: u64,
    pub pulled_at: i64,
    pub last_used_at: i64,
    pub signature: String,
}

/// Where a prefetch-listed image stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prefetch {
    Waiting,
    Pulling,
    /// The engine has it.
    Ready,
    /// The last try failed; the next is not before `retry_at`.
    Failed {
        why: String,
        retry_at: tokio::time::Instant,
        backoff: Duration,
    },
}

/// A create or a pull under way: prefetch yields to it, the collector waits for it.
#[derive(Debug)]
pub struct Demand {
    count: watch::Sender<usize>,
    _read: OwnedRwLockReadGuard<()>,
}

impl Drop for Demand {
    fn drop(&mut self) {
        self.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The image cache of the service.
pub struct Images {
    docker: Docker,
    admission: Arc<Admission>,
    file: DurableFile,
    /// Reference asked for (canonical) → record; written through to `file`.
    records: Mutex<BTreeMap<String, Record>>,
    prefetch: Vec<ImageRef>,
    states: Mutex<HashMap<String, Prefetch>>,
    high_water: u64,
    demand: watch::Sender<usize>,
    lock: Arc<RwLock<()>>,
    /// The collector said the cache stays over its mark (said once until it is under).
    stays_over: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").field("prefetch", &self.prefetch).field("high_water", &self.high_water).finish()
    }
}

/// The prefetch list, each reference parsed and on the allow-list; errors name the entry.
pub fn parse_prefetch(
    config: &ImagesConfig,
    default_registry: &str,
    policy: &RegistryPolicy,
) -> Result<Vec<ImageRef>, SetupError> {
    config
        .prefetch
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let failed = |message: String| SetupError::Prefetch { index, message };
            let image = ImageRef::parse(text, default_registry).map_err(|e| failed(e.to_string()))?;
            policy.check(&image).map_err(|e| failed(e.to_string()))?;
            Ok(image)
        })
        .collect()
}

/// Every template's image parses and is on the allow-list; errors name the template.
pub fn check_templates(config: &common::config::DockerConfig, policy: &RegistryPolicy) -> Result<(), SetupError> {
    for (name, template) in &config.templates {
        let failed = |message: String| SetupError::Template { name: name.clone(), message };
        let image = ImageRef::parse(&template.image, &config.registry.url).map_err(|e| failed(e.to_string()))?;
        policy.check(&image).map_err(|e| failed(e.to_string()))?;
    }
    Ok(())
}

impl Images {
    /// The cache kept in `data_dir/images.json`; `prefetch` from [`parse_prefetch`].
    pub fn open(
        docker: Docker,
        admission: Arc<Admission>,
        data_dir: &std::path::Path,
        config: &ImagesConfig,
        prefetch: Vec<ImageRef>,
    ) -> Result<Self, SetupError> {
        let file = DurableFile::new(data_dir.join("images.json"), "image cache");
        let (records, opened) = file.open::<BTreeMap<String, Record>>(BTreeMap::len)?;
        if let Opened::Recovered { moved_to, entries } = &opened {
            tracing::warn!(moved_to = %moved_to.display(), entries, "images.json was damaged; its last good copy is back");
        }
        let states = prefetch.iter().map(|i| (i.to_string(), Prefetch::Waiting)).collect();
        let images = Self {
            docker,
            admission,
            file,
            records: Mutex::new(records),
            prefetch,
            states: Mutex::new(states),
            high_water: config.gc_high_water_bytes.get(),
            demand: watch::channel(0).0,
            lock: Arc::new(RwLock::new(())),
            stays_over: std::sync::atomic::AtomicBool::new(false),
        };
        images.set_gauge();
        Ok(images)
    }

    /// Marks a create or pull under way until the guard goes (see [`Demand`]).
    pub async fn demand(&self) -> Demand {
        self.demand.send_modify(|n| *n += 1);
        let count = self.demand.clone();
        // Made before waiting, so prefetch yields while the collector finishes.
        Demand { count, _read: Arc::clone(&self.lock).read_owned().await }
    }

    /// Admits `image` (signature, pull) for `owner`, recording it when the executor pulled it
    /// and noting the use when it is cached. The caller holds a [`Demand`].
    pub async fn admit(
        &self,
        image: &ImageRef,
        owner: &str,
        progress: Option<&Progress>,
    ) -> Result<Admitted, AdmissionError> {
        let admitted = self.admission.admit(image, owner, progress).await?;
        let key = image.to_string();
        let now = crate::labels::now_secs() as i64;
        if admitted.pulled {
            let inspect = self.docker.inspect_image(&admitted.image.to_string()).await;
            let (id, size) = match &inspect {
                Ok(i) => (i.id.clone().unwrap_or_default(), i.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0)),
                Err(_) => (String::new(), 0),
            };
            let record = Record {
                pulled: admitted.image.to_string(),
                id,
                size_bytes: size,
                pulled_at: now,
                last_used_at: now,
                signature: admitted.signature.clone(),
            };
            self.update(|records| {
                records.insert(key, record);
                true
            });
        } else {
            // An image the executor did not pull costs no write.
            self.update(|records| match records.get_mut(&key) {
                Some(record) => {
                    record.last_used_at = now;
                    true
                }
                None => false,
            });
        }
        Ok(admitted)
    }

    /// Changes the records and, when `change` says it changed them, writes them; a write that
    /// fails is logged (the records in memory stay right, and the next change writes them
    /// again).
    fn update(&self, change: impl FnOnce(&mut BTreeMap<String, Record>) -> bool) {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if change(&mut records)
            && let Err(e) = self.file.store(&*records)
        {
            tracing::error!(error = %e, "cannot write the image cache");
        }
        metrics::gauge!("executor_container_runtime_image_cache_bytes").set(total(&records) as f64);
    }

    fn set_gauge(&self) {
        self.update(|_| false);
    }

    fn is_prefetch(&self, reference: &str) -> bool {
        self.prefetch.iter().any(|p| p.to_string() == reference)
    }

    /// The image as a caller sees it; `containers`: image reference → our containers created
    /// from it.
    fn describe(&self, reference: &str, record: &Record, containers: &HashMap<String, Vec<String>>) -> pb::Image {
        pb::Image {
            reference: reference.to_owned(),
            pulled: record.pulled.clone(),
            id: record.id.clone(),
            size_bytes: record.size_bytes,
            pulled_at: record.pulled_at,
            last_used_at: record.last_used_at,
            containers: containers.get(&record.pulled).cloned().unwrap_or_default(),
            prefetch: self.is_prefetch(reference),
            state: "ready".to_owned(),
            signature: record.signature.clone(),
        }
    }

    /// What `PullImage` answers last: the cached image, or what the engine has when it had it
    /// before (`not cached`).
    pub async fn describe_pulled(&self, image: &ImageRef, admitted: &Admitted) -> pb::Image {
        let reference = image.to_string();
        let record = self.records.lock().unwrap_or_else(PoisonError::into_inner).get(&reference).cloned();
        if let Some(record) = record {
            return self.describe(&reference, &record, &HashMap::new());
        }
        let inspect = self.docker.inspect_image(&admitted.image.to_string()).await.ok();
        pb::Image {
            reference,
            pulled: admitted.image.to_string(),
            id: inspect.as_ref().and_then(|i| i.id.clone()).unwrap_or_default(),
            size_bytes: inspect.and_then(|i| i.size).and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
            prefetch: self.is_prefetch(&image.to_string()),
            state: "not cached".to_owned(),
            signature: admitted.signature.clone(),
            ..Default::default()
        }
    }

    /// The cache (least recently used first) and the prefetch-listed images not there yet;
    /// records of images removed behind the executor's back are dropped.
    pub async fn list(&self, containers: &HashMap<String, Vec<String>>) -> pb::ListImagesResponse {
        let records: Vec<(String, Record)> =
            self.records.lock().unwrap_or_else(PoisonError::into_inner).clone().into_iter().collect();
        let mut gone = Vec::new();
        for (reference, record) in &records {
            if let Err(DockerError::DockerResponseServerError { status_code: 404, .. }) =
                self.docker.inspect_image(&record.pulled).await
            {
                gone.push(reference.clone());
            }
        }
        if !gone.is_empty() {
            tracing::warn!(?gone, "cached images were removed outside the executor; forgotten");
            self.update(|r| {
                gone.iter().for_each(|g| drop(r.remove(g)));
                true
            });
        }
        let mut images: Vec<pb::Image> = records
            .iter()
            .filter(|(reference, _)| !gone.contains(reference))
            .map(|(reference, record)| self.describe(reference, record, containers))
            .collect();
        images.sort_by_key(|i| i.last_used_at);
        let cache_bytes = images.iter().map(|i| i.size_bytes).sum();
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for image in &self.prefetch {
            let reference = image.to_string();
            if images.iter().any(|i| i.reference == reference) {
                continue;
            }
            let state = match states.get(&reference) {
                Some(Prefetch::Pulling) => "pulling".to_owned(),
                Some(Prefetch::Failed { why, .. }) => format!("failed: {why}"),
                Some(Prefetch::Ready) => "not cached".to_owned(),
                Some(Prefetch::Waiting) | None => "waiting".to_owned(),
            };
            images.push(pb::Image { reference, prefetch: true, state, ..Default::default() });
        }
        pb::ListImagesResponse { images, cache_bytes, high_water_bytes: self.high_water }
    }

    /// Removes a cached image no container has and `prefetch` does not list.
    pub async fn remove(&self, image: &ImageRef, containers: &HashMap<String, Vec<String>>) -> Result<(), ImageError> {
        let reference = image.to_string();
        let _write = self.exclusive().await;
        let record = self.records.lock().unwrap_or_else(PoisonError::into_inner).get(&reference).cloned();
        let Some(record) = record else { return Err(ImageError::NotCached { image: reference }) };
        if self.is_prefetch(&reference) {
            return Err(ImageError::Prefetched { image: reference });
        }
        if let Some(users) = containers.get(&record.pulled).filter(|u| !u.is_empty()) {
            return Err(ImageError::InUse { image: reference, containers: users.clone() });
        }
        self.remove_now(&reference, &record, "request").await
    }

    /// The cache to itself, once no create or pull is under way: polled, so that creates
    /// arriving meanwhile are not queued behind a slow pull.
    async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        loop {
            if let Ok(guard) = self.lock.try_write() {
                return guard;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn remove_now(&self, reference: &str, record: &Record, reason: &'static str) -> Result<(), ImageError> {
        let options = bollard::query_parameters::RemoveImageOptions { force: false, noprune: false, platforms: None };
        match self.docker.remove_image(&record.pulled, Some(options), None).await {
            Ok(_) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(source @ DockerError::DockerResponseServerError { status_code: 409, .. }) => {
                return Err(ImageError::Conflict { image: reference.to_owned(), source });
            }
            Err(source) => return Err(ImageError::Engine { image: reference.to_owned(), source }),
        }
        self.update(|r| r.remove(reference).is_some());
        metrics::counter!("executor_container_runtime_images_removed_total", "reason" => reason).increment(1);
        tracing::info!(image = reference, size_bytes = record.size_bytes, reason, "image removed");
        Ok(())
    }

    /// Whether the cache is past its high-water mark (the collector has work).
    pub fn over_high_water(&self) -> bool {
        total(&self.records.lock().unwrap_or_else(PoisonError::into_inner)) > self.high_water
    }

    /// One round of the collector; `in_use`: the references our containers were created from.
    /// A round while a create or a pull is under way is skipped (the next one comes with the
    /// reaper), so a slow pull never holds creates up behind the collector.
    /// Returns the references it removed.
    pub async fn collect(&self, in_use: &HashSet<String>) -> Vec<String> {
        if !self.over_high_water() {
            return Vec::new();
        }
        let Ok(_write) = self.lock.try_write() else { return Vec::new() };
        let mut candidates: Vec<(String, Record)> = self
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(reference, record)| !self.is_prefetch(reference) && !in_use.contains(&record.pulled))
            .map(|(reference, record)| (reference.clone(), record.clone()))
            .collect();
        candidates.sort_by_key(|(_, r)| r.last_used_at);
        let mut removed = Vec::new();
        for (reference, record) in candidates {
            if !self.over_high_water() {
                break;
            }
            match self.remove_now(&reference, &record, "gc").await {
                Ok(()) => removed.push(reference),
                // Someone else's container has it: it stays, and so does its record.
                Err(e @ ImageError::Conflict { .. }) => tracing::debug!(error = %e, "image kept"),
                Err(e) => tracing::warn!(error = %e, "image collector"),
            }
        }
        let over = self.over_high_water();
        if over && !self.stays_over.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                cache_bytes = total(&self.records.lock().unwrap_or_else(PoisonError::into_inner)),
                high_water = self.high_water,
                "the image cache stays over docker.images.gc_high_water_bytes: what is left is in use or prefetch-listed"
            );
        }
        if !over {
            self.stays_over.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        removed
    }

    /// Pulls the prefetch list, one image at a time, whenever no create or pull is under way;
    /// never returns.
    pub async fn prefetch(self: Arc<Self>) {
        if self.prefetch.is_empty() {
            return;
        }
        let mut demand = self.demand.subscribe();
        loop {
            if demand.wait_for(|n| *n == 0).await.is_err() {
                return;
            }
            let Some(image) = self.next_prefetch().await else {
                tokio::time::sleep(PREFETCH_RECHECK).await;
                continue;
            };
            let reference = image.to_string();
            self.set_state(&reference, Prefetch::Pulling);
            tracing::info!(image = %reference, "prefetch: pulling");
            let outcome = tokio::select! {
                result = self.admit(&image, PREFETCH_OWNER, None) => Some(result),
                _ = demand.wait_for(|n| *n > 0) => None,
            };
            let state = match outcome {
                Some(Ok(_)) => {
                    tracing::info!(image = %reference, "prefetch: ready");
                    Prefetch::Ready
                }
                Some(Err(e)) => {
                    let backoff = match self.state(&reference) {
                        Some(Prefetch::Failed { backoff, .. }) => (backoff * 2).min(PREFETCH_RETRY_MAX),
                        _ => PREFETCH_RETRY,
                    };
                    tracing::warn!(image = %reference, error = %e, retry_in = ?backoff, "prefetch: pull failed");
                    let retry_at = tokio::time::Instant::now() + backoff;
                    Prefetch::Failed { why: e.to_string(), retry_at, backoff }
                }
                None => {
                    metrics::counter!("executor_container_runtime_prefetch_preempted_total").increment(1);
                    tracing::info!(image = %reference, "prefetch: broken off, a create or pull goes first");
                    Prefetch::Waiting
                }
            };
            self.set_state(&reference, state);
        }
    }

    fn state(&self, reference: &str) -> Option<Prefetch> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner).get(reference).cloned()
    }

    fn set_state(&self, reference: &str, state: Prefetch) {
        self.states.lock().unwrap_or_else(PoisonError::into_inner).insert(reference.to_owned(), state);
    }

    /// The first prefetch-listed image the engine lacks and that is not waiting out a failure.
    async fn next_prefetch(&self) -> Option<ImageRef> {
        for image in &self.prefetch {
            let reference = image.to_string();
            if let Some(Prefetch::Failed { retry_at, .. }) = self.state(&reference)
                && tokio::time::Instant::now() < retry_at
            {
                continue;
            }
            let pulled =
                self.records.lock().unwrap_or_else(PoisonError::into_inner).get(&reference).map(|r| r.pulled.clone());
            if self.docker.inspect_image(pulled.as_deref().unwrap_or(&reference)).await.is_ok() {
                if self.state(&reference) != Some(Prefetch::Ready) {
                    self.set_state(&reference, Prefetch::Ready);
                }
                continue;
            }
            return Some(image.clone());
        }
        None
    }
}

/// What the cached images take together.
fn total(records: &BTreeMap<String, Record>) -> u64 {
    records.values().map(|r| r.size_bytes).sum()
}

/// `executor validate`: every template's and every prefetch-listed image parses and is on the
/// allow-list.
pub fn check(config: &common::config::DockerConfig) -> common::check::Check {
    use common::check::Check;
    let policy = RegistryPolicy::new(&config.registry.allowed_registries);
    if let Err(e) = check_templates(config, &policy) {
        return Check::fail("templates", e.to_string());
    }
    match parse_prefetch(&config.images, &config.registry.url, &policy) {
        Ok(list) if list.is_empty() => Check::skip("image prefetch", "docker.images.prefetch is empty"),
        Ok(list) => Check::pass("image prefetch", format!("{} image(s) pulled while idle", list.len())),
        Err(e) => Check::fail("image prefetch", e.to_string()),
    }
}

/// Describes the metrics of this module.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "executor_container_runtime_image_cache_bytes",
        "Bytes the images the executor pulled take (each image's size as the engine reports it)."
    );
    metrics::describe_counter!(
        "executor_container_runtime_images_removed_total",
        "Cached images removed, by reason (gc: past docker.images.gc_high_water_bytes; request: RemoveImage)."
    );
    metrics::describe_counter!(
        "executor_container_runtime_prefetch_preempted_total",
        "Prefetch pulls broken off because a create or a pull arrived."
    );
}
