//! `tally days`: a merchant's days, each open or closed, with its closed
//! totals, the adjustments since and its current totals: what
//! `GET /v1/merchants/{id}/days` answers, read from the database.

use ingest::totals::MAX_RANGE_DAYS;
use schemas::config::ConfigError;
use schemas::Day;
use store::closes::{DayState, DaysAnswer, Source};
use store::reads::Basis;

use super::open_store;
use crate::cli::DaysArgs;
use crate::error::{CliError, CliResult};

/// Prints `args.merchant`'s days over `[--from, --to]`.
pub async fn run(args: DaysArgs) -> CliResult {
    let day = |flag: &str, text: &str| {
        Day::parse(text).map_err(|e| ConfigError::new(flag, text, e.to_string()))
    };
    let (from, to) = (day("--from", &args.from)?, day("--to", &args.to)?);
    if to < from {
        return Err(
            ConfigError::new("--to", &args.to, format!("is before --from ({from})")).into(),
        );
    }
    if to.0 - from.0 + 1 > MAX_RANGE_DAYS {
        return Err(ConfigError::new(
            "--to",
            &args.to,
            format!("covers more than {MAX_RANGE_DAYS} days from --from ({from})"),
        )
        .into());
    }
    let basis = Basis::parse(&args.basis).unwrap_or(Basis::Utc);
    let store = open_store(&args.database).await?;
    let read = store
        .merchant_days_closed(&args.merchant, [from, to], basis)
        .await
        .map_err(CliError::run)?;
    let answer = DaysAnswer::new(&args.merchant, basis, [from, to], read);
    if args.json {
        return crate::render::print_json(&answer);
    }
    print_text(&answer);
    Ok(())
}

fn print_text(answer: &DaysAnswer) {
    println!(
        "Merchant {:?}, {} days {} to {}; closed through {}.",
        answer.merchant_id,
        match answer.basis {
            Basis::Utc => "UTC",
            Basis::Local => "local",
        },
        answer.from,
        answer.to,
        answer.closed_through.as_deref().unwrap_or("nothing yet")
    );
    if answer.days.is_empty() {
        println!("No days with totals, closes or adjustments.");
        return;
    }
    println!(
        "{:<10} {:<8} {:<20} {:<6} {:>20} {:>20} {:>20} {:>12}",
        "day",
        "currency",
        "zone",
        "state",
        "closed net",
        "adjusted net",
        "current net",
        "adjustments"
    );
    for d in &answer.days {
        println!(
            "{:<10} {:<8} {:<20} {:<6} {:>20} {:>20} {:>20} {:>12}",
            d.day.to_string(),
            d.currency,
            d.time_zone,
            match d.state {
                DayState::Open => "open",
                DayState::Closed => "closed",
            },
            d.closed.net_amount().to_string(),
            d.adjusted.net_amount().to_string(),
            d.current.net_amount().to_string(),
            d.adjustments.len()
        );
        for a in &d.adjustments {
            let source = match &a.source {
                Source::Stream {
                    topic,
                    partition,
                    first_offset,
                    last_offset,
                } => format!("{topic}/{partition} offsets {first_offset}..={last_offset}"),
                Source::Job { job_id } => format!("job {job_id}"),
            };
            println!(
                "    adjustment {} net {} (sales {} × {}, refunds {} × {}) from {source}",
                schemas::day::format_rfc3339_millis(a.applied_at * 1_000),
                a.sums.net_amount(),
                a.sums.sales_count,
                a.sums.sales_amount,
                a.sums.refund_count,
                a.sums.refund_amount,
            );
        }
    }
}
