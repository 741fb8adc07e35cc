//! SQLite, the embedded sink. Amounts are stored as decimal text and summed
//! in exact integer units by tally, never by SQLite's floating arithmetic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use schemas::{LocalTotals, Partial, Sums, Totals, TotalsKey};

use crate::error::{lite, Result, StoreError};
use crate::fence::{self, Fence, Plan};
use crate::sql::{BoxFuture, Mode, Tx};
use crate::{closes, parse_row, sources, Claim, PartitionProgress, Standing};

mod tx;

const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "backfills",
        include_str!("../migrations/sqlite/0002_backfills.sql"),
    ),
    (
        3,
        "dedupe_clock",
        include_str!("../migrations/sqlite/0003_dedupe_clock.sql"),
    ),
    (
        4,
        "imports",
        include_str!("../migrations/sqlite/0004_imports.sql"),
    ),
    (
        5,
        "merchants",
        include_str!("../migrations/sqlite/0005_merchants.sql"),
    ),
    (
        6,
        "local_sales",
        include_str!("../migrations/sqlite/0006_local_sales.sql"),
    ),
    (
        7,
        "day_indexes",
        include_str!("../migrations/sqlite/0007_day_indexes.sql"),
    ),
    (
        8,
        "gap_epoch",
        include_str!("../migrations/sqlite/0008_gap_epoch.sql"),
    ),
    (
        9,
        "settings",
        include_str!("../migrations/sqlite/0009_settings.sql"),
    ),
    (
        10,
        "closes",
        include_str!("../migrations/sqlite/0010_closes.sql"),
    ),
];
/// The time of a write as stored (`updated_at` and the like), taken by
/// SQLite. A statement that writes many rows binds [`now_text`] instead: SQLite
/// works the expression out again for every row.
pub(super) const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// The time now, as [`NOW`] gives it.
pub(super) fn now_text() -> String {
    schemas::day::format_rfc3339_millis(schemas::day::now_ms() * 1000)
}
/// How long a writer waits for another process's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Limit on one call: the busy timeout plus time for the work itself.
pub(crate) const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A SQLite file shared by every process that opens it (WAL mode).
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    pub(crate) health: crate::health::Health,
    /// The job time limit, in ms ([`crate::Store::set_job_timeout`]).
    pub(crate) job_timeout_ms: std::sync::atomic::AtomicU64,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the file at `path`.
    ///
    /// Fails when the file cannot be opened or a migration fails.
    pub async fn open(path: &str) -> Result<SqliteStore> {
        let path = path.to_owned();
        let conn = blocking(move || {
            let mut conn = Connection::open(&path).map_err(lite("open"))?;
            conn.busy_timeout(BUSY_TIMEOUT)
                .map_err(lite("busy timeout"))?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(lite("journal mode"))?;
            // Totals are money: every commit is durable before it is acknowledged.
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(lite("synchronous"))?;
            // 64 MiB of pages (SQLite's default is 2 MiB): a backfill's swap
            // rewrites hundreds of thousands of rows in one transaction, and
            // spilling its pages to the log midway doubled its time.
            conn.pragma_update(None, "cache_size", -65_536)
                .map_err(lite("cache size"))?;
            add_functions(&conn).map_err(lite("functions"))?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            health: Default::default(),
            job_timeout_ms: crate::DEFAULT_JOB_TIMEOUT_MS.into(),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        blocking(move || {
            // A call that panicked poisoned the lock and may have left its
            // transaction open: roll that back, and the connection is sound.
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !guard.is_autocommit() {
                guard
                    .execute_batch("ROLLBACK")
                    .map_err(lite("rollback after a panic"))?;
            }
            f(&mut guard)
        })
        .await
    }

    /// Runs `work` in one transaction on the blocking thread that holds the
    /// connection: a writing one takes the write lock first (`BEGIN
    /// IMMEDIATE`), so two writers never deadlock.
    pub(crate) async fn transact<R, F>(&self, mode: Mode, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R>> + Send + 'static,
    {
        // The work's statements are synchronous; its future completes in one poll.
        let runtime = tokio::runtime::Handle::current();
        self.with(move |conn| {
            in_transaction(conn, mode, |conn| {
                runtime.block_on(work(&mut tx::LiteTx(conn)))
            })
        })
        .await
    }

    pub(crate) async fn claim(&self, topic: &str, partition: i32, owner: &str) -> Result<Claim> {
        let (topic, owner) = (topic.to_owned(), owner.to_owned());
        self.with(move |conn| {
            let sql = format!(
                "INSERT INTO tally_partitions (topic, partition, epoch, next_offset,
                     dedupe_from_offset, claimed_by, claimed_at, updated_at)
                 VALUES (?1, ?2, 1, 0, 0, ?3, {NOW}, {NOW})
                 ON CONFLICT (topic, partition) DO UPDATE SET
                     epoch = epoch + 1, claimed_by = excluded.claimed_by, claimed_at = {NOW}
                 RETURNING epoch, next_offset, dedupe_from_offset, dedupe_clock_ms"
            );
            conn.query_row(&sql, params![topic, partition, owner], |r| {
                Ok(Claim {
                    epoch: r.get(0)?,
                    next_offset: r.get(1)?,
                    dedupe_from_offset: r.get(2)?,
                    dedupe_clock_ms: r.get(3)?,
                })
            })
            .map_err(lite("claim"))
        })
        .await
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        self.with(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(lite("ping"))
        })
        .await
    }

    pub(crate) async fn epoch(&self, topic: &str, partition: i32) -> Result<Option<Standing>> {
        let topic = topic.to_owned();
        self.with(move |conn| {
            conn.query_row(
                "SELECT epoch, gap_epoch FROM tally_partitions WHERE topic = ?1 AND partition = ?2",
                params![topic, partition],
                |r| {
                    Ok(Standing {
                        epoch: r.get(0)?,
                        gap_epoch: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(lite("epoch read"))
        })
        .await
    }

    pub(crate) async fn apply(&self, partials: &[Partial]) -> Result<Plan> {
        let partials = partials.to_vec();
        let runtime = tokio::runtime::Handle::current();
        self.with(move |conn| {
            in_transaction(conn, Mode::Write, |conn| {
                apply_in(conn, &partials, &runtime)
            })
        })
        .await
    }

    pub(crate) async fn totals(&self, merchant: Option<&str>) -> Result<Totals> {
        let merchant = merchant.map(str::to_owned);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT merchant_id, currency, day, sales_amount, sales_count, refund_amount,
                            refund_count
                     FROM merchant_sales WHERE ?1 IS NULL OR merchant_id = ?1",
                )
                .map_err(lite("totals read"))?;
            let rows = stmt
                .query_map(params![merchant], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .map_err(lite("totals read"))?;
            let mut totals = Totals::new();
            for row in rows {
                let (m, c, d, sa, sc, ra, rc) = row.map_err(lite("totals read"))?;
                let (key, sums) = parse_row(m, c, &d, [&sa, &ra], [sc, rc])?;
                totals.insert(key, sums);
            }
            Ok(totals)
        })
        .await
    }

    pub(crate) async fn progress(&self) -> Result<Vec<PartitionProgress>> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT topic, partition, epoch, next_offset, dedupe_from_offset,
                            counted_events, duplicate_events, invalid_events, claimed_by, dedupe_clock_ms
                     FROM tally_partitions ORDER BY topic, partition",
                )
                .map_err(lite("progress read"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(PartitionProgress {
                        topic: r.get(0)?,
                        partition: r.get(1)?,
                        fence: Fence { epoch: r.get(2)?, next_offset: r.get(3)?, dedupe_from_offset: r.get(4)?, dedupe_clock_ms: r.get(9)? },
                        counted_events: r.get(5)?,
                        duplicate_events: r.get(6)?,
                        invalid_events: r.get(7)?,
                        claimed_by: r.get(8)?,
                    })
                })
                .map_err(lite("progress read"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(lite("progress read"))
        })
        .await
    }
}

