//! The aggregators' database, as ingest reaches it: `POST /v1/imports`
//! queues import jobs in it and the totals API reads it, over one pool.

use store::Store;
use tokio::sync::OnceCell;

/// The aggregators' database, connected on first use, so that ingest takes
/// orders while the database is still away. Ingest never migrates it: its
/// role needs only SELECT for the totals API (and INSERT on the job tables
/// for imports); the aggregators own the schema.
pub struct Database {
    url: String,
    store: OnceCell<Store>,
}

impl Database {
    /// The database at `url` (`postgres://…` or `sqlite://PATH`).
    pub fn new(url: String) -> Database {
        Database {
            url,
            store: OnceCell::new(),
        }
    }

    /// The connected store; a failed connection is tried again on the next
    /// call.
    ///
    /// Fails, saying why, while the database cannot be reached.
    pub async fn store(&self) -> Result<&Store, String> {
        self.store
            .get_or_try_init(|| Store::connect_existing(&self.url))
            .await
            .map_err(|e| format!("cannot reach the database: {e}"))
    }
}
