//! Backfill jobs, tasks and schedules on PostgreSQL.

use tokio_postgres::{GenericClient, Row};

use super::{Columns, PgStore};
use crate::error::{pg, Result};
use crate::jobs::{
    check_after, json_list, judge_import, parse_day, parse_kind, parse_list, parse_state,
    row_state, skip_reason, Dependency, FileVersion, ImportOutcome, Job, NewJob, Queued,
    QueuedFile, Requeue, Schedule, Scope, State, Task, TaskResult,
};
use crate::StoreError;

const TASK_COLUMNS: &str = "job_id, task_no, shard, shards, files, state, attempts, not_before, owner, started_at,
    finished_at, rows_read, rows_rejected, rows_duplicate, rejections, last_error, size, version, outcome";
const JOB_COLUMNS: &str =
    "id, state, source, format, day_from, day_to, merchants, schedule, created_at, started_at, finished_at, keys_written, last_error, kind";
const SCHEDULE_COLUMNS: &str =
    "name, cron, source, format, day_range, merchants, created_at, last_due";

fn task(r: &Row) -> Result<Task> {
    Ok(Task {
        job_id: r.get(0),
        task_no: r.get(1),
        input: crate::jobs::NewTask {
            shard: r.get(2),
            shards: r.get(3),
            files: parse_list("files", r.get(4))?,
            size: r.get(16),
            version: r.get(17),
        },
        state: parse_state(r.get(5))?,
        attempts: r.get(6),
        not_before: r.get(7),
        owner: r.get(8),
        started_at: r.get(9),
        finished_at: r.get(10),
        rows_read: r.get(11),
        rows_rejected: r.get(12),
        rows_duplicate: r.get(13),
        rejections: serde_json::from_str(r.get(14)).unwrap_or_default(),
        last_error: r.get(15),
        outcome: r.get(18),
    })
}

fn job(r: &Row, tasks: Vec<Task>, after: Vec<Dependency>, before: Vec<i64>) -> Result<Job> {
    Ok(Job {
        id: r.get(0),
        kind: parse_kind(r.get(13))?,
        state: parse_state(r.get(1))?,
        source: r.get(2),
        format: r.get(3),
        scope: Scope {
            from: parse_day("day_from", r.get(4))?,
            to: parse_day("day_to", r.get(5))?,
            merchants: parse_list("merchants", r.get(6))?,
        },
        schedule: r.get(7),
        created_at: r.get(8),
        started_at: r.get(9),
        finished_at: r.get(10),
        keys_written: r.get(11),
        last_error: r.get(12),
        tasks,
        after,
        before,
    })
}

fn schedule(r: &Row) -> Result<Schedule> {
    Ok(Schedule {
        name: r.get(0),
        cron: r.get(1),
        source: r.get(2),
        format: r.get(3),
        day_range: r.get(4),
        merchants: parse_list("merchants", r.get(5))?,
        created_at: r.get(6),
        last_due: r.get(7),
    })
}

async fn insert_job(tx: &impl GenericClient, new: &NewJob, now: i64) -> Result<i64> {
    let mut after = Vec::with_capacity(new.after.len());
    for &id in &new.after {
        // FOR SHARE: the dependency cannot end between this check and the commit unseen.
        let state = tx
            .query_opt(
                "SELECT state FROM tally_jobs WHERE id = $1 FOR SHARE",
                &[&id],
            )
            .await
            .map_err(pg("dependency read"))?;
        after.push((id, state.map(|r| parse_state(r.get(0))).transpose()?));
    }
    check_after(&after).map_err(StoreError::Refused)?;
    let row = tx
        .query_one(
            "INSERT INTO tally_jobs (state, source, format, day_from, day_to, merchants, schedule, created_at, kind)
             VALUES ('pending', $1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &new.source,
                &new.format,
                &new.scope.from.to_string(),
                &new.scope.to.to_string(),
                &json_list(&new.scope.merchants),
                &new.schedule,
                &now,
                &new.kind.as_str(),
            ],
        )
        .await
        .map_err(pg("job insert"))?;
    let id: i64 = row.get(0);
    for (no, t) in new.tasks.iter().enumerate() {
        tx.execute(
            "INSERT INTO tally_tasks (job_id, task_no, shard, shards, files, state, size, version) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)",
            &[&id, &(no as i32), &t.shard, &t.shards, &json_list(&t.files), &t.size, &t.version],
        )
        .await
        .map_err(pg("task insert"))?;
    }
    let mut after = new.after.clone();
    after.sort_unstable();
    after.dedup();
    for after_id in after {
        tx.execute(
            "INSERT INTO tally_job_deps (job_id, after_id) VALUES ($1, $2)",
            &[&id, &after_id],
        )
        .await
        .map_err(pg("dependency insert"))?;
    }
    Ok(id)
}

