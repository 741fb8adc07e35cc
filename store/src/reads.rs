//! The totals API's reads, written once for both databases: one merchant's
//! days over a range, and one day's top merchants, on either basis (UTC days
//! from `merchant_sales`, merchants' own days from `merchant_sales_local`).

use schemas::{Day, Sums, TotalsKey};
use serde::Serialize;

use crate::error::Result;
use crate::sql::{params, transact, Row, Tx};
use crate::{parse_row, Store};

/// Which calendar a day is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// UTC days: `merchant_sales`.
    Utc,
    /// Each merchant's own day in its time zone: `merchant_sales_local`.
    Local,
}

impl Basis {
    /// `utc` or `local`.
    pub fn parse(text: &str) -> Option<Basis> {
        match text {
            "utc" => Some(Basis::Utc),
            "local" => Some(Basis::Local),
            _ => None,
        }
    }

    /// The table, its day column, and its zone column (UTC for the UTC table).
    fn table(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Basis::Utc => ("merchant_sales", "day", "'UTC'"),
            Basis::Local => ("merchant_sales_local", "local_day", "time_zone"),
        }
    }
}

/// One row of either totals table, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayTotals {
    /// The merchant.
    pub merchant_id: String,
    /// Currency code.
    pub currency: String,
    /// The day (UTC, or the merchant's own).
    pub day: Day,
    /// The zone whose calendar `day` is: `UTC` on the UTC basis.
    pub time_zone: String,
    /// The sums.
    pub sums: Sums,
    /// When the row last changed: RFC 3339 in UTC, as precise as the
    /// database keeps it (microseconds on PostgreSQL, milliseconds on SQLite).
    pub updated_at: String,
}

/// The columns both reads select, after `merchant_id` and `currency`.
fn columns(tx: &dyn Tx, basis: Basis) -> String {
    let (_, day, zone) = basis.table();
    format!(
        "{}, {zone}, CAST(sales_amount AS TEXT), sales_count,
         CAST(refund_amount AS TEXT), refund_count, {}",
        tx.day_text(day),
        tx.timestamp_text("updated_at")
    )
}

/// A row selected as merchant, currency, day, zone, sales amount and
/// count, refund amount and count: its key, zone and sums.
pub(crate) fn zoned_row(r: &Row) -> Result<(TotalsKey, String, Sums)> {
    let (key, sums) = parse_row(
        r.text(0)?.to_owned(),
        r.text(1)?.to_owned(),
        r.text(2)?,
        [r.text(4)?, r.text(6)?],
        [r.int(5)?, r.int(7)?],
    )?;
    Ok((key, r.text(3)?.to_owned(), sums))
}

fn day_totals(r: &Row) -> Result<DayTotals> {
    let (key, time_zone, sums) = zoned_row(r)?;
    Ok(DayTotals {
        merchant_id: key.merchant_id,
        currency: key.currency,
        day: key.day,
        time_zone,
        sums,
        updated_at: r.text(8)?.to_owned(),
    })
}

pub(crate) async fn merchant_days(
    tx: &mut dyn Tx,
    merchant: &str,
    [from, to]: [Day; 2],
    currency: Option<&str>,
    basis: Basis,
) -> Result<Vec<DayTotals>> {
    let (table, day, _) = basis.table();
    let sql = format!(
        "SELECT merchant_id, CAST(currency AS TEXT), {columns}
         FROM {table}
         WHERE merchant_id = $1 AND {day} >= {from} AND {day} <= {to}
           AND (CAST($4 AS TEXT) IS NULL OR currency = CAST($4 AS TEXT))
         ORDER BY {day}, currency",
        columns = columns(tx, basis),
        from = tx.day_param(2),
        to = tx.day_param(3),
    );
    let (from, to) = (from.to_string(), to.to_string());
    tx.query(
        "merchant days read",
        &sql,
        params![merchant, &from, &to, currency],
    )
    .await?
    .iter()
    .map(day_totals)
    .collect()
}

/// Each currency's `top` rows by its own `ORDER BY … LIMIT`: the database
/// keeps only the best `top` while it reads the day (a top-N heap sort),
/// instead of ranking every row of the day with a window function. The
/// rows come through the day's index (`merchant_sales_by_day`). No index
/// orders them by amount: every flush changes `net_amount`, and an index on
/// it would turn every flush's updates from HOT updates into full ones.
async fn top_merchants(
    tx: &mut dyn Tx,
    day: Day,
    currency: Option<&str>,
    basis: Basis,
    top: i64,
) -> Result<Vec<DayTotals>> {
    let (table, day_column, _) = basis.table();
    let day = day.to_string();
    let currencies: Vec<String> = match currency {
        Some(currency) => vec![currency.to_owned()],
        None => {
            let sql = format!(
                "SELECT DISTINCT CAST(currency AS TEXT) FROM {table} WHERE {day_column} = {day} ORDER BY 1",
                day = tx.day_param(1),
            );
            tx.query("currencies of a day read", &sql, params![&day])
                .await?
                .iter()
                .map(|r| r.text(0).map(str::to_owned))
                .collect::<Result<_>>()?
        }
    };
    let sql = format!(
        "SELECT merchant_id, CAST(currency AS TEXT), {columns}
         FROM {table}
         WHERE {day_column} = {day} AND currency = CAST($2 AS TEXT)
         ORDER BY {order}
         LIMIT $3",
        columns = columns(tx, basis),
        order = tx.top_order(),
        day = tx.day_param(1),
    );
    let mut rows = Vec::new();
    for currency in &currencies {
        for row in tx
            .query("top merchants read", &sql, params![&day, currency, top])
            .await?
        {
            rows.push(day_totals(&row)?);
        }
    }
    Ok(rows)
}

impl Store {
    /// One merchant's rows from `from` to `to` (both included) on `basis`,
    /// of one currency if given; ordered by day, then currency.
    pub async fn merchant_days(
        &self,
        merchant: &str,
        range: [Day; 2],
        currency: Option<&str>,
        basis: Basis,
    ) -> Result<Vec<DayTotals>> {
        let (merchant, currency) = (merchant.to_owned(), currency.map(str::to_owned));
        transact!(self, "merchant_days", Read, |tx| merchant_days(
            tx,
            &merchant,
            range,
            currency.as_deref(),
            basis
        ))
    }

    /// The `top` merchants of `day` on `basis` in each currency (or in one),
    /// by net amount, highest first (ties by merchant id, bytewise);
    /// ordered by currency, then rank.
    pub async fn top_merchants(
        &self,
        day: Day,
        currency: Option<&str>,
        basis: Basis,
        top: i64,
    ) -> Result<Vec<DayTotals>> {
        let currency = currency.map(str::to_owned);
        transact!(self, "top_merchants", Read, |tx| top_merchants(
            tx,
            day,
            currency.as_deref(),
            basis,
            top
        ))
    }
}
