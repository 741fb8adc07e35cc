//! Backfill jobs and their tasks, kept in the database so that any
//! aggregator can run them and a crash loses nothing.
//!
//! A job is `pending → running → succeeded | failed | cancelled`; so is each
//! task. A task writes its totals into `tally_backfill_rows` when it
//! succeeds; only when every task of a job has succeeded does one
//! transaction replace the job's range of `merchant_sales` with those rows.
//! Times are milliseconds since the Unix epoch, passed in by the caller so
//! that tests control the clock.

use std::fmt;

use schemas::{Day, Totals};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::Store;

/// The state of a job or a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting to start (a task may be waiting for its retry time).
    Pending,
    /// Being worked on.
    Running,
    /// Done: for a job, its rows are in `merchant_sales`.
    Succeeded,
    /// Gave up; for a job, the live table was not touched.
    Failed,
    /// Stopped by an operator; the live table was not touched.
    Cancelled,
}

impl State {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(text: &str) -> Option<State> {
        [State::Pending, State::Running, State::Succeeded, State::Failed, State::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Succeeded, failed or cancelled: nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job recomputes: days `[from, to)`, of these merchants (all when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// First day, inclusive.
    pub from: Day,
    /// Last day, exclusive.
    pub to: Day,
    /// Merchants to recompute; empty means every merchant.
    pub merchants: Vec<String>,
}

impl Scope {
    /// Whether an event of `merchant` on `day` belongs to the scope.
    pub fn contains(&self, merchant: &str, day: Day) -> bool {
        day >= self.from && day < self.to && (self.merchants.is_empty() || self.merchants.binary_search_by(|m| m.as_str().cmp(merchant)).is_ok())
    }
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The source as given (path, glob or URL).
    pub source: String,
    /// `parquet`, `csv` or `ndjson`.
    pub format: String,
    /// Days and merchants (merchants sorted).
    pub scope: Scope,
    /// The schedule that created it, if any.
    pub schedule: Option<String>,
    /// Its tasks.
    pub tasks: Vec<NewTask>,
}

/// A task to create: one merchant-hash shard of the job's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// This task's shard, `0..shards`.
    pub shard: i32,
    /// How many shards the job has.
    pub shards: i32,
    /// The files it reads (fixed when the job is created).
    pub files: Vec<String>,
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// Its job.
    pub job_id: i64,
    /// Its number within the job, from 0.
    pub task_no: i32,
    /// Shard and files.
    #[serde(flatten)]
    pub input: NewTask,
    /// Its state.
    pub state: State,
    /// Attempts started so far.
    pub attempts: i32,
    /// The next attempt may not start before this time.
    pub not_before: i64,
    /// Who runs (or last ran) it.
    pub owner: Option<String>,
    /// When its last attempt started.
    pub started_at: Option<i64>,
    /// When it finished.
    pub finished_at: Option<i64>,
    /// Rows read by the successful attempt.
    pub rows_read: i64,
    /// Rows that broke a rule (never summed).
    pub rows_rejected: i64,
    /// Rows whose `event_id` was already counted.
    pub rows_duplicate: i64,
    /// JSON: rejection counts by field and reason, with examples.
    pub rejections: serde_json::Value,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// A stored job with its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Its id.
    pub id: i64,
    /// Its state.
    pub state: State,
    /// The source as given.
    pub source: String,
    /// The file format.
    pub format: String,
    /// Days and merchants.
    pub scope: Scope,
    /// The schedule that created it.
    pub schedule: Option<String>,
    /// When it was created.
    pub created_at: i64,
    /// When its first task started.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// Rows written into `merchant_sales` by the replace.
    pub keys_written: Option<i64>,
    /// Why it failed, or who cancelled it.
    pub last_error: Option<String>,
    /// Its tasks, by number.
    pub tasks: Vec<Task>,
}

impl Job {
    /// Rows read, rejected and duplicate over all tasks.
    pub fn rows(&self) -> (i64, i64, i64) {
        self.tasks.iter().fold((0, 0, 0), |(r, j, d), t| (r + t.rows_read, j + t.rows_rejected, d + t.rows_duplicate))
    }
}

/// What a successful task attempt computed.
#[derive(Debug, Clone, Default)]
pub struct TaskResult {
    /// Totals of the task's shard within the job's scope.
    pub totals: Totals,
    /// Rows read.
    pub rows_read: i64,
    /// Rows rejected.
    pub rows_rejected: i64,
    /// Duplicate rows dropped.
    pub rows_duplicate: i64,
    /// Rejection summary (JSON).
    pub rejections: serde_json::Value,
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// Unique name.
    pub name: String,
    /// Cron expression (five fields, UTC).
    pub cron: String,
    /// Source of the jobs it creates.
    pub source: String,
    /// Format of that source.
    pub format: String,
    /// Relative day range, e.g. `yesterday`.
    pub day_range: String,
    /// Merchants (empty: all).
    pub merchants: Vec<String>,
    /// When it was added.
    pub created_at: i64,
    /// The last tick a job was created for.
    pub last_due: i64,
}

impl Store {
    /// Creates a pending job with its pending tasks; returns its id.
    pub async fn create_job(&self, job: &NewJob, now: i64) -> Result<i64> {
        self.timed("create_job", async {
            match self {
                Store::Postgres(s) => s.create_job(job, now).await,
                Store::Sqlite(s) => s.create_job(job, now).await,
            }
        })
        .await
    }

