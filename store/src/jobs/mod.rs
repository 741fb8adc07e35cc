//! Backfill and import jobs and their tasks, kept in the database so that
//! any aggregator can run them and a crash loses nothing.
//!
//! A job is `pending → running → succeeded | failed | cancelled`; so is each
//! task. A backfill task writes its totals into `tally_backfill_rows` when it
//! succeeds; only when every task of a job has succeeded does one
//! transaction replace the job's range of `merchant_sales` with those rows.
//! An import task reads one file and adds its totals to `merchant_sales` in
//! the transaction that records the file's version in `tally_imports`, so
//! each file counts once ([`Store::finish_import`]).
//!
//! A job may wait on others (`tally_job_deps`): it stays pending until they
//! have all succeeded, and is cancelled when one of them fails or is
//! cancelled ([`Store::cancel_orphans`]). A job can only wait on jobs that
//! already exist, so dependencies never form a cycle ([`check_after`]).
//! Times are milliseconds since the Unix epoch, passed in by the caller so
//! that tests control the clock.
//!
//! - [`rules`]: the decisions, as pure functions: dependencies, retries and
//!   the last attempt, lease takeover, orphans, what a file's import comes to.
//! - `ops`: each operation once, for both databases: SQL both accept, run
//!   through the one small trait each database implements (`crate::sql::Tx`).
//! - here: the types, and [`Store`]'s methods, each one transaction.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use schemas::job::{Cron, Format, Range};
use schemas::{LocalTotals, Totals};
use serde::{Deserialize, Serialize};

use crate::error::Result;
pub use crate::scope::{FileVersion, LocalDays, Scope};
pub(crate) use crate::scope::{JobRows, TaskRows};
use crate::sql::transact;
use crate::Store;

mod ops;
pub mod rules;

pub use rules::check_after;

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
        [
            State::Pending,
            State::Running,
            State::Succeeded,
            State::Failed,
            State::Cancelled,
        ]
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

/// What a job does with its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Recompute a closed day range and replace it.
    Backfill,
    /// Add each file's events to the live totals, once per file.
    Import,
}

impl Kind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backfill => "backfill",
            Kind::Import => "import",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(text: &str) -> Option<Kind> {
        [Kind::Backfill, Kind::Import]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Backfill or import.
    pub kind: Kind,
    /// The source as given (path, glob or URL).
    pub source: String,
    /// The files' format; none: told from each file's name.
    pub format: Option<Format>,
    /// Days and merchants (merchants sorted).
    pub scope: Scope,
    /// The schedule that created it, if any.
    pub schedule: Option<String>,
    /// Its tasks.
    pub tasks: Vec<NewTask>,
    /// Jobs that must succeed before this one starts (`--after`).
    pub after: Vec<i64>,
}

/// A task to create: one merchant-hash shard of the job's files (a
/// backfill), or one file (an import).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// This task's shard, `0..shards`.
    pub shard: i32,
    /// How many shards the job has.
    pub shards: i32,
    /// The files it reads (fixed when the job is created).
    pub files: Vec<String>,
    /// Their size in bytes when the job was created.
    #[serde(default)]
    pub size: i64,
    /// Import: the version (ETag or modification time) of the file it must read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
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
    /// Rejection counts by field, with examples.
    pub rejections: Rejections,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// Import: what became of the file (imported, already imported, superseded, conflict).
    pub outcome: Option<String>,
}

/// A job this one waits on, and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// Its id.
    pub job_id: i64,
    /// Its state.
    pub state: State,
}

/// A stored job with its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Its id.
    pub id: i64,
    /// Backfill or import.
    pub kind: Kind,
    /// Its state.
    pub state: State,
    /// The source as given.
    pub source: String,
    /// The files' format; none: told from each file's name.
    #[serde(serialize_with = "stored_format")]
    pub format: Option<Format>,
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
    /// The jobs it waits on.
    pub after: Vec<Dependency>,
    /// The jobs that wait on it.
    pub before: Vec<i64>,
}

impl Job {
    /// Rows read, rejected and duplicate over all tasks.
    pub fn rows(&self) -> (i64, i64, i64) {
        self.tasks.iter().fold((0, 0, 0), |(r, j, d), t| {
            (r + t.rows_read, j + t.rows_rejected, d + t.rows_duplicate)
        })
    }
}

