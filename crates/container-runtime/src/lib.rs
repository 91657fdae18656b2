//! container-runtime: tenant containers on the Docker engine. The only crate that links
//! `bollard`.
//!
//! It serves the container API of `proto/executor/container_runtime.proto` on its socket:
//! [`grpc`] takes each request apart and maps errors to stable reasons; the [`domain`] holds
//! the rules (create, start, stop, remove, list, reconcile, reap, GPU memory enforcement) and
//! [`status`] turns what the engine says into proto messages. Containers are hardened
//! ([`spec`]), from allowed registries ([`reference`](mod@reference)), with their image's cosign signature
//! verified and pulled ([`admission`], [`signatures`]) into the image cache ([`images`]:
//! prefetch, garbage collection), on the engine ([`engine`]), within the
//! configured limits: GPUs by UUID from gpu-monitor's inventory ([`gpus`], [`gpu_monitor`]), a
//! network of their own ([`netpool`], [`firewall`]) shaped to `network_bps` ([`shaping`]), GPU
//! memory watched ([`gpu_memory`], [`stops`]). Docker is the only state, read back through our
//! labels ([`labels`]): on start the service reconciles, and the [`reaper`] removes what
//! expired, through the one removal path ([`teardown`]). It also watches whether the engine
//! answers (`executor_container_runtime_docker_up`), follows its restarts, and checks the
//! engine for `executor validate`.
//!
//! Commands run in tenant containers as a unary `Exec` or an `Attach` session (a command or a
//! login shell, streamed both ways, with or without a TTY): the login shell is found from the
//! host inside the container's root ([`rootfs`]), and an exec whose caller went (or whose
//! deadline passed) has its processes killed from the host ([`proctree`]). A `Forward` is a
//! TCP connection to a container's own loopback, made inside its network namespace (a
//! renter's `ssh -L`).
//!
//! Modules only use modules below them (the test `modules_only_use_modules_below_them` holds
//! the order): `grpc` over `domain`; `domain` over `reaper`, `teardown`, `netpool`, `engine`,
//! `images`, `admission`, `status` and the leaves; `engine` over `spec`, `firewall`, `labels`; `labels`,
//! `proctree`, `rootfs`, `reference`, `shaping`, `gpus`, `gpu_memory`, `gpu_monitor`, `drain`
//! and `firewall` use none.

pub mod admission;
pub mod confinement;
pub mod domain;
pub mod drain;
pub mod engine;
pub mod events;
pub mod firewall;
pub mod gpu_memory;
pub mod gpu_monitor;
pub mod gpus;
pub mod grpc;
pub mod holder;
pub mod images;
pub mod labels;
pub mod mounts;
pub mod netpool;
pub mod ports;
pub mod proctree;
pub mod reaper;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod shaping;
pub mod signatures;
pub mod spec;
pub mod status;
pub mod stops;
pub mod teardown;
pub mod volumes;
pub mod workload;

use std::time::Duration;

use common::ServiceName;
use common::check::Check;
use common::config::{DockerConfig, LoadedConfig};
use common::service::{BoxError, Service, ServiceContext};

/// How often the engine is pinged for the `docker_up` gauge.
const DOCKER_PING_INTERVAL: Duration = Duration::from_secs(10);

/// How long shutdown waits for the open Attach sessions to end (each kills its exec's
/// processes and tells its client).
const SESSIONS_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The Docker checks of `executor validate`: engine reachable, its cgroup driver, the NVIDIA
/// runtime, user namespaces, and whether it can confine tenants (seccomp pinned, AppArmor).
pub async fn docker_checks(config: &DockerConfig) -> Vec<Check> {
    let docker = match engine::connect(config).await {
        Ok(docker) => docker,
        Err(e) => return vec![Check::fail("docker", e.to_string())],
    };
    let info = match docker.info().await {
        Ok(info) => info,
        Err(e) => return vec![Check::fail("docker", format!("Docker engine at {}: {e}", config.socket))],
    };
    let mut checks = vec![Check::pass(
        "docker",
        format!(
            "engine {} at {}, API {}",
            info.server_version.as_deref().unwrap_or("?"),
            config.socket,
            docker.client_version()
        ),
    )];
    checks.extend(engine_checks(config, &info));
    checks.push(match engine::confinement(&docker, &info).await {
        Ok(c) => Check::pass("docker confinement", c.describe()),
        Err(e) => Check::fail("docker confinement", e.to_string()),
    });
    checks
}

