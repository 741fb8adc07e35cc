//! Backfill jobs, tasks and schedules on SQLite. Every write is one
//! `IMMEDIATE` transaction, so writers are serialised by the file lock.

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::{upsert, SqliteStore};
use crate::error::{lite, Result};
use crate::jobs::{
    check_after, json_list, judge_import, parse_day, parse_kind, parse_list, parse_state,
    row_state, skip_reason, Dependency, FileVersion, ImportOutcome, Job, Kind, NewJob, NewTask,
    Queued, QueuedFile, Requeue, Schedule, Scope, State, Task, TaskResult,
};
use crate::parse_row;
use crate::StoreError;

const TASK_COLUMNS: &str = "job_id, task_no, shard, shards, files, state, attempts, not_before, owner, started_at,
    finished_at, rows_read, rows_rejected, rows_duplicate, rejections, last_error, size, version, outcome";
const JOB_COLUMNS: &str =
    "id, state, source, format, day_from, day_to, merchants, schedule, created_at, started_at, finished_at, keys_written, last_error, kind";
const SCHEDULE_COLUMNS: &str =
    "name, cron, source, format, day_range, merchants, created_at, last_due";

/// A row's raw columns; parsed outside rusqlite's closure so that our own
/// errors can be returned.
type RawTask = (
    (
        i64,
        i32,
        i32,
        i32,
        String,
        String,
        i32,
        i64,
        Option<String>,
        Option<i64>,
        Option<i64>,
        i64,
        i64,
        i64,
        String,
        Option<String>,
    ),
    (i64, Option<String>, Option<String>),
);

fn raw_task(r: &Row<'_>) -> rusqlite::Result<RawTask> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
            r.get(12)?,
            r.get(13)?,
            r.get(14)?,
            r.get(15)?,
        ),
        (r.get(16)?, r.get(17)?, r.get(18)?),
    ))
}

fn task(raw: RawTask) -> Result<Task> {
    let (
        (
            job_id,
            task_no,
            shard,
            shards,
            files,
            state,
            attempts,
            not_before,
            owner,
            started_at,
            finished_at,
            rows_read,
            rows_rejected,
            rows_duplicate,
            rejections,
            last_error,
        ),
        (size, version, outcome),
    ) = raw;
    Ok(Task {
        job_id,
        task_no,
        input: NewTask {
            shard,
            shards,
            files: parse_list("files", &files)?,
            size,
            version,
        },
        state: parse_state(&state)?,
        attempts,
        not_before,
        owner,
        started_at,
        finished_at,
        rows_read,
        rows_rejected,
        rows_duplicate,
        rejections: serde_json::from_str(&rejections).unwrap_or_default(),
        last_error,
        outcome,
    })
}

type RawJob = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    String,
);

fn raw_job(r: &Row<'_>) -> rusqlite::Result<RawJob> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    ))
}

fn read_job(conn: &Connection, id: i64) -> Result<Option<Job>> {
    let raw = conn
        .query_row(
            &format!("SELECT {JOB_COLUMNS} FROM tally_jobs WHERE id = ?1"),
            [id],
            raw_job,
        )
        .optional()
        .map_err(lite("job read"))?;
    let Some((
        id,
        state,
        source,
        format,
        from,
        to,
        merchants,
        schedule,
        created_at,
        started_at,
        finished_at,
        keys_written,
        last_error,
        kind,
    )) = raw
    else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tally_tasks WHERE job_id = ?1 ORDER BY task_no"
        ))
        .map_err(lite("task read"))?;
    let tasks = stmt
        .query_map([id], raw_task)
        .map_err(lite("task read"))?
        .map(|r| r.map_err(lite("task read")).and_then(task))
        .collect::<Result<Vec<_>>>()?;
    let after: Vec<(i64, String)> = conn
        .prepare_cached("SELECT a.id, a.state FROM tally_job_deps d JOIN tally_jobs a ON a.id = d.after_id WHERE d.job_id = ?1 ORDER BY a.id")
        .and_then(|mut s| s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(lite("dependency read"))?;
    let before: Vec<i64> = conn
        .prepare_cached("SELECT job_id FROM tally_job_deps WHERE after_id = ?1 ORDER BY job_id")
        .and_then(|mut s| s.query_map([id], |r| r.get(0))?.collect())
        .map_err(lite("dependency read"))?;
    Ok(Some(Job {
        id,
        kind: parse_kind(&kind)?,
        after: after
            .into_iter()
            .map(|(job_id, state)| {
                Ok(Dependency {
                    job_id,
                    state: parse_state(&state)?,
                })
            })
            .collect::<Result<_>>()?,
        before,
        state: parse_state(&state)?,
        source,
        format,
        scope: Scope {
            from: parse_day("day_from", &from)?,
            to: parse_day("day_to", &to)?,
            merchants: parse_list("merchants", &merchants)?,
        },
        schedule,
        created_at,
        started_at,
        finished_at,
        keys_written,
        last_error,
        tasks,
    }))
}

