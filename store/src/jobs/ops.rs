//! The job state machine, written once for both databases: each operation
//! is a sequence of statements run through [`Tx`], in SQL both accept, with
//! the decisions taken by [`super::rules`].
//!
//! Rows are never locked by reading them, except where a statement says so
//! ([`Tx::for_update`], [`Tx::skip_locked`]); every change of state names
//! the state it expects (`WHERE … AND state = 'running'`), so a runner that
//! lost its task changes nothing.

use super::rules::{self, check_after, judge_import, row_state, skip_reason};
use super::{
    Dependency, FileVersion, ImportOutcome, Job, JobRows, Kind, LocalDays, NewJob, NewTask, Queued,
    QueuedFile, Requeue, Schedule, Scope, State, Task, TaskResult, TaskRows,
};
use crate::closes;
use crate::error::{Result, StoreError};
use crate::sql::{params, Row, Tx};
use schemas::job::{Cron, Format, Range};
use schemas::zone::Zone;
use schemas::Day;

const TASK_COLUMNS: &str = "job_id, task_no, shard, shards, files, state, attempts, not_before, \
     owner, started_at, finished_at, rows_read, rows_rejected, rows_duplicate, rejections, \
     last_error, size, version, outcome";
const JOB_COLUMNS: &str = "id, state, source, format, day_from, day_to, merchants, schedule, \
     created_at, started_at, finished_at, keys_written, last_error, kind";
const SCHEDULE_COLUMNS: &str =
    "name, cron, source, format, day_range, merchants, created_at, last_due";

/// A task may run when its job has not ended, every job its job waits on
/// has succeeded, and it is pending with its retry time come, or running
/// with its lease run out (its runner died). The lowest job, then task, first.
const RUNNABLE: &str = "FROM tally_tasks t JOIN tally_jobs j ON j.id = t.job_id
     WHERE j.state IN ('pending', 'running')
       AND NOT EXISTS (SELECT 1 FROM tally_job_deps d JOIN tally_jobs a ON a.id = d.after_id
                       WHERE d.job_id = j.id AND a.state <> 'succeeded')
       AND ((t.state = 'pending' AND t.not_before <= $1) OR (t.state = 'running' AND t.lease_until < $1))
     ORDER BY t.job_id, t.task_no LIMIT 1";

/// Pending jobs that wait on a job that failed or was cancelled.
const ORPHANS: &str = "SELECT j.id, a.id, a.state FROM tally_jobs j
     JOIN tally_job_deps d ON d.job_id = j.id JOIN tally_jobs a ON a.id = d.after_id
     WHERE j.state = 'pending' AND a.state IN ('failed', 'cancelled') ORDER BY j.id, a.id";

fn task(r: &Row) -> Result<Task> {
    Ok(Task {
        job_id: r.int(0)?,
        task_no: r.int32(1)?,
        input: NewTask {
            shard: r.int32(2)?,
            shards: r.int32(3)?,
            files: parse_list("files", r.text(4)?)?,
            size: r.int(16)?,
            version: r.opt_text(17)?.map(str::to_owned),
        },
        state: parse_state(r.text(5)?)?,
        attempts: r.int32(6)?,
        not_before: r.int(7)?,
        owner: r.opt_text(8)?.map(str::to_owned),
        started_at: r.opt_int(9)?,
        finished_at: r.opt_int(10)?,
        rows_read: r.int(11)?,
        rows_rejected: r.int(12)?,
        rows_duplicate: r.int(13)?,
        rejections: serde_json::from_str(r.text(14)?).unwrap_or_default(),
        last_error: r.opt_text(15)?.map(str::to_owned),
        outcome: r.opt_text(18)?.map(str::to_owned),
    })
}

fn job(r: &Row, tasks: Vec<Task>, after: Vec<Dependency>, before: Vec<i64>) -> Result<Job> {
    Ok(Job {
        id: r.int(0)?,
        kind: parse_kind(r.text(13)?)?,
        state: parse_state(r.text(1)?)?,
        source: r.text(2)?.to_owned(),
        format: parse_format(r.text(3)?)?,
        scope: scope(r, 4)?,
        schedule: r.opt_text(7)?.map(str::to_owned),
        created_at: r.int(8)?,
        started_at: r.opt_int(9)?,
        finished_at: r.opt_int(10)?,
        keys_written: r.opt_int(11)?,
        last_error: r.opt_text(12)?.map(str::to_owned),
        tasks,
        after,
        before,
    })
}

