//! The container runtime's domain: tenant containers on the engine, by our id, within the
//! operator's limits. Create (`create`), start, stop, remove, list, reconcile after a restart
//! of the service or of the engine, reap and GPU memory enforcement (`lifecycle`), logs, stats
//! and exec (`observe`), a command or shell attached both ways (`attach` starts it, `session`
//! runs it), an update's new TTL and more published ports (`recreate`), the cut-off of an
//! exec whose caller went (`cutoff`), and a TCP connection to a
//! container's own loopback (`forward`). Containers are
//! addressed by our id (their name) and must carry this executor's labels: a foreign container
//! is [`RuntimeError::NotFound`]. No gRPC in here: the `grpc` module decodes requests, calls
//! this and maps [`RuntimeError`] to a reason.

mod attach;
mod capacity;
mod create;
mod cutoff;
mod error;
mod forward;
mod images;
mod lifecycle;
mod observe;
mod recreate;
mod session;

use std::path::PathBuf;
use std::sync::Arc;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::InspectContainerOptions;
use common::config::DockerConfig;
use common::proto::runtime::v1 as pb;
use tokio::sync::Mutex;

pub use self::attach::Sessions;
pub use self::create::GpuRequest;
pub use self::error::RuntimeError;
pub use self::forward::{CONNECT_TIMEOUT, ForwardEnd, Forwarding};
pub use self::images::PullSteps;
pub use self::observe::LogChunks;
pub use self::session::{Attachment, SessionEnd};
use crate::admission::Admission;
use crate::drain::Drain;
use crate::engine::{Engine, EngineError};
use crate::events::Events;
use crate::gpu_monitor::GpuMonitor;
use crate::images::Images;
use crate::labels::{self, LABEL_EXECUTOR, LABEL_ID, LABEL_NETWORK_BPS};
use crate::mounts::Staging;
use crate::netpool::NetworkPool;
use crate::ports::PortPool;
use crate::reference::RegistryPolicy;
use crate::shaping::ShapingError;
use crate::stops::{Expiries, Intent, Intents, StopReasons};
use crate::volumes::Volumes;
use crate::workload::HostLimits;

/// The runtime: the engine, the limits, and what is kept between calls.
#[derive(Debug, Clone)]
pub struct Runtime {
    engine: Engine,
    config: DockerConfig,
    /// Spare networks for isolated containers; None without isolation.
    pool: Option<NetworkPool>,
    stops: StopReasons,
    /// TTLs changed after create (`UpdateContainer`).
    expiries: Expiries,
    /// What the executor last meant for each container: which to run again at start.
    intents: Intents,
    /// Host bind mounts staged under `runtime_dir` (see `mounts`).
    staging: Staging,
    /// `data_dir` and `runtime_dir`: never bind-mounted.
    protected: Vec<PathBuf>,
    /// Whether `network_bps` can be enforced here (see `shaping::probe`), and if not why.
    shaping: Result<(), ShapingError>,
    policy: RegistryPolicy,
    /// Held while counting, assigning GPUs and creating, so the cap is exact and no GPU is
    /// given twice under concurrent creates.
    create_lock: Arc<Mutex<()>>,
    /// The GPUs there are come from gpu-monitor's inventory.
    gpu_monitor: GpuMonitor,
    /// The open Attach sessions and forwards.
    sessions: Sessions,
    /// Host ports for published container ports.
    ports: PortPool,
    /// What this host lets the engine raise a container's rlimits to.
    host_limits: HostLimits,
    /// Named volumes.
    volumes: Arc<Volumes>,
    /// The image cache: prefetch, the collector, `PullImage`.
    images: Arc<Images>,
    /// Whether creates are refused (`Drain`), kept in `data_dir`.
    drain: Arc<Drain>,
    /// What happened, numbered, for `WatchEvents`.
    events: Events,
    /// The last GPU health seen (uuid → state and reason), to tell changes as events.
    gpu_health: Arc<std::sync::Mutex<std::collections::BTreeMap<String, (String, String)>>>,
}

