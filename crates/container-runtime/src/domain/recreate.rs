//! `UpdateContainer`: a new TTL, and more published ports. Docker cannot add ports to a
//! container, so one that gets more is made again from its own configuration (see
//! `Engine::recreate`) under the same id: its owner, GPUs, volumes, network, limits, TTL and
//! renters' keys (validator-access keeps them by id) stay; its writable layer starts fresh from
//! its image. It runs again if it ran, and `Container.recreated_at` and a `RECREATED` event
//! say what happened.

use std::collections::HashMap;

use common::proto::runtime::v1 as pb;

use super::create::{invalid, ports_from};
use super::lifecycle::labels_of;
use super::{Runtime, RuntimeError};
use crate::labels::{LABEL_NETWORK, LABEL_RECREATED};
use crate::ports::{LABEL_PORTS, Port, PortError};
use crate::stops::Intent;

/// The longest TTL an update may give.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

impl Runtime {
    /// Updates a container of ours: `ttl_seconds` from now (0: never reaped; None: as it is),
    /// kept across restarts (see `stops`) and winning over the TTL it was created with; and
    /// `add_ports` published (the container made again). Everything is checked before
    /// anything changes.
    pub async fn update(
        &self,
        id: &str,
        ttl_seconds: Option<u64>,
        add_ports: &[pb::PortMapping],
    ) -> Result<pb::Container, RuntimeError> {
        self.ours(id).await?;
        if ttl_seconds.is_none() && add_ports.is_empty() {
            return Err(invalid("ttl_seconds", "nothing to update: give ttl_seconds, add_ports or both".into()));
        }
        if let Some(ttl) = ttl_seconds
            && ttl > MAX_TTL_SECONDS
        {
            return Err(invalid("ttl_seconds", format!("{ttl} is more than {MAX_TTL_SECONDS} (10 years)")));
        }
        let ports = ports_from(add_ports, "add_ports")?;
        if !ports.is_empty() {
            self.publish_more(id, ports).await?;
        }
        if let Some(ttl_seconds) = ttl_seconds {
            let expires = if ttl_seconds == 0 { 0 } else { crate::labels::now_secs() + ttl_seconds };
            self.expiries
                .record(id, &expires.to_string())
                .map_err(|source| RuntimeError::Record { id: id.to_owned(), source })?;
            tracing::info!(id, ttl_seconds, expires, "container TTL updated");
        }
        self.describe(id).await
    }

    /// Makes container `id` again with `ports` published beside the ones it has, under the
    /// create lock (no port or GPU is given twice meanwhile), and starts it again if it ran.
    async fn publish_more(&self, id: &str, mut ports: Vec<Port>) -> Result<(), RuntimeError> {
        if self.pool.is_none() {
            return Err(RuntimeError::AddPorts(PortError::NoNetwork));
        }
        let guard = self.create_lock.lock().await;
        let inspect = self.ours(id).await?;
        let labels = labels_of(&inspect);
        if !labels.contains_key(LABEL_NETWORK) {
            return Err(RuntimeError::AddPorts(PortError::NoNetwork));
        }
        let mut all = crate::ports::parse_label(labels.get(LABEL_PORTS).map_or("", String::as_str));
        for (i, p) in ports.iter().enumerate() {
            if let Some(had) = all.iter().find(|a| a.container_port == p.container_port && a.udp == p.udp) {
                let message = format!("{} is published already, on host port {}", p.container_side(), had.host_port);
                return Err(invalid(&format!("add_ports[{i}]"), message));
            }
        }
        // As a create's: the ports every container of ours holds are skipped.
        self.assign_ports(&mut ports, &self.engine.list_ours().await?).map_err(|e| match e {
            RuntimeError::Ports(p) => RuntimeError::AddPorts(p),
            other => other,
        })?;
        all.extend(ports.iter().copied());
        let running = inspect.state.as_ref().and_then(|s| s.running) == Some(true);
        let added: Vec<String> =
            ports.iter().map(|p| format!("{} on host port {}", p.container_side(), p.host_port)).collect();
        let why = format!("recreated to publish {}", added.join(", "));
        if running {
            // Its end is the executor's doing; it is meant to run again right after.
            self.intend(id, &Intent::Stopped(why.clone()));
            if let Err(e) = self.engine.stop(id, 10).await {
                // Still running, and still meant to.
                self.intend(id, &Intent::Running);
                return Err(e.into());
            }
        }
        let publish_ip = self.ports.host_ip().map(|ip| ip.to_string());
        let now = crate::labels::now_secs();
        // One that joined its network's holder gets an endpoint of its own there: ports
        // belong to whoever owns the namespace (see `holder`).
        let network = labels.get(LABEL_NETWORK).cloned().unwrap_or_default();
        let dns: Vec<String> = self.config.network_config.dns_servers.iter().map(ToString::to_string).collect();
        let made = self
            .engine
            .recreate(id, &inspect, |body| {
                let labels = body.labels.get_or_insert_with(HashMap::new);
                labels.insert(LABEL_PORTS.to_owned(), crate::ports::label(&all));
                labels.insert(LABEL_RECREATED.to_owned(), now.to_string());
                let exposed = body.exposed_ports.get_or_insert_with(Vec::new);
                let host = body.host_config.get_or_insert_with(Default::default);
                if crate::holder::joins(host.network_mode.as_deref()) {
                    host.network_mode = Some(network.clone());
                    host.dns = (!dns.is_empty()).then(|| dns.clone());
                }
                let bindings = host.port_bindings.get_or_insert_with(HashMap::new);
                for p in &ports {
                    exposed.push(p.container_side());
                    let binding = bollard::models::PortBinding {
                        host_ip: publish_ip.clone(),
                        host_port: Some(p.host_port.to_string()),
                    };
                    bindings.insert(p.container_side(), Some(vec![binding]));
                }
            })
            .await;
        drop(guard);
        if let Err(e) = made {
            tracing::error!(id, error = %e, "cannot make the container again with more ports; it is left as it was");
            if running {
                self.start(id).await?;
            }
            return Err(e.into());
        }
        tracing::info!(id, ports = ?added, running, "container made again with more published ports");
        let event = pb::Event {
            kind: pb::EventKind::Recreated as i32,
            container_id: id.to_owned(),
            owner: labels.get(crate::labels::LABEL_OWNER).cloned().unwrap_or_default(),
            reason: format!("{why}; its writable layer starts fresh from its image"),
            ..Default::default()
        };
        self.events.record(event).await;
        if running {
            self.start(id).await?;
        }
        Ok(())
    }
}
