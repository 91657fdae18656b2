//! Create: the request checked field by field into a [`ContainerSpec`] (image allowed, mounts
//! on the allow-list, limits applied), the image admitted (signature, pull), then under the
//! create lock the cap counted, GPUs assigned and the container created on its own network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::ContainerSummary;
use common::proto::runtime::v1 as pb;

use super::{Runtime, RuntimeError};
use crate::labels::{self, LABEL_ID, LABEL_SIGNATURE, LABEL_TEMPLATE};
use crate::spec::{self, ContainerSpec, Port, Resources, SpecError};
use crate::volumes::{Attached, LABEL_VOLUMES};
use crate::workload::Workload;

/// GPUs a request asks for, assigned under the create lock.
#[derive(Debug, Clone, Default)]
pub struct GpuRequest {
    pub count: u32,
    pub uuids: Vec<String>,
}

/// The published ports of a request (`field`: `ports` or `add_ports`), each checked.
pub(super) fn ports_from(mappings: &[pb::PortMapping], field: &str) -> Result<Vec<Port>, RuntimeError> {
    mappings
        .iter()
        .map(|p| {
            let port = |v: u32, f: &str| {
                u16::try_from(v).map_err(|_| invalid(&format!("{field}.{f}"), format!("{v} is not a port")))
            };
            let udp = match p.protocol.as_str() {
                "" | "tcp" => false,
                "udp" => true,
                other => return Err(invalid(&format!("{field}.protocol"), format!("`{other}` is not tcp or udp"))),
            };
            Ok(Port {
                container_port: port(p.container_port, "container_port")?,
                host_port: port(p.host_port, "host_port")?,
                udp,
            })
        })
        .collect()
}

pub(super) fn invalid(field: &str, message: String) -> RuntimeError {
    RuntimeError::Invalid(SpecError { field: field.to_owned(), message })
}