/// Why a task's rows were rejected: counts by the field that broke a rule,
/// and the first rows as examples. Written by the backfill's compute, kept
/// with the task (as JSON), printed by `tally jobs show`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rejections {
    /// Rejected rows by field.
    pub by_field: BTreeMap<String, i64>,
    /// The first rejected rows.
    pub examples: Vec<RejectedRow>,
    /// The file an import read (imports only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// One rejected row: where it is, and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRow {
    /// The file it was read from.
    pub file: String,
    /// Its row number in the file, from 1.
    pub row: u64,
    /// The field that broke a rule, or `payload`.
    pub field: String,
    /// The offending value as it appeared, cut to 64 characters.
    pub value: String,
    /// The rule.
    pub reason: String,
}

/// What a successful task attempt computed.
#[derive(Debug, Clone, Default)]
pub struct TaskResult {
    /// Totals of the task's shard within the job's scope.
    pub totals: Totals,
    /// The same events' totals by each merchant's local day, within the
    /// scope's days as local days (empty when local days are off).
    pub local: LocalTotals,
    /// Rows read.
    pub rows_read: i64,
    /// Rows rejected.
    pub rows_rejected: i64,
    /// Duplicate rows dropped.
    pub rows_duplicate: i64,
    /// Rejection counts by field, with examples.
    pub rejections: Rejections,
}

/// Whether queueing a file that an ended job failed to import queues it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Never: a watch or a repeated notification must not retry by itself.
    Never,
    /// When its last job failed or was cancelled: an operator's `tally import`.
    AfterFailure,
}

/// What queueing one file did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuedFile {
    /// The file.
    pub location: String,
    /// True when the new job imports it.
    pub queued: bool,
    /// Why not, when it was not: which job imported or queued it before.
    pub reason: Option<String>,
}

/// What [`Store::queue_import`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Queued {
    /// The new job; `None` when no file needed one.
    pub job_id: Option<i64>,
    /// Each file, in the order given.
    pub files: Vec<QueuedFile>,
}

/// What became of a file when its import task finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Its totals were added, in `keys` rows of `merchant_sales`.
    Imported {
        /// Rows of `merchant_sales` written.
        keys: i64,
    },
    /// This version was imported before, by `job_id`: nothing added.
    AlreadyImported {
        /// The job that imported it.
        job_id: i64,
    },
    /// Another version of this location was imported, with the same
    /// content (a local file copied or touched again): nothing added.
    Unchanged {
        /// The job that imported the content.
        job_id: i64,
    },
    /// The file changed before it was read; its new version is imported
    /// by the job queued for it.
    Superseded,
    /// Another version of this location was imported: nothing added, the job fails.
    Conflict {
        /// What happened and what the operator does next.
        message: String,
    },
    /// The task is no longer this runner's (cancelled or taken over): nothing written.
    NotMine,
}

impl ImportOutcome {
    /// The text stored in `tally_tasks.outcome`.
    pub fn describe(&self) -> String {
        match self {
            ImportOutcome::Imported { .. } => "imported".to_owned(),
            ImportOutcome::AlreadyImported { job_id } => {
                format!("already imported by job {job_id}")
            }
            ImportOutcome::Unchanged { job_id } => format!("unchanged (content of job {job_id})"),
            ImportOutcome::Superseded => "superseded (changed before read)".to_owned(),
            ImportOutcome::Conflict { .. } => "conflict".to_owned(),
            ImportOutcome::NotMine => "abandoned".to_owned(),
        }
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// Unique name.
    pub name: String,
    /// Cron expression (five fields, UTC).
    pub cron: Cron,
    /// Source of the jobs it creates.
    pub source: String,
    /// Format of that source; none: told from each file's name.
    #[serde(serialize_with = "schedule_format")]
    pub format: Option<Format>,
    /// Relative day range, e.g. `yesterday`.
    pub day_range: Range,
    /// Merchants (empty: all).
    pub merchants: Vec<String>,
    /// When it was added.
    pub created_at: i64,
    /// The last tick a job was created for.
    pub last_due: i64,
}

/// A job's format as stored (`auto` for none), for its JSON.
fn stored_format<S: serde::Serializer>(
    format: &Option<Format>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(Format::stored(*format))
}

/// A schedule's format as stored (empty for none), for its JSON.
fn schedule_format<S: serde::Serializer>(
    format: &Option<Format>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(format.map_or("", Format::as_str))
}

impl Store {
    /// Creates a pending job with its pending tasks and its dependencies;
    /// returns its id. Fails with [`crate::StoreError::Refused`] when a
    /// dependency is unknown or has failed ([`check_after`]).
    pub async fn create_job(&self, job: &NewJob, now: i64) -> Result<i64> {
        let job = job.clone();
        transact!(self, "create_job", Write, |tx| ops::create_job(
            tx, &job, now
        ))
    }

