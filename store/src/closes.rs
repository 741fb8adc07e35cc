//! Closed days and their adjustments, written once for both databases.
//!
//! A close run ([`Store::close_days`]) closes every day that ended at or
//! before its *closed-through* instant: the pipeline's completeness time
//! less the grace period. For each (merchant, currency, day) with activity
//! it copies the day's totals into `tally_closes`, on both bases (UTC days,
//! and each merchant's local days in the zone its rows keep), and records
//! the fences it read (the frontier) in `tally_close_runs`, in one
//! transaction. Runs only move forward, so the latest run says which days
//! are closed ([`is_closed`]).
//!
//! Anything that changes a closed day afterwards records the change in
//! `tally_adjustments` in the transaction that makes it: a flush (the source
//! partition and offsets, [`from_partials`]), a backfill's swap or an import
//! (the job). So for every closed day, closed totals plus adjustments equal
//! the current totals.
//!
//! Ordering: a close run holds the closes lock exclusively
//! ([`crate::sql::Tx::lock_closes`]); flushes and imports hold it shared, and
//! a backfill's swap exclusively (flushes wait while it swaps: its
//! adjustments are the difference of the rows before and after, which no
//! flush may change in between). So a close never sees half a flush, and no
//! change to a day slips between the close and its adjustment.

use std::collections::BTreeMap;

use schemas::zone::Zone;
use schemas::{Day, LocalTotals, Partial, Sums, Totals, TotalsKey};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::reads::Basis;
use crate::sql::{params, transact, Row, Tx, Value};
use crate::{parse_row, Store};

/// The advisory lock (PostgreSQL) that orders close runs against flushes
/// and jobs.
pub(crate) const CLOSES_LOCK: i64 = 0x7a11_c105;

/// The advisory lock (PostgreSQL) whose holder runs the close runs.
pub(crate) const CLOSER_LOCK: i64 = 0x7a11_c10e;

const DAY_MS: i64 = 86_400_000;

/// How far from the end of its UTC day any zone's day ends, at most.
const ZONE_REACH_MS: i64 = 26 * 3_600_000;

/// How far one close run moves the closed-through instant at most: a week,
/// so that a database with a long history is closed in bounded transactions.
pub const MAX_STEP_MS: i64 = 7 * DAY_MS;

/// The instant (ms) at which `day` ends in `zone` (an IANA name as rows keep
/// it; one tally cannot read is taken as UTC).
pub fn day_end_ms(zone: &str, day: Day) -> i64 {
    let utc_end = (i64::from(day.0) + 1) * DAY_MS;
    if zone == "UTC" {
        return utc_end;
    }
    Zone::parse(zone).map_or(utc_end, |z| z.day_end_ms(day))
}

/// Whether `day` in `zone` is closed when days ending at or before
/// `closed_through` are. Cheap for the days far from the edge, which are
/// almost all.
pub fn is_closed(zone: &str, day: Day, closed_through: Option<i64>) -> bool {
    let Some(through) = closed_through else {
        return false;
    };
    let utc_end = (i64::from(day.0) + 1) * DAY_MS;
    if utc_end - ZONE_REACH_MS > through {
        return false;
    }
    if utc_end + ZONE_REACH_MS <= through {
        return true;
    }
    day_end_ms(zone, day) <= through
}

/// Where an adjustment came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// A flush: the partials of one source partition, their offsets.
    Stream {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// First offset of the partials.
        first_offset: i64,
        /// Last offset of the partials (inclusive).
        last_offset: i64,
    },
    /// A backfill's swap or an import.
    Job {
        /// The job's id.
        job_id: i64,
    },
}

/// One change to a closed day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Adjustment {
    /// Which table's day.
    pub basis: Basis,
    /// The merchant.
    pub merchant_id: String,
    /// Currency code.
    pub currency: String,
    /// The day (UTC, or the merchant's own).
    pub day: Day,
    /// The zone whose calendar `day` is.
    pub time_zone: String,
    /// The change: amounts and counts added (negative when taken away).
    #[serde(rename = "change", serialize_with = "money")]
    pub sums: Sums,
    /// What made it.
    pub source: Source,
    /// When it was applied, ms since the Unix epoch.
    #[serde(serialize_with = "instant")]
    pub applied_at: i64,
}

/// Sums as the API shows them: amounts and counts, and the net amount.
fn money<S: serde::Serializer>(sums: &Sums, out: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut money = out.serialize_struct("Money", 5)?;
    money.serialize_field("sales_amount", &sums.sales_amount)?;
    money.serialize_field("sales_count", &sums.sales_count)?;
    money.serialize_field("refund_amount", &sums.refund_amount)?;
    money.serialize_field("refund_count", &sums.refund_count)?;
    money.serialize_field("net_amount", &sums.net_amount())?;
    money.end()
}

/// An instant in ms as RFC 3339 text in UTC.
fn instant<S: serde::Serializer>(ms: &i64, out: S) -> std::result::Result<S::Ok, S::Error> {
    out.serialize_str(&schemas::day::format_rfc3339_millis(
        ms.saturating_mul(1_000),
    ))
}

/// One close run: when, at what completeness, and the fences it read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloseRun {
    /// Its id.
    pub id: i64,
    /// When it committed, ms since the Unix epoch.
    pub closed_at: i64,
    /// The completeness time it closed at (ms).
    pub completeness_ms: i64,
    /// The grace period (ms).
    pub grace_ms: i64,
    /// Days ending at or before this instant (ms) are closed.
    pub closed_through_ms: i64,
    /// Each source partition's fence (`topic/partition` → next offset) as
    /// the run read it: the closed totals count exactly the events below.
    pub frontier: BTreeMap<String, i64>,
    /// Rows copied into `tally_closes`, both bases.
    pub rows_closed: i64,
}

