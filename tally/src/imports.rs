//! The database side of `POST /v1/imports`: each announced object becomes
//! one import job in the aggregators' database.

use std::future::Future;
use std::pin::Pin;

use ingest::imports::{Announced, ImportQueue, RecordOutcome, Started};
use store::Store;

/// Queues imports in the aggregators' database.
pub struct DatabaseQueue;

impl ImportQueue for DatabaseQueue {
    fn queue<'a>(
        &'a self,
        store: &'a Store,
        object: &'a Announced,
    ) -> Pin<Box<dyn Future<Output = Started> + Send + 'a>> {
        Box::pin(async move {
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
                        RecordOutcome::Queued
                    } else {
                        RecordOutcome::Skipped
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
                        outcome,
                        reason,
                    }
                }
                Err(reason) => Started::failed(object, reason),
            }
        })
    }
}
