//! `[validator]` and `[validator.access_config]`: validator SSH access (validator-access):
//! which SSH server, who commands run as, their limits, where validators may connect from;
//! with the checks and the source-network matching the service uses.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::{ByteSize, InvalidValue, Port, duration_between, human_duration};

/// `[validator]`: validator SSH access (validator-access).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorConfig {
    /// Run the validator-access service and its SSH server.
    pub enabled: bool,
    /// Allow only allow-listed commands: no shell, PTY or forwarding. On by default.
    pub strict_ssh_restrictions: bool,
    /// Port of the embedded SSH server.
    pub ssh_port: Port,
    /// The unprivileged user validator commands (and, when not strict, shells) run as.
    pub command_user: String,
    /// Longest a validator's command may run before it is killed.
    #[serde(with = "human_duration")]
    pub command_timeout: Duration,
    /// Most output (stdout and stderr each) a command may send; the rest is dropped.
    pub command_max_output_bytes: ByteSize,
    /// Most memory a command and everything it starts may use together (its cgroup's
    /// `memory.max`, swap included); past it the kernel kills it.
    pub command_max_memory_bytes: ByteSize,
    /// Most processes and threads a command and everything it starts may hold at once (its
    /// cgroup's `pids.max`); past it `fork` fails.
    pub command_max_pids: u32,
    /// CPU time a command and everything it starts may use, in cores (its cgroup's `cpu.max`;
    /// `0.5` is half a core, `4` four cores' worth).
    pub command_max_cpus: f64,
    /// Longest grant a miner may provision.
    #[serde(with = "human_duration")]
    pub max_grant_ttl: Duration,
    /// Which SSH server validators reach: `embedded` (ours, on `ssh_port`) or `system` (the
    /// host's OpenSSH, with an `authorized_keys` file validator-access keeps).
    pub ssh_server: SshServerKind,
    /// `system` mode: the user validators log in as through the host's sshd.
    pub system_sshd_user: String,
    /// `system` mode: the `authorized_keys` file validator-access writes (point sshd's
    /// `AuthorizedKeysFile` for `system_sshd_user` at it).
    pub authorized_keys_file: PathBuf,
    /// Source addresses or networks (`10.0.0.0/8`) validators may connect from; empty: any.
    pub allowed_source_addresses: Vec<String>,
    pub access_config: AccessConfig,
}

/// `[validator] ssh_server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshServerKind {
    Embedded,
    System,
}

/// Parses `ip` or `ip/prefix`; the error says what is wrong.
pub fn parse_network(text: &str) -> Result<(IpAddr, u8), InvalidValue> {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (text, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| InvalidValue::new(format!("`{text}` is not an IP address or network")))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| InvalidValue::new(format!("`{text}`: bad prefix length")))?,
        None => max,
    };
    Ok((ip, prefix))
}

/// Whether `addr` is inside the network `(net, prefix)` (IPv4-mapped IPv6 counts as IPv4).
pub fn in_network(addr: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            strict_ssh_restrictions: true,
            ssh_port: Port::new(22),
            command_user: "nobody".to_owned(),
            command_timeout: Duration::from_secs(600),
            command_max_output_bytes: ByteSize::new(64 << 20),
            command_max_memory_bytes: ByteSize::new(4 << 30),
            command_max_pids: 1024,
            command_max_cpus: 4.0,
            max_grant_ttl: Duration::from_secs(24 * 3600),
            ssh_server: SshServerKind::Embedded,
            system_sshd_user: "basilica-validator".to_owned(),
            authorized_keys_file: PathBuf::from("/etc/basilica/validator_authorized_keys"),
            allowed_source_addresses: Vec::new(),
            access_config: AccessConfig::default(),
        }
    }
}

/// `[validator.access_config]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    pub hotkey_verification: HotkeyVerification,
    pub rate_limits: RateLimits,
    pub limits: AccessLimits,
}

/// `[validator.access_config.hotkey_verification]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HotkeyVerification {
    /// Validators must sign an executor-issued challenge with their hotkey.
    pub enabled: bool,
    /// Seconds a challenge stays valid.
    pub challenge_timeout_seconds: u64,
    /// Failed signatures before the hotkey is locked out.
    pub max_signature_attempts: u32,
}

impl Default for HotkeyVerification {
    fn default() -> Self {
        Self { enabled: true, challenge_timeout_seconds: 300, max_signature_attempts: 3 }
    }
}

/// `[validator.access_config.rate_limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// SSH connections and failed authentications per minute, per hotkey and per source IP.
    pub ssh_requests_per_minute: u32,
    /// Public gRPC requests per minute per hotkey.
    pub api_requests_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { ssh_requests_per_minute: 10, api_requests_per_minute: 100 }
    }
}

/// `[validator.access_config.limits]`: what connections, sessions and grants may hold at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLimits {
    /// Channels one SSH connection may have open at once; more are refused.
    pub max_channels_per_session: u32,
    /// Commands one SSH connection (or one login through the host's sshd) may run at once.
    pub max_commands_per_session: u32,
    /// Commands one grant may run at once, over all its connections.
    pub max_commands_per_grant: u32,
    /// Connections to the embedded SSH server that have not authenticated yet, in all; past
    /// it a new connection is closed at once.
    pub max_unauthenticated_connections: u32,
    /// Of those, from one address (an IPv6 /64 counts as one address).
    pub max_unauthenticated_per_address: u32,
    /// A connection to the embedded SSH server that has not authenticated within this is
    /// closed.
    #[serde(with = "human_duration")]
    pub login_grace_time: Duration,
}

