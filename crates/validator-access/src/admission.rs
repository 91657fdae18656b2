//! Who may come in, for both fronts: `allowed_source_addresses`, the per-minute limits
//! (`ssh_requests_per_minute` per source IP for connections and failed authentications, per
//! hotkey for logins), and the lookup from what a client presents (an SSH key, or through
//! the gate a grant id sshd already checked) to the [`Principal`] it logs in as.

use std::net::IpAddr;
use std::sync::Arc;

use common::audit::Audit;
use common::clock::Clock;
use common::ratelimit::RateLimiter;
use serde_json::json;

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
    by_ip: RateLimiter<IpAddr>,
    by_hotkey: RateLimiter<String>,
    audit: Arc<Audit>,
}

impl Admission {
    pub fn new(
        grants: Arc<GrantStore>,
        sources: Vec<(IpAddr, u8)>,
        per_minute: u32,
        clock: Arc<dyn Clock>,
        audit: Arc<Audit>,
    ) -> Self {
        Self {
            grants,
            sources,
            by_ip: RateLimiter::new(per_minute, clock.clone()),
            by_hotkey: RateLimiter::new(per_minute, clock),
            audit,
        }
    }

    /// Whether `ip` is inside `allowed_source_addresses` (any when the list is empty).
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|net| common::config::in_network(ip, *net))
    }

    /// Counts a connection or failed authentication from `ip`; false when over the limit.
    pub fn admit_ip(&self, ip: IpAddr, what: &str) -> bool {
        if self.by_ip.check(&ip).is_ok() {
            return true;
        }
        metrics::counter!("executor_validator_access_rate_limited_total", "scope" => "ip").increment(1);
        self.audit.record("rate_limited", json!({"scope": "ip", "peer": ip.to_string(), "what": what}));
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
            if !self.admit_ip(ip, "connection") {
                return Err(Denied::RateLimited);
            }
        }
        let principal = Principal::Validator(grant);
        self.admit_login(&principal)?;
        Ok(principal)
    }
}
