//! `tally query`: a merchant's totals, one line per currency and day.

use store::Store;

use crate::cli::{DatabaseArgs, QueryArgs};
use crate::error::{CliError, CliResult};
use crate::settings::Settings;

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

/// `tally migrate`: applies the migrations this build knows.
pub async fn migrate(database: DatabaseArgs) -> CliResult {
    let url = database_url(&database)?;
    Store::connect(&url).await.map_err(CliError::run)?;
    eprintln!("The database's tally schema is up to date.");
    Ok(())
}

/// The database URL the flags, or else the configuration, give; checked.
fn database_url(database: &DatabaseArgs) -> Result<String, CliError> {
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

/// Prints the rows of `merchant_sales` for `args.merchant`.
pub async fn run(args: QueryArgs) -> CliResult {
    let store = open_store(&args.database).await?;
    let totals = store
        .totals(Some(&args.merchant))
        .await
        .map_err(CliError::run)?;
    if totals.is_empty() {
        eprintln!("No totals for merchant {:?}.", args.merchant);
        return Ok(());
    }
    println!(
        "{:<12} {:<8} {:<10} {:>20} {:>8} {:>20} {:>8} {:>20}",
        "merchant", "currency", "day", "sales", "count", "refunds", "count", "net"
    );
    for (key, sums) in &totals {
        println!(
            "{:<12} {:<8} {:<10} {:>20} {:>8} {:>20} {:>8} {:>20}",
            key.merchant_id,
            key.currency,
            key.day.to_string(),
            sums.sales_amount.to_string(),
            sums.sales_count,
            sums.refund_amount.to_string(),
            sums.refund_count,
            sums.net_amount().to_string()
        );
    }
    Ok(())
}
