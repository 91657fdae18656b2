//! Host ports for published container ports, from `[docker.ports] ranges`. Docker is the
//! record, as for GPUs: every container of ours carries the host ports it got in its
//! `ai.basilica.executor.ports` label, so what is in use is read back from the engine under the
//! create lock (concurrent creates never share a port; a restart, a `kill -9` or an engine
//! restart forgets nothing; a removed container's ports are free again with nothing to undo).
//! A port that something else on the host holds is skipped: each candidate is bound once,
//! with the protocol it is for, before it is handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use common::config::{Config, PortsConfig};
use common::proto::runtime::v1 as pb;

/// A published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub container_port: u16,
    /// From `[docker.ports] ranges`; 0 until the pool gives one.
    pub host_port: u16,
    pub udp: bool,
}

impl Port {
    /// `tcp` or `udp`.
    pub fn protocol(&self) -> &'static str {
        if self.udp { "udp" } else { "tcp" }
    }

    /// Docker's name of the container side: `8888/tcp`.
    pub fn container_side(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol())
    }
}

/// The host ports a container got: `8888/tcp=40001,53/udp=40002`.
pub const LABEL_PORTS: &str = "ai.basilica.executor.ports";

/// Why a container's ports cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("ports[{index}].host_port: {port} is not in docker.ports.ranges ({ranges})")]
    OutsidePool { index: usize, port: u16, ranges: String },
    #[error("ports[{index}].host_port: {port} is reserved on this node ({why})")]
    Reserved { index: usize, port: u16, why: String },
    #[error("ports[{index}].host_port: {port} is in use")]
    InUse { index: usize, port: u16 },
    #[error("ports[{index}]: {port} is asked for twice")]
    Twice { index: usize, port: String },
    #[error("ports: no free host port left in docker.ports.ranges ({ranges}); {allocated} are allocated")]
    Exhausted { ranges: String, allocated: usize },
    #[error("ports: docker.ports.ranges is empty on this node: no container port can be published")]
    NoPool,
    #[error(
        "ports: docker.network_config.enable_isolation = false gives containers no network: no port can be published"
    )]
    NoNetwork,
    /// The reachability check could not run (no spare port, an external host that does not resolve).
    #[error("ports: {0}")]
    Check(String),
}

/// The pool: the configured ranges less the reserved ports and the node's own listeners.
#[derive(Debug, Clone)]
pub struct PortPool {
    config: PortsConfig,
    /// Reserved port → why (the config key of the listener, or `docker.ports.reserved`).
    reserved: BTreeMap<u16, String>,
    /// Where a renter connects, when known.
    external_host: Option<String>,
}

impl PortPool {
    pub fn new(config: &Config) -> Self {
        let ports = config.docker.ports.clone();
        let mut reserved: BTreeMap<u16, String> =
            ports.reserved.iter().flat_map(|r| r.ports()).map(|p| (p, "docker.ports.reserved".to_owned())).collect();
        // A listener's own key says more than `reserved` does.
        reserved.extend(config.listeners().into_iter().map(|(key, _, port)| (port, key.to_owned())));
        let external_host = ports
            .external_host
            .as_ref()
            .map(|h| h.to_string())
            .or_else(|| config.server.advertised_host.as_ref().map(|h| h.to_string()))
            .or_else(|| ports.host_ip.filter(|ip| !ip.is_unspecified()).map(|ip| ip.to_string()));
        Self { config: ports, reserved, external_host }
    }

    fn ranges(&self) -> String {
        self.config.ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    fn reserved(&self, port: u16) -> Option<&str> {
        self.reserved.get(&port).map(String::as_str)
    }

    /// Ports the pool can hand out.
    pub fn size(&self) -> usize {
        self.config.ranges.iter().flat_map(|r| r.ports()).filter(|p| self.reserved(*p).is_none()).count()
    }

    /// `[docker.ports] host_ip`; None: every address.
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.config.host_ip
    }

    /// Where a port is bound to see whether it is free: `host_ip`, or for every address `::`
    /// where the kernel has IPv6 (a dual-stack socket, so a port taken on either family shows)
    /// and `0.0.0.0` where it has not.
    pub fn probe_ip(&self) -> IpAddr {
        self.config.host_ip.unwrap_or_else(|| {
            if std::path::Path::new("/proc/sys/net/ipv6").exists() {
                IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::from([0, 0, 0, 0])
            }
        })
    }