/// The scope stored in columns `day_from, day_to, merchants` from `at`.
fn scope(r: &Row, at: usize) -> Result<Scope> {
    Ok(Scope {
        from: parse_day("day_from", r.text(at)?)?,
        to: parse_day("day_to", r.text(at + 1)?)?,
        merchants: parse_list("merchants", r.text(at + 2)?)?,
    })
}

fn schedule(r: &Row) -> Result<Schedule> {
    Ok(Schedule {
        name: r.text(0)?.to_owned(),
        cron: Cron::parse(r.text(1)?).map_err(|e| corrupt("cron", r.text(1).unwrap_or(""), e))?,
        source: r.text(2)?.to_owned(),
        format: parse_format(r.text(3)?)?,
        day_range: Range::parse(r.text(4)?)
            .map_err(|e| corrupt("day_range", r.text(4).unwrap_or(""), e))?,
        merchants: parse_list("merchants", r.text(5)?)?,
        created_at: r.int(6)?,
        last_due: r.int(7)?,
    })
}

/// Creates a pending job with its pending tasks and its dependencies;
/// refuses dependencies that [`check_after`] refuses.
pub(crate) async fn create_job(tx: &mut dyn Tx, new: &NewJob, now: i64) -> Result<i64> {
    // Locked: a dependency cannot end between this check and the commit
    // unseen. Shared, so that two jobs after the same one both go ahead, and
    // in id order, so that two creations never wait on each other.
    let ids: std::collections::BTreeSet<i64> = new.after.iter().copied().collect();
    let mut after = Vec::with_capacity(ids.len());
    let read = format!(
        "SELECT state FROM tally_jobs WHERE id = $1{}",
        tx.for_share()
    );
    for &id in &ids {
        let rows = tx.query("dependency read", &read, params![id]).await?;
        let state = rows.first().map(|r| parse_state(r.text(0)?)).transpose()?;
        after.push((id, state));
    }
    check_after(&after).map_err(StoreError::Refused)?;
    let (from, to) = (new.scope.from.to_string(), new.scope.to.to_string());
    let merchants = json_list(&new.scope.merchants);
    let rows = tx
        .query(
            "job insert",
            "INSERT INTO tally_jobs (state, source, format, day_from, day_to, merchants, schedule, created_at, kind)
             VALUES ('pending', $1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            params![&new.source, Format::stored(new.format), &from, &to, &merchants, new.schedule.as_deref(), now, new.kind.as_str()],
        )
        .await?;
    let id = first(&rows, "job insert")?.int(0)?;
    for (no, t) in new.tasks.iter().enumerate() {
        let files = json_list(&t.files);
        tx.execute(
            "task insert",
            "INSERT INTO tally_tasks (job_id, task_no, shard, shards, files, state, size, version)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)",
            params![
                id,
                no as i64,
                t.shard,
                t.shards,
                &files,
                t.size,
                t.version.as_deref()
            ],
        )
        .await?;
    }
    for &after_id in &ids {
        tx.execute(
            "dependency insert",
            "INSERT INTO tally_job_deps (job_id, after_id) VALUES ($1, $2)",
            params![id, after_id],
        )
        .await?;
    }
    Ok(id)
}

/// The job with its tasks and dependencies, if it exists.
pub(crate) async fn job_by_id(tx: &mut dyn Tx, id: i64) -> Result<Option<Job>> {
    let read = format!("SELECT {JOB_COLUMNS} FROM tally_jobs WHERE id = $1");
    let Some(row) = tx.query("job read", &read, params![id]).await?.pop() else {
        return Ok(None);
    };
    let read = format!("SELECT {TASK_COLUMNS} FROM tally_tasks WHERE job_id = $1 ORDER BY task_no");
    let tasks = tx.query("task read", &read, params![id]).await?;
    let after = tx
        .query(
            "dependency read",
            "SELECT a.id, a.state FROM tally_job_deps d JOIN tally_jobs a ON a.id = d.after_id
             WHERE d.job_id = $1 ORDER BY a.id",
            params![id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Dependency {
                job_id: r.int(0)?,
                state: parse_state(r.text(1)?)?,
            })
        })
        .collect::<Result<_>>()?;
    let before = tx
        .query(
            "dependency read",
            "SELECT job_id FROM tally_job_deps WHERE after_id = $1 ORDER BY job_id",
            params![id],
        )
        .await?
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<_>>()?;
    let tasks = tasks.iter().map(task).collect::<Result<_>>()?;
    job(&row, tasks, after, before).map(Some)
}

