//! Runs backfill and import tasks from the database: claim, compute,
//! record, retry with exponential backoff and jitter, swap finished
//! backfills into `merchant_sales`, and cancel jobs whose dependencies
//! failed. Any number of runners may share a database; a task is leased to
//! one at a time, and a runner that dies loses its lease.
//!
//! An import task reads one file: it checks the file is still the version
//! it was queued as, reads and sums it, checks again that nothing changed
//! while it read, and commits the totals with the file's record
//! ([`store::Store::finish_import`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use schemas::day::now_ms;
use schemas::zone::{Zone, Zones};
use store::jobs::{rules, FileVersion, ImportOutcome, Job, Kind, Scope, Task, TaskResult};
use store::Store;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::compute::{compute, compute_with, IMPORT_EXAMPLES};
use crate::error::TaskError;
use crate::metrics::{BACKFILL_ATTEMPTS, BACKFILL_JOBS, BACKFILL_ROWS, IMPORT_FILES, IMPORT_ROWS};
use crate::source::{content_digest, stat, Format};
use retry::Classify;

/// How a runner works.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This runner's name in `tally_tasks.owner`.
    pub owner: String,
    /// Tasks run at once.
    pub parallelism: usize,
    /// Attempts per task before it fails its job (1 + retries).
    pub max_attempts: i32,
    /// Wait before the first retry; each further retry doubles it, plus up to 50% jitter.
    pub retry_base_ms: u64,
    /// A task's lease; renewed every second (or third of it) while the task runs.
    pub lease_ms: u64,
    /// How often to look for work.
    pub poll_ms: u64,
    /// Keep `merchant_sales_local` too, with this zone for merchants
    /// without one; `None` keeps no local days.
    pub local_days: Option<Zone>,
}

/// The merchants' zones a task's local days are taken in, read when it runs.
async fn zones(store: &Store, config: &RunnerConfig) -> Result<Option<Arc<Zones>>, TaskError> {
    match config.local_days {
        Some(default) => match store.zone_map(default).await {
            Ok(zones) => Ok(Some(Arc::new(zones))),
            Err(source) => Err(TaskError::Store {
                op: "cannot read the merchants' time zones",
                source,
            }),
        },
        None => Ok(None),
    }
}

/// Runs tasks until `shutdown`; then abandons running tasks (their leases
/// lapse and another runner retries them).
///
/// Tasks claimed together from the same job run as one group: they read the
/// same files, so the group decodes them once for all its shards.
pub async fn run(store: Arc<Store>, config: RunnerConfig, shutdown: CancellationToken) {
    let mut running = JoinSet::new();
    // Tasks each running group holds, by its id in `running`.
    let mut sizes = HashMap::new();
    let mut completions = Completions::default();
    loop {
        completions.run(&store, &config).await;
        match store.cancel_orphans(now_ms()).await {
            Ok(cancelled) => {
                for (id, reason) in cancelled {
                    tracing::warn!(job = id, "Job {reason}; merchant_sales is unchanged by it.");
                    BACKFILL_JOBS.with_label_values(&["cancelled"]).inc();
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot cancel jobs whose dependencies failed; will retry.")
            }
        }
        let mut claimed: Vec<Task> = Vec::new();
        while sizes.values().sum::<usize>() + claimed.len() < config.parallelism {
            let now = now_ms();
            match store
                .claim_task(&config.owner, now, now + config.lease_ms as i64)
                .await
            {
                Ok(Some(task)) => {
                    tracing::info!(
                        job = task.job_id,
                        task = task.task_no,
                        attempt = task.attempts,
                        "Backfill task started."
                    );
                    claimed.push(task);
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "Cannot claim a backfill task; will retry.");
                    break;
                }
            }
        }
        crate::metrics::POLLS.with_label_values(&["runner"]).inc();
        // Claims come in job order, so a job's tasks claimed now sit together.
        for group in claimed.chunk_by(|a, b| a.job_id == b.job_id && a.input.files == b.input.files)
        {
            sizes.insert(
                running
                    .spawn(run_group(store.clone(), config.clone(), group.to_vec()))
                    .id(),
                group.len(),
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match joined {
                    Ok((id, ())) => id,
                    Err(error) => {
                        tracing::error!(%error, "A backfill group stopped unexpectedly; its leases will lapse.");
                        error.id()
                    }
                };
                sizes.remove(&id);
            }
            () = tokio::time::sleep(Duration::from_millis(config.poll_ms)) => {}
        }
    }
    running.abort_all();
}

