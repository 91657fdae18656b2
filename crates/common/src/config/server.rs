//! `[server]`: the public gRPC API and the HTTP health endpoint (executor-api), and their
//! checks. Its listening ports are checked with the node's other listeners (`Config::listeners`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::{HostName, Port, duration_between, human_duration};

/// `[server]`: the public gRPC API and the HTTP health endpoint (executor-api).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the public gRPC API binds to.
    pub host: IpAddr,
    /// Port of the public gRPC API.
    pub port: Port,
    /// Host name or address miners use to reach this executor (defaults to `host`).
    pub advertised_host: Option<HostName>,
    /// Port miners use (defaults to `port`), e.g. behind a load balancer.
    pub advertised_port: Option<Port>,
    /// Whether the advertised endpoint speaks TLS (e.g. a TLS-terminating load balancer).
    pub advertised_tls: bool,
    /// Hard cap on concurrent connections to the public gRPC API. When it is reached, a new
    /// connection takes the slot of the oldest connection that has not made an authenticated
    /// call; only when every slot holds an authenticated connection is it closed at once.
    pub max_connections: u32,
    /// Concurrent connections to the public gRPC API from one address (an IPv4 address, or an
    /// IPv6 /64); more are closed at once. At most `max_connections`.
    pub max_connections_per_ip: u32,
    /// A connection to the public gRPC API that has not sent its first complete request (TLS
    /// handshake, HTTP/2 preface and request headers) within this is closed.
    #[serde(with = "human_duration")]
    pub handshake_timeout: Duration,
    /// A connection to the public gRPC API this old is asked to close (HTTP/2 GOAWAY; clients
    /// reconnect); calls in flight finish first, RunAttestation's 600 s included.
    #[serde(with = "human_duration")]
    pub max_connection_age: Duration,
    /// Port of the HTTP `GET /health` endpoint, bound on `host`.
    pub health_port: Port,
    /// Longest a unary call (or a streaming call's first response) may take; past it the
    /// caller gets DEADLINE_EXCEEDED.
    #[serde(with = "human_duration")]
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive: ping an idle connection this often.
    #[serde(with = "human_duration")]
    pub keepalive_interval: Duration,
    /// HTTP/2 keep-alive: close the connection when a ping is not answered within this.
    #[serde(with = "human_duration")]
    pub keepalive_timeout: Duration,
    /// PEM certificate chain: serve the public gRPC port over TLS (rustls). Needs
    /// `tls_key_path`; without both the port is plaintext.
    pub tls_cert_path: Option<PathBuf>,
    /// PEM private key of `tls_cert_path`.
    pub tls_key_path: Option<PathBuf>,
    /// Signed requests are accepted only when their timestamp is within this of the
    /// executor's clock (either way); each nonce is remembered this long.
    #[serde(with = "human_duration")]
    pub auth_time_window: Duration,
    /// Refused calls (a missing, malformed, stale, replayed or bad signature) one address (an
    /// IPv4 address, or an IPv6 /64) may make a minute, a burst of that many; past it the
    /// address's calls are refused before their bodies are read or their signatures checked.
    pub auth_failures_per_minute: u32,
    /// A signed session (`OpenSession`, scheme v3 of docs/api.md) ends this long after it was
    /// opened; calls on it are then refused (`unknown_session`) and the client opens another.
    #[serde(with = "human_duration")]
    pub session_ttl: Duration,
    /// Signed sessions open at once; opening one more ends the one used least recently.
    pub max_sessions: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: Port::new(50051),
            advertised_host: None,
            advertised_port: None,
            advertised_tls: false,
            max_connections: 1000,
            max_connections_per_ip: 32,
            handshake_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(30 * 60),
            health_port: Port::new(50052),
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            tls_cert_path: None,
            tls_key_path: None,
            auth_time_window: Duration::from_secs(60),
            auth_failures_per_minute: 60,
            session_ttl: Duration::from_secs(3600),
            max_sessions: 64,
        }
    }
}

impl ServerConfig {
    /// Everything but the listening ports.
    pub(super) fn validate(&self, v: &mut Issues) {
        v.check("server.advertised_port", &self.advertised_port);
        v.check("server.advertised_host", &self.advertised_host);
        v.range("server.max_connections", self.max_connections as f64, 1.0, 1_000_000.0);
        if self.max_connections_per_ip > self.max_connections {
            v.fail(
                "server.max_connections_per_ip",
                format!(
                    "{} is more than server.max_connections ({}); set it at most that",
                    self.max_connections_per_ip, self.max_connections
                ),
            );
        } else {
            v.range("server.max_connections_per_ip", self.max_connections_per_ip as f64, 1.0, 1_000_000.0);
        }
        v.range("server.auth_failures_per_minute", self.auth_failures_per_minute as f64, 1.0, 1_000_000.0);
        v.range("server.max_sessions", self.max_sessions as f64, 1.0, 100_000.0);
        for (key, value, min, max) in [
            ("server.request_timeout", self.request_timeout, Duration::from_millis(100), Duration::from_secs(3600)),
            ("server.keepalive_interval", self.keepalive_interval, Duration::from_secs(1), Duration::from_secs(86_400)),
            ("server.keepalive_timeout", self.keepalive_timeout, Duration::from_secs(1), Duration::from_secs(3600)),
            ("server.auth_time_window", self.auth_time_window, Duration::from_secs(1), Duration::from_secs(3600)),
            ("server.session_ttl", self.session_ttl, Duration::from_secs(60), Duration::from_secs(86_400)),
            ("server.handshake_timeout", self.handshake_timeout, Duration::from_millis(100), Duration::from_secs(300)),
            (
                "server.max_connection_age",
                self.max_connection_age,
                Duration::from_secs(60),
                Duration::from_secs(30 * 86_400),
            ),
        ] {
            v.result(key, duration_between(value, min, max));
        }
        match (&self.tls_cert_path, &self.tls_key_path) {
            (Some(_), None) => v.fail("server.tls_key_path", "required with server.tls_cert_path"),
            (None, Some(_)) => v.fail("server.tls_cert_path", "required with server.tls_key_path"),
            _ => {}
        }
    }
}