/// The newest `limit` jobs, newest first.
pub(crate) async fn jobs(tx: &mut dyn Tx, limit: i64) -> Result<Vec<Job>> {
    let ids = tx
        .query(
            "job list",
            "SELECT id FROM tally_jobs ORDER BY id DESC LIMIT $1",
            params![limit],
        )
        .await?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        jobs.extend(job_by_id(tx, id.int(0)?).await?);
    }
    Ok(jobs)
}

/// Cancels a job that has not ended; returns its state afterwards and
/// whether this call cancelled it.
pub(crate) async fn cancel_job(
    tx: &mut dyn Tx,
    id: i64,
    now: i64,
) -> Result<Option<(State, bool)>> {
    let cancelled = tx
        .execute(
            "job cancel",
            "UPDATE tally_jobs SET state = 'cancelled', finished_at = $2, last_error = 'cancelled by an operator'
             WHERE id = $1 AND state IN ('pending', 'running')",
            params![id, now],
        )
        .await?
        == 1;
    if cancelled {
        stop_tasks(tx, id, now).await?;
    }
    let rows = tx
        .query(
            "job read",
            "SELECT state FROM tally_jobs WHERE id = $1",
            params![id],
        )
        .await?;
    rows.first()
        .map(|r| Ok((parse_state(r.text(0)?)?, cancelled)))
        .transpose()
}

/// Whether a task can be claimed now: a look without taking a claim's locks.
pub(crate) async fn runnable(tx: &mut dyn Tx, now: i64) -> Result<bool> {
    let read = format!("SELECT t.job_id {RUNNABLE}");
    Ok(!tx
        .query("task claim", &read, params![now])
        .await?
        .is_empty())
}

