//! `[advertised_endpoint]`: the URLs identity and health report to miners, and the check that
//! each is a URL of the right scheme with a valid host and port.

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::{InvalidValue, is_host_or_ip};

/// `[advertised_endpoint]`: what identity and health report to miners.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvertisedEndpointConfig {
    /// `http://` or `https://` URL of the public gRPC API.
    pub grpc_endpoint: Option<String>,
    /// `ssh://host:port` of the validator SSH server.
    pub ssh_endpoint: Option<String>,
    /// `http://` or `https://` URL of `GET /health`.
    pub health_endpoint: Option<String>,
}

impl AdvertisedEndpointConfig {
    pub(super) fn validate(&self, v: &mut Issues) {
        let http = &["http", "https"][..];
        for (key, value, schemes) in [
            ("advertised_endpoint.grpc_endpoint", &self.grpc_endpoint, http),
            ("advertised_endpoint.ssh_endpoint", &self.ssh_endpoint, &["ssh"][..]),
            ("advertised_endpoint.health_endpoint", &self.health_endpoint, http),
        ] {
            if let Some(url) = value {
                v.result(key, check_endpoint(url, schemes));
            }
        }
    }
}

fn check_endpoint(url: &str, schemes: &[&str]) -> Result<(), InvalidValue> {
    let invalid = InvalidValue::new;
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| invalid(format!("`{url}` is not a URL: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !schemes.contains(&scheme) {
        return Err(invalid(format!("`{url}` must use {}://", schemes.join(":// or "))));
    }
    let authority = uri.authority().ok_or_else(|| invalid(format!("`{url}` has no host")))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if !is_host_or_ip(host) {
        return Err(invalid(format!("`{url}`: `{host}` is not a host name or IP address")));
    }
    if authority.port_u16() == Some(0) {
        return Err(invalid(format!("`{url}`: port 0 is not a port")));
    }
    Ok(())
}
