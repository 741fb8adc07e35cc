//! [`Tx`] on SQLite: cached statements on the one connection, run on the
//! blocking thread that holds it, and the statements only SQLite says this way.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, Connection, ToSql};
use schemas::{Day, LocalTotals, Sums, Totals, TotalsKey};

use super::{
    add_rows, add_to_stored, insert_many, now_text, row_values, upsert, upsert_local, Table,
    LOCAL_SALES, SALES,
};
use crate::error::{lite, Result};
use crate::jobs::{FileVersion, JobRows, LocalDays, Scope, TaskRows};
use crate::sql::{ready, BoxFuture, Cell, Row, Tx, Value};

/// The connection, inside a transaction [`super::SqliteStore::transact`] began.
pub(crate) struct LiteTx<'c>(pub(crate) &'c mut Connection);

impl ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Value::Int(v) => ToSqlOutput::from(v),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Value::Null => ToSqlOutput::from(rusqlite::types::Null),
        })
    }
}

/// SQLite numbers `?1`, `?2`… by position; `$1` would be a name.
fn positional(sql: &str) -> String {
    sql.replace('$', "?")
}

fn query(conn: &Connection, op: &'static str, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>> {
    let mut statement = conn.prepare_cached(&positional(sql)).map_err(lite(op))?;
    let columns = statement.column_count();
    let mut rows = statement
        .query(params_from_iter(params))
        .map_err(lite(op))?;
    let mut read = Vec::new();
    while let Some(row) = rows.next().map_err(lite(op))? {
        let mut cells = Vec::with_capacity(columns);
        for i in 0..columns {
            cells.push(match row.get_ref(i).map_err(lite(op))? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(v) => Cell::Int(v),
                ValueRef::Real(v) => Cell::Text(v.to_string()),
                ValueRef::Text(v) | ValueRef::Blob(v) => {
                    Cell::Text(String::from_utf8_lossy(v).into_owned())
                }
            });
        }
        read.push(Row(cells));
    }
    Ok(read)
}

fn execute(conn: &Connection, op: &'static str, sql: &str, params: &[Value<'_>]) -> Result<u64> {
    let mut statement = conn.prepare_cached(&positional(sql)).map_err(lite(op))?;
    Ok(statement
        .execute(params_from_iter(params))
        .map_err(lite(op))? as u64)
}

fn stage_rows(
    conn: &Connection,
    job_id: i64,
    task_no: i32,
    totals: &Totals,
    local: &LocalTotals,
) -> Result<()> {
    stage(
        conn,
        &SALES,
        job_id,
        task_no,
        totals.iter().map(|(k, s)| (k, s, "")),
    )?;
    let local_rows = local
        .iter()
        .map(|(k, l)| (k, &l.sums, l.time_zone.as_ref()));
    stage(conn, &LOCAL_SALES, job_id, task_no, local_rows)
}

/// Rows staged by one statement: ten values a row keeps it well within
/// SQLite's limit of bound values.
const STAGE_CHUNK: usize = 200;

/// Stages rows of `table` (with their zones, for a zoned one) for a task.
fn stage<'a>(
    conn: &Connection,
    table: &Table,
    job_id: i64,
    task_no: i32,
    rows: impl IntoIterator<Item = (&'a TotalsKey, &'a Sums, &'a str)>,
) -> Result<()> {
    let zone_insert = if table.zoned { ", time_zone" } else { "" };
    let rows: Vec<_> = rows.into_iter().collect();
    let width = if table.zoned { 10 } else { 9 };
    // Many rows to a statement: one step each would make a shard of
    // 100,000 keys take a tenth of a second.
    for chunk in rows.chunks(STAGE_CHUNK) {
        let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() * width);
        for &(key, sums, zone) in chunk {
            values.extend([job_id.into(), task_no.into()]);
            values.extend(row_values(key, sums));
            if table.zoned {
                values.push(zone.to_owned().into());
            }
        }
        let row = format!("({})", vec!["?"; width].join(", "));
        let head = format!(
            "INSERT INTO {} (job_id, task_no, merchant_id, currency, {}, sales_amount, sales_count,
                 refund_amount, refund_count{zone_insert})",
            table.staged, table.day
        );
        insert_many(
            conn,
            "task rows insert",
            [&head, ""],
            &row,
            chunk.len(),
            values,
        )?;
    }
    Ok(())
}