fn insert_job(tx: &Transaction<'_>, new: &NewJob, now: i64) -> Result<i64> {
    let mut after = Vec::with_capacity(new.after.len());
    for &id in &new.after {
        let state: Option<String> = tx
            .query_row("SELECT state FROM tally_jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(lite("dependency read"))?;
        after.push((id, state.map(|s| parse_state(&s)).transpose()?));
    }
    check_after(&after).map_err(StoreError::Refused)?;
    tx.execute(
        "INSERT INTO tally_jobs (state, source, format, day_from, day_to, merchants, schedule, created_at, kind)
         VALUES ('pending', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![new.source, new.format, new.scope.from.to_string(), new.scope.to.to_string(), json_list(&new.scope.merchants), new.schedule, now, new.kind.as_str()],
    )
    .map_err(lite("job insert"))?;
    let id = tx.last_insert_rowid();
    for (no, t) in new.tasks.iter().enumerate() {
        tx.execute(
            "INSERT INTO tally_tasks (job_id, task_no, shard, shards, files, state, size, version) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
            params![id, no as i32, t.shard, t.shards, json_list(&t.files), t.size, t.version],
        )
        .map_err(lite("task insert"))?;
    }
    let mut after = new.after.clone();
    after.sort_unstable();
    after.dedup();
    for after_id in after {
        tx.execute(
            "INSERT INTO tally_job_deps (job_id, after_id) VALUES (?1, ?2)",
            params![id, after_id],
        )
        .map_err(lite("dependency insert"))?;
    }
    Ok(id)
}

/// A job may start once every job it waits on has succeeded.
const READY: &str = "NOT EXISTS (SELECT 1 FROM tally_job_deps d JOIN tally_jobs a ON a.id = d.after_id WHERE d.job_id = j.id AND a.state <> 'succeeded')";

/// Fails the job and stops its other tasks, dropping its computed rows.
fn fail_job(tx: &Transaction<'_>, job_id: i64, error: &str, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE tally_jobs SET state = 'failed', finished_at = ?2, last_error = ?3 WHERE id = ?1 AND state IN ('pending', 'running')",
        params![job_id, now, error],
    )
    .map_err(lite("job fail"))?;
    stop_tasks(tx, job_id, now)
}

fn stop_tasks(tx: &Transaction<'_>, job_id: i64, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE tally_tasks SET state = 'cancelled', finished_at = ?2 WHERE job_id = ?1 AND state IN ('pending', 'running')",
        params![job_id, now],
    )
    .map_err(lite("task stop"))?;
    tx.execute(
        "DELETE FROM tally_backfill_rows WHERE job_id = ?1",
        [job_id],
    )
    .map_err(lite("job rows delete"))?;
    Ok(())
}

