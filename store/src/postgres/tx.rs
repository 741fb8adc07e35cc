//! [`Tx`] on PostgreSQL: prepared (and cached) statements on a pooled
//! connection, and the statements only PostgreSQL says this way.

use std::error::Error;

use bytes::BytesMut;
use schemas::{Day, LocalTotals, Totals};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::{add_to_existing, upsert, upsert_local, Columns};
use crate::error::{pg, Result, StoreError};
use crate::jobs::{FileVersion, JobRows, LocalDays, Scope};
use crate::sql::{BoxFuture, Cell, Row, Tx, Value};

/// Rows a staging statement writes at most.
const STAGE_CHUNK: usize = 50_000;

/// A transaction on a pooled connection.
pub(crate) struct PgTx<'c>(pub(crate) deadpool_postgres::Transaction<'c>);

/// An integer takes the width of its column, as PostgreSQL inferred it.
impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Text(text) => text.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A row as cells: integers (of any width) and text; anything else is read as text.
fn cells(row: &tokio_postgres::Row) -> std::result::Result<Row, tokio_postgres::Error> {
    let mut cells = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let int = |v: Option<i64>| v.map_or(Cell::Null, Cell::Int);
        cells.push(match *column.type_() {
            Type::INT2 => int(row.try_get::<_, Option<i16>>(i)?.map(i64::from)),
            Type::INT4 => int(row.try_get::<_, Option<i32>>(i)?.map(i64::from)),
            Type::INT8 => int(row.try_get::<_, Option<i64>>(i)?),
            Type::BOOL => int(row.try_get::<_, Option<bool>>(i)?.map(i64::from)),
            _ => row
                .try_get::<_, Option<String>>(i)?
                .map_or(Cell::Null, Cell::Text),
        });
    }
    Ok(Row(cells))
}

