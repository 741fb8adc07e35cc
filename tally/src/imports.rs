//! The database side of `POST /v1/imports`: each announced object becomes
//! one import job in the aggregators' database.

use std::future::Future;
use std::pin::Pin;

use ingest::imports::{Announced, ImportQueue, Started};
use store::Store;
use tokio::sync::OnceCell;

/// Queues imports in the database at `url`, connecting on first use (so
/// that ingest serves orders while the database is still away).
pub struct DatabaseQueue {
    url: String,
    store: OnceCell<Store>,
}

impl DatabaseQueue {
    /// A queue over the database at `url`.
    pub fn new(url: String) -> DatabaseQueue {
        DatabaseQueue {
            url,
            store: OnceCell::new(),
        }
    }
}

impl ImportQueue for DatabaseQueue {
    fn queue<'a>(
        &'a self,
        object: &'a Announced,
    ) -> Pin<Box<dyn Future<Output = Started> + Send + 'a>> {
        Box::pin(async move {
            let error = |reason: String| Started {
                object: object.url.clone(),
                job: None,
                outcome: "error".into(),
                reason: Some(reason),
            };
            let store = match self
                .store
                .get_or_try_init(|| Store::connect(&self.url))
                .await
            {
                Ok(store) => store,
                Err(e) => return error(format!("cannot reach the database: {e}")),
            };
            match backfill::queue_object(
                store,
                &object.url,
                object.size,
                object.etag.as_deref(),
                None,
            )
            .await
            {
                Ok(queued) => {
                    let reason = queued.files.first().and_then(|f| f.reason.clone());
                    let outcome = if queued.job_id.is_some() {
                        "queued"
                    } else {
                        "skipped"
                    };
                    if let Some(job) = queued.job_id {
                        tracing::info!(
                            job,
                            object = object.url,
                            "Import queued from a notification."
                        );
                    }
                    Started {
                        object: object.url.clone(),
                        job: queued.job_id,
                        outcome: outcome.into(),
                        reason,
                    }
                }
                Err(reason) => error(reason),
            }
        })
    }
}
