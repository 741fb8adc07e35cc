//! "How an event adds to totals" is written twice: as the worker's
//! DataFusion plan over a decoded batch, and as the backfill's sums over a
//! file's rows. This holds the two to the same answer, and both to the
//! generator's own totals, on the same generated events in each layout
//! (duplicates, late and invalid events among them).

use ingest::load::generate::{Generator, GeneratorConfig, Layout};
use schemas::Totals;
use shard_worker::aggregate::{partial_rows, session};
use shard_worker::decode::{decode_messages, Message};
use shard_worker::dedupe::DedupeWindow;

/// The worker's answer: batches of `batch` messages through the decoder,
/// the dedupe window and the partial aggregation, merged.
async fn by_the_worker(payloads: &[Vec<u8>], batch: usize) -> Totals {
    let messages: Vec<Message> = payloads
        .iter()
        .enumerate()
        .map(|(offset, payload)| Message {
            offset: offset as i64,
            key: None,
            payload: payload.clone(),
            timestamp_ms: Some(1_763_600_000_000 + offset as i64),
            headers: Vec::new(),
        })
        .collect();
    let context = session(false);
    let mut window = DedupeWindow::new(900_000, 2_000_000);
    let mut totals = Totals::new();
    for chunk in messages.chunks(batch) {
        let decoded = decode_messages(chunk, &mut window, 0, 0, None).expect("the batch decodes");
        let rows = partial_rows(&context, decoded.batch)
            .await
            .expect("the batch aggregates");
        for row in rows.utc {
            totals.entry(row.key).or_default().merge(&row.sums);
        }
    }
    totals
}

/// The backfill's answer: the same payloads as one NDJSON file, every day,
/// one shard.
async fn by_the_backfill(payloads: &[Vec<u8>], name: &str) -> Totals {
    let dir =
        std::env::temp_dir().join(format!("tally-contribution-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let file = dir.join("events.ndjson");
    let mut text = Vec::new();
    for payload in payloads {
        text.extend_from_slice(payload);
        text.push(b'\n');
    }
    std::fs::write(&file, text).expect("the file is written");
    let results = backfill::compute(
        &[file.display().to_string()],
        backfill::Format::Ndjson,
        &store::jobs::Scope::everything(),
        None,
        &[0],
        1,
    )
    .await
    .expect("the backfill computes");
    std::fs::remove_dir_all(&dir).expect("temporary directory removed");
    let mut totals = Totals::new();
    for result in results {
        for (key, sums) in result.totals {
            totals.entry(key).or_default().merge(&sums);
        }
    }
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_and_the_backfill_add_events_alike() {
    for layout in [Layout::Producer, Layout::Varied] {
        // Keyless: a file carries no Kafka key, so no event may rely on one.
        let mut generator = Generator::new(GeneratorConfig {
            seed: 77,
            events: 60_000,
            keyless: true,
            layout,
            ..GeneratorConfig::default()
        });
        let payloads: Vec<Vec<u8>> = generator.by_ref().map(|g| g.payload).collect();
        let expected = generator.totals().clone();
        assert!(expected.len() > 1_000, "{layout:?}: a test of many keys");
        let worker = by_the_worker(&payloads, 7_000).await;
        let backfill = by_the_backfill(&payloads, &format!("{layout:?}")).await;
        assert_eq!(
            worker.len(),
            expected.len(),
            "{layout:?}: the worker's keys"
        );
        assert_eq!(worker, expected, "{layout:?}: the worker's sums");
        assert_eq!(
            backfill, worker,
            "{layout:?}: the backfill against the worker"
        );
    }
}
