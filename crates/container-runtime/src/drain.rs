//! Drain: the operator takes the node out of new rentals (a maintenance, a move) without
//! touching the running ones. While draining, creates are refused (`draining`, UNAVAILABLE:
//! a renter's client tries another node) and `/readyz` answers 503. The state is kept in
//! `data_dir/drain.json` (a durable file), so a restart of the service or the node keeps the
//! node drained until someone undrains it.

use std::sync::{Mutex, PoisonError};

use common::durable::{DurableFile, Opened, StoreError};
use serde::{Deserialize, Serialize};

/// The longest reason kept with the state.
pub const MAX_REASON: usize = 256;

/// Whether the node is drained, why and since when (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainState {
    pub draining: bool,
    pub reason: String,
    pub since: i64,
}

/// The state and its file.
#[derive(Debug)]
pub struct Drain {
    file: DurableFile,
    state: Mutex<DrainState>,
}

impl Drain {
    /// The state kept in `data_dir/drain.json` (not drained when there is none).
    pub fn open(data_dir: &std::path::Path) -> Result<Self, StoreError> {
        let file = DurableFile::new(data_dir.join("drain.json"), "drain state");
        let (state, opened) = file.open::<DrainState>(|_| 1)?;
        if let Opened::Recovered { moved_to, .. } = &opened {
            tracing::warn!(moved_to = %moved_to.display(), "drain.json was damaged; its last good copy is back");
        }
        if state.draining {
            tracing::warn!(reason = %state.reason, since = state.since, "the node is drained: creates are refused until it is undrained");
        }
        set_gauge(state.draining);
        Ok(Self { file, state: Mutex::new(state) })
    }

    pub fn get(&self) -> DrainState {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Turns drain on or off, written before it takes effect. Setting what is already set
    /// keeps its `since`.
    pub fn set(&self, draining: bool, reason: &str, now: i64) -> Result<DrainState, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let since = if state.draining == draining && state.since != 0 { state.since } else { now };
        let next = DrainState { draining, reason: if draining { reason.to_owned() } else { String::new() }, since };
        self.file.store(&next)?;
        if next.draining != state.draining {
            tracing::warn!(draining, reason, "drain {}", if draining { "on: creates are refused" } else { "off" });
        }
        *state = next.clone();
        set_gauge(draining);
        Ok(next)
    }
}

fn set_gauge(draining: bool) {
    metrics::gauge!("executor_container_runtime_draining").set(if draining { 1.0 } else { 0.0 });
}

/// Describes the metrics of this module.
pub fn describe_metrics() {
    metrics::describe_gauge!("executor_container_runtime_draining", "1 while the node is drained (no new creates).");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_new_store_and_keeps_its_since() {
        let dir = tempfile::tempdir().unwrap();
        let drain = Drain::open(dir.path()).unwrap();
        assert_eq!(drain.get(), DrainState::default());
        let on = drain.set(true, "maintenance", 100).unwrap();
        assert_eq!(on, DrainState { draining: true, reason: "maintenance".into(), since: 100 });
        assert_eq!(drain.set(true, "still", 200).unwrap().since, 100);
        assert_eq!(Drain::open(dir.path()).unwrap().get().reason, "still");
        let off = drain.set(false, "ignored", 300).unwrap();
        assert_eq!(off, DrainState { draining: false, reason: String::new(), since: 300 });
        assert!(!Drain::open(dir.path()).unwrap().get().draining);
    }
}
