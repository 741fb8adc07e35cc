//! The service's life: bind, serve, and on shutdown drain (requests in
//! flight, the broker watch) and flush.

use std::sync::Arc;
use std::time::Duration;

use schemas::config::Checked;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::IngestConfig;
use crate::error::IngestError;
use crate::http::serve::{serve, tls_acceptor, Limits};
use crate::http::Ingest;
use crate::notifications::ImportQueue;
use crate::routes::router;

/// How often `/readyz` asks the broker for metadata.
const BROKER_CHECK: Duration = Duration::from_secs(2);

/// How long a stop waits for the broker to acknowledge what was produced.
const FLUSH: Duration = Duration::from_secs(30);

/// Binds `ingest.listen`.
pub async fn bind(config: &Checked<IngestConfig>) -> Result<TcpListener, IngestError> {
    TcpListener::bind(&config.listen)
        .await
        .map_err(|source| IngestError::Listen {
            addr: config.listen.clone(),
            source,
        })
}

/// Serves the ingest API (with `/metrics`) on `listener` until `shutdown`;
/// then stops accepting, lets requests in flight finish, and flushes the
/// producer, so that every event a 200 or 207 accepted is acknowledged.
/// `imports` queues the jobs of `POST /v1/imports` (none: that route is 503).
///
/// Fails on a TLS certificate it cannot use, a producer librdkafka
/// refuses, or events still unacknowledged at the end. The settings were
/// checked by [`Validate::checked`](schemas::config::Validate::checked).
pub async fn run(
    config: Checked<IngestConfig>,
    listener: TcpListener,
    imports: Option<Arc<dyn ImportQueue>>,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let config = config.into_inner();
    let tls = tls_acceptor(&config)?;
    // `?` wraps it in this role's error.
    let failed = |op| kafka::Error::client(op, &config.brokers);
    let state = Ingest::new(&config, imports).map_err(failed("producer"))?;
    let (tasks, stop) = (TaskTracker::new(), shutdown.child_token());
    tasks.spawn(state.clone().watch_broker(BROKER_CHECK, stop.clone()));
    let app = router(state.clone()).route("/metrics", axum::routing::get(crate::metrics::export));
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%bound, scheme, topic = config.orders_topic, "Ingest listening.");
    serve(listener, app, tls, Limits::of(&config), shutdown).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    state.flush(FLUSH).map_err(failed("flush at shutdown"))?;
    tracing::info!("Ingest stopped; every accepted event is acknowledged.");
    Ok(())
}
