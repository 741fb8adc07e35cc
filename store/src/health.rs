//! Whether the database is answering, as `/readyz` reports it.
//!
//! A frozen server or a half-open connection does not fail a call, it only
//! makes it slow; so readiness looks at the calls still waiting as well as at
//! the last outcome. A process reports not ready within [`STALL`] of the
//! database going quiet, and ready again with the first call that succeeds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{SourcePartition, Store};

/// A call waiting longer than this makes the database count as not answering.
pub const STALL: Duration = Duration::from_secs(5);

/// Calls in flight and the last outcome of one database connection.
#[derive(Debug, Default)]
pub struct Health {
    next_id: AtomicU64,
    in_flight: Mutex<BTreeMap<u64, Instant>>,
    /// The last call ended with a transient error (connection lost, timeout).
    down: AtomicBool,
}

/// A call in flight, returned by [`Health::begin`].
#[derive(Debug)]
pub struct Started(u64);

impl Health {
    /// Records the start of a call.
    pub fn begin(&self) -> Started {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.in_flight
            .lock()
            .expect("health lock")
            .insert(id, Instant::now());
        Started(id)
    }

    /// Records the end of a call; `down` when it failed for a reason that
    /// says the database is unreachable (a transient error).
    pub fn end(&self, started: Started, down: bool) {
        self.in_flight
            .lock()
            .expect("health lock")
            .remove(&started.0);
        self.down.store(down, Ordering::Relaxed);
    }

    /// `Ok` while the database answers; otherwise why not, for `/readyz`.
    pub fn status(&self) -> Result<(), String> {
        let oldest = self
            .in_flight
            .lock()
            .expect("health lock")
            .values()
            .min()
            .copied();
        if let Some(waiting) = oldest.map(|t| t.elapsed()).filter(|w| *w >= STALL) {
            return Err(format!(
                "the database has not answered a call for {} s",
                waiting.as_secs()
            ));
        }
        if self.down.load(Ordering::Relaxed) {
            return Err("the database is unreachable (the last call failed; retrying)".into());
        }
        Ok(())
    }
}

/// What one role's `/readyz` looks at: the databases its services use and
/// the source partitions it parked, each with the role's own account `P` of
/// why. The worker and the aggregator each keep one in a static; a process
/// running several services of a role shares it.
pub struct Registry<P> {
    parked: Mutex<BTreeMap<SourcePartition, P>>,
    stores: Mutex<Vec<Arc<Store>>>,
}

impl<P> Default for Registry<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> Registry<P> {
    /// An empty registry (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            parked: Mutex::new(BTreeMap::new()),
            stores: Mutex::new(Vec::new()),
        }
    }

    /// The parked partitions, locked: park, unpark and look them up through
    /// the map. A lock is held only for the length of a map operation.
    pub fn parked(&self) -> MutexGuard<'_, BTreeMap<SourcePartition, P>> {
        self.parked.lock().expect("parked partitions lock")
    }

    /// Adds a database to those `/readyz` checks.
    pub fn watch(&self, store: Arc<Store>) {
        self.stores.lock().expect("stores lock").push(store);
    }

    /// What `/readyz` answers for `role`: `Ok`, or each problem on its own
    /// line: the role not consuming, a watched database not answering, each
    /// parked partition as `describe` tells it, then each of `more`.
    pub fn readiness(
        &self,
        role: &str,
        consuming: bool,
        describe: impl Fn(&SourcePartition, &P) -> String,
        more: impl IntoIterator<Item = String>,
    ) -> Result<(), String> {
        let mut problems = Vec::new();
        if !consuming {
            problems.push(format!(
                "the {role} is not consuming yet (connecting, or shutting down)"
            ));
        }
        let stores = self.stores.lock().expect("stores lock").clone();
        problems.extend(stores.iter().filter_map(|s| s.health().status().err()));
        problems.extend(self.parked().iter().map(|(source, p)| describe(source, p)));
        problems.extend(more);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_is_down_until_one_succeeds() {
        let health = Health::default();
        assert!(health.status().is_ok());
        let call = health.begin();
        assert!(
            health.status().is_ok(),
            "a call that just started is not a stall"
        );
        health.end(call, true);
        assert!(health.status().unwrap_err().contains("unreachable"));
        let call = health.begin();
        health.end(call, false);
        assert!(health.status().is_ok());
    }
}
