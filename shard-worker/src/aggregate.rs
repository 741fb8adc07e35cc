//! The hot path's second half: DataFusion turns a batch of events into the
//! partial totals of its (merchant, currency, day) keys, and, when the batch
//! carries local days, of its (merchant, currency, local day) keys.
//!
//! The query is planned once per session. Planning it again for every batch
//! cost about 2 ms, as much as aggregating 10,000 events: each batch now only
//! swaps its rows in under the physical plan.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, AsArray, Decimal128Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::error::{DataFusionError, Result};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{cast, col, lit, Expr, ExprFunctionExt};
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use schemas::batch::{
    col as c, event_schema, local_event_schema, split_days, BatchKeys, EventBatch,
};
use schemas::{Amount, Day, LocalRow, LocalSums, PartialRow, Sums, TotalsKey};

/// A DataFusion session for the partial aggregation, with its plan once made.
/// Clones share both.
#[derive(Clone)]
pub struct Session {
    ctx: SessionContext,
    plan: Arc<OnceLock<Arc<dyn ExecutionPlan>>>,
    /// Batches carry `local_day`, and it is a grouping key.
    local: bool,
}

/// A DataFusion session tuned for many small single-threaded aggregations,
/// of batches with local days when `local` is set.
pub fn session(local: bool) -> Session {
    // One partition: a worker batch is small and already runs on its own
    // blocking thread, so repartitioning would only add overhead.
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(16 * 1024);
    Session {
        ctx: SessionContext::new_with_config(config),
        plan: Arc::default(),
        local,
    }
}

fn filtered(aggregate: Expr, refund: bool, name: &str) -> Result<Expr> {
    let only = if refund {
        col(c::REFUND)
    } else {
        !col(c::REFUND)
    };
    Ok(aggregate.filter(only).build()?.alias(name))
}

/// A pair's step in the packed grouping key (a batch numbers far fewer than
/// 2³¹ pairs, so the key never overflows).
const PAIR_UNIT: i64 = 1 << 32;
/// Added to the day number so that it packs as 32 unsigned bits.
const DAYS_BIAS: i64 = 1 << 31;

/// The pair number and the day number (`days` or `day`) of a packed key.
fn unpack(key: i64) -> (u32, i32) {
    ((key >> 32) as u32, ((key & 0xffff_ffff) - DAYS_BIAS) as i32)
}

/// The physical plan of the query below, over an empty batch whose scan each
/// call replaces.
async fn plan(ctx: &SessionContext, local: bool) -> Result<Arc<dyn ExecutionPlan>> {
    let (schema, days) = match local {
        true => (local_event_schema(), c::DAYS),
        false => (event_schema(), c::DAY),
    };
    // One Int64 key, `pair × 2³² + (days + 2³¹)`: DataFusion groups a
    // single primitive column by its own hash table, without the
    // row-by-row comparison of several columns.
    let key = cast(col(c::PAIR), DataType::Int64) * lit(PAIR_UNIT)
        + cast(col(days), DataType::Int64)
        + lit(DAYS_BIAS);
    let keys = vec![key.alias("key")];
    ctx.read_batch(RecordBatch::new_empty(schema))?
        .aggregate(
            keys,
            vec![
                filtered(sum(col(c::AMOUNT)), false, "sales_amount")?,
                filtered(count(lit(1)), false, "sales_count")?,
                filtered(sum(col(c::AMOUNT)), true, "refund_amount")?,
                filtered(count(lit(1)), true, "refund_count")?,
            ],
        )?
        .create_physical_plan()
        .await
}

/// The sums of a batch: by UTC day, and by local day when the batch has them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rows {
    /// One row per (merchant, currency, UTC day).
    pub utc: Vec<PartialRow>,
    /// One row per (merchant, currency, local day); empty without local days.
    pub local: Vec<LocalRow>,
}

impl Rows {
    /// Rows of both kinds.
    pub fn len(&self) -> usize {
        self.utc.len() + self.local.len()
    }

