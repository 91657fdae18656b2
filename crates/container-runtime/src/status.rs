//! What the engine says about a container, as our proto messages: inspect output as a
//! `Container` (state, our labels read back, the tenant's own labels, the published ports) and
//! a stats sample as `ContainerStats`. Pure conversions: no engine calls, no service state.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerInspectResponse, ContainerStatsResponse, PortBinding};
use common::proto::runtime::v1 as pb;

use crate::labels::{
    LABEL_CREATED, LABEL_ID, LABEL_OWNER, LABEL_SIGNATURE, LABEL_TEMPLATE, LABEL_TTL, TENANT_LABEL_PREFIX,
};

/// Inspect output as our `Container` (`stop_reason` is the service's, left empty here).
pub fn container(inspect: &ContainerInspectResponse) -> pb::Container {
    use bollard::models::ContainerStateStatusEnum as S;
    let labels: HashMap<String, String> = inspect.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let state = inspect.state.as_ref();
    let created: i64 = label(LABEL_CREATED).parse().unwrap_or(0);
    let ttl: i64 = label(LABEL_TTL).parse().unwrap_or(0);
    let status = match state.and_then(|s| s.status) {
        Some(S::CREATED) => pb::ContainerState::Created,
        Some(S::RUNNING) => pb::ContainerState::Running,
        Some(S::PAUSED) => pb::ContainerState::Paused,
        Some(S::RESTARTING) => pb::ContainerState::Restarting,
        Some(S::EXITED) | Some(S::STOPPING) => pb::ContainerState::Exited,
        Some(S::DEAD) => pb::ContainerState::Dead,
        Some(S::REMOVING) => pb::ContainerState::Removing,
        _ => pb::ContainerState::Unspecified,
    };
    pb::Container {
        id: label(LABEL_ID),
        docker_id: inspect.id.clone().unwrap_or_default(),
        image: inspect.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default(),
        image_digest: inspect.image.clone().unwrap_or_default(),
        state: status as i32,
        exit_code: state.and_then(|s| s.exit_code).unwrap_or(0),
        gpu_uuids: crate::labels::gpus(&labels).map(str::to_owned).collect(),
        ports: match labels.get(crate::ports::LABEL_PORTS) {
            Some(recorded) => crate::ports::parse_label(recorded).iter().map(mapping).collect(),
            None => ports(inspect),
        },
        labels: labels
            .iter()
            .filter(|(k, _)| k.starts_with(TENANT_LABEL_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created_at: created,
        expires_at: if ttl > 0 { created + ttl } else { 0 },
        stop_reason: String::new(),
        owner: label(LABEL_OWNER),
        image_signature: label(LABEL_SIGNATURE),
        template: label(LABEL_TEMPLATE),
        recreated_at: labels.get(crate::labels::LABEL_RECREATED).and_then(|v| v.parse().ok()).unwrap_or(0),
        workload: Some(crate::workload::from_inspect(inspect)),
        volumes: crate::volumes::parse_label(labels.get(crate::volumes::LABEL_VOLUMES).map_or("", String::as_str))
            .iter()
            .map(crate::volumes::Attached::to_proto)
            .collect(),
    }
}

/// A recorded port as our message (the external fields are the service's, left empty here).
fn mapping(p: &crate::ports::Port) -> pb::PortMapping {
    pb::PortMapping {
        container_port: p.container_port.into(),
        host_port: p.host_port.into(),
        protocol: p.protocol().to_owned(),
        ..Default::default()
    }
}

/// The published ports of a container made before the ports label (ours all carry
/// `ai.basilica.executor.ports`), ordered by port and protocol. Every port we create is in
/// `HostConfig.PortBindings` (host port empty when Docker picks one); while the container runs,
/// `NetworkSettings.Ports` holds the host port Docker picked. A container on an `internal`
/// network has no `NetworkSettings.Ports`, so its ports are reported as they were asked for.
pub fn ports(inspect: &ContainerInspectResponse) -> Vec<pb::PortMapping> {
    let asked = inspect.host_config.as_ref().and_then(|h| h.port_bindings.as_ref());
    let bound = inspect.network_settings.as_ref().and_then(|n| n.ports.as_ref());
    let host_port = |bindings: Option<&Option<Vec<PortBinding>>>| -> Option<u32> {
        bindings?.as_ref()?.iter().find_map(|b| b.host_port.as_deref()?.parse::<u32>().ok().filter(|p| *p > 0))
    };
    let mut out: BTreeMap<(u32, String), u32> = BTreeMap::new();
    for key in asked.into_iter().flat_map(|m| m.keys()) {
        let Some((port, protocol)) = parse_port_key(key) else { continue };
        let host = host_port(bound.and_then(|b| b.get(key))).or_else(|| host_port(asked.and_then(|a| a.get(key))));
        out.insert((port, protocol), host.unwrap_or(0));
    }
    out.into_iter()
        .map(|((container_port, protocol), host_port)| pb::PortMapping {
            container_port,
            host_port,
            protocol,
            ..Default::default()
        })
        .collect()
}

/// `8888/tcp` as (8888, "tcp"); Docker writes a bare port for TCP.
fn parse_port_key(key: &str) -> Option<(u32, String)> {
    let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    Some((port.parse().ok()?, protocol.to_owned()))
}

/// A one-shot stats sample as our `ContainerStats` for our id `id`.
pub fn stats(id: String, stats: &ContainerStatsResponse) -> pb::ContainerStats {
    let cpu = |s: &Option<bollard::models::ContainerCpuStats>| {
        s.as_ref().map_or((0, 0, 1), |c| {
            (
                c.cpu_usage.as_ref().and_then(|u| u.total_usage).unwrap_or(0),
                c.system_cpu_usage.unwrap_or(0),
                c.online_cpus.unwrap_or(1),
            )
        })
    };
    let (total, system, cpus) = cpu(&stats.cpu_stats);
    let (pre_total, pre_system, _) = cpu(&stats.precpu_stats);
    let delta_system = system.saturating_sub(pre_system);
    let cpu_percent = if delta_system == 0 {
        0.0
    } else {
        total.saturating_sub(pre_total) as f64 / delta_system as f64 * f64::from(cpus) * 100.0
    };
    let (rx, tx) = stats.networks.as_ref().map_or((0, 0), |n| {
        n.values().fold((0, 0), |(r, t), s| (r + s.rx_bytes.unwrap_or(0), t + s.tx_bytes.unwrap_or(0)))
    });
    let (read, write) =
        stats.blkio_stats.as_ref().and_then(|b| b.io_service_bytes_recursive.as_ref()).map_or((0, 0), |entries| {
            entries.iter().fold((0, 0), |(r, w), e| match e.op.as_deref().map(str::to_lowercase).as_deref() {
                Some("read") => (r + e.value.unwrap_or(0), w),
                Some("write") => (r, w + e.value.unwrap_or(0)),
                _ => (r, w),
            })
        });
    let memory = stats.memory_stats.as_ref();
    pb::ContainerStats {
        id,
        cpu_percent,
        memory_usage_bytes: memory.and_then(|m| m.usage).unwrap_or(0),
        memory_limit_bytes: memory.and_then(|m| m.limit).unwrap_or(0),
        network_rx_bytes: rx,
        network_tx_bytes: tx,
        block_read_bytes: read,
        block_write_bytes: write,
        pids: stats.pids_stats.as_ref().and_then(|p| p.current).unwrap_or(0),
        // The writable layer and the volumes are the runtime's to fill in (another inspect).
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(value: serde_json::Value) -> ContainerInspectResponse {
        serde_json::from_value(value).unwrap()
    }

    fn port(container_port: u32, host_port: u32, protocol: &str) -> pb::PortMapping {
        pb::PortMapping { container_port, host_port, protocol: protocol.into(), ..Default::default() }
    }

    #[test]
    fn ports_come_from_the_engine_bindings() {
        // Created, not started: the ports as asked, Docker's choice still open (0).
        let created = inspect(serde_json::json!({
            "HostConfig": {"PortBindings": {
                "8888/tcp": [{"HostIp": "", "HostPort": ""}],
                "53/udp": [{"HostIp": "", "HostPort": "5353"}]
            }},
            "NetworkSettings": {"Ports": {}}
        }));
        assert_eq!(ports(&created), vec![port(53, 5353, "udp"), port(8888, 0, "tcp")]);
        // Running: the host port Docker picked, IPv4 and IPv6 bindings reported once.
        let running = inspect(serde_json::json!({
            "HostConfig": {"PortBindings": {"8888/tcp": [{"HostPort": ""}]}},
            "NetworkSettings": {"Ports": {"8888/tcp": [
                {"HostIp": "0.0.0.0", "HostPort": "32768"}, {"HostIp": "::", "HostPort": "32768"}
            ]}}
        }));
        assert_eq!(ports(&running), vec![port(8888, 32768, "tcp")]);
        // On an internal network nothing is published: the bindings asked for are reported.
        let internal = inspect(serde_json::json!({
            "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}},
            "NetworkSettings": {"Ports": null}
        }));
        assert_eq!(ports(&internal), vec![port(80, 8080, "tcp")]);
        assert!(ports(&inspect(serde_json::json!({}))).is_empty());
    }

    #[test]
    fn our_labels_are_read_back_and_hidden() {
        let c = container(&inspect(serde_json::json!({
            "Id": "abc",
            "Image": "sha256:1",
            "Config": {"Image": "busybox", "Labels": {
                "ai.basilica.executor.id": "c-1", "ai.basilica.executor.owner": "o",
                "ai.basilica.executor.created": "100", "ai.basilica.executor.ttl_seconds": "60",
                "ai.basilica.executor.gpus": "GPU-a,GPU-b", "ai.basilica.tenant.team": "a",
                "com.centurylinklabs.watchtower.enable": "false", "maintainer": "an image's label"
            }},
            "State": {"Status": "running", "ExitCode": 0},
            "HostConfig": {"PortBindings": {"22/tcp": [{"HostPort": "2222"}]}}
        })));
        assert_eq!((c.id.as_str(), c.owner.as_str(), c.docker_id.as_str()), ("c-1", "o", "abc"));
        assert_eq!(c.state, pb::ContainerState::Running as i32);
        assert_eq!((c.created_at, c.expires_at), (100, 160));
        assert_eq!(c.gpu_uuids, ["GPU-a", "GPU-b"]);
        assert_eq!(c.labels, HashMap::from([("ai.basilica.tenant.team".to_owned(), "a".to_owned())]));
        assert_eq!(c.ports, vec![port(22, 2222, "tcp")]);
    }
}