/// The completion swaps of jobs whose tasks have all succeeded, retried
/// with backoff while they fail transiently; a job whose swap fails
/// permanently, or `max_attempts` times, fails with the reason (its staged
/// rows are dropped and the totals are left as they were), so no swap is
/// retried forever while it holds locks that live flushes wait for.
#[derive(Default)]
struct Completions {
    /// Failed swaps of each job so far.
    failures: HashMap<i64, i32>,
    /// No swap is tried before this time (ms) after a failure.
    not_before: i64,
}

impl Completions {
    async fn run(&mut self, store: &Store, config: &RunnerConfig) {
        let now = now_ms();
        if now < self.not_before {
            return;
        }
        let outcomes = match store.complete_each(now).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                tracing::warn!(%error, "Cannot look for finished backfill jobs; will retry.");
                return;
            }
        };
        let mut worst = 0;
        for (id, outcome) in outcomes {
            let error = match outcome {
                Ok(done) => {
                    self.failures.remove(&id);
                    if done {
                        tracing::info!(
                            job = id,
                            "Backfill job succeeded: its rows replaced the range in merchant_sales."
                        );
                        BACKFILL_JOBS.with_label_values(&["succeeded"]).inc();
                    }
                    continue;
                }
                Err(error) => error,
            };
            let failures = self.failures.entry(id).or_default();
            *failures += 1;
            worst = worst.max(*failures);
            if error.is_retryable() && *failures < config.max_attempts {
                tracing::warn!(job = id, attempt = *failures, %error, "Cannot complete a finished backfill job; will retry.");
                continue;
            }
            let reason = format!(
                "its completion swap failed {failures} time(s), last: {error}; the totals are unchanged \
                 (for a big job, raise aggregator.backfill_statement_timeout_ms)"
            );
            match store.fail_job(id, &reason, now).await {
                Ok(true) => {
                    self.failures.remove(&id);
                    tracing::error!(job = id, "Backfill job failed: {reason}");
                    BACKFILL_JOBS.with_label_values(&["failed"]).inc();
                }
                Ok(false) => {
                    self.failures.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(job = id, error = %e, "Cannot fail a job whose completion keeps failing; will retry.")
                }
            }
        }
        self.not_before = if worst == 0 {
            0
        } else {
            now + rules::backoff(config.retry_base_ms, worst, now as u64) as i64
        };
    }
}

/// Records a failed attempt: a transient failure is retried after a
/// backoff while attempts are left; a permanent one, or the last attempt's,
/// fails its job, with the reason.
async fn fail(store: &Store, config: &RunnerConfig, task: &Task, error: &TaskError) {
    let import = task.input.version.is_some();
    let (job_id, task_no, attempt) = (task.job_id, task.task_no, task.attempts);
    let now = now_ms();
    let seed = (job_id as u64) << 32 ^ task_no as u64 ^ now as u64;
    let retry_at = error
        .is_retryable()
        .then(|| {
            rules::retry_at(
                attempt,
                config.max_attempts,
                config.retry_base_ms,
                now,
                seed,
            )
        })
        .flatten();
    let outcome = if retry_at.is_some() {
        "retried"
    } else {
        "failed"
    };
    let error = if error.is_retryable() {
        error.to_string()
    } else {
        format!("{error} (not retried: another attempt would fail the same way)")
    };
    tracing::warn!(
        job = job_id,
        task = task_no,
        attempt,
        outcome,
        "Backfill task attempt failed: {error}"
    );
    BACKFILL_ATTEMPTS.with_label_values(&[outcome]).inc();
    match store
        .fail_task(job_id, task_no, &config.owner, &error, now, retry_at)
        .await
    {
        // A failed import is counted by file (tally_import_files_total), a failed backfill by job.
        Ok(()) if retry_at.is_none() && import => IMPORT_FILES.with_label_values(&["failed"]).inc(),
        Ok(()) if retry_at.is_none() => BACKFILL_JOBS.with_label_values(&["failed"]).inc(),
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Cannot record the failed attempt; its lease will lapse.")
        }
    }
}