/// The next runnable task, read outside any write transaction.
fn next_task(conn: &Connection, now: i64) -> Result<Option<(i64, i32)>> {
    conn.query_row(
        &format!(
            "SELECT t.job_id, t.task_no FROM tally_tasks t JOIN tally_jobs j ON j.id = t.job_id
             WHERE j.state IN ('pending', 'running') AND {READY}
               AND ((t.state = 'pending' AND t.not_before <= ?1) OR (t.state = 'running' AND t.lease_until < ?1))
             ORDER BY t.job_id, t.task_no LIMIT 1"
        ),
        [now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(lite("task claim"))
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(lite("begin"))
}

impl SqliteStore {
    pub(crate) async fn create_job(&self, new: &NewJob, now: i64) -> Result<i64> {
        let new = new.clone();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let id = insert_job(&tx, &new, now)?;
            tx.commit().map_err(lite("commit"))?;
            Ok(id)
        })
        .await
    }

    pub(crate) async fn job(&self, id: i64) -> Result<Option<Job>> {
        self.with(move |conn| read_job(conn, id)).await
    }

    pub(crate) async fn jobs(&self, limit: i64) -> Result<Vec<Job>> {
        self.with(move |conn| {
            let ids: Vec<i64> = conn
                .prepare("SELECT id FROM tally_jobs ORDER BY id DESC LIMIT ?1")
                .and_then(|mut s| s.query_map([limit], |r| r.get(0))?.collect())
                .map_err(lite("job list"))?;
            let mut jobs = Vec::new();
            for id in ids {
                jobs.extend(read_job(conn, id)?);
            }
            Ok(jobs)
        })
        .await
    }

    pub(crate) async fn cancel_job(&self, id: i64, now: i64) -> Result<Option<(State, bool)>> {
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let cancelled = tx
                .execute(
                    "UPDATE tally_jobs SET state = 'cancelled', finished_at = ?2, last_error = 'cancelled by an operator'
                     WHERE id = ?1 AND state IN ('pending', 'running')",
                    params![id, now],
                )
                .map_err(lite("job cancel"))?;
            if cancelled == 1 {
                stop_tasks(&tx, id, now)?;
            }
            let state: Option<String> =
                tx.query_row("SELECT state FROM tally_jobs WHERE id = ?1", [id], |r| r.get(0)).optional().map_err(lite("job read"))?;
            tx.commit().map_err(lite("commit"))?;
            state.map(|s| Ok((parse_state(&s)?, cancelled == 1))).transpose()
        })
        .await
    }

    pub(crate) async fn claim_task(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Task>> {
        let owner = owner.to_owned();
        self.with(move |conn| {
            // Look first without the write lock: runners poll often, and an
            // idle poll must not queue behind (or hold up) claims and flushes.
            if next_task(conn, now)?.is_none() {
                return Ok(None);
            }
            let tx = immediate(conn)?;
            let Some((job_id, task_no)) = next_task(&tx, now)? else {
                return Ok(None);
            };
            let raw = tx
                .query_row(
                    &format!(
                        "UPDATE tally_tasks SET state = 'running', attempts = attempts + 1, owner = ?3, started_at = ?4,
                             finished_at = NULL, lease_until = ?5,
                             last_error = CASE WHEN state = 'running' THEN 'its runner stopped (lease expired)' ELSE last_error END
                         WHERE job_id = ?1 AND task_no = ?2 RETURNING {TASK_COLUMNS}"
                    ),
                    params![job_id, task_no, owner, now, lease_until],
                    raw_task,
                )
                .map_err(lite("task claim"))?;
            tx.execute(
                "UPDATE tally_jobs SET state = 'running', started_at = COALESCE(started_at, ?2) WHERE id = ?1 AND state = 'pending'",
                params![job_id, now],
            )
            .map_err(lite("job start"))?;
            tx.commit().map_err(lite("commit"))?;
            task(raw).map(Some)
        })
        .await
    }

    pub(crate) async fn renew_task(
        &self,
        job_id: i64,
        task_no: i32,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool> {
        let owner = owner.to_owned();
        self.with(move |conn| {
            let n = conn
                .execute(
                    "UPDATE tally_tasks SET lease_until = ?4 WHERE job_id = ?1 AND task_no = ?2 AND owner = ?3 AND state = 'running'",
                    params![job_id, task_no, owner, lease_until],
                )
                .map_err(lite("task renew"))?;
            Ok(n == 1)
        })
        .await
    }

    pub(crate) async fn finish_task(
        &self,
        job_id: i64,
        task_no: i32,
        owner: &str,
        result: &TaskResult,
        now: i64,
    ) -> Result<bool> {
        let (owner, result) = (owner.to_owned(), result.clone());
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let mine = tx
                .execute(
                    "UPDATE tally_tasks SET state = 'succeeded', finished_at = ?4, rows_read = ?5, rows_rejected = ?6,
                         rows_duplicate = ?7, rejections = ?8, last_error = NULL
                     WHERE job_id = ?1 AND task_no = ?2 AND owner = ?3 AND state = 'running'",
                    params![job_id, task_no, owner, now, result.rows_read, result.rows_rejected, result.rows_duplicate, result.rejections.to_string()],
                )
                .map_err(lite("task finish"))?;
            if mine != 1 {
                return Ok(false);
            }
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO tally_backfill_rows (job_id, task_no, merchant_id, currency, day, sales_amount, sales_count,
                         refund_amount, refund_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(lite("task rows insert"))?;
            for (key, sums) in &result.totals {
                insert
                    .execute(params![
                        job_id,
                        task_no,
                        key.merchant_id,
                        key.currency,
                        key.day.to_string(),
                        sums.sales_amount.to_string(),
                        sums.sales_count,
                        sums.refund_amount.to_string(),
                        sums.refund_count
                    ])
                    .map_err(lite("task rows insert"))?;
            }
            drop(insert);
            tx.commit().map_err(lite("commit"))?;
            Ok(true)
        })
        .await
    }

    pub(crate) async fn fail_task(
        &self,
        job_id: i64,
        task_no: i32,
        owner: &str,
        error: &str,
        now: i64,
        retry_at: Option<i64>,
    ) -> Result<()> {
        let (owner, error) = (owner.to_owned(), error.to_owned());
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let state = if retry_at.is_some() { "pending" } else { "failed" };
            let mine = tx
                .execute(
                    "UPDATE tally_tasks SET state = ?4, finished_at = ?5, not_before = ?6, last_error = ?7
                     WHERE job_id = ?1 AND task_no = ?2 AND owner = ?3 AND state = 'running'",
                    params![job_id, task_no, owner, state, now, retry_at.unwrap_or(0), error],
                )
                .map_err(lite("task fail"))?;
            if mine == 1 && retry_at.is_none() {
                fail_job(&tx, job_id, &format!("task {task_no} ran out of attempts: {error}"), now)?;
            }
            tx.commit().map_err(lite("commit"))
        })
        .await
    }

    pub(crate) async fn complete_jobs(&self, now: i64) -> Result<Vec<i64>> {
        self.with(move |conn| {
            let ready: Vec<i64> = conn
                .prepare(
                    "SELECT id FROM tally_jobs j WHERE state = 'running'
                       AND NOT EXISTS (SELECT 1 FROM tally_tasks t WHERE t.job_id = j.id AND t.state <> 'succeeded')
                     ORDER BY id",
                )
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(lite("job scan"))?;
            let mut done = Vec::new();
            for id in ready {
                let tx = immediate(conn)?;
                let scope: Option<(String, String, String, String)> = tx
                    .query_row(
                        "UPDATE tally_jobs SET state = 'succeeded', finished_at = ?2 WHERE id = ?1 AND state = 'running'
                         RETURNING day_from, day_to, merchants, kind",
                        params![id, now],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()
                    .map_err(lite("job complete"))?;
                let Some((from, to, merchants, kind)) = scope else {
                    continue;
                };
                if parse_kind(&kind)? == Kind::Import {
                    // Each file's totals committed with the file; nothing to swap in.
                    tx.execute(
                        "UPDATE tally_jobs SET keys_written = (SELECT COALESCE(SUM(keys_written), 0) FROM tally_imports
                             WHERE job_id = ?1 AND state = 'imported') WHERE id = ?1",
                        [id],
                    )
                    .map_err(lite("job complete"))?;
                    tx.commit().map_err(lite("commit"))?;
                    done.push(id);
                    continue;
                }
                tx.execute(
                    "DELETE FROM merchant_sales WHERE day >= ?1 AND day < ?2
                       AND (json_array_length(?3) = 0 OR merchant_id IN (SELECT value FROM json_each(?3)))",
                    params![from, to, merchants],
                )
                .map_err(lite("range delete"))?;
                let rows = {
                    let mut stmt = tx
                        .prepare(
                            "SELECT merchant_id, currency, day, sales_amount, sales_count, refund_amount, refund_count
                             FROM tally_backfill_rows WHERE job_id = ?1
                               -- Only the scope just deleted: a row outside it would add to live totals.
                               AND day >= ?2 AND day < ?3
                               AND (json_array_length(?4) = 0 OR merchant_id IN (SELECT value FROM json_each(?4)))",
                        )
                        .map_err(lite("job rows read"))?;
                    let raw = stmt
                        .query_map(params![id, from, to, merchants], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, i64>(4)?, r.get::<_, String>(5)?, r.get::<_, i64>(6)?))
                        })
                        .map_err(lite("job rows read"))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(lite("job rows read"))?;
                    raw.into_iter()
                        .map(|(m, c, d, sa, sc, ra, rc)| parse_row(m, c, &d, [&sa, &ra], [sc, rc]))
                        .collect::<Result<schemas::Totals>>()?
                };
                upsert(&tx, &rows)?;
                tx.execute("UPDATE tally_jobs SET keys_written = ?2 WHERE id = ?1", params![id, rows.len() as i64])
                    .map_err(lite("job complete"))?;
                tx.execute("DELETE FROM tally_backfill_rows WHERE job_id = ?1", [id]).map_err(lite("job rows delete"))?;
                tx.commit().map_err(lite("commit"))?;
                done.push(id);
            }
            Ok(done)
        })
        .await
    }

    pub(crate) async fn add_schedule(&self, s: &Schedule) -> Result<()> {
        let s = s.clone();
        self.with(move |conn| {
            conn.execute(
                &format!("INSERT INTO tally_schedules ({SCHEDULE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![s.name, s.cron, s.source, s.format, s.day_range, json_list(&s.merchants), s.created_at, s.last_due],
            )
            .map_err(lite("schedule insert"))?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn schedules(&self) -> Result<Vec<Schedule>> {
        /// A `tally_schedules` row as stored: the merchant list still JSON text.
        type Row = (String, String, String, String, String, String, i64, i64);
        self.with(|conn| {
            let raw: Vec<Row> = conn
                .prepare(&format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM tally_schedules ORDER BY name"
                ))
                .and_then(|mut s| {
                    s.query_map([], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                        ))
                    })?
                    .collect()
                })
                .map_err(lite("schedule read"))?;
            raw.into_iter()
                .map(
                    |(name, cron, source, format, day_range, merchants, created_at, last_due)| {
                        Ok(Schedule {
                            name,
                            cron,
                            source,
                            format,
                            day_range,
                            merchants: parse_list("merchants", &merchants)?,
                            created_at,
                            last_due,
                        })
                    },
                )
                .collect()
        })
        .await
    }

    pub(crate) async fn remove_schedule(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.with(move |conn| {
            Ok(conn
                .execute("DELETE FROM tally_schedules WHERE name = ?1", [name])
                .map_err(lite("schedule delete"))?
                == 1)
        })
        .await
    }

    pub(crate) async fn fire_schedule(
        &self,
        name: &str,
        previous: i64,
        due: i64,
        new: &NewJob,
        now: i64,
    ) -> Result<Option<i64>> {
        let (name, new) = (name.to_owned(), new.clone());
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let moved = tx
                .execute(
                    "UPDATE tally_schedules SET last_due = ?3 WHERE name = ?1 AND last_due = ?2",
                    params![name, previous, due],
                )
                .map_err(lite("schedule fire"))?;
            if moved != 1 {
                return Ok(None);
            }
            let id = insert_job(&tx, &new, now)?;
            tx.commit().map_err(lite("commit"))?;
            Ok(Some(id))
        })
        .await
    }

    pub(crate) async fn queue_import(
        &self,
        new: &NewJob,
        requeue: Requeue,
        now: i64,
    ) -> Result<Queued> {
        let new = new.clone();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let mut files = Vec::with_capacity(new.tasks.len());
            let mut tasks = Vec::new();
            for t in &new.tasks {
                let location = &t.files[0];
                let seen: Option<(String, i64, String)> = tx
                    .query_row(
                        "SELECT i.state, i.job_id, j.state FROM tally_imports i JOIN tally_jobs j ON j.id = i.job_id
                         WHERE i.location = ?1 AND i.size = ?2 AND i.version = ?3",
                        params![location, t.size, t.version.clone().unwrap_or_default()],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(lite("import read"))?;
                let reason = match seen {
                    None => None,
                    Some((state, job_id, job_state)) => skip_reason(&state, job_id, parse_state(&job_state)?, requeue),
                };
                if reason.is_none() {
                    tasks.push(t.clone());
                }
                files.push(QueuedFile { location: location.clone(), queued: reason.is_none(), reason });
            }
            if tasks.is_empty() {
                return Ok(Queued { job_id: None, files });
            }
            let job = NewJob { tasks, ..new };
            let id = insert_job(&tx, &job, now)?;
            for (no, t) in job.tasks.iter().enumerate() {
                tx.execute(
                    "INSERT INTO tally_imports (location, size, version, state, job_id, task_no, queued_at) VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)
                     ON CONFLICT (location, size, version) DO UPDATE SET state = 'queued', job_id = ?4, task_no = ?5, queued_at = ?6
                     WHERE tally_imports.state <> 'imported'",
                    params![t.files[0], t.size, t.version.clone().unwrap_or_default(), id, no as i32, now],
                )
                .map_err(lite("import queue"))?;
            }
            tx.commit().map_err(lite("commit"))?;
            Ok(Queued { job_id: Some(id), files })
        })
        .await
    }

    pub(crate) async fn finish_import(
        &self,
        task: &Task,
        owner: &str,
        file: &FileVersion,
        read: Option<(&TaskResult, Option<&str>)>,
        now: i64,
    ) -> Result<ImportOutcome> {
        let (task, owner, file) = (task.clone(), owner.to_owned(), file.clone());
        let (result, digest) = (
            read.map(|r| r.0.clone()),
            read.and_then(|r| r.1.map(str::to_owned)),
        );
        self.with(move |conn| {
            // IMMEDIATE: the whole judgement runs under the write lock, so two
            // versions of one file can never both be imported.
            let tx = immediate(conn)?;
            let (job_id, task_no) = (task.job_id, task.task_no);
            let mine: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM tally_tasks WHERE job_id = ?1 AND task_no = ?2 AND owner = ?3 AND state = 'running'",
                    params![job_id, task_no, owner],
                    |r| r.get(0),
                )
                .optional()
                .map_err(lite("task read"))?;
            if mine.is_none() {
                return Ok(ImportOutcome::NotMine);
            }
            let imported: Option<(i64, i64, String, Option<String>)> = tx
                .query_row(
                    "SELECT job_id, size, version, digest FROM tally_imports WHERE location = ?1 AND state = 'imported'",
                    [&file.location],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(lite("import read"))?;
            let outcome = match (judge_import(&file, digest.as_deref(), imported), &result) {
                (Some(judged), _) => judged,
                (None, None) => ImportOutcome::Superseded,
                (None, Some(result)) => {
                    upsert(&tx, &result.totals)?;
                    let keys = result.totals.len() as i64;
                    // An upsert, so the file's record commits with its totals even
                    // if its queued row were missing.
                    tx.execute(
                        "INSERT INTO tally_imports (location, size, version, state, job_id, task_no, queued_at, imported_at,
                             rows_read, rows_rejected, rows_duplicate, keys_written, digest)
                         VALUES (?1, ?2, ?3, 'imported', ?9, ?10, ?4, ?4, ?5, ?6, ?7, ?8, ?11)
                         ON CONFLICT (location, size, version) DO UPDATE SET state = 'imported', imported_at = ?4, rows_read = ?5,
                             rows_rejected = ?6, rows_duplicate = ?7, keys_written = ?8, job_id = ?9, task_no = ?10, digest = ?11",
                        params![file.location, file.size, file.version, now, result.rows_read, result.rows_rejected, result.rows_duplicate, keys, job_id, task_no, digest],
                    )
                    .map_err(lite("import record"))?;
                    ImportOutcome::Imported { keys }
                }
            };
            let row_state = row_state(&outcome);
            if let Some(state) = row_state {
                tx.execute(
                    "UPDATE tally_imports SET state = ?4 WHERE location = ?1 AND size = ?2 AND version = ?3 AND state = 'queued'",
                    params![file.location, task.input.size, task.input.version.clone().unwrap_or_default(), state],
                )
                .map_err(lite("import record"))?;
            }
            if let ImportOutcome::Conflict { message } = &outcome {
                tx.execute(
                    "UPDATE tally_tasks SET state = 'failed', finished_at = ?3, outcome = 'conflict', last_error = ?4 WHERE job_id = ?1 AND task_no = ?2",
                    params![job_id, task_no, now, message],
                )
                .map_err(lite("task fail"))?;
                fail_job(&tx, job_id, message, now)?;
            } else {
                let counts = result.filter(|_| matches!(outcome, ImportOutcome::Imported { .. })).unwrap_or_default();
                tx.execute(
                    "UPDATE tally_tasks SET state = 'succeeded', finished_at = ?3, rows_read = ?4, rows_rejected = ?5, rows_duplicate = ?6,
                         rejections = ?7, last_error = NULL, outcome = ?8
                     WHERE job_id = ?1 AND task_no = ?2",
                    params![job_id, task_no, now, counts.rows_read, counts.rows_rejected, counts.rows_duplicate, counts.rejections.to_string(), outcome.describe()],
                )
                .map_err(lite("task finish"))?;
            }
            tx.commit().map_err(lite("commit"))?;
            Ok(outcome)
        })
        .await
    }

    pub(crate) async fn known_versions(&self, files: &[FileVersion]) -> Result<Vec<bool>> {
        let files = files.to_vec();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT 1 FROM tally_imports WHERE location = ?1 AND size = ?2 AND version = ?3")
                .map_err(lite("import read"))?;
            files
                .iter()
                .map(|f| stmt.exists(params![f.location, f.size, f.version]).map_err(lite("import read")))
                .collect()
        })
        .await
    }

    pub(crate) async fn cancel_orphans(&self, now: i64) -> Result<Vec<(i64, String)>> {
        self.with(move |conn| {
            let orphans = |conn: &Connection| -> Result<Vec<(i64, i64, String)>> {
                conn.prepare(
                    "SELECT j.id, MIN(a.id), a.state FROM tally_jobs j
                     JOIN tally_job_deps d ON d.job_id = j.id JOIN tally_jobs a ON a.id = d.after_id
                     WHERE j.state = 'pending' AND a.state IN ('failed', 'cancelled') GROUP BY j.id ORDER BY j.id",
                )
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
                .map_err(lite("dependency scan"))
            };
            // Look first without the write lock: runners poll often.
            if orphans(conn)?.is_empty() {
                return Ok(Vec::new());
            }
            let tx = immediate(conn)?;
            let mut cancelled = Vec::new();
            loop {
                let found = orphans(&tx)?;
                if found.is_empty() {
                    break;
                }
                for (id, after, state) in found {
                    let reason = format!("cancelled: job {after}, which it waits on, {state}");
                    tx.execute(
                        "UPDATE tally_jobs SET state = 'cancelled', finished_at = ?2, last_error = ?3 WHERE id = ?1 AND state = 'pending'",
                        params![id, now, reason],
                    )
                    .map_err(lite("job cancel"))?;
                    stop_tasks(&tx, id, now)?;
                    cancelled.push((id, reason));
                }
            }
            tx.commit().map_err(lite("commit"))?;
            Ok(cancelled)
        })
        .await
    }
}
