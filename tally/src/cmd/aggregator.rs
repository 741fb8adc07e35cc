//! `tally aggregator`: an aggregator (with its backfill runner and
//! scheduler), until SIGTERM.

use std::net::SocketAddr;

use schemas::config::Validate;

use crate::cli::ServiceArgs;
use crate::error::{CliError, CliResult};

use super::service::{announce, kafka_accepts, load, serve_metrics};

/// Runs an aggregator with `/metrics` on 127.0.0.1:9102 by default.
pub(crate) async fn run(args: ServiceArgs) -> CliResult {
    let config = load(&args.layers)?.aggregator.checked()?;
    announce("aggregator", &config.brokers, &config.database_url);
    kafka_accepts("aggregator", &config.brokers, &config.kafka).await?;
    let shutdown = crate::signals::shutdown_on_signals();
    let default = SocketAddr::from(([127, 0, 0, 1], 9102));
    serve_metrics(
        &args,
        default,
        aggregator::health::readiness,
        shutdown.clone(),
    )
    .await?;
    aggregator::run(config, shutdown)
        .await
        .map_err(CliError::run)
}
