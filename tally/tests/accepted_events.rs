//! Property: validation is the one gate. Any event the decoder accepts gives
//! a partial that round-trips through its JSON form, and whose rows both
//! PostgreSQL and SQLite store and give back exactly.
//!
//! Candidates are drawn from a seeded generator that aims at the edges:
//! control characters (escaped and raw), non-ASCII text, quotes and
//! backslashes, lengths around 128 bytes, amounts around 18 integer and 4
//! fractional digits, dates around 0001-01-01 and 9999-12-31 with extreme
//! offsets. The expected sums are the test's own i128 arithmetic.

mod common;

use std::collections::BTreeMap;

use common::{Backend, World};
use datafusion::arrow::record_batch::RecordBatch;
use ingest::generate::Rng;
use schemas::batch::EventBatchBuilder;
use schemas::event::decode;
use schemas::partial::EventCounts;
use schemas::{Amount, Partial, Sums, Totals, TotalsKey};
use shard_worker::aggregate::Session;

/// Characters every id may hold, multi-byte, JSON-escaped and bidi ones among them.
const SAFE: [&str; 10] = [
    "a",
    "Z",
    "7",
    "-",
    "_",
    " ",
    "é",
    "日本",
    "🦀",
    "\u{202e}\"\\",
];
/// Characters no id may hold (PostgreSQL refuses U+0000 in text).
const CONTROL: [&str; 4] = ["\u{0}", "\u{1f}", "\u{7f}", "\u{85}"];

/// Nine times in ten a legal id at lengths up to exactly 128 bytes; else one
/// with a control character or longer than 128 bytes.
fn text(rng: &mut Rng) -> String {
    let target = *rng.pick(&[1usize, 3, 12, 40, 126, 127, 128]);
    let mut out = String::new();
    loop {
        let piece = *rng.pick(&SAFE);
        if out.len() + piece.len() > target {
            break;
        }
        out.push_str(piece);
    }
    if out.is_empty() {
        out.push('x');
    }
    match rng.below(20) {
        0 => {
            let control = *rng.pick(&CONTROL);
            out.insert_str(0, control);
        }
        1 => out.push_str(&"y".repeat(129usize.saturating_sub(out.len()).max(1))),
        _ => {}
    }
    out
}

fn digits(rng: &mut Rng, n: usize) -> String {
    let first = char::from(b'1' + rng.below(9) as u8);
    std::iter::once(first)
        .chain((1..n).map(|_| char::from(b'0' + rng.below(10) as u8)))
        .collect()
}

/// Mostly legal amounts at the edges of 18 integer and 4 fractional digits,
/// as strings or JSON numbers (raw JSON text, never through a float);
/// sometimes 19 digits, 5 decimals, 0 or negative.
fn amount(rng: &mut Rng) -> String {
    let text = match rng.below(12) {
        0 => digits(rng, 19),
        1 => format!("1.{}", digits(rng, 5)),
        2 => "0".to_owned(),
        3 => format!("-{}", digits(rng, 2)),
        _ => {
            let length = *rng.pick(&[1usize, 2, 6, 17, 18]);
            let integer = digits(rng, length);
            match *rng.pick(&[0usize, 1, 4]) {
                0 => integer,
                n => format!("{integer}.{}", digits(rng, n)),
            }
        }
    };
    if rng.below(3) == 0 {
        text
    } else {
        serde_json::to_string(&text).unwrap()
    }
}

/// Mostly legal times near both ends of the era with extreme offsets, so
/// some UTC days fall outside it; sometimes impossible dates.
fn occurred_at(rng: &mut Rng) -> String {
    let year = *rng.pick(&[1u32, 2, 1970, 2024, 2026, 9998, 9999]);
    let (month, day) = match rng.below(12) {
        0 => (2, 30),
        1 => (13, 1),
        _ => *rng.pick(&[(1u32, 1u32), (2, 28), (6, 15), (12, 31)]),
    };
    let (hour, minute) = *rng.pick(&[(0u32, 0u32), (0, 30), (12, 0), (23, 30), (23, 59)]);
    let offset = *rng.pick(&["Z", "+00:00", "+23:59", "-23:59", "-01:00", "+01:00"]);
    let fraction = *rng.pick(&["", ".5", ".123456789"]);
    let year = if rng.below(30) == 0 { 0 } else { year };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:00{fraction}{offset}")
}

/// One candidate event as a producer might send it, and its message key.
fn candidate(rng: &mut Rng, n: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let merchant = text(rng);
    let quoted = |value: &str| serde_json::to_string(value).unwrap();
    let kind = *rng.pick(&["sale", "refund", "sale", "refund", "sale", "refund", "Sale"]);
    let currency = *rng.pick(&["EUR", "JPY", "USD", "CHF", "EUR", "JPY", "eur", "EURO"]);
    let event = format!(
        r#"{{"event_id":{},"order_id":{},"merchant_id":{},"kind":"{kind}","amount":{},"currency":"{currency}","occurred_at":"{}"}}"#,
        quoted(&format!("{n}-{}", text(rng))),
        quoted(&text(rng)),
        quoted(&merchant),
        amount(rng),
        occurred_at(rng),
    );
    let key = (rng.below(2) == 0).then(|| merchant.into_bytes());
    (event.into_bytes(), key)
}