/// A closed day's totals as they stood at its close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closed {
    /// Which table's day.
    pub basis: Basis,
    /// The key: merchant, currency, day.
    pub key: TotalsKey,
    /// The zone whose calendar the day is.
    pub time_zone: String,
    /// The totals at the close.
    pub sums: Sums,
    /// The close run.
    pub run_id: i64,
}

/// What the database holds of some local-day keys: the zone each stored
/// row keeps (or, for a key whose row is gone, the zone it closed in), and
/// which keys have closed. A key is judged by that zone, whatever zone a
/// later partial or import names for it (a merchant whose zone changed),
/// and a key that closed stays closed.
#[derive(Debug, Default)]
pub struct Known {
    /// The zone of each key's stored row (or close).
    pub zones: std::collections::HashMap<TotalsKey, String>,
    /// Keys with a close on the local basis.
    pub closed: std::collections::HashSet<TotalsKey>,
}

impl Known {
    /// The zone `key` closes by, when it is closed: its stored zone (else
    /// `named`), closed when it has a close or its day has ended by then.
    fn closed_zone<'a>(
        &'a self,
        key: &TotalsKey,
        named: &'a str,
        through: Option<i64>,
    ) -> Option<&'a str> {
        let zone = self.zones.get(key).map_or(named, String::as_str);
        (self.closed.contains(key) || is_closed(zone, key.day, through)).then_some(zone)
    }
}

/// The adjustments a flush makes: the applied partials' rows (`applied`
/// indexes `partials`) that fall on closed days, summed per key and source
/// partition, with the offsets of the partials they came from. Local rows
/// are judged by what `known` says of their keys.
pub fn from_partials(
    partials: &[Partial],
    applied: &[usize],
    closed_through: Option<i64>,
    known: &Known,
    now: i64,
) -> Vec<Adjustment> {
    if closed_through.is_none() {
        return Vec::new();
    }
    type Key = (Basis, TotalsKey, String, String, i32);
    let mut merged: BTreeMap<Key, (Sums, i64, i64)> = BTreeMap::new();
    let mut add = |key: Key, sums: &Sums, p: &Partial| {
        let entry = merged
            .entry(key)
            .or_insert((Sums::default(), p.first_offset, p.last_offset));
        entry.0.merge(sums);
        entry.1 = entry.1.min(p.first_offset);
        entry.2 = entry.2.max(p.last_offset);
    };
    for p in applied.iter().map(|&i| &partials[i]) {
        for row in &p.rows {
            if is_closed("UTC", row.key.day, closed_through) {
                let key = (
                    Basis::Utc,
                    row.key.clone(),
                    "UTC".to_owned(),
                    p.topic.clone(),
                    p.partition,
                );
                add(key, &row.sums, p);
            }
        }
        for row in &p.local_rows {
            let (key, local) = row.entry();
            if let Some(zone) = known.closed_zone(&key, &local.time_zone, closed_through) {
                let zone = zone.to_owned();
                add(
                    (Basis::Local, key, zone, p.topic.clone(), p.partition),
                    &row.local.sums,
                    p,
                );
            }
        }
    }
    merged
        .into_iter()
        .map(
            |((basis, key, time_zone, topic, partition), (sums, first, last))| Adjustment {
                basis,
                merchant_id: key.merchant_id,
                currency: key.currency,
                day: key.day,
                time_zone,
                sums,
                source: Source::Stream {
                    topic,
                    partition,
                    first_offset: first,
                    last_offset: last,
                },
                applied_at: now,
            },
        )
        .collect()
}

/// The adjustments of a job that adds `totals` and `local` (an import): the
/// rows on closed days.
fn from_added(
    totals: &Totals,
    local: &LocalTotals,
    closed_through: Option<i64>,
    known: &Known,
    job_id: i64,
    now: i64,
) -> Vec<Adjustment> {
    let utc = totals
        .iter()
        .filter(|(k, _)| is_closed("UTC", k.day, closed_through))
        .map(|(k, s)| (Basis::Utc, k, "UTC", s));
    let local = local.iter().filter_map(|(k, l)| {
        known
            .closed_zone(k, &l.time_zone, closed_through)
            .map(|zone| (Basis::Local, k, zone, &l.sums))
    });
    utc.chain(local)
        .map(|(basis, key, zone, sums)| Adjustment {
            basis,
            merchant_id: key.merchant_id.clone(),
            currency: key.currency.clone(),
            day: key.day,
            time_zone: zone.to_owned(),
            sums: *sums,
            source: Source::Job { job_id },
            applied_at: now,
        })
        .collect()
}

/// Merchants one read names at most.
const MERCHANT_CHUNK: usize = 500;

/// Parses a day column read back.
fn day_cell(r: &Row, i: usize, column: &'static str) -> Result<Day> {
    let text = r.text(i)?;
    Day::parse(text).map_err(|e| StoreError::Corrupt {
        column,
        value: text.to_owned(),
        reason: e.to_string(),
    })
}

