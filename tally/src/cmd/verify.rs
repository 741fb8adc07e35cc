//! `tally verify`: files recomputed in this process and diffed with the table.

use super::{checked, scope};
use crate::cli::ReconcileArgs;
use crate::error::{CliError, CliResult};
use crate::render;
use backfill::{compute, plan};

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
    let json = args.json.then(|| {
        serde_json::json!({
            "files": files.len(),
            "rows_read": computed.rows_read,
            "rows_rejected": computed.rows_rejected,
            "rows_duplicate": computed.rows_duplicate,
        })
    });
    render::report_as(&computed.totals, &have, json)
}
