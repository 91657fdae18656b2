//! The `executor.runtime.v1.ContainerRuntime` gRPC service on the internal socket: tenant
//! requests → validated [`ContainerSpec`]s → the engine. Containers are addressed by our id
//! (their name) and must carry this executor's labels: a foreign container is NOT_FOUND.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{InspectContainerOptions, LogsOptions, StatsOptions};
use common::config::DockerConfig;
use common::proto::runtime::v1 as pb;
use common::proto::runtime::v1::container_runtime_server::ContainerRuntime as RuntimeApi;
use tokio::sync::Mutex;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::admission::Admission;
use crate::engine::{Engine, EngineError};
use crate::labels;
use crate::netpool::NetworkPool;
use crate::reference::{ImageRef, RegistryPolicy};
use crate::shaping::ShapingError;
use crate::spec::{self, ContainerSpec, Port, Resources, SpecError};
use crate::stops::StopReasons;

/// Longest an exec may run, and the most output it returns per stream, when the request says 0.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const EXEC_MAX_OUTPUT: u64 = 1 << 20;

/// The service.
#[derive(Debug, Clone)]
pub struct Runtime {
    engine: Engine,
    config: DockerConfig,
    /// Spare networks for isolated containers; None without isolation.
    pool: Option<NetworkPool>,
    stops: StopReasons,
    /// `data_dir` and `runtime_dir`: never bind-mounted.
    protected: Vec<PathBuf>,
    /// Whether `network_bps` can be enforced here (see `shaping::probe`), and if not why.
    shaping: Result<(), ShapingError>,
    policy: RegistryPolicy,
    /// Signatures and pulls.
    admission: Arc<Admission>,
    /// Held while counting, assigning GPUs and creating, so the cap is exact and no GPU is
    /// given twice under concurrent creates.
    create_lock: Arc<Mutex<()>>,
    /// gpu-monitor's socket: the GPUs there are come from its inventory.
    gpu_monitor: tonic::transport::Channel,
}

/// GPUs a request asks for, assigned under the create lock.
#[derive(Debug, Clone, Default)]
pub struct GpuRequest {
    pub count: u32,
    pub uuids: Vec<String>,
}

fn invalid(e: SpecError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Docker errors to gRPC codes; detail goes to the log, not to the caller.
fn engine_status(e: EngineError) -> Status {
    use bollard::errors::Error as B;
    match &e {
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 404, .. }, id } => {
            Status::not_found(format!("container {id} not found"))
        }
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 409, message }, id } => {
            Status::failed_precondition(format!("container {id}: {message}"))
        }
        // A GPU container on a host without the NVIDIA container runtime.
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 500, message }, id }
            if message.contains("device driver") =>
        {
            Status::failed_precondition(format!("container {id}: no NVIDIA container runtime on this host: {message}"))
        }
        // The engine refused a parameter: the request (or the host) cannot have it.
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 400, message }, id } => {
            Status::failed_precondition(format!("container {id}: the engine refused it: {message}"))
        }
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 304, .. }, id } => {
            Status::failed_precondition(format!("container {id} is already in that state"))
        }
        _ => {
            tracing::error!(error = %e, "Docker engine error");
            Status::internal("the container engine failed; see the executor log")
        }
    }
}

impl Runtime {
    /// The service for `config`; `shaping` is what `shaping::probe` found on this host.
    pub fn new(
        engine: Engine,
        config: &common::config::Config,
        shaping: Result<(), ShapingError>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let docker = config.docker.clone();
        let admission = Arc::new(Admission::new(config, engine.docker().clone())?);
        let policy = RegistryPolicy::new(&docker.registry.allowed_registries);
        let gpu_monitor = common::grpc::unix_channel(&common::ServiceName::GpuMonitor.socket(&config.runtime_dir));
        let pool = docker.network_config.enable_isolation.then(|| {
            NetworkPool::new(engine.clone(), docker.network_config.allow_internet, docker.network_config.spare_networks)
        });
        Ok(Self {
            engine,
            policy,
            admission,
            create_lock: Arc::new(Mutex::new(())),
            gpu_monitor,
            pool,
            stops: StopReasons::open(&config.data_dir)?,
            protected: vec![config.data_dir.clone(), config.runtime_dir.clone()],
            shaping,
            config: docker,
        })
    }

