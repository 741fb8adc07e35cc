//! `bench closes`: what closing days costs the aggregator on PostgreSQL.
//!
//! In a fresh database, a day of `--merchants` merchants (one row each on
//! both bases, their zones spread over four) is applied through the store
//! as the aggregator applies partials. Then, each a median over `--runs`:
//!
//! - the time of the close run that closes that day (both bases);
//! - the time of one flush (8 partials, one per partition, of 500 rows
//!   each) before any day is closed, after the day closed with every row on
//!   open days, and with one row in ten on the closed day (each such row
//!   an adjustment, written in the flush's transaction).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use schemas::partial::EventCounts;
use schemas::{Amount, Day, LocalRow, LocalSums, Partial, PartialRow, Sums, TotalsKey};
use store::Store;

const PARTITIONS: i32 = 8;
const ZONES: [&str; 4] = [
    "UTC",
    "Asia/Tokyo",
    "America/St_Johns",
    "Pacific/Kiritimati",
];
const DAY: Day = Day(20_777); // 2026-11-20
const DAY_MS: i64 = 86_400_000;
const FLUSH_ROWS: usize = 500;
const FLUSHES: usize = 30;

/// The next offsets of each partition's fence, as the bench's partials advance them.
struct Stream {
    epoch: Vec<i64>,
    next: Vec<i64>,
}