impl PgTx<'_> {
    /// The days of `[from, to)` that `table` holds rows of, as `YYYY-MM-DD`.
    async fn days_held(
        &self,
        table: &str,
        column: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT DISTINCT to_char({column}, 'YYYY-MM-DD') FROM {table}
             WHERE {column} >= $1::text::date AND {column} < $2::text::date"
        );
        Ok(self
            .0
            .query(&sql, &[&from, &to])
            .await
            .map_err(pg("days read"))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn rows(
        &self,
        op: &'static str,
        sql: &str,
        params: &[Value<'_>],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let statement = self.0.prepare_cached(sql).await.map_err(pg(op))?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        self.0.query(&statement, &params).await.map_err(pg(op))
    }
}

impl Tx for PgTx<'_> {
    fn query<'a>(
        &'a mut self,
        op: &'static str,
        sql: &'a str,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<Vec<Row>>> {
        Box::pin(async move {
            let rows = self.rows(op, sql, params).await?;
            rows.iter().map(|r| cells(r).map_err(pg(op))).collect()
        })
    }

    fn execute<'a>(
        &'a mut self,
        op: &'static str,
        sql: &'a str,
        params: &'a [Value<'a>],
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let statement = self.0.prepare_cached(sql).await.map_err(pg(op))?;
            let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
            self.0.execute(&statement, &params).await.map_err(pg(op))
        })
    }

    fn skip_locked(&self, alias: &str) -> String {
        format!(" FOR UPDATE OF {alias} SKIP LOCKED")
    }

    fn for_update(&self) -> &'static str {
        " FOR UPDATE"
    }

    fn for_share(&self) -> &'static str {
        " FOR SHARE"
    }

    fn day_param(&self, n: usize) -> String {
        format!("${n}::text::date")
    }

    fn amount_param(&self, n: usize) -> String {
        format!("${n}::text::numeric")
    }

    fn lock_closes(&mut self, exclusive: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let sql = if exclusive {
                "SELECT pg_advisory_xact_lock($1)"
            } else {
                "SELECT pg_advisory_xact_lock_shared($1)"
            };
            self.0
                .execute(sql, &[&crate::closes::CLOSES_LOCK])
                .await
                .map_err(pg("closes lock"))?;
            Ok(())
        })
    }

    fn timestamp_text(&self, column: &str) -> String {
        format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    }

    /// `to_char`, not `::text`: the cast follows DateStyle (`SQL, DMY`
    /// gives `10/03/2026`).
    fn day_text(&self, column: &str) -> String {
        format!("to_char({column}, 'YYYY-MM-DD')")
    }

    fn top_order(&self) -> &'static str {
        "net_amount DESC, merchant_id COLLATE \"C\""
    }

    fn lock_location<'a>(&'a mut self, location: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Held to commit; the partial unique index `tally_imports_once` is the backstop.
            self.0
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    &[&location],
                )
                .await
                .map_err(pg("import lock"))?;
            Ok(())
        })
    }

    fn add_totals<'a>(
        &'a mut self,
        totals: &'a Totals,
        local: &'a LocalTotals,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let written = upsert(&self.0, totals).await? as i64;
            if !local.is_empty() {
                upsert_local(&self.0, local).await?;
            }
            Ok(written)
        })
    }

    fn stage_rows<'a>(
        &'a mut self,
        job_id: i64,
        task_no: i32,
        totals: &'a Totals,
        local: &'a LocalTotals,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // In statements of at most STAGE_CHUNK rows: a shard of a big
            // month holds millions, and one statement's arrays would hold
            // them all in memory at once, twice.
            let rows: Vec<_> = totals.iter().collect();
            for chunk in rows.chunks(STAGE_CHUNK) {
                let c = Columns::of_rows(chunk.len(), chunk.iter().copied());
                self.0
                    .execute(
                        "INSERT INTO tally_backfill_rows (job_id, task_no, merchant_id, currency, day, sales_amount,
                             sales_count, refund_amount, refund_count)
                         SELECT $1, $2, u.m, u.c, u.d::date, u.sa::numeric, u.sc, u.ra::numeric, u.rc
                         FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::text[], $9::int8[])
                              AS u(m, c, d, sa, sc, ra, rc)",
                        &[&job_id, &task_no, &c.m, &c.c, &c.d, &c.sa, &c.sc, &c.ra, &c.rc],
                    )
                    .await
                    .map_err(pg("task rows insert"))?;
            }
            let rows: Vec<_> = local.iter().collect();
            for chunk in rows.chunks(STAGE_CHUNK) {
                let c = Columns::of_rows(chunk.len(), chunk.iter().map(|(k, l)| (*k, &l.sums)));
                let zones: Vec<&str> = chunk.iter().map(|(_, l)| l.time_zone.as_ref()).collect();
                self.0
                    .execute(
                        "INSERT INTO tally_backfill_local_rows (job_id, task_no, merchant_id, currency, local_day,
                             time_zone, sales_amount, sales_count, refund_amount, refund_count)
                         SELECT $1, $2, u.m, u.c, u.d::date, u.z, u.sa::numeric, u.sc, u.ra::numeric, u.rc
                         FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int8[],
                                     $9::text[], $10::int8[])
                              AS u(m, c, d, z, sa, sc, ra, rc)",
                        &[&job_id, &task_no, &c.m, &c.c, &c.d, &zones, &c.sa, &c.sc, &c.ra, &c.rc],
                    )
                    .await
                    .map_err(pg("task local rows insert"))?;
            }
            Ok(())
        })
    }

    #[expect(
        clippy::too_many_lines,
        reason = "the replace's statements in the order they run, each with why"
    )]
    fn replace_scope<'a>(
        &'a mut self,
        job_id: i64,
        scope: &'a Scope,
        local: &'a [LocalDays],
        rows: JobRows<'a>,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            // Rows given whole are staged here, in the same transaction,
            // and swapped in by the same statements as staged ones.
            if let JobRows::Given(tasks) = rows {
                for task in tasks {
                    self.stage_rows(job_id, task.task_no, task.totals, task.local)
                        .await?;
                }
            }
            // One replace at a time, held to commit. Under READ COMMITTED a
            // second replace's DELETE would not see the rows a first one
            // inserted and has not committed, and its INSERT would then add
            // to them: the overlap of two jobs counted twice. Each statement
            // after the lock takes a new snapshot, so it sees the first
            // replace whole.
            self.0
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended('tally.replace_scope', 0))",
                    &[],
                )
                .await
                .map_err(pg("replace lock"))?;
            // In statements of one day (deletes) or one task's rows
            // (inserts), each under the job's statement time limit: a month
            // of 100,000 merchants is millions of rows.
            let tasks: Vec<i32> = self
                .0
                .query(
                    "SELECT task_no FROM tally_tasks WHERE job_id = $1 ORDER BY task_no",
                    &[&job_id],
                )
                .await
                .map_err(pg("job tasks read"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let (from, to) = (scope.from.to_string(), scope.to.to_string());
            for day in self.days_held("merchant_sales", "day", &from, &to).await? {
                self.0
                    .execute(
                        "DELETE FROM merchant_sales WHERE day = $1::text::date
                           AND (cardinality($2::text[]) = 0 OR merchant_id = ANY($2::text[]))",
                        &[&day, &scope.merchants],
                    )
                    .await
                    .map_err(pg("range delete"))?;
            }
            let mut written = 0;
            for task_no in &tasks {
                // A streamed event committed after the delete adds to the file's totals.
                written += self
                    .0
                    .execute(
                        concat!(
                            "INSERT INTO merchant_sales AS s (merchant_id, currency, day, sales_amount, sales_count,
                                 refund_amount, refund_count, net_amount, updated_at)
                             SELECT merchant_id, currency, day, sales_amount, sales_count, refund_amount, refund_count,
                                    sales_amount - refund_amount, now()
                             FROM tally_backfill_rows WHERE job_id = $1 AND task_no = $5
                               -- Only the scope just deleted: a row outside it would add to live totals.
                               AND day >= $2::text::date AND day < $3::text::date
                               AND (cardinality($4::text[]) = 0 OR merchant_id = ANY($4::text[]))
                             ",
                            add_to_existing!("day")
                        ),
                        &[&job_id, &from, &to, &scope.merchants, task_no],
                    )
                    .await
                    .map_err(pg("range insert"))?;
            }
            // The local table: each zone's whole local days only, a day at a time.
            let first = local.iter().map(|l| l.from).min().unwrap_or(scope.from);
            let end = local.iter().map(|l| l.to).max().unwrap_or(scope.from);
            let (first, end) = (first.to_string(), end.to_string());
            for day in self
                .days_held("merchant_sales_local", "local_day", &first, &end)
                .await?
            {
                let at = Day::parse(&day).map_err(|e| StoreError::Corrupt {
                    column: "local_day",
                    value: day.clone(),
                    reason: e.to_string(),
                })?;
                let zones: Vec<&str> = local
                    .iter()
                    .filter(|l| l.from <= at && at < l.to)
                    .map(|l| l.zone.as_str())
                    .collect();
                self.0
                    .execute(
                        "DELETE FROM merchant_sales_local WHERE local_day = $1::text::date
                           AND time_zone = ANY($2::text[])
                           AND (cardinality($3::text[]) = 0 OR merchant_id = ANY($3::text[]))",
                        &[&day, &zones, &scope.merchants],
                    )
                    .await
                    .map_err(pg("local range delete"))?;
            }
            let zones: Vec<&str> = local.iter().map(|l| l.zone.as_str()).collect();
            let froms: Vec<String> = local.iter().map(|l| l.from.to_string()).collect();
            let tos: Vec<String> = local.iter().map(|l| l.to.to_string()).collect();
            for task_no in &tasks {
                self.0
                    .execute(
                        concat!(
                            "INSERT INTO merchant_sales_local AS s (merchant_id, currency, local_day, time_zone,
                                 sales_amount, sales_count, refund_amount, refund_count, net_amount, updated_at)
                             SELECT r.merchant_id, r.currency, r.local_day, r.time_zone, r.sales_amount, r.sales_count,
                                    r.refund_amount, r.refund_count, r.sales_amount - r.refund_amount, now()
                             FROM tally_backfill_local_rows r
                             JOIN UNNEST($2::text[], $3::text[], $4::text[]) AS w(z, f, t)
                               ON r.time_zone = w.z AND r.local_day >= w.f::date AND r.local_day < w.t::date
                             WHERE r.job_id = $1 AND r.task_no = $6
                               AND (cardinality($5::text[]) = 0 OR r.merchant_id = ANY($5::text[]))
                             ",
                            add_to_existing!("local_day")
                        ),
                        &[&job_id, &zones, &froms, &tos, &scope.merchants, task_no],
                    )
                    .await
                    .map_err(pg("local range insert"))?;
            }
            Ok(written as i64)
        })
    }

    fn known_versions<'a>(
        &'a mut self,
        files: &'a [FileVersion],
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move {
            let l: Vec<&str> = files.iter().map(|f| f.location.as_str()).collect();
            let s: Vec<i64> = files.iter().map(|f| f.size).collect();
            let v: Vec<&str> = files.iter().map(|f| f.version.as_str()).collect();
            let rows = self
                .0
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
        })
    }
}