    /// The job and its tasks, if it exists.
    pub async fn job(&self, id: i64) -> Result<Option<Job>> {
        self.timed("job", async {
            match self {
                Store::Postgres(s) => s.job(id).await,
                Store::Sqlite(s) => s.job(id).await,
            }
        })
        .await
    }

    /// The newest `limit` jobs, newest first, with their tasks.
    pub async fn jobs(&self, limit: i64) -> Result<Vec<Job>> {
        self.timed("jobs", async {
            match self {
                Store::Postgres(s) => s.jobs(limit).await,
                Store::Sqlite(s) => s.jobs(limit).await,
            }
        })
        .await
    }

    /// Cancels a job that has not ended, and its unfinished tasks. Returns
    /// the job's state afterwards and whether this call cancelled it (`None`
    /// when there is no such job); a job that had already ended keeps its state.
    pub async fn cancel_job(&self, id: i64, now: i64) -> Result<Option<(State, bool)>> {
        self.timed("cancel_job", async {
            match self {
                Store::Postgres(s) => s.cancel_job(id, now).await,
                Store::Sqlite(s) => s.cancel_job(id, now).await,
            }
        })
        .await
    }

    /// Takes the next runnable task for `owner`: a pending task whose retry
    /// time has come, or a running one whose lease ran out (its runner
    /// died), of a job that has not ended. Marks the job running, counts an
    /// attempt, and leases the task until `lease_until`.
    pub async fn claim_task(&self, owner: &str, now: i64, lease_until: i64) -> Result<Option<Task>> {
        self.timed("claim_task", async {
            match self {
                Store::Postgres(s) => s.claim_task(owner, now, lease_until).await,
                Store::Sqlite(s) => s.claim_task(owner, now, lease_until).await,
            }
        })
        .await
    }

    /// Extends the lease of a task `owner` is running; false when the task
    /// is no longer theirs to run (cancelled, or taken over).
    pub async fn renew_task(&self, job_id: i64, task_no: i32, owner: &str, lease_until: i64) -> Result<bool> {
        self.timed("renew_task", async {
            match self {
                Store::Postgres(s) => s.renew_task(job_id, task_no, owner, lease_until).await,
                Store::Sqlite(s) => s.renew_task(job_id, task_no, owner, lease_until).await,
            }
        })
        .await
    }

    /// Records a successful attempt and its rows, in one transaction; false
    /// (and nothing written) when the task is no longer `owner`'s.
    pub async fn finish_task(&self, job_id: i64, task_no: i32, owner: &str, result: &TaskResult, now: i64) -> Result<bool> {
        self.timed("finish_task", async {
            match self {
                Store::Postgres(s) => s.finish_task(job_id, task_no, owner, result, now).await,
                Store::Sqlite(s) => s.finish_task(job_id, task_no, owner, result, now).await,
            }
        })
        .await
    }

    /// Records a failed attempt. With `retry_at` the task waits for that
    /// time; without, it fails, and so does its job (its other tasks are
    /// cancelled and its computed rows dropped).
    pub async fn fail_task(&self, job_id: i64, task_no: i32, owner: &str, error: &str, now: i64, retry_at: Option<i64>) -> Result<()> {
        self.timed("fail_task", async {
            match self {
                Store::Postgres(s) => s.fail_task(job_id, task_no, owner, error, now, retry_at).await,
                Store::Sqlite(s) => s.fail_task(job_id, task_no, owner, error, now, retry_at).await,
            }
        })
        .await
    }

    /// For every running job whose tasks have all succeeded: in one
    /// transaction, replaces its scope of `merchant_sales` with its rows
    /// and marks it succeeded. Returns the ids of the jobs it finished.
    pub async fn complete_jobs(&self, now: i64) -> Result<Vec<i64>> {
        self.timed("complete_jobs", async {
            match self {
                Store::Postgres(s) => s.complete_jobs(now).await,
                Store::Sqlite(s) => s.complete_jobs(now).await,
            }
        })
        .await
    }