/// What the database holds of those of `keys` (local days) that may be
/// closed: only keys within a zone's reach of `closed_through` are read.
async fn known<'k>(
    tx: &mut dyn Tx,
    keys: impl Iterator<Item = &'k TotalsKey>,
    closed_through: i64,
) -> Result<Known> {
    let near: Vec<&TotalsKey> = keys
        .filter(|k| (i64::from(k.day.0) + 1) * DAY_MS - ZONE_REACH_MS <= closed_through)
        .collect();
    let mut known = Known::default();
    let (Some(low), Some(high)) = (
        near.iter().map(|k| k.day).min(),
        near.iter().map(|k| k.day).max(),
    ) else {
        return Ok(known);
    };
    let mut merchants: Vec<&str> = near.iter().map(|k| k.merchant_id.as_str()).collect();
    merchants.sort_unstable();
    merchants.dedup();
    let (low, high) = (low.to_string(), high.to_string());
    // Closes first: a stored row's zone, read after, wins.
    let reads = [
        ("tally_closes", "day", "basis = 'local' AND "),
        ("merchant_sales_local", "local_day", ""),
    ];
    for (table, day, only) in reads {
        for chunk in merchants.chunks(MERCHANT_CHUNK) {
            let names: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "SELECT merchant_id, currency, {}, time_zone FROM {table}
                 WHERE {only}{day} >= {} AND {day} <= {} AND merchant_id IN ({})",
                tx.day_text(day),
                tx.day_param(1),
                tx.day_param(2),
                names.join(", ")
            );
            let mut values: Vec<Value<'_>> = vec![low.as_str().into(), high.as_str().into()];
            values.extend(chunk.iter().map(|m| Value::from(*m)));
            for r in tx.query("local zones read", &sql, &values).await? {
                let key = TotalsKey {
                    merchant_id: r.text(0)?.to_owned(),
                    currency: r.text(1)?.to_owned(),
                    day: day_cell(&r, 2, day)?,
                };
                if table == "tally_closes" {
                    known.closed.insert(key.clone());
                }
                known.zones.insert(key, r.text(3)?.to_owned());
            }
        }
    }
    Ok(known)
}

/// The adjustments of a flush, in its transaction: [`from_partials`], with
/// local days judged by what the database holds of them, and a key new to
/// the table by the zone the flush writes it with (the first partial's).
pub(crate) async fn for_flush(
    tx: &mut dyn Tx,
    partials: &[Partial],
    applied: &[usize],
    local_deltas: &LocalTotals,
    now: i64,
) -> Result<Vec<Adjustment>> {
    let Some(through) = closed_through(tx).await? else {
        return Ok(Vec::new());
    };
    let mut known = known(tx, local_deltas.keys(), through).await?;
    for (key, local) in local_deltas {
        known
            .zones
            .entry(key.clone())
            .or_insert_with(|| local.time_zone.to_string());
    }
    Ok(from_partials(partials, applied, Some(through), &known, now))
}

/// Finds the adjustments of a flush that applied `applied` (indexes of
/// `partials`; their local rows merged into `local_deltas`) with
/// [`for_flush`], and writes them, in its transaction.
pub(crate) async fn adjust_flush(
    tx: &mut dyn Tx,
    partials: &[Partial],
    applied: &[usize],
    local_deltas: &LocalTotals,
) -> Result<Vec<Adjustment>> {
    if applied.is_empty() {
        return Ok(Vec::new());
    }
    let now = schemas::day::now_ms();
    let adjustments = for_flush(tx, partials, applied, local_deltas, now).await?;
    record(tx, &adjustments).await?;
    Ok(adjustments)
}

/// The adjustments of an import that adds `totals` and `local`, in its
/// transaction: the rows on closed days, with its job id.
pub(crate) async fn for_import(
    tx: &mut dyn Tx,
    totals: &Totals,
    local: &LocalTotals,
    job_id: i64,
    now: i64,
) -> Result<Vec<Adjustment>> {
    let Some(through) = closed_through(tx).await? else {
        return Ok(Vec::new());
    };
    let known = known(tx, local.keys(), through).await?;
    Ok(from_added(
        totals,
        local,
        Some(through),
        &known,
        job_id,
        now,
    ))
}

/// The rows of closed days a backfill's swap may change, by basis and key:
/// each one's zone and current sums.
pub(crate) type ClosedRows = BTreeMap<(Basis, TotalsKey), (String, Sums)>;

/// The current rows of the closed days a backfill's swap may change, of its
/// merchants: its UTC days, and every zone's rows over the local days it
/// replaces in any zone (a row of another zone, kept from before a zone
/// change, may take the swap's rows of its key).
pub(crate) async fn closed_rows_in(
    tx: &mut dyn Tx,
    scope: &crate::scope::Scope,
    local: &[crate::scope::LocalDays],
    through: Option<i64>,
) -> Result<ClosedRows> {
    let mut rows = ClosedRows::new();
    let Some(through) = through else {
        return Ok(rows);
    };
    // UTC day D is closed when (D + 1) days ≤ through.
    let utc_to = scope.to.min(Day(through.div_euclid(DAY_MS) as i32));
    let utc = format!(
        "SELECT merchant_id, CAST(currency AS TEXT), {}, 'UTC', CAST(sales_amount AS TEXT), sales_count,
                CAST(refund_amount AS TEXT), refund_count
         FROM merchant_sales WHERE day >= {} AND day < {}",
        tx.day_text("day"),
        tx.day_param(1),
        tx.day_param(2)
    );
    let (from, to) = (scope.from.to_string(), utc_to.to_string());
    for r in tx
        .query(
            "closed rows read",
            &utc,
            params![from.as_str(), to.as_str()],
        )
        .await?
    {
        let (key, zone, sums) = crate::reads::zoned_row(&r)?;
        if scope.has_merchant(&key.merchant_id) {
            rows.insert((Basis::Utc, key), (zone, sums));
        }
    }
    let (Some(low), Some(high)) = (
        local.iter().map(|l| l.from).min(),
        local.iter().map(|l| l.to).max(),
    ) else {
        return Ok(rows);
    };
    // No local day ends before (D + 1) days less a zone's reach.
    let high = high.min(Day((through + ZONE_REACH_MS).div_euclid(DAY_MS) as i32));
    let (low, high) = (low.to_string(), high.to_string());
    let range = [low.as_str(), high.as_str()];
    let closes = format!(
        "SELECT merchant_id, currency, {} FROM tally_closes
         WHERE basis = 'local' AND day >= {} AND day < {}",
        tx.day_text("day"),
        tx.day_param(1),
        tx.day_param(2)
    );
    let mut closed = std::collections::HashSet::new();
    for r in tx
        .query("closed rows read", &closes, params![range[0], range[1]])
        .await?
    {
        closed.insert(TotalsKey {
            merchant_id: r.text(0)?.to_owned(),
            currency: r.text(1)?.to_owned(),
            day: day_cell(&r, 2, "day")?,
        });
    }
    let zoned = format!(
        "SELECT merchant_id, currency, {}, time_zone, CAST(sales_amount AS TEXT), sales_count,
                CAST(refund_amount AS TEXT), refund_count
         FROM merchant_sales_local WHERE local_day >= {} AND local_day < {}",
        tx.day_text("local_day"),
        tx.day_param(1),
        tx.day_param(2)
    );
    for r in tx
        .query("closed rows read", &zoned, params![range[0], range[1]])
        .await?
    {
        let (key, zone, sums) = crate::reads::zoned_row(&r)?;
        if scope.has_merchant(&key.merchant_id)
            && (closed.contains(&key) || is_closed(&zone, key.day, Some(through)))
        {
            rows.insert((Basis::Local, key), (zone, sums));
        }
    }
    Ok(rows)
}

