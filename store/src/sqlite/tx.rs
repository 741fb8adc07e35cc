//! [`Tx`] on SQLite: cached statements on the one connection, run on the
//! blocking thread that holds it, and the statements only SQLite says this way.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, Connection, ToSql};
use schemas::{LocalSums, LocalTotals, Totals};

use super::{upsert, upsert_local};
use crate::error::{lite, Result};
use crate::jobs::{FileVersion, Scope};
use crate::parse_row;
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
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO tally_backfill_rows (job_id, task_no, merchant_id, currency, day, sales_amount, sales_count,
                 refund_amount, refund_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(lite("task rows insert"))?;
    for (key, sums) in totals {
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
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO tally_backfill_local_rows (job_id, task_no, merchant_id, currency, local_day, time_zone,
                 sales_amount, sales_count, refund_amount, refund_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(lite("task local rows insert"))?;
    for (key, row) in local {
        insert
            .execute(params![
                job_id,
                task_no,
                key.merchant_id,
                key.currency,
                key.day.to_string(),
                row.time_zone.as_ref(),
                row.sums.sales_amount.to_string(),
                row.sums.sales_count,
                row.sums.refund_amount.to_string(),
                row.sums.refund_count
            ])
            .map_err(lite("task local rows insert"))?;
    }
    Ok(())
}

/// Deletes the scope, then adds the staged rows within it, summed by tally
/// (SQLite holds amounts as text).
fn replace_scope(conn: &Connection, job_id: i64, scope: &Scope) -> Result<i64> {
    let (from, to) = (scope.from.to_string(), scope.to.to_string());
    let merchants = serde_json::to_string(&scope.merchants).expect("strings serialise");
    conn.execute(
        "DELETE FROM merchant_sales WHERE day >= ?1 AND day < ?2
           AND (json_array_length(?3) = 0 OR merchant_id IN (SELECT value FROM json_each(?3)))",
        params![from, to, merchants],
    )
    .map_err(lite("range delete"))?;
    let mut read = conn
        .prepare(
            "SELECT merchant_id, currency, day, sales_amount, sales_count, refund_amount, refund_count
             FROM tally_backfill_rows WHERE job_id = ?1
               -- Only the scope just deleted: a row outside it would add to live totals.
               AND day >= ?2 AND day < ?3
               AND (json_array_length(?4) = 0 OR merchant_id IN (SELECT value FROM json_each(?4)))",
        )
        .map_err(lite("job rows read"))?;
    let rows = read
        .query_map(params![job_id, from, to, merchants], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                [r.get::<_, String>(3)?, r.get::<_, String>(5)?],
                [r.get::<_, i64>(4)?, r.get::<_, i64>(6)?],
            ))
        })
        .map_err(lite("job rows read"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(lite("job rows read"))?;
    let rows = rows
        .into_iter()
        .map(|(m, c, d, [sa, ra], counts)| parse_row(m, c, &d, [&sa, &ra], counts))
        .collect::<Result<Totals>>()?;
    upsert(conn, &rows)?;
    // The same scope of the local table, by local day.
    conn.execute(
        "DELETE FROM merchant_sales_local WHERE local_day >= ?1 AND local_day < ?2
           AND (json_array_length(?3) = 0 OR merchant_id IN (SELECT value FROM json_each(?3)))",
        params![from, to, merchants],
    )
    .map_err(lite("local range delete"))?;
    let mut read = conn
        .prepare(
            "SELECT merchant_id, currency, local_day, sales_amount, sales_count, refund_amount, refund_count,
                    time_zone
             FROM tally_backfill_local_rows WHERE job_id = ?1
               AND local_day >= ?2 AND local_day < ?3
               AND (json_array_length(?4) = 0 OR merchant_id IN (SELECT value FROM json_each(?4)))",
        )
        .map_err(lite("job local rows read"))?;
    let local = read
        .query_map(params![job_id, from, to, merchants], |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    [r.get::<_, String>(3)?, r.get::<_, String>(5)?],
                    [r.get::<_, i64>(4)?, r.get::<_, i64>(6)?],
                ),
                r.get::<_, String>(7)?,
            ))
        })
        .map_err(lite("job local rows read"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(lite("job local rows read"))?
        .into_iter()
        .map(|((m, c, d, [sa, ra], counts), zone)| {
            let (key, sums) = parse_row(m, c, &d, [&sa, &ra], counts)?;
            Ok((
                key,
                LocalSums {
                    time_zone: zone.into(),
                    sums,
                },
            ))
        })
        .collect::<Result<LocalTotals>>()?;
    upsert_local(conn, &local)?;
    Ok(rows.len() as i64)
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
    ) -> BoxFuture<'a, Result<i64>> {
        ready(replace_scope(self.0, job_id, scope))
    }

    fn known_versions<'a>(
        &'a mut self,
        files: &'a [FileVersion],
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        ready(known_versions(self.0, files))
    }
}