/// Fails the job and stops its other tasks, dropping its computed rows.
async fn fail_job(tx: &impl GenericClient, job_id: i64, error: &str, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE tally_jobs SET state = 'failed', finished_at = $2, last_error = $3 WHERE id = $1 AND state IN ('pending', 'running')",
        &[&job_id, &now, &error],
    )
    .await
    .map_err(pg("job fail"))?;
    stop_tasks(tx, job_id, now).await
}

async fn stop_tasks(tx: &impl GenericClient, job_id: i64, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE tally_tasks SET state = 'cancelled', finished_at = $2 WHERE job_id = $1 AND state IN ('pending', 'running')",
        &[&job_id, &now],
    )
    .await
    .map_err(pg("task stop"))?;
    tx.execute(
        "DELETE FROM tally_backfill_rows WHERE job_id = $1",
        &[&job_id],
    )
    .await
    .map_err(pg("job rows delete"))?;
    Ok(())
}

impl PgStore {
    pub(crate) async fn create_job(&self, new: &NewJob, now: i64) -> Result<i64> {
        let mut guard = self.client().await?;
        let tx = guard
            .as_mut()
            .expect("connected")
            .transaction()
            .await
            .map_err(pg("begin"))?;
        let id = insert_job(&tx, new, now).await?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(id)
    }