    pub fn pool(&self) -> Option<&NetworkPool> {
        self.pool.as_ref()
    }

    /// Removes a container of ours and what goes with it: its network (`network`, may be
    /// empty), its shaping device, its recorded stop reason.
    pub async fn remove_everything(&self, id: &str, network: &str) -> Result<(), EngineError> {
        self.engine.remove(id, true).await?;
        if !network.is_empty() {
            self.engine.remove_network(network).await?;
        }
        if let Err(e) = crate::shaping::release(id).await {
            tracing::warn!(id, error = %e, "cannot remove the container's shaping device");
        }
        self.stops.forget(id);
        Ok(())
    }

    /// Shapes a running container to its `network_bps` (from its label); containers without a
    /// network are left alone.
    async fn shape(&self, inspect: &ContainerInspectResponse) -> Result<(), ShapingError> {
        let id = inspect.name.as_deref().unwrap_or_default().trim_start_matches('/');
        let mode = inspect.host_config.as_ref().and_then(|h| h.network_mode.as_deref()).unwrap_or("none");
        if mode == "none" {
            return Ok(());
        }
        let labels = inspect.config.as_ref().and_then(|c| c.labels.as_ref());
        let rate = labels
            .and_then(|l| l.get(labels::LABEL_NETWORK_BPS))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(self.config.resource_limits.network_bps);
        let pid = inspect.state.as_ref().and_then(|s| s.pid).filter(|p| *p > 0);
        let pid = pid.ok_or_else(|| ShapingError(format!("container {id} has no running process")))?;
        self.shaping.clone()?;
        let veth = crate::shaping::apply(id, pid, rate, self.engine.executor_id()).await?;
        tracing::info!(id, veth, rate, "network shaped");
        Ok(())
    }

    /// At start: adopt the spare networks a previous run left, and shape the running containers
    /// again (shaping is idempotent).
    pub async fn reconcile(&self) -> Result<(), EngineError> {
        let containers = self.engine.list_ours().await?;
        if let Some(pool) = &self.pool {
            let in_use = containers
                .iter()
                .filter_map(|c| c.labels.as_ref()?.get(labels::LABEL_NETWORK).cloned())
                .collect::<std::collections::HashSet<_>>();
            pool.adopt(&in_use).await?;
            pool.refill_in_background(Duration::ZERO);
        }
        for c in containers {
            let Some(id) = c.labels.as_ref().and_then(|l| l.get(labels::LABEL_ID)).cloned() else { continue };
            if c.state != Some(bollard::models::ContainerSummaryStateEnum::RUNNING) {
                continue;
            }
            if let Ok(inspect) = self.ours(&id).await
                && let Err(e) = self.shape(&inspect).await
            {
                tracing::error!(id, error = %e, "cannot shape a running container again; stopping it");
                let _ = self.engine.stop(&id, 10).await;
            }
        }
        tracing::info!(spare_networks = self.pool.as_ref().map_or(0, |p| p.held().len()), "reconciled with Docker");
        Ok(())
    }

    /// After an engine restart: starts again the containers of ours in `stopped` (those the
    /// engine signalled on its way down) unless this process stopped them itself or they died
    /// of memory, and shapes them again. Returns the ids started.
    pub async fn resume(&self, stopped: &[String]) -> Vec<String> {
        let mut resumed = Vec::new();
        for id in stopped {
            if self.engine.stopped_by_us(id) {
                continue;
            }
            let Ok(inspect) = self.ours(id).await else { continue };
            let state = inspect.state.as_ref();
            let running = state.and_then(|s| s.running).unwrap_or(false);
            if running || state.and_then(|s| s.oom_killed).unwrap_or(false) {
                continue;
            }
            if let Err(e) = self.engine.start(id).await {
                tracing::error!(id, error = %e, "cannot start a container again after the engine restart");
                continue;
            }
            if let Ok(inspect) = self.ours(id).await
                && let Err(e) = self.shape(&inspect).await
            {
                tracing::error!(id, error = %e, "cannot shape a resumed container; stopping it");
                let _ = self.engine.stop(id, 10).await;
                continue;
            }
            resumed.push(id.clone());
        }
        resumed
    }