    /// Gives every port of `ports` a host port: the one it asks for (checked) or the lowest
    /// free one. `in_use` is every host port our containers hold; `free` says whether the host
    /// has a port free for the protocol (see [`bindable`]).
    pub fn allocate(
        &self,
        ports: &mut [Port],
        in_use: &BTreeSet<u16>,
        free: impl Fn(u16, bool) -> bool,
    ) -> Result<(), PortError> {
        if ports.is_empty() {
            return Ok(());
        }
        if self.config.ranges.is_empty() {
            return Err(PortError::NoPool);
        }
        let mut taken = in_use.clone();
        let mut seen = BTreeSet::new();
        for (index, p) in ports.iter().enumerate() {
            let name = p.container_side();
            if !seen.insert(name.clone()) {
                return Err(PortError::Twice { index, port: name });
            }
            if p.host_port == 0 {
                continue;
            }
            let port = p.host_port;
            if !self.config.in_pool(port) {
                return Err(PortError::OutsidePool { index, port, ranges: self.ranges() });
            }
            if let Some(why) = self.reserved(port) {
                return Err(PortError::Reserved { index, port, why: why.to_owned() });
            }
            if !taken.insert(port) || !free(port, p.udp) {
                return Err(PortError::InUse { index, port });
            }
        }
        for p in ports.iter_mut().filter(|p| p.host_port == 0) {
            let candidates = self.config.ranges.iter().flat_map(|r| r.ports());
            let mut candidates = candidates.filter(|c| self.reserved(*c).is_none() && !taken.contains(c));
            let port = candidates
                .find(|&c| free(c, p.udp))
                .ok_or_else(|| PortError::Exhausted { ranges: self.ranges(), allocated: in_use.len() })?;
            taken.insert(port);
            p.host_port = port;
        }
        Ok(())
    }

    /// Fills in what a renter uses for each mapping: the external port (NAT) and `host:port`.
    pub fn describe(&self, mappings: &mut [pb::PortMapping]) {
        for m in mappings {
            let Ok(port) = u16::try_from(m.host_port) else { continue };
            if port == 0 {
                continue;
            }
            let external = self.config.external_port(port);
            m.external_port = u32::from(external);
            m.external_endpoint = self.external_host.as_deref().map(|h| endpoint(h, external)).unwrap_or_default();
        }
    }

    /// A pool port nothing holds (for the reachability check), if there is one.
    pub fn spare(&self, in_use: &BTreeSet<u16>) -> Option<u16> {
        let mut candidates = self.config.ranges.iter().flat_map(|r| r.ports());
        candidates.find(|p| self.reserved(*p).is_none() && !in_use.contains(p) && bindable(self.probe_ip(), *p, false))
    }

    pub fn external_host(&self) -> Option<&str> {
        self.external_host.as_deref()
    }

    pub fn config(&self) -> &PortsConfig {
        &self.config
    }
}

/// What [`check_reachable`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// The pool port listened on.
    pub host_port: u16,
    /// Where the check connected, `host:port`.
    pub target: String,
    /// None: reached; else why not.
    pub tcp: Option<String>,
    pub udp: Option<String>,
    /// What the check cannot see from the host (a router's forward), if anything.
    pub note: String,
}

/// How long each half of the check waits.
const REACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Listens on a spare pool port (TCP and UDP, on `host_ip`) and connects to it the way a
/// renter would, through the external host, from the host's own view: this finds an external
/// host that is not this machine's, a host firewall that drops the pool's ports, a port held by
/// something else. A router's forward in front of the node (`nat`) cannot be seen from here:
/// the host port is tried on the external host, and the note says so.
pub async fn check_reachable(pool: &PortPool, in_use: &BTreeSet<u16>) -> Result<Reachability, String> {
    let Some(port) = pool.spare(in_use) else {
        return Err(format!("no spare port in docker.ports.ranges ({}) to listen on", pool.ranges()));
    };
    let ip = pool.probe_ip();
    let host = pool.external_host().map_or_else(|| loopback(pool.host_ip()).to_string(), str::to_owned);
    let target = endpoint(&host, port);
    let mut note = String::new();
    if pool.config.external_port(port) != port {
        note = format!(
            "renters use port {} (docker.ports.nat): the router's forward to {port} cannot be checked from this host",
            pool.config.external_port(port)
        );
    }
    if pool.external_host().is_none() {
        note = "no docker.ports.external_host or server.advertised_host: checked on loopback, and renters are told no address".into();
    }
    let address = match tokio::net::lookup_host((host.as_str(), port)).await.map(|mut a| a.next()) {
        Ok(Some(address)) => address,
        Ok(None) | Err(_) => return Err(format!("cannot resolve the external host `{host}`")),
    };
    let nonce: [u8; 16] = rand_nonce();
    let tcp = reach_tcp(SocketAddr::new(ip, port), address, nonce).await.err();
    let udp = reach_udp(SocketAddr::new(ip, port), address, nonce).await.err();
    Ok(Reachability { host_port: port, target, tcp, udp, note })
}