    pub(crate) async fn job(&self, id: i64) -> Result<Option<Job>> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected");
        let Some(row) = client
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM tally_jobs WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg("job read"))?
        else {
            return Ok(None);
        };
        let tasks = client
            .query(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM tally_tasks WHERE job_id = $1 ORDER BY task_no"
                ),
                &[&id],
            )
            .await
            .map_err(pg("task read"))?;
        let after = client
            .query("SELECT a.id, a.state FROM tally_job_deps d JOIN tally_jobs a ON a.id = d.after_id WHERE d.job_id = $1 ORDER BY a.id", &[&id])
            .await
            .map_err(pg("dependency read"))?
            .iter()
            .map(|r| Ok(Dependency { job_id: r.get(0), state: parse_state(r.get(1))? }))
            .collect::<Result<_>>()?;
        let before = client
            .query(
                "SELECT job_id FROM tally_job_deps WHERE after_id = $1 ORDER BY job_id",
                &[&id],
            )
            .await
            .map_err(pg("dependency read"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Some(job(
            &row,
            tasks.iter().map(task).collect::<Result<_>>()?,
            after,
            before,
        )?))
    }

    pub(crate) async fn jobs(&self, limit: i64) -> Result<Vec<Job>> {
        let ids: Vec<i64> = {
            let guard = self.client().await?;
            let rows = guard
                .as_ref()
                .expect("connected")
                .query(
                    "SELECT id FROM tally_jobs ORDER BY id DESC LIMIT $1",
                    &[&limit],
                )
                .await
                .map_err(pg("job list"))?;
            rows.iter().map(|r| r.get(0)).collect()
        };
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.extend(self.job(id).await?);
        }
        Ok(jobs)
    }

    pub(crate) async fn cancel_job(&self, id: i64, now: i64) -> Result<Option<(State, bool)>> {
        let mut guard = self.client().await?;
        let tx = guard
            .as_mut()
            .expect("connected")
            .transaction()
            .await
            .map_err(pg("begin"))?;
        let cancelled = tx
            .execute(
                "UPDATE tally_jobs SET state = 'cancelled', finished_at = $2, last_error = 'cancelled by an operator'
                 WHERE id = $1 AND state IN ('pending', 'running')",
                &[&id, &now],
            )
            .await
            .map_err(pg("job cancel"))?;
        if cancelled == 1 {
            stop_tasks(&tx, id, now).await?;
        }
        let state = tx
            .query_opt("SELECT state FROM tally_jobs WHERE id = $1", &[&id])
            .await
            .map_err(pg("job read"))?;
        tx.commit().await.map_err(pg("commit"))?;
        state
            .map(|r| Ok((parse_state(r.get(0))?, cancelled == 1)))
            .transpose()
    }

    pub(crate) async fn claim_task(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Task>> {
        let mut guard = self.client().await?;
        let tx = guard
            .as_mut()
            .expect("connected")
            .transaction()
            .await
            .map_err(pg("begin"))?;
        let row = tx
            .query_opt(
                &format!(
                    "WITH next AS (
                         SELECT t.job_id, t.task_no FROM tally_tasks t JOIN tally_jobs j ON j.id = t.job_id
                         WHERE j.state IN ('pending', 'running')
                           AND NOT EXISTS (SELECT 1 FROM tally_job_deps d JOIN tally_jobs a ON a.id = d.after_id
                                           WHERE d.job_id = j.id AND a.state <> 'succeeded')
                           AND ((t.state = 'pending' AND t.not_before <= $2) OR (t.state = 'running' AND t.lease_until < $2))
                         ORDER BY t.job_id, t.task_no LIMIT 1
                         FOR UPDATE OF t SKIP LOCKED)
                     UPDATE tally_tasks t SET state = 'running', attempts = t.attempts + 1, owner = $1,
                         started_at = $2, finished_at = NULL, lease_until = $3,
                         last_error = CASE WHEN t.state = 'running' THEN 'its runner stopped (lease expired)' ELSE t.last_error END
                     FROM next WHERE t.job_id = next.job_id AND t.task_no = next.task_no
                     RETURNING {}",
                    TASK_COLUMNS.split(',').map(|c| format!("t.{}", c.trim())).collect::<Vec<_>>().join(", ")
                ),
                &[&owner, &now, &lease_until],
            )
            .await
            .map_err(pg("task claim"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let task = task(&row)?;
        tx.execute(
            "UPDATE tally_jobs SET state = 'running', started_at = COALESCE(started_at, $2) WHERE id = $1 AND state = 'pending'",
            &[&task.job_id, &now],
        )
        .await
        .map_err(pg("job start"))?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(Some(task))
    }

    pub(crate) async fn renew_task(
        &self,
        job_id: i64,
        task_no: i32,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool> {
        let guard = self.client().await?;
        let n = guard
            .as_ref()
            .expect("connected")
            .execute(
                "UPDATE tally_tasks SET lease_until = $4 WHERE job_id = $1 AND task_no = $2 AND owner = $3 AND state = 'running'",
                &[&job_id, &task_no, &owner, &lease_until],
            )
            .await
            .map_err(pg("task renew"))?;
        Ok(n == 1)
    }

    pub(crate) async fn finish_task(
        &self,
        job_id: i64,
        task_no: i32,
        owner: &str,
        result: &TaskResult,
        now: i64,
    ) -> Result<bool> {
        let mut guard = self.client().await?;
        let tx = guard
            .as_mut()
            .expect("connected")
            .transaction()
            .await
            .map_err(pg("begin"))?;
        let mine = tx
            .execute(
                "UPDATE tally_tasks SET state = 'succeeded', finished_at = $4, rows_read = $5, rows_rejected = $6,
                     rows_duplicate = $7, rejections = $8, last_error = NULL
                 WHERE job_id = $1 AND task_no = $2 AND owner = $3 AND state = 'running'",
                &[&job_id, &task_no, &owner, &now, &result.rows_read, &result.rows_rejected, &result.rows_duplicate, &result.rejections.to_string()],
            )
            .await
            .map_err(pg("task finish"))?;
        if mine != 1 {
            return Ok(false); // dropped: the transaction rolls back
        }
        let c = Columns::of(&result.totals);
        tx.execute(
            "INSERT INTO tally_backfill_rows (job_id, task_no, merchant_id, currency, day, sales_amount, sales_count, refund_amount, refund_count)
             SELECT $1, $2, u.m, u.c, u.d::date, u.sa::numeric, u.sc, u.ra::numeric, u.rc
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::text[], $9::int8[]) AS u(m, c, d, sa, sc, ra, rc)",
            &[&job_id, &task_no, &c.m, &c.c, &c.d, &c.sa, &c.sc, &c.ra, &c.rc],
        )
        .await
        .map_err(pg("task rows insert"))?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(true)
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
        let mut guard = self.client().await?;
        let tx = guard
            .as_mut()
            .expect("connected")
            .transaction()
            .await
            .map_err(pg("begin"))?;
        let state = if retry_at.is_some() {
            "pending"
        } else {
            "failed"
        };
        let mine = tx
            .execute(
                "UPDATE tally_tasks SET state = $4, finished_at = $5, not_before = $6, last_error = $7
                 WHERE job_id = $1 AND task_no = $2 AND owner = $3 AND state = 'running'",
                &[&job_id, &task_no, &owner, &state, &now, &retry_at.unwrap_or(0), &error],
            )
            .await
            .map_err(pg("task fail"))?;
        if mine == 1 && retry_at.is_none() {
            fail_job(
                &tx,
                job_id,
                &format!("task {task_no} ran out of attempts: {error}"),
                now,
            )
            .await?;
        }
        tx.commit().await.map_err(pg("commit"))
    }

    pub(crate) async fn complete_jobs(&self, now: i64) -> Result<Vec<i64>> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let ready: Vec<i64> = client
            .query(
                "SELECT id FROM tally_jobs j WHERE state = 'running'
                   AND NOT EXISTS (SELECT 1 FROM tally_tasks t WHERE t.job_id = j.id AND t.state <> 'succeeded')
                 ORDER BY id",
                &[],
            )
            .await
            .map_err(pg("job scan"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut done = Vec::new();
        for id in ready {
            let tx = client.transaction().await.map_err(pg("begin"))?;
            // Taking the job's row first makes a concurrent cancel wait, then
            // find the job ended.
            let Some(row) = tx
                .query_opt(
                    "UPDATE tally_jobs SET state = 'succeeded', finished_at = $2 WHERE id = $1 AND state = 'running'
                     RETURNING day_from, day_to, merchants, kind",
                    &[&id, &now],
                )
                .await
                .map_err(pg("job complete"))?
            else {
                continue;
            };
            if parse_kind(row.get(3))? == crate::jobs::Kind::Import {
                // Each file's totals committed with the file; nothing to swap in.
                tx.execute(
                    "UPDATE tally_jobs SET keys_written = (SELECT COALESCE(SUM(keys_written), 0)::bigint FROM tally_imports
                         WHERE job_id = $1 AND state = 'imported') WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(pg("job complete"))?;
                tx.commit().await.map_err(pg("commit"))?;
                done.push(id);
                continue;
            }
            let (from, to): (&str, &str) = (row.get(0), row.get(1));
            let merchants = parse_list("merchants", row.get(2))?;
            tx.execute(
                "DELETE FROM merchant_sales WHERE day >= $1::text::date AND day < $2::text::date
                   AND (cardinality($3::text[]) = 0 OR merchant_id = ANY($3::text[]))",
                &[&from, &to, &merchants],
            )
            .await
            .map_err(pg("range delete"))?;
            // A streamed event committed after the delete adds to the file's totals.
            let written = tx
                .execute(
                    "INSERT INTO merchant_sales AS s (merchant_id, currency, day, sales_amount, sales_count,
                         refund_amount, refund_count, net_amount, updated_at)
                     SELECT merchant_id, currency, day, sales_amount, sales_count, refund_amount, refund_count,
                            sales_amount - refund_amount, now()
                     FROM tally_backfill_rows WHERE job_id = $1
                       -- Only the scope just deleted: a row outside it would add to live totals.
                       AND day >= $2::text::date AND day < $3::text::date
                       AND (cardinality($4::text[]) = 0 OR merchant_id = ANY($4::text[]))
                     ON CONFLICT (merchant_id, currency, day) DO UPDATE SET
                         sales_amount  = s.sales_amount  + EXCLUDED.sales_amount,
                         sales_count   = s.sales_count   + EXCLUDED.sales_count,
                         refund_amount = s.refund_amount + EXCLUDED.refund_amount,
                         refund_count  = s.refund_count  + EXCLUDED.refund_count,
                         net_amount    = s.net_amount    + EXCLUDED.net_amount,
                         updated_at    = EXCLUDED.updated_at",
                    &[&id, &from, &to, &merchants],
                )
                .await
                .map_err(pg("range insert"))?;
            tx.execute(
                "UPDATE tally_jobs SET keys_written = $2 WHERE id = $1",
                &[&id, &(written as i64)],
            )
            .await
            .map_err(pg("job complete"))?;
            tx.execute("DELETE FROM tally_backfill_rows WHERE job_id = $1", &[&id])
                .await
                .map_err(pg("job rows delete"))?;
            tx.commit().await.map_err(pg("commit"))?;
            done.push(id);
        }
        Ok(done)
    }

    pub(crate) async fn add_schedule(&self, s: &Schedule) -> Result<()> {
        let guard = self.client().await?;
        guard
            .as_ref()
            .expect("connected")
            .execute(
                &format!("INSERT INTO tally_schedules ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
                &[&s.name, &s.cron, &s.source, &s.format, &s.day_range, &json_list(&s.merchants), &s.created_at, &s.last_due],
            )
            .await
            .map_err(pg("schedule insert"))?;
        Ok(())
    }

    pub(crate) async fn schedules(&self) -> Result<Vec<Schedule>> {
        let guard = self.client().await?;
        let rows = guard
            .as_ref()
            .expect("connected")
            .query(
                &format!("SELECT {SCHEDULE_COLUMNS} FROM tally_schedules ORDER BY name"),
                &[],
            )
            .await
            .map_err(pg("schedule read"))?;
        rows.iter().map(schedule).collect()
    }

    pub(crate) async fn remove_schedule(&self, name: &str) -> Result<bool> {
        let guard = self.client().await?;
        let n = guard
            .as_ref()
            .expect("connected")
            .execute("DELETE FROM tally_schedules WHERE name = $1", &[&name])
            .await
            .map_err(pg("schedule delete"))?;
        Ok(n == 1)
    }

    pub(crate) async fn fire_schedule(
        &self,
        name: &str,
        previous: i64,
        due: i64,
        new: &NewJob,
        now: i64,
    ) -> Result<Option<i64>> {
        let mut guard = self.client().await?;
        let tx = guard
            .as_mut()
            .expect("connected")
            .transaction()
            .await
            .map_err(pg("begin"))?;
        let moved = tx
            .execute(
                "UPDATE tally_schedules SET last_due = $3 WHERE name = $1 AND last_due = $2",
                &[&name, &previous, &due],
            )
            .await
            .map_err(pg("schedule fire"))?;
        if moved != 1 {
            return Ok(None);
        }
        let id = insert_job(&tx, new, now).await?;
        tx.commit().await.map_err(pg("commit"))?;
        Ok(Some(id))
    }

    pub(crate) async fn queue_import(
        &self,
        new: &NewJob,
        requeue: Requeue,
        now: i64,
    ) -> Result<Queued> {
        let mut guard = self.client().await?;
        let tx = guard
            .as_mut()
            .expect("connected")
            .transaction()
            .await
            .map_err(pg("begin"))?;
        let mut files = Vec::with_capacity(new.tasks.len());
        let mut tasks = Vec::new();
        for t in &new.tasks {
            let location = &t.files[0];
            let version = t.version.clone().unwrap_or_default();
            let seen = tx
                .query_opt(
                    "SELECT i.state, i.job_id, j.state FROM tally_imports i JOIN tally_jobs j ON j.id = i.job_id
                     WHERE i.location = $1 AND i.size = $2 AND i.version = $3",
                    &[location, &t.size, &version],
                )
                .await
                .map_err(pg("import read"))?;
            let reason = match seen {
                None => None,
                Some(r) => skip_reason(r.get(0), r.get(1), parse_state(r.get(2))?, requeue),
            };
            files.push(QueuedFile {
                location: location.clone(),
                queued: reason.is_none(),
                reason,
            });
            if files.last().expect("pushed").queued {
                tasks.push(t.clone());
            }
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
        let id = insert_job(&tx, &job, now).await?;
        for (no, t) in job.tasks.iter().enumerate() {
            tx.execute(
                "INSERT INTO tally_imports (location, size, version, state, job_id, task_no, queued_at) VALUES ($1, $2, $3, 'queued', $4, $5, $6)
                 ON CONFLICT (location, size, version) DO UPDATE SET state = 'queued', job_id = $4, task_no = $5, queued_at = $6
                 WHERE tally_imports.state <> 'imported'",
                &[&t.files[0], &t.size, &t.version.clone().unwrap_or_default(), &id, &(no as i32), &now],
            )
            .await
            .map_err(pg("import queue"))?;
        }
        tx.commit().await.map_err(pg("commit"))?;
        Ok(Queued {
            job_id: Some(id),
            files,
        })
    }

    pub(crate) async fn finish_import(
        &self,
        task: &Task,
        owner: &str,
        file: &FileVersion,
        read: Option<(&TaskResult, Option<&str>)>,
        now: i64,
    ) -> Result<ImportOutcome> {
        let (result, digest) = (read.map(|r| r.0), read.and_then(|r| r.1));
        let mut guard = self.client().await?;
        let tx = guard
            .as_mut()
            .expect("connected")
            .transaction()
            .await
            .map_err(pg("begin"))?;
        let (job_id, task_no) = (task.job_id, task.task_no);
        let mine = tx
            .query_opt(
                "SELECT 1 FROM tally_tasks WHERE job_id = $1 AND task_no = $2 AND owner = $3 AND state = 'running' FOR UPDATE",
                &[&job_id, &task_no, &owner],
            )
            .await
            .map_err(pg("task read"))?;
        if mine.is_none() {
            return Ok(ImportOutcome::NotMine);
        }
        lock_location(&tx, &file.location).await?;
        let imported = tx
            .query_opt("SELECT job_id, size, version, digest FROM tally_imports WHERE location = $1 AND state = 'imported'", &[&file.location])
            .await
            .map_err(pg("import read"))?
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)));
        let planned = task.input.version.clone().unwrap_or_default();
        let outcome = match (judge_import(file, digest, imported), result) {
            (Some(judged), _) => judged,
            (None, None) => ImportOutcome::Superseded,
            (None, Some(result)) => {
                let keys = super::upsert(&tx, &result.totals).await? as i64;
                // An upsert, so the file's record commits with its totals even
                // if its queued row were missing.
                tx.execute(
                    "INSERT INTO tally_imports (location, size, version, state, job_id, task_no, queued_at, imported_at,
                         rows_read, rows_rejected, rows_duplicate, keys_written, digest)
                     VALUES ($1, $2, $3, 'imported', $9, $10, $4, $4, $5, $6, $7, $8, $11)
                     ON CONFLICT (location, size, version) DO UPDATE SET state = 'imported', imported_at = $4, rows_read = $5,
                         rows_rejected = $6, rows_duplicate = $7, keys_written = $8, job_id = $9, task_no = $10, digest = $11",
                    &[&file.location, &file.size, &file.version, &now, &result.rows_read, &result.rows_rejected, &result.rows_duplicate, &keys, &job_id, &task_no, &digest],
                )
                .await
                .map_err(pg("import record"))?;
                ImportOutcome::Imported { keys }
            }
        };
        let row_state = row_state(&outcome);
        if let Some(state) = row_state {
            tx.execute(
                "UPDATE tally_imports SET state = $4 WHERE location = $1 AND size = $2 AND version = $3 AND state = 'queued'",
                &[&file.location, &task.input.size, &planned, &state],
            )
            .await
            .map_err(pg("import record"))?;
        }
        let empty = TaskResult::default();
        let counts = result
            .filter(|_| matches!(outcome, ImportOutcome::Imported { .. }))
            .unwrap_or(&empty);
        if let ImportOutcome::Conflict { message } = &outcome {
            tx.execute(
                "UPDATE tally_tasks SET state = 'failed', finished_at = $3, outcome = 'conflict', last_error = $4 WHERE job_id = $1 AND task_no = $2",
                &[&job_id, &task_no, &now, message],
            )
            .await
            .map_err(pg("task fail"))?;
            fail_job(&tx, job_id, message, now).await?;
        } else {
            tx.execute(
                "UPDATE tally_tasks SET state = 'succeeded', finished_at = $3, rows_read = $4, rows_rejected = $5, rows_duplicate = $6,
                     rejections = $7, last_error = NULL, outcome = $8
                 WHERE job_id = $1 AND task_no = $2",
                &[&job_id, &task_no, &now, &counts.rows_read, &counts.rows_rejected, &counts.rows_duplicate, &counts.rejections.to_string(), &outcome.describe()],
            )
            .await
            .map_err(pg("task finish"))?;
        }
        tx.commit().await.map_err(pg("commit"))?;
        Ok(outcome)
    }

    pub(crate) async fn known_versions(&self, files: &[FileVersion]) -> Result<Vec<bool>> {
        let guard = self.client().await?;
        let l: Vec<&str> = files.iter().map(|f| f.location.as_str()).collect();
        let s: Vec<i64> = files.iter().map(|f| f.size).collect();
        let v: Vec<&str> = files.iter().map(|f| f.version.as_str()).collect();
        let rows = guard
            .as_ref()
            .expect("connected")
            .query(
                "SELECT u.n FROM UNNEST($1::text[], $2::int8[], $3::text[]) WITH ORDINALITY AS u(l, s, v, n)
                 WHERE EXISTS (SELECT 1 FROM tally_imports i WHERE i.location = u.l AND i.size = u.s AND i.version = u.v)",
                &[&l, &s, &v],
            )
            .await
            .map_err(pg("import read"))?;
        let mut known = vec![false; files.len()];
        for r in rows {
            known[r.get::<_, i64>(0) as usize - 1] = true;
        }
        Ok(known)
    }

    pub(crate) async fn cancel_orphans(&self, now: i64) -> Result<Vec<(i64, String)>> {
        let mut guard = self.client().await?;
        let tx = guard
            .as_mut()
            .expect("connected")
            .transaction()
            .await
            .map_err(pg("begin"))?;
        let mut cancelled = Vec::new();
        loop {
            let orphans = tx
                .query(
                    "SELECT DISTINCT ON (j.id) j.id, a.id, a.state FROM tally_jobs j
                     JOIN tally_job_deps d ON d.job_id = j.id JOIN tally_jobs a ON a.id = d.after_id
                     WHERE j.state = 'pending' AND a.state IN ('failed', 'cancelled') ORDER BY j.id, a.id",
                    &[],
                )
                .await
                .map_err(pg("dependency scan"))?;
            if orphans.is_empty() {
                break;
            }
            for r in orphans {
                let (id, after, state): (i64, i64, &str) = (r.get(0), r.get(1), r.get(2));
                let reason = format!("cancelled: job {after}, which it waits on, {state}");
                tx.execute(
                    "UPDATE tally_jobs SET state = 'cancelled', finished_at = $2, last_error = $3 WHERE id = $1 AND state = 'pending'",
                    &[&id, &now, &reason],
                )
                .await
                .map_err(pg("job cancel"))?;
                stop_tasks(&tx, id, now).await?;
                cancelled.push((id, reason));
            }
        }
        tx.commit().await.map_err(pg("commit"))?;
        Ok(cancelled)
    }
}

/// Serialises the transactions that judge one location, so that two
/// versions of a file can never both be imported (the partial unique index
/// `tally_imports_once` is the backstop).
async fn lock_location(tx: &impl GenericClient, location: &str) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&location],
    )
    .await
    .map_err(pg("import lock"))?;
    Ok(())
}