    /// True when the batch counted nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The partial totals of `batch`, one row per key.
///
/// ```sql
/// SELECT pair * 2^32 + (days + 2^31) AS key,
///        SUM(amount) FILTER (WHERE NOT refund) AS sales_amount,
///        COUNT(*)    FILTER (WHERE NOT refund) AS sales_count,
///        SUM(amount) FILTER (WHERE refund)     AS refund_amount,
///        COUNT(*)    FILTER (WHERE refund)     AS refund_count
/// FROM batch GROUP BY key
/// ```
///
/// where `pair` numbers the event's (merchant, currency) in the batch's
/// keys and `days` holds both the UTC and the local day (`day` alone when
/// the session keeps no local days). The few rows out are then summed by
/// UTC day and by local day, each local row in its pair's zone.
///
/// Fails only on a DataFusion planning or execution error.
pub async fn partial_rows(session: &Session, batch: EventBatch) -> Result<Rows> {
    let EventBatch { rows: batch, keys } = batch;
    if batch.num_rows() == 0 {
        return Ok(Rows::default());
    }
    let template = match session.plan.get() {
        Some(plan) => plan.clone(),
        None => {
            let made = plan(&session.ctx, session.local).await?;
            session.plan.get_or_init(|| made).clone()
        }
    };
    let schema = batch.schema();
    let rows: Arc<dyn ExecutionPlan> =
        MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?;
    let mut scans = 0;
    let plan = template
        .transform_up(|node| {
            if node.is::<DataSourceExec>() {
                scans += 1;
                return Ok(Transformed::yes(rows.clone()));
            }
            Ok(Transformed::no(node))
        })?
        .data;
    if scans != 1 {
        // A DataFusion upgrade that planned the empty scan away (or twice)
        // must fail loudly, not count a batch as nothing.
        return Err(DataFusionError::Internal(format!(
            "the cached partial-totals plan has {scans} scans of the batch; it needs exactly 1"
        )));
    }
    let results = collect(plan, session.ctx.task_ctx()).await?;
    let read = results
        .iter()
        .map(|batch| Aggregated::read(batch, session.local))
        .collect::<Result<Vec<_>>>()?;
    let rows = read
        .iter()
        .flat_map(|a| (0..a.len()).map(move |i| a.row(i)));
    if !session.local {
        let utc = rows
            .map(|(pair, day, _, sums)| PartialRow {
                key: key(&keys, pair, day),
                sums,
            })
            .collect();
        return Ok(Rows {
            utc,
            local: Vec::new(),
        });
    }
    // Summed again by UTC day and by local day. Grouping the rows by pair,
    // then sorting each pair's few rows by (UTC day, local day), puts each
    // UTC day's rows together: those sum in one pass, and a pair's local
    // days by a scan. Strings are allocated once per UTC row out and once
    // per pair for its local rows.
    let rows_in = read.iter().map(Aggregated::len).sum();
    let mut sums: Vec<Sums> = Vec::with_capacity(rows_in);
    // (pair, UTC day, local day, index in `sums`).
    let mut order: Vec<(u32, i32, i32, u32)> = Vec::with_capacity(rows_in);
    for (pair, day, local_day, row) in rows {
        let local_day = local_day.expect("a local session's rows have local days");
        order.push((pair, day.0, local_day.0, sums.len() as u32));
        sums.push(row);
    }
    let order = group(keys.len(), order);
    let mut out = Rows {
        utc: Vec::with_capacity(order.len()),
        local: Vec::with_capacity(order.len()),
    };
    // One pair's local days and their sums.
    let mut local_days: Vec<(i32, Sums)> = Vec::new();
    let mut currencies = Currencies::default();
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        let pair = run[0].0;
        local_days.clear();
        for day in run.chunk_by(|a, b| a.1 == b.1) {
            let mut total = Sums::default();
            for &(_, _, local_day, at) in day {
                let row = &sums[at as usize];
                total.merge(row);
                match local_days.iter_mut().find(|(d, _)| *d == local_day) {
                    Some((_, local)) => local.merge(row),
                    None => local_days.push((local_day, *row)),
                }
            }
            out.utc.push(PartialRow {
                key: key(&keys, pair, Day(day[0].1)),
                sums: total,
            });
        }
        let zone = keys.zone(pair).name();
        let merchant: Arc<str> = keys.merchant(pair).into();
        let currency = currencies.of(keys.currency(pair));
        out.local
            .extend(local_days.iter().map(|&(local_day, sums)| LocalRow {
                merchant_id: merchant.clone(),
                currency: currency.clone(),
                local_day: Day(local_day),
                local: LocalSums {
                    time_zone: zone.into(),
                    sums,
                },
            }));
    }
    Ok(out)
}

/// The currency codes of a batch's local rows, each allocated once: a batch
/// has thousands of pairs and a handful of currencies.
#[derive(Default)]
struct Currencies(Vec<Arc<str>>);