/// What the engine's `info` says that `executor validate` reports: its cgroups, the NVIDIA
/// runtime (registered; a warning when it is Docker's default runtime), and whether it remaps
/// user namespaces.
pub fn engine_checks(config: &DockerConfig, info: &bollard::models::SystemInfo) -> Vec<Check> {
    let mut checks = Vec::new();
    let driver = info.cgroup_driver.map(|d| d.to_string()).unwrap_or_else(|| "unknown".to_owned());
    let version = info.cgroup_version.map(|v| v.to_string()).unwrap_or_else(|| "unknown".to_owned());
    checks.push(Check::pass("docker cgroups", format!("driver {driver}, cgroup v{version}")));
    let nvidia = info.runtimes.as_ref().is_some_and(|r| r.contains_key("nvidia"));
    let nvidia_default = info.default_runtime.as_deref() == Some("nvidia");
    checks.push(match (config.enable_gpu_passthrough, nvidia) {
        _ if nvidia_default => Check::warn(
            "nvidia runtime",
            "`nvidia` is Docker's default runtime: every container on this host whose environment names GPUs \
             (NVIDIA_VISIBLE_DEVICES) gets them. Tenant containers are safe (told NVIDIA_VISIBLE_DEVICES=void unless \
             GPUs are assigned), other containers are not; prefer the default `runc` (GPUs reach tenants by device \
             request)",
        ),
        (_, true) => Check::pass("nvidia runtime", "registered with Docker"),
        (true, false) => Check::fail(
            "nvidia runtime",
            "docker.enable_gpu_passthrough = true but Docker has no `nvidia` runtime (install nvidia-container-toolkit, run `nvidia-ctk runtime configure --runtime=docker`)",
        ),
        (false, false) => Check::skip("nvidia runtime", "not registered; docker.enable_gpu_passthrough = false"),
    });
    let userns = info.security_options.iter().flatten().any(|o| o.split(',').any(|kv| kv == "name=userns"));
    checks.push(if userns {
        Check::pass("docker userns", "on: root in a tenant container is an unprivileged user on the host (userns-remap)")
    } else {
        Check::warn(
            "docker userns",
            "off: root in a tenant container is root on the host's files it reaches; `userns-remap` in daemon.json turns it on",
        )
    });
    checks
}

/// The container-runtime service.
#[derive(Debug)]
pub struct ContainerRuntime {
    runtime: domain::Runtime,
}

/// The gRPC service name.
pub const GRPC_SERVICE: &str = "executor.runtime.v1.ContainerRuntime";

