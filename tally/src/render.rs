//! How the commands print: jobs as lines and tables, progress, JSON, and
//! totals that differ.

use crate::error::{CliError, CliResult};
use backfill::{now_ms, Format};
use ingest::load::expected;
use store::jobs::{Job, Kind};

pub(crate) fn after_text(after: &[i64]) -> String {
    if after.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = after.iter().map(i64::to_string).collect();
    format!(", after job {}", ids.join(", "))
}

/// A job's tasks done and attempts made in all.
pub(crate) fn done_and_attempts(job: &Job) -> (usize, i32) {
    let done = job
        .tasks
        .iter()
        .filter(|t| t.state == store::jobs::State::Succeeded)
        .count();
    (done, job.tasks.iter().map(|t| t.attempts).sum())
}

/// The progress line of an import: files and rows done and left. Rows left
/// are estimated from the bytes left at the rate of the files done.
pub(crate) fn import_progress(job: &Job) -> String {
    let finished: Vec<_> = job.tasks.iter().filter(|t| t.state.is_final()).collect();
    let (read, rejected, duplicate) = job.rows();
    let bytes_done: i64 = finished.iter().map(|t| t.input.size).sum();
    let bytes_left: i64 = job
        .tasks
        .iter()
        .filter(|t| !t.state.is_final())
        .map(|t| t.input.size)
        .sum();
    let left = if bytes_done > 0 {
        format!(
            "~{}",
            (read as f64 / bytes_done as f64 * bytes_left as f64).round() as i64
        )
    } else {
        "?".to_owned()
    };
    format!(
        "files {}/{} done, {} left; rows {read} done ({rejected} invalid, {duplicate} duplicate), {left} left",
        finished.len(),
        job.tasks.len(),
        job.tasks.len() - finished.len(),
    )
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> CliResult {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("jobs serialise")
    );
    Ok(())
}

pub(crate) fn seconds(started: Option<i64>, finished: Option<i64>) -> String {
    match (started, finished) {
        (Some(s), Some(f)) => format!("{:.1}", (f - s) as f64 / 1000.0),
        (Some(s), None) => format!("{:.1}…", (now_ms() - s) as f64 / 1000.0),
        _ => "-".to_owned(),
    }
}

pub(crate) fn print_job(job: &Job) {
    let (read, rejected, duplicate) = job.rows();
    println!("Job {}: {} {}", job.id, job.kind.as_str(), job.state);
    println!(
        "  source    {} ({})",
        job.source,
        Format::stored(job.format)
    );
    if job.kind == Kind::Backfill {
        println!("  days      [{}, {})", job.scope.from, job.scope.to);
    }
    if !job.after.is_empty() {
        let after: Vec<String> = job
            .after
            .iter()
            .map(|d| format!("job {} ({})", d.job_id, d.state))
            .collect();
        println!("  after     {}", after.join(", "));
    }
    if !job.before.is_empty() {
        let before: Vec<String> = job.before.iter().map(|id| format!("job {id}")).collect();
        println!("  before    {} (wait on this one)", before.join(", "));
    }
    if !job.scope.merchants.is_empty() {
        println!("  merchants {}", job.scope.merchants.join(", "));
    }
    if let Some(schedule) = &job.schedule {
        println!("  schedule  {schedule}");
    }
    println!("  rows      {read} read, {rejected} rejected, {duplicate} duplicate");
    if let Some(keys) = job.keys_written {
        println!("  written   {keys} rows of merchant_sales");
    }
    println!("  seconds   {}", seconds(job.started_at, job.finished_at));
    if let Some(error) = &job.last_error {
        println!("  error     {error}");
    }
    if job.kind == Kind::Import {
        return print_import_files(job);
    }
    println!(
        "  {:>4}  {:<10} {:>5} {:>8} {:>12} {:>9} {:>9} {:>8}  LAST ERROR",
        "TASK", "STATE", "SHARD", "ATTEMPTS", "ROWS", "REJECTED", "DUPLICATE", "SECONDS"
    );
    for t in &job.tasks {
        println!(
            "  {:>4}  {:<10} {:>5} {:>8} {:>12} {:>9} {:>9} {:>8}  {}",
            t.task_no,
            t.state.as_str(),
            format!("{}/{}", t.input.shard, t.input.shards),
            t.attempts,
            t.rows_read,
            t.rows_rejected,
            t.rows_duplicate,
            seconds(t.started_at, t.finished_at),
            t.last_error.as_deref().unwrap_or("")
        );
    }
    let mut by_field = std::collections::BTreeMap::<&str, i64>::new();
    for t in &job.tasks {
        for (field, n) in &t.rejections.by_field {
            *by_field.entry(field).or_default() += n;
        }
    }
    if !by_field.is_empty() {
        let list: Vec<String> = by_field.iter().map(|(f, n)| format!("{f} {n}")).collect();
        println!("  rejected by field: {}", list.join(", "));
        for example in job
            .tasks
            .iter()
            .flat_map(|t| &t.rejections.examples)
            .take(5)
        {
            println!(
                "    {}:{}: field `{}` = {}: {}",
                example.file,
                example.row,
                example.field,
                quoted(&example.value),
                example.reason
            );
        }
    }
}

