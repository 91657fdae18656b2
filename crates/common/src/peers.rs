//! Who a remote peer is, for limits: an IPv4 address, or the /64 an IPv6 address belongs to
//! (one host usually holds a whole /64, so counting single IPv6 addresses would let it take as
//! many slots as it likes), and slots counted per peer and in all.
//!
//! Every public door (the gRPC port, the HTTP ports, SSH) keys its per-address limits with
//! [`PeerKey`], so the rule is the same everywhere.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The key of a remote address for per-peer limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKey {
    /// An IPv4 address (also one mapped into IPv6, `::ffff:a.b.c.d`).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl PeerKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => PeerKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(v4),
                None => PeerKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl From<IpAddr> for PeerKey {
    fn from(ip: IpAddr) -> Self {
        Self::of(ip)
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerKey::V4(v4) => write!(f, "{v4}"),
            PeerKey::V6Prefix(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
        }
    }
}

/// Which limit refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotsFull {
    #[error("{held} slots are held in all (the most)")]
    All { held: usize },
    #[error("{peer} holds {held} slots (the most for one address)")]
    Peer { peer: PeerKey, held: usize },
}

/// Slots held by peers: at most `total` in all and `per_peer` for any one [`PeerKey`]. A slot
/// is released when its [`Slot`] drops.
#[derive(Debug, Clone)]
pub struct PeerSlots {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: usize,
    per_peer: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    all: usize,
    by_peer: HashMap<PeerKey, usize>,
}

/// One slot of a [`PeerSlots`], given back on drop.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<Inner>,
    peer: PeerKey,
}

impl PeerSlots {
    /// `total` and `per_peer` of at least 1.
    pub fn new(total: usize, per_peer: usize) -> Self {
        let inner = Inner { total: total.max(1), per_peer: per_peer.max(1), held: Mutex::default() };
        Self { inner: Arc::new(inner) }
    }

    /// A slot for `ip`, or the limit that is reached.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<Slot, SlotsFull> {
        let peer = PeerKey::of(ip);
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.by_peer.get(&peer).copied().unwrap_or(0);
        if mine >= self.inner.per_peer {
            return Err(SlotsFull::Peer { peer, held: mine });
        }
        if held.all >= self.inner.total {
            return Err(SlotsFull::All { held: held.all });
        }
        held.all += 1;
        *held.by_peer.entry(peer).or_insert(0) += 1;
        Ok(Slot { inner: self.inner.clone(), peer })
    }

    /// Slots held now, in all.
    pub fn held(&self) -> usize {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner()).all
    }

    /// Slots `ip`'s peer holds now.
    pub fn held_by(&self, ip: IpAddr) -> usize {
        let held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        held.by_peer.get(&PeerKey::of(ip)).copied().unwrap_or(0)
    }
}

impl Slot {
    pub fn peer(&self) -> PeerKey {
        self.peer
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        held.all = held.all.saturating_sub(1);
        if let Some(count) = held.by_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                held.by_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_of_one_64_are_one_peer() {
        assert_eq!(PeerKey::of(ip("2001:db8:1:2::1")), PeerKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(PeerKey::of(ip("2001:db8:1:2::1")), PeerKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(PeerKey::of(ip("::ffff:192.0.2.7")), PeerKey::of(ip("192.0.2.7")));
        assert_ne!(PeerKey::of(ip("192.0.2.7")), PeerKey::of(ip("192.0.2.8")));
        assert_eq!(PeerKey::of(ip("2001:db8:1:2::1")).to_string(), "2001:db8:1:2::/64");
        assert_eq!(PeerKey::of(ip("::ffff:192.0.2.7")).to_string(), "192.0.2.7");
    }

    #[test]
    fn slots_are_capped_per_peer_and_in_all_and_given_back() {
        let slots = PeerSlots::new(3, 2);
        let a1 = slots.try_acquire(ip("2001:db8::1")).unwrap();
        let _a2 = slots.try_acquire(ip("2001:db8::2")).unwrap();
        assert!(matches!(slots.try_acquire(ip("2001:db8::3")), Err(SlotsFull::Peer { held: 2, .. })));
        let _b = slots.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(slots.try_acquire(ip("192.0.2.2")).unwrap_err(), SlotsFull::All { held: 3 });
        drop(a1);
        assert_eq!(slots.held(), 2);
        assert_eq!(slots.held_by(ip("2001:db8::9")), 1);
        let _c = slots.try_acquire(ip("192.0.2.2")).unwrap();
        assert_eq!(slots.held(), 3);
    }
}
