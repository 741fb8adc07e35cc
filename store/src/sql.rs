//! What the job rules need from a database: run a statement, in a
//! transaction, and a handful of statements that only one dialect can say.
//!
//! The job state machine ([`crate::jobs`]) is written once, as SQL both
//! databases accept (`$1`-style parameters, which SQLite gets as `?1`) and
//! Rust decisions ([`crate::jobs::rules`]). Each database implements [`Tx`];
//! nothing in it decides anything.

use std::future::Future;
use std::pin::Pin;

use schemas::{LocalTotals, Totals};

use crate::error::{Result, StoreError};
use crate::scope::{FileVersion, JobRows, LocalDays, Scope};

/// A boxed, sendable future: what [`Tx`]'s methods return, so that the
/// rules can hold a `&mut dyn Tx`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a transaction writes. SQLite takes its write lock at the start
/// of a writing transaction, so that two writers never deadlock; a reading
/// one takes none, so that idle polls never queue behind flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Only reads.
    Read,
    /// Reads and writes.
    Write,
}

/// A statement parameter. Integers take the width of the column they are
/// compared with or stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// An integer.
    Int(i64),
    /// Text.
    Text(&'a str),
    /// `NULL`.
    Null,
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value<'_> {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(v)
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The parameters of a statement: `params![a, b, c]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::sql::Value::from($v)),*] };
}
pub(crate) use params;

/// Runs `$body` (which uses `tx`) in one transaction of `$mode`, named `$op`;
/// with `job` first, under the job time limit ([`crate::Store::set_job_timeout`]),
/// for a job's large writes.
macro_rules! transact {
    ($store:expr, $op:literal, $mode:ident, |$tx:ident| $body:expr) => {
        $crate::sql::transact!(@via transact, $store, $op, $mode, |$tx| $body)
    };
    (job $store:expr, $op:literal, $mode:ident, |$tx:ident| $body:expr) => {
        $crate::sql::transact!(@via transact_job, $store, $op, $mode, |$tx| $body)
    };
    (@via $method:ident, $store:expr, $op:literal, $mode:ident, |$tx:ident| $body:expr) => {
        $store
            .$method(
                $op,
                $crate::sql::Mode::$mode,
                move |$tx: &mut dyn $crate::sql::Tx| Box::pin(async move { $body.await }),
            )
            .await
    };
}
pub(crate) use transact;

/// One value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    /// An integer column.
    Int(i64),
    /// A text column.
    Text(String),
    /// `NULL`.
    Null,
}

/// One row read back, its cells in the order the statement selects them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> &Cell {
        self.0.get(i).unwrap_or(&Cell::Null)
    }

    fn wrong(&self, i: usize, wanted: &str) -> StoreError {
        StoreError::Corrupt {
            column: "column",
            value: format!("{i}: {:?}", self.cell(i)),
            reason: format!("expected {wanted}"),
        }
    }

    /// The integer in column `i`.
    pub(crate) fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?.ok_or_else(|| self.wrong(i, "an integer"))
    }

    /// The integer in column `i`, which fits 32 bits.
    pub(crate) fn int32(&self, i: usize) -> Result<i32> {
        i32::try_from(self.int(i)?).map_err(|_| self.wrong(i, "a 32-bit integer"))
    }

    /// The integer in column `i`, or `None` for `NULL`.
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.cell(i) {
            Cell::Int(v) => Ok(Some(*v)),
            Cell::Null => Ok(None),
            Cell::Text(_) => Err(self.wrong(i, "an integer")),
        }
    }

    /// The text in column `i`.
    pub(crate) fn text(&self, i: usize) -> Result<&str> {
        self.opt_text(i)?.ok_or_else(|| self.wrong(i, "text"))
    }

    /// The text in column `i`, or `None` for `NULL`.
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<&str>> {
        match self.cell(i) {
            Cell::Text(v) => Ok(Some(v)),
            Cell::Null => Ok(None),
            Cell::Int(_) => Err(self.wrong(i, "text")),
        }
    }
}

/// A transaction of one database. `op` names what the statement does, for
/// its error.
pub(crate) trait Tx: Send {
    /// Runs a statement and returns its rows.
    fn query<'a>(
        &'a mut self,
        op: &'static str,
        sql: &'a str,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>>>;

    /// Runs a statement and returns how many rows it changed.
    fn execute<'a>(
        &'a mut self,
        op: &'static str,
        sql: &'a str,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<u64>>;

    /// What ends a `SELECT` of `alias`'s rows so that they stay locked
    /// until commit, and rows another transaction holds are passed over.
    /// Empty on SQLite, whose writing transaction holds the whole file.
    fn skip_locked(&self, alias: &str) -> String;

    /// What ends a `SELECT` so that its rows stay locked until commit.
    fn for_update(&self) -> &'static str;

    /// What ends a `SELECT` so that its rows cannot change until commit,
    /// while other readers may hold the same lock.
    fn for_share(&self) -> &'static str;

    /// A `$n` parameter holding a day's `YYYY-MM-DD` text, as the day
    /// columns compare.
    fn day_param(&self, n: usize) -> String;

    /// A `$n` parameter holding an amount's exact decimal text, as the
    /// amount columns store it.
    fn amount_param(&self, n: usize) -> String;

    /// Holds, until commit, the lock that orders closing days against
    /// everything that changes totals: `exclusive` for a close run (and a
    /// backfill's swap), shared for a flush or an import. Taken before any
    /// lock on fences, totals or an import's location (a swap holds only
    /// its job's row before it), so no holder waits on one who waits for it.
    fn lock_closes(&mut self, exclusive: bool) -> BoxFuture<'_, Result<()>>;

    /// `column`, a row's change time, as RFC 3339 text in UTC.
    fn timestamp_text(&self, column: &str) -> String;

    /// `column`, a day, as `YYYY-MM-DD` whatever the session's DateStyle.
    fn day_text(&self, column: &str) -> String;

    /// The order of a day's top merchants: `net_amount`, highest first and
    /// exact; ties by `merchant_id`, bytewise.
    fn top_order(&self) -> &'static str;

    /// Holds, until commit, a lock on one file's location, so that two
    /// transactions never judge the same location at once.
    fn lock_location<'a>(&'a mut self, location: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Adds `totals` to `merchant_sales` and `local` to
    /// `merchant_sales_local`; returns the rows written to the first.
    fn add_totals<'a>(
        &'a mut self,
        totals: &'a Totals,
        local: &'a LocalTotals,
    ) -> BoxFuture<'a, Result<i64>>;

    /// Stages a backfill task's rows in `tally_backfill_rows` and its
    /// local-day rows in `tally_backfill_local_rows`.
    fn stage_rows<'a>(
        &'a mut self,
        job_id: i64,
        task_no: i32,
        totals: &'a Totals,
        local: &'a LocalTotals,
    ) -> BoxFuture<'a, Result<()>>;

    /// Deletes `scope` of `merchant_sales` (by day) and the local days of
    /// `local` of `merchant_sales_local` (each zone's rows by local day),
    /// and adds the job's `rows` that fall within them; returns the rows
    /// written to the first. Two replaces never overlap: the second waits
    /// for the first to commit, then sees its rows.
    fn replace_scope<'a>(
        &'a mut self,
        job_id: i64,
        scope: &'a Scope,
        local: &'a [LocalDays],
        rows: JobRows<'a>,
    ) -> BoxFuture<'a, Result<i64>>;

    /// Whether each version has a `tally_imports` row.
    fn known_versions<'a>(
        &'a mut self,
        files: &'a [FileVersion],
    ) -> BoxFuture<'a, Result<Vec<bool>>>;
}

/// An already-computed answer, as a [`BoxFuture`].
pub(crate) fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}
