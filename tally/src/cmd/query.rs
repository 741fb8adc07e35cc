//! `tally query`: a merchant's totals, one line per currency and day.

use super::open_store;
use crate::cli::QueryArgs;
use crate::error::{CliError, CliResult};

/// Prints the rows of `merchant_sales` for `args.merchant`.
pub async fn run(args: QueryArgs) -> CliResult {
    let store = open_store(&args.database).await?;
    let totals = store
        .totals(Some(&args.merchant))
        .await
        .map_err(CliError::run)?;
    if args.json {
        let rows: Vec<serde_json::Value> = totals
            .iter()
            .map(|(key, sums)| crate::render::row_json(key, sums))
            .collect();
        return crate::render::print_json(&rows);
    }
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