/// Renews the leases of `tasks` until one is no longer this runner's
/// (its job was cancelled, or it was taken over); returns that task's number.
async fn hold_leases(store: &Store, config: &RunnerConfig, tasks: &[Task]) -> i32 {
    loop {
        // Often enough that a cancelled job stops its tasks within a second or two.
        tokio::time::sleep(Duration::from_millis((config.lease_ms / 3).min(1_000))).await;
        for task in tasks {
            match store
                .renew_task(
                    task.job_id,
                    task.task_no,
                    &config.owner,
                    now_ms() + config.lease_ms as i64,
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => return task.task_no,
                Err(error) => tracing::warn!(%error, "Cannot renew a task's lease; will retry."),
            }
        }
    }
}

/// Imports one file: the version it was queued as, read whole and
/// unchanged, committed with its record. A file that changed before it
/// was read is superseded (its new version has a job of its own); one that
/// changes while it is read is read again on the next attempt.
async fn run_import(store: &Store, config: &RunnerConfig, job: &Job, task: &Task) {
    match import_file(store, config, job, task).await {
        Ok(Some((outcome, read))) => report_import(task, &outcome, read.as_ref().map(|(r, _)| r)),
        Ok(None) => {
            tracing::info!(job = task.job_id, task = task.task_no, file = %task.input.files[0], "Import stopped: its job was cancelled or it was taken over.");
            BACKFILL_ATTEMPTS.with_label_values(&["abandoned"]).inc();
        }
        Err(error) => fail(store, config, task, &error).await,
    }
}

/// What a file read for an import came to: its sums and content digest.
type ImportRead = (TaskResult, Option<String>);

/// The import of one file, up to its commit: the outcome recorded, with
/// what was read when the file was still the version queued (none when its
/// lease was lost first).
async fn import_file(
    store: &Store,
    config: &RunnerConfig,
    job: &Job,
    task: &Task,
) -> Result<Option<(ImportOutcome, Option<ImportRead>)>, TaskError> {
    let location = &task.input.files[0];
    let planned = FileVersion {
        location: location.clone(),
        size: task.input.size,
        version: task.input.version.clone().unwrap_or_default(),
    };
    let format = Format::of_file(job.format, location).map_err(TaskError::Job)?;
    let before = stat(location)
        .await
        .map_err(|error| TaskError::remote(location, format!("cannot read the file: {error}")))?;
    let zones = zones(store, config).await?;
    let read = if before == planned {
        // Read, checked and hashed while the lease is renewed: a big file's
        // digest reads it all again.
        let work = read_import(location, format, zones, &before);
        tokio::select! {
            read = work => Some(read?),
            _ = hold_leases(store, config, std::slice::from_ref(task)) => return Ok(None),
        }
    } else {
        None
    };
    let outcome = store
        .finish_import(
            task,
            &config.owner,
            &before,
            read.as_ref().map(|(r, d)| (r, d.as_deref())),
            now_ms(),
        )
        .await
        .map_err(|source| TaskError::Store {
            op: "cannot record the import",
            source,
        })?;
    Ok(Some((outcome, read)))
}

