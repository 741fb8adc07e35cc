//! `tally worker`: a shard worker, until SIGTERM.

use std::net::SocketAddr;

use schemas::config::Validate;

use crate::cli::ServiceArgs;
use crate::error::{CliError, CliResult};

use super::service::{announce, kafka_accepts, load, serve_metrics};

/// Runs a shard worker with `/metrics` on 127.0.0.1:9101 by default.
pub(crate) async fn run(args: ServiceArgs) -> CliResult {
    let config = load(&args.layers)?.worker.checked()?;
    announce("worker", &config.brokers, &config.database_url);
    kafka_accepts("worker", &config.brokers, &config.kafka).await?;
    let shutdown = crate::signals::shutdown_on_signals();
    let default = SocketAddr::from(([127, 0, 0, 1], 9101));
    serve_metrics(
        &args,
        default,
        || shard_worker::health::readiness().map(|()| String::new()),
        shutdown.clone(),
    )
    .await?;
    shard_worker::run(config, shutdown)
        .await
        .map_err(CliError::run)
}
