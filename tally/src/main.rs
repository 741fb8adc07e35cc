//! The `tally` binary: parses flags, loads configuration, sets up logging,
//! calls the role's `run`, and maps the result to an exit code
//! (0 success, 1 runtime failure, 2 invalid configuration).

mod backfill;
mod cli;
mod demo;
mod error;
mod generate;
mod http;
mod imports;
mod merchants;
mod query;
mod settings;
mod signals;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, ServiceArgs};
use error::{CliError, CliResult};
use settings::Settings;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_level.into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

async fn dispatch(command: Command) -> CliResult {
    match command {
        Command::Demo(args) => demo::run(args).await,
        Command::Query(args) => query::run(args).await,
        Command::Generate(args) => generate::run(args).await,
        Command::VerifyTotals(args) => generate::verify(args).await,
        Command::Backfill(args) => backfill::backfill(args).await,
        Command::Import(args) => backfill::import(args).await,
        Command::Jobs(args) => backfill::jobs(args).await,
        Command::Verify(args) => backfill::verify(args).await,
        Command::Schedule(args) => backfill::schedule(args).await,
        Command::Merchants(args) => merchants::run(args).await,
        Command::Migrate(args) => query::migrate(args).await,
        Command::Worker(args) => {
            let settings = load(&args)?;
            settings.worker.validate()?;
            kafka_accepts("worker", &settings.worker.brokers, &settings.worker.kafka).await?;
            let shutdown = signals::shutdown_on_signals();
            let addr = args
                .metrics_addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9101)));
            http::serve(addr, shard_worker::health::readiness, shutdown.clone())
                .await
                .map_err(|error| {
                    CliError::run(format!("cannot serve metrics on {addr}: {error}"))
                })?;
            shard_worker::run(settings.worker, shutdown)
                .await
                .map_err(CliError::run)
        }
        Command::Ingest(args) => {
            let settings = load(&args)?;
            settings.ingest.validate()?;
            kafka_accepts("ingest", &settings.ingest.brokers, &settings.ingest.kafka).await?;
            ingest_service(settings.ingest).await
        }
        Command::Aggregator(args) => {
            let settings = load(&args)?;
            settings.aggregator.validate()?;
            let aggregator = &settings.aggregator;
            kafka_accepts("aggregator", &aggregator.brokers, &aggregator.kafka).await?;
            let shutdown = signals::shutdown_on_signals();
            let addr = args
                .metrics_addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9102)));
            http::serve(addr, aggregator::health::readiness, shutdown.clone())
                .await
                .map_err(|error| {
                    CliError::run(format!("cannot serve metrics on {addr}: {error}"))
                })?;
            aggregator::run(settings.aggregator, shutdown)
                .await
                .map_err(CliError::run)
        }
    }
}

/// Runs `tally ingest` until SIGTERM: exit 2 for a configuration it cannot
/// use (an address, a certificate), 1 when it fails at run time.
async fn ingest_service(config: ingest::IngestConfig) -> CliResult {
    let imports = (!config.database_url.is_empty()).then(|| {
        std::sync::Arc::new(imports::DatabaseQueue)
            as std::sync::Arc<dyn ingest::imports::ImportQueue>
    });
    let listener = ingest::bind(&config).await;
    let result = match listener {
        Ok(listener) => {
            ingest::run(config, listener, imports, signals::shutdown_on_signals()).await
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

/// Fails with exit 2 when librdkafka refuses one of the role's properties
/// (named without its value, which may be a secret), and with exit 1 (and
/// librdkafka's reason) when the brokers refuse the connection itself: a
/// certificate the configured CAs do not trust, or SASL credentials they
/// reject. A broker that is merely away is left to the role's retries.
async fn kafka_accepts(
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

fn load(args: &ServiceArgs) -> Result<Settings, CliError> {
    Ok(Settings::load(
        args.config.as_deref(),
        std::env::vars(),
        &args.overrides(),
    )?)
}
