//! Host firewall rules that Docker's networks leave out. Every tenant network's bridge is named
//! `bas-…` (online: `allow_internet = true`) or `bai-…` (isolated); the rules match them by
//! those prefixes, in both address families. Every IPv4 DROP is of packets that open something:
//! a packet of a connection that was opened towards the tenant (`ESTABLISHED`, `RELATED` in
//! conntrack), the reply to a renter reaching a published port, always passes, also to a
//! client on a LAN, VPN or CGNAT address.
//! - `INPUT -i bas-+ -j DROP`, `INPUT -i bai-+ -j DROP` (iptables and ip6tables): a tenant cannot
//!   reach the host itself (Docker lets even an internal network talk to its gateway, i.e. to
//!   every service the host binds on 0.0.0.0 or `::`, and over IPv6 the bridge's link-local
//!   address is always there).
//! - `-t mangle FORWARD -i bas-+ -d <range> -j DROP` for the ranges of [`BLOCKED_RANGES`]: an
//!   online tenant still cannot reach the provider's LAN, the cloud metadata and platform
//!   addresses, another tenant, or anything that is not public unicast.
//! - `-t mangle FORWARD -i bai-+ -j DROP`: an isolated tenant opens nothing at all. Isolated
//!   networks are ordinary bridges, not Docker's `internal` ones: Docker publishes no port of a
//!   container on an internal network (and gives it no route back to a client), so this rule is
//!   what keeps an isolated tenant in while renters reach its published ports.
//! - `-t mangle FORWARD -i bas-+ -j DROP` and `-i bai-+` in ip6tables, with no exception:
//!   tenant networks are IPv4 only, so no IPv6 from a tenant bridge is legitimate, whatever the
//!   engine's IPv6 settings. (Renters may still reach a published port over IPv6: Docker's
//!   proxy on the host takes the connection and opens one over IPv4 to the container.)
//!
//! The forwarding drops are in the mangle table because Docker never touches it. The filter
//! table's FORWARD is Docker's: for every network it makes it inserts
//! `-i <bridge> ! -o <bridge> -j ACCEPT` at the top of FORWARD (above anything we put there),
//! and it deletes and re-inserts its jump to `DOCKER-USER` (the place its documentation offers),
//! leaving a window in which a tenant's packet passes. mangle FORWARD sees every forwarded packet
//! before filter FORWARD does, whatever Docker does to its own chains, and after Docker's DNAT
//! (so a tenant reaching another tenant's published port through the host's address is judged
//! by where the packet really goes).
//!
//! Tenant containers also get IPv6 switched off inside (see [`TENANT_SYSCTLS`]), so a host whose
//! ip6tables cannot be used (no binary, no `ip6table_filter`) is still not open over IPv6; that
//! case is logged, not fatal. A host without IPv6 in its kernel has nothing to firewall there.
//!
//! Rules are checked with `-C` and inserted only when missing, so restarts add nothing; the
//! rules of earlier versions that dropped replies too ([`LEGACY`]) are deleted.

use std::path::Path;
use std::time::Duration;

use common::process::{ProcessError, ProcessSpec};

/// Prefix of the bridge of every tenant network with `allow_internet = true`.
pub const ONLINE_PREFIX: &str = "bas-";
/// Prefix of the bridge of every isolated tenant network.
pub const ISOLATED_PREFIX: &str = "bai-";

/// IPv4 destinations no tenant may reach even when online: "this network", private, shared
/// (CGNAT), link-local (169.254.169.254, the metadata address of most clouds), Azure's platform
/// address (DHCP, DNS, metadata through the wire server), benchmarking (often routed to lab
/// equipment), and multicast with the reserved block above it.
pub const BLOCKED_RANGES: [&str; 9] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "168.63.129.16/32",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// Sysctls every tenant container gets where the host kernel has IPv6: no IPv6 at all inside,
/// on every interface present and to come. Docker allows these namespaced sysctls.
pub const TENANT_SYSCTLS: [(&str, &str); 2] =
    [("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")];

/// The bridge prefix of the networks made with `allow_internet = internet`.
pub fn bridge_prefix(internet: bool) -> &'static str {
    if internet { ONLINE_PREFIX } else { ISOLATED_PREFIX }
}

/// The bridge name of a network: its prefix (see [`bridge_prefix`]) and 11 characters of its
/// name (interface names have at most 15).
pub fn bridge_name(name: &str, internet: bool) -> String {
    let tail: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    let start = tail.len().saturating_sub(11);
    format!("{}{}", bridge_prefix(internet), &tail[start..])
}