    /// One round of GPU memory enforcement (see `gpu_memory`): stops each container of ours
    /// over its limit, recording why. Returns the ids stopped.
    pub async fn enforce_gpu_memory(&self) -> Result<Vec<String>, Status> {
        use common::proto::gpu::v1::gpu_monitor_client::GpuMonitorClient;
        use common::proto::gpu::v1::{GpuProcessesRequest, InventoryRequest};
        let mut client = GpuMonitorClient::new(self.gpu_monitor.clone());
        let ask = Duration::from_secs(5);
        let processes = tokio::time::timeout(ask, client.gpu_processes(GpuProcessesRequest {}))
            .await
            .map_err(|_| Status::unavailable("gpu-monitor did not answer"))??
            .into_inner()
            .processes;
        if processes.is_empty() {
            return Ok(Vec::new());
        }
        let inventory = tokio::time::timeout(ask, client.inventory(InventoryRequest {}))
            .await
            .map_err(|_| Status::unavailable("gpu-monitor did not answer"))??
            .into_inner();
        let tenants: Vec<crate::gpu_memory::Tenant> = self
            .engine
            .list_ours()
            .await
            .map_err(engine_status)?
            .into_iter()
            .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
            .filter_map(|c| {
                let labels = c.labels?;
                Some(crate::gpu_memory::Tenant {
                    id: labels.get(labels::LABEL_ID)?.clone(),
                    docker_id: c.id?,
                    limit_bytes: labels
                        .get(labels::LABEL_GPU_MEMORY)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(self.config.resource_limits.gpu_memory_bytes),
                })
            })
            .collect();
        let mut stopped = Vec::new();
        let fraction = self.config.gpu_config.memory_fraction;
        for v in crate::gpu_memory::violations(&tenants, &processes, &inventory.gpus, fraction) {
            tracing::warn!(id = %v.id, reason = %v.reason, "stopping a container over its GPU memory limit");
            if let Err(e) = self.stops.record(&v.id, &v.reason) {
                tracing::error!(id = %v.id, error = %e, "cannot record the stop reason");
            }
            match self.engine.stop(&v.id, 10).await {
                Ok(()) => {
                    metrics::counter!("executor_container_runtime_stops_total", "reason" => "gpu_memory").increment(1);
                    stopped.push(v.id);
                }
                Err(e) => tracing::error!(id = %v.id, error = %e, "cannot stop a container over its GPU memory limit"),
            }
        }
        Ok(stopped)
    }