/// Exact arithmetic on amounts as SQLite holds them (their canonical
/// text), so a statement can move totals without a round trip through
/// tally: `tally_add(a, b)` is `a + b`, and `tally_net(sales, refunds)` is
/// `sales - refunds`, each as canonical text. A value that is not an
/// amount, or a result beyond the columns' 38 digits, fails the statement.
fn add_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("tally_add", 2, flags, |ctx| {
        amounts(ctx, "tally_add", i128::checked_add)
    })?;
    conn.create_scalar_function("tally_net", 2, flags, |ctx| {
        amounts(ctx, "tally_net", i128::checked_sub)
    })
}

/// Units (ten-thousandths) an amount column holds at most: 38 digits.
const MAX_UNITS: u128 = 10u128.pow(schemas::amount::PRECISION as u32) - 1;

/// `op` of the two amounts of a call of `name`, as canonical text.
fn amounts(
    ctx: &rusqlite::functions::Context<'_>,
    name: &str,
    op: fn(i128, i128) -> Option<i128>,
) -> rusqlite::Result<String> {
    let fail = |reason: String| rusqlite::Error::UserFunctionError(reason.into());
    let amount = |i: usize| {
        let value = ctx.get_raw(i);
        let text = value.as_str().map_err(|_| {
            fail(format!(
                "{name}: argument {} is {value:?}, not an amount's text",
                i + 1
            ))
        })?;
        schemas::Amount::parse_stored(text)
            .map_err(|e| fail(format!("{name}: argument {} is {text:?}: {e}", i + 1)))
    };
    let (a, b) = (amount(0)?, amount(1)?);
    match op(a.0, b.0) {
        Some(units) if units.unsigned_abs() <= MAX_UNITS => Ok(schemas::Amount(units).to_string()),
        _ => Err(fail(format!(
            "{name}({a}, {b}) is beyond the 38 digits an amount holds"
        ))),
    }
}