    /// The job and its tasks, if it exists.
    pub async fn job(&self, id: i64) -> Result<Option<Job>> {
        transact!(self, "job", Read, |tx| ops::job_by_id(tx, id))
    }

    /// The newest `limit` jobs, newest first, with their tasks.
    pub async fn jobs(&self, limit: i64) -> Result<Vec<Job>> {
        transact!(self, "jobs", Read, |tx| ops::jobs(tx, limit))
    }

    /// Creates an import job with one task per file of `new` that needs
    /// importing, and records each queued version in `tally_imports`, in one
    /// transaction. A version already imported, or queued by a job that has
    /// not ended, is skipped (so a notification delivered twice, or a watch
    /// that lists a file again, queues nothing); so is one whose job ended
    /// without importing it, unless `requeue` allows. No job is created when
    /// every file is skipped.
    pub async fn queue_import(&self, new: &NewJob, requeue: Requeue, now: i64) -> Result<Queued> {
        let new = new.clone();
        transact!(self, "queue_import", Write, |tx| ops::queue_import(
            tx, &new, requeue, now
        ))
    }

    /// Finishes an import task in one transaction. With `result`, adds the
    /// file's totals to `merchant_sales` and marks `file` imported, unless
    /// some version of its location was imported already (then nothing is
    /// added: the same version is [`ImportOutcome::AlreadyImported`],
    /// another with the same `digest` is [`ImportOutcome::Unchanged`], any
    /// other is a [`ImportOutcome::Conflict`], which fails the job).
    /// Without, records that the file changed before it was read.
    pub async fn finish_import(
        &self,
        task: &Task,
        owner: &str,
        file: &FileVersion,
        read: Option<(&TaskResult, Option<&str>)>,
        now: i64,
    ) -> Result<ImportOutcome> {
        let (task, owner, file) = (task.clone(), owner.to_owned(), file.clone());
        let read = read.map(|(result, digest)| (result.clone(), digest.map(str::to_owned)));
        transact!(job self, "finish_import", Write, |tx| async {
            let read = read
                .as_ref()
                .map(|(result, digest)| (result, digest.as_deref()));
            ops::finish_import(tx, &task, &owner, &file, read, now).await
        })
    }

    /// Whether each version was ever queued (by any job, whatever became of it).
    pub async fn known_versions(&self, files: &[FileVersion]) -> Result<Vec<bool>> {
        let files = files.to_vec();
        transact!(self, "known_versions", Read, |tx| tx.known_versions(&files))
    }

    /// Cancels every pending job that waits on a job that failed or was
    /// cancelled (and so on down the graph). Returns each cancelled job
    /// with the reason recorded.
    pub async fn cancel_orphans(&self, now: i64) -> Result<Vec<(i64, String)>> {
        // Look first without a writer's locks: runners poll often.
        if transact!(self, "cancel_orphans", Read, |tx| ops::orphans(tx))?.is_empty() {
            return Ok(Vec::new());
        }
        transact!(job self, "cancel_orphans", Write, |tx| ops::cancel_orphans(
            tx, now
        ))
    }

    /// Cancels a job that has not ended, and its unfinished tasks. Returns
    /// the job's state afterwards and whether this call cancelled it (`None`
    /// when there is no such job); a job that had already ended keeps its state.
    pub async fn cancel_job(&self, id: i64, now: i64) -> Result<Option<(State, bool)>> {
        transact!(job self, "cancel_job", Write, |tx| ops::cancel_job(tx, id, now))
    }