/// Deletes the scope of both tables (`merchant_sales` by UTC day, and each
/// zone's whole local days of `merchant_sales_local`), then adds the job's
/// rows within it, summed by tally (SQLite holds amounts as text); returns
/// the rows written to `merchant_sales`. The transaction began IMMEDIATE,
/// so no other replace runs at the same time.
fn replace_scope(
    conn: &Connection,
    job_id: i64,
    scope: &Scope,
    local: &[LocalDays],
    rows: JobRows<'_>,
) -> Result<i64> {
    let merchants = serde_json::to_string(&scope.merchants).expect("strings serialise");
    let utc = std::iter::once((&SALES, None, scope.from, scope.to));
    let zoned = local
        .iter()
        .map(|l| (&LOCAL_SALES, Some(l.zone.as_str()), l.from, l.to));
    let passes: Vec<_> = utc.chain(zoned).collect();
    // ?1 from, ?2 to, ?3 merchants, ?4 the zone (of a zoned table), then the job.
    let scoped = |table: &Table, zone: Option<&str>, from: Day, to: Day| {
        let day = table.day;
        let sql = format!(
            "{day} >= ?1 AND {day} < ?2 AND (json_array_length(?3) = 0
               OR merchant_id IN (SELECT value FROM json_each(?3))){}",
            if zone.is_some() {
                " AND time_zone = ?4"
            } else {
                ""
            }
        );
        let mut values: Vec<rusqlite::types::Value> = vec![
            from.to_string().into(),
            to.to_string().into(),
            merchants.clone().into(),
        ];
        if let Some(zone) = zone {
            values.push(zone.to_owned().into());
        }
        (sql, values)
    };
    // Every delete first: a zone's insert must not add to a row another
    // zone's delete is about to take away.
    for &(table, zone, from, to) in &passes {
        let (in_scope, values) = scoped(table, zone, from, to);
        conn.execute(
            &format!("DELETE FROM {} WHERE {in_scope}", table.name),
            params_from_iter(values.iter()),
        )
        .map_err(lite("range delete"))?;
    }
    if let JobRows::Given(tasks) = rows {
        return add_given(conn, scope, local, tasks);
    }
    let now = now_text();
    let mut written = 0;
    for &(table, zone, from, to) in &passes {
        let (in_scope, mut values) = scoped(table, zone, from, to);
        values.push(job_id.into());
        let job = values.len();
        values.push(now.clone().into());
        let now_param = values.len();
        let (name, day, staged) = (table.name, table.day, table.staged);
        let zone_column = if table.zoned { ", time_zone" } else { "" };
        // Only the scope just deleted: a row outside it would add to live
        // totals. Staged keys are unique within a job, and the scope is now
        // empty but for a local row another zone's pass left (its merchant
        // changed zone): that one is added to, keeping its zone, as
        // `add_rows` does.
        let added = conn
            .prepare(&format!(
                "INSERT INTO {name} (merchant_id, currency, {day}, sales_amount, sales_count,
                     refund_amount, refund_count, net_amount, updated_at{zone_column})
                 SELECT merchant_id, currency, {day}, sales_amount, sales_count, refund_amount,
                        refund_count, tally_net(sales_amount, refund_amount), ?{now_param}{zone_column}
                 FROM {staged} WHERE job_id = ?{job} AND {in_scope} {}",
                add_to_stored(day)
            ))
            .and_then(|mut insert| insert.execute(params_from_iter(values.iter())))
            .map_err(lite("job rows swap"))?;
        if !table.zoned {
            written = added as i64;
        }
    }
    Ok(written)
}