/// The adjustments that take `before` to `after` (a key missing from one
/// side is zero there), made by job `job_id`.
pub(crate) fn differences(
    before: &ClosedRows,
    after: &ClosedRows,
    job_id: i64,
    now: i64,
) -> Vec<Adjustment> {
    let keys: std::collections::BTreeSet<_> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (was, now_is) = (before.get(key), after.get(key));
            let zero = Sums::default();
            let change = now_is
                .map_or(zero, |r| r.1)
                .less(&was.map_or(zero, |r| r.1));
            let zone = now_is.or(was).map(|r| r.0.clone()).unwrap_or_default();
            let (basis, key) = key;
            (!change.is_zero()).then(|| Adjustment {
                basis: *basis,
                merchant_id: key.merchant_id.clone(),
                currency: key.currency.clone(),
                day: key.day,
                time_zone: zone,
                sums: change,
                source: Source::Job { job_id },
                applied_at: now,
            })
        })
        .collect()
}

/// The closed-through instant of the latest close run; `None` before the first.
pub(crate) async fn closed_through(tx: &mut dyn Tx) -> Result<Option<i64>> {
    tx.query(
        "closed read",
        "SELECT closed_through_ms FROM tally_close_runs ORDER BY id DESC LIMIT 1",
        params![],
    )
    .await?
    .first()
    .map(|r| r.int(0))
    .transpose()
}

/// Adjustments one statement writes at most (16 parameters each).
const RECORD_CHUNK: usize = 200;

/// Writes `adjustments` to `tally_adjustments`, [`RECORD_CHUNK`] to a statement.
pub(crate) async fn record(tx: &mut dyn Tx, adjustments: &[Adjustment]) -> Result<()> {
    for chunk in adjustments.chunks(RECORD_CHUNK) {
        // Each row's texts, kept while the statement borrows them.
        let texts: Vec<[String; 4]> = chunk
            .iter()
            .map(|a| {
                [
                    a.day.to_string(),
                    a.sums.sales_amount.to_string(),
                    a.sums.refund_amount.to_string(),
                    a.sums.net_amount().to_string(),
                ]
            })
            .collect();
        let mut rows = Vec::with_capacity(chunk.len());
        let mut values: Vec<Value<'_>> = Vec::with_capacity(chunk.len() * 16);
        for (i, (a, [day, sa, ra, net])) in chunk.iter().zip(&texts).enumerate() {
            let n = |k: usize| i * 16 + k;
            rows.push(format!(
                "(${}, ${}, ${}, {}, ${}, {}, ${}, {}, ${}, {}, ${}, ${}, ${}, ${}, ${}, ${})",
                n(1),
                n(2),
                n(3),
                tx.day_param(n(4)),
                n(5),
                tx.amount_param(n(6)),
                n(7),
                tx.amount_param(n(8)),
                n(9),
                tx.amount_param(n(10)),
                n(11),
                n(12),
                n(13),
                n(14),
                n(15),
                n(16)
            ));
            let (topic, partition, first, last, job) = match &a.source {
                Source::Stream {
                    topic,
                    partition,
                    first_offset,
                    last_offset,
                } => (
                    Some(topic.as_str()),
                    Some(*partition),
                    Some(*first_offset),
                    Some(*last_offset),
                    None,
                ),
                Source::Job { job_id } => (None, None, None, None, Some(*job_id)),
            };
            values.extend_from_slice(params![
                basis_text(a.basis),
                &a.merchant_id,
                &a.currency,
                day.as_str(),
                &a.time_zone,
                sa.as_str(),
                a.sums.sales_count,
                ra.as_str(),
                a.sums.refund_count,
                net.as_str(),
                topic,
                partition,
                first,
                last,
                job,
                a.applied_at
            ]);
        }
        let sql = format!(
            "INSERT INTO tally_adjustments (basis, merchant_id, currency, day, time_zone, sales_amount,
                 sales_count, refund_amount, refund_count, net_amount, topic, partition, first_offset,
                 last_offset, job_id, applied_at)
             VALUES {}",
            rows.join(", ")
        );
        tx.execute("adjustment write", &sql, &values).await?;
    }
    Ok(())
}

fn basis_text(basis: Basis) -> &'static str {
    match basis {
        Basis::Utc => "utc",
        Basis::Local => "local",
    }
}

fn basis_of(text: &str) -> Result<Basis> {
    Basis::parse(text).ok_or_else(|| StoreError::Corrupt {
        column: "basis",
        value: text.to_owned(),
        reason: "expected utc or local".into(),
    })
}

