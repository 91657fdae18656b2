//! `[docker.ports]`: the host ports tenants' published container ports get (container-runtime),
//! what renters are told to connect to, and their checks.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::Issues;
use super::values::{HostName, InvalidValue};

/// An inclusive range of ports, written `"40000-40999"` or, for one port, `"41000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn new(first: u16, last: u16) -> Self {
        Self { first, last }
    }

    /// How many ports it holds.
    pub fn len(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Never true: a range holds at least one port. Here for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn overlaps(self, other: Self) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

impl FromStr for PortRange {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let port = |p: &str| {
            p.trim().parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| {
                InvalidValue::new(format!("`{s}` is not a port range (e.g. \"40000-40999\" or \"41000\")"))
            })
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(InvalidValue::new(format!("`{s}`: the first port is above the last")));
        }
        Ok(Self { first, last })
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `[[docker.ports.nat]]`: a router in front of the node forwards `external` to `host`, port
/// for port (same length); renters are told the external port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatMapping {
    /// Host ports, within `ranges`.
    pub host: PortRange,
    /// The router's ports that reach them, as many as `host` has.
    pub external: PortRange,
}

/// `[docker.ports]`: published container ports take their host ports from here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortsConfig {
    /// Host port pools, e.g. `["40000-40999"]`; each published container port gets one, or the
    /// one it asks for within them. Only ports from 1024 up; empty: no container may publish a port.
    pub ranges: Vec<PortRange>,
    /// Address published ports bind to on the host; unset: every address, IPv4 and IPv6 (IPv6
    /// clients reach the IPv4-only containers through Docker's proxy).
    pub host_ip: Option<IpAddr>,
    /// Ports within `ranges` never handed out. The node's own listeners (`[server]`, `[metrics]`,
    /// the SSH ports) are always left out as well.
    pub reserved: Vec<PortRange>,
    /// Host name or address renters connect to (default `[server] advertised_host`, else
    /// `host_ip` when it is a specific address).
    pub external_host: Option<HostName>,
    /// Port forwards of a router in front of the node, each `{ host = "40000-40099", external =
    /// "50000-50099" }` (port for port); renters are told the external port. A host port none
    /// covers is reached as itself.
    pub nat: Vec<NatMapping>,
}

impl Default for PortsConfig {
    fn default() -> Self {
        Self {
            ranges: vec![PortRange::new(40000, 40999)],
            host_ip: None,
            reserved: Vec::new(),
            external_host: None,
            nat: Vec::new(),
        }
    }
}

impl PortsConfig {
    /// Whether `port` is in a pool range.
    pub fn in_pool(&self, port: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(port))
    }

    /// The port a renter uses for host port `port`: its NAT mapping's, or itself.
    pub fn external_port(&self, port: u16) -> u16 {
        self.nat.iter().find(|m| m.host.contains(port)).map_or(port, |m| m.external.first + (port - m.host.first))
    }

    pub(super) fn validate(&self, v: &mut Issues) {
        let key = "docker.ports.ranges";
        for (i, r) in self.ranges.iter().enumerate() {
            if r.first < 1024 {
                v.fail(key, format!("`{r}`: ports below 1024 are the host's own services', never a tenant's"));
            }
            if let Some(other) = self.ranges[..i].iter().find(|o| o.overlaps(*r)) {
                v.fail(key, format!("`{r}` overlaps `{other}`"));
            }
        }
        if let Some(ip) = self.host_ip.filter(IpAddr::is_multicast) {
            v.fail("docker.ports.host_ip", format!("`{ip}` is a multicast address"));
        }
        for r in &self.reserved {
            if !self.ranges.iter().any(|p| p.overlaps(*r)) {
                v.fail("docker.ports.reserved", format!("`{r}` is in no range of docker.ports.ranges"));
            }
        }
        v.check("docker.ports.external_host", &self.external_host);
        for (i, m) in self.nat.iter().enumerate() {
            if m.host.len() != m.external.len() {
                v.fail(
                    "docker.ports.nat",
                    format!(
                        "host `{}` has {} ports, external `{}` {}",
                        m.host,
                        m.host.len(),
                        m.external,
                        m.external.len()
                    ),
                );
            }
            if !self.ranges.iter().any(|p| p.first <= m.host.first && m.host.last <= p.last) {
                v.fail("docker.ports.nat", format!("host `{}` is not within one range of docker.ports.ranges", m.host));
            }
            if let Some(other) = self.nat[..i].iter().find(|o| o.host.overlaps(m.host)) {
                v.fail("docker.ports.nat", format!("host `{}` overlaps `{}`", m.host, other.host));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_written() {
        assert_eq!("40000-40999".parse::<PortRange>().unwrap(), PortRange::new(40000, 40999));
        assert_eq!("41000".parse::<PortRange>().unwrap(), PortRange::new(41000, 41000));
        assert_eq!(PortRange::new(40000, 40999).to_string(), "40000-40999");
        assert_eq!(PortRange::new(40000, 40999).len(), 1000);
        for bad in ["", "x", "0-10", "10-5", "70000", "1-2-3"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nat_maps_port_for_port() {
        let ports = PortsConfig {
            nat: vec![NatMapping { host: PortRange::new(40000, 40099), external: PortRange::new(50000, 50099) }],
            ..PortsConfig::default()
        };
        assert_eq!(ports.external_port(40007), 50007);
        assert_eq!(ports.external_port(40100), 40100);
    }
}