/// [`replace_scope`]'s adding of rows given whole (none staged): the same
/// rows, those inside the scope just deleted, added as the statements add
/// staged ones.
fn add_given(
    conn: &Connection,
    scope: &Scope,
    local: &[LocalDays],
    tasks: &[TaskRows<'_>],
) -> Result<i64> {
    let utc: Vec<(&TotalsKey, &Sums, &str)> = (tasks.iter())
        .flat_map(|task| task.totals.iter())
        .filter(|(key, _)| scope.contains(&key.merchant_id, key.day))
        .map(|(key, sums)| (key, sums, ""))
        .collect();
    let written = utc.len() as i64;
    add_rows(conn, &SALES, utc)?;
    let in_local_days = |key: &TotalsKey, zone: &str| {
        (local.iter()).any(|days| days.zone == zone && days.from <= key.day && key.day < days.to)
    };
    let zoned = (tasks.iter())
        .flat_map(|task| task.local.iter())
        .filter(|(key, row)| {
            scope.has_merchant(&key.merchant_id) && in_local_days(key, &row.time_zone)
        })
        .map(|(key, row)| (key, &row.sums, row.time_zone.as_ref()));
    add_rows(conn, &LOCAL_SALES, zoned)?;
    Ok(written)
}

fn known_versions(conn: &Connection, files: &[FileVersion]) -> Result<Vec<bool>> {
    let mut known = conn
        .prepare_cached(
            "SELECT 1 FROM tally_imports WHERE location = ?1 AND size = ?2 AND version = ?3",
        )
        .map_err(lite("import read"))?;
    files
        .iter()
        .map(|f| {
            known
                .exists(params![f.location, f.size, f.version])
                .map_err(lite("import read"))
        })
        .collect()
}

impl Tx for LiteTx<'_> {
    fn query<'a>(
        &'a mut self,
        op: &'static str,
        sql: &'a str,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>>> {
        ready(query(self.0, op, sql, params))
    }

    fn execute<'a>(
        &'a mut self,
        op: &'static str,
        sql: &'a str,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<u64>> {
        ready(execute(self.0, op, sql, params))
    }

    /// Nothing: the transaction took the write lock of the whole file.
    fn skip_locked(&self, _alias: &str) -> String {
        String::new()
    }

    /// Nothing: the transaction took the write lock of the whole file.
    fn for_update(&self) -> &'static str {
        ""
    }

    /// Nothing: the transaction took the write lock of the whole file.
    fn for_share(&self) -> &'static str {
        ""
    }

    fn day_param(&self, n: usize) -> String {
        format!("${n}")
    }

    /// Amounts are stored as their exact decimal text.
    fn amount_param(&self, n: usize) -> String {
        format!("${n}")
    }

    /// Nothing: a writing transaction holds the whole file.
    fn lock_closes(&mut self, _exclusive: bool) -> BoxFuture<'_, Result<()>> {
        ready(Ok(()))
    }

    /// The stored text already is (`strftime('%Y-%m-%dT%H:%M:%fZ')`).
    fn timestamp_text(&self, column: &str) -> String {
        column.to_owned()
    }

    /// Days are stored as `YYYY-MM-DD` text.
    fn day_text(&self, column: &str) -> String {
        column.to_owned()
    }

    /// Amounts are decimal text with exactly four fractional digits and no
    /// leading zeros, so text order within one sign and length is numeric
    /// order: non-negative before negative, then longer (larger) first among
    /// the non-negative and shorter (larger) first among the negative.
    fn top_order(&self) -> &'static str {
        "net_amount LIKE '-%',
         CASE WHEN net_amount LIKE '-%' THEN -length(net_amount) ELSE length(net_amount) END DESC,
         CASE WHEN net_amount LIKE '-%' THEN net_amount END,
         CASE WHEN net_amount LIKE '-%' THEN NULL ELSE net_amount END DESC,
         merchant_id"
    }

    /// Nothing: the transaction took the write lock of the whole file.
    fn lock_location<'a>(&'a mut self, _location: &'a str) -> BoxFuture<'a, Result<()>> {
        ready(Ok(()))
    }

    fn add_totals<'a>(
        &'a mut self,
        totals: &'a Totals,
        local: &'a LocalTotals,
    ) -> BoxFuture<'a, Result<i64>> {
        let added = upsert(self.0, totals).and_then(|()| upsert_local(self.0, local));
        ready(added.map(|()| totals.len() as i64))
    }

    fn stage_rows<'a>(
        &'a mut self,
        job_id: i64,
        task_no: i32,
        totals: &'a Totals,
        local: &'a LocalTotals,
    ) -> BoxFuture<'a, Result<()>> {
        ready(stage_rows(self.0, job_id, task_no, totals, local))
    }

    fn replace_scope<'a>(
        &'a mut self,
        job_id: i64,
        scope: &'a Scope,
        local: &'a [LocalDays],
        rows: JobRows<'a>,
    ) -> BoxFuture<'a, Result<i64>> {
        ready(replace_scope(self.0, job_id, scope, local, rows))
    }

    fn known_versions<'a>(
        &'a mut self,
        files: &'a [FileVersion],
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        ready(known_versions(self.0, files))
    }
}
