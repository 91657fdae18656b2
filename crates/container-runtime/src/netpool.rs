//! Networks for isolated containers, made ahead of time. Creating a bridge network costs the
//! engine about 120 ms (a bridge, iptables rules), more than a third of a container's
//! create-to-running time, so a few are kept ready: a create takes one and the pool refills in
//! the background. Pool networks carry the label `ai.basilica.executor.pool`; a container
//! records the network it got in its own label, so the pool, the reaper and a restarted service
//! all know which are in use. On shutdown the spare networks are removed (a host has room for
//! only a few dozen bridge networks); after a `kill -9` the next start adopts them. Each
//! spare network made here gets a running holder (see `holder`), which a create without
//! published ports joins instead of paying for a network namespace of its own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{Engine, EngineError};
use crate::labels::{LABEL_POOL, random_name};

/// A refill waits this long after a take, so it does not compete with the start that usually
/// follows a create (making a network holds the engine's network locks for ~100 ms).
pub const REFILL_DELAY: Duration = Duration::from_millis(500);

/// The pool of one service.
#[derive(Debug, Clone)]
pub struct NetworkPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    internet: bool,
    target: usize,
    /// `[docker.network_config] dns_servers`, for the holders.
    dns: Vec<String>,
    /// The holders' image (made on first use); None: spares get no holders.
    holders: tokio::sync::OnceCell<Option<String>>,
    state: Mutex<State>,
    refilling: tokio::sync::Mutex<()>,
}

/// A network for a create, and whether its holder runs (see `holder`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spare {
    pub network: String,
    pub holder: bool,
}

#[derive(Debug, Default)]
struct State {
    ready: Vec<Spare>,
    /// Taken by a create that has not finished: neither ready nor yet named by a container.
    claimed: HashSet<String>,
    /// Drained for shutdown: no more refills.
    closed: bool,
}

fn new_name() -> Result<String, EngineError> {
    Ok(random_name("basilica-n-")?)
}