    /// Adds a schedule; fails when the name is taken.
    pub async fn add_schedule(&self, schedule: &Schedule) -> Result<()> {
        self.timed("add_schedule", async {
            match self {
                Store::Postgres(s) => s.add_schedule(schedule).await,
                Store::Sqlite(s) => s.add_schedule(schedule).await,
            }
        })
        .await
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        self.timed("schedules", async {
            match self {
                Store::Postgres(s) => s.schedules().await,
                Store::Sqlite(s) => s.schedules().await,
            }
        })
        .await
    }

    /// Removes a schedule; false when there was none of that name.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool> {
        self.timed("remove_schedule", async {
            match self {
                Store::Postgres(s) => s.remove_schedule(name).await,
                Store::Sqlite(s) => s.remove_schedule(name).await,
            }
        })
        .await
    }

    /// Creates `job` for schedule `name` and moves its `last_due` from
    /// `previous` to `due`, in one transaction; `None` when another
    /// scheduler already did (its `last_due` is no longer `previous`).
    pub async fn fire_schedule(&self, name: &str, previous: i64, due: i64, job: &NewJob, now: i64) -> Result<Option<i64>> {
        self.timed("fire_schedule", async {
            match self {
                Store::Postgres(s) => s.fire_schedule(name, previous, due, job, now).await,
                Store::Sqlite(s) => s.fire_schedule(name, previous, due, job, now).await,
            }
        })
        .await
    }
}

/// Arbitrary constant naming the scheduler's PostgreSQL advisory lock.
const SCHEDULER_LOCK: i64 = 0x7a11_5c4e;

/// The right to run schedules. On PostgreSQL it is a session advisory lock,
/// held on a connection of its own: it lasts while that connection does, so
/// a leader that dies (or loses the database) lets another take over. On
/// SQLite, which serves one machine, every scheduler may lead; a job per tick
/// is still guaranteed by [`Store::fire_schedule`].
pub enum Leadership {
    /// The connection that holds the lock.
    Postgres(tokio_postgres::Client),
    /// SQLite: no election.
    Local,
}

impl Leadership {
    /// Whether the lock is still held.
    pub fn is_held(&self) -> bool {
        match self {
            Leadership::Postgres(client) => !client.is_closed(),
            Leadership::Local => true,
        }
    }
}

impl Store {
    /// Tries to become the scheduler; `None` while another process is.
    pub async fn try_lead(&self) -> Result<Option<Leadership>> {
        match self {
            Store::Postgres(s) => {
                let lead = async {
                    let (client, connection) =
                        s.config().connect(tokio_postgres::NoTls).await.map_err(crate::error::pg("connect"))?;
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::warn!(%error, "Scheduler lock connection closed.");
                        }
                    });
                    let row = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&SCHEDULER_LOCK])
                        .await
                        .map_err(crate::error::pg("scheduler lock"))?;
                    Ok(row.get::<_, bool>(0).then_some(Leadership::Postgres(client)))
                };
                let limit = s.call_timeout();
                tokio::time::timeout(limit, lead)
                    .await
                    .unwrap_or(Err(crate::StoreError::Timeout { op: "scheduler lock", after_ms: limit.as_millis() as u64 }))
            }
            Store::Sqlite(_) => Ok(Some(Leadership::Local)),
        }
    }
}

/// JSON text of a list of strings.
pub(crate) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialise")
}

/// Reads a stored JSON list of strings.
pub(crate) fn parse_list(column: &'static str, text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| crate::StoreError::Corrupt { column, value: text.to_owned(), reason: e.to_string() })
}

pub(crate) fn parse_state(text: &str) -> Result<State> {
    State::parse(text).ok_or_else(|| crate::StoreError::Corrupt { column: "state", value: text.to_owned(), reason: "unknown state".into() })
}

pub(crate) fn parse_day(column: &'static str, text: &str) -> Result<Day> {
    Day::parse(text).map_err(|e| crate::StoreError::Corrupt { column, value: text.to_owned(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_scopes_filter() {
        for state in [State::Pending, State::Running, State::Succeeded, State::Failed, State::Cancelled] {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        let scope = Scope { from: Day(10), to: Day(12), merchants: vec!["a".into(), "c".into()] };
        assert!(scope.contains("a", Day(10)) && scope.contains("c", Day(11)));
        assert!(!scope.contains("b", Day(10)) && !scope.contains("a", Day(12)) && !scope.contains("a", Day(9)));
        assert!(Scope { merchants: vec![], ..scope }.contains("zz", Day(11)));
    }
}