impl Stream {
    /// A partial of `partition` carrying `rows` (merchant index, day).
    fn partial(&mut self, partition: i32, rows: &[(u32, Day)]) -> Partial {
        let p = partition as usize;
        let first = self.next[p];
        self.next[p] += rows.len() as i64;
        let sums = Sums {
            sales_amount: Amount(12_3400),
            sales_count: 1,
            ..Sums::default()
        };
        let currency: Arc<str> = "EUR".into();
        let mut totals = Vec::with_capacity(rows.len());
        let mut local = Vec::with_capacity(rows.len());
        for &(m, day) in rows {
            let merchant = format!("merchant-{m:06}");
            local.push(LocalRow {
                merchant_id: merchant.as_str().into(),
                currency: currency.clone(),
                local_day: day,
                local: LocalSums {
                    time_zone: ZONES[m as usize % ZONES.len()].into(),
                    sums,
                },
            });
            totals.push(PartialRow {
                key: TotalsKey {
                    merchant_id: merchant,
                    currency: "EUR".into(),
                    day,
                },
                sums,
            });
        }
        totals.sort_by(|a, b| a.key.cmp(&b.key));
        totals.dedup_by(|a, b| a.key == b.key);
        local.sort_by(|a, b| (&a.merchant_id, a.local_day).cmp(&(&b.merchant_id, b.local_day)));
        local.dedup_by(|a, b| a.merchant_id == b.merchant_id && a.local_day == b.local_day);
        Partial {
            topic: "orders".into(),
            partition,
            epoch: self.epoch[p],
            first_offset: first,
            last_offset: first + rows.len() as i64 - 1,
            dedupe_from_offset: first,
            dedupe_clock_ms: Some(0),
            events: EventCounts {
                counted: rows.len() as u64,
                ..EventCounts::default()
            },
            max_append_ms: None,
            rows: totals,
            local_rows: local,
        }
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Runs the bench against a fresh database on the server of `admin_url`.
pub fn run(admin_url: &str, merchants: u32, runs: usize) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let name = format!("bench_closes_{}", std::process::id());
            let url = crate::e2e::fresh_database(admin_url, &name).await?;
            let store = Store::connect(&url).await.context("connecting")?;
            let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let mut stream = Stream {
                epoch: Vec::new(),
                next: vec![0; PARTITIONS as usize],
            };
            for p in 0..PARTITIONS {
                stream
                    .epoch
                    .push(store.claim("orders", p, "bench").await?.epoch);
            }
            // The day: every merchant once, in flushes of 8 partials.
            let all: Vec<u32> = (0..merchants).collect();
            for chunk in all.chunks(FLUSH_ROWS * PARTITIONS as usize) {
                let partials: Vec<Partial> = chunk
                    .chunks(FLUSH_ROWS)
                    .enumerate()
                    .map(|(p, ms)| {
                        let rows: Vec<(u32, Day)> = ms.iter().map(|&m| (m, DAY)).collect();
                        stream.partial(p as i32, &rows)
                    })
                    .collect();
                store.apply(&partials).await?;
            }
            let flush = |stream: &mut Stream, seed: u32, closed_share: u32| {
                (0..PARTITIONS)
                    .map(|p| {
                        let rows: Vec<(u32, Day)> = (0..FLUSH_ROWS as u32)
                            .map(|i| {
                                let m = (seed * 7_919 + p as u32 * 104_729 + i * 31) % merchants;
                                let late = closed_share > 0 && i % closed_share == 0;
                                (m, if late { DAY } else { Day(DAY.0 + 3) })
                            })
                            .collect();
                        stream.partial(p, &rows)
                    })
                    .collect::<Vec<_>>()
            };
            let timed_flushes = |stream: &mut Stream, closed_share: u32, round: u32| {
                let batches: Vec<Vec<Partial>> = (0..FLUSHES as u32)
                    .map(|i| flush(stream, round * 1_000 + i, closed_share))
                    .collect();
                let store = &store;
                async move {
                    let mut times = Vec::new();
                    for partials in batches {
                        let started = Instant::now();
                        store.apply(&partials).await?;
                        times.push(started.elapsed());
                    }
                    anyhow::Ok(median(times))
                }
            };
            let before = timed_flushes(&mut stream, 0, 1).await?;

            // Closing the day (both bases): completeness at the day's end
            // plus 26 hours (every zone's day has ended), no grace.
            let completeness = (i64::from(DAY.0) + 1) * DAY_MS + 26 * 3_600_000;
            let mut close_times = Vec::new();
            let mut rows = 0;
            for _ in 0..runs {
                admin
                    .batch_execute("DELETE FROM tally_closes; DELETE FROM tally_close_runs")
                    .await?;
                admin.batch_execute("VACUUM ANALYZE tally_closes").await?;
                let started = Instant::now();
                let mut run = store.close_days(completeness, 0, 0).await?;
                let mut closed = 0;
                while let Some(done) = run {
                    closed += done.rows_closed;
                    run = store.close_days(completeness, 0, 0).await?;
                }
                close_times.push(started.elapsed());
                rows = closed;
            }
            let after_open = timed_flushes(&mut stream, 0, 2).await?;
            let after_late = timed_flushes(&mut stream, 10, 3).await?;
            let adjustments: i64 = admin
                .query_one("SELECT count(*) FROM tally_adjustments", &[])
                .await?
                .get(0);
            report(
                merchants,
                runs,
                rows,
                median(close_times),
                [before, after_open, after_late],
                adjustments,
            );
            Ok(())
        })
}

/// Prints the figures.
fn report(
    merchants: u32,
    runs: usize,
    rows: i64,
    close: Duration,
    flushes: [Duration; 3],
    adjustments: i64,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
    let [before, open, late] = flushes;
    println!(
        "closing a day of {merchants} merchants ({rows} rows, both bases): median {:.0} ms over {runs} runs",
        ms(close)
    );
    println!(
        "one flush of {} rows ({PARTITIONS} partials), median over {FLUSHES}:",
        FLUSH_ROWS * PARTITIONS as usize
    );
    println!("  before any close:                {:.1} ms", ms(before));
    println!(
        "  after the close, open days only: {:.1} ms ({:.2}x)",
        ms(open),
        ms(open) / ms(before)
    );
    println!(
        "  one row in ten on a closed day:  {:.1} ms ({:.2}x; {adjustments} adjustments written)",
        ms(late),
        ms(late) / ms(before)
    );
}
