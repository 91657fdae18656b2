//! What the node says about itself: each service's health over its socket, Docker through
//! container-runtime, the GPU count through gpu-monitor (for `GET /health` and DetailedHealth),
//! and Docker's facts from container-runtime's checklist (for SystemProfile).

use std::collections::BTreeMap;
use std::time::Duration;

use common::ServiceName;
use common::config::Config;
use common::proto::gpu::v1 as gpu;
use common::proto::gpu::v1::gpu_monitor_client::GpuMonitorClient;
use common::proto::runtime::v1 as runtime;
use common::proto::runtime::v1::container_runtime_client::ContainerRuntimeClient;
use tonic::transport::Channel;
use tonic_health::ServingStatus;

/// How long a health probe waits for each service.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What SystemProfile reports about the engine; read once, through container-runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerFacts {
    pub version: String,
    pub cgroup_driver: String,
    pub nvidia_runtime: bool,
}

impl DockerFacts {
    /// From the JSON lines of `container-runtime check` (the checklist `executor validate`
    /// shows): only container-runtime talks to Docker.
    pub fn from_checks(output: &str) -> Option<Self> {
        let mut facts = DockerFacts::default();
        let mut engine = false;
        for check in output.lines().filter_map(|l| serde_json::from_str::<common::check::Check>(l).ok()) {
            let pass = check.status == common::check::CheckStatus::Pass;
            match check.name.as_str() {
                "docker" if pass => {
                    engine = true;
                    facts.version = check.detail.strip_prefix("engine ")?.split(' ').next()?.to_owned();
                }
                "docker cgroups" if pass => {
                    facts.cgroup_driver = check.detail.strip_prefix("driver ")?.split(',').next()?.trim().to_owned();
                }
                "nvidia runtime" => facts.nvidia_runtime = pass,
                _ => {}
            }
        }
        engine.then_some(facts)
    }
}

/// The services of the node and how to ask them how they are.
#[derive(Debug, Clone)]
pub struct Probes {
    pub channels: Vec<(ServiceName, Channel)>,
}

/// One look at the node: what `GET /health` and DetailedHealth report.
#[derive(Debug, Clone)]
pub struct NodeHealth {
    /// Service name → `SERVING`, `NOT_SERVING`, or `UNREACHABLE: why`.
    pub services: BTreeMap<&'static str, String>,
    /// `up`, or `down: why` / `unknown: why`.
    pub docker: String,
    /// GPUs gpu-monitor sees; `None` when it cannot be asked.
    pub gpu_count: Option<u32>,
    /// The node is drained (`Drain`); false when container-runtime cannot be asked.
    pub draining: bool,
}

impl NodeHealth {
    pub fn healthy(&self) -> bool {
        self.services.values().all(|s| s == "SERVING") && self.docker == "up"
    }
}

impl Probes {
    pub fn new(config: &Config) -> Self {
        let channels = config
            .services()
            .into_iter()
            .filter(|s| *s != ServiceName::ExecutorApi)
            .map(|s| (s, common::grpc::unix_channel(&s.socket(&config.runtime_dir))))
            .collect();
        Self { channels }
    }

    pub(crate) fn channel(&self, service: ServiceName) -> Option<Channel> {
        self.channels.iter().find(|(s, _)| *s == service).map(|(_, c)| c.clone())
    }

    /// Asks every service at once, and Docker and the GPUs through them; each answer is
    /// bounded by [`PROBE_TIMEOUT`]. executor-api itself is SERVING: it is answering.
    pub async fn probe(&self) -> NodeHealth {
        // Each check in its own task, so they run at once.
        let checks: Vec<_> = self
            .channels
            .iter()
            .map(|(name, channel)| {
                let channel = channel.clone();
                (name.as_str(), tokio::spawn(common::grpc::check_health(channel, "", PROBE_TIMEOUT)))
            })
            .collect();
        let docker = async {
            let Some(channel) = self.channel(ServiceName::ContainerRuntime) else {
                return "unknown: container-runtime is not configured".to_owned();
            };
            // Listing goes to the engine: an answer means Docker answers.
            let mut client = ContainerRuntimeClient::new(channel);
            let list = client.list(runtime::ListContainersRequest::default());
            match tokio::time::timeout(PROBE_TIMEOUT, list).await {
                Ok(Ok(_)) => "up".to_owned(),
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    "unknown: container-runtime is unreachable".to_owned()
                }
                Ok(Err(status)) => format!("down: {}", status.message()),
                Err(_) => format!("down: no answer within {PROBE_TIMEOUT:?}"),
            }
        };
        let (docker, gpu_count, draining) = tokio::join!(docker, self.gpu_count(), self.draining());
        let mut services = BTreeMap::new();
        for (name, task) in checks {
            let status = match task.await {
                Ok(Ok(ServingStatus::Serving)) => "SERVING".to_owned(),
                Ok(Ok(other)) => format!("{other:?}").to_uppercase(),
                Ok(Err(e)) => format!("UNREACHABLE: {}", e.message()),
                Err(e) => format!("UNREACHABLE: {e}"),
            };
            services.insert(name, status);
        }
        services.insert(ServiceName::ExecutorApi.as_str(), "SERVING".to_owned());
        NodeHealth { services, docker, gpu_count, draining }
    }
}

impl Probes {
    /// Whether container-runtime says the node is drained.
    async fn draining(&self) -> bool {
        let Some(channel) = self.channel(ServiceName::ContainerRuntime) else { return false };
        let mut client = ContainerRuntimeClient::new(channel);
        let call = client.get_drain(runtime::GetDrainRequest {});
        tokio::time::timeout(PROBE_TIMEOUT, call)
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|r| r.into_inner().draining)
    }

    /// GPUs in gpu-monitor's inventory; `None` when it does not answer in time.
    pub(crate) async fn gpu_count(&self) -> Option<u32> {
        let channel = self.channel(ServiceName::GpuMonitor)?;
        let mut client = GpuMonitorClient::new(channel);
        let call = client.inventory(gpu::InventoryRequest {});
        let inventory = tokio::time::timeout(PROBE_TIMEOUT, call).await.ok()?.ok()?.into_inner();
        Some(inventory.gpus.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_facts_from_the_checklist() {
        let text = r#"{"name":"docker","status":"pass","detail":"engine 20.10.24+dfsg1 at unix:///var/run/docker.sock, API 1.41"}
{"name":"docker cgroups","status":"pass","detail":"driver cgroupfs, cgroup v1"}
{"name":"nvidia runtime","status":"skip","detail":"not registered; docker.enable_gpu_passthrough = false"}"#;
        let facts = DockerFacts::from_checks(text).unwrap();
        assert_eq!(
            facts,
            DockerFacts { version: "20.10.24+dfsg1".into(), cgroup_driver: "cgroupfs".into(), nvidia_runtime: false }
        );
        let down = r#"{"name":"docker","status":"fail","detail":"Docker engine at unix:///x: refused"}"#;
        assert_eq!(DockerFacts::from_checks(down), None);
    }
}
