//! `tally ingest` under abuse, against the real broker: a 5 MiB body of
//! `[1,1,…]` (2.6 million rejections) gets a bounded answer; an event larger than the
//! broker takes is refused by position, not with a retryable 503; half-sent
//! headers are closed after the deadline while normal requests are served,
//! and a body that breaks off gets 400; a
//! flood beyond the concurrency limit is shed with 503 and `Retry-After`,
//! and every accepted event is in the topic exactly once; and every key
//! lands in the partition Java's murmur2 partitioner picks.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{topic_records, Backend, World, PARTITIONS};
use ingest::load::client::request;
use ingest::orders::{Outcome, LISTED_REJECTIONS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "limits-token";

fn event(id: &str, merchant: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","order_id":"o-{id}","merchant_id":"{merchant}","kind":"sale","amount":"2.50","currency":"EUR","occurred_at":"2026-11-20T10:00:00Z"}}"#
    )
}

async fn post(addr: &str, body: &[u8]) -> (u16, Option<String>, Outcome) {
    let auth = format!("Bearer {TOKEN}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let reply = request(addr, "POST", "/v1/orders", &headers, body)
        .await
        .expect("ingest answers");
    let outcome = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&reply.body)));
    (
        reply.status,
        reply.header("retry-after").map(str::to_owned),
        outcome,
    )
}