/// One close run in `tx`: closes the days ending after the last run's
/// closed-through instant and at or before `completeness_ms - grace_ms`
/// (at most [`MAX_STEP_MS`] further). `None` when no day is due.
async fn close(
    tx: &mut dyn Tx,
    completeness_ms: i64,
    grace_ms: i64,
    now: i64,
) -> Result<Option<CloseRun>> {
    tx.lock_closes(true).await?;
    let target = due_through(completeness_ms, grace_ms);
    let from = match closed_through(tx).await? {
        Some(through) => through,
        None => match earliest_day(tx).await? {
            // Two days before the first day: no zone's day ends earlier.
            Some(day) => (i64::from(day.0) - 2) * DAY_MS,
            None => target - 1,
        },
    };
    if target <= from {
        return Ok(None);
    }
    let through = target.min(from + MAX_STEP_MS);
    let frontier: BTreeMap<String, i64> = tx
        .query(
            "frontier read",
            "SELECT topic, partition, next_offset FROM tally_partitions",
            params![],
        )
        .await?
        .iter()
        .map(|r| Ok((format!("{}/{}", r.text(0)?, r.int(1)?), r.int(2)?)))
        .collect::<Result<_>>()?;
    let frontier_text = serde_json::to_string(&frontier).expect("a map of numbers serialises");
    let run_id = tx
        .query(
            "close run write",
            "INSERT INTO tally_close_runs (closed_at, completeness_ms, grace_ms, closed_through_ms, frontier, rows_closed)
             VALUES ($1, $2, $3, $4, $5, 0) RETURNING id",
            params![now, completeness_ms, grace_ms, through, frontier_text.as_str()],
        )
        .await?
        .first()
        .map(|r| r.int(0))
        .transpose()?
        .ok_or_else(|| StoreError::Corrupt {
            column: "tally_close_runs.id",
            value: String::new(),
            reason: "the insert returned no id".into(),
        })?;
    let mut rows = close_utc_days(tx, run_id, from, through).await?;
    rows += close_local_days(tx, run_id, from, through).await?;
    tx.execute(
        "close run write",
        "UPDATE tally_close_runs SET rows_closed = $2 WHERE id = $1",
        params![run_id, rows],
    )
    .await?;
    if rows >= ANALYZE_AFTER_ROWS {
        // Flushes with late rows read closes by key: statistics that still
        // say the table is small would have them scan it instead.
        tx.execute("close statistics", "ANALYZE tally_closes", params![])
            .await?;
    }
    Ok(Some(CloseRun {
        id: run_id,
        closed_at: now,
        completeness_ms,
        grace_ms,
        closed_through_ms: through,
        frontier,
        rows_closed: rows,
    }))
}

/// A close run that copies this many rows refreshes `tally_closes`'s
/// statistics before it commits.
const ANALYZE_AFTER_ROWS: i64 = 10_000;

/// Every zone's days end on a quarter hour (UTC offsets are whole
/// quarter hours), so a run's closed-through instant moves in them: at most
/// 96 runs a day, each only when a day may have ended.
const QUARTER_HOUR_MS: i64 = 15 * 60_000;

/// The closed-through instant a close run at completeness `completeness_ms`
/// reaches: less the grace period, down to a quarter hour.
pub fn due_through(completeness_ms: i64, grace_ms: i64) -> i64 {
    (completeness_ms - grace_ms).div_euclid(QUARTER_HOUR_MS) * QUARTER_HOUR_MS
}

/// The earliest day of either totals table.
async fn earliest_day(tx: &mut dyn Tx) -> Result<Option<Day>> {
    let sql = format!(
        "SELECT MIN(d) FROM (SELECT {} AS d FROM merchant_sales
                            UNION ALL SELECT {} FROM merchant_sales_local) AS firsts",
        tx.day_text("MIN(day)"),
        tx.day_text("MIN(local_day)")
    );
    let rows = tx.query("earliest day read", &sql, params![]).await?;
    match rows.first().map(|r| r.opt_text(0)).transpose()?.flatten() {
        Some(text) => Day::parse(text).map(Some).map_err(|e| StoreError::Corrupt {
            column: "day",
            value: text.to_owned(),
            reason: e.to_string(),
        }),
        None => Ok(None),
    }
}

/// What `INSERT INTO tally_closes … SELECT` copies from a totals table.
fn close_copy(basis: Basis, zone: &str) -> String {
    let (table, day) = match basis {
        Basis::Utc => ("merchant_sales", "day"),
        Basis::Local => ("merchant_sales_local", "local_day"),
    };
    format!(
        "INSERT INTO tally_closes (basis, merchant_id, currency, day, time_zone, sales_amount,
             sales_count, refund_amount, refund_count, net_amount, run_id)
         SELECT '{basis}', merchant_id, currency, {day}, {zone}, sales_amount, sales_count,
                refund_amount, refund_count, net_amount, $1
         FROM {table}",
        basis = basis_text(basis),
    )
}

/// Closes the UTC days ending in `(from, through]`.
async fn close_utc_days(tx: &mut dyn Tx, run_id: i64, from: i64, through: i64) -> Result<i64> {
    // Day D ends at (D + 1) days.
    let (first, last) = (
        Day(from.div_euclid(DAY_MS) as i32),
        Day((through.div_euclid(DAY_MS) - 1) as i32),
    );
    if first > last {
        return Ok(0);
    }
    let sql = format!(
        "{} WHERE day >= {} AND day <= {} ON CONFLICT DO NOTHING",
        close_copy(Basis::Utc, "'UTC'"),
        tx.day_param(2),
        tx.day_param(3)
    );
    let (first, last) = (first.to_string(), last.to_string());
    let written = tx
        .execute(
            "close write",
            &sql,
            params![run_id, first.as_str(), last.as_str()],
        )
        .await?;
    Ok(written as i64)
}