/// A totals table: its day column, whether its rows keep a zone, and where a
/// backfill stages its rows.
pub(super) struct Table {
    pub(super) name: &'static str,
    pub(super) day: &'static str,
    pub(super) zoned: bool,
    pub(super) staged: &'static str,
}

/// `merchant_sales`, by UTC day.
pub(super) const SALES: Table = Table {
    name: "merchant_sales",
    day: "day",
    zoned: false,
    staged: "tally_backfill_rows",
};

/// `merchant_sales_local`, by local day, each row with its zone.
pub(super) const LOCAL_SALES: Table = Table {
    name: "merchant_sales_local",
    day: "local_day",
    zoned: true,
    staged: "tally_backfill_local_rows",
};

/// Rows written by one statement of [`add_rows`]: ten values a row keeps a
/// statement well within SQLite's limit of bound values.
const ADD_CHUNK: usize = 200;

/// Adds each row's sums (with its zone, for a zoned table) to the stored
/// row of its key, summed exactly by `tally_add` (SQLite holds amounts as
/// text). A new row takes the given zone; an existing one keeps its own. A
/// key given twice is added twice, the first one's zone kept: as if the
/// rows were added one after another.
///
/// Rows go `ADD_CHUNK` to a statement, each an insert that adds to the
/// stored row when there is one. (A read and a write per row made a
/// backfill's swap of 100,000 rows take most of a second.)
pub(super) fn add_rows<'a>(
    tx: &Connection,
    table: &Table,
    rows: impl IntoIterator<Item = (&'a TotalsKey, &'a Sums, &'a str)>,
) -> Result<()> {
    let rows: Vec<_> = rows.into_iter().collect();
    let (name, day, zoned) = (table.name, table.day, table.zoned);
    let (zone_insert, row) = if zoned {
        (", time_zone", "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    } else {
        ("", "(?, ?, ?, ?, ?, ?, ?, ?, ?)")
    };
    let now = now_text();
    let head = format!(
        "INSERT INTO {name} (merchant_id, currency, {day}, sales_amount, sales_count,
             refund_amount, refund_count, net_amount, updated_at{zone_insert})"
    );
    let tail = add_to_stored(day);
    for chunk in rows.chunks(ADD_CHUNK) {
        let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() * 10);
        for &(key, sums, zone) in chunk {
            values.extend(row_values(key, sums));
            values.push(sums.net_amount().to_string().into());
            values.push(now.clone().into());
            if zoned {
                values.push(zone.to_owned().into());
            }
        }
        insert_many(tx, "upsert write", [&head, &tail], row, chunk.len(), values)?;
    }
    Ok(())
}

