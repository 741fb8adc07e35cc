//! `tally backfill`: a job that recomputes a range of days from files, replacing them.

use super::jobs::follow;
use super::{checked, created, scope};
use crate::cli::BackfillArgs;
use crate::error::CliResult;
use backfill::{check_days_over, now_ms, plan, Format};

/// Creates a job; with `--wait`, follows it to the end.
pub async fn backfill(args: BackfillArgs) -> CliResult {
    let scope = scope(&args.source).and_then(|(scope, format)| {
        if !args.include_open_days {
            check_days_over(&scope, now_ms())?;
        }
        Ok((scope, format))
    });
    let job = match scope {
        Ok((scope, format)) => {
            plan(
                &args.source.source,
                format,
                scope,
                args.shards,
                None,
                args.job.after.clone(),
            )
            .await
        }
        Err(error) => Err(error),
    };
    let (job, store) = checked(job, &args.database).await?;
    let id = created(store.create_job(&job, now_ms()).await)?;
    println!("{id}");
    eprintln!(
        "Job {id}: {} {} file(s), days [{}, {}), {} task(s).",
        Format::stored(job.format),
        job.tasks[0].files.len(),
        job.scope.from,
        job.scope.to,
        job.tasks.len()
    );
    if !args.job.wait {
        return Ok(());
    }
    follow(&store, id).await
}