/// Closes each zone's local days ending in `(from, through]`.
async fn close_local_days(tx: &mut dyn Tx, run_id: i64, from: i64, through: i64) -> Result<i64> {
    // Local day D ends within ZONE_REACH_MS of (D + 1) days.
    let (low, high) = (
        Day(((from - ZONE_REACH_MS).div_euclid(DAY_MS) - 1) as i32).to_string(),
        Day(((through + ZONE_REACH_MS).div_euclid(DAY_MS) - 1) as i32).to_string(),
    );
    let sql = format!(
        "SELECT DISTINCT time_zone, {} FROM merchant_sales_local WHERE local_day >= {} AND local_day <= {}",
        tx.day_text("local_day"),
        tx.day_param(1),
        tx.day_param(2)
    );
    let pairs = tx
        .query(
            "local days read",
            &sql,
            params![low.as_str(), high.as_str()],
        )
        .await?;
    let copy = format!(
        "{} WHERE time_zone = $2 AND local_day = {} ON CONFLICT DO NOTHING",
        close_copy(Basis::Local, "time_zone"),
        tx.day_param(3)
    );
    let mut written = 0;
    for pair in &pairs {
        let (zone, text) = (pair.text(0)?, pair.text(1)?);
        let day = Day::parse(text).map_err(|e| StoreError::Corrupt {
            column: "local_day",
            value: text.to_owned(),
            reason: e.to_string(),
        })?;
        let end = day_end_ms(zone, day);
        if from < end && end <= through {
            written += tx
                .execute("close write", &copy, params![run_id, zone, text])
                .await?;
        }
    }
    Ok(written as i64)
}

/// A row selected as basis, merchant, currency, day, zone, sales amount and
/// count, refund amount and count ([`keyed_columns`]), then any more.
fn keyed(r: &Row) -> Result<(Basis, TotalsKey, String, Sums)> {
    let (key, sums) = parse_row(
        r.text(1)?.to_owned(),
        r.text(2)?.to_owned(),
        r.text(3)?,
        [r.text(5)?, r.text(7)?],
        [r.int(6)?, r.int(8)?],
    )?;
    Ok((basis_of(r.text(0)?)?, key, r.text(4)?.to_owned(), sums))
}

/// The columns [`keyed`] reads.
fn keyed_columns(tx: &dyn Tx) -> String {
    format!(
        "basis, merchant_id, currency, {}, time_zone, CAST(sales_amount AS TEXT), sales_count,
         CAST(refund_amount AS TEXT), refund_count",
        tx.day_text("day")
    )
}

/// The rows of `table` (closes or adjustments) of one basis over `[from,
/// to]`, of one merchant or all: [`keyed_columns`], then `more`.
async fn keyed_rows(
    tx: &mut dyn Tx,
    table: &str,
    more: &str,
    order: &str,
    merchant: Option<&str>,
    basis: Basis,
    [from, to]: [Day; 2],
) -> Result<Vec<Row>> {
    let sql = format!(
        "SELECT {}, {more} FROM {table}
         WHERE basis = $1 AND (CAST($2 AS TEXT) IS NULL OR merchant_id = CAST($2 AS TEXT))
           AND day >= {} AND day <= {}
         ORDER BY {order}",
        keyed_columns(tx),
        tx.day_param(3),
        tx.day_param(4)
    );
    let (from, to) = (from.to_string(), to.to_string());
    tx.query(
        "closed days read",
        &sql,
        params![basis_text(basis), merchant, from.as_str(), to.as_str()],
    )
    .await
}

/// A merchant's closes of one basis over `range` (all merchants' when `None`).
async fn closes_in(
    tx: &mut dyn Tx,
    merchant: Option<&str>,
    basis: Basis,
    range: [Day; 2],
) -> Result<Vec<Closed>> {
    let order = "merchant_id, day, currency";
    keyed_rows(tx, "tally_closes", "run_id", order, merchant, basis, range)
        .await?
        .iter()
        .map(|r| {
            let (basis, key, time_zone, sums) = keyed(r)?;
            Ok(Closed {
                basis,
                key,
                time_zone,
                sums,
                run_id: r.int(9)?,
            })
        })
        .collect()
}

/// A merchant's adjustments of one basis over `range` (all merchants'
/// when `None`), in the order they were applied.
async fn adjustments_in(
    tx: &mut dyn Tx,
    merchant: Option<&str>,
    basis: Basis,
    range: [Day; 2],
) -> Result<Vec<Adjustment>> {
    let more = "topic, partition, first_offset, last_offset, job_id, applied_at";
    keyed_rows(tx, "tally_adjustments", more, "id", merchant, basis, range)
        .await?
        .iter()
        .map(|r| {
            let (basis, key, time_zone, sums) = keyed(r)?;
            let source = match r.opt_int(13)? {
                Some(job_id) => Source::Job { job_id },
                None => Source::Stream {
                    topic: r.text(9)?.to_owned(),
                    partition: r.int32(10)?,
                    first_offset: r.int(11)?,
                    last_offset: r.int(12)?,
                },
            };
            Ok(Adjustment {
                basis,
                merchant_id: key.merchant_id,
                currency: key.currency,
                day: key.day,
                time_zone,
                sums,
                source,
                applied_at: r.int(14)?,
            })
        })
        .collect()
}

/// One adjustment of a job as the metrics count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its id.
    pub id: i64,
    /// Currency code.
    pub currency: String,
    /// `|sales_amount| + |refund_amount|`: the money it moved.
    pub moved: schemas::Amount,
}