impl Runtime {
    /// The runtime for `config`; `shaping` is what `shaping::probe` found on this host.
    pub fn new(
        engine: Engine,
        config: &common::config::Config,
        shaping: Result<(), ShapingError>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let docker = config.docker.clone();
        let admission = Arc::new(Admission::new(config, engine.docker().clone())?);
        let policy = RegistryPolicy::new(&docker.registry.allowed_registries);
        crate::images::check_templates(&docker, &policy)?;
        let prefetch = crate::images::parse_prefetch(&docker.images, &docker.registry.url, &policy)?;
        let images =
            Images::open(engine.docker().clone(), Arc::clone(&admission), &config.data_dir, &docker.images, prefetch)?;
        let pool = docker.network_config.enable_isolation.then(|| {
            let n = &docker.network_config;
            NetworkPool::new(engine.clone(), n.allow_internet, n.spare_networks, &n.dns_servers)
        });
        let host_limits = HostLimits::probe();
        let w = &docker.workload;
        for (name, configured, host) in [
            ("memlock", w.memlock, host_limits.memlock),
            ("nofile", w.nofile as i64, host_limits.nofile),
            ("stack", w.stack, host_limits.stack),
        ] {
            if let Some(host) = host.filter(|h| configured == -1 || *h < configured as u64) {
                tracing::warn!(
                    configured,
                    host,
                    "docker.workload.{name}: this host's hard limit is lower (container-runtime lacks \
                     CAP_SYS_RESOURCE, so the engine cannot raise it); containers get at most the host's"
                );
            }
        }
        let events = Events::open(&config.data_dir)
            .map_err(|e| format!("cannot open {}: {e}", config.data_dir.join("events.jsonl").display()))?;
        let gpu_health = Arc::new(std::sync::Mutex::new(crate::events::last_gpu_health(&events)));
        Ok(Self {
            events,
            gpu_health,
            drain: Arc::new(Drain::open(&config.data_dir)?),
            images: Arc::new(images),
            volumes: Arc::new(Volumes::new(&config.data_dir, &config.runtime_dir, &docker.volumes)),
            host_limits,
            engine,
            policy,
            create_lock: Arc::new(Mutex::new(())),
            gpu_monitor: GpuMonitor::new(&config.runtime_dir),
            pool,
            stops: StopReasons::open(&config.data_dir)?,
            expiries: Expiries::expiries(&config.data_dir)?,
            intents: Intents::intents(&config.data_dir)?,
            staging: Staging::new(&config.runtime_dir),
            protected: vec![config.data_dir.clone(), config.runtime_dir.clone()],
            shaping,
            config: docker,
            sessions: Sessions::default(),
            ports: PortPool::new(config),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn images(&self) -> &Arc<Images> {
        &self.images
    }

    pub fn volumes(&self) -> &Volumes {
        &self.volumes
    }

    pub fn ports(&self) -> &PortPool {
        &self.ports
    }

    pub fn pool(&self) -> Option<&NetworkPool> {
        self.pool.as_ref()
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Records a container's event of `kind`, its owner from `labels`, with
    /// `fill` setting the rest.
    pub async fn container_event(
        &self,
        kind: pb::EventKind,
        id: &str,
        labels: &std::collections::HashMap<String, String>,
        fill: impl FnOnce(&mut pb::Event),
    ) {
        let mut event = pb::Event {
            kind: kind as i32,
            container_id: id.to_owned(),
            owner: labels.get(labels::LABEL_OWNER).cloned().unwrap_or_default(),
            ..Default::default()
        };
        fill(&mut event);
        self.events.record(event).await;
    }

    /// Records what the executor means for container `id` from now on (see [`Intent`]); a
    /// record that cannot be written is logged: the container is not held up for it.
    pub fn intend(&self, id: &str, intent: &Intent) {
        if let Err(e) = self.intents.record(id, &intent.text()) {
            tracing::error!(id, error = %e, ?intent, "cannot record what the executor means for the container");
        }
    }

    /// What was recorded for container `id`.
    pub fn intent(&self, id: &str) -> Option<Intent> {
        self.intents.intent(id)
    }

    /// The files kept per container, removed with it.
    fn records(&self) -> [&crate::stops::PerContainer; 3] {
        [&self.stops, &self.expiries, &self.intents]
    }

    /// Inspects a container of ours by our id; anything else is NOT_FOUND.
    async fn ours(&self, id: &str) -> Result<ContainerInspectResponse, RuntimeError> {
        if !labels::is_container_id(id) {
            return Err(RuntimeError::BadId { id: id.to_owned() });
        }
        self.ours_as(id, id).await
    }

    /// Inspects the engine's container `docker_ref` (a name or an engine id) if it is ours,
    /// with our id `id`; anything else is NOT_FOUND.
    async fn ours_as(&self, docker_ref: &str, id: &str) -> Result<ContainerInspectResponse, RuntimeError> {
        let inspect = self
            .engine
            .docker()
            .inspect_container(docker_ref, None::<InspectContainerOptions>)
            .await
            .map_err(|source| EngineError::Docker { id: id.to_owned(), source })?;
        let labels = inspect.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        if labels.get(LABEL_EXECUTOR).map(String::as_str) != Some(self.engine.executor_id())
            || labels.get(LABEL_ID).map(String::as_str) != Some(id)
        {
            return Err(RuntimeError::NotFound { id: id.to_owned() });
        }
        Ok(inspect)
    }

    /// A container of ours as the caller sees it, with the stop reason we recorded.
    pub async fn describe(&self, id: &str) -> Result<pb::Container, RuntimeError> {
        Ok(self.described(id, &self.ours(id).await?))
    }

    /// As [`Runtime::describe`], from an inspection of container `id` already made.
    fn described(&self, id: &str, inspect: &ContainerInspectResponse) -> pb::Container {
        let mut container = crate::status::container(inspect);
        container.stop_reason = self.stops.get(id).unwrap_or_default();
        if let Some(expires) = self.expiries.get(id).and_then(|e| e.trim().parse::<i64>().ok()) {
            container.expires_at = expires;
        }
        self.ports.describe(&mut container.ports);
        container
    }

    /// Shapes a running container to its `network_bps` (from its label); containers without a
    /// network are left alone.
    async fn shape(&self, inspect: &ContainerInspectResponse) -> Result<(), ShapingError> {
        self.shape_with(inspect, None).await
    }

    /// The IFB device of a container about to start (see `shaping::prepare`), made while the
    /// engine starts it; `None` for a container without a network.
    async fn prepare_shaping(&self, inspect: &ContainerInspectResponse) -> Option<Result<String, ShapingError>> {
        let id = inspect.name.as_deref().unwrap_or_default().trim_start_matches('/');
        if network_mode(inspect) == "none" {
            return None;
        }
        if let Err(e) = &self.shaping {
            return Some(Err(e.clone()));
        }
        Some(crate::shaping::prepare(id, self.engine.executor_id()).await)
    }

    /// As [`Runtime::shape`], with the IFB device `prepared` already (or not).
    async fn shape_with(
        &self,
        inspect: &ContainerInspectResponse,
        prepared: Option<Result<String, ShapingError>>,
    ) -> Result<(), ShapingError> {
        let id = inspect.name.as_deref().unwrap_or_default().trim_start_matches('/');
        if network_mode(inspect) == "none" {
            return Ok(());
        }
        let labels = inspect.config.as_ref().and_then(|c| c.labels.as_ref());
        let rate = labels
            .and_then(|l| l.get(LABEL_NETWORK_BPS))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(self.config.resource_limits.network_bps);
        let pid = inspect.state.as_ref().and_then(|s| s.pid).filter(|p| *p > 0);
        let pid = pid.ok_or_else(|| ShapingError(format!("container {id} has no running process")))?;
        self.shaping.clone()?;
        let ifb = match prepared {
            Some(ifb) => ifb?,
            None => crate::shaping::prepare(id, self.engine.executor_id()).await?,
        };
        let veth = crate::shaping::shape(pid, &ifb, rate).await?;
        tracing::info!(id, veth, rate, "network shaped");
        Ok(())
    }
}

/// A container's network mode (`none` when it has none).
fn network_mode(inspect: &ContainerInspectResponse) -> &str {
    inspect.host_config.as_ref().and_then(|h| h.network_mode.as_deref()).unwrap_or("none")
}
