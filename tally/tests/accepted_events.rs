//! Property: validation is the one gate. Any event the decoder accepts, and
//! whose day in its merchant's zone is one tally can store, gives a partial
//! that round-trips through its JSON form, and whose rows (by UTC day and by
//! local day) both PostgreSQL and SQLite store and give back exactly.
//!
//! Candidates are drawn from a seeded generator that aims at the edges:
//! control characters (escaped and raw), non-ASCII text, quotes and
//! backslashes, lengths around 128 bytes, amounts around 18 integer and 4
//! fractional digits, dates around 0001-01-01 and 9999-12-31 with extreme
//! offsets. Each merchant's zone is drawn too, among zones at both ends of
//! the offsets (+14 h, +12 h, −12 h), a half-hour one, one with daylight
//! saving time, and UTC. An event whose local day falls outside the era is
//! one the worker dead-letters (the test checks that the worker's check and
//! chrono's calendar agree on it). The expected sums are the test's own
//! i128 arithmetic, by UTC day and by chrono's local day.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use common::{Backend, World};
use ingest::load::generate::Rng;
use schemas::batch::EventBatchBuilder;
use schemas::event::decode;
use schemas::partial::EventCounts;
use schemas::totals::{LocalSums, LocalTotals};
use schemas::zone::{Zone, Zones};
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

/// The zones merchants are drawn from.
const ZONES: [&str; 7] = [
    "UTC",
    "Pacific/Kiritimati",
    "Etc/GMT-12",
    "Etc/GMT+12",
    "Asia/Kolkata",
    "America/New_York",
    "Asia/Tokyo",
];

/// What the candidates of one seed give.
struct Accepted {
    partials: Vec<Partial>,
    expected: Totals,
    expected_local: LocalTotals,
    /// Events the decoder accepts.
    accepted: u64,
    /// Of them, those whose local day lies outside the era.
    outside_era: u64,
}

/// The accepted candidates as partials of 50 events each (offsets 0, 1, …),
/// built by the worker's own Arrow and DataFusion path with local days, and
/// the test's own sums.
async fn accepted_partials(seed: u64, candidates: u64, topic: &str) -> Accepted {
    let mut rng = Rng(seed);
    let drawn: Vec<_> = (0..candidates).map(|n| candidate(&mut rng, n)).collect();
    let mut by_merchant: HashMap<String, Zone> = HashMap::new();
    for (payload, key) in &drawn {
        if let Ok(event) = decode(payload, key.as_deref()) {
            by_merchant
                .entry(event.merchant_id.to_string())
                .or_insert_with(|| {
                    Zone::parse(ZONES[rng.below(ZONES.len() as u64) as usize]).unwrap()
                });
        }
    }
    let zones = Arc::new(Zones::new(by_merchant.clone(), Zone::UTC));
    let session = shard_worker::aggregate::session(true);
    let mut out = Accepted {
        partials: Vec::new(),
        expected: BTreeMap::<TotalsKey, Sums>::new(),
        expected_local: LocalTotals::new(),
        accepted: 0,
        outside_era: 0,
    };
    let mut kept = Vec::new();
    for (payload, message_key) in &drawn {
        let Ok(event) = decode(payload, message_key.as_deref()) else {
            continue;
        };
        out.accepted += 1;
        let zone = by_merchant[&*event.merchant_id];
        let local_day = zone.local_day(event.occurred_at);
        let refused = zones.check_local_era(&event.merchant_id, event.occurred_at, event.day);
        assert_eq!(
            refused.is_err(),
            local_day.checked().is_err(),
            "seed {seed}: the worker's era check and chrono disagree on {} in {}",
            event.occurred_at,
            zone.name()
        );
        if refused.is_err() {
            out.outside_era += 1;
            continue;
        }
        let key = TotalsKey {
            merchant_id: event.merchant_id.to_string(),
            currency: event.currency.to_string(),
            day: event.day,
        };
        out.expected
            .entry(key.clone())
            .or_default()
            .add_event(event.kind, event.amount);
        out.expected_local
            .entry(TotalsKey {
                day: local_day,
                ..key
            })
            .or_insert_with(|| LocalSums {
                time_zone: zone.name().into(),
                sums: Sums::default(),
            })
            .sums
            .add_event(event.kind, event.amount);
        kept.push((payload, message_key));
    }
    let mut builder = EventBatchBuilder::with_local_days(64, zones.clone());
    for chunk in kept.chunks(50) {
        for (payload, key) in chunk {
            builder.push(&decode(payload, key.as_deref()).unwrap());
        }
        flush(&session, &mut builder, &mut out.partials, topic, seed).await;
    }
    out
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
    let batch = builder.finish().unwrap();
    let events = EventCounts {
        counted: batch.num_rows() as u64,
        ..Default::default()
    };
    let rows = shard_worker::aggregate::partial_rows(session, batch)
        .await
        .unwrap();
    assert!(!rows.local.is_empty());
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
        local_rows: rows.local,
        rows: rows.utc,
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
    let (mut all, mut all_local) = (Totals::new(), LocalTotals::new());
    let mut outside_era = 0;
    for seed in [1u64, 2, 3] {
        let topic = format!("{}-{seed}", world.orders);
        let drawn = accepted_partials(seed, 6_000, &topic).await;
        let accepted = drawn.accepted;
        assert!(accepted > 900 && accepted < 5_000, "seed {seed}: the generator reaches valid and invalid events ({accepted} of 6000 valid)");
        outside_era += drawn.outside_era;
        let claim = store.claim(&topic, 0, "property").await.unwrap();
        assert_eq!(claim.epoch, 1);
        let plan = store
            .apply(&drawn.partials)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: the database refused accepted events: {e}"));
        assert!(
            plan.violations.is_empty(),
            "seed {seed}: {:?}",
            plan.violations
        );
        assert_eq!(plan.applied, drawn.partials.len() as u64);
        schemas::totals::merge_into(&mut all, drawn.expected);
        // A merchant drawn again by a later seed may get another zone; its
        // rows keep the zone they were first counted in, as the tables do.
        schemas::totals::merge_local_into(&mut all_local, drawn.expected_local);
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
        let stored_local = store.local_totals(None).await.unwrap();
        assert_eq!(
            stored_local.len(),
            all_local.len(),
            "seed {seed}: every accepted local key is stored, and nothing else"
        );
        for (key, local) in &all_local {
            assert_eq!(
                stored_local.get(key),
                Some(local),
                "seed {seed}: local {key:?} reads back exactly"
            );
        }
    }
    assert!(
        outside_era > 0,
        "the generator reaches local days outside the era"
    );
    // Kinds and amounts are exercised: refunds pass and amounts reach 18 digits.
    let expected = accepted_partials(1, 6_000, "x").await.expected;
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
