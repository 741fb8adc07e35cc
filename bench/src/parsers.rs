//! `parsers`: tally's hand-written parsers on the hot path against the
//! maintained libraries they are proven equal to (`schemas/tests/differential.rs`
//! and the fuzz targets), on the fields of generated events:
//!
//! - amounts: `Amount::parse_event_amount` against `rust_decimal`'s
//!   `Decimal::from_str_exact`;
//! - timestamps: `schemas::day::parse_rfc3339` against chrono's
//!   `DateTime::parse_from_rfc3339`;
//! - whole events: `schemas::event::decode` (scan, validate every rule)
//!   against `serde_json` deserialising the same fields into borrowed
//!   strings, without validating anything, and then also parsing the
//!   amount and the time with the two libraries above.
//!
//! Reported as the median ns per item over several runs, and the library's
//! time as a multiple of tally's.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{arg, messages};

/// The fields serde_json reads: borrowed where it can, as fast as it goes.
#[derive(Deserialize)]
#[allow(dead_code)] // read only to be parsed
struct Borrowed<'a> {
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    order_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    merchant_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    amount: &'a RawValue,
    #[serde(borrow)]
    currency: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    occurred_at: std::borrow::Cow<'a, str>,
}

/// Median ns per item of `work` over `runs` runs of `items` items.
fn median_ns(runs: u64, items: usize, mut work: impl FnMut() -> usize) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            black_box(work());
            started.elapsed().as_secs_f64() * 1e9 / items as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

pub fn run(args: &[String]) -> Result<()> {
    let events = arg(args, "--events", 1_000_000)?;
    let runs = arg(args, "--runs", 7)?;
    let input = messages(events);
    let fields: Vec<Borrowed<'_>> = input
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect();
    let amounts: Vec<&str> = fields
        .iter()
        .map(|f| f.amount.get().trim_matches('"'))
        .collect();
    let times: Vec<&str> = fields.iter().map(|f| f.occurred_at.as_ref()).collect();
    println!(
        "parsers: {} events ({} parse as JSON), {runs} runs, 1 thread; median ns per item",
        input.len(),
        fields.len()
    );
    println!(
        "  {:<40} {:>8} {:>9} {:>9}",
        "", "tally", "library", "library/tally"
    );
    let report = |what: &str, ours: f64, theirs: f64| {
        println!(
            "  {what:<40} {ours:>8.1} {theirs:>9.1} {:>9.2}x",
            theirs / ours
        );
    };
    let ours = median_ns(runs, amounts.len(), || {
        amounts
            .iter()
            .filter(|t| schemas::Amount::parse_event_amount(t).is_ok())
            .count()
    });
    let theirs = median_ns(runs, amounts.len(), || {
        amounts
            .iter()
            .filter(|t| rust_decimal::Decimal::from_str_exact(t).is_ok())
            .count()
    });
    report("amount (rust_decimal)", ours, theirs);
    let ours = median_ns(runs, times.len(), || {
        times
            .iter()
            .filter(|t| schemas::day::parse_rfc3339(t).is_ok())
            .count()
    });
    let theirs = median_ns(runs, times.len(), || {
        times
            .iter()
            .filter(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
            .count()
    });
    report("RFC 3339 time (chrono)", ours, theirs);
    let ours = median_ns(runs, input.len(), || {
        input
            .iter()
            .filter(|m| schemas::event::decode(&m.payload, m.key.as_deref()).is_ok())
            .count()
    });
    let theirs = median_ns(runs, input.len(), || {
        input
            .iter()
            .filter(|m| serde_json::from_slice::<Borrowed<'_>>(&m.payload).is_ok())
            .count()
    });
    report("event (serde_json, fields only)", ours, theirs);
    let theirs = median_ns(runs, input.len(), || {
        input
            .iter()
            .filter_map(|m| serde_json::from_slice::<Borrowed<'_>>(&m.payload).ok())
            .filter(|e| {
                rust_decimal::Decimal::from_str_exact(e.amount.get().trim_matches('"')).is_ok()
                    && chrono::DateTime::parse_from_rfc3339(&e.occurred_at).is_ok()
            })
            .count()
    });
    report("event (serde_json+rust_decimal+chrono)", ours, theirs);
    Ok(())
}
