//! tally's database: the single source of truth for totals and progress.
//!
//! - [`fence`]: the claim and fence rules as pure functions.
//! - [`postgres`]: PostgreSQL, with one multi-row `UNNEST` upsert per flush.
//! - [`sqlite`]: the embedded SQLite sink, exact decimal text.
//! - [`jobs`]: backfill and import jobs, tasks and schedules, and the
//!   atomic replace: their rules written once, for both databases, over
//!   `sql`'s one small trait per database.
//! - [`scope`]: what a job covers (days, merchants, local days, file
//!   versions): values below both `jobs` and `sql`.
//! - [`merchants`]: merchants' IANA time zones (`tally_merchants`).
//! - [`reads`]: the totals API's reads of both totals tables.
//! - [`health`]: whether the database is answering, and the one registry
//!   of parked partitions and watched databases each role's `/readyz` reads.
//! - [`closes`]: closed days, close runs and the adjustments to closed
//!   days: written once, for both databases.
//! - [`error`]: errors that say what failed and whether to retry.
//!
//! Every call has a time limit ([`Store::call_timeout`]): a database that
//! stops answering (a half-open connection, a frozen server) costs a
//! timeout and a fresh connection, never a hung pipeline.
//!
//! Both databases get their schema from the versioned files in
//! `store/migrations/`, applied on connect.
//!
//! This crate is shared by the worker (claims) and the aggregator (fenced
//! upserts), which is why it is not inside `aggregator/`.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod closes;
pub mod error;
pub mod fence;
pub mod health;
pub mod jobs;
pub mod merchants;
pub mod postgres;
pub mod reads;
pub mod scope;
mod sql;
pub mod sqlite;

pub use error::{Class, Classify, Result, StoreError};
pub use fence::{Fence, Plan, SourcePartition};
pub use health::Health;
use schemas::{Partial, Sums, Totals, TotalsKey};

/// A job statement's time limit unless [`Store::set_job_timeout`] says
/// otherwise: one hour.
pub const DEFAULT_JOB_TIMEOUT_MS: u64 = 3_600_000;

/// How many job statement time limits one job transaction may take.
pub const JOB_STATEMENTS: u32 = 10;

/// A partition's epoch as the database holds it, and whether a gap was
/// seen at it ([`fence::is_gap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The current claim epoch.
    pub epoch: i64,
    /// The epoch at which the aggregator last refused a partial for a gap.
    pub gap_epoch: Option<i64>,
}

impl Standing {
    /// Whether a partial of the current epoch was lost.
    pub fn gap(&self) -> bool {
        self.gap_epoch == Some(self.epoch)
    }
}

/// What a claim returns: where the new owner starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The new epoch; partials must carry it.
    pub epoch: i64,
    /// First offset to count.
    pub next_offset: i64,
    /// First offset to read to rebuild the dedupe window.
    pub dedupe_from_offset: i64,
    /// The dedupe window's clock at `next_offset`, when known: the rebuild's
    /// clock stays at or below it.
    pub dedupe_clock_ms: Option<i64>,
}

/// A `tally_partitions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// The fence.
    pub fence: Fence,
    /// Events counted into totals so far.
    pub counted_events: i64,
    /// Duplicates dropped so far.
    pub duplicate_events: i64,
    /// Invalid events sent to the dead-letter topic so far.
    pub invalid_events: i64,
    /// The worker instance that made the latest claim.
    pub claimed_by: Option<String>,
}

/// A connected database.
pub enum Store {
    /// PostgreSQL.
    Postgres(Box<postgres::PgStore>),
    /// SQLite.
    Sqlite(sqlite::SqliteStore),
}