async fn applied_since(tx: &mut dyn Tx, after: i64, limit: i64) -> Result<Vec<Applied>> {
    tx.query(
        "adjustments read",
        "SELECT id, currency, job_id, CAST(sales_amount AS TEXT), CAST(refund_amount AS TEXT)
         FROM tally_adjustments WHERE id > $1 AND job_id IS NOT NULL ORDER BY id LIMIT $2",
        params![after, limit],
    )
    .await?
    .iter()
    .map(|r| {
        let amount = |i: usize| -> Result<schemas::Amount> {
            let text = r.text(i)?;
            schemas::Amount::parse_stored(text).map_err(|e| StoreError::Corrupt {
                column: "tally_adjustments amount",
                value: text.to_owned(),
                reason: e.to_string(),
            })
        };
        Ok(Applied {
            id: r.int(0)?,
            currency: r.text(1)?.to_owned(),
            moved: schemas::Amount(amount(3)?.0.abs() + amount(4)?.0.abs()),
        })
    })
    .collect()
}

/// Close runs, newest first.
async fn runs(tx: &mut dyn Tx, limit: i64) -> Result<Vec<CloseRun>> {
    tx.query(
        "close runs read",
        "SELECT id, closed_at, completeness_ms, grace_ms, closed_through_ms, frontier, rows_closed
         FROM tally_close_runs ORDER BY id DESC LIMIT $1",
        params![limit],
    )
    .await?
    .iter()
    .map(|r| {
        let text = r.text(5)?;
        Ok(CloseRun {
            id: r.int(0)?,
            closed_at: r.int(1)?,
            completeness_ms: r.int(2)?,
            grace_ms: r.int(3)?,
            closed_through_ms: r.int(4)?,
            frontier: serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
                column: "tally_close_runs.frontier",
                value: text.to_owned(),
                reason: e.to_string(),
            })?,
            rows_closed: r.int(6)?,
        })
    })
    .collect()
}

/// Whether a day is still open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DayState {
    /// Its totals may still change as events arrive.
    Open,
    /// Closed: later changes are adjustments.
    Closed,
}

/// One (day, currency) of a merchant: its state, closed totals, the
/// adjustments since, and the current totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayRecord {
    /// The day.
    pub day: Day,
    /// Currency code.
    pub currency: String,
    /// The zone whose calendar the day is.
    pub time_zone: String,
    /// Open or closed.
    pub state: DayState,
    /// The close run that closed it, when it had activity then.
    pub close_run: Option<i64>,
    /// The totals at the close (zero when it had no activity then, or is open).
    #[serde(serialize_with = "money")]
    pub closed: Sums,
    /// The changes since the close, in the order they were applied.
    pub adjustments: Vec<Adjustment>,
    /// The sum of `adjustments`.
    #[serde(serialize_with = "money")]
    pub adjusted: Sums,
    /// The totals now: `closed + adjusted` for a closed day.
    #[serde(serialize_with = "money")]
    pub current: Sums,
}

/// A merchant's days as the totals API and `tally days` give them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaysAnswer {
    /// The merchant.
    pub merchant_id: String,
    /// Which table's days.
    pub basis: Basis,
    /// First day of the range.
    pub from: Day,
    /// Last day of the range (included).
    pub to: Day,
    /// Days ending at or before this instant (RFC 3339, UTC) are closed;
    /// `null` before the first close.
    pub closed_through: Option<String>,
    /// Each (day, currency) with totals, a close or an adjustment.
    pub days: Vec<DayRecord>,
}

impl DaysAnswer {
    /// The answer for `merchant` over `[from, to]` on `basis`.
    pub fn new(
        merchant: &str,
        basis: Basis,
        [from, to]: [Day; 2],
        read: MerchantDays,
    ) -> DaysAnswer {
        DaysAnswer {
            merchant_id: merchant.to_owned(),
            basis,
            from,
            to,
            closed_through: read
                .closed_through_ms
                .map(|ms| schemas::day::format_rfc3339_millis(ms.saturating_mul(1_000))),
            days: read.days,
        }
    }
}

/// A merchant's days over a range, and the closed-through instant they were judged by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MerchantDays {
    /// Days ending at or before this instant (ms) are closed; `None` before
    /// the first close run.
    pub closed_through_ms: Option<i64>,
    /// Each (day, currency) with totals, a close or an adjustment, by day then currency.
    pub days: Vec<DayRecord>,
}

async fn merchant_days(
    tx: &mut dyn Tx,
    merchant: &str,
    range: [Day; 2],
    basis: Basis,
) -> Result<MerchantDays> {
    let through = closed_through(tx).await?;
    let mut days: BTreeMap<(Day, String), DayRecord> = BTreeMap::new();
    let blank = |day: Day, currency: &str, zone: &str| DayRecord {
        day,
        currency: currency.to_owned(),
        time_zone: zone.to_owned(),
        state: DayState::Open,
        close_run: None,
        closed: Sums::default(),
        adjustments: Vec::new(),
        adjusted: Sums::default(),
        current: Sums::default(),
    };
    for row in crate::reads::merchant_days(tx, merchant, range, None, basis).await? {
        let record = days
            .entry((row.day, row.currency.clone()))
            .or_insert_with(|| blank(row.day, &row.currency, &row.time_zone));
        record.current = row.sums;
    }
    for closed in closes_in(tx, Some(merchant), basis, range).await? {
        let key = closed.key;
        let record = days
            .entry((key.day, key.currency.clone()))
            .or_insert_with(|| blank(key.day, &key.currency, &closed.time_zone));
        record.closed = closed.sums;
        record.close_run = Some(closed.run_id);
    }
    for adjustment in adjustments_in(tx, Some(merchant), basis, range).await? {
        let record = days
            .entry((adjustment.day, adjustment.currency.clone()))
            .or_insert_with(|| blank(adjustment.day, &adjustment.currency, &adjustment.time_zone));
        record.adjusted.merge(&adjustment.sums);
        record.adjustments.push(adjustment);
    }
    for record in days.values_mut() {
        if is_closed(&record.time_zone, record.day, through) {
            record.state = DayState::Closed;
        }
    }
    Ok(MerchantDays {
        closed_through_ms: through,
        days: days.into_values().collect(),
    })
}

