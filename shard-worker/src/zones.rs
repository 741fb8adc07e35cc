//! The merchants' time zones a worker buckets local days by: loaded from
//! `tally_merchants` before the first batch and refreshed in the background.
//!
//! A batch takes the zones current when it is decoded, and its partial's
//! local rows name them. A zone set while a worker runs applies from the
//! worker's next refresh; a range replayed after a crash is bucketed by the
//! zones of its replay. Either way the fence applies each range once, so
//! every event is in `merchant_sales_local` exactly once.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use schemas::zone::{Zone, Zones};
use store::Store;
use tokio_util::sync::CancellationToken;

/// How often a worker reads the merchants' zones again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// The current zones, shared by a worker's partitions; none when the worker
/// keeps no local days.
#[derive(Clone, Default)]
pub struct Watched(Option<Arc<RwLock<Arc<Zones>>>>);

impl Watched {
    /// No local days.
    pub fn off() -> Watched {
        Watched(None)
    }

    /// Local days under `zones`.
    pub fn new(zones: Zones) -> Watched {
        Watched(Some(Arc::new(RwLock::new(Arc::new(zones)))))
    }

    /// The zones to decode the next batch by.
    pub fn current(&self) -> Option<Arc<Zones>> {
        let lock = self.0.as_ref()?;
        Some(lock.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn replace(&self, zones: Zones) {
        if let Some(lock) = &self.0 {
            *lock.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zones);
        }
    }
}

/// Reads the zones again every `every` until `shutdown`; a failed read keeps
/// the zones held and is logged.
pub async fn refresh(
    watched: Watched,
    store: Arc<Store>,
    default: Zone,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        match store.zone_map(default).await {
            Ok(zones) => {
                if watched.current().as_deref() != Some(&zones) {
                    tracing::info!(
                        merchants = zones.len(),
                        "Merchants' time zones changed; new batches use them."
                    );
                    watched.replace(zones);
                }
            }
            Err(error) => tracing::warn!(
                %error,
                "Merchants' time zones not read; keeping the ones held."
            ),
        }
    }
}
