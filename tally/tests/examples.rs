//! The producer examples in `examples/` run against the real broker and
//! `tally ingest`, and the totals tally computes from what they publish
//! equal the test's own sums: the Python producer (confluent-kafka) and the
//! Java producer (kafka-clients) also put every record in the partition
//! tally's own producer would (murmur2 of `merchant_id`); the HTTP client
//! posts through ingest with a small admission limit, so it meets 503s and
//! sends the same batch again.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{assert_totals_equal, produce, required, topic_records, traffic, Backend, World};
use ingest::load::generate::{Generated, Truth};

const PATIENCE: Duration = Duration::from_secs(120);

/// Writes the messages' bytes as NDJSON; returns the file and the messages
/// written. Left out: messages whose bytes hold a line break (they cannot
/// be a line), and those invalid only for a record key that disagrees with
/// their `merchant_id` (the examples key each record by its `merchant_id`,
/// as they should, which makes them valid).
fn ndjson(dir: &Path, messages: &[Generated]) -> (PathBuf, Vec<Generated>) {
    let kept: Vec<Generated> = messages
        .iter()
        .filter(|m| !m.payload.contains(&b'\n') && !m.payload.contains(&b'\r'))
        .filter(|m| m.truth != Truth::Invalid("key_mismatch"))
        .cloned()
        .collect();
    let mut body = Vec::new();
    for message in &kept {
        body.extend_from_slice(&message.payload);
        body.push(b'\n');
    }
    let path = dir.join("events.ndjson");
    std::fs::write(&path, body).unwrap();
    (path, kept)
}

/// Runs an example; panics with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(common::repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e}; run the tests through scripts/test")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Partition of each record key in `topic`.
fn partitions_by_key(brokers: &str, topic: &str) -> BTreeMap<Vec<u8>, i32> {
    let mut out = BTreeMap::new();
    for record in topic_records(brokers, topic) {
        if let Some(key) = record.key {
            let previous = out.insert(key.clone(), record.partition);
            assert!(
                previous.is_none_or(|p| p == record.partition),
                "key {:?} in partitions {previous:?} and {}",
                String::from_utf8_lossy(&key),
                record.partition
            );
        }
    }
    out
}

/// Runs a Kafka producer example (`program` with `leading` arguments, then
/// `--brokers`, `--topic` and the input file) over `seed`'s traffic through
/// a worker and an aggregator; the totals are exact, and every merchant's
/// records are in the partition tally's own producer puts them in.
async fn through_kafka(name: &str, seed: u64, program: &str, leading: &[&str]) {
    let mut world = World::new(name, Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(seed, 5_000);
    let (input, sent) = ndjson(&world.dir, &traffic.messages);
    world.start_aggregator("aggregator");
    world.start_worker("worker", &[]);
    let mut args = leading.to_vec();
    args.extend(["--brokers", &world.brokers, "--topic", &world.orders]);
    args.push(input.to_str().unwrap());
    let said = run(program, &args);
    assert!(
        said.contains(&format!("published {} events", sent.len())),
        "{said}"
    );
    world
        .wait_committed(&store, sent.len() as u64, PATIENCE)
        .await;
    assert_totals_equal(
        &common::expected_totals(&sent),
        &store.totals(None).await.unwrap(),
    );

    // The same events from tally's own producer, into a topic of as many partitions.
    let reference = common::unique("reference");
    common::create_topics(&world.brokers, &[&reference]).await;
    produce(&world.brokers, &reference, &sent).await;
    let theirs = partitions_by_key(&world.brokers, &world.orders);
    let ours = partitions_by_key(&world.brokers, &reference);
    assert!(theirs.len() > 100, "{} keys", theirs.len());
    assert_eq!(
        theirs, ours,
        "the example partitions as tally's own producer does"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_producer_is_counted_exactly() {
    let python = required("TALLY_TEST_PYTHON");
    through_kafka(
        "example-python",
        71,
        &python,
        &["examples/python/producer.py"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_producer_is_counted_exactly() {
    let classpath = required("TALLY_TEST_JAVA_EXAMPLE_CP");
    let main = ["-cp", &classpath, "dev.tally.example.Producer"];
    through_kafka("example-java", 72, "java", &main).await;
}

/// Two clients at once against an ingest that handles one request at a
/// time, so a batch may meet a 503 and be sent again; every event is
/// counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_client_is_counted_exactly() {
    let python = required("TALLY_TEST_PYTHON");
    let mut world = World::new("example-http", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(73, 6_000);
    let (_, sent) = ndjson(&world.dir, &traffic.messages);
    world.start_aggregator("aggregator");
    world.start_worker("worker", &[]);
    let (_, addr) = world
        .start_ingest(
            "ingest",
            "example-token",
            &[("ingest.max_concurrent_requests", "1")],
        )
        .await;
    let url = format!("http://{addr}");
    let halves: Vec<PathBuf> = sent
        .chunks(sent.len().div_ceil(2))
        .enumerate()
        .map(|(i, half)| {
            let dir = world.dir.join(format!("half-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            ndjson(&dir, half).0
        })
        .collect();
    let clients: Vec<_> = halves
        .iter()
        .map(|input| {
            Command::new(&python)
                .args([
                    "examples/http/post_orders.py",
                    "--url",
                    &url,
                    "--token",
                    "example-token",
                    "--batch",
                    "100",
                ])
                .arg(input)
                .current_dir(common::repo())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("python runs")
        })
        .collect();
    // Both run at once; each is then waited for.
    let (mut accepted, mut rejected) = (0, 0);
    for client in clients {
        let output = client.wait_with_output().expect("python runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        accepted += summary["accepted"].as_u64().unwrap();
        rejected += summary["rejected"].as_u64().unwrap();
    }
    let invalid = sent
        .iter()
        .filter(|m| matches!(m.truth, Truth::Invalid(_)))
        .count() as u64;
    assert_eq!((accepted, rejected), (sent.len() as u64 - invalid, invalid));
    world.wait_committed(&store, accepted, PATIENCE).await;
    assert_totals_equal(
        &common::expected_totals(&sent),
        &store.totals(None).await.unwrap(),
    );
}