/// Whether the host kernel has IPv6 (not booted with `ipv6.disable=1`, module present).
pub fn kernel_has_ipv6() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// One address family's firewall tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn tool(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }
}

/// One rule: the tool, its table and chain, and the match arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub table: &'static str,
    pub chain: &'static str,
    pub args: Vec<String>,
}

/// Where a tenant's packets to the host are dropped.
const HOST: (&str, &str) = ("filter", "INPUT");
/// Where a tenant's forwarded packets are dropped: a chain Docker never touches.
const FORWARDED: (&str, &str) = ("mangle", "FORWARD");

/// Packets of connections opened towards the tenant: never dropped (IPv4; see the module doc).
const NOT_REPLIES: [&str; 5] = ["-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED"];

fn drop_from(
    family: Family,
    prefix: &str,
    (table, chain): (&'static str, &'static str),
    destination: Option<&str>,
    replies_pass: bool,
) -> Rule {
    let mut args = vec!["-i".to_owned(), format!("{prefix}+")];
    if let Some(range) = destination {
        args.extend(["-d".to_owned(), range.to_owned()]);
    }
    if replies_pass {
        args.extend(NOT_REPLIES.iter().map(|a| (*a).to_owned()));
    }
    args.extend(["-j".to_owned(), "DROP".to_owned()]);
    Rule { family, table, chain, args }
}

/// The IPv4 rules.
pub fn rules_v4() -> Vec<Rule> {
    let v4 = |prefix, place, destination| drop_from(Family::V4, prefix, place, destination, true);
    let mut rules = vec![v4(ONLINE_PREFIX, HOST, None), v4(ISOLATED_PREFIX, HOST, None)];
    rules.extend(BLOCKED_RANGES.iter().map(|r| v4(ONLINE_PREFIX, FORWARDED, Some(r))));
    rules.push(v4(ISOLATED_PREFIX, FORWARDED, None));
    rules
}

/// The IPv6 rules.
pub fn rules_v6() -> Vec<Rule> {
    let v6 = |prefix, place| drop_from(Family::V6, prefix, place, None, false);
    vec![
        v6(ONLINE_PREFIX, HOST),
        v6(ISOLATED_PREFIX, HOST),
        v6(ONLINE_PREFIX, FORWARDED),
        v6(ISOLATED_PREFIX, FORWARDED),
    ]
}

/// Rules of earlier versions, deleted where found: the IPv4 ones dropped replies too.
pub fn legacy() -> Vec<Rule> {
    let mut rules = vec![drop_from(Family::V4, ONLINE_PREFIX, HOST, None, false)];
    rules.extend(BLOCKED_RANGES.iter().map(|r| drop_from(Family::V4, ONLINE_PREFIX, FORWARDED, Some(r), false)));
    rules
}

/// Why the host firewall rules cannot be put in place.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Run(#[from] ProcessError),
    #[error("cannot add the host firewall rule `{tool} -t {table} -I {chain} {rule}`: {stderr}")]
    Insert { tool: &'static str, table: &'static str, chain: &'static str, rule: String, stderr: String },
}

/// What [`ensure`] did about IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6Firewall {
    /// The rules are in place.
    Rules,
    /// The kernel has no IPv6: nothing to firewall.
    NoIpv6,
    /// ip6tables cannot be used (why); tenants rely on IPv6 being off in their containers.
    Unavailable(String),
}

const TIMEOUT: Duration = Duration::from_secs(20);

async fn run(family: Family, args: &[&str]) -> Result<common::process::CapturedOutput, ProcessError> {
    ProcessSpec::new(family.tool()).arg("-w").args(args.iter().copied()).output(TIMEOUT, 1 << 14).await
}

fn with<'a>(rule: &'a Rule, op: &'static str) -> Vec<&'a str> {
    let mut args = vec!["-t", rule.table, op, rule.chain];
    args.extend(rule.args.iter().map(String::as_str));
    args
}

/// Deletes every copy of `rule`.
async fn delete_rule(rule: &Rule) -> Result<(), FirewallError> {
    // Bounded: a rule that cannot be deleted must not loop.
    for _ in 0..16 {
        if !run(rule.family, &with(rule, "-C")).await?.status.success() {
            return Ok(());
        }
        run(rule.family, &with(rule, "-D")).await?;
        tracing::info!(tool = rule.family.tool(), table = rule.table, chain = rule.chain, rule = %rule.args.join(" "), "earlier host firewall rule removed");
    }
    Ok(())
}