impl Service for ContainerRuntime {
    const NAME: ServiceName = ServiceName::ContainerRuntime;
    const GRPC_SERVICES: &'static [&'static str] = &[GRPC_SERVICE];

    async fn check(loaded: &LoadedConfig) -> Vec<Check> {
        let mut checks = docker_checks(&loaded.config.docker).await;
        checks.extend(admission::checks(&loaded.config.docker.registry));
        checks.push(images::check(&loaded.config.docker));
        checks.push(ports::check(&loaded.config).await);
        checks.push(mode_check(&loaded.config.docker));
        checks
    }

    async fn build(ctx: &ServiceContext) -> Result<Self, BoxError> {
        let config = &ctx.config().docker;
        let mode = mode_check(config);
        if mode.status == common::check::CheckStatus::Fail {
            return Err(mode.detail.into());
        }
        let identity = common::identity::ExecutorIdentity::load_or_create(&ctx.config().data_dir)?;
        let engine = async {
            let engine = engine::Engine::connect(config, &identity.executor_id()).await?;
            if config.network_config.enable_isolation {
                // Without these rules a tenant could reach every service the host binds on 0.0.0.0.
                let ipv6 =
                    firewall::ensure().await.map_err(|e| format!("{e} (container-runtime needs root for iptables)"))?;
                tracing::info!(?ipv6, "host firewall rules in place for tenant bridges");
            }
            Ok::<_, BoxError>(engine)
        };
        // The probe touches only its own devices: it runs beside the engine and the firewall.
        let (engine, shaping) = tokio::join!(engine, shaping::probe());
        let engine = engine?;
        match engine.disk_device() {
            Some(device) => tracing::info!(device, "disk I/O limits apply to the device behind Docker's data root"),
            None => tracing::warn!("no block device found behind Docker's data root: disk I/O limits cannot apply"),
        }
        if let Err(e) = &shaping {
            tracing::error!(error = %e, "network_bps cannot be enforced: creates of containers with a network will fail");
        }
        let runtime = domain::Runtime::new(engine, ctx.config(), shaping)?;
        metrics::gauge!("executor_container_runtime_ports_pool_size").set(runtime.ports().size() as f64);
        runtime.reconcile().await?;
        runtime.volumes().mount_all().await;
        Ok(Self { runtime })
    }

    fn add_routes(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        routes.add_service(common::proto::runtime::v1::container_runtime_server::ContainerRuntimeServer::new(
            grpc::RuntimeGrpc::new(self.runtime.clone()),
        ))
    }

    async fn run(self, ctx: ServiceContext) -> Result<(), BoxError> {
        ctx.health.set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::Serving).await;
        metrics::describe_gauge!("executor_container_runtime_docker_up", "1 when the Docker engine answers a ping.");
        let mut tick = tokio::time::interval(DOCKER_PING_INTERVAL);
        let mut reap = tokio::time::interval(ctx.config().docker.reap_interval);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_up = None;
        // GPU memory limits are checked as often as gpu-monitor collects.
        let mut gpu_watch = tokio::time::interval(ctx.config().system.update_interval);
        gpu_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watch_gpus = ctx.config().docker.enable_gpu_passthrough;
        let mut gpu_monitor_ok = true;
        metrics::describe_counter!(
            "executor_container_runtime_stops_total",
            "Containers the executor stopped, by reason (gpu_memory: over its GPU memory limit)."
        );
        metrics::describe_counter!(
            "executor_container_runtime_reaped_total",
            "Containers (TTL) and networks (orphans) removed by the reaper."
        );
        metrics::describe_gauge!("executor_container_runtime_containers", "Containers of this executor by state.");
        admission::describe_metrics();
        images::describe_metrics();
        drain::describe_metrics();
        grpc::describe_metrics();
        metrics::describe_counter!(
            "executor_container_runtime_creates_total",
            "Create requests by result (ok or the gRPC code)."
        );
        metrics::describe_histogram!(
            "executor_container_runtime_create_duration_seconds",
            "Time to create a container (validation, pull, network, create)."
        );
        // Rentals that went down with the host, the engine, or while the node was away.
        let started = std::time::Instant::now();
        let resumed = self.runtime.resume().await;
        if !resumed.is_empty() {
            tracing::info!(resumed = ?resumed, ms = started.elapsed().as_millis() as u64, "containers meant to run are running again");
        }
        // A task of its own: the rounds below (the reaper measuring writable layers takes
        // seconds) would hold up the engine's events, and with them the events watchers wait for.
        let follow = tokio::spawn({
            let runtime = self.runtime.clone();
            let isolation = ctx.config().docker.network_config.enable_isolation;
            async move { follow_engine(&runtime, isolation).await }
        });
        let _follow = AbortOnDrop(follow);
        let prefetch = std::sync::Arc::clone(self.runtime.images()).prefetch();
        tokio::pin!(prefetch);
        // Agent-only: no container is made here, so no image is pulled ahead for one.
        let mut prefetching = ctx.config().docker.mode == common::config::DockerMode::Exclusive;
        loop {
            tokio::select! {
                () = &mut prefetch, if prefetching => prefetching = false,
                _ = reap.tick() => {
                    match self.runtime.reap().await {
                        Ok(round) => {
                            reaper::container_metrics(self.runtime.engine(), &round.running).await;
                            self.runtime.enforce_disk(&round.running).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "reaper round failed"),
                    }
                    if let Err(e) = self.runtime.collect_images().await {
                        tracing::warn!(error = %e, "image collector round failed");
                    }
                }
                _ = gpu_watch.tick(), if watch_gpus => {
                    let result = self.runtime.enforce_gpus().await;
                    if let Err(e) = &result && gpu_monitor_ok {
                        tracing::warn!(error = %e, "cannot check GPU health and memory limits (gpu-monitor)");
                    }
                    gpu_monitor_ok = result.is_ok();
                }
                _ = tick.tick() => {
                    let up = self.runtime.engine().docker().ping().await;
                    if was_up != Some(up.is_ok()) {
                        match &up {
                            Ok(_) => tracing::info!(socket = %ctx.config().docker.socket, "Docker engine is up"),
                            Err(e) => tracing::warn!(socket = %ctx.config().docker.socket, error = %e, "Docker engine is down"),
                        }
                    }
                    was_up = Some(up.is_ok());
                    metrics::gauge!("executor_container_runtime_docker_up").set(if up.is_ok() { 1.0 } else { 0.0 });
                }
                () = ctx.shutdown.cancelled() => {
                    // Open streams would hold the gRPC server's graceful shutdown open.
                    self.runtime.close_sessions(SESSIONS_CLOSE_WAIT).await;
                    if let Some(pool) = self.runtime.pool() {
                        pool.drain().await;
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// Aborts its task when dropped (the service's run ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `docker mode` line of `executor validate`: `exclusive` where the kubelet runs the
/// NVIDIA device plugin would hand out GPUs Kubernetes also hands out, so it fails (and
/// container-runtime does not start).
fn mode_check(config: &common::config::DockerConfig) -> common::check::Check {
    use common::check::Check;
    use common::config::DockerMode;
    let plugin = common::config::nvidia_device_plugin(&config.device_plugins_dir);
    match (config.mode, plugin) {
        (DockerMode::Exclusive, Some(found)) => Check::fail(
            "docker mode",
            format!(
                "docker.mode = \"exclusive\", but this node's kubelet advertises nvidia.com/gpu ({found}): \
                 Kubernetes hands out these GPUs; set [docker] mode = \"agent-only\""
            ),
        ),
        (DockerMode::Exclusive, None) => Check::pass("docker mode", "exclusive: this executor makes the containers"),
        (DockerMode::AgentOnly, _) => {
            Check::pass("docker mode", "agent-only: no containers are made here (the orchestrator places workloads)")
        }
    }
}

/// How long before the engine's API went away a kill by the engine counts as part of its
/// shutdown: dockerd stops containers (SIGTERM, SIGKILL after their 10 s stop timeout, within
/// its 15 s shutdown timeout) before it closes its API. A kill the executor did not ask for,
/// with the engine still up this long after, came from outside (`docker stop`, `docker kill`).
const ENGINE_SHUTDOWN_WINDOW: Duration = Duration::from_secs(30);

/// Follows the engine's events of our containers and records why each one that stops on its
/// own stopped (its exit code, out of memory, stopped outside the executor), so it is not run
/// again (see `stops::Intent`). The stream ends when the engine goes away (a restart, an
/// upgrade); the containers it stopped on its way down were killed by it, not ended on their
/// own, so they are still meant to run: once the engine answers again they are started and
/// shaped again, and the host firewall rules put back if they went. Never returns.
async fn follow_engine(runtime: &domain::Runtime, isolation: bool) {
    use common::proto::runtime::v1 as pb;
    use tokio_stream::StreamExt;
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        // Our id → when the engine signalled the container (`kill`, without being asked by us).
        let mut killed: std::collections::HashMap<String, tokio::time::Instant> = std::collections::HashMap::new();
        // Our ids whose last end was the kernel's OOM killer.
        let mut oom: std::collections::HashSet<String> = std::collections::HashSet::new();
        // Our id → the engine's id of the container last started under it.
        let mut started: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let events = runtime.engine().events();
        tokio::pin!(events);
        loop {
            let event = tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => event,
                    _ => break,
                },
                _ = sweep.tick() => {
                    stopped_outside(runtime, &mut killed).await;
                    continue;
                }
            };
            let actor = event.actor.unwrap_or_default();
            let docker_id = actor.id.unwrap_or_default();
            let attributes = actor.attributes.unwrap_or_default();
            let Some(id) = attributes.get(labels::LABEL_ID) else { continue };
            match event.action.as_deref() {
                Some("kill") if !runtime.engine().stopped_by_us(id) => {
                    killed.insert(id.clone(), tokio::time::Instant::now());
                }
                Some("oom") => {
                    oom.insert(id.clone());
                }
                Some("die") => {
                    let by_us = runtime.engine().stopped_by_us(id);
                    let code = attributes.get("exitCode").and_then(|c| c.parse::<i64>().ok());
                    let oom = oom.remove(id);
                    // The container an update replaced (see `domain::recreate`), its end seen
                    // after the new one started under its id: not the rental's end.
                    let replaced = !by_us && started.get(id).is_some_and(|now| *now != docker_id);
                    let why = match (by_us || replaced, killed.contains_key(id), oom, code) {
                        _ if replaced => "replaced by its recreation".to_owned(),
                        (true, ..) => runtime.stopped_because(id),
                        (false, _, true, _) => "out of memory".to_owned(),
                        (false, true, false, _) => {
                            "killed outside the executor (docker stop or kill, or the engine stopping)".to_owned()
                        }
                        (false, false, false, Some(code)) => format!("exited with code {code}"),
                        (false, false, false, None) => "exited".to_owned(),
                    };
                    // The event first: watchers wait for it, the intent matters at the next start.
                    runtime
                        .container_event(pb::EventKind::Died, id, &attributes, |e| {
                            e.exit_code = code.unwrap_or_default();
                            e.reason = why.clone();
                        })
                        .await;
                    if !by_us && !replaced && !killed.contains_key(id) {
                        tracing::info!(id, why, "container ended on its own; it stays stopped");
                        runtime.intend(id, &stops::Intent::Stopped(why));
                    }
                }
                Some("start") => {
                    killed.remove(id);
                    oom.remove(id);
                    started.insert(id.clone(), docker_id.clone());
                    runtime.container_event(pb::EventKind::Started, id, &attributes, |_| {}).await;
                }
                Some("destroy") => {
                    killed.remove(id);
                    oom.remove(id);
                    if started.get(id) == Some(&docker_id) {
                        started.remove(id);
                    }
                }
                _ => {}
            }
        }
        let in_shutdown = killed.values().any(|at| at.elapsed() <= ENGINE_SHUTDOWN_WINDOW);
        let lost = tokio::time::Instant::now();
        while runtime.engine().docker().ping().await.is_err() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if lost.elapsed() > Duration::from_millis(500) || in_shutdown {
            if isolation && let Err(e) = firewall::ensure().await {
                tracing::error!(error = %e, "cannot put the host firewall rules back after the engine restart");
            }
            let resumed = runtime.resume().await;
            tracing::warn!(
                down_ms = lost.elapsed().as_millis() as u64,
                resumed = ?resumed,
                "the Docker engine went away and is back; containers it stopped are running again"
            );
        }
        // A stream that ends at once with the engine up (an old engine, a proxy) is not retried hot.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Kills in `killed` older than [`ENGINE_SHUTDOWN_WINDOW`] with the engine still up came from
/// outside the executor: a container they stopped is recorded as stopped (not run again).
async fn stopped_outside(
    runtime: &domain::Runtime,
    killed: &mut std::collections::HashMap<String, tokio::time::Instant>,
) {
    let old: Vec<String> =
        killed.iter().filter(|(_, at)| at.elapsed() > ENGINE_SHUTDOWN_WINDOW).map(|(id, _)| id.clone()).collect();
    if old.is_empty() || runtime.engine().docker().ping().await.is_err() {
        return;
    }
    for id in old {
        killed.remove(&id);
        if let Ok(c) = runtime.describe(&id).await
            && c.state != common::proto::runtime::v1::ContainerState::Running as i32
        {
            tracing::warn!(id, "container stopped outside the executor (docker stop or kill); it stays stopped");
            runtime.intend(&id, &stops::Intent::Stopped("stopped outside the executor".to_owned()));
            let event = common::proto::runtime::v1::Event {
                kind: common::proto::runtime::v1::EventKind::Stopped as i32,
                container_id: id.clone(),
                owner: c.owner,
                by: "outside the executor".to_owned(),
                reason: "docker stop or kill".to_owned(),
                ..Default::default()
            };
            runtime.events().record(event).await;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The modules from the bottom up: each may use only the ones before it, so no circle can
    /// form (the crate root, which wires them together, is above them all).
    const LAYERS: &[&str] = &[
        "events",
        "labels",
        "holder",
        "proctree",
        "rootfs",
        "confinement",
        "reference",
        "firewall",
        "shaping",
        "gpus",
        "gpu_memory",
        "gpu_monitor",
        "stops",
        "drain",
        "mounts",
        "ports",
        "volumes",
        "workload",
        "status",
        "spec",
        "registry",
        "signatures",
        "admission",
        "engine",
        "images",
        "netpool",
        "teardown",
        "reaper",
        "domain",
        "grpc",
    ];

    /// `crate::<module>` uses in a module's code, its tests left out.
    fn uses(module: &str) -> Vec<String> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let files: Vec<std::path::PathBuf> = match std::fs::read_dir(src.join(module)) {
            Ok(dir) => dir.map(|e| e.unwrap().path()).collect(),
            Err(_) => vec![src.join(format!("{module}.rs"))],
        };
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                found.push(name);
            }
        }
        found
    }

    /// `executor validate` warns when the NVIDIA runtime is Docker's default.
    #[test]
    fn validate_warns_when_nvidia_is_the_default_runtime() {
        use common::check::CheckStatus;
        let nvidia = |default: &str| bollard::models::SystemInfo {
            default_runtime: Some(default.to_owned()),
            runtimes: Some(std::collections::HashMap::from([
                ("nvidia".to_owned(), bollard::models::Runtime::default()),
                ("runc".to_owned(), bollard::models::Runtime::default()),
            ])),
            ..Default::default()
        };
        let config = common::config::DockerConfig::default();
        let check =
            |info| super::engine_checks(&config, &info).into_iter().find(|c| c.name == "nvidia runtime").unwrap();
        let default = check(nvidia("nvidia"));
        assert_eq!(default.status, CheckStatus::Warn, "{default:?}");
        assert!(default.detail.contains("`nvidia` is Docker's default runtime"), "{}", default.detail);
        assert_eq!(check(nvidia("runc")).status, CheckStatus::Pass);
        let userns = |options: &[&str]| {
            let info = bollard::models::SystemInfo {
                security_options: Some(options.iter().map(|o| (*o).to_owned()).collect()),
                ..Default::default()
            };
            super::engine_checks(&config, &info).into_iter().find(|c| c.name == "docker userns").unwrap()
        };
        let on = userns(&["name=seccomp,profile=default", "name=userns"]);
        assert_eq!(on.status, CheckStatus::Pass);
        assert!(on.detail.starts_with("on:"), "{}", on.detail);
        assert_eq!(userns(&["name=seccomp,profile=default"]).status, CheckStatus::Warn);
    }

    #[test]
    fn modules_only_use_modules_below_them() {
        let mut modules: Vec<String> = std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".rs").to_owned())
            .filter(|m| m != "lib" && m != "main")
            .collect();
        modules.sort();
        let mut layered: Vec<String> = LAYERS.iter().map(|m| (*m).to_owned()).collect();
        layered.sort();
        assert_eq!(modules, layered, "every module has its place in LAYERS");
        for (level, module) in LAYERS.iter().enumerate() {
            for used in uses(module) {
                let below = LAYERS[..level].contains(&used.as_str());
                assert!(below, "`{module}` uses `crate::{used}`, which is not below it in LAYERS");
            }
        }
    }
}
