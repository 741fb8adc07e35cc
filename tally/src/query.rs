//! `tally query`: a merchant's totals, one line per currency and day.

use std::process::ExitCode;

use store::Store;

use crate::cli::{DatabaseArgs, QueryArgs};
use crate::settings::Settings;

/// Opens the database named by `--database-url`, or else by the
/// configuration's aggregator. Prints the error and returns the exit code
/// (2 for a bad URL or file, 1 when unreachable) on failure.
pub async fn open_store(database: &DatabaseArgs) -> Result<Store, ExitCode> {
    let url = match &database.database_url {
        Some(url) => url.clone(),
        None => match Settings::load(database.config.as_deref(), std::env::vars(), &[]) {
            Ok(settings) => settings.aggregator.database_url,
            Err(error) => {
                eprintln!("error: {error}");
                return Err(ExitCode::from(2));
            }
        },
    };
    if let Err(error) = schemas::config::database_url("--database-url", &url) {
        eprintln!("error: {error}");
        return Err(ExitCode::from(2));
    }
    Store::connect(&url).await.map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::FAILURE
    })
}

/// Prints the rows of `merchant_sales` for `args.merchant`.
pub async fn run(args: QueryArgs) -> ExitCode {
    let store = match open_store(&args.database).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let totals = match store.totals(Some(&args.merchant)).await {
        Ok(totals) => totals,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if totals.is_empty() {
        eprintln!("No totals for merchant {:?}.", args.merchant);
        return ExitCode::SUCCESS;
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
    ExitCode::SUCCESS
}
