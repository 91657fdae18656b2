//! Images on the public API: `PullImage` with the engine's progress, `ListImages`,
//! `RemoveImage`, and a round of the cache's collector (see `images`).

use std::collections::{HashMap, HashSet};

use bollard::models::ContainerSummary;
use common::proto::runtime::v1 as pb;
use tokio::sync::mpsc;

use super::{Runtime, RuntimeError};
use crate::admission::PullStep;
use crate::labels::LABEL_ID;
use crate::reference::ImageRef;

/// Steps of a pull waiting for a slow reader; past it steps are left out.
const PROGRESS_QUEUE: usize = 64;

/// A pull's progress, then the image (or why it failed).
pub type PullSteps = mpsc::Receiver<Result<pb::PullProgress, RuntimeError>>;

impl Runtime {
    /// `text` as a reference on the registry allow-list.
    pub(super) fn allowed_image(&self, text: &str) -> Result<ImageRef, RuntimeError> {
        let image = ImageRef::parse(text, &self.config.registry.url).map_err(RuntimeError::BadImage)?;
        self.policy.check(&image).map_err(RuntimeError::ImageNotAllowed)?;
        Ok(image)
    }

    /// Pulls `image` as a create would (signature policy, then the engine), in a task of its
    /// own: the steps come as the engine sends them, the image last. A pull goes before
    /// prefetch, like a create; the caller going away does not stop it.
    pub async fn pull_image(&self, request: pb::PullImageRequest) -> Result<PullSteps, RuntimeError> {
        let image = self.allowed_image(&request.image)?;
        let (tx, rx) = mpsc::channel(PROGRESS_QUEUE);
        let images = self.images.clone();
        tokio::spawn(async move {
            let _demand = images.demand().await;
            let (steps_tx, mut steps) = mpsc::channel::<PullStep>(PROGRESS_QUEUE);
            let forward = {
                let tx = tx.clone();
                async move {
                    while let Some(step) = steps.recv().await {
                        let progress = pb::PullProgress {
                            status: step.status,
                            layer: step.layer,
                            current_bytes: step.current,
                            total_bytes: step.total,
                            image: None,
                        };
                        let _ = tx.try_send(Ok(progress));
                    }
                }
            };
            let pull = async {
                let admitted = images.admit(&image, &request.owner, Some(&steps_tx)).await;
                drop(steps_tx);
                admitted
            };
            let (admitted, ()) = tokio::join!(pull, forward);
            let last = match admitted {
                Ok(admitted) => {
                    let described = images.describe_pulled(&image, &admitted).await;
                    Ok(pb::PullProgress { status: "ready".to_owned(), image: Some(described), ..Default::default() })
                }
                Err(e) => Err(RuntimeError::from(e)),
            };
            let _ = tx.send(last).await;
        });
        Ok(rx)
    }

    /// The image cache and the prefetch list.
    pub async fn list_images(&self) -> Result<pb::ListImagesResponse, RuntimeError> {
        let ours = self.engine.list_ours().await?;
        Ok(self.images.list(&self.containers_by_image(&ours)).await)
    }

    /// Removes a cached image that no container has and `prefetch` does not list.
    pub async fn remove_image(&self, text: &str) -> Result<(), RuntimeError> {
        let image = ImageRef::parse(text, &self.config.registry.url).map_err(RuntimeError::BadImage)?;
        let ours = self.engine.list_ours().await?;
        Ok(self.images.remove(&image, &self.containers_by_image(&ours)).await?)
    }

    /// One round of the image collector (see `images`); the references it removed.
    pub async fn collect_images(&self) -> Result<Vec<String>, RuntimeError> {
        if !self.images.over_high_water() {
            return Ok(Vec::new());
        }
        let ours = self.engine.list_ours().await?;
        let in_use: HashSet<String> = self.containers_by_image(&ours).into_keys().collect();
        Ok(self.images.collect(&in_use).await)
    }

    /// The reference each of our containers was created from (as the cache records what it
    /// pulled) → our ids of those containers. Removing one reference of an image that has
    /// others leaves a container made from another one alone; the engine itself refuses to
    /// remove an image's last reference while any container has it.
    fn containers_by_image(&self, ours: &[ContainerSummary]) -> HashMap<String, Vec<String>> {
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        for c in ours {
            let (Some(image), Some(id)) = (&c.image, c.labels.as_ref().and_then(|l| l.get(LABEL_ID))) else {
                continue;
            };
            let Ok(reference) = ImageRef::parse(image, &self.config.registry.url) else { continue };
            users.entry(reference.to_string()).or_default().push(id.clone());
        }
        users
    }
}