    /// Assigns GPUs for `request` (the create lock is held by the caller).
    async fn assign_gpus(&self, request: &GpuRequest) -> Result<Vec<String>, Status> {
        use crate::gpus::GpuError;
        use common::proto::gpu::v1::InventoryRequest;
        use common::proto::gpu::v1::gpu_monitor_client::GpuMonitorClient;
        let mut client = GpuMonitorClient::new(self.gpu_monitor.clone());
        let inventory = tokio::time::timeout(Duration::from_secs(5), client.inventory(InventoryRequest {}))
            .await
            .map_err(|_| Status::unavailable("gpu_count/gpu_uuids: gpu-monitor did not answer"))?
            .map_err(|e| Status::unavailable(format!("gpu_count/gpu_uuids: gpu-monitor: {}", e.message())))?
            .into_inner();
        let visible = common::config::parse_visible_devices(&self.config.gpu_config.visible_devices)
            .map_err(|e| Status::failed_precondition(format!("docker.gpu_config.visible_devices: {e}")))?;
        let candidates = crate::gpus::tenant_gpus(&inventory.gpus, visible.as_deref());
        let mut in_use = std::collections::BTreeMap::new();
        for c in self.engine.list_ours().await.map_err(engine_status)? {
            let labels = c.labels.unwrap_or_default();
            let owner = labels.get(labels::LABEL_ID).cloned().unwrap_or_default();
            for uuid in
                labels.get(labels::LABEL_GPUS).map(String::as_str).unwrap_or("").split(',').filter(|u| !u.is_empty())
            {
                in_use.insert(uuid.to_owned(), owner.clone());
            }
        }
        crate::gpus::assign(&candidates, &in_use, request.count, &request.uuids).map_err(|e| match e {
            GpuError::Busy { .. } => Status::failed_precondition(e.to_string()),
            GpuError::NotEnough { .. } => Status::resource_exhausted(e.to_string()),
            GpuError::Unknown(_) | GpuError::Both | GpuError::Duplicate(_) => Status::invalid_argument(e.to_string()),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The request as a spec (every field checked, limits applied) and the GPUs it wants.
    pub fn spec_from(&self, r: pb::CreateContainerRequest, id: String) -> Result<(ContainerSpec, GpuRequest), Status> {
        let image = ImageRef::parse(&r.image, &self.config.registry.url)
            .map_err(|e| Status::invalid_argument(format!("image: {e}")))?;
        self.policy.check(&image).map_err(|e| Status::failed_precondition(format!("image: {e}")))?;
        let gpus = GpuRequest { count: r.gpu_count, uuids: r.gpu_uuids.clone() };
        if (gpus.count > 0 || !gpus.uuids.is_empty()) && !self.config.enable_gpu_passthrough {
            return Err(Status::failed_precondition(
                "gpu_count/gpu_uuids: docker.enable_gpu_passthrough = false on this executor",
            ));
        }
        let ports = r
            .ports
            .iter()
            .map(|p| {
                let port = |v: u32, f: &str| {
                    u16::try_from(v).map_err(|_| Status::invalid_argument(format!("ports.{f}: {v} is not a port")))
                };
                let udp = match p.protocol.as_str() {
                    "" | "tcp" => false,
                    "udp" => true,
                    other => {
                        return Err(Status::invalid_argument(format!("ports.protocol: `{other}` is not tcp or udp")));
                    }
                };
                Ok(Port {
                    container_port: port(p.container_port, "container_port")?,
                    host_port: port(p.host_port, "host_port")?,
                    udp,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let mounts = r
            .mounts
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let protected: Vec<&std::path::Path> = self.protected.iter().map(PathBuf::as_path).collect();
                spec::check_mount(
                    i,
                    &m.host_path,
                    &m.container_path,
                    m.read_only,
                    &self.config.allowed_host_paths,
                    &protected,
                )
                .map_err(|e| Status::failed_precondition(e.to_string()))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let res = r.resources.unwrap_or_default();
        let mut spec = ContainerSpec {
            id,
            image,
            command: r.command,
            args: r.args,
            env: r.env.into_iter().collect(),
            labels: r.labels.into_iter().collect(),
            ports,
            resources: Resources {
                memory_bytes: res.memory_bytes,
                cpu_cores: res.cpu_cores,
                disk_io_bps: res.disk_io_bps,
                network_bps: res.network_bps,
                gpu_memory_bytes: res.gpu_memory_bytes,
                pids: res.pids,
            },
            mounts,
            gpu_uuids: Vec::new(),
            ttl: (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds)),
            owner: r.owner,
            created_at: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            dns: self.config.network_config.dns_servers.clone(),
            network: None,
        };
        spec.gpu_uuids = gpus.uuids.clone();
        spec.validate().map_err(invalid)?;
        spec.gpu_uuids.clear();
        spec.apply_limits(&self.config.resource_limits, self.engine.host_cpus()).map_err(invalid)?;
        Ok((spec, gpus))
    }

    /// Create: validate, pull, then count and create under the lock.
    async fn create_container(&self, request: pb::CreateContainerRequest) -> Result<pb::Container, Status> {
        let (mut spec, gpus) = self.spec_from(request, new_id()?)?;
        let online = self.config.network_config.enable_isolation || self.config.network_config.allow_internet;
        if online && let Err(e) = &self.shaping {
            return Err(Status::failed_precondition(e.to_string()));
        }
        let admitted = self.admission.admit(&spec.image, &spec.owner).await?;
        spec.image = admitted.image;
        if !admitted.signature.is_empty() {
            spec.labels.insert(labels::LABEL_SIGNATURE.to_owned(), admitted.signature);
        }
        let _guard = self.create_lock.lock().await;
        let existing = self.engine.list_ours().await.map_err(engine_status)?.len();
        let cap = self.config.max_concurrent_containers as usize;
        if existing >= cap {
            return Err(Status::resource_exhausted(format!(
                "docker.max_concurrent_containers = {cap} containers exist already; remove one first"
            )));
        }
        if gpus.count > 0 || !gpus.uuids.is_empty() {
            spec.gpu_uuids = self.assign_gpus(&gpus).await?;
        }
        let net = &self.config.network_config;
        let mode = match &self.pool {
            Some(pool) => {
                let name = pool.take().await.map_err(engine_status)?;
                spec.network = Some(name.clone());
                name
            }
            None if net.allow_internet => "bridge".to_owned(),
            None => "none".to_owned(),
        };
        let created = self.engine.create(&spec, Some(&mode)).await;
        if let (Some(pool), Some(name)) = (&self.pool, &spec.network) {
            if created.is_err() {
                let _ = self.engine.remove_network(name).await;
            }
            pool.settled(name);
        }
        created.map_err(engine_status)?;
        tracing::info!(id = %spec.id, image = %spec.image, owner = %spec.owner, network = %mode, gpus = ?spec.gpu_uuids, "container created");
        self.describe(&spec.id).await
    }

    /// Inspects a container of ours by our id; anything else is NOT_FOUND.
    async fn ours(&self, id: &str) -> Result<ContainerInspectResponse, Status> {
        if !labels::is_container_id(id) {
            return Err(Status::invalid_argument(format!("id: `{id}` is not a container id")));
        }
        let inspect = self
            .engine
            .docker()
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|source| engine_status(EngineError::Docker { id: id.to_owned(), source }))?;
        let labels = inspect.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        if labels.get(labels::LABEL_EXECUTOR).map(String::as_str) != Some(self.engine.executor_id())
            || labels.get(labels::LABEL_ID).map(String::as_str) != Some(id)
        {
            return Err(Status::not_found(format!("container {id} not found")));
        }
        Ok(inspect)
    }

    async fn describe(&self, id: &str) -> Result<pb::Container, Status> {
        let mut container = crate::status::container(&self.ours(id).await?);
        container.stop_reason = self.stops.get(id).unwrap_or_default();
        Ok(container)
    }
}

fn new_id() -> Result<String, Status> {
    labels::random_name("c-").map_err(|e| Status::internal(e.to_string()))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeApi for Runtime {
    async fn create(&self, request: Request<pb::CreateContainerRequest>) -> Result<Response<pb::Container>, Status> {
        let started = std::time::Instant::now();
        let result = self.create_container(request.into_inner()).await;
        let outcome = match &result {
            Ok(_) => {
                metrics::histogram!("executor_container_runtime_create_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                "ok".to_owned()
            }
            Err(status) => format!("{:?}", status.code()).to_lowercase(),
        };
        metrics::counter!("executor_container_runtime_creates_total", "result" => outcome).increment(1);
        result.map(Response::new)
    }

    async fn start(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::Container>, Status> {
        let id = request.into_inner().id;
        self.ours(&id).await?;
        self.engine.start(&id).await.map_err(engine_status)?;
        self.stops.forget(&id);
        // Never leave a container running unshaped.
        if let Err(e) = self.shape(&self.ours(&id).await?).await {
            tracing::error!(id, error = %e, "cannot shape the container; stopping it");
            let _ = self.engine.stop(&id, 0).await;
            return Err(Status::failed_precondition(e.to_string()));
        }
        self.describe(&id).await.map(Response::new)
    }

    async fn stop(&self, request: Request<pb::StopContainerRequest>) -> Result<Response<pb::Container>, Status> {
        let r = request.into_inner();
        self.ours(&r.id).await?;
        let timeout = i32::try_from(r.timeout_seconds.min(600)).unwrap_or(600);
        match self.engine.stop(&r.id, timeout).await {
            Ok(()) => {}
            // Already stopped is fine: stop is idempotent.
            Err(EngineError::Docker {
                source: bollard::errors::Error::DockerResponseServerError { status_code: 304, .. },
                ..
            }) => {}
            Err(e) => return Err(engine_status(e)),
        }
        self.describe(&r.id).await.map(Response::new)
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        let r = request.into_inner();
        let inspect = self.ours(&r.id).await?;
        let network = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(labels::LABEL_NETWORK).cloned())
            .unwrap_or_default();
        let running = inspect.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if running && !r.force {
            return Err(Status::failed_precondition(format!("container {} is running; stop it or use force", r.id)));
        }
        self.remove_everything(&r.id, &network).await.map_err(engine_status)?;
        tracing::info!(id = %r.id, "container removed");
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    async fn get(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::Container>, Status> {
        self.describe(&request.into_inner().id).await.map(Response::new)
    }

    async fn list(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let r = request.into_inner();
        let mut containers = Vec::new();
        for summary in self.engine.list_ours().await.map_err(engine_status)? {
            let Some(id) = summary.labels.as_ref().and_then(|l| l.get(labels::LABEL_ID)).cloned() else { continue };
            let Ok(c) = self.describe(&id).await else { continue };
            let running = c.state == pb::ContainerState::Running as i32;
            if (r.all || running) && (r.owner.is_empty() || r.owner == c.owner) {
                containers.push(c);
            }
        }
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    type LogsStream = LogStream;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        self.ours(&r.id).await?;
        let options = LogsOptions {
            follow: r.follow,
            stdout: true,
            stderr: true,
            since: i32::try_from(r.since).map_err(|_| Status::invalid_argument("since: out of range"))?,
            timestamps: true,
            tail: if r.tail == 0 { "all".to_owned() } else { r.tail.to_string() },
            ..LogsOptions::default()
        };
        let id = r.id.clone();
        let stream = self.engine.docker().logs(&r.id, Some(options)).map(move |item| {
            use bollard::container::LogOutput;
            let output = item.map_err(|source| engine_status(EngineError::Docker { id: id.clone(), source }))?;
            let (stream, bytes) = match output {
                LogOutput::StdOut { message } => (pb::LogStream::Stdout, message),
                LogOutput::StdErr { message } => (pb::LogStream::Stderr, message),
                LogOutput::Console { message } | LogOutput::StdIn { message } => (pb::LogStream::Stdout, message),
            };
            // With timestamps Docker starts each line with its RFC 3339 time and a space.
            let (timestamp, data) = match bytes.iter().position(|&b| b == b' ') {
                Some(i) => (String::from_utf8_lossy(&bytes[..i]).into_owned(), bytes[i + 1..].to_vec()),
                None => (String::new(), bytes.to_vec()),
            };
            Ok(pb::LogChunk { stream: stream as i32, data, timestamp })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stats(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerStats>, Status> {
        let id = request.into_inner().id;
        self.ours(&id).await?;
        let options = StatsOptions { stream: false, one_shot: false };
        let stats = self
            .engine
            .docker()
            .stats(&id, Some(options))
            .next()
            .await
            .ok_or_else(|| Status::unavailable("no stats from the engine"))?
            .map_err(|source| engine_status(EngineError::Docker { id: id.clone(), source }))?;
        Ok(Response::new(crate::status::stats(id, &stats)))
    }

    async fn exec(&self, request: Request<pb::ExecRequest>) -> Result<Response<pb::ExecResponse>, Status> {
        let r = request.into_inner();
        self.ours(&r.id).await?;
        if r.command.is_empty() {
            return Err(Status::invalid_argument("command: empty"));
        }
        let timeout = if r.timeout_seconds == 0 { EXEC_TIMEOUT } else { Duration::from_secs(r.timeout_seconds.into()) };
        let cap = if r.max_output_bytes == 0 { EXEC_MAX_OUTPUT } else { r.max_output_bytes.min(64 << 20) } as usize;
        let docker = self.engine.docker();
        let map = |source| engine_status(EngineError::Docker { id: r.id.clone(), source });
        let exec = docker
            .create_exec(
                &r.id,
                bollard::models::ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(r.command.clone()),
                    ..Default::default()
                },
            )
            .await
            .map_err(map)?;
        let mut out = pb::ExecResponse::default();
        let mut buffers: BTreeMap<bool, Vec<u8>> = BTreeMap::new();
        if let bollard::exec::StartExecResults::Attached { mut output, .. } =
            docker.start_exec(&exec.id, None).await.map_err(map)?
        {
            let collect = async {
                while let Some(item) = output.next().await {
                    let (is_err, bytes) = match item.map_err(map)? {
                        bollard::container::LogOutput::StdErr { message } => (true, message),
                        other => (false, other.into_bytes()),
                    };
                    let buf = buffers.entry(is_err).or_default();
                    let room = cap.saturating_sub(buf.len());
                    out.truncated |= bytes.len() > room;
                    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                Ok::<(), Status>(())
            };
            match tokio::time::timeout(timeout, collect).await {
                Ok(result) => result?,
                Err(_) => out.timed_out = true,
            }
        }
        out.stdout = buffers.remove(&false).unwrap_or_default();
        out.stderr = buffers.remove(&true).unwrap_or_default();
        let inspect = docker.inspect_exec(&exec.id).await.map_err(map)?;
        out.exit_code = inspect.exit_code.unwrap_or(-1);
        Ok(Response::new(out))
    }
}