/// Inserts `rule` unless it is there.
async fn ensure_rule(rule: &Rule) -> Result<(), FirewallError> {
    let with = |op: &'static str| with(rule, op);
    if run(rule.family, &with("-C")).await?.status.success() {
        return Ok(());
    }
    let insert = run(rule.family, &with("-I")).await?;
    if !insert.status.success() {
        return Err(FirewallError::Insert {
            tool: rule.family.tool(),
            table: rule.table,
            chain: rule.chain,
            rule: rule.args.join(" "),
            stderr: String::from_utf8_lossy(&insert.stderr).trim().to_owned(),
        });
    }
    tracing::info!(tool = rule.family.tool(), table = rule.table, chain = rule.chain, rule = %rule.args.join(" "), "host firewall rule added");
    Ok(())
}

/// Inserts every missing rule; the error says which rule and why. IPv4 rules must go in; the
/// IPv6 ones go in wherever ip6tables works (see [`Ipv6Firewall`]).
pub async fn ensure() -> Result<Ipv6Firewall, FirewallError> {
    for rule in rules_v4() {
        ensure_rule(&rule).await?;
    }
    for rule in legacy() {
        delete_rule(&rule).await?;
    }
    if !kernel_has_ipv6() {
        return Ok(Ipv6Firewall::NoIpv6);
    }
    // Listing both chains needs the binary and the kernel's ip6tables tables: the probe for all.
    let mut usable = Ok(());
    for (table, chain) in [HOST, FORWARDED] {
        usable = match run(Family::V6, &["-t", table, "-S", chain]).await {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            Err(ProcessError::Spawn { source, .. }) => Err(format!("cannot run ip6tables: {source}")),
            Err(e) => return Err(e.into()),
        };
        if usable.is_err() {
            break;
        }
    }
    if let Err(why) = usable {
        tracing::warn!(
            reason = %why,
            "ip6tables is unavailable: no IPv6 host firewall rules; tenant containers have IPv6 switched off inside (net.ipv6.conf.all.disable_ipv6 = 1)"
        );
        return Ok(Ipv6Firewall::Unavailable(why));
    }
    for rule in rules_v6() {
        ensure_rule(&rule).await?;
    }
    Ok(Ipv6Firewall::Rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_linux_interface_names_and_say_the_mode() {
        assert_eq!(bridge_name("c-0123456789ab", true), "bas-123456789ab");
        assert_eq!(bridge_name("c-0123456789ab", false), "bai-123456789ab");
        assert!(bridge_name("c-0123456789ab", false).len() <= 15);
        assert_eq!(bridge_name("x", true), "bas-x");
    }

    /// Every rule, as an operator would type it.
    fn typed(rules: &[Rule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| format!("{} -t {} -I {} {}", r.family.tool(), r.table, r.chain, r.args.join(" ")))
            .collect()
    }

    #[test]
    fn the_rules_cover_the_host_and_every_non_public_range_in_both_families_and_let_replies_pass() {
        let v4 = typed(&rules_v4());
        let replies = "-m conntrack ! --ctstate ESTABLISHED,RELATED -j DROP";
        assert_eq!(v4[0], format!("iptables -t filter -I INPUT -i bas-+ {replies}"));
        assert_eq!(v4[1], format!("iptables -t filter -I INPUT -i bai-+ {replies}"));
        for range in ["0.0.0.0/8", "168.63.129.16/32", "198.18.0.0/15", "224.0.0.0/3", "169.254.0.0/16", "10.0.0.0/8"] {
            let rule = format!("iptables -t mangle -I FORWARD -i bas-+ -d {range} {replies}");
            assert!(v4.contains(&rule), "{rule} missing from {v4:#?}");
        }
        assert!(v4.contains(&format!("iptables -t mangle -I FORWARD -i bai-+ {replies}")), "{v4:#?}");
        assert_eq!(v4.len(), 3 + BLOCKED_RANGES.len());
        assert_eq!(
            typed(&rules_v6()),
            [
                "ip6tables -t filter -I INPUT -i bas-+ -j DROP",
                "ip6tables -t filter -I INPUT -i bai-+ -j DROP",
                "ip6tables -t mangle -I FORWARD -i bas-+ -j DROP",
                "ip6tables -t mangle -I FORWARD -i bai-+ -j DROP"
            ]
        );
        let legacy = typed(&legacy());
        assert_eq!(legacy[0], "iptables -t filter -I INPUT -i bas-+ -j DROP");
        assert!(legacy.iter().all(|r| !r.contains("conntrack")) && legacy.len() == 1 + BLOCKED_RANGES.len());
    }
}