impl Store {
    /// One close run: closes every day that ended at or before
    /// `completeness_ms - grace_ms` and after the last run's closed-through
    /// instant (a week of days at most: call again while it returns a run).
    /// `None` when no day is due.
    pub async fn close_days(
        &self,
        completeness_ms: i64,
        grace_ms: i64,
        now: i64,
    ) -> Result<Option<CloseRun>> {
        // Most polls find nothing due: they take no lock at all.
        let target = due_through(completeness_ms, grace_ms);
        if self.closed_through().await?.is_some_and(|t| t >= target) {
            return Ok(None);
        }
        transact!(job self, "close days", Write, |tx| close(tx, completeness_ms, grace_ms, now))
    }

    /// The closed-through instant of the latest close run, if any.
    pub async fn closed_through(&self) -> Result<Option<i64>> {
        transact!(self, "closed read", Read, |tx| closed_through(tx))
    }

    /// At most `limit` adjustments made by jobs with ids above `after`, in
    /// id order (a flush's are counted where it applies them).
    pub async fn adjustments_applied_since(&self, after: i64, limit: i64) -> Result<Vec<Applied>> {
        transact!(self, "adjustments read", Read, |tx| applied_since(
            tx, after, limit
        ))
    }

    /// The latest `limit` close runs, newest first.
    pub async fn close_runs(&self, limit: i64) -> Result<Vec<CloseRun>> {
        transact!(self, "close runs read", Read, |tx| runs(tx, limit))
    }

    /// Every close of one basis over `[from, to]`, of one merchant or all.
    pub async fn closes(
        &self,
        merchant: Option<String>,
        basis: Basis,
        range: [Day; 2],
    ) -> Result<Vec<Closed>> {
        transact!(self, "closes read", Read, |tx| closes_in(
            tx,
            merchant.as_deref(),
            basis,
            range
        ))
    }

    /// Every adjustment of one basis over `[from, to]`, of one merchant or
    /// all, in the order they were applied.
    pub async fn adjustments(
        &self,
        merchant: Option<String>,
        basis: Basis,
        range: [Day; 2],
    ) -> Result<Vec<Adjustment>> {
        transact!(self, "adjustments read", Read, |tx| adjustments_in(
            tx,
            merchant.as_deref(),
            basis,
            range
        ))
    }

    /// A merchant's days over `[from, to]` on `basis`: each one's state,
    /// closed totals, adjustments and current totals, read in one
    /// transaction.
    pub async fn merchant_days_closed(
        &self,
        merchant: &str,
        range: [Day; 2],
        basis: Basis,
    ) -> Result<MerchantDays> {
        let merchant = merchant.to_owned();
        transact!(self, "days read", Read, |tx| merchant_days(
            tx, &merchant, range, basis
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::partial::EventCounts;
    use schemas::{Amount, PartialRow};

    #[test]
    fn a_day_is_closed_once_it_has_ended_in_its_zone() {
        let day = Day::parse("2026-03-01").unwrap();
        let utc_end = (i64::from(day.0) + 1) * DAY_MS;
        assert!(!is_closed("UTC", day, None));
        assert!(is_closed("UTC", day, Some(utc_end)));
        assert!(!is_closed("UTC", day, Some(utc_end - 1)));
        // Tokyo's day ended nine hours before UTC's.
        assert!(is_closed("Asia/Tokyo", day, Some(utc_end - 9 * 3_600_000)));
        assert!(!is_closed(
            "Asia/Tokyo",
            day,
            Some(utc_end - 9 * 3_600_000 - 1)
        ));
        // St. John's, three and a half hours after.
        let st_johns = utc_end + 7 * 1_800_000;
        assert!(!is_closed("America/St_Johns", day, Some(st_johns - 1)));
        assert!(is_closed("America/St_Johns", day, Some(st_johns)));
    }

    #[test]
    fn a_flush_adjusts_only_closed_days_with_its_offsets() {
        let day = Day::parse("2026-03-01").unwrap();
        let row = |day: Day, cents: i128| PartialRow {
            key: TotalsKey {
                merchant_id: "m".into(),
                currency: "EUR".into(),
                day,
            },
            sums: Sums {
                sales_amount: Amount(cents * 100),
                sales_count: 1,
                ..Sums::default()
            },
        };
        let partial = |first: i64, rows: Vec<PartialRow>| Partial {
            topic: "orders".into(),
            partition: 3,
            epoch: 1,
            first_offset: first,
            last_offset: first + 9,
            dedupe_from_offset: 0,
            dedupe_clock_ms: None,
            events: EventCounts::default(),
            max_append_ms: None,
            rows,
            local_rows: Vec::new(),
        };
        let partials = [
            partial(0, vec![row(day, 5), row(Day(day.0 + 5), 7)]),
            partial(10, vec![row(Day(day.0 + 6), 11)]),
            partial(20, vec![row(day, 13)]),
        ];
        let through = Some((i64::from(day.0) + 1) * DAY_MS);
        let adjustments = from_partials(&partials, &[0, 1, 2], through, &Known::default(), 42);
        assert_eq!(adjustments.len(), 1, "{adjustments:?}");
        let only = &adjustments[0];
        assert_eq!(
            (only.day, only.sums.sales_amount, only.sums.sales_count),
            (day, Amount(1_800), 2)
        );
        assert_eq!(
            only.source,
            Source::Stream {
                topic: "orders".into(),
                partition: 3,
                first_offset: 0,
                last_offset: 29
            }
        );
        assert!(from_partials(&partials, &[0, 1, 2], None, &Known::default(), 42).is_empty());
    }
}