impl Currencies {
    /// Codes kept; a batch with more (never seen) allocates the rest per pair.
    const KEPT: usize = 64;

    fn of(&mut self, code: &str) -> Arc<str> {
        if let Some(kept) = self.0.iter().find(|kept| ***kept == *code) {
            return Arc::clone(kept);
        }
        let new: Arc<str> = code.into();
        if self.0.len() < Currencies::KEPT {
            self.0.push(Arc::clone(&new));
        }
        new
    }
}

/// `rows` grouped by pair, in pair order (a counting sort over the batch's
/// `pairs` numbers), each pair's rows sorted.
fn group(pairs: usize, rows: Vec<(u32, i32, i32, u32)>) -> Vec<(u32, i32, i32, u32)> {
    let mut next = vec![0usize; pairs + 1];
    for row in &rows {
        next[row.0 as usize + 1] += 1;
    }
    for i in 1..next.len() {
        next[i] += next[i - 1];
    }
    let mut grouped = vec![(0, 0, 0, 0); rows.len()];
    for row in rows {
        let at = &mut next[row.0 as usize];
        grouped[*at] = row;
        *at += 1;
    }
    for run in grouped.chunk_by_mut(|a, b| a.0 == b.0) {
        run.sort_unstable();
    }
    grouped
}

fn key(keys: &BatchKeys, pair: u32, day: Day) -> TotalsKey {
    TotalsKey {
        merchant_id: keys.merchant(pair).to_owned(),
        currency: keys.currency(pair).to_owned(),
        day,
    }
}

/// One batch of the aggregate's output, every column typed once, not once
/// per row.
struct Aggregated {
    /// Pair and day number packed ([`unpack`]): `days` (both days) in a
    /// local session, else `day`.
    key: Int64Array,
    local: bool,
    sales_amount: Decimal128Array,
    sales_count: Int64Array,
    refund_amount: Decimal128Array,
    refund_count: Int64Array,
}

impl Aggregated {
    fn read(batch: &RecordBatch, local: bool) -> Result<Aggregated> {
        Ok(Aggregated {
            key: batch.column(0).as_primitive::<Int64Type>().clone(),
            local,
            sales_amount: batch.column(1).as_primitive::<Decimal128Type>().clone(),
            sales_count: batch.column(2).as_primitive::<Int64Type>().clone(),
            refund_amount: batch.column(3).as_primitive::<Decimal128Type>().clone(),
            refund_count: batch.column(4).as_primitive::<Int64Type>().clone(),
        })
    }

    fn len(&self) -> usize {
        self.key.len()
    }