/// The clause that adds an inserted row to the stored row of its key
/// (keeping the stored zone), in exact units.
pub(super) fn add_to_stored(day: &str) -> String {
    format!(
        "ON CONFLICT (merchant_id, currency, {day}) DO UPDATE SET
             sales_amount = tally_add(sales_amount, excluded.sales_amount),
             sales_count = sales_count + excluded.sales_count,
             refund_amount = tally_add(refund_amount, excluded.refund_amount),
             refund_count = refund_count + excluded.refund_count,
             net_amount = tally_net(tally_add(sales_amount, excluded.sales_amount),
                                    tally_add(refund_amount, excluded.refund_amount)),
             updated_at = excluded.updated_at"
    )
}

/// A totals row's key and sums as SQLite values: merchant, currency, day,
/// sales amount and count, refund amount and count.
pub(super) fn row_values(key: &TotalsKey, sums: &Sums) -> [rusqlite::types::Value; 7] {
    [
        key.merchant_id.clone().into(),
        key.currency.clone().into(),
        key.day.to_string().into(),
        sums.sales_amount.to_string().into(),
        sums.sales_count.into(),
        sums.refund_amount.to_string().into(),
        sums.refund_count.into(),
    ]
}

/// Runs `head` (an `INSERT … (columns)`) with `rows` tuples of `row`
/// (placeholders), then `tail` (an `ON CONFLICT` clause, or nothing),
/// bound to `values` in order: many rows to one statement.
pub(super) fn insert_many(
    tx: &Connection,
    op: &'static str,
    [head, tail]: [&str; 2],
    row: &str,
    rows: usize,
    values: Vec<rusqlite::types::Value>,
) -> Result<()> {
    let rows = vec![row; rows].join(", ");
    tx.prepare_cached(&format!("{head} VALUES {rows} {tail}"))
        .and_then(|mut insert| insert.execute(rusqlite::params_from_iter(values)))
        .map_err(lite(op))?;
    Ok(())
}

/// Adds UTC-day sums to `merchant_sales`.
pub(super) fn upsert(tx: &Connection, deltas: &Totals) -> Result<()> {
    add_rows(tx, &SALES, deltas.iter().map(|(k, s)| (k, s, "")))
}

/// Adds local-day sums to `merchant_sales_local`; a row keeps its zone.
pub(super) fn upsert_local(tx: &Connection, deltas: &LocalTotals) -> Result<()> {
    let rows = deltas
        .iter()
        .map(|(k, l)| (k, &l.sums, l.time_zone.as_ref()));
    add_rows(tx, &LOCAL_SALES, rows)
}

/// Runs `work` in one transaction of `mode`: a writing one takes the write
/// lock first (`BEGIN IMMEDIATE`), so two writers never deadlock. Commits
/// when `work` succeeds, rolls back otherwise.
fn in_transaction<R>(
    conn: &mut Connection,
    mode: Mode,
    work: impl FnOnce(&mut Connection) -> Result<R>,
) -> Result<R> {
    let begin = match mode {
        Mode::Read => "BEGIN DEFERRED",
        Mode::Write => "BEGIN IMMEDIATE",
    };
    conn.execute_batch(begin).map_err(lite("begin"))?;
    let out = work(conn);
    let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
    if let Err(error) = conn.execute_batch(end) {
        let _ = conn.execute_batch("ROLLBACK");
        return out.and(Err(lite("commit")(error)));
    }
    out
}

