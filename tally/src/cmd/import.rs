//! `tally import`: a job that adds files' events to the totals, each file once.

use super::jobs::follow;
use super::{checked, created};
use crate::cli::ImportArgs;
use crate::error::CliResult;
use crate::render;
use backfill::{now_ms, plan_import, Format};
use store::jobs::Requeue;

/// Queues an import job of the files that need importing; with `--wait`,
/// follows it to the end. Files imported before are skipped and named.
pub async fn import(args: ImportArgs) -> CliResult {
    let format = args
        .format
        .as_deref()
        .map(|f| Format::parse("--format", f))
        .transpose();
    let job = match format {
        Ok(format) => plan_import(&args.source, format, args.job.after.clone()).await,
        Err(error) => Err(error),
    };
    let (job, store) = checked(job, &args.database).await?;
    let queued = created(
        store
            .queue_import(&job, Requeue::AfterFailure, now_ms())
            .await,
    )?;
    for file in queued.files.iter().filter(|f| !f.queued) {
        eprintln!(
            "  skipped {}: {}",
            file.location,
            file.reason.as_deref().unwrap_or("")
        );
    }
    let Some(id) = queued.job_id else {
        eprintln!("Nothing to import: every file was imported or queued before.");
        return Ok(());
    };
    println!("{id}");
    let files = queued.files.iter().filter(|f| f.queued).count();
    eprintln!(
        "Job {id}: import of {files} file(s) from {}{}.",
        job.source,
        render::after_text(&job.after)
    );
    if !args.job.wait {
        return Ok(());
    }
    follow(&store, id).await
}