/// Counts and logs what an import came to.
fn report_import(task: &Task, outcome: &ImportOutcome, read: Option<&TaskResult>) {
    let (job_id, file) = (task.job_id, task.input.files[0].as_str());
    match outcome {
        ImportOutcome::Imported { keys } => {
            let result = read.expect("imported files were read");
            BACKFILL_ATTEMPTS.with_label_values(&["succeeded"]).inc();
            IMPORT_FILES.with_label_values(&["imported"]).inc();
            let counted = result.rows_read - result.rows_rejected - result.rows_duplicate;
            IMPORT_ROWS
                .with_label_values(&["counted"])
                .inc_by(counted as u64);
            IMPORT_ROWS
                .with_label_values(&["duplicate"])
                .inc_by(result.rows_duplicate as u64);
            IMPORT_ROWS
                .with_label_values(&["invalid"])
                .inc_by(result.rows_rejected as u64);
            tracing::info!(
                job = job_id,
                file,
                rows = result.rows_read,
                invalid = result.rows_rejected,
                duplicate = result.rows_duplicate,
                keys,
                "File imported."
            );
        }
        ImportOutcome::AlreadyImported { job_id: by } => {
            BACKFILL_ATTEMPTS.with_label_values(&["succeeded"]).inc();
            IMPORT_FILES.with_label_values(&["already_imported"]).inc();
            tracing::info!(
                job = job_id,
                file,
                "File already imported by job {by}: nothing added."
            );
        }
        ImportOutcome::Unchanged { job_id: by } => {
            BACKFILL_ATTEMPTS.with_label_values(&["succeeded"]).inc();
            IMPORT_FILES.with_label_values(&["unchanged"]).inc();
            tracing::info!(
                job = job_id,
                file,
                "File copied or touched again with the content job {by} imported: nothing added."
            );
        }
        ImportOutcome::Superseded => {
            BACKFILL_ATTEMPTS.with_label_values(&["succeeded"]).inc();
            IMPORT_FILES.with_label_values(&["superseded"]).inc();
            tracing::info!(
                job = job_id,
                file,
                "File changed before it was read: this version is superseded, nothing added."
            );
        }
        ImportOutcome::Conflict { message } => {
            BACKFILL_ATTEMPTS.with_label_values(&["failed"]).inc();
            IMPORT_FILES.with_label_values(&["conflict"]).inc();
            tracing::error!(job = job_id, file, "Import failed: {message}.");
        }
        ImportOutcome::NotMine => BACKFILL_ATTEMPTS.with_label_values(&["abandoned"]).inc(),
    }
}

/// Reads and sums the file at `location`, checks that it is still the
/// version `before` (unchanged while it was read), and hashes its content.
async fn read_import(
    location: &str,
    format: Format,
    zones: Option<Arc<Zones>>,
    before: &FileVersion,
) -> Result<(TaskResult, Option<String>), TaskError> {
    let files = [location.to_owned()];
    let mut result = compute_with(
        &files,
        format,
        &Scope::everything(),
        zones,
        &[0],
        1,
        IMPORT_EXAMPLES,
    )
    .await?
    .remove(0);
    match stat(location).await {
        Ok(after) if after == *before => {}
        Ok(_) => {
            return Err(TaskError::Changed {
                file: location.to_owned(),
            })
        }
        Err(error) => {
            return Err(TaskError::remote(
                location,
                format!("cannot read the file: {error}"),
            ))
        }
    }
    result.rejections.file = Some(location.to_owned());
    // Hashed off the runtime's threads: it reads the whole file again (from the page cache).
    let path = location.to_owned();
    match tokio::task::spawn_blocking(move || content_digest(&path)).await {
        Ok(Ok(digest)) => Ok((result, digest)),
        Ok(Err(error)) => Err(TaskError::remote(
            location,
            format!("cannot read the file: {error}"),
        )),
        Err(error) => Err(TaskError::Stopped {
            reason: format!("the digest stopped: {error}"),
            permanent: false,
        }),
    }
}

