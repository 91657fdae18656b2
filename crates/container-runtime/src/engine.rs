//! The Docker engine, through bollard: the connection (`[docker] socket`, the engine's API
//! version), hardened containers created from a [`ContainerSpec`], started, stopped and
//! removed, our tenant networks, and the containers that are ours (by label, never by name).
//! Every error names the container or network it is about ([`EngineError`]).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bollard::Docker;
use bollard::models::{ContainerSummary, EventMessage};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions, StartContainerOptions,
    StopContainerOptions,
};
use common::config::DockerConfig;

use crate::confinement::{Confinement, ConfinementError};
use crate::labels::{LABEL_CREATED, LABEL_EXECUTOR, LABEL_MANAGED, LABEL_POOL, NameError};
use crate::spec::{ContainerSpec, Hardening};

/// Errors from the engine, naming the container.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Connect(#[from] DockerError),
    #[error("container {id}: {source}")]
    Docker { id: String, source: bollard::errors::Error },
    #[error("Docker engine: {0}")]
    Engine(bollard::errors::Error),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Confinement(#[from] ConfinementError),
    #[error(transparent)]
    Holder(#[from] crate::holder::HolderError),
}

/// Errors reaching the Docker engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker.socket `{0}` is not a unix:/// URL")]
    Socket(String),
    #[error("Docker engine at {socket}: {source}")]
    Engine { socket: String, source: bollard::errors::Error },
}

/// A client for the engine named by `[docker] socket`, speaking the engine's API version
/// (engines as old as API 1.41 are supported).
pub async fn connect(config: &DockerConfig) -> Result<Docker, DockerError> {
    let path = config.socket.strip_prefix("unix://").ok_or_else(|| DockerError::Socket(config.socket.clone()))?;
    let engine = |source| DockerError::Engine { socket: config.socket.clone(), source };
    let docker = Docker::connect_with_unix(path, 10, bollard::API_DEFAULT_VERSION).map_err(engine)?;
    docker.negotiate_version().await.map_err(engine)
}

/// A connected engine and what every container needs from the host.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    executor_id: String,
    /// The block device behind Docker's data root, for the disk I/O limits.
    disk_device: Option<String>,
    /// CPUs the engine can give a container.
    host_cpus: f64,
    /// The host's memory, bytes, as the engine reports it.
    host_memory: u64,
    /// Docker's data root (images, writable layers), when the engine says.
    data_root: Option<std::path::PathBuf>,
    /// Seccomp, AppArmor and capabilities of every container.
    hardening: Hardening,
    /// Containers this process asked the engine to stop (until they are removed or started):
    /// never resumed after an engine restart.
    stopped_by_us: Arc<Mutex<HashSet<String>>>,
    /// Every container's log driver: `json-file`, rotated (`[docker] log_max_size`,
    /// `log_max_files`), whatever the daemon's default is.
    log_config: bollard::models::HostConfigLogConfig,
}

