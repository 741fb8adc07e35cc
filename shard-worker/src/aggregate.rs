//! The hot path's second half: DataFusion turns a batch of events into the
//! partial totals of its (merchant, currency, day) keys.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{col, lit, Expr, ExprFunctionExt};
use datafusion::prelude::{SessionConfig, SessionContext};
use schemas::batch::col as c;
use schemas::{Amount, Day, PartialRow, Sums, TotalsKey};

/// A DataFusion session tuned for many small single-threaded aggregations.
pub fn session() -> SessionContext {
    // One partition: a worker batch is small and already runs on its own
    // blocking thread, so repartitioning would only add overhead.
    let config = SessionConfig::new().with_target_partitions(1).with_batch_size(16 * 1024);
    SessionContext::new_with_config(config)
}

fn filtered(aggregate: Expr, refund: bool, name: &str) -> Result<Expr> {
    let only = if refund { col(c::REFUND) } else { !col(c::REFUND) };
    Ok(aggregate.filter(only).build()?.alias(name))
}

/// The partial totals of `batch`, one row per key.
///
/// ```sql
/// SELECT merchant_id, currency, day,
///        SUM(amount) FILTER (WHERE NOT refund) AS sales_amount,
///        COUNT(*)    FILTER (WHERE NOT refund) AS sales_count,
///        SUM(amount) FILTER (WHERE refund)     AS refund_amount,
///        COUNT(*)    FILTER (WHERE refund)     AS refund_count
/// FROM batch GROUP BY merchant_id, currency, day
/// ```
///
/// Fails only on a DataFusion planning or execution error.
pub async fn partial_rows(ctx: &SessionContext, batch: RecordBatch) -> Result<Vec<PartialRow>> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let results = ctx
        .read_batch(batch)?
        .aggregate(
            vec![col(c::MERCHANT_ID), col(c::CURRENCY), col(c::DAY)],
            vec![
                filtered(sum(col(c::AMOUNT)), false, "sales_amount")?,
                filtered(count(lit(1)), false, "sales_count")?,
                filtered(sum(col(c::AMOUNT)), true, "refund_amount")?,
                filtered(count(lit(1)), true, "refund_count")?,
            ],
        )?
        .collect()
        .await?;
    let mut rows = Vec::new();
    for batch in &results {
        rows_of(batch, &mut rows)?;
    }
    Ok(rows)
}

fn rows_of(batch: &RecordBatch, out: &mut Vec<PartialRow>) -> Result<()> {
    let merchant = cast(batch.column(0), &DataType::Utf8)?;
    let currency = cast(batch.column(1), &DataType::Utf8)?;
    let (merchant, currency) = (merchant.as_string::<i32>(), currency.as_string::<i32>());
    let day = batch.column(2).as_primitive::<Date32Type>();
    let sales_amount = batch.column(3).as_primitive::<Decimal128Type>();
    let sales_count = batch.column(4).as_primitive::<Int64Type>();
    let refund_amount = batch.column(5).as_primitive::<Decimal128Type>();
    let refund_count = batch.column(6).as_primitive::<Int64Type>();
    // SUM over no matching rows is NULL; it means zero here.
    let amount = |a: &datafusion::arrow::array::Decimal128Array, i| {
        Amount(if a.is_null(i) { 0 } else { a.value(i) })
    };
    for i in 0..batch.num_rows() {
        out.push(PartialRow {
            key: TotalsKey {
                merchant_id: merchant.value(i).to_owned(),
                currency: currency.value(i).to_owned(),
                day: Day(day.value(i)),
            },
            sums: Sums {
                sales_amount: amount(sales_amount, i),
                sales_count: sales_count.value(i),
                refund_amount: amount(refund_amount, i),
                refund_count: refund_count.value(i),
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::batch::EventBatchBuilder;
    use schemas::event::decode;
    use schemas::totals::{merge_into, Totals};

    #[tokio::test]
    async fn sums_sales_and_refunds_per_key() {
        let events = [
            ("m1", "sale", "10.50", "EUR"),
            ("m1", "sale", "0.0001", "EUR"),
            ("m1", "refund", "3", "EUR"),
            ("m1", "sale", "1", "USD"),
            ("m2", "refund", "2.25", "EUR"),
        ];
        let mut builder = EventBatchBuilder::with_capacity(8);
        let mut expected = Totals::new();
        for (i, (m, kind, amount, cur)) in events.iter().enumerate() {
            let json = format!(
                r#"{{"event_id":"e{i}","order_id":"o","merchant_id":"{m}","kind":"{kind}","amount":"{amount}","currency":"{cur}","occurred_at":"2026-11-20T10:00:00Z"}}"#
            );
            let event = decode(json.as_bytes(), None).unwrap();
            let mut sums = Sums::default();
            sums.add_event(event.kind, event.amount);
            merge_into(&mut expected, [(TotalsKey { merchant_id: m.to_string(), currency: cur.to_string(), day: event.day }, sums)]);
            builder.push(&event);
        }
        let rows = partial_rows(&session(), builder.finish().unwrap()).await.unwrap();
        let mut got = Totals::new();
        merge_into(&mut got, rows.into_iter().map(|r| (r.key, r.sums)));
        assert_eq!(got, expected);
        let m1 = &got[&TotalsKey { merchant_id: "m1".into(), currency: "EUR".into(), day: Day::parse("2026-11-20").unwrap() }];
        assert_eq!(m1.net_amount().to_string(), "7.5001");
    }
}
