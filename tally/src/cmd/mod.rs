//! One module per command; `dispatch` runs the one given. What several
//! share is here: opening the database, and the checks before a job is
//! created.
//!
//! - services: [`worker`], [`aggregator`], [`ingest`] (started through [`service`]);
//! - the embedded pipeline: [`demo`];
//! - reading: [`query`], [`verify_totals`], [`verify`];
//! - jobs: [`backfill`], [`import`], [`jobs`], [`schedule`];
//! - set-up: [`merchants`], [`migrate`], [`config`], and traffic: [`generate`].

mod aggregator;
mod backfill;
mod config;
mod days;
mod demo;
mod generate;
mod import;
mod ingest;
mod jobs;
mod merchants;
mod migrate;
mod query;
mod schedule;
mod service;
mod verify;
mod verify_totals;
mod worker;

use ::backfill::Format;
use schemas::Day;
use store::jobs::Scope;
use store::Store;

use crate::cli::{Command, DatabaseArgs, SourceArgs};
use crate::error::{CliError, CliResult};
use crate::settings::Settings;

pub(crate) async fn dispatch(command: Command) -> CliResult {
    match command {
        Command::Demo(args) => demo::run(args).await,
        Command::Query(args) => query::run(args).await,
        Command::Days(args) => days::run(args).await,
        Command::Generate(args) => generate::run(args).await,
        Command::VerifyTotals(args) => verify_totals::verify(args).await,
        Command::Backfill(args) => backfill::backfill(args).await,
        Command::Import(args) => import::import(args).await,
        Command::Jobs(args) => jobs::jobs(args).await,
        Command::Verify(args) => verify::verify(args).await,
        Command::Schedule(args) => schedule::schedule(args).await,
        Command::Merchants(args) => merchants::run(args).await,
        Command::Migrate(args) => migrate::migrate(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Ingest(args) => ingest::run(args).await,
        Command::Aggregator(args) => aggregator::run(args).await,
        Command::Config(args) => config::run(args).await,
        Command::Reference(args) => crate::reference::write(&args),
    }
}

/// Opens the database named by `--database-url`, or else by the
/// configuration's aggregator. Fails with a configuration error for a bad
/// URL or file, and a run-time one when the database is unreachable.
///
/// PostgreSQL is not migrated: a role that may only read (or write rows)
/// can run every command but `tally migrate`.
pub async fn open_store(database: &DatabaseArgs) -> Result<Store, CliError> {
    let url = database_url(database)?;
    Store::connect_existing(&url).await.map_err(CliError::run)
}

/// The database URL the flags, or else the configuration, give; checked.
pub(crate) fn database_url(database: &DatabaseArgs) -> Result<String, CliError> {
    let url = match &database.database_url {
        Some(url) => url.clone(),
        None => {
            Settings::load(database.config.as_deref(), std::env::vars(), &[])?
                .aggregator
                .database_url
        }
    };
    schemas::config::database_url("--database-url", &url)?;
    Ok(url)
}

/// The scope and format the flags ask for; errors name the flag.
pub(crate) fn scope(args: &SourceArgs) -> Result<(Scope, Option<Format>), String> {
    let day =
        |flag: &str, text: &str| Day::parse(text).map_err(|e| format!("`{flag}` = {text:?}: {e}"));
    let (from, to) = (day("--from", &args.from)?, day("--to", &args.to)?);
    if from >= to {
        return Err(format!(
            "`--to` = {:?}: must be after --from ({}); the range is [from, to)",
            args.to, args.from
        ));
    }
    let mut merchants = args.merchants.clone();
    merchants.sort();
    merchants.dedup();
    let format = args
        .format
        .as_deref()
        .map(|f| Format::parse("--format", f))
        .transpose()?;
    Ok((
        Scope {
            from,
            to,
            merchants,
        },
        format,
    ))
}

/// The checked arguments and the open database; a bad argument exits 2
/// before any connection is made.
pub(crate) async fn checked<T>(
    arguments: Result<T, String>,
    database: &crate::cli::DatabaseArgs,
) -> Result<(T, Store), CliError> {
    let arguments = arguments.map_err(CliError::config)?;
    Ok((arguments, open_store(database).await?))
}

/// A job the database created; a configuration error when it refused the
/// request (a bad `--after`), a run-time one when it failed.
pub(crate) fn created<T>(result: Result<T, store::StoreError>) -> Result<T, CliError> {
    result.map_err(|error| match error {
        store::StoreError::Refused(reason) => CliError::config(reason),
        error => CliError::run(format!("cannot create the job: {error}")),
    })
}