/// An import's files: each one's state, outcome and rows, then every
/// invalid row listed (up to the per-file limit) with its row number and reason.
pub(crate) fn print_import_files(job: &Job) {
    println!(
        "  {:>4}  {:<10} {:<32} {:>8} {:>10} {:>8} {:>9} {:>8}  FILE",
        "TASK", "STATE", "OUTCOME", "ATTEMPTS", "ROWS", "INVALID", "DUPLICATE", "SECONDS"
    );
    for t in &job.tasks {
        let outcome = t.outcome.as_deref().unwrap_or("-");
        println!(
            "  {:>4}  {:<10} {:<32} {:>8} {:>10} {:>8} {:>9} {:>8}  {}",
            t.task_no,
            t.state.as_str(),
            outcome,
            t.attempts,
            t.rows_read,
            t.rows_rejected,
            t.rows_duplicate,
            seconds(t.started_at, t.finished_at),
            t.input.files[0]
        );
        if let Some(error) = &t.last_error {
            println!("        error: {error}");
        }
    }
    for t in job.tasks.iter().filter(|t| t.rows_rejected > 0) {
        let listed = &t.rejections.examples;
        println!(
            "  invalid rows of {} ({} of {} listed):",
            t.input.files[0],
            listed.len(),
            t.rows_rejected
        );
        for example in listed {
            println!(
                "    row {}: field `{}` = {}: {}",
                example.row,
                example.field,
                quoted(&example.value),
                example.reason
            );
        }
    }
}

/// One row of totals as JSON, amounts as exact decimal strings.
pub(crate) fn row_json(key: &schemas::TotalsKey, sums: &schemas::Sums) -> serde_json::Value {
    let mut row = sums_json(sums);
    row["merchant_id"] = key.merchant_id.clone().into();
    row["currency"] = key.currency.clone().into();
    row["day"] = key.day.to_string().into();
    row
}

fn sums_json(sums: &schemas::Sums) -> serde_json::Value {
    serde_json::json!({
        "sales_amount": sums.sales_amount.to_string(),
        "sales_count": sums.sales_count,
        "refund_amount": sums.refund_amount.to_string(),
        "refund_count": sums.refund_count,
        "net_amount": sums.net_amount().to_string(),
    })
}

/// The comparison of `want` with `have` (the database) as JSON: whether
/// every key matches, how many keys, and each difference with both sides.
pub(crate) fn report_json(want: &schemas::Totals, have: &schemas::Totals) -> serde_json::Value {
    let differences: Vec<serde_json::Value> = expected::differences(want, have)
        .iter()
        .map(|d| {
            serde_json::json!({
                "merchant_id": d.key.merchant_id,
                "currency": d.key.currency,
                "day": d.key.day.to_string(),
                "expected": d.expected.as_ref().map(sums_json),
                "database": d.actual.as_ref().map(sums_json),
            })
        })
        .collect();
    serde_json::json!({
        "matches": differences.is_empty(),
        "keys": want.len().max(have.len()),
        "differences": differences,
    })
}

/// Prints the comparison of `want` with `have`, as text or as JSON with
/// `extra`'s fields beside it; fails (exit 1, already reported) when any
/// key differs.
pub fn report_as(
    want: &schemas::Totals,
    have: &schemas::Totals,
    json: Option<serde_json::Value>,
) -> CliResult {
    let Some(mut outcome) = json else {
        return report(want, have);
    };
    let comparison = report_json(want, have);
    let matches = comparison["matches"] == true;
    if let (Some(outcome), Some(comparison)) = (outcome.as_object_mut(), comparison.as_object()) {
        outcome.extend(comparison.clone());
    }
    print_json(&outcome)?;
    if matches {
        Ok(())
    } else {
        Err(CliError::Reported)
    }
}

/// Prints one `DIFF` line per key where `have` (the database) differs from
/// `want`, with both values; fails (exit 1, already reported) when any differs.
pub fn report(want: &schemas::Totals, have: &schemas::Totals) -> CliResult {
    let differences = expected::differences(want, have);
    let show = |sums: &Option<schemas::Sums>| match sums {
        Some(s) => format!(
            "sales {} ({}), refunds {} ({})",
            s.sales_amount, s.sales_count, s.refund_amount, s.refund_count
        ),
        None => "no row".to_owned(),
    };
    for d in &differences {
        println!(
            "DIFF {} {} {}: expected {}; database {}",
            d.key.merchant_id,
            d.key.currency,
            d.key.day,
            show(&d.expected),
            show(&d.actual)
        );
    }
    if differences.is_empty() {
        println!("OK: all {} keys match.", want.len());
        Ok(())
    } else {
        println!(
            "{} of {} keys differ.",
            differences.len(),
            want.len().max(have.len())
        );
        Err(CliError::Reported)
    }
}

/// A rejected value as JSON writes a string: quoted, with its escapes.
fn quoted(value: &str) -> String {
    serde_json::to_string(value).expect("strings serialise")
}