/// `executor validate`'s line: the reachability check on a spare pool port.
pub async fn check(config: &Config) -> common::check::Check {
    use common::check::Check;
    let pool = PortPool::new(config);
    if pool.config.ranges.is_empty() {
        return Check::skip("ports", "docker.ports.ranges is empty: no container port can be published");
    }
    match check_reachable(&pool, &BTreeSet::new()).await {
        Ok(r) => {
            let note = if r.note.is_empty() { String::new() } else { format!(" ({})", r.note) };
            let pool_size = pool.size();
            match (&r.tcp, &r.udp) {
                (None, None) => {
                    Check::pass("ports", format!("{pool_size} ports; {} reached over TCP and UDP{note}", r.target))
                }
                (tcp, udp) => Check::fail(
                    "ports",
                    format!(
                        "{pool_size} ports; {} not reached: {}{note}",
                        r.target,
                        [tcp.as_deref().map(|e| format!("TCP: {e}")), udp.as_deref().map(|e| format!("UDP: {e}"))]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ),
            }
        }
        Err(e) => Check::fail("ports", e),
    }
}

/// Where to reach ports bound on `ip` (None: every address) from the host itself.
fn loopback(ip: Option<IpAddr>) -> IpAddr {
    match ip {
        Some(IpAddr::V6(v6)) if v6.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        Some(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::from([127, 0, 0, 1]),
    }
}

fn rand_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    // Uniqueness is all that matters; a failure leaves zeros, still checked.
    let _ = getrandom::fill(&mut nonce);
    nonce
}

async fn reach_tcp(listen: SocketAddr, to: SocketAddr, nonce: [u8; 16]) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let client = async {
        let mut stream = tokio::net::TcpStream::connect(to).await.map_err(|e| format!("connect to {to}: {e}"))?;
        stream.write_all(&nonce).await.map_err(|e| format!("send to {to}: {e}"))
    };
    let server = async {
        let (mut stream, _) = listener.accept().await.map_err(|e| format!("accept on {listen}: {e}"))?;
        let mut got = [0u8; 16];
        stream.read_exact(&mut got).await.map_err(|e| format!("read on {listen}: {e}"))?;
        if got == nonce { Ok(()) } else { Err(format!("something else answered at {to}")) }
    };
    match tokio::time::timeout(REACH_TIMEOUT, async { tokio::try_join!(client, server) }).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no connection from {to} reached {listen} within {} s", REACH_TIMEOUT.as_secs())),
    }
}