/// Every event id in `topic`.
fn ids_in(world: &World) -> Vec<String> {
    topic_records(&world.brokers, &world.orders)
        .iter()
        .map(|r| {
            let value: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            value["event_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_bounded_and_an_oversized_event_is_named() {
    let mut world = World::new("ingest-bounded", Backend::Postgres).await;
    let (_, addr) = world.start_ingest("ingest", TOKEN, &[]).await;

    // 5 MiB of `[1,1,1,…]`: every element is rejected, the answer stays small.
    let elements = (5 * 1024 * 1024 - 2) / 2;
    let mut body = String::with_capacity(5 * 1024 * 1024);
    body.push('[');
    for i in 0..elements {
        body.push_str(if i == 0 { "1" } else { ",1" });
    }
    body.push(']');
    let auth = format!("Bearer {TOKEN}");
    let reply = request(
        &addr,
        "POST",
        "/v1/orders",
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 422);
    assert!(
        reply.body.len() < 32 * 1024,
        "a {}-byte answer to {} rejections",
        reply.body.len(),
        elements
    );
    println!(
        "{elements} rejections answered in {} bytes",
        reply.body.len()
    );
    let outcome: Outcome = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!((outcome.accepted, outcome.rejected), (0, elements));
    assert_eq!(outcome.errors.len(), LISTED_REJECTIONS);
    assert_eq!(
        outcome.errors.iter().map(|e| e.at).collect::<Vec<_>>(),
        (0..LISTED_REJECTIONS).collect::<Vec<_>>()
    );
    assert_eq!(
        outcome.reasons.values().sum::<usize>(),
        elements,
        "{:?}",
        outcome.reasons
    );
    assert!(
        outcome.reasons.keys().all(|k| k.starts_with("payload ")),
        "{:?}",
        outcome.reasons
    );

    // An event over librdkafka's 1,000,000-byte message.max.bytes beside a
    // good one: the good one is accepted, the big one refused by position.
    let big = event("big", "m-big").replacen(
        '{',
        &format!(r#"{{"note":"{}","#, "x".repeat(1_100_000)),
        1,
    );
    let body = format!("[{},{big}]", event("small", "m-small"));
    let (status, retry_after, outcome) = post(&addr, body.as_bytes()).await;
    assert_eq!(
        (status, retry_after, outcome.accepted, outcome.rejected),
        (207, None, 1, 1),
        "{outcome:?}"
    );
    assert_eq!(
        (outcome.errors[0].at, outcome.errors[0].field.as_str()),
        (1, "payload")
    );
    assert!(
        outcome.errors[0].reason.contains("message.max.bytes"),
        "{}",
        outcome.errors[0].reason
    );
    assert_eq!(ids_in(&world), ["small"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_closed_while_requests_are_served() {
    let mut world = World::new("ingest-slowloris", Backend::Postgres).await;
    let (_, addr) = world
        .start_ingest("ingest", TOKEN, &[("ingest.header_timeout_ms", "2000")])
        .await;

    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"POST /v1/orders HTTP/1.1\r\nHost: tally\r\nContent-Ty")
            .await
            .unwrap();
        stalled.push(stream);
    }
    // Served while 300 connections hold half a header each.
    let (status, _, outcome) =
        post(&addr, format!("[{}]", event("served", "m-1")).as_bytes()).await;
    assert_eq!((status, outcome.accepted), (200, 1));

    // Each stalled connection is closed by the server: its read ends.
    let started = Instant::now();
    for mut stream in stalled {
        let mut buf = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
                .await
                .expect("the server closes a connection that stalls in its headers");
            match read {
                Ok(0) | Err(_) => break,
                // hyper may answer 408 before it closes.
                Ok(_) => continue,
            }
        }
    }
    println!(
        "300 stalled connections closed {:.1} s after the last was opened",
        started.elapsed().as_secs_f64()
    );

    // A chunked body whose encoding breaks off after a first good chunk:
    // 400 (the request is malformed, not too large), and nothing of it is produced.
    let chunk = format!("[{}", event("broken", "m-1"));
    let request = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\nZZ-not-a-size\r\n",
        chunk.len()
    );
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("answered")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("could not be read"),
        "{answer}"
    );

    let (status, _, _) = post(&addr, format!("[{}]", event("after", "m-1")).as_bytes()).await;
    assert_eq!(status, 200);
    let ids: BTreeSet<String> = ids_in(&world).into_iter().collect();
    assert_eq!(
        ids,
        BTreeSet::from(["served".to_owned(), "after".to_owned()])
    );
}

/// Holds one request slot: the headers and half the body are sent.
async fn half_posted(addr: &str, body: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: tally\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first.as_bytes()).await.unwrap();
    (stream, rest.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_limit_is_shed_and_nothing_accepted_is_lost() {
    let mut world = World::new("ingest-flood", Backend::Postgres).await;
    let (_, addr) = world
        .start_ingest("ingest", TOKEN, &[("ingest.max_concurrent_requests", "2")])
        .await;
    let batch = |request: usize| -> (Vec<String>, String) {
        let ids: Vec<String> = (0..25).map(|i| format!("r{request}-e{i}")).collect();
        let events: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| event(id, &format!("m-{}", i % 7)))
            .collect();
        (ids, format!("[{}]", events.join(",")))
    };

    // Two requests hold both slots, their bodies half sent.
    let (slow_ids_a, slow_a) = batch(1000);
    let (slow_ids_b, slow_b) = batch(1001);
    let mut holders = [
        half_posted(&addr, &slow_a).await,
        half_posted(&addr, &slow_b).await,
    ];
    world
        .wait_for(
            "both slots to be taken",
            Duration::from_secs(30),
            || async {
                world
                    .metric("ingest", "tally_ingest_requests_in_progress", &[])
                    .await
                    == Some(2.0)
            },
        )
        .await;

    // A flood of 40 concurrent requests while they do: every one is shed.
    let flood: Vec<(Vec<String>, String)> = (0..40).map(batch).collect();
    let answers = futures_join(flood.iter().map(|(_, body)| {
        let (addr, body) = (addr.clone(), body.clone());
        async move { post(&addr, body.as_bytes()).await }
    }))
    .await;
    for (status, retry_after, outcome) in &answers {
        assert_eq!(*status, 503, "{outcome:?}");
        assert!(
            retry_after
                .as_deref()
                .is_some_and(|s| s.parse::<u32>().is_ok()),
            "Retry-After: {retry_after:?}"
        );
        assert!(
            outcome
                .error
                .as_deref()
                .is_some_and(|e| e.contains("max_concurrent_requests")),
            "{outcome:?}"
        );
    }

    // The held requests finish and are accepted.
    let mut accepted: Vec<String> = Vec::new();
    for ((stream, rest), ids) in holders.iter_mut().zip([&slow_ids_a, &slow_ids_b]) {
        stream.write_all(rest).await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        accepted.extend(ids.iter().cloned());
    }
    // The shed requests, retried as Retry-After says, are accepted.
    for (ids, body) in &flood {
        let (status, _, outcome) = post(&addr, body.as_bytes()).await;
        assert_eq!((status, outcome.accepted), (200, ids.len()), "{outcome:?}");
        accepted.extend(ids.iter().cloned());
    }
    // Exactly the accepted events are in the topic, each once.
    let mut in_topic = ids_in(&world);
    in_topic.sort();
    accepted.sort();
    assert_eq!(in_topic, accepted);
    assert_eq!(
        world
            .metric("ingest", "tally_ingest_requests_in_progress", &[])
            .await,
        Some(0.0)
    );
}

async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), written
/// from its published definition.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().unwrap());
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Java's default partitioner picks for a keyed record.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn murmur2_matches_kafkas_published_vectors() {
    // From Kafka's UtilsTest.testMurmur2.
    for (key, hash) in [
        (&b"21"[..], -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ] {
        assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_lands_where_javas_partitioner_puts_it() {
    let mut world = World::new("ingest-murmur2", Backend::Postgres).await;
    let (_, addr) = world.start_ingest("ingest", TOKEN, &[]).await;
    let merchants: Vec<String> = (0..60).map(|i| format!("merchant-{i:03}")).collect();
    let events: Vec<String> = merchants
        .iter()
        .enumerate()
        .map(|(i, m)| event(&format!("k{i}"), m))
        .collect();
    let (status, _, outcome) = post(&addr, format!("[{}]", events.join(",")).as_bytes()).await;
    assert_eq!((status, outcome.accepted), (200, merchants.len()));

    let records = topic_records(&world.brokers, &world.orders);
    assert_eq!(records.len(), merchants.len());
    let used: BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(
        used.len() as i32,
        PARTITIONS,
        "60 merchants spread over every partition"
    );
    for record in &records {
        let key = record
            .key
            .as_deref()
            .expect("ingest keys each event by merchant");
        assert_eq!(
            record.partition,
            java_partition(key, PARTITIONS),
            "key {}",
            String::from_utf8_lossy(key)
        );
    }
}
