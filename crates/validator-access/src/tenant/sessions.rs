//! Renters' live SSH sessions, by container and key, so that removing a key, or the container
//! stopping, going or passing its TTL, closes every session it opened (the connection is
//! disconnected; the processes started through it die with their exec), and so that the
//! per-container and per-key limits can be counted.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// One live session.
#[derive(Debug)]
pub struct TenantSession {
    pub container: String,
    pub fingerprint: String,
    pub peer: String,
    /// Unix seconds.
    pub started_at: i64,
    cut: crate::front::Cut,
}

impl TenantSession {
    pub fn new(container: String, fingerprint: String, peer: String, started_at: i64, cut: crate::front::Cut) -> Self {
        Self { container, fingerprint, peer, started_at, cut }
    }
}

impl std::fmt::Debug for TenantSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSessions").field("live", &self.lock().len()).finish()
    }
}

/// Why a login may not open a session now (the text goes to the renter after `executor: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error(
        "container {container} has {open} SSH session(s) open, the most it may (tenant_access.max_sessions_per_container)"
    )]
    Container { container: String, open: u32 },
    #[error("this key has {open} SSH session(s) open, the most it may (tenant_access.max_sessions_per_key)")]
    Key { open: u32 },
}

impl Full {
    /// The refusal's reason in metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Full::Container { .. } => "sessions_per_container",
            Full::Key { .. } => "sessions_per_key",
        }
    }
}

/// The registry.
pub struct TenantSessions {
    live: Mutex<HashMap<String, TenantSession>>,
    per_container: u32,
    per_key: u32,
}

impl TenantSessions {
    pub fn new(per_container: u32, per_key: u32) -> Self {
        Self { live: Mutex::new(HashMap::new()), per_container, per_key }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TenantSession>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn room(
        live: &HashMap<String, TenantSession>,
        container: &str,
        fingerprint: &str,
        limits: (u32, u32),
    ) -> Result<(), Full> {
        let of_container = live.values().filter(|s| s.container == container);
        let open = of_container.clone().count() as u32;
        if open >= limits.0 {
            return Err(Full::Container { container: container.to_owned(), open });
        }
        let open = of_container.filter(|s| s.fingerprint == fingerprint).count() as u32;
        if open >= limits.1 {
            return Err(Full::Key { open });
        }
        Ok(())
    }

    /// Whether a login of `fingerprint` into `container` would find room now.
    pub fn would_admit(&self, container: &str, fingerprint: &str) -> Result<(), Full> {
        Self::room(&self.lock(), container, fingerprint, (self.per_container, self.per_key))
    }

    /// Registers session `id` unless its container or key holds as many as allowed.
    pub fn insert(&self, id: String, session: TenantSession) -> Result<(), Full> {
        let mut live = self.lock();
        Self::room(&live, &session.container, &session.fingerprint, (self.per_container, self.per_key))?;
        live.insert(id, session);
        metrics::gauge!("executor_validator_access_tenant_sessions").set(live.len() as f64);
        Ok(())
    }

    /// Forgets a session that ended by itself.
    pub fn remove(&self, id: &str) -> Option<TenantSession> {
        let mut live = self.lock();
        let gone = live.remove(id);
        metrics::gauge!("executor_validator_access_tenant_sessions").set(live.len() as f64);
        gone
    }

    /// Closes every session `matches` picks, telling the client `why`; returns them as
    /// `(id, session)`. It never waits on a client ([`crate::front::Cut`]).
    pub fn close_where(&self, matches: impl Fn(&TenantSession) -> bool, why: &str) -> Vec<(String, TenantSession)> {
        let mut live = self.lock();
        let ids: Vec<String> = live.iter().filter(|(_, s)| matches(s)).map(|(id, _)| id.clone()).collect();
        let closed: Vec<(String, TenantSession)> =
            ids.into_iter().filter_map(|id| live.remove(&id).map(|s| (id, s))).collect();
        metrics::gauge!("executor_validator_access_tenant_sessions").set(live.len() as f64);
        drop(live);
        for (_, session) in &closed {
            session.cut.now(why);
        }
        closed
    }

    /// The containers with sessions open.
    pub fn containers(&self) -> Vec<String> {
        let mut c: Vec<String> = self.lock().values().map(|s| s.container.clone()).collect();
        c.sort();
        c.dedup();
        c
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