    /// Takes the next runnable task for `owner`: a pending task whose retry
    /// time has come, or a running one whose lease ran out (its runner
    /// died), of a job that has not ended and whose dependencies have all
    /// succeeded. Marks the job running, counts an attempt, and leases the
    /// task until `lease_until`.
    pub async fn claim_task(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Task>> {
        // Look first without a writer's locks: an idle poll must not queue
        // behind (or hold up) claims and flushes.
        if !transact!(self, "claim_task", Read, |tx| ops::runnable(tx, now))? {
            return Ok(None);
        }
        let owner = owner.to_owned();
        transact!(self, "claim_task", Write, |tx| ops::claim_task(
            tx,
            &owner,
            now,
            lease_until
        ))
    }

    /// Extends the lease of a task `owner` is running; false when the task
    /// is no longer theirs to run (cancelled, or taken over).
    pub async fn renew_task(
        &self,
        job_id: i64,
        task_no: i32,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool> {
        let owner = owner.to_owned();
        transact!(self, "renew_task", Write, |tx| ops::renew_task(
            tx,
            (job_id, task_no),
            &owner,
            lease_until
        ))
    }

    /// Records a successful attempt and its rows, in one transaction; false
    /// (and nothing written) when the task is no longer `owner`'s.
    pub async fn finish_task(
        &self,
        job_id: i64,
        task_no: i32,
        owner: &str,
        result: &TaskResult,
        now: i64,
    ) -> Result<bool> {
        let (owner, result) = (owner.to_owned(), result.clone());
        transact!(job self, "finish_task", Write, |tx| ops::finish_task(
            tx,
            (job_id, task_no),
            &owner,
            &result,
            now
        ))
    }

    /// Records the successful attempts of every task of a backfill job and
    /// completes the job with their rows, in one transaction, without
    /// staging the rows: for the runner that ran all of a job's tasks
    /// together. False (and nothing written) when the job is not running,
    /// has a task `results` lacks, or a task is no longer `owner`'s; then
    /// each task is finished on its own ([`Store::finish_task`]).
    pub async fn finish_job(
        &self,
        job_id: i64,
        owner: &str,
        results: Arc<[(i32, TaskResult)]>,
        now: i64,
    ) -> Result<bool> {
        let owner = owner.to_owned();
        transact!(job self, "finish_job", Write, |tx| ops::finish_job(
            tx, job_id, &owner, &results, now
        ))
    }

    /// Records a failed attempt. With `retry_at` ([`rules::retry_at`]) the
    /// task waits for that time; without, it fails, and so does its job
    /// (its other tasks are cancelled and its computed rows dropped).
    pub async fn fail_task(
        &self,
        job_id: i64,
        task_no: i32,
        owner: &str,
        error: &str,
        now: i64,
        retry_at: Option<i64>,
    ) -> Result<()> {
        let (owner, error) = (owner.to_owned(), error.to_owned());
        transact!(job self, "fail_task", Write, |tx| {
            ops::fail_task(tx, (job_id, task_no), &owner, &error, now, retry_at)
        })
    }

    /// For every running job whose tasks have all succeeded: in one
    /// transaction each, replaces its scope of `merchant_sales` with its
    /// rows and marks it succeeded. Returns the ids of the jobs it finished.
    ///
    /// Fails with the first job's error; [`Store::complete_each`] tells
    /// each job's outcome apart.
    pub async fn complete_jobs(&self, now: i64) -> Result<Vec<i64>> {
        let mut done = Vec::new();
        for (id, outcome) in self.complete_each(now).await? {
            if outcome? {
                done.push(id);
            }
        }
        Ok(done)
    }

    /// [`Store::complete_jobs`], job by job: each complete job's id with
    /// whether this call finished it (false: another runner did) or why
    /// its swap failed. Each swap runs under the job time limit.
    pub async fn complete_each(&self, now: i64) -> Result<Vec<(i64, Result<bool>)>> {
        let mut outcomes = Vec::new();
        for id in transact!(self, "complete_jobs", Read, |tx| ops::complete(tx))? {
            let outcome = transact!(job self, "complete_jobs", Write, |tx| ops::complete_job(
                tx, id, now
            ));
            outcomes.push((id, outcome));
        }
        Ok(outcomes)
    }

    /// Fails a job that has not ended, with `reason`: its tasks stop and its
    /// staged rows are dropped, and the totals tables are left as they are.
    /// False when it had already ended.
    pub async fn fail_job(&self, id: i64, reason: &str, now: i64) -> Result<bool> {
        let reason = reason.to_owned();
        transact!(job self, "fail_job", Write, |tx| ops::fail_job(
            tx, id, &reason, now
        ))
    }

    /// Adds a schedule; fails when the name is taken.
    pub async fn add_schedule(&self, schedule: &Schedule) -> Result<()> {
        let schedule = schedule.clone();
        transact!(self, "add_schedule", Write, |tx| ops::add_schedule(
            tx, &schedule
        ))
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        transact!(self, "schedules", Read, |tx| ops::schedules(tx))
    }

    /// Removes a schedule; false when there was none of that name.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        transact!(self, "remove_schedule", Write, |tx| ops::remove_schedule(
            tx, &name
        ))
    }

