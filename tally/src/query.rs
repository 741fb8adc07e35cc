//! `tally query`: a merchant's totals, one line per currency and day.

use std::process::ExitCode;

use store::Store;

use crate::cli::QueryArgs;
use crate::settings::Settings;

/// Prints the rows of `merchant_sales` for `args.merchant`.
pub async fn run(args: QueryArgs) -> ExitCode {
    let url = match args.database_url {
        Some(url) => url,
        None => match Settings::load(args.config.as_deref(), std::env::vars(), &[]) {
            Ok(settings) => settings.aggregator.database_url,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        },
    };
    if let Err(error) = schemas::config::database_url("--database-url", &url) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let store = match Store::connect(&url).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
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
    println!("{:<12} {:<8} {:<10} {:>20} {:>8} {:>20} {:>8} {:>20}", "merchant", "currency", "day", "sales", "count", "refunds", "count", "net");
    for (key, sums) in &totals {
        println!(
            "{:<12} {:<8} {:<10} {:>20} {:>8} {:>20} {:>8} {:>20}",
            key.merchant_id, key.currency, key.day.to_string(), sums.sales_amount.to_string(), sums.sales_count,
            sums.refund_amount.to_string(), sums.refund_count, sums.net_amount().to_string()
        );
    }
    ExitCode::SUCCESS
}
