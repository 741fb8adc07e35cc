//! `tally ingest`: the HTTP front door, until SIGTERM; and the database
//! side of its `POST /v1/imports`: each announced object becomes one import
//! job in the aggregators' database.

use std::future::Future;
use std::pin::Pin;

use std::sync::Arc;

use ingest::notifications::{Announced, ImportQueue, RecordOutcome, Started};
use store::Store;

use schemas::config::Validate;

use crate::cli::ServiceArgs;
use crate::error::{CliError, CliResult};

use super::service::{announce, kafka_accepts, load};

/// Runs `tally ingest` until SIGTERM: exit 2 for a configuration it cannot
/// use (an address, a certificate), 1 when it fails at run time.
pub(crate) async fn run(args: ServiceArgs) -> CliResult {
    let config = load(&args.layers)?.ingest.checked()?;
    if let Some(addr) = args.metrics_addr {
        return Err(CliError::config(format!(
            "`--metrics-addr` = {addr:?}: tally ingest serves /metrics, /healthz and /readyz on \
             its API address (`ingest.listen` = {:?}); scrape them there, and unset \
             TALLY_METRICS_ADDR for this role",
            config.listen
        )));
    }
    announce("ingest", &config.brokers, &config.database_url);
    kafka_accepts("ingest", &config.brokers, &config.kafka).await?;
    let imports =
        (!config.database_url.is_empty()).then(|| Arc::new(DatabaseQueue) as Arc<dyn ImportQueue>);
    let listener = ingest::bind(&config).await;
    let result = match listener {
        Ok(listener) => {
            ingest::run(
                config,
                listener,
                imports,
                crate::signals::shutdown_on_signals(),
            )
            .await
        }
        Err(error) => Err(error),
    };
    result.map_err(|error| {
        if error.is_config() {
            CliError::config(error)
        } else {
            CliError::run(error)
        }
    })
}

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