impl Runtime {
    /// The request as a spec (every field checked, limits applied) and the GPUs it wants.
    pub fn spec_from(
        &self,
        r: pb::CreateContainerRequest,
        id: String,
    ) -> Result<(ContainerSpec, GpuRequest), RuntimeError> {
        if !r.ssh_public_keys.is_empty() {
            // executor-api takes them to validator-access; here they would be dropped unseen.
            return Err(invalid(
                "ssh_public_keys",
                "renters' keys are taken by executor-api, not container-runtime".into(),
            ));
        }
        let image = self.allowed_image(&r.image)?;
        let gpus = GpuRequest { count: r.gpu_count, uuids: r.gpu_uuids.clone() };
        if (gpus.count > 0 || !gpus.uuids.is_empty()) && !self.config.enable_gpu_passthrough {
            return Err(RuntimeError::GpuPassthroughOff);
        }
        let ports = ports_from(&r.ports, "ports")?;
        let protected: Vec<&Path> = self.protected.iter().map(PathBuf::as_path).collect();
        let mounts = r
            .mounts
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let allowed = &self.config.allowed_host_paths;
                spec::check_mount(i, &m.host_path, &m.container_path, m.read_only, allowed, &protected)
                    .map_err(RuntimeError::Mount)
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
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
                disk_bytes: res.disk_bytes,
            },
            mounts,
            gpu_uuids: Vec::new(),
            ttl: (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds)),
            owner: r.owner,
            created_at: labels::now_secs(),
            dns: self.config.network_config.dns_servers.clone(),
            network: None,
            publish_ip: self.ports.host_ip(),
            workload: Workload::default(),
            volumes: Vec::new(),
        };
        spec.gpu_uuids = gpus.uuids.clone();
        spec.validate()?;
        spec.gpu_uuids.clear();
        spec.apply_limits(&self.config.resource_limits, self.engine.host_cpus())?;
        spec.workload = Workload::resolve(
            &r.workload.unwrap_or_default(),
            spec.resources.memory_bytes,
            &self.config.workload,
            &self.host_limits,
            &self.config.gpu_config.driver_capabilities,
        )
        .map_err(SpecError::from)?;
        Ok((spec, gpus))
    }

    /// Fills what `r` leaves empty from the template it names (see `[docker.templates]`);
    /// the template's name, if it names one.
    fn apply_template(&self, r: &mut pb::CreateContainerRequest) -> Result<Option<String>, RuntimeError> {
        if r.template.is_empty() {
            return Ok(None);
        }
        let Some(t) = self.config.templates.get(&r.template) else {
            let known: Vec<&str> = self.config.templates.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
            return Err(invalid(
                "template",
                format!("`{}` is not a template of this executor (templates: {known})", r.template),
            ));
        };
        if r.image.is_empty() {
            r.image.clone_from(&t.image);
        }
        if r.command.is_empty() && r.args.is_empty() {
            r.command.clone_from(&t.command);
        }
        for (name, value) in &t.env {
            r.env.entry(name.clone()).or_insert_with(|| value.clone());
        }
        if r.ports.is_empty() {
            r.ports = template_ports(t);
        }
        let workload = r.workload.get_or_insert_default();
        if workload.shm_bytes == 0 {
            workload.shm_bytes = t.shm_bytes.get();
        }
        for (volume, path) in r.volumes.iter_mut().zip(&t.volume_paths) {
            if volume.container_path.is_empty() {
                volume.container_path.clone_from(path);
            }
        }
        Ok(Some(std::mem::take(&mut r.template)))
    }

    /// Turns drain on or off (see `drain`); `reason` at most 256 bytes.
    pub async fn set_drain(&self, draining: bool, reason: &str) -> Result<pb::DrainState, RuntimeError> {
        if reason.len() > crate::drain::MAX_REASON || reason.contains(['\n', '\0']) {
            return Err(invalid("reason", format!("at most {} bytes on one line", crate::drain::MAX_REASON)));
        }
        let now = labels::now_secs() as i64;
        let before = self.drain.get();
        let state = self.drain.set(draining, reason, now).map_err(RuntimeError::DrainStore)?;
        if (before.draining, &before.reason) != (state.draining, &state.reason) {
            let event = pb::Event {
                kind: pb::EventKind::Drain as i32,
                draining: state.draining,
                reason: state.reason.clone(),
                ..Default::default()
            };
            self.events.record(event).await;
        }
        Ok(pb::DrainState { draining: state.draining, reason: state.reason, since: state.since })
    }

    pub fn drain_state(&self) -> pb::DrainState {
        let state = self.drain.get();
        pb::DrainState { draining: state.draining, reason: state.reason, since: state.since }
    }

    /// The templates of `[docker.templates]`.
    pub fn list_templates(&self) -> Vec<pb::Template> {
        self.config
            .templates
            .iter()
            .map(|(name, t)| pb::Template {
                name: name.clone(),
                image: t.image.clone(),
                command: t.command.clone(),
                env: t.env.clone().into_iter().collect(),
                ports: template_ports(t),
                shm_bytes: t.shm_bytes.get(),
                volume_paths: t.volume_paths.clone(),
            })
            .collect()
    }

    /// Create: validate, pull, then count and create under the lock.
    pub async fn create(&self, mut request: pb::CreateContainerRequest) -> Result<pb::Container, RuntimeError> {
        if self.config.mode == common::config::DockerMode::AgentOnly {
            return Err(RuntimeError::AgentOnly);
        }
        let drain = self.drain.get();
        if drain.draining {
            return Err(RuntimeError::Draining { reason: drain.reason, since: drain.since });
        }
        let id = labels::random_name("c-").map_err(RuntimeError::Name)?;
        let template = self.apply_template(&mut request)?;
        let asked_volumes = std::mem::take(&mut request.volumes);
        let (mut spec, gpus) = self.spec_from(request, id)?;
        if let Some(template) = template {
            spec.labels.insert(LABEL_TEMPLATE.to_owned(), template);
        }
        // Online means a network of its own: `allow_internet` without isolation is a config error.
        let online = self.config.network_config.enable_isolation;
        if online && let Err(e) = &self.shaping {
            return Err(RuntimeError::Shaping { id: None, source: e.clone() });
        }
        if !spec.ports.is_empty() && self.pool.is_none() {
            return Err(crate::ports::PortError::NoNetwork.into());
        }
        // Prefetch yields and the image collector waits until the container exists.
        let _demand = self.images.demand().await;
        let admitted = self.images.admit(&spec.image, &spec.owner, None).await?;
        spec.image = admitted.image;
        if !admitted.signature.is_empty() {
            spec.labels.insert(LABEL_SIGNATURE.to_owned(), admitted.signature);
        }
        let _guard = self.create_lock.lock().await;
        // One listing under the lock serves the cap, the GPUs and the ports held.
        let ours = self.engine.list_ours().await?;
        let cap = self.config.max_concurrent_containers as usize;
        if ours.len() >= cap {
            return Err(RuntimeError::TooMany { cap });
        }
        if gpus.count > 0 || !gpus.uuids.is_empty() {
            spec.gpu_uuids = self.assign_gpus(&gpus, &ours).await?;
        }
        if !spec.ports.is_empty() {
            self.assign_ports(&mut spec.ports, &ours)?;
        }
        // Held until the engine has the container (and so its label): no delete in between.
        // Creates without volumes need not wait for one being made.
        let _volumes = if asked_volumes.is_empty() { None } else { Some(self.volumes.lock().lock().await) };
        if !asked_volumes.is_empty() {
            let others = volumes_of(&ours);
            let paths: Vec<String> = spec.mounts.iter().map(|m| m.container_path.clone()).collect();
            spec.volumes = self.volumes.attach(&asked_volumes, &others, &paths).await?;
        }
        let mode = match &self.pool {
            Some(pool) => {
                let spare = pool.take().await?;
                spec.network = Some(spare.network.clone());
                // Ports belong to whoever owns the namespace: a container that publishes some
                // gets an endpoint of its own on the network, beside the holder.
                if spare.holder && spec.ports.is_empty() {
                    crate::holder::joining(&spare.network)
                } else {
                    spare.network
                }
            }
            None => "none".to_owned(),
        };
        // Docker gets the staged objects, never the paths a tenant might swap (see `mounts`).
        let staged = self.stage_mounts(&mut spec);
        let created = match staged {
            Ok(()) => self.engine.create(&spec, Some(&mode)).await.map_err(RuntimeError::from),
            Err(e) => Err(e),
        };
        if created.is_err() {
            self.staging.release(&spec.id);
        }
        if let (Some(pool), Some(name)) = (&self.pool, &spec.network) {
            if created.is_err() {
                let _ = self.engine.remove_network(name).await;
            }
            pool.settled(name);
        }
        created?;
        tracing::info!(id = %spec.id, image = %spec.image, owner = %spec.owner, network = %mode, gpus = ?spec.gpu_uuids, "container created");
        let event = pb::Event {
            kind: pb::EventKind::Created as i32,
            container_id: spec.id.clone(),
            owner: spec.owner.clone(),
            image: spec.image.to_string(),
            ..Default::default()
        };
        self.events.record(event).await;
        self.describe(&spec.id).await
    }

    /// Makes volume `name` (see `volumes`).
    pub async fn create_volume(&self, name: &str, size_bytes: u64) -> Result<pb::Volume, RuntimeError> {
        if self.config.mode == common::config::DockerMode::AgentOnly {
            return Err(RuntimeError::AgentOnly);
        }
        let _held = self.volumes.lock().lock().await;
        Ok(self.volumes.create(name, size_bytes).await?)
    }

    /// Every volume, with the containers that have it.
    pub async fn list_volumes(&self) -> Result<Vec<pb::Volume>, RuntimeError> {
        let ours = self.engine.list_ours().await?;
        Ok(self.volumes.list(&users_of(&ours)))
    }

    /// Deletes volume `name`, refused while a container has it; its bytes are wiped.
    pub async fn delete_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let _held = self.volumes.lock().lock().await;
        let ours = self.engine.list_ours().await?;
        Ok(self.volumes.delete(name, &users_of(&ours)).await?)
    }

    /// Bind-mounts each checked host path onto its staging path and points the spec there.
    fn stage_mounts(&self, spec: &mut ContainerSpec) -> Result<(), RuntimeError> {
        for (index, m) in spec.mounts.iter_mut().enumerate() {
            let staged = self.staging.stage(&spec.id, index, &m.host_path, m.read_only).map_err(|e| {
                let field = format!("mounts[{index}].host_path");
                RuntimeError::Mount(spec::MountError::Refused(SpecError { field, message: e.to_string() }))
            })?;
            m.host_path = staged;
        }
        Ok(())
    }

    /// Gives `ports` their host ports, given `ours`, every container of ours (the create lock is
    /// held by the caller).
    pub(super) fn assign_ports(&self, ports: &mut [Port], ours: &[ContainerSummary]) -> Result<(), RuntimeError> {
        let in_use = crate::ports::held(ours.iter().filter_map(|c| c.labels.as_ref()));
        let ip = self.ports.probe_ip();
        let assigned = self.ports.allocate(ports, &in_use, |port, udp| crate::ports::bindable(ip, port, udp));
        if let Err(crate::ports::PortError::Exhausted { .. }) = &assigned {
            metrics::counter!("executor_container_runtime_ports_exhausted_total").increment(1);
        }
        // `…_ports_allocated` has one writer, the reaper's round, so it never goes back in time.
        assigned?;
        Ok(())
    }

    /// Whether published ports can be reached (see `ports::check_reachable`); creates wait
    /// meanwhile, so none takes the port the check listens on.
    pub async fn check_ports(&self) -> Result<pb::CheckPortsResponse, RuntimeError> {
        let _guard = self.create_lock.lock().await;
        let in_use = self.ports_in_use().await?;
        let found =
            crate::ports::check_reachable(&self.ports, &in_use).await.map_err(crate::ports::PortError::Check)?;
        Ok(pb::CheckPortsResponse {
            host_port: found.host_port.into(),
            target: found.target,
            tcp_reachable: found.tcp.is_none(),
            udp_reachable: found.udp.is_none(),
            tcp_error: found.tcp.unwrap_or_default(),
            udp_error: found.udp.unwrap_or_default(),
            note: found.note,
            pool_size: self.ports.size() as u32,
            allocated: in_use.len() as u32,
        })
    }

    /// The host ports our containers hold, from their labels.
    pub async fn ports_in_use(&self) -> Result<std::collections::BTreeSet<u16>, RuntimeError> {
        let ours = self.engine.list_ours().await?;
        Ok(crate::ports::held(ours.iter().filter_map(|c| c.labels.as_ref())))
    }

    /// Assigns GPUs for `request`, given `ours`, every container of ours (the create lock is
    /// held by the caller).
    async fn assign_gpus(&self, request: &GpuRequest, ours: &[ContainerSummary]) -> Result<Vec<String>, RuntimeError> {
        let inventory = self.gpu_monitor.inventory().await.map_err(RuntimeError::GpuInventory)?;
        let visible = common::config::parse_visible_devices(&self.config.gpu_config.visible_devices)
            .map_err(RuntimeError::VisibleDevices)?;
        let candidates = crate::gpus::tenant_gpus(&inventory.gpus, visible.as_deref());
        let in_use = crate::gpus::holders(ours.iter().filter_map(|c| c.labels.as_ref()));
        let unavailable = crate::gpus::unavailable(&inventory);
        Ok(crate::gpus::assign(&candidates, &in_use, &unavailable, request.count, &request.uuids)?)
    }
}

/// A template's ports as a request has them (host ports from the pool); the config checked
/// that each parses.
fn template_ports(t: &common::config::Template) -> Vec<pb::PortMapping> {
    t.ports
        .iter()
        .filter_map(|p| common::config::templates::parse_port(p).ok())
        .map(|(port, udp)| pb::PortMapping {
            container_port: port.into(),
            protocol: if udp { "udp" } else { "tcp" }.to_owned(),
            ..Default::default()
        })
        .collect()
}

/// Each of our containers' volumes, by our id.
fn volumes_of(ours: &[ContainerSummary]) -> Vec<(String, Vec<Attached>)> {
    ours.iter()
        .filter_map(|c| c.labels.as_ref())
        .filter_map(|l| {
            let attached = crate::volumes::parse_label(l.get(LABEL_VOLUMES)?);
            Some((l.get(LABEL_ID).cloned().unwrap_or_default(), attached))
        })
        .collect()
}

/// Volume name → the ids of our containers that have it.
fn users_of(ours: &[ContainerSummary]) -> std::collections::HashMap<String, Vec<String>> {
    let mut users: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for (id, attached) in volumes_of(ours) {
        for a in attached {
            users.entry(a.volume).or_default().push(id.clone());
        }
    }
    users
}