/// Takes the next runnable task for `owner`, counts an attempt, leases it
/// until `lease_until`, and starts its job.
pub(crate) async fn claim_task(
    tx: &mut dyn Tx,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<Task>> {
    let read = format!(
        "SELECT t.job_id, t.task_no, t.state, t.attempts {RUNNABLE}{}",
        tx.skip_locked("t")
    );
    let Some(next) = tx.query("task claim", &read, params![now]).await?.pop() else {
        return Ok(None);
    };
    let (job_id, task_no) = (next.int(0)?, next.int(1)?);
    let (seen, attempts) = (next.text(2)?.to_owned(), next.int(3)?);
    let note = rules::takeover_note(parse_state(&seen)?);
    let claim = format!(
        "UPDATE tally_tasks SET state = 'running', attempts = attempts + 1, owner = $3, started_at = $4,
             finished_at = NULL, lease_until = $5, last_error = COALESCE($6, last_error)
         WHERE job_id = $1 AND task_no = $2 AND state = $7 AND attempts = $8 RETURNING {TASK_COLUMNS}"
    );
    let claimed = tx
        .query(
            "task claim",
            &claim,
            params![
                job_id,
                task_no,
                owner,
                now,
                lease_until,
                note,
                seen.as_str(),
                attempts
            ],
        )
        .await?;
    let Some(row) = claimed.first() else {
        return Ok(None); // claimed by another runner since it was read
    };
    tx.execute(
        "job start",
        "UPDATE tally_jobs SET state = 'running', started_at = COALESCE(started_at, $2)
         WHERE id = $1 AND state = 'pending'",
        params![job_id, now],
    )
    .await?;
    task(row).map(Some)
}

/// Extends `owner`'s lease; false when the task is no longer theirs.
pub(crate) async fn renew_task(
    tx: &mut dyn Tx,
    (job_id, task_no): (i64, i32),
    owner: &str,
    lease_until: i64,
) -> Result<bool> {
    let renewed = tx
        .execute(
            "task renew",
            "UPDATE tally_tasks SET lease_until = $4
             WHERE job_id = $1 AND task_no = $2 AND owner = $3 AND state = 'running'",
            params![job_id, task_no, owner, lease_until],
        )
        .await?;
    Ok(renewed == 1)
}

/// Records `owner`'s successful attempt and stages its rows; false (and
/// nothing written) when the task is no longer theirs.
pub(crate) async fn finish_task(
    tx: &mut dyn Tx,
    (job_id, task_no): (i64, i32),
    owner: &str,
    result: &TaskResult,
    now: i64,
) -> Result<bool> {
    if !succeed(tx, (job_id, task_no), owner, result, now).await? {
        return Ok(false);
    }
    tx.stage_rows(job_id, task_no, &result.totals, &result.local)
        .await?;
    Ok(true)
}

/// Marks `owner`'s running task succeeded with `result`'s counts; false
/// when it is no longer `owner`'s.
async fn succeed(
    tx: &mut dyn Tx,
    (job_id, task_no): (i64, i32),
    owner: &str,
    result: &TaskResult,
    now: i64,
) -> Result<bool> {
    let rejections = serde_json::to_string(&result.rejections).expect("rejections serialise");
    let mine = tx
        .execute(
            "task finish",
            "UPDATE tally_tasks SET state = 'succeeded', finished_at = $4, rows_read = $5, rows_rejected = $6,
                 rows_duplicate = $7, rejections = $8, last_error = NULL
             WHERE job_id = $1 AND task_no = $2 AND owner = $3 AND state = 'running'",
            params![job_id, task_no, owner, now, result.rows_read, result.rows_rejected, result.rows_duplicate, &rejections],
        )
        .await?;
    Ok(mine == 1)
}

/// Finishes every task of running backfill `job_id` with `results` and
/// completes the job with their rows, unstaged; false, having written
/// nothing, unless every task of the job is in `results` and running as
/// `owner`'s. The job's and tasks' rows are locked first, so nothing
/// changes them between the check and the swap.
pub(crate) async fn finish_job(
    tx: &mut dyn Tx,
    job_id: i64,
    owner: &str,
    results: &[(i32, TaskResult)],
    now: i64,
) -> Result<bool> {
    let lock = tx.for_update();
    let job = tx
        .query(
            "job read",
            &format!("SELECT state, kind FROM tally_jobs WHERE id = $1 {lock}"),
            params![job_id],
        )
        .await?;
    match job.first() {
        Some(row) if row.text(0)? == "running" && parse_kind(row.text(1)?)? == Kind::Backfill => {}
        _ => return Ok(false),
    }
    let tasks = tx
        .query(
            "task scan",
            &format!("SELECT task_no, state, owner FROM tally_tasks WHERE job_id = $1 {lock}"),
            params![job_id],
        )
        .await?;
    let mut all_mine = tasks.len() == results.len();
    for task in &tasks {
        let task_no = task.int32(0)?;
        all_mine &= task.text(1)? == "running"
            && task.opt_text(2)? == Some(owner)
            && results.iter().any(|(n, _)| *n == task_no);
    }
    if !all_mine {
        return Ok(false);
    }
    for (task_no, result) in results {
        if !succeed(tx, (job_id, *task_no), owner, result, now).await? {
            return Err(StoreError::Refused(format!(
                "task {task_no} of job {job_id} changed while its row was locked"
            )));
        }
    }
    let given: Vec<TaskRows<'_>> = (results.iter())
        .map(|(task_no, result)| TaskRows {
            task_no: *task_no,
            totals: &result.totals,
            local: &result.local,
        })
        .collect();
    complete_job_with(tx, job_id, now, JobRows::Given(&given)).await
}

/// Records `owner`'s failed attempt: pending again from `retry_at`, or,
/// without, failed, and its job with it.
pub(crate) async fn fail_task(
    tx: &mut dyn Tx,
    (job_id, task_no): (i64, i32),
    owner: &str,
    error: &str,
    now: i64,
    retry_at: Option<i64>,
) -> Result<()> {
    let state = if retry_at.is_some() {
        State::Pending
    } else {
        State::Failed
    };
    let mine = tx
        .execute(
            "task fail",
            "UPDATE tally_tasks SET state = $4, finished_at = $5, not_before = $6, last_error = $7
             WHERE job_id = $1 AND task_no = $2 AND owner = $3 AND state = 'running'",
            params![
                job_id,
                task_no,
                owner,
                state.as_str(),
                now,
                retry_at.unwrap_or(0),
                error
            ],
        )
        .await?;
    if mine == 1 && retry_at.is_none() {
        let error = format!("task {task_no} ran out of attempts: {error}");
        fail_job(tx, job_id, &error, now).await?;
    }
    Ok(())
}

/// Fails the job, if it has not ended, and stops its other tasks, dropping
/// its computed rows; false when it had ended.
pub(crate) async fn fail_job(tx: &mut dyn Tx, job_id: i64, error: &str, now: i64) -> Result<bool> {
    let failed = tx
        .execute(
            "job fail",
            "UPDATE tally_jobs SET state = 'failed', finished_at = $2, last_error = $3
             WHERE id = $1 AND state IN ('pending', 'running')",
            params![job_id, now, error],
        )
        .await?;
    if failed == 0 {
        return Ok(false);
    }
    stop_tasks(tx, job_id, now).await?;
    Ok(true)
}

async fn stop_tasks(tx: &mut dyn Tx, job_id: i64, now: i64) -> Result<()> {
    tx.execute(
        "task stop",
        "UPDATE tally_tasks SET state = 'cancelled', finished_at = $2
         WHERE job_id = $1 AND state IN ('pending', 'running')",
        params![job_id, now],
    )
    .await?;
    drop_rows(tx, job_id).await
}

/// Drops the rows a backfill job's tasks staged.
async fn drop_rows(tx: &mut dyn Tx, job_id: i64) -> Result<()> {
    for table in ["tally_backfill_rows", "tally_backfill_local_rows"] {
        tx.execute(
            "job rows delete",
            &format!("DELETE FROM {table} WHERE job_id = $1"),
            params![job_id],
        )
        .await?;
    }
    Ok(())
}

/// Running jobs whose tasks have all succeeded.
pub(crate) async fn complete(tx: &mut dyn Tx) -> Result<Vec<i64>> {
    tx.query(
        "job scan",
        "SELECT id FROM tally_jobs j WHERE state = 'running'
           AND NOT EXISTS (SELECT 1 FROM tally_tasks t WHERE t.job_id = j.id AND t.state <> 'succeeded')
         ORDER BY id",
        params![],
    )
    .await?
    .iter()
    .map(|r| r.int(0))
    .collect()
}

/// Marks a complete job succeeded and, for a backfill, replaces its scope
/// of `merchant_sales` with its rows; false when it is no longer running.
pub(crate) async fn complete_job(tx: &mut dyn Tx, id: i64, now: i64) -> Result<bool> {
    complete_job_with(tx, id, now, JobRows::Staged).await
}

/// [`complete_job`], with the job's rows from `rows`.
async fn complete_job_with(tx: &mut dyn Tx, id: i64, now: i64, rows: JobRows<'_>) -> Result<bool> {
    let Some(row) = tx
        .query(
            "job complete",
            "UPDATE tally_jobs SET state = 'succeeded', finished_at = $2 WHERE id = $1 AND state = 'running'
             RETURNING day_from, day_to, merchants, kind",
            params![id, now],
        )
        .await?
        .pop()
    else {
        return Ok(false);
    };
    if parse_kind(row.text(3)?)? == Kind::Import {
        // Each file's totals committed with the file; nothing to swap in.
        tx.execute(
            "job complete",
            "UPDATE tally_jobs SET keys_written = (SELECT CAST(COALESCE(SUM(keys_written), 0) AS BIGINT)
                 FROM tally_imports WHERE job_id = $1 AND state = 'imported') WHERE id = $1",
            params![id],
        )
        .await?;
        return Ok(true);
    }
    // The swap and its adjustments see no flush between them.
    tx.lock_closes(true).await?;
    let scope = scope(&row, 0)?;
    let local = local_scopes(tx, id, &scope, rows).await?;
    let through = closes::closed_through(tx).await?;
    let before = closes::closed_rows_in(tx, &scope, &local, through).await?;
    let written = tx.replace_scope(id, &scope, &local, rows).await?;
    let after = closes::closed_rows_in(tx, &scope, &local, through).await?;
    closes::record(tx, &closes::differences(&before, &after, id, now)).await?;
    tx.execute(
        "job complete",
        "UPDATE tally_jobs SET keys_written = $2 WHERE id = $1",
        params![id, written],
    )
    .await?;
    drop_rows(tx, id).await?;
    Ok(true)
}

