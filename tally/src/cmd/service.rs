//! Starting a service: its settings loaded, the Kafka properties checked
//! against the brokers, and `/metrics` with `/readyz` served.

use std::net::SocketAddr;

use crate::cli::{Layers, ServiceArgs};
use crate::error::{CliError, CliResult};
use crate::settings::{self, Settings};

/// Fails with exit 2 when librdkafka refuses one of the role's properties
/// (named without its value, which may be a secret), and with exit 1 (and
/// librdkafka's reason) when the brokers refuse the connection itself: a
/// certificate the configured CAs do not trust, or SASL credentials they
/// reject. A broker that is merely away is left to the role's retries.
pub(crate) async fn kafka_accepts(
    role: &str,
    brokers: &str,
    properties: &std::collections::BTreeMap<String, String>,
) -> CliResult {
    settings::check_kafka(role, properties)?;
    let mut config = kafka::client(brokers);
    kafka::client::apply(&mut config, properties);
    let refused = tokio::task::spawn_blocking(move || {
        kafka::probe::refuses(&config, std::time::Duration::from_secs(10))
    })
    .await
    .unwrap_or(None);
    match refused {
        None => Ok(()),
        Some(reason) => Err(CliError::run(format!(
            "the Kafka brokers {brokers} refused the connection: {reason}\n\
             hint: check the kafka security settings (security.protocol, ssl.ca.location, \
             ssl.certificate.location and ssl.key.location where the broker asks for a client \
             certificate, sasl.mechanism, sasl.username, sasl.password)"
        ))),
    }
}

pub(crate) fn load(layers: &Layers) -> Result<Settings, CliError> {
    Ok(Settings::load(
        layers.config.as_deref(),
        std::env::vars(),
        &layers.overrides(),
    )?)
}

/// Logs what a service is about to run as: its role, version, brokers and
/// database (scheme, host and name; never a password), and warns when no
/// database was configured and the default SQLite file is used.
pub(crate) fn announce(role: &str, brokers: &str, database_url: &str) {
    let database = settings::describe_database(database_url);
    tracing::info!(
        role,
        version = crate::build::VERSION,
        revision = crate::build::REVISION,
        brokers,
        database,
        "Starting."
    );
    if database_url == settings::DEFAULT_DATABASE_URL {
        tracing::warn!(
            role,
            database,
            "No database configured: using the default SQLite file tally.sqlite in the working \
             directory. Set TALLY_DATABASE_URL (or --database-url, or database_url in the \
             file) to the database this role shares with the others."
        );
    }
}

/// Serves `/metrics` and `/readyz` (answered by `readiness`) on the
/// `--metrics-addr` given, or on `default`, until `shutdown`.
pub(crate) async fn serve_metrics(
    args: &ServiceArgs,
    default: SocketAddr,
    readiness: fn() -> Result<String, String>,
    shutdown: tokio_util::sync::CancellationToken,
) -> CliResult {
    let addr = args.metrics_addr.unwrap_or(default);
    crate::http::serve(addr, readiness, shutdown)
        .await
        .map(|_| ())
        .map_err(|error| CliError::run(format!("cannot serve metrics on {addr}: {error}")))
}
