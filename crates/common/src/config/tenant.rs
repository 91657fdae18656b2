//! `[tenant_access]`: renters' SSH into their own containers (validator-access's second SSH
//! server): the port, how many sessions and keys a container and a key may hold, the idle
//! timeout, and the same pre-authentication caps and rate limit the validator server has.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::{Port, duration_between, human_duration};

/// `[tenant_access]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantAccessConfig {
    /// Serve renters' SSH (`ssh -p <ssh_port> <container-id>@host`) and take their keys
    /// (`ssh_public_keys` at create, `AddContainerKey`). Off: both are refused, saying so.
    pub enabled: bool,
    /// Port of the renters' SSH server, beside the validators' `validator.ssh_port`.
    pub ssh_port: Port,
    /// SSH public keys one container may hold.
    pub max_keys_per_container: u32,
    /// Open SSH connections into one container, over all its keys; more are refused at login.
    pub max_sessions_per_container: u32,
    /// Open SSH connections of one key (into one container); more are refused at login.
    pub max_sessions_per_key: u32,
    /// Channels (a shell, a command, an sftp session, a forwarded connection) one connection
    /// may have open at once.
    pub max_channels_per_session: u32,
    /// A connection with no traffic for this long is closed.
    #[serde(with = "human_duration")]
    pub idle_timeout: Duration,
    /// Connections and failed authentications per minute from one source address (an IPv6
    /// /64 counts as one).
    pub ssh_requests_per_minute: u32,
    /// Connections that have not authenticated yet, in all; past it a new one is closed.
    pub max_unauthenticated_connections: u32,
    /// Of those, from one address.
    pub max_unauthenticated_per_address: u32,
    /// A connection that has not authenticated within this is closed.
    #[serde(with = "human_duration")]
    pub login_grace_time: Duration,
    /// Ciphers the server offers renters, from `aes256-gcm@openssh.com`,
    /// `aes128-gcm@openssh.com`, `aes256-ctr`, `aes192-ctr`, `aes128-ctr` and
    /// `chacha20-poly1305@openssh.com`. The client takes the first of its own list that is
    /// offered, and OpenSSH lists ChaCha20-Poly1305 and then AES-CTR (with HMAC-SHA2) before
    /// AES-GCM: offering only AES-GCM (the default) has every recent client use the cipher the
    /// processors of both ends run in hardware, about half the CPU of the others on a large
    /// copy (docs/benchmarks.md, "Renters"). Clients without AES-GCM (PuTTY before 0.76,
    /// libssh2 before 1.11) need `aes128-ctr` added.
    pub ciphers: Vec<SshCipher>,
}

/// A cipher of the renters' SSH server, by its SSH name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SshCipher {
    #[serde(rename = "aes256-gcm@openssh.com")]
    Aes256Gcm,
    #[serde(rename = "aes128-gcm@openssh.com")]
    Aes128Gcm,
    #[serde(rename = "aes256-ctr")]
    Aes256Ctr,
    #[serde(rename = "aes192-ctr")]
    Aes192Ctr,
    #[serde(rename = "aes128-ctr")]
    Aes128Ctr,
    #[serde(rename = "chacha20-poly1305@openssh.com")]
    Chacha20Poly1305,
}

impl Default for TenantAccessConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ssh_port: Port::new(2222),
            max_keys_per_container: 16,
            max_sessions_per_container: 16,
            max_sessions_per_key: 8,
            max_channels_per_session: 16,
            idle_timeout: Duration::from_secs(3600),
            ssh_requests_per_minute: 60,
            max_unauthenticated_connections: 64,
            max_unauthenticated_per_address: 8,
            login_grace_time: Duration::from_secs(30),
            ciphers: vec![SshCipher::Aes256Gcm, SshCipher::Aes128Gcm],
        }
    }
}

impl TenantAccessConfig {
    /// Everything but `ssh_port`, checked with the node's other listeners.
    pub(super) fn validate(&self, v: &mut Issues) {
        let key = "tenant_access";
        v.range(&format!("{key}.max_keys_per_container"), f64::from(self.max_keys_per_container), 1.0, 1024.0);
        let per_container = f64::from(self.max_sessions_per_container);
        v.range(&format!("{key}.max_sessions_per_container"), per_container, 1.0, 10_000.0);
        let per_key = f64::from(self.max_sessions_per_key);
        v.range(&format!("{key}.max_sessions_per_key"), per_key, 1.0, per_container.max(1.0));
        v.range(&format!("{key}.max_channels_per_session"), f64::from(self.max_channels_per_session), 1.0, 1024.0);
        let idle = duration_between(self.idle_timeout, Duration::from_secs(10), Duration::from_secs(7 * 86_400));
        v.result(&format!("{key}.idle_timeout"), idle);
        v.range(&format!("{key}.ssh_requests_per_minute"), f64::from(self.ssh_requests_per_minute), 1.0, 1e6);
        let total = f64::from(self.max_unauthenticated_connections);
        v.range(&format!("{key}.max_unauthenticated_connections"), total, 1.0, 100_000.0);
        let per_address = f64::from(self.max_unauthenticated_per_address);
        v.range(&format!("{key}.max_unauthenticated_per_address"), per_address, 1.0, total.max(1.0));
        let grace = duration_between(self.login_grace_time, Duration::from_secs(1), Duration::from_secs(600));
        v.result(&format!("{key}.login_grace_time"), grace);
        if self.ciphers.is_empty() {
            v.fail(&format!("{key}.ciphers"), "must list at least one cipher (e.g. \"aes256-gcm@openssh.com\")");
        }
    }
}