/// [`SqliteStore::apply`]'s work, inside its transaction.
fn apply_in(
    conn: &mut Connection,
    partials: &[Partial],
    runtime: &tokio::runtime::Handle,
) -> Result<Plan> {
    let mut fences = BTreeMap::new();
    for (topic, partition) in sources(partials) {
        let fence = conn
            .query_row(
                "SELECT epoch, next_offset, dedupe_from_offset, dedupe_clock_ms FROM tally_partitions
                 WHERE topic = ?1 AND partition = ?2",
                params![topic, partition],
                |r| Ok(Fence { epoch: r.get(0)?, next_offset: r.get(1)?, dedupe_from_offset: r.get(2)?, dedupe_clock_ms: r.get(3)? }),
            )
            .optional()
            .map_err(lite("fence read"))?;
        if let Some(fence) = fence {
            fences.insert((topic, partition), fence);
        }
    }
    let mut plan = fence::plan(&fences, partials);
    // The adjustments' statements are synchronous; their futures complete
    // in one poll.
    plan.adjustments = runtime.block_on(closes::adjust_flush(
        &mut tx::LiteTx(conn),
        partials,
        &plan.applied_partials,
        &plan.local_deltas,
    ))?;
    upsert(conn, &plan.deltas)?;
    upsert_local(conn, &plan.local_deltas)?;
    advance(conn, &plan)?;
    for ((topic, partition), epoch) in &plan.gaps {
        conn.execute(
            "UPDATE tally_partitions SET gap_epoch = ?3 WHERE topic = ?1 AND partition = ?2 AND epoch = ?3",
            params![topic, partition, epoch],
        )
        .map_err(lite("gap mark"))?;
    }
    Ok(plan)
}