async fn reach_udp(listen: SocketAddr, to: SocketAddr, nonce: [u8; 16]) -> Result<(), String> {
    let server =
        tokio::net::UdpSocket::bind(listen).await.map_err(|e| format!("cannot listen on {listen}/udp: {e}"))?;
    let any: SocketAddr =
        if to.is_ipv6() { "[::]:0".parse().unwrap_or(listen) } else { SocketAddr::from(([0, 0, 0, 0], 0)) };
    let client = tokio::net::UdpSocket::bind(any).await.map_err(|e| format!("UDP socket: {e}"))?;
    let wait = async {
        let mut got = [0u8; 64];
        loop {
            // Datagrams get lost: one every 300 ms until the listener has it.
            client.send_to(&nonce, to).await.map_err(|e| format!("send to {to}/udp: {e}"))?;
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(std::time::Duration::from_millis(300), server.recv_from(&mut got)).await
                && got[..n] == nonce
            {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(REACH_TIMEOUT, wait).await {
        Ok(result) => result,
        Err(_) => Err(format!("no datagram sent to {to}/udp reached {listen} within {} s", REACH_TIMEOUT.as_secs())),
    }
}

/// `host:port`, with an IPv6 address in brackets.
pub fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Whether `port` can be bound on `ip` right now for TCP (`udp` false) or UDP.
pub fn bindable(ip: IpAddr, port: u16, udp: bool) -> bool {
    let address = SocketAddr::new(ip, port);
    if udp { std::net::UdpSocket::bind(address).is_ok() } else { std::net::TcpListener::bind(address).is_ok() }
}

/// The label value for `ports`.
pub fn label(ports: &[Port]) -> String {
    ports.iter().map(|p| format!("{}={}", p.container_side(), p.host_port)).collect::<Vec<_>>().join(",")
}

/// The host ports the containers with these labels hold.
pub fn held<'a>(labels: impl Iterator<Item = &'a std::collections::HashMap<String, String>>) -> BTreeSet<u16> {
    labels.filter_map(|l| l.get(LABEL_PORTS)).flat_map(|recorded| parse_label(recorded)).map(|p| p.host_port).collect()
}

/// The ports a label value records; malformed entries are skipped.
pub fn parse_label(value: &str) -> Vec<Port> {
    value
        .split(',')
        .filter_map(|entry| {
            let (container, host) = entry.split_once('=')?;
            let (port, protocol) = container.split_once('/')?;
            Some(Port {
                container_port: port.parse().ok()?,
                host_port: host.parse().ok()?,
                udp: match protocol {
                    "tcp" => false,
                    "udp" => true,
                    _ => return None,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use common::config::{NatMapping, PortRange};

    use super::*;

    fn pool(ranges: &[PortRange], nat: Vec<NatMapping>) -> PortPool {
        let mut config = Config::default();
        config.docker.ports.ranges = ranges.to_vec();
        config.docker.ports.nat = nat;
        config.docker.ports.external_host = Some("node.example".to_owned().into());
        PortPool::new(&config)
    }

    fn port(container_port: u16, host_port: u16, udp: bool) -> Port {
        Port { container_port, host_port, udp }
    }

    #[test]
    fn free_ports_are_handed_out_lowest_first_skipping_held_and_busy_ones() {
        let pool = pool(&[PortRange::new(40000, 40003)], Vec::new());
        let mut ports = [port(80, 0, false), port(53, 0, true)];
        let in_use = BTreeSet::from([40000]);
        pool.allocate(&mut ports, &in_use, |p, _| p != 40001).unwrap();
        assert_eq!(ports.map(|p| p.host_port), [40002, 40003]);
        let mut more = [port(81, 0, false), port(82, 0, false)];
        let err = pool.allocate(&mut more, &BTreeSet::from([40000, 40002, 40003]), |p, _| p != 40001).unwrap_err();
        assert!(err.to_string().starts_with("ports: no free host port left"), "{err}");
    }

    #[test]
    fn an_asked_port_must_be_in_the_pool_free_and_not_the_nodes_own() {
        let mut config = Config::default();
        config.docker.ports.ranges = vec![PortRange::new(50000, 50100)];
        let pool = PortPool::new(&config);
        let ask = |host: u16, in_use: &[u16]| {
            let mut ports = [port(80, host, false)];
            pool.allocate(&mut ports, &in_use.iter().copied().collect(), |_, _| true).map(|()| ports[0].host_port)
        };
        assert_eq!(ask(50010, &[]), Ok(50010));
        let outside = ask(50151, &[]).unwrap_err().to_string();
        assert_eq!(outside, "ports[0].host_port: 50151 is not in docker.ports.ranges (50000-50100)");
        let own = ask(50051, &[]).unwrap_err().to_string();
        assert_eq!(own, "ports[0].host_port: 50051 is reserved on this node (server.port)");
        assert_eq!(ask(50010, &[50010]), Err(PortError::InUse { index: 0, port: 50010 }));
        assert!(pool.size() < 101, "the node's listeners in the range are left out");
        let mut twice = [port(80, 0, false), port(80, 0, false)];
        assert!(matches!(pool.allocate(&mut twice, &BTreeSet::new(), |_, _| true), Err(PortError::Twice { .. })));
    }

    #[test]
    fn labels_round_trip_and_renters_get_the_external_endpoint() {
        let ports = vec![port(8888, 40001, false), port(53, 40002, true)];
        assert_eq!(label(&ports), "8888/tcp=40001,53/udp=40002");
        assert_eq!(parse_label(&label(&ports)), ports);
        assert_eq!(parse_label("junk,80/sctp=1,8888/tcp=40001"), vec![port(8888, 40001, false)]);
        let containers = [
            std::collections::HashMap::from([(LABEL_PORTS.to_owned(), label(&ports))]),
            std::collections::HashMap::new(),
            std::collections::HashMap::from([(LABEL_PORTS.to_owned(), "80/tcp=40007".to_owned())]),
        ];
        assert_eq!(held(containers.iter()), BTreeSet::from([40001, 40002, 40007]));
        let nat = vec![NatMapping { host: PortRange::new(40000, 40099), external: PortRange::new(50000, 50099) }];
        let pool = pool(&[PortRange::new(40000, 40999)], nat);
        let mut mappings = vec![pb::PortMapping {
            container_port: 8888,
            host_port: 40001,
            protocol: "tcp".into(),
            ..Default::default()
        }];
        pool.describe(&mut mappings);
        assert_eq!((mappings[0].external_port, mappings[0].external_endpoint.as_str()), (50001, "node.example:50001"));
        assert_eq!(endpoint("2001:db8::1", 40001), "[2001:db8::1]:40001");
    }
}