impl Engine {
    /// Connects, finds the block device under Docker's data root, and how the engine confines
    /// containers (refused when it cannot pin seccomp, see `confinement`).
    pub async fn connect(config: &DockerConfig, executor_id: &str) -> Result<Self, EngineError> {
        let docker = connect(config).await?;
        let info = docker.info().await.map_err(EngineError::Engine)?;
        let confinement = confinement(&docker, &info).await?;
        let hardening = Hardening::new(confinement.security_opt(), &config.extra_capabilities);
        let disk_device = info.docker_root_dir.as_deref().and_then(|root| block_device_of(Path::new(root)));
        let host_cpus = info.ncpu.filter(|n| *n > 0).map_or(1.0, |n| n as f64);
        let host_memory = info.mem_total.and_then(|m| u64::try_from(m).ok()).unwrap_or(0);
        let data_root = info.docker_root_dir.as_deref().map(std::path::PathBuf::from);
        let log_config = bollard::models::HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), config.log_max_size.get().to_string()),
                ("max-file".to_owned(), config.log_max_files.to_string()),
            ])),
        };
        Ok(Self {
            docker,
            executor_id: executor_id.to_owned(),
            disk_device,
            host_cpus,
            host_memory,
            data_root,
            hardening,
            stopped_by_us: Arc::default(),
            log_config,
        })
    }

    pub fn host_cpus(&self) -> f64 {
        self.host_cpus
    }

    pub fn host_memory(&self) -> u64 {
        self.host_memory
    }

    /// Docker's data root, when the engine said where it is.
    pub fn data_root(&self) -> Option<&Path> {
        self.data_root.as_deref()
    }

    pub fn executor_id(&self) -> &str {
        &self.executor_id
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The device the disk I/O limits apply to, if one was found.
    pub fn disk_device(&self) -> Option<&str> {
        self.disk_device.as_deref()
    }

    /// Creates one of our tenant networks: a bridge named `bas-…` with `internet`, `bai-…`
    /// without (the prefixes the host firewall rules match: an isolated tenant opens no
    /// connection out, see `firewall`), no inter-container traffic even within it. Never
    /// Docker's `internal`, which publishes no ports. `labels` are added to ours.
    pub async fn create_network(
        &self,
        name: &str,
        internet: bool,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        let mut all = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_EXECUTOR.to_owned(), self.executor_id.clone()),
            (LABEL_CREATED.to_owned(), crate::labels::now_secs().to_string()),
        ]);
        all.extend(labels);
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            internal: Some(false),
            // Tenant networks are IPv4 only, whatever the engine's defaults (see `firewall`).
            enable_ipv6: Some(false),
            labels: Some(all),
            options: Some(HashMap::from([
                ("com.docker.network.bridge.enable_icc".to_owned(), "false".to_owned()),
                ("com.docker.network.bridge.name".to_owned(), crate::firewall::bridge_name(name, internet)),
            ])),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(|source| EngineError::Docker { id: name.to_owned(), source })?;
        Ok(())
    }

    /// Our networks: (name, labels, whether internal).
    pub async fn our_networks(&self) -> Result<Vec<OurNetwork>, EngineError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_MANAGED}=true"), format!("{LABEL_EXECUTOR}={}", self.executor_id)],
        )]);
        let options = bollard::query_parameters::ListNetworksOptions { filters: Some(filters) };
        let networks = self.docker.list_networks(Some(options)).await.map_err(EngineError::Engine)?;
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                let labels = n.labels.unwrap_or_default();
                // Our own creation label: parsing Docker's timestamp format is not needed.
                let created = labels
                    .get(LABEL_CREATED)
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
                let bridge = n.options.and_then(|o| o.get("com.docker.network.bridge.name").cloned());
                Some(OurNetwork {
                    name: n.name?,
                    created,
                    internal: n.internal.unwrap_or(false),
                    bridge: bridge.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Names of our networks made for the pool.
    pub async fn our_pool_networks(&self) -> Result<Vec<String>, EngineError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{}=true", LABEL_POOL), format!("{LABEL_EXECUTOR}={}", self.executor_id)],
        )]);
        let options = bollard::query_parameters::ListNetworksOptions { filters: Some(filters) };
        let networks = self.docker.list_networks(Some(options)).await.map_err(EngineError::Engine)?;
        Ok(networks.into_iter().filter_map(|n| n.name).collect())
    }

    /// Removes one of our networks with its holder (see `holder`); one that is already gone
    /// is fine.
    pub async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        crate::holder::remove(&self.docker, name).await?;
        match self.docker.remove_network(name).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(source) => Err(EngineError::Docker { id: name.to_owned(), source }),
        }
    }

    /// Creates the container (named by our id) without starting it; returns Docker's id.
    pub async fn create(&self, spec: &ContainerSpec, network: Option<&str>) -> Result<String, EngineError> {
        let mut body = spec.create_body(&self.executor_id, self.disk_device.as_deref(), network, &self.hardening);
        if let Some(host) = body.host_config.as_mut() {
            host.log_config = Some(self.log_config.clone());
            // No IPv6 inside, whatever the engine does for IPv4-only networks; a kernel without
            // IPv6 has no such sysctls (and the engine would refuse them).
            if crate::firewall::kernel_has_ipv6() {
                let sysctls = crate::firewall::TENANT_SYSCTLS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
                host.sysctls.get_or_insert_with(HashMap::new).extend(sysctls);
            }
        }
        let options = CreateContainerOptions { name: Some(spec.id.clone()), ..CreateContainerOptions::default() };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|source| EngineError::Docker { id: spec.id.clone(), source })?;
        Ok(created.id)
    }

    /// Bytes in the container's writable layer (Docker's `SizeRw`, which walks the layer: a
    /// reaper-interval or on-demand cost, not a per-call one), None when the engine does not
    /// say; and the container's limit on it from its label (None: made before the label).
    pub async fn writable_layer(&self, id: &str) -> Result<(Option<u64>, Option<u64>), EngineError> {
        let options = bollard::query_parameters::InspectContainerOptions { size: true };
        let inspect = self
            .docker
            .inspect_container(id, Some(options))
            .await
            .map_err(|source| EngineError::Docker { id: id.to_owned(), source })?;
        let limit = inspect.config.as_ref().and_then(|c| c.labels.as_ref()).and_then(crate::labels::disk_limit);
        Ok((inspect.size_rw.and_then(|b| u64::try_from(b).ok()), limit))
    }

    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.stopped_by_us.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        self.docker
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(|source| EngineError::Docker { id: id.to_owned(), source })
    }

    /// SIGTERM, then SIGKILL after `timeout_seconds`.
    pub async fn stop(&self, id: &str, timeout_seconds: i32) -> Result<(), EngineError> {
        self.stopped_by_us.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned());
        let options = StopContainerOptions { t: Some(timeout_seconds), ..StopContainerOptions::default() };
        // The engine answers once the container is gone: after the grace period when it ignores
        // SIGTERM. The client's own timeout (10 s) would end the call first and call a stop that
        // worked a failure (and a GPU round would stop the container a second time).
        let wait = std::time::Duration::from_secs(timeout_seconds.max(0) as u64 + 10);
        self.docker
            .clone()
            .with_timeout(wait)
            .stop_container(id, Some(options))
            .await
            .map_err(|source| EngineError::Docker { id: id.to_owned(), source })
    }

    /// Makes container `id` again from its own configuration (`inspect`: what it was created
    /// with, hardening, limits, GPUs, mounts and network included) with `change` applied: the
    /// old one (stopped) is renamed aside, the new one created under `id`, then the old one is
    /// removed. When the create fails the old one gets its name back, untouched.
    pub async fn recreate(
        &self,
        id: &str,
        inspect: &bollard::models::ContainerInspectResponse,
        change: impl FnOnce(&mut bollard::models::ContainerCreateBody),
    ) -> Result<(), EngineError> {
        let docker = |source| EngineError::Docker { id: id.to_owned(), source };
        // The two messages have the same fields under the same names.
        let config = serde_json::to_value(inspect.config.clone().unwrap_or_default())
            .map_err(|err| docker(bollard::errors::Error::JsonSerdeError { err }))?;
        let mut body: bollard::models::ContainerCreateBody =
            serde_json::from_value(config).map_err(|err| docker(bollard::errors::Error::JsonSerdeError { err }))?;
        body.host_config = inspect.host_config.clone();
        change(&mut body);
        let aside = format!("{id}-replaced");
        let rename = |from: &str, to: &str| {
            let options = bollard::query_parameters::RenameContainerOptions { name: to.to_owned() };
            let from = from.to_owned();
            async move { self.docker.rename_container(&from, options).await }
        };
        rename(id, &aside).await.map_err(docker)?;
        let options = CreateContainerOptions { name: Some(id.to_owned()), ..CreateContainerOptions::default() };
        if let Err(source) = self.docker.create_container(Some(options), body).await {
            if let Err(e) = rename(&aside, id).await {
                tracing::error!(id, aside, error = %e, "cannot give a container its name back after a failed recreate");
            }
            return Err(docker(source));
        }
        let options = RemoveContainerOptions { force: true, v: true, ..RemoveContainerOptions::default() };
        if let Err(e) = self.docker.remove_container(&aside, Some(options)).await {
            tracing::error!(id, aside, error = %e, "cannot remove the container a recreate replaced");
        }
        Ok(())
    }

    /// Whether this process stopped `id` (and has not started it since).
    pub fn stopped_by_us(&self, id: &str) -> bool {
        self.stopped_by_us.lock().unwrap_or_else(|e| e.into_inner()).contains(id)
    }

    /// Events of our containers as they happen. The stream ends when the engine's API goes
    /// away, which is how an engine restart is noticed at once (see `Runtime::resume`).
    pub fn events(&self) -> impl tokio_stream::Stream<Item = Result<EventMessage, bollard::errors::Error>> + use<> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![format!("{LABEL_EXECUTOR}={}", self.executor_id)]),
        ]);
        self.docker.events(Some(EventsOptions { filters: Some(filters), ..EventsOptions::default() }))
    }

    pub async fn remove(&self, id: &str, force: bool) -> Result<(), EngineError> {
        self.stopped_by_us.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let options = RemoveContainerOptions { force, v: true, ..RemoveContainerOptions::default() };
        self.docker
            .remove_container(id, Some(options))
            .await
            .map_err(|source| EngineError::Docker { id: id.to_owned(), source })
    }

    /// Our containers, running or not: those labelled managed by this executor. Containers
    /// without our labels are never returned (and so never touched).
    pub async fn list_ours(&self) -> Result<Vec<ContainerSummary>, EngineError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_MANAGED}=true"), format!("{LABEL_EXECUTOR}={}", self.executor_id)],
        )]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..ListContainersOptions::default() };
        self.docker.list_containers(Some(options)).await.map_err(EngineError::Engine)
    }
}

/// How the engine confines containers, from its `info` and its own API version.
pub async fn confinement(docker: &Docker, info: &bollard::models::SystemInfo) -> Result<Confinement, EngineError> {
    let version = docker.version().await.map_err(EngineError::Engine)?;
    let options = info.security_options.clone().unwrap_or_default();
    Ok(Confinement::from_engine(&options, version.api_version.as_deref().unwrap_or(""))?)
}

/// A tenant network of this executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurNetwork {
    pub name: String,
    pub created: Option<std::time::SystemTime>,
    /// Docker's `internal`: what isolated networks were before published ports worked.
    pub internal: bool,
    /// The bridge interface (`bas-…`, `bai-…`).
    pub bridge: String,
}

/// `/dev/<disk>` holding `path`: its device number, then the whole disk when it is a partition.
pub fn block_device_of(path: &Path) -> Option<String> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let disk = if sys.join("partition").exists() { sys.parent()?.to_owned() } else { sys };
    let name = disk.file_name()?.to_string_lossy().into_owned();
    let dev = format!("/dev/{name}");
    Path::new(&dev).exists().then_some(dev)
}