    /// Row `i`: pair, UTC day, local day (if kept) and sums.
    fn row(&self, i: usize) -> (u32, Day, Option<Day>, Sums) {
        let (pair, days) = unpack(self.key.value(i));
        let (day, local_day) = if self.local {
            let (utc, local) = split_days(days);
            (utc, Some(local))
        } else {
            (Day(days), None)
        };
        // SUM over no matching rows is NULL; it means zero here.
        let amount = |a: &Decimal128Array| Amount(if a.is_null(i) { 0 } else { a.value(i) });
        let sums = Sums {
            sales_amount: amount(&self.sales_amount),
            sales_count: self.sales_count.value(i),
            refund_amount: amount(&self.refund_amount),
            refund_count: self.refund_count.value(i),
        };
        (pair, day, local_day, sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::batch::EventBatchBuilder;
    use schemas::event::decode;
    use schemas::totals::{merge_into, Totals};
    use schemas::zone::{Zone, Zones};

    fn batch_of(events: &[(&str, &str, &str, &str)]) -> (EventBatch, Totals) {
        let mut builder = EventBatchBuilder::with_capacity(8);
        let mut expected = Totals::new();
        for (i, (m, kind, amount, cur)) in events.iter().enumerate() {
            let json = format!(
                r#"{{"event_id":"e{i}","order_id":"o","merchant_id":"{m}","kind":"{kind}","amount":"{amount}","currency":"{cur}","occurred_at":"2026-11-20T10:00:00Z"}}"#
            );
            let event = decode(json.as_bytes(), None).unwrap();
            let mut sums = Sums::default();
            sums.add_event(event.kind, event.amount);
            merge_into(
                &mut expected,
                [(
                    TotalsKey {
                        merchant_id: m.to_string(),
                        currency: cur.to_string(),
                        day: event.day,
                    },
                    sums,
                )],
            );
            builder.push(&event);
        }
        (builder.finish().unwrap(), expected)
    }

    #[test]
    fn a_packed_key_gives_back_its_pair_and_day_at_the_edges_of_the_era() {
        use schemas::batch::days;
        use schemas::day::{MAX_DAY, MIN_DAY};
        let edges = [
            days(MIN_DAY, MIN_DAY),
            days(MIN_DAY, Day(MIN_DAY.0 + 1)),
            days(Day(-1), Day(-2)),
            days(Day(0), Day(-1)),
            days(MAX_DAY, Day(MAX_DAY.0 - 1)),
            days(MAX_DAY, MAX_DAY),
            MIN_DAY.0,
            MAX_DAY.0,
            0,
        ];
        for pair in [0, 1, 19_999, u32::MAX >> 1] {
            for days in edges {
                // What DataFusion computes for the key, in checked arithmetic.
                let key = (i64::from(pair).checked_mul(PAIR_UNIT))
                    .and_then(|k| k.checked_add(i64::from(days)))
                    .and_then(|k| k.checked_add(DAYS_BIAS))
                    .expect("no overflow");
                assert_eq!(unpack(key), (pair, days), "pair {pair}, days {days}");
            }
        }
    }

    #[tokio::test]
    async fn one_plan_serves_every_batch_of_a_session() {
        let (first, first_totals) =
            batch_of(&[("m1", "sale", "1.5", "EUR"), ("m2", "refund", "2", "USD")]);
        let (second, second_totals) = batch_of(&[
            ("m3", "sale", "7", "EUR"),
            ("m3", "sale", "0.25", "EUR"),
            ("m1", "refund", "1", "EUR"),
        ]);
        let session = session(false);
        for (batch, expected) in [
            (&first, &first_totals),
            (&second, &second_totals),
            (&first, &first_totals),
        ] {
            let mut got = Totals::new();
            merge_into(
                &mut got,
                partial_rows(&session, batch.clone())
                    .await
                    .unwrap()
                    .utc
                    .into_iter()
                    .map(|r| (r.key, r.sums)),
            );
            assert_eq!(&got, expected);
        }
        // Clones share the plan, and a clone running at the same time gets its own rows.
        let clone = session.clone();
        let (a, b) = tokio::join!(
            partial_rows(&clone, first.clone()),
            partial_rows(&session, second.clone())
        );
        assert_eq!((a.unwrap().len(), b.unwrap().len()), (2, 2));
    }

    #[tokio::test]
    async fn sums_sales_and_refunds_per_key() {
        let (batch, expected) = batch_of(&[
            ("m1", "sale", "10.50", "EUR"),
            ("m1", "sale", "0.0001", "EUR"),
            ("m1", "refund", "3", "EUR"),
            ("m1", "sale", "1", "USD"),
            ("m2", "refund", "2.25", "EUR"),
        ]);
        let rows = partial_rows(&session(false), batch).await.unwrap();
        assert!(rows.local.is_empty());
        let mut got = Totals::new();
        merge_into(&mut got, rows.utc.into_iter().map(|r| (r.key, r.sums)));
        assert_eq!(got, expected);
        let m1 = &got[&TotalsKey {
            merchant_id: "m1".into(),
            currency: "EUR".into(),
            day: Day::parse("2026-11-20").unwrap(),
        }];
        assert_eq!(m1.net_amount().to_string(), "7.5001");
    }

    #[tokio::test]
    async fn short_and_long_ids_roll_up_to_what_each_event_says() {
        let zone = |name| Zone::parse(name).unwrap();
        let long = "a-merchant-id-longer-than-16";
        let zones = Arc::new(Zones::new(
            [
                ("m-1".to_string(), zone("Asia/Tokyo")),
                ("m-2".to_string(), zone("Australia/Lord_Howe")),
                (format!("{long}-1"), zone("America/St_Johns")),
            ]
            .into(),
            Zone::UTC,
        ));
        let merchants = [
            "m-1",
            "m-2",
            "m-3",
            &format!("{long}-1"),
            &format!("{long}-2"),
        ]
        .map(str::to_owned);
        let mut builder = EventBatchBuilder::with_local_days(600, zones.clone());
        let mut utc: std::collections::BTreeMap<(String, String, Day), Sums> = Default::default();
        let mut local: std::collections::BTreeMap<(String, String, Day), (&str, Sums)> =
            Default::default();
        for i in 0..600u64 {
            let merchant = &merchants[(i * 7 % 5) as usize];
            let currency = ["EUR", "USD"][(i % 3 == 0) as usize];
            // Spread over three days, 7 minutes and 13 seconds apart.
            let micros = 1_763_596_800_000_000 + i as i64 * 433_000_000;
            let at = schemas::day::format_rfc3339_millis(micros);
            let json = format!(
                r#"{{"event_id":"e{i}","order_id":"o","merchant_id":"{merchant}","kind":"sale","amount":"1.{i:04}","currency":"{currency}","occurred_at":"{at}"}}"#
            );
            let event = decode(json.as_bytes(), None).unwrap();
            let mut sums = Sums::default();
            sums.add_event(event.kind, event.amount);
            let key = |day| (merchant.clone(), currency.to_owned(), day);
            utc.entry(key(event.day)).or_default().merge(&sums);
            let local_day = zones.of(merchant).local_day(micros);
            local
                .entry(key(local_day))
                .or_insert((zones.of(merchant).name(), Sums::default()))
                .1
                .merge(&sums);
            builder.push(&event);
        }
        let rows = partial_rows(&session(true), builder.finish().unwrap())
            .await
            .unwrap();
        let got_utc: std::collections::BTreeMap<_, _> = rows
            .utc
            .iter()
            .map(|r| {
                (
                    (r.key.merchant_id.clone(), r.key.currency.clone(), r.key.day),
                    r.sums,
                )
            })
            .collect();
        let got_local: std::collections::BTreeMap<_, _> = rows
            .local
            .iter()
            .map(|r| {
                let key = (
                    r.merchant_id.to_string(),
                    r.currency.to_string(),
                    r.local_day,
                );
                (key, (r.local.time_zone.as_ref(), r.local.sums))
            })
            .collect();
        assert_eq!((rows.utc.len(), rows.local.len()), (utc.len(), local.len()));
        assert_eq!(got_utc, utc);
        assert_eq!(got_local, local);
    }

    #[tokio::test]
    async fn local_rows_sum_the_same_events_by_each_merchants_own_day() {
        // 2026-11-20T16:00Z is the 21st in Tokyo and the 20th in UTC.
        let zones = Arc::new(Zones::new(
            [("tokyo".to_string(), Zone::parse("Asia/Tokyo").unwrap())].into(),
            Zone::UTC,
        ));
        let mut builder = EventBatchBuilder::with_local_days(4, zones.clone());
        for (i, (merchant, at)) in [
            ("tokyo", "2026-11-20T14:59:59Z"),
            ("tokyo", "2026-11-20T16:00:00Z"),
            ("utc", "2026-11-20T16:00:00Z"),
        ]
        .into_iter()
        .enumerate()
        {
            let json = format!(
                r#"{{"event_id":"e{i}","order_id":"o","merchant_id":"{merchant}","kind":"sale","amount":"1.25","currency":"JPY","occurred_at":"{at}"}}"#
            );
            builder.push(&decode(json.as_bytes(), None).unwrap());
        }
        let rows = partial_rows(&session(true), builder.finish().unwrap())
            .await
            .unwrap();
        let mut rows = rows;
        rows.utc.sort_by(|a, b| a.key.cmp(&b.key));
        rows.local
            .sort_by(|a, b| (&a.merchant_id, a.local_day).cmp(&(&b.merchant_id, b.local_day)));
        let utc: Vec<_> = rows
            .utc
            .iter()
            .map(|r| {
                (
                    r.key.merchant_id.as_str(),
                    r.key.day.to_string(),
                    r.sums.sales_count,
                )
            })
            .collect();
        assert_eq!(
            utc,
            [
                ("tokyo", "2026-11-20".into(), 2),
                ("utc", "2026-11-20".into(), 1)
            ]
        );
        let local: Vec<_> = rows
            .local
            .iter()
            .map(|r| {
                let zone = r.local.time_zone.as_ref();
                (
                    &*r.merchant_id,
                    r.local_day.to_string(),
                    zone,
                    r.local.sums.sales_count,
                )
            })
            .collect();
        assert_eq!(
            local,
            [
                ("tokyo", "2026-11-20".into(), "Asia/Tokyo", 1),
                ("tokyo", "2026-11-21".into(), "Asia/Tokyo", 1),
                ("utc", "2026-11-20".into(), "UTC", 1),
            ]
        );
        assert_eq!(rows.local[1].local.sums.sales_amount.to_string(), "1.2500");
    }
}