/// The local days a backfill job replaces, for every zone of a local row
/// it may delete (one within a day of its scope) or add (one of `rows`).
async fn local_scopes(
    tx: &mut dyn Tx,
    job_id: i64,
    scope: &Scope,
    rows: JobRows<'_>,
) -> Result<Vec<LocalDays>> {
    let (from, to) = (
        Day(scope.from.0 - 1).to_string(),
        Day(scope.to.0 + 1).to_string(),
    );
    // Rows given whole are not staged yet, so the staged half reads none.
    let sql = format!(
        "SELECT time_zone FROM merchant_sales_local WHERE local_day >= {} AND local_day < {}
         UNION SELECT time_zone FROM tally_backfill_local_rows WHERE job_id = $3",
        tx.day_param(1),
        tx.day_param(2)
    );
    let mut names: Vec<String> = tx
        .query(
            "local zones read",
            &sql,
            params![from.as_str(), to.as_str(), job_id],
        )
        .await?
        .iter()
        .map(|r| r.text(0).map(str::to_owned))
        .collect::<Result<_>>()?;
    if let JobRows::Given(tasks) = rows {
        let given = tasks.iter().flat_map(|task| task.local.values());
        names.extend(given.map(|l| l.time_zone.to_string()));
    }
    names.sort_unstable();
    names.dedup();
    let zones = names
        .iter()
        .map(|name| Zone::parse(name).map_err(|reason| corrupt("time_zone", name, reason)))
        .collect::<Result<Vec<_>>>()?;
    Ok(rules::local_scopes(&zones, scope))
}

