//! Who may come in, for both fronts: `allowed_source_addresses`, the per-minute limits
//! (`ssh_requests_per_minute` per source address for connections and failed authentications,
//! an IPv6 /64 counting as one address ([`PeerKey`]), per hotkey for logins), and the lookup from what a client presents (an SSH key, or through
//! the gate a grant id sshd already checked) to the [`Principal`] it logs in as.

use std::net::IpAddr;
use std::sync::Arc;

use common::clock::Clock;
use common::peers::PeerKey;
use common::ratelimit::RateLimiter;

use crate::grants::GrantStore;
use crate::principal::Principal;
use crate::time::now;

/// Why a client is not let in; `as_str` is the audit line's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no live grant")]
    NoLiveGrant,
    #[error("source address not allowed")]
    SourceAddress,
    #[error("rate limited")]
    RateLimited,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::NoLiveGrant => "no_live_grant",
            Denied::SourceAddress => "source_address",
            Denied::RateLimited => "rate_limited",
        }
    }
}

/// Admission of the service.
#[derive(Debug)]
pub struct Admission {
    grants: Arc<GrantStore>,
    /// `allowed_source_addresses`, parsed; empty: any.
    sources: Vec<(IpAddr, u8)>,
    by_ip: RateLimiter<PeerKey>,
    by_hotkey: RateLimiter<String>,
}

impl Admission {
    pub fn new(grants: Arc<GrantStore>, sources: Vec<(IpAddr, u8)>, per_minute: u32, clock: Arc<dyn Clock>) -> Self {
        Self {
            grants,
            sources,
            by_ip: RateLimiter::new(per_minute, clock.clone()),
            by_hotkey: RateLimiter::new(per_minute, clock),
        }
    }

    /// Whether `ip` is inside `allowed_source_addresses` (any when the list is empty).
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|net| common::config::in_network(ip, *net))
    }

    /// Counts a connection or failed authentication from `ip`'s peer (one host holds a whole
    /// IPv6 /64); false when over the limit (the caller reports the refusal:
    /// [`crate::refusals`], off the accept path).
    pub fn admit_ip(&self, ip: IpAddr) -> bool {
        if self.by_ip.check(&PeerKey::of(ip)).is_ok() {
            return true;
        }
        metrics::counter!("executor_validator_access_rate_limited_total", "scope" => "ip").increment(1);
        false
    }

    /// The principal an SSH key (by fingerprint) logs in as now, if any.
    pub fn principal_for_key(&self, fingerprint: &str) -> Option<Principal> {
        self.grants.for_key(fingerprint, now()).map(Principal::Validator)
    }

    /// Counts a login of `principal`; `RateLimited` when its hotkey is over the limit.
    pub fn admit_login(&self, principal: &Principal) -> Result<(), Denied> {
        self.by_hotkey.check(&principal.hotkey().to_owned()).map_err(|_| Denied::RateLimited)
    }

    /// A login relayed by the gate: grant `grant_id` (sshd checked its key) from `peer`.
    pub fn admit_relayed(&self, grant_id: &str, peer: Option<IpAddr>) -> Result<Principal, Denied> {
        let grant = self.grants.live(now()).into_iter().find(|g| g.id == grant_id).ok_or(Denied::NoLiveGrant)?;
        if let Some(ip) = peer {
            if !self.source_allowed(ip) {
                return Err(Denied::SourceAddress);
            }
            if !self.admit_ip(ip) {
                return Err(Denied::RateLimited);
            }
        }
        let principal = Principal::Validator(grant);
        self.admit_login(&principal)?;
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use common::clock::ManualClock;

    use super::*;
    use crate::grants::{GrantRecord, fingerprint, parse_key};

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn keys_and_relayed_grants_become_principals_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let (grants, _) = GrantStore::open(dir.path()).unwrap();
        let key = parse_key(KEY).unwrap();
        let grant = GrantRecord {
            id: "g-1".into(),
            hotkey: "5Grw".into(),
            public_key: key.to_openssh().unwrap(),
            fingerprint: fingerprint(&key),
            created_at: 0,
            expires_at: now() + 600,
        };
        grants.add(grant.clone()).unwrap();
        let sources = vec![common::config::parse_network("10.0.0.0/8").unwrap()];
        let admission = Admission::new(Arc::new(grants), sources, 1, Arc::new(ManualClock::default()));

        assert_eq!(admission.principal_for_key(&grant.fingerprint), Some(Principal::Validator(grant.clone())));
        assert_eq!(admission.principal_for_key("SHA256:other"), None);
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(admission.admit_relayed("g-2", Some(inside)), Err(Denied::NoLiveGrant));
        assert_eq!(admission.admit_relayed("g-1", Some("192.168.1.1".parse().unwrap())), Err(Denied::SourceAddress));
        assert_eq!(admission.admit_relayed("g-1", Some(inside)), Ok(Principal::Validator(grant.clone())));
        // One a minute: the address is spent, then (from elsewhere) the hotkey.
        assert_eq!(admission.admit_relayed("g-1", Some(inside)), Err(Denied::RateLimited));
        assert_eq!(admission.admit_relayed("g-1", Some("10.9.9.9".parse().unwrap())), Err(Denied::RateLimited));
        assert!(!admission.admit_ip(inside));
        assert!(admission.admit_login(&Principal::Validator(grant)).is_err());
    }

    /// One host holds a whole IPv6 /64: its addresses share one budget.
    #[test]
    fn the_addresses_of_one_ipv6_64_share_one_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (grants, _) = GrantStore::open(dir.path()).unwrap();
        let admission = Admission::new(Arc::new(grants), Vec::new(), 2, Arc::new(ManualClock::default()));
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(admission.admit_ip(ip("2001:db8:1:2::1")));
        assert!(admission.admit_ip(ip("2001:db8:1:2::2")));
        assert!(!admission.admit_ip(ip("2001:db8:1:2::3")), "a third address of one /64 got a budget");
        assert!(admission.admit_ip(ip("2001:db8:1:3::1")));
    }
}
