//! The `tally` binary: parses flags, loads configuration, sets up logging,
//! calls the role's `run`, and maps the result to an exit code
//! (0 success, 1 runtime failure, 2 invalid configuration).

mod backfill;
mod cli;
mod demo;
mod generate;
mod http;
mod imports;
mod query;
mod settings;
mod signals;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, ServiceArgs};
use settings::{Settings, SettingsError};
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
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> ExitCode {
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
        Command::Worker(args) => {
            let settings = match load(&args) {
                Ok(settings) => settings,
                Err(code) => return code,
            };
            if let Err(error) = settings.worker.validate() {
                return config_error(error.into());
            }
            if let Err(code) =
                kafka_accepts("worker", &settings.worker.brokers, &settings.worker.kafka).await
            {
                return code;
            }
            let shutdown = signals::shutdown_on_signals();
            let addr = args
                .metrics_addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9101)));
            if let Err(error) =
                http::serve(addr, shard_worker::health::readiness, shutdown.clone()).await
            {
                eprintln!("error: cannot serve metrics on {addr}: {error}");
                return ExitCode::FAILURE;
            }
            outcome(shard_worker::run(settings.worker, shutdown).await)
        }
        Command::Ingest(args) => {
            let settings = match load(&args) {
                Ok(settings) => settings,
                Err(code) => return code,
            };
            if let Err(error) = settings.ingest.validate() {
                return config_error(error.into());
            }
            if let Err(code) =
                kafka_accepts("ingest", &settings.ingest.brokers, &settings.ingest.kafka).await
            {
                return code;
            }
            ingest_service(settings.ingest).await
        }
        Command::Aggregator(args) => {
            let settings = match load(&args) {
                Ok(settings) => settings,
                Err(code) => return code,
            };
            if let Err(error) = settings.aggregator.validate() {
                return config_error(error.into());
            }
            if let Err(code) = kafka_accepts(
                "aggregator",
                &settings.aggregator.brokers,
                &settings.aggregator.kafka,
            )
            .await
            {
                return code;
            }
            let shutdown = signals::shutdown_on_signals();
            let addr = args
                .metrics_addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9102)));
            if let Err(error) =
                http::serve(addr, aggregator::health::readiness, shutdown.clone()).await
            {
                eprintln!("error: cannot serve metrics on {addr}: {error}");
                return ExitCode::FAILURE;
            }
            outcome(aggregator::run(settings.aggregator, shutdown).await)
        }
    }
}

/// Runs `tally ingest` until SIGTERM: exit 2 for a configuration it cannot
/// use (an address, a certificate), 1 when it fails at run time.
async fn ingest_service(config: ingest::IngestConfig) -> ExitCode {
    let imports = (!config.database_url.is_empty()).then(|| {
        std::sync::Arc::new(imports::DatabaseQueue::new(config.database_url.clone()))
            as std::sync::Arc<dyn ingest::imports::ImportQueue>
    });
    let started = match ingest::bind(&config).await {
        Ok(listener) => {
            ingest::run(config, listener, imports, signals::shutdown_on_signals()).await
        }
        Err(error) => Err(error),
    };
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(if error.is_config() { 2 } else { 1 })
        }
    }
}

/// Fails with exit 2 when librdkafka refuses one of the role's properties
/// (named without its value, which may be a secret), and with exit 1 (and
/// librdkafka's reason) when the brokers refuse the connection itself: a certificate the configured CAs do not trust, or SASL
/// credentials they reject. A broker that is merely away is left to the
/// role's retries.
async fn kafka_accepts(
    role: &str,
    brokers: &str,
    kafka: &std::collections::BTreeMap<String, String>,
) -> Result<(), ExitCode> {
    if let Some((key, reason)) = retry::kafka_property_refused(kafka) {
        eprintln!("error: invalid configuration: `{role}.kafka` property `{key}`: {reason}");
        return Err(ExitCode::from(2));
    }
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in kafka {
        config.set(key, value);
    }
    let refused = tokio::task::spawn_blocking(move || {
        retry::kafka_refuses(&config, std::time::Duration::from_secs(10))
    })
    .await
    .unwrap_or(None);
    match refused {
        None => Ok(()),
        Some(reason) => {
            eprintln!("error: the Kafka brokers {brokers} refused the connection: {reason}");
            eprintln!("hint: check the kafka security settings (security.protocol, ssl.ca.location, sasl.mechanism, sasl.username, sasl.password)");
            Err(ExitCode::FAILURE)
        }
    }
}

fn load(args: &ServiceArgs) -> Result<Settings, ExitCode> {
    Settings::load(args.config.as_deref(), std::env::vars(), &args.overrides())
        .map_err(config_error)
}

fn config_error(error: SettingsError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(2)
}

fn outcome<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