/// Runs tasks of one job that read the same files, in one pass.
async fn run_group(store: Arc<Store>, config: RunnerConfig, tasks: Vec<Task>) {
    let mut group = Vec::with_capacity(tasks.len());
    for task in tasks {
        if rules::exhausted(task.attempts, config.max_attempts) {
            // Taken over after its runners died this many times.
            let error = TaskError::Stopped {
                reason: "its runners stopped before finishing, too many times".into(),
                permanent: true,
            };
            fail(&store, &config, &task, &error).await;
        } else {
            group.push(task);
        }
    }
    let Some(first) = group.first() else { return };
    let job_id = first.job_id;
    let fail_all = |error: TaskError| {
        let (store, config, group) = (&store, &config, &group);
        async move {
            for task in group {
                fail(store, config, task, &error).await;
            }
        }
    };
    let job = match store.job(job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return,
        Err(source) => {
            let op = "cannot read the job";
            return fail_all(TaskError::Store { op, source }).await;
        }
    };
    if job.kind == Kind::Import {
        for task in &group {
            run_import(&store, &config, &job, task).await;
        }
        return;
    }
    let Some(format) = job.format else {
        return fail_all(TaskError::Job("a backfill job names no format".to_owned())).await;
    };
    let zones = match zones(&store, &config).await {
        Ok(zones) => zones,
        Err(error) => return fail_all(error).await,
    };
    let shards: Vec<i32> = group.iter().map(|task| task.input.shard).collect();
    let work = compute(
        &first.input.files,
        format,
        &job.scope,
        zones,
        &shards,
        first.input.shards,
    );
    let results = tokio::select! {
        results = work => results,
        task_no = hold_leases(&store, &config, &group) => {
            // Its job was cancelled, or it was taken over: the group's shared
            // reading stops, and every task still leased here is retried.
            tracing::info!(job = job_id, task = task_no, "Backfill task stopped: its job was cancelled or it was taken over.");
            for task in &group {
                BACKFILL_ATTEMPTS.with_label_values(&["abandoned"]).inc();
                if task.task_no != task_no {
                    let _ = store.fail_task(job_id, task.task_no, &config.owner, "stopped with its group", now_ms(), Some(now_ms())).await;
                }
            }
            return;
        }
    };
    let results = match results {
        Ok(results) => results,
        Err(error) => return fail_all(error).await,
    };
    // The group ran every task of its job: the tasks finish and the job
    // swaps their rows in at once, without staging them first.
    let results = if group.len() == first.input.shards as usize {
        match finish_whole(&store, &config, &group, results).await {
            Some(results) => results,
            None => return,
        }
    } else {
        results
    };
    for (task, result) in group.iter().zip(results) {
        finish(&store, &config, task, &result).await;
    }
}

/// Finishes every task of a job (all in `group`) and completes the job,
/// in one transaction; gives the results back when it could not, for each
/// task to finish on its own.
async fn finish_whole(
    store: &Store,
    config: &RunnerConfig,
    group: &[Task],
    results: Vec<TaskResult>,
) -> Option<Vec<TaskResult>> {
    let job_id = group[0].job_id;
    let given: Arc<[(i32, TaskResult)]> =
        (group.iter().map(|task| task.task_no).zip(results)).collect();
    match store
        .finish_job(job_id, &config.owner, Arc::clone(&given), now_ms())
        .await
    {
        Ok(true) => {
            for (task, (_, result)) in group.iter().zip(given.iter()) {
                succeeded(task, result);
            }
            tracing::info!(
                job = job_id,
                "Backfill job succeeded: its rows replaced the range in merchant_sales."
            );
            BACKFILL_JOBS.with_label_values(&["succeeded"]).inc();
            return None;
        }
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(job = job_id, %error, "Cannot finish the job's tasks together; finishing each, and the job completes as usual.");
        }
    }
    Some(given.iter().map(|(_, result)| result.clone()).collect())
}

/// Counts and logs a backfill task's success.
fn succeeded(task: &Task, result: &TaskResult) {
    BACKFILL_ATTEMPTS.with_label_values(&["succeeded"]).inc();
    BACKFILL_ROWS
        .with_label_values(&["read"])
        .inc_by(result.rows_read as u64);
    BACKFILL_ROWS
        .with_label_values(&["rejected"])
        .inc_by(result.rows_rejected as u64);
    BACKFILL_ROWS
        .with_label_values(&["duplicate"])
        .inc_by(result.rows_duplicate as u64);
    tracing::info!(
        job = task.job_id,
        task = task.task_no,
        rows = result.rows_read,
        rejected = result.rows_rejected,
        "Backfill task succeeded."
    );
}

/// Records a backfill task's result, and counts and logs it.
async fn finish(store: &Store, config: &RunnerConfig, task: &Task, result: &TaskResult) {
    let job_id = task.job_id;
    match store
        .finish_task(job_id, task.task_no, &config.owner, result, now_ms())
        .await
    {
        Ok(true) => succeeded(task, result),
        Ok(false) => BACKFILL_ATTEMPTS.with_label_values(&["abandoned"]).inc(),
        Err(source) => {
            let op = "cannot record the result";
            fail(store, config, task, &TaskError::Store { op, source }).await
        }
    }
}