/// The accepted candidates as partials of 50 events each (offsets 0, 1, …),
/// built by the worker's own Arrow and DataFusion path, and the test's own sums.
async fn accepted_partials(seed: u64, candidates: u64, topic: &str) -> (Vec<Partial>, Totals, u64) {
    let mut rng = Rng(seed);
    let session = shard_worker::aggregate::session(false);
    let (mut partials, mut expected) = (Vec::new(), BTreeMap::<TotalsKey, Sums>::new());
    let mut builder = EventBatchBuilder::with_capacity(64);
    let mut accepted = 0;
    for n in 0..candidates {
        let (payload, key) = candidate(&mut rng, n);
        let Ok(event) = decode(&payload, key.as_deref()) else {
            continue;
        };
        accepted += 1;
        let key = TotalsKey {
            merchant_id: event.merchant_id.to_string(),
            currency: event.currency.to_string(),
            day: event.day,
        };
        expected
            .entry(key)
            .or_default()
            .add_event(event.kind, event.amount);
        builder.push(&event);
        if builder.len() == 50 {
            flush(&session, &mut builder, &mut partials, topic, seed).await;
        }
    }
    if !builder.is_empty() {
        flush(&session, &mut builder, &mut partials, topic, seed).await;
    }
    (partials, expected, accepted)
}

/// The builder's events as the next partial, after checking that it
/// round-trips through JSON.
async fn flush(
    session: &Session,
    builder: &mut EventBatchBuilder,
    partials: &mut Vec<Partial>,
    topic: &str,
    seed: u64,
) {
    let batch: RecordBatch = builder.finish().unwrap();
    let events = EventCounts {
        counted: batch.num_rows() as u64,
        ..Default::default()
    };
    let rows = shard_worker::aggregate::partial_rows(session, batch, None)
        .await
        .unwrap()
        .utc;
    let first_offset = partials.last().map_or(0, |p: &Partial| p.last_offset + 1);
    let partial = Partial {
        topic: topic.to_owned(),
        partition: 0,
        epoch: 1,
        first_offset,
        last_offset: first_offset + events.counted as i64 - 1,
        dedupe_from_offset: first_offset,
        dedupe_clock_ms: Some(1),
        events,
        max_append_ms: None,
        local_rows: Vec::new(),
        rows,
    };
    let json = serde_json::to_vec(&partial).unwrap();
    let back: Partial = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("seed {seed}: partial does not read back: {e}"));
    assert_eq!(
        back, partial,
        "seed {seed}: the partial round-trips exactly"
    );
    partials.push(partial);
}

async fn both_databases_store_every_accepted_event(backend: Backend) {
    let world = World::new("accepted", backend).await;
    let store = world.store().await;
    // Seeds share the table (and may share keys), so the comparison is cumulative.
    let mut all = Totals::new();
    for seed in [1u64, 2, 3] {
        let topic = format!("{}-{seed}", world.orders);
        let (partials, expected, accepted) = accepted_partials(seed, 6_000, &topic).await;
        assert!(accepted > 900 && accepted < 5_000, "seed {seed}: the generator reaches valid and invalid events ({accepted} of 6000 valid)");
        let claim = store.claim(&topic, 0, "property").await.unwrap();
        assert_eq!(claim.epoch, 1);
        let plan = store
            .apply(&partials)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: the database refused accepted events: {e}"));
        assert!(
            plan.violations.is_empty(),
            "seed {seed}: {:?}",
            plan.violations
        );
        assert_eq!(plan.applied, partials.len() as u64);
        schemas::totals::merge_into(&mut all, expected);
        let stored = store.totals(None).await.unwrap();
        assert_eq!(
            stored.len(),
            all.len(),
            "seed {seed}: every accepted key is stored, and nothing else"
        );
        for (key, sums) in &all {
            assert_eq!(
                stored.get(key),
                Some(sums),
                "seed {seed}: {key:?} reads back exactly"
            );
        }
    }
    // Kinds and amounts are exercised: refunds pass and amounts reach 18 digits.
    let (_, expected, _) = accepted_partials(1, 6_000, "x").await;
    assert!(expected.values().any(|s| s.refund_count > 0));
    assert!(expected
        .values()
        .any(|s| s.sales_amount >= Amount(10i128.pow(17) * 10_000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_every_accepted_event() {
    both_databases_store_every_accepted_event(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_every_accepted_event() {
    both_databases_store_every_accepted_event(Backend::Sqlite).await
}
