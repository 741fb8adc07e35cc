//! `tally jobs list | show | cancel`, and following a job to its end.

use super::open_store;
use crate::cli::{JobsArgs, JobsCommand};
use crate::error::{CliError, CliResult};
use crate::progress::Progress;
use crate::render;
use backfill::{now_ms, Format};
use std::time::{Duration, Instant};
use store::jobs::{Kind, State};
use store::Store;

/// `tally jobs list | show | cancel`.
pub async fn jobs(args: JobsArgs) -> CliResult {
    let store = open_store(&args.database).await?;
    match args.command {
        JobsCommand::List { limit, json } => match store.jobs(limit).await {
            Ok(jobs) if json => render::print_json(&jobs),
            Ok(jobs) => {
                println!(
                    "{:>6}  {:<10} {:<10} {:<23} {:>7} {:>8} {:>12} {:>9} {:>9}",
                    "JOB",
                    "STATE",
                    "FORMAT",
                    "DAYS",
                    "TASKS",
                    "ATTEMPTS",
                    "ROWS",
                    "REJECTED",
                    "SECONDS"
                );
                for job in &jobs {
                    let (done, attempts) = render::done_and_attempts(job);
                    let (read, rejected, _) = job.rows();
                    println!(
                        "{:>6}  {:<10} {:<10} {:<23} {:>7} {:>8} {:>12} {:>9} {:>9}",
                        job.id,
                        job.state.as_str(),
                        Format::stored(job.format),
                        if job.kind == Kind::Import {
                            "import (adds)".to_owned()
                        } else {
                            format!("{}..{}", job.scope.from, job.scope.to)
                        },
                        format!("{done}/{}", job.tasks.len()),
                        attempts,
                        read,
                        rejected,
                        render::seconds(job.started_at, job.finished_at),
                    );
                }
                Ok(())
            }
            Err(error) => fail(error),
        },
        JobsCommand::Show { id, json } => match store.job(id).await {
            Ok(Some(job)) if json => render::print_json(&job),
            Ok(Some(job)) => {
                render::print_job(&job);
                Ok(())
            }
            Ok(None) => Err(CliError::run(format!("no job {id}"))),
            Err(error) => fail(error),
        },
        JobsCommand::Cancel { id } => match store.cancel_job(id, now_ms()).await {
            Ok(Some((_, true))) => {
                println!("Job {id} cancelled; merchant_sales is unchanged.");
                Ok(())
            }
            Ok(Some((state, false))) => Err(CliError::run(format!(
                "job {id} already ended ({state}); nothing to cancel"
            ))),
            Ok(None) => Err(CliError::run(format!("no job {id}"))),
            Err(error) => fail(error),
        },
    }
}

/// Shows progress until the job ends; exit 0 when it succeeded.
pub(crate) async fn follow(store: &Store, id: i64) -> CliResult {
    let started = Instant::now();
    let mut hinted = false;
    let mut progress = Progress::status("job");
    loop {
        let job = match store.job(id).await {
            Ok(Some(job)) => job,
            Ok(None) => return Err(CliError::run(format!("job {id} disappeared"))),
            Err(error) => {
                progress.note(&format!("warning: cannot read job {id}: {error}; retrying"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (done, attempts) = render::done_and_attempts(&job);
        let (read, rejected, duplicate) = job.rows();
        if job.kind == Kind::Import {
            progress.say(format!("{}, {}", job.state, render::import_progress(&job)));
        } else {
            progress.say(format!(
                "{}: {done}/{} tasks done, {attempts} attempts, {read} rows read, {rejected} rejected, {duplicate} duplicate",
                job.state,
                job.tasks.len(),
            ));
        }
        if job.state.is_final() {
            progress.finish();
            render::print_job(&job);
            return if job.state == State::Succeeded {
                Ok(())
            } else {
                Err(CliError::Reported)
            };
        }
        if job.state == State::Pending
            && !hinted
            && started.elapsed() > Duration::from_secs(15)
            && job.after.iter().all(|d| d.state == State::Succeeded)
        {
            progress.note("  No runner has taken the job yet: jobs run inside `tally aggregator`; is one running on this database?");
            hinted = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) fn fail(error: store::StoreError) -> CliResult {
    Err(CliError::run(error))
}