impl Store {
    /// Connects and applies pending migrations.
    ///
    /// Fails when the URL is unsupported, the database is unreachable, or a
    /// migration fails.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::open(url, true).await
    }

    /// Connects without migrating PostgreSQL, for the roles that only read
    /// the tables or write rows (ingest, `query`, `verify`, `jobs`): their
    /// database role needs no right to create tables. Fails with
    /// [`StoreError::Schema`] while a migration this build needs is missing.
    /// (A SQLite file is migrated as by [`Store::connect`]: it has no roles.)
    pub async fn connect_existing(url: &str) -> Result<Store> {
        Store::open(url, false).await
    }

    async fn open(url: &str, migrating: bool) -> Result<Store> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Store::Postgres(Box::new(
                postgres::PgStore::connect_as(url, migrating).await?,
            ))
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Store::Sqlite(sqlite::SqliteStore::open(path).await?)
        } else {
            return Err(StoreError::UnsupportedUrl {
                url: schemas::config::shown_database_url(url),
            });
        };
        Ok(store)
    }

    /// How long one call may take before it fails with
    /// [`StoreError::Timeout`] and its connection is dropped: PostgreSQL's
    /// `statement_timeout` plus 5 s (so the server normally answers first),
    /// and SQLite's busy timeout plus 30 s.
    pub fn call_timeout(&self) -> std::time::Duration {
        match self {
            Store::Postgres(s) => s.call_timeout(),
            Store::Sqlite(_) => sqlite::CALL_TIMEOUT,
        }
    }

    /// Whether the database has been answering: for `/readyz`.
    pub fn health(&self) -> &Health {
        match self {
            Store::Postgres(s) => &s.health,
            Store::Sqlite(s) => &s.health,
        }
    }

    /// Runs one call under [`Store::call_timeout`], recording its outcome in
    /// [`Store::health`]. A call that runs out of time closes its PostgreSQL
    /// connection, so no later call queues behind it.
    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.timed_within(op, self.call_timeout(), call).await
    }

    /// [`Store::timed`] with the time limit `limit`.
    async fn timed_within<T>(
        &self,
        op: &'static str,
        limit: std::time::Duration,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = self.health().begin();
        // A PostgreSQL call cancelled here closes its connection rather than
        // returning it to the pool (see `postgres::Conn`).
        let result = tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(StoreError::Timeout {
                op,
                after_ms: limit.as_millis() as u64,
            }));
        let down = matches!(&result, Err(e) if e.is_retryable());
        self.health().end(started, down);
        result
    }

    /// Sets how long each statement of a job's transaction may take (the
    /// staging of a task's rows, the completion swap, an import's totals),
    /// apart from [`Store::call_timeout`]: a month of 100,000 merchants
    /// writes millions of rows. One hour unless set.
    pub fn set_job_timeout(&self, limit: std::time::Duration) {
        let ms = limit.as_millis().min(u128::from(u64::MAX)) as u64;
        self.job_timeout_ms()
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The time limit of a job's statements ([`Store::set_job_timeout`]).
    pub fn job_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.job_timeout_ms()
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn job_timeout_ms(&self) -> &std::sync::atomic::AtomicU64 {
        match self {
            Store::Postgres(s) => &s.job_timeout_ms,
            Store::Sqlite(s) => &s.job_timeout_ms,
        }
    }

    /// Runs `work` in one transaction of `mode` whose statements may each
    /// take [`Store::job_timeout`] (on PostgreSQL, `SET LOCAL
    /// statement_timeout`), and the whole call [`JOB_STATEMENTS`] times that:
    /// a job's transaction runs its writes in bounded statements (a day, a
    /// task's rows, 50,000 staged rows), so a big job takes more of them,
    /// each as long as any.
    async fn transact_job<R, F>(&self, op: &'static str, mode: sql::Mode, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn sql::Tx) -> sql::BoxFuture<'t, Result<R>> + Send + 'static,
    {
        let statement = self.job_timeout();
        let limit = (statement * JOB_STATEMENTS).max(self.call_timeout());
        self.timed_within(op, limit, async {
            match self {
                Store::Postgres(s) => s.transact_with(mode, Some(statement), work).await,
                Store::Sqlite(s) => s.transact(mode, work).await,
            }
        })
        .await
    }

    /// Runs `work` in one transaction of `mode`, under [`Store::timed`].
    async fn transact<R, F>(&self, op: &'static str, mode: sql::Mode, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn sql::Tx) -> sql::BoxFuture<'t, Result<R>> + Send + 'static,
    {
        self.timed(op, async {
            match self {
                Store::Postgres(s) => s.transact(mode, work).await,
                Store::Sqlite(s) => s.transact(mode, work).await,
            }
        })
        .await
    }

    /// Claims a partition for `owner`: raises its epoch and returns where to
    /// start. Creates the fence at offset 0 on first claim.
    pub async fn claim(&self, topic: &str, partition: i32, owner: &str) -> Result<Claim> {
        self.timed("claim", async {
            match self {
                Store::Postgres(s) => s.claim(topic, partition, owner).await,
                Store::Sqlite(s) => s.claim(topic, partition, owner).await,
            }
        })
        .await
    }

    /// The partition's current epoch and whether the aggregator saw a gap
    /// at it, if it was ever claimed.
    pub async fn epoch(&self, topic: &str, partition: i32) -> Result<Option<Standing>> {
        self.timed("epoch", async {
            match self {
                Store::Postgres(s) => s.epoch(topic, partition).await,
                Store::Sqlite(s) => s.epoch(topic, partition).await,
            }
        })
        .await
    }

    /// In one transaction: locks the fences of the partitions involved, judges
    /// `partials` in order, upserts the merged sums of those that apply, and
    /// advances their fences. Returns the plan that was committed.
    ///
    /// Fails (and changes nothing) when the database does.
    pub async fn apply(&self, partials: &[Partial]) -> Result<Plan> {
        self.timed("apply", async {
            match self {
                Store::Postgres(s) => s.apply(partials).await,
                Store::Sqlite(s) => s.apply(partials).await,
            }
        })
        .await
    }

    /// Every row of `merchant_sales`, optionally of one merchant.
    pub async fn totals(&self, merchant: Option<&str>) -> Result<Totals> {
        self.timed("totals", async {
            match self {
                Store::Postgres(s) => s.totals(merchant).await,
                Store::Sqlite(s) => s.totals(merchant).await,
            }
        })
        .await
    }

    /// One round trip (`SELECT 1`), so that an idle process still notices a
    /// database that stopped answering ([`Store::health`]).
    ///
    /// Fails when the database does not answer.
    pub async fn ping(&self) -> Result<()> {
        self.timed("ping", async {
            match self {
                Store::Postgres(s) => s.ping().await,
                Store::Sqlite(s) => s.ping().await,
            }
        })
        .await
    }

    /// Every row of `tally_partitions`.
    pub async fn progress(&self) -> Result<Vec<PartitionProgress>> {
        self.timed("progress", async {
            match self {
                Store::Postgres(s) => s.progress().await,
                Store::Sqlite(s) => s.progress().await,
            }
        })
        .await
    }
}

/// The distinct source partitions of `partials`, sorted (lock order).
pub(crate) fn sources(partials: &[Partial]) -> Vec<SourcePartition> {
    let mut sources: Vec<SourcePartition> = partials
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    sources.sort();
    sources.dedup();
    sources
}

pub(crate) fn parse_row(
    merchant_id: String,
    currency: String,
    day: &str,
    amounts: [&str; 2],
    counts: [i64; 2],
) -> Result<(TotalsKey, Sums)> {
    let corrupt = |column: &'static str, value: &str, reason: String| StoreError::Corrupt {
        column,
        value: value.to_owned(),
        reason,
    };
    let day = schemas::Day::parse(day).map_err(|e| corrupt("day", day, e.to_string()))?;
    let amount = |column, text: &str| {
        schemas::Amount::parse_stored(text).map_err(|e| corrupt(column, text, e.to_string()))
    };
    Ok((
        TotalsKey {
            merchant_id,
            currency,
            day,
        },
        Sums {
            sales_amount: amount("sales_amount", amounts[0])?,
            sales_count: counts[0],
            refund_amount: amount("refund_amount", amounts[1])?,
            refund_count: counts[1],
        },
    ))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_unsupported_url_is_not_shown() {
        let error = super::Store::connect("mysql://u:secret@h:5/db")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("mysql://<rest not shown>") && !error.contains("secret"),
            "{error}"
        );
        let error = super::Store::connect("host=h password=secret")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(!error.contains("secret"), "{error}");
    }
}
