//! What a job covers: its days and merchants ([`Scope`]), the local days it
//! replaces ([`LocalDays`]), and the file versions it reads ([`FileVersion`]).
//! Plain values, below both the job rules (`jobs`) and the statements that
//! carry them (`sql`).

use schemas::{Day, LocalTotals, Totals};
use serde::{Deserialize, Serialize};

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
    /// Every day an event can fall on, every merchant: what an import
    /// reads. (Its `to`, the day after 9999-12-31, is never stored: an
    /// import job records `[MIN_DAY, MAX_DAY]` for display.)
    pub fn everything() -> Scope {
        Scope {
            from: schemas::day::MIN_DAY,
            to: Day(schemas::day::MAX_DAY.0 + 1),
            merchants: Vec::new(),
        }
    }

    /// Whether an event of `merchant` on `day` belongs to the scope.
    pub fn contains(&self, merchant: &str, day: Day) -> bool {
        day >= self.from && day < self.to && self.has_merchant(merchant)
    }

    /// Whether the scope covers `merchant` (every merchant when it names none).
    pub fn has_merchant(&self, merchant: &str) -> bool {
        self.merchants.is_empty()
            || self
                .merchants
                .binary_search_by(|m| m.as_str().cmp(merchant))
                .is_ok()
    }
}

/// The local days of one time zone that a backfill replaces in
/// `merchant_sales_local`: `[from, to)`, the local days of `zone` that lie
/// wholly inside the job's UTC days ([`crate::jobs::rules::local_scopes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDays {
    /// The IANA name, as rows store it.
    pub zone: String,
    /// First local day, inclusive.
    pub from: Day,
    /// Last local day, exclusive.
    pub to: Day,
}

/// One version of a file: its location and identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FileVersion {
    /// A local path, or `s3://bucket/key`.
    pub location: String,
    /// Bytes.
    pub size: i64,
    /// The object's ETag, or the local file's modification time in nanoseconds.
    pub version: String,
}

/// A completing backfill's rows: staged by its tasks as each finished, or
/// given whole by the one runner that ran every task of the job.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JobRows<'a> {
    Staged,
    Given(&'a [TaskRows<'a>]),
}

/// One task's rows, given at its job's completion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskRows<'a> {
    pub(crate) task_no: i32,
    pub(crate) totals: &'a Totals,
    pub(crate) local: &'a LocalTotals,
}