/// Pending jobs waiting on a failed or cancelled job, each with its reason.
pub(crate) async fn orphans(tx: &mut dyn Tx) -> Result<Vec<(i64, String)>> {
    let found = tx
        .query("dependency scan", ORPHANS, params![])
        .await?
        .iter()
        .map(|r| Ok((r.int(0)?, r.int(1)?, parse_state(r.text(2)?)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(rules::orphans(&found))
}

/// Cancels every orphan, and the orphans that leaves, down the graph.
pub(crate) async fn cancel_orphans(tx: &mut dyn Tx, now: i64) -> Result<Vec<(i64, String)>> {
    let mut cancelled = Vec::new();
    loop {
        let found = orphans(tx).await?;
        if found.is_empty() {
            return Ok(cancelled);
        }
        for (id, reason) in found {
            tx.execute(
                "job cancel",
                "UPDATE tally_jobs SET state = 'cancelled', finished_at = $2, last_error = $3
                 WHERE id = $1 AND state = 'pending'",
                params![id, now, &reason],
            )
            .await?;
            stop_tasks(tx, id, now).await?;
            cancelled.push((id, reason));
        }
    }
}

/// Adds a schedule; fails when the name is taken.
pub(crate) async fn add_schedule(tx: &mut dyn Tx, s: &Schedule) -> Result<()> {
    let insert = format!(
        "INSERT INTO tally_schedules ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    );
    let (merchants, day_range) = (json_list(&s.merchants), s.day_range.to_string());
    let format = s.format.map_or("", Format::as_str);
    tx.execute(
        "schedule insert",
        &insert,
        params![
            &s.name,
            s.cron.as_str(),
            &s.source,
            format,
            &day_range,
            &merchants,
            s.created_at,
            s.last_due
        ],
    )
    .await?;
    Ok(())
}

/// Every schedule, by name.
pub(crate) async fn schedules(tx: &mut dyn Tx) -> Result<Vec<Schedule>> {
    let read = format!("SELECT {SCHEDULE_COLUMNS} FROM tally_schedules ORDER BY name");
    tx.query("schedule read", &read, params![])
        .await?
        .iter()
        .map(schedule)
        .collect()
}

/// Removes a schedule; false when there was none of that name.
pub(crate) async fn remove_schedule(tx: &mut dyn Tx, name: &str) -> Result<bool> {
    let removed = tx
        .execute(
            "schedule delete",
            "DELETE FROM tally_schedules WHERE name = $1",
            params![name],
        )
        .await?;
    Ok(removed == 1)
}

/// Creates `job` for schedule `name` and moves its `last_due` from
/// `previous` to `due`; `None` when another scheduler already did.
pub(crate) async fn fire_schedule(
    tx: &mut dyn Tx,
    name: &str,
    (previous, due): (i64, i64),
    job: &NewJob,
    now: i64,
) -> Result<Option<i64>> {
    let moved = tx
        .execute(
            "schedule fire",
            "UPDATE tally_schedules SET last_due = $3 WHERE name = $1 AND last_due = $2",
            params![name, previous, due],
        )
        .await?;
    if moved != 1 {
        return Ok(None);
    }
    create_job(tx, job, now).await.map(Some)
}

/// Creates an import job of the files of `new` that need importing, and
/// records each queued version.
pub(crate) async fn queue_import(
    tx: &mut dyn Tx,
    new: &NewJob,
    requeue: Requeue,
    now: i64,
) -> Result<Queued> {
    let mut files = Vec::with_capacity(new.tasks.len());
    let mut tasks = Vec::new();
    for t in &new.tasks {
        let location = &t.files[0];
        let version = t.version.as_deref().unwrap_or_default();
        let seen = tx
            .query(
                "import read",
                "SELECT i.state, i.job_id, j.state FROM tally_imports i JOIN tally_jobs j ON j.id = i.job_id
                 WHERE i.location = $1 AND i.size = $2 AND i.version = $3",
                params![location, t.size, version],
            )
            .await?;
        let reason = match seen.first() {
            None => None,
            Some(r) => skip_reason(r.text(0)?, r.int(1)?, parse_state(r.text(2)?)?, requeue),
        };
        if reason.is_none() {
            tasks.push(t.clone());
        }
        files.push(QueuedFile {
            location: location.clone(),
            queued: reason.is_none(),
            reason,
        });
    }
    if tasks.is_empty() {
        return Ok(Queued {
            job_id: None,
            files,
        });
    }
    let job = NewJob {
        tasks,
        ..new.clone()
    };
    let id = create_job(tx, &job, now).await?;
    for (no, t) in job.tasks.iter().enumerate() {
        tx.execute(
            "import queue",
            "INSERT INTO tally_imports (location, size, version, state, job_id, task_no, queued_at)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6)
             ON CONFLICT (location, size, version) DO UPDATE SET state = 'queued', job_id = $4, task_no = $5,
                 queued_at = $6
             WHERE tally_imports.state <> 'imported'",
            params![&t.files[0], t.size, t.version.as_deref().unwrap_or_default(), id, no as i64, now],
        )
        .await?;
    }
    Ok(Queued {
        job_id: Some(id),
        files,
    })
}

/// Finishes `owner`'s import task: judges the file against the version of
/// its location imported before, adds its totals when it is the first, and
/// records the outcome.
pub(crate) async fn finish_import(
    tx: &mut dyn Tx,
    task: &Task,
    owner: &str,
    file: &FileVersion,
    read: Option<(&TaskResult, Option<&str>)>,
    now: i64,
) -> Result<ImportOutcome> {
    // Before any row lock: a close run waits for this import, or it for the run.
    tx.lock_closes(false).await?;
    let (result, digest) = (read.map(|r| r.0), read.and_then(|r| r.1));
    let (job_id, task_no) = (task.job_id, task.task_no);
    let mine = format!(
        "SELECT 1 FROM tally_tasks WHERE job_id = $1 AND task_no = $2 AND owner = $3 AND state = 'running'{}",
        tx.for_update()
    );
    if tx
        .query("task read", &mine, params![job_id, task_no, owner])
        .await?
        .is_empty()
    {
        return Ok(ImportOutcome::NotMine);
    }
    tx.lock_location(&file.location).await?;
    let imported = tx
        .query(
            "import read",
            "SELECT job_id, size, version, digest FROM tally_imports WHERE location = $1 AND state = 'imported'",
            params![&file.location],
        )
        .await?;
    let imported = match imported.first() {
        None => None,
        Some(r) => Some((
            r.int(0)?,
            r.int(1)?,
            r.text(2)?.to_owned(),
            r.opt_text(3)?.map(str::to_owned),
        )),
    };
    let outcome = match (judge_import(file, digest, imported), result) {
        (Some(judged), _) => judged,
        (None, None) => ImportOutcome::Superseded,
        (None, Some(result)) => {
            let adjustments =
                closes::for_import(tx, &result.totals, &result.local, job_id, now).await?;
            closes::record(tx, &adjustments).await?;
            let keys = tx.add_totals(&result.totals, &result.local).await?;
            // An upsert, so the file's record commits with its totals even
            // if its queued row were missing.
            tx.execute(
                "import record",
                "INSERT INTO tally_imports (location, size, version, state, job_id, task_no, queued_at, imported_at,
                     rows_read, rows_rejected, rows_duplicate, keys_written, digest)
                 VALUES ($1, $2, $3, 'imported', $9, $10, $4, $4, $5, $6, $7, $8, $11)
                 ON CONFLICT (location, size, version) DO UPDATE SET state = 'imported', imported_at = $4,
                     rows_read = $5, rows_rejected = $6, rows_duplicate = $7, keys_written = $8, job_id = $9,
                     task_no = $10, digest = $11",
                params![&file.location, file.size, &file.version, now, result.rows_read, result.rows_rejected,
                    result.rows_duplicate, keys, job_id, task_no, digest],
            )
            .await?;
            ImportOutcome::Imported { keys }
        }
    };
    if let Some(state) = row_state(&outcome) {
        let planned = task.input.version.as_deref().unwrap_or_default();
        tx.execute(
            "import record",
            "UPDATE tally_imports SET state = $4
             WHERE location = $1 AND size = $2 AND version = $3 AND state = 'queued'",
            params![&file.location, task.input.size, planned, state],
        )
        .await?;
    }
    if let ImportOutcome::Conflict { message } = &outcome {
        tx.execute(
            "task fail",
            "UPDATE tally_tasks SET state = 'failed', finished_at = $3, outcome = 'conflict', last_error = $4
             WHERE job_id = $1 AND task_no = $2",
            params![job_id, task_no, now, message],
        )
        .await?;
        fail_job(tx, job_id, message, now).await?;
    } else {
        let empty = TaskResult::default();
        let counts = result
            .filter(|_| matches!(outcome, ImportOutcome::Imported { .. }))
            .unwrap_or(&empty);
        let rejections = serde_json::to_string(&counts.rejections).expect("rejections serialise");
        let described = outcome.describe();
        tx.execute(
            "task finish",
            "UPDATE tally_tasks SET state = 'succeeded', finished_at = $3, rows_read = $4, rows_rejected = $5,
                 rows_duplicate = $6, rejections = $7, last_error = NULL, outcome = $8
             WHERE job_id = $1 AND task_no = $2",
            params![job_id, task_no, now, counts.rows_read, counts.rows_rejected, counts.rows_duplicate,
                &rejections, &described],
        )
        .await?;
    }
    Ok(outcome)
}

fn first<'r>(rows: &'r [Row], op: &'static str) -> Result<&'r Row> {
    rows.first().ok_or_else(|| StoreError::Corrupt {
        column: "RETURNING",
        value: op.to_owned(),
        reason: "the statement returned no row".into(),
    })
}

/// JSON text of a list of strings.
pub(crate) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialise")
}

/// Reads a stored JSON list of strings.
pub(crate) fn parse_list(column: &'static str, text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| corrupt(column, text, e.to_string()))
}

fn parse_format(text: &str) -> Result<Option<Format>> {
    Format::parse_stored(text).map_err(|e| corrupt("format", text, e))
}

fn parse_kind(text: &str) -> Result<Kind> {
    Kind::parse(text).ok_or_else(|| corrupt("kind", text, "unknown job kind".into()))
}

fn parse_state(text: &str) -> Result<State> {
    State::parse(text).ok_or_else(|| corrupt("state", text, "unknown state".into()))
}

fn parse_day(column: &'static str, text: &str) -> Result<Day> {
    Day::parse(text).map_err(|e| corrupt(column, text, e.to_string()))
}

fn corrupt(column: &'static str, value: &str, reason: String) -> StoreError {
    StoreError::Corrupt {
        column,
        value: value.to_owned(),
        reason,
    }
}