fn advance(tx: &Connection, plan: &Plan) -> Result<()> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "UPDATE tally_partitions SET next_offset = ?3, dedupe_from_offset = ?4, dedupe_clock_ms = ?8,
                 counted_events = counted_events + ?5, duplicate_events = duplicate_events + ?6,
                 invalid_events = invalid_events + ?7, updated_at = {NOW}
             WHERE topic = ?1 AND partition = ?2"
        ))
        .map_err(lite("fence advance"))?;
    for ((topic, partition), fence) in &plan.advanced {
        let events = plan
            .events
            .get(&(topic.clone(), *partition))
            .copied()
            .unwrap_or_default();
        stmt.execute(params![
            topic,
            partition,
            fence.next_offset,
            fence.dedupe_from_offset,
            events.counted as i64,
            events.duplicate as i64,
            events.invalid as i64,
            fence.dedupe_clock_ms
        ])
        .map_err(lite("fence advance"))?;
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(lite("begin migration"))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS tally_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
    )
    .map_err(lite("migration table"))?;
    for &(version, name, sql) in MIGRATIONS {
        let done: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM tally_migrations WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()
            .map_err(lite("migration check"))?;
        if done.is_none() {
            tx.execute_batch(sql).map_err(lite("migration"))?;
            tx.execute(
                &format!("INSERT INTO tally_migrations VALUES (?1, ?2, {NOW})"),
                params![version, name],
            )
            .map_err(lite("migration record"))?;
            tracing::info!(version, name, "Applied SQLite migration.");
        }
    }
    tx.commit().map_err(lite("commit migration"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::params;

    #[test]
    fn amounts_add_and_net_exactly_in_sql_and_refuse_what_is_not_an_amount() {
        let conn = Connection::open_in_memory().unwrap();
        add_functions(&conn).unwrap();
        let call = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, String>(0));
        let cases = [
            ("SELECT tally_add('0.1000', '0.2000')", "0.3000"),
            ("SELECT tally_net('19.9900', '20.0000')", "-0.0100"),
            ("SELECT tally_add('-5.0000', '5.0000')", "0.0000"),
            (
                "SELECT tally_add('99999999999999999999999999999999.9999', '0.0001')",
                "100000000000000000000000000000000.0000",
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(call(sql).unwrap(), want, "{sql}");
        }
        // Each refusal names the function, the argument and the value.
        for (sql, names) in [
            (
                "SELECT tally_add('12.5x', '1.0000')",
                "argument 1 is \"12.5x\"",
            ),
            ("SELECT tally_net('1.0000', NULL)", "argument 2 is Null"),
            (
                "SELECT tally_add('9999999999999999999999999999999999.9999', '0.0001')",
                "beyond the 38 digits",
            ),
        ] {
            let error = call(sql).unwrap_err().to_string();
            assert!(error.contains(names), "{sql}: {error}");
        }
    }

    #[test]
    fn rows_added_many_to_a_statement_sum_like_rows_added_one_by_one() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        add_functions(&conn).unwrap();
        let key = |i: usize| TotalsKey {
            merchant_id: format!("m-{}", i % 900),
            currency: ["EUR", "USD"][i % 900 % 2].into(),
            day: schemas::Day(20_000 + (i % 900 % 3) as i32),
        };
        let sums = |i: usize| {
            let mut sums = Sums::default();
            sums.add_event(schemas::Kind::Sale, schemas::Amount(i as i128 + 1));
            sums
        };
        // 1,000 rows over 900 keys (100 given twice), in several chunks; then
        // again, over the stored rows, whose zone must stay.
        let (keys, deltas): (Vec<TotalsKey>, Vec<Sums>) =
            (0..1_000).map(|i| (key(i), sums(i))).unzip();
        for zone in ["Asia/Tokyo", "UTC"] {
            let rows = keys.iter().zip(&deltas).map(|(k, s)| (k, s, zone));
            add_rows(&conn, &LOCAL_SALES, rows).unwrap();
        }
        let mut expected: BTreeMap<(String, String, String), (i128, i64)> = BTreeMap::new();
        for (k, s) in keys.iter().zip(&deltas) {
            let e = expected
                .entry((k.merchant_id.clone(), k.currency.clone(), k.day.to_string()))
                .or_default();
            e.0 += 2 * s.sales_amount.0;
            e.1 += 2 * s.sales_count;
        }
        let mut read = conn
            .prepare("SELECT merchant_id, currency, local_day, sales_amount, sales_count, time_zone FROM merchant_sales_local")
            .unwrap();
        let stored: Vec<(String, String, String, String, i64, String)> = read
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(stored.len(), 900);
        for (m, c, d, amount, count, zone) in stored {
            let (want_amount, want_count) = expected[&(m, c, d)];
            assert_eq!(amount, schemas::Amount(want_amount).to_string());
            assert_eq!((count, zone.as_str()), (want_count, "Asia/Tokyo"));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_call_leaves_nothing_written_and_the_store_usable() {
        let path = std::env::temp_dir().join(format!("tally-panic-{}.db", std::process::id()));
        let store = crate::Store::Sqlite(SqliteStore::open(path.to_str().unwrap()).await.unwrap());
        let panicked: Result<()> = store
            .transact("panic", Mode::Write, |tx| {
                Box::pin(async move {
                    tx.execute(
                        "write",
                        "INSERT INTO tally_merchants (merchant_id, time_zone, updated_at) VALUES ($1, $2, 0)",
                        params!["m-1", "Asia/Tokyo"],
                    )
                    .await?;
                    panic!("a bug in the work")
                })
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Join(_))), "{panicked:?}");
        let zones = store.zones().await.expect("the store still answers");
        assert!(
            zones.is_empty(),
            "the panicked call's insert was rolled back"
        );
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