    /// Creates `job` for schedule `name` and moves its `last_due` from
    /// `previous` to `due`, in one transaction; `None` when another
    /// scheduler already did (its `last_due` is no longer `previous`).
    pub async fn fire_schedule(
        &self,
        name: &str,
        previous: i64,
        due: i64,
        job: &NewJob,
        now: i64,
    ) -> Result<Option<i64>> {
        let (name, job) = (name.to_owned(), job.clone());
        transact!(self, "fire_schedule", Write, |tx| ops::fire_schedule(
            tx,
            &name,
            (previous, due),
            &job,
            now
        ))
    }
}

/// The right to run schedules. On PostgreSQL it is a session advisory lock,
/// held on a connection of its own: it lasts while that connection does, so
/// a leader that dies (or loses the database) lets another take over. On
/// SQLite, which serves one machine, every scheduler may lead; a job per tick
/// is still guaranteed by [`Store::fire_schedule`].
pub struct Leadership(pub(crate) Lead);

/// What holds the lead.
pub(crate) enum Lead {
    /// The connection that holds the lock.
    Postgres(tokio_postgres::Client),
    /// SQLite: no election.
    Local,
}

impl Leadership {
    /// Whether the lock is still held.
    pub fn is_held(&self) -> bool {
        match &self.0 {
            Lead::Postgres(client) => !client.is_closed(),
            Lead::Local => true,
        }
    }
}

impl Store {
    /// Tries to become the scheduler; `None` while another process is.
    pub async fn try_lead(&self) -> Result<Option<Leadership>> {
        match self {
            Store::Postgres(s) => s.try_lead().await,
            Store::Sqlite(_) => Ok(Some(Leadership(Lead::Local))),
        }
    }

    /// Tries to become the aggregator that closes days; `None` while
    /// another process is. (A second closer would change nothing: a close
    /// run finds the days closed. The election only spares the work.)
    pub async fn try_lead_closer(&self) -> Result<Option<Leadership>> {
        match self {
            Store::Postgres(s) => {
                s.try_lead_with(crate::closes::CLOSER_LOCK, "closer lock")
                    .await
            }
            Store::Sqlite(_) => Ok(Some(Leadership(Lead::Local))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Day;

    #[test]
    fn states_round_trip_and_scopes_filter() {
        for state in [
            State::Pending,
            State::Running,
            State::Succeeded,
            State::Failed,
            State::Cancelled,
        ] {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        let scope = Scope {
            from: Day(10),
            to: Day(12),
            merchants: vec!["a".into(), "c".into()],
        };
        assert!(scope.contains("a", Day(10)) && scope.contains("c", Day(11)));
        assert!(
            !scope.contains("b", Day(10))
                && !scope.contains("a", Day(12))
                && !scope.contains("a", Day(9))
        );
        assert!(Scope {
            merchants: vec![],
            ..scope
        }
        .contains("zz", Day(11)));
    }
}