impl Default for AccessLimits {
    fn default() -> Self {
        Self {
            max_channels_per_session: 2,
            max_commands_per_session: 2,
            max_commands_per_grant: 2,
            max_unauthenticated_connections: 64,
            max_unauthenticated_per_address: 8,
            login_grace_time: Duration::from_secs(30),
        }
    }
}

/// A user name that is not root: at most 32 letters, digits, `_` and `-`.
fn is_unprivileged_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && name != "root"
}

impl ValidatorConfig {
    /// Everything but `ssh_port`, checked with the node's other listeners.
    pub(super) fn validate(&self, v: &mut Issues) {
        if !is_unprivileged_user(&self.command_user) {
            v.fail("validator.command_user", format!("`{}` is not an unprivileged user name", self.command_user));
        }
        if self.command_timeout < Duration::from_secs(1) || self.command_timeout > Duration::from_secs(86_400) {
            v.fail("validator.command_timeout", "must be between 1s and 24h");
        }
        let output = self.command_max_output_bytes.get() as f64;
        v.range("validator.command_max_output_bytes", output, 1024.0, (1u64 << 34) as f64);
        let memory = self.command_max_memory_bytes.get() as f64;
        v.range("validator.command_max_memory_bytes", memory, (16u64 << 20) as f64, (1u64 << 40) as f64);
        v.range("validator.command_max_pids", f64::from(self.command_max_pids), 8.0, 4_194_304.0);
        v.range("validator.command_max_cpus", self.command_max_cpus, 0.01, 4096.0);
        if self.max_grant_ttl < Duration::from_secs(60) || self.max_grant_ttl > Duration::from_secs(30 * 86_400) {
            v.fail("validator.max_grant_ttl", "must be between 1m and 30d");
        }
        for net in &self.allowed_source_addresses {
            v.result("validator.allowed_source_addresses", parse_network(net).map(drop));
        }
        if !self.authorized_keys_file.is_absolute() || self.authorized_keys_file.file_name().is_none() {
            v.fail("validator.authorized_keys_file", "must be an absolute file path");
        }
        if !is_unprivileged_user(&self.system_sshd_user) {
            v.fail(
                "validator.system_sshd_user",
                format!("`{}` is not an unprivileged user name", self.system_sshd_user),
            );
        }
        let hv = &self.access_config.hotkey_verification;
        let key = "validator.access_config.hotkey_verification";
        v.range(&format!("{key}.challenge_timeout_seconds"), hv.challenge_timeout_seconds as f64, 1.0, 86_400.0);
        v.range(&format!("{key}.max_signature_attempts"), hv.max_signature_attempts as f64, 1.0, 1000.0);
        let rl = &self.access_config.rate_limits;
        let key = "validator.access_config.rate_limits";
        v.range(&format!("{key}.ssh_requests_per_minute"), rl.ssh_requests_per_minute as f64, 1.0, 1e6);
        v.range(&format!("{key}.api_requests_per_minute"), rl.api_requests_per_minute as f64, 1.0, 1e7);
        let l = &self.access_config.limits;
        let key = "validator.access_config.limits";
        v.range(&format!("{key}.max_channels_per_session"), f64::from(l.max_channels_per_session), 1.0, 64.0);
        v.range(&format!("{key}.max_commands_per_session"), f64::from(l.max_commands_per_session), 1.0, 64.0);
        v.range(&format!("{key}.max_commands_per_grant"), f64::from(l.max_commands_per_grant), 1.0, 256.0);
        let total = f64::from(l.max_unauthenticated_connections);
        v.range(&format!("{key}.max_unauthenticated_connections"), total, 1.0, 100_000.0);
        let per_address = f64::from(l.max_unauthenticated_per_address);
        v.range(&format!("{key}.max_unauthenticated_per_address"), per_address, 1.0, total.max(1.0));
        let grace = duration_between(l.login_grace_time, Duration::from_secs(1), Duration::from_secs(600));
        v.result(&format!("{key}.login_grace_time"), grace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_like_cidr() {
        let net = parse_network("10.0.0.0/8").unwrap();
        assert!(in_network("10.1.2.3".parse().unwrap(), net));
        assert!(!in_network("11.0.0.1".parse().unwrap(), net));
        assert!(in_network("::ffff:10.9.9.9".parse().unwrap(), net));
        assert!(in_network("127.0.0.1".parse().unwrap(), parse_network("127.0.0.1").unwrap()));
        assert!(in_network("2001:db8::1".parse().unwrap(), parse_network("2001:db8::/32").unwrap()));
        assert!(!in_network("2001:db9::1".parse().unwrap(), parse_network("2001:db8::/32").unwrap()));
        assert!(in_network("8.8.8.8".parse().unwrap(), parse_network("0.0.0.0/0").unwrap()));
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("host.example").is_err());
    }
}
