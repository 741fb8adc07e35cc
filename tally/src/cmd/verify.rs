//! `tally verify`: files recomputed in this process and diffed with the table.

use super::{checked, scope};
use crate::cli::ReconcileArgs;
use crate::error::{CliError, CliResult};
use crate::render;
use backfill::{compute, plan};
use schemas::{Day, Totals};
use store::reads::Basis;

/// Recomputes the scope from files in this process and diffs it with the table.
pub async fn verify(args: ReconcileArgs) -> CliResult {
    // The same listing and format rules as a backfill, as one shard.
    let planned = match scope(&args.source) {
        Ok((scope, format)) => {
            plan(
                &args.source.source,
                format,
                scope,
                Some(1),
                None,
                Vec::new(),
            )
            .await
        }
        Err(error) => Err(error),
    };
    let (job, store) = checked(planned, &args.database).await?;
    let (scope, files) = (job.scope, &job.tasks[0].files);
    let format = job.format.expect("plan names a format");
    let computed = match compute(files, format, &scope, None, &[0], 1).await {
        Ok(mut computed) => computed.remove(0),
        Err(error) => return Err(CliError::run(error)),
    };
    if !args.json {
        eprintln!(
            "Read {} rows from {} file(s): {} rejected, {} duplicate.",
            computed.rows_read,
            files.len(),
            computed.rows_rejected,
            computed.rows_duplicate
        );
    }
    let have = match store.totals(None).await {
        Ok(totals) => totals
            .into_iter()
            .filter(|(key, _)| scope.contains(&key.merchant_id, key.day))
            .collect(),
        Err(error) => {
            return Err(CliError::run(format!(
                "cannot read merchant_sales: {error}"
            )))
        }
    };
    let closed = closed_against_files(&store, &scope, &computed.totals).await?;
    let json = args.json.then(|| {
        serde_json::json!({
            "files": files.len(),
            "rows_read": computed.rows_read,
            "rows_rejected": computed.rows_rejected,
            "rows_duplicate": computed.rows_duplicate,
            "closed": closed.json(),
        })
    });
    if json.is_none() {
        closed.print();
    }
    render::report_as(&computed.totals, &have, json)
}

/// The closed days of the scope: their totals as they closed, against the
/// files' totals of the same keys.
struct ClosedComparison {
    closed_through: Option<i64>,
    files: Totals,
    closed: Totals,
}

impl ClosedComparison {
    fn json(&self) -> serde_json::Value {
        let mut report = render::report_json(&self.files, &self.closed);
        report["closed_through"] = self
            .closed_through
            .map(|ms| schemas::day::format_rfc3339_millis(ms * 1_000))
            .into();
        report
    }

    /// One `CLOSED` line per key whose closed totals differ from the files
    /// (an adjustment since, or files that changed); informational: the
    /// exit status follows the current totals.
    fn print(&self) {
        let differences = ingest::load::expected::differences(&self.files, &self.closed);
        for d in &differences {
            println!(
                "CLOSED {} {} {}: files {}; closed {}",
                d.key.merchant_id,
                d.key.currency,
                d.key.day,
                d.expected
                    .as_ref()
                    .map_or("no row".to_owned(), |s| s.net_amount().to_string() + " net"),
                d.actual
                    .as_ref()
                    .map_or("no row".to_owned(), |s| s.net_amount().to_string() + " net"),
            );
        }
        let keys = self.files.len().max(self.closed.len());
        if self.closed_through.is_none() {
            println!("Closed days: none yet.");
        } else if differences.is_empty() {
            println!("Closed days: all {keys} keys closed as the files say.");
        } else {
            println!(
                "Closed days: {} of {keys} keys closed otherwise than the files say (see their adjustments with tally days).",
                differences.len()
            );
        }
    }
}

async fn closed_against_files(
    store: &store::Store,
    scope: &store::jobs::Scope,
    files: &Totals,
) -> Result<ClosedComparison, CliError> {
    let read = |e: store::StoreError| CliError::run(format!("cannot read the closed days: {e}"));
    let closed_through = store.closed_through().await.map_err(read)?;
    let last = Day(scope.to.0 - 1);
    let closed: Totals = store
        .closes(None, Basis::Utc, [scope.from, last])
        .await
        .map_err(read)?
        .into_iter()
        .filter(|c| scope.contains(&c.key.merchant_id, c.key.day))
        .map(|c| (c.key, c.sums))
        .collect();
    let files = files
        .iter()
        .filter(|(key, _)| store::closes::is_closed("UTC", key.day, closed_through))
        .map(|(key, sums)| (key.clone(), *sums))
        .collect();
    Ok(ClosedComparison {
        closed_through,
        files,
        closed,
    })
}