impl NetworkPool {
    /// A pool keeping `target` networks ready (0: every create makes its own), their holders
    /// given the DNS servers `dns`.
    pub fn new(engine: Engine, internet: bool, target: usize, dns: &[std::net::IpAddr]) -> Self {
        let inner = Inner {
            engine,
            internet,
            target,
            dns: dns.iter().map(ToString::to_string).collect(),
            holders: tokio::sync::OnceCell::new(),
            state: Mutex::new(State::default()),
            refilling: tokio::sync::Mutex::new(()),
        };
        Self { inner: Arc::new(inner) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The image holders are made from, made once; None: spares get no holders (not on this
    /// architecture, or the engine refused the image this time: a later refill asks again).
    async fn holder_image(&self) -> Option<String> {
        cached_image(&self.inner.holders, || crate::holder::ensure_image(self.inner.engine.docker())).await
    }

    /// Adopts the spare pool networks a previous run left (those no container names and that
    /// are made as this version makes them for `allow_internet` now: not internal, with the
    /// bridge prefix of the mode), with their holders where these can serve (see
    /// `holder::adoptable`); removes the others.
    pub async fn adopt(&self, in_use: &HashSet<String>) -> Result<(), EngineError> {
        let engine = &self.inner.engine;
        let pool: HashSet<String> = engine.our_pool_networks().await?.into_iter().collect();
        for n in engine.our_networks().await? {
            if !pool.contains(&n.name) || in_use.contains(&n.name) {
                continue;
            }
            let current = !n.internal && n.bridge.starts_with(crate::firewall::bridge_prefix(self.inner.internet));
            if current && self.state().ready.len() < self.inner.target {
                let holder = crate::holder::adoptable(engine.docker(), &n.name, &self.inner.dns).await?;
                self.state().ready.push(Spare { network: n.name, holder });
            } else {
                engine.remove_network(&n.name).await?;
            }
        }
        Ok(())
    }

    /// A network for a new container: a ready one (with its holder when it has one), or a
    /// new one made now (without). Call [`Self::settled`] once the create has finished,
    /// whatever its outcome.
    pub async fn take(&self) -> Result<Spare, EngineError> {
        let ready = self.state().ready.pop();
        let spare = match ready {
            Some(spare) => spare,
            None => {
                let name = new_name()?;
                self.inner.engine.create_network(&name, self.inner.internet, HashMap::new()).await?;
                Spare { network: name, holder: false }
            }
        };
        self.state().claimed.insert(spare.network.clone());
        self.refill_in_background(REFILL_DELAY);
        Ok(spare)
    }

    /// The create that took `name` is over: the container names it now, or it was removed.
    pub fn settled(&self, name: &str) {
        self.state().claimed.remove(name);
    }

    /// Networks the reaper must leave alone: ready or being used by a create right now.
    pub fn held(&self) -> HashSet<String> {
        let state = self.state();
        state.ready.iter().map(|s| &s.network).chain(&state.claimed).cloned().collect()
    }

    /// Tops the pool up to its target in the background, after `delay`.
    pub fn refill_in_background(&self, delay: Duration) {
        if self.inner.target == 0 {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = pool.refill().await {
                tracing::warn!(error = %e, "cannot refill the network pool");
            }
        });
    }

    /// Tops the pool up to its target.
    pub async fn refill(&self) -> Result<(), EngineError> {
        let _one_at_a_time = self.inner.refilling.lock().await;
        loop {
            let full = {
                let state = self.state();
                state.closed || state.ready.len() >= self.inner.target
            };
            if full {
                return Ok(());
            }
            let name = new_name()?;
            let labels = HashMap::from([(LABEL_POOL.to_owned(), "true".to_owned())]);
            self.inner.engine.create_network(&name, self.inner.internet, labels).await?;
            let holder = match self.holder_image().await {
                Some(image) => {
                    let engine = &self.inner.engine;
                    crate::holder::start(engine.docker(), &image, engine.executor_id(), &name, &self.inner.dns)
                        .await
                        .inspect_err(|e| tracing::warn!(network = %name, error = %e, "cannot start a network holder"))
                        .is_ok()
                }
                None => false,
            };
            self.state().ready.push(Spare { network: name, holder });
        }
    }

    /// Removes the spare networks (on shutdown).
    pub async fn drain(&self) {
        self.state().closed = true;
        let _no_refill = self.inner.refilling.lock().await;
        let ready = std::mem::take(&mut self.state().ready);
        for spare in ready {
            if let Err(e) = self.inner.engine.remove_network(&spare.network).await {
                tracing::warn!(network = %spare.network, error = %e, "cannot remove a spare network");
            }
        }
    }
}

/// What `make` gives, kept in `cell` once it has answered (an image, or None where holders
/// cannot run); a failure is logged and not kept, so the next call tries again: an engine that
/// was busy once must not leave the pool without holders until the service restarts.
async fn cached_image<F, Fut>(cell: &tokio::sync::OnceCell<Option<String>>, make: F) -> Option<String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, crate::holder::HolderError>>,
{
    match cell.get_or_try_init(make).await {
        Ok(image) => image.clone(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot make the network holder image; spare networks go without until a later refill");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holder::HolderError;

    fn refused() -> HolderError {
        HolderError {
            name: "holder".into(),
            source: bollard::errors::Error::DockerResponseServerError { status_code: 500, message: "busy".into() },
        }
    }

    /// A failure to make the holders' image is not kept (the next refill asks again); an
    /// answer, an image or None, is kept and the engine is not asked again.
    #[tokio::test]
    async fn a_failed_holder_image_is_tried_again_and_an_answer_is_kept() {
        let cell = tokio::sync::OnceCell::new();
        assert_eq!(cached_image(&cell, || async { Err(refused()) }).await, None);
        assert_eq!(
            cached_image(&cell, || async { Ok(Some("sha256:ab".to_owned())) }).await.as_deref(),
            Some("sha256:ab")
        );
        let asked_again = || async { panic!("the engine was asked again") };
        assert_eq!(cached_image(&cell, asked_again).await.as_deref(), Some("sha256:ab"));

        let none = tokio::sync::OnceCell::new();
        assert_eq!(cached_image(&none, || async { Ok(None) }).await, None);
        assert_eq!(cached_image(&none, asked_again).await, None);
    }
}
