//! Host firewall rules that Docker's networks leave out. Every tenant network's bridge is named
//! `bas-…`; two kinds of rules match them by that prefix:
//! - `INPUT -i bas-+ -j DROP`: a tenant cannot reach the host itself (Docker lets even an
//!   internal network talk to its gateway, i.e. to every service the host binds on 0.0.0.0).
//! - `DOCKER-USER -i bas-+ -d <range> -j DROP` for private, shared and link-local ranges: with
//!   `allow_internet = true` a tenant still cannot reach the provider's LAN or the cloud
//!   metadata address 169.254.169.254.
//!
//! Rules are checked with `iptables -C` and inserted only when missing, so restarts add nothing.

use std::time::Duration;

use common::process::{ProcessError, ProcessSpec};

/// Prefix of every tenant bridge interface.
pub const BRIDGE_PREFIX: &str = "bas-";

/// Destinations no tenant may reach even when online.
pub const BLOCKED_RANGES: [&str; 5] =
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"];

/// The bridge name of a container's network: `bas-` and 11 characters of its id (interface
/// names have at most 15).
pub fn bridge_name(id: &str) -> String {
    let tail: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let start = tail.len().saturating_sub(11);
    format!("{BRIDGE_PREFIX}{}", &tail[start..])
}

/// Each rule as `(chain, match arguments)`.
pub fn rules() -> Vec<(&'static str, Vec<String>)> {
    let iface = format!("{BRIDGE_PREFIX}+");
    let mut rules = vec![("INPUT", vec!["-i".into(), iface.clone(), "-j".into(), "DROP".into()])];
    for range in BLOCKED_RANGES {
        rules.push((
            "DOCKER-USER",
            vec!["-i".into(), iface.clone(), "-d".into(), range.into(), "-j".into(), "DROP".into()],
        ));
    }
    rules
}

/// Why the host firewall rules cannot be put in place.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Run(#[from] ProcessError),
    #[error("cannot add the host firewall rule `iptables -I {chain} {rule}`: {stderr}")]
    Insert { chain: &'static str, rule: String, stderr: String },
}

/// Inserts every missing rule; the error says which rule and why.
pub async fn ensure() -> Result<(), FirewallError> {
    for (chain, args) in rules() {
        let run = |op: &str| ProcessSpec::new("iptables").arg("-w").arg(op).arg(chain).args(args.iter().cloned());
        let check = run("-C").output(Duration::from_secs(20), 1 << 14).await?;
        if check.status.success() {
            continue;
        }
        let insert = run("-I").output(Duration::from_secs(20), 1 << 14).await?;
        if !insert.status.success() {
            return Err(FirewallError::Insert {
                chain,
                rule: args.join(" "),
                stderr: String::from_utf8_lossy(&insert.stderr).trim().to_owned(),
            });
        }
        tracing::info!(chain, rule = %args.join(" "), "host firewall rule added");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_linux_interface_names() {
        assert_eq!(bridge_name("c-0123456789ab"), "bas-123456789ab");
        assert!(bridge_name("c-0123456789ab").len() <= 15);
        assert_eq!(bridge_name("x"), "bas-x");
    }
}
