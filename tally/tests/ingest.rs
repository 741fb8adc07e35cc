//! `tally ingest` against the real broker: `tally generate --url` with eight
//! concurrent clients reaches `merchant_sales` exactly as its expected file
//! says; every kind of bad input gets its documented status and a useful body
//! without losing the valid events beside it; and requests without a valid
//! token are refused and produce nothing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_totals_equal, expected_totals, http, topic_messages, Backend, World};
use ingest::load::expected;
use ingest::load::generate::{Generated, Generator, GeneratorConfig, Truth};
use ingest::orders::Outcome;

const TOKEN: &str = "test-token-1";

async fn post(
    addr: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, Option<Outcome>) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let (status, body) = http(addr, "POST", "/v1/orders", &headers, body)
        .await
        .expect("ingest answers");
    (status, serde_json::from_slice(&body).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_reach_the_table_exactly() {
    let mut world = World::new("ingest", Backend::Postgres).await;
    let store = world.store().await;
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    let (_, addr) = world.start_ingest("ingest", TOKEN, &[]).await;

    // `tally generate --url` posts NDJSON batches from 8 concurrent clients;
    // ingest refuses the invalid events at the door and the rest must reach
    // `merchant_sales` exactly as the generator's file says.
    let file = world.dir.join("expected.csv");
    let (events, seed) = (40_000, 61);
    let url = format!("http://{addr}/v1/orders");
    // The token comes from a file, as a container's secret would.
    let token_file = world.dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_tally"))
        .env_remove("TALLY_TOKEN")
        .env("TALLY_TOKEN_FILE", &token_file)
        .args([
            "generate",
            "--url",
            &url,
            "--clients",
            "8",
            "--batch",
            "500",
        ])
        .args([
            "--events",
            &events.to_string(),
            "--seed",
            &seed.to_string(),
            "--merchants",
            "300",
        ])
        .args([
            "--invalid-share",
            "0.01",
            "--duplicate-share",
            "0.03",
            "--late-share",
            "0.05",
        ])
        .arg("--expected")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // The test's own account of the same seed: the file must say the same.
    let config = GeneratorConfig {
        seed,
        events,
        merchants: 300,
        invalid_share: 0.01,
        duplicate_share: 0.03,
        late_share: 0.05,
        keyless: true,
        ..GeneratorConfig::default()
    };
    let messages: Vec<Generated> = Generator::new(config).collect();
    let invalid = messages
        .iter()
        .filter(|m| matches!(m.truth, Truth::Invalid(_)))
        .count() as u64;
    assert!(invalid > 0);
    let from_file =
        expected::read(std::io::BufReader::new(std::fs::File::open(&file).unwrap())).unwrap();
    assert_totals_equal(&expected_totals(&messages), &from_file);
    assert!(
        String::from_utf8_lossy(&run.stdout).contains(&format!("({invalid} refused as invalid)"))
    );

    world
        .wait_committed(&store, events - invalid, Duration::from_secs(600))
        .await;
    assert_totals_equal(&from_file, &store.totals(None).await.unwrap());
    let verify = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "verify-totals",
            file.to_str().unwrap(),
            "--database-url",
            &world.database_url,
        ])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_bad_tokens() {
    let mut world = World::new("ingest-bad", Backend::Postgres).await;
    let (_, addr) = world.start_ingest("ingest", TOKEN, &[]).await;
    let good = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","order_id":"o","merchant_id":"m-1","kind":"sale","amount":"1.50","currency":"EUR","occurred_at":"2026-11-20T10:00:00Z"}}"#
        )
    };
    let bad = |from: &str, to: &str| good("bad").replace(from, to);
    let json = "application/json";

    // Each broken rule is named, and the valid events of the same request go through.
    let cases = [
        (bad(r#""1.50""#, "true"), "amount"),
        (bad(r#""1.50""#, r#""-1.50""#), "amount"),
        (bad(r#""1.50""#, r#""1.50001""#), "amount"),
        (bad("EUR", "eur"), "currency"),
        (bad(r#""merchant_id":"m-1","#, ""), "merchant_id"),
        (bad(r#""o""#, "17"), "order_id"),
    ];
    let mut accepted = 0;
    for (i, (event, field)) in cases.iter().enumerate() {
        let body = format!(
            "[{},{event},{}]",
            good(&format!("a{i}")),
            good(&format!("b{i}"))
        );
        let (status, outcome) = post(&addr, Some(TOKEN), json, body.as_bytes()).await;
        let outcome = outcome.expect("a JSON body");
        assert_eq!(
            (status, outcome.accepted, outcome.rejected),
            (207, 2, 1),
            "{event}"
        );
        assert_eq!(
            (outcome.errors[0].at, outcome.errors[0].field.as_str()),
            (1, *field),
            "{outcome:?}"
        );
        assert!(!outcome.errors[0].reason.is_empty());
        accepted += 2;
    }
    // Only bad events: 422, nothing produced. NDJSON errors name the line.
    let (status, outcome) = post(
        &addr,
        Some(TOKEN),
        "application/x-ndjson",
        format!("\n{}\n", bad("EUR", "eur")).as_bytes(),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(outcome.unwrap().errors[0].at, 2);
    // Whole-request problems.
    for (body, status) in [
        (b"[{\"event_id\":".to_vec(), 400),
        (b"{\"not\":\"an array\"}".to_vec(), 400),
        (vec![b'[', 0xff, 0xfe, b']'], 400),
        (Vec::new(), 400),
        (vec![b' '; 10 * 1024 * 1024], 413),
    ] {
        let (got, outcome) = post(&addr, Some(TOKEN), json, &body).await;
        assert_eq!(
            got,
            status,
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(20)])
        );
        if status == 400 {
            assert!(outcome.and_then(|o| o.error).is_some_and(|e| !e.is_empty()));
        }
    }
    // No token, or a wrong one: 401, and nothing from those requests is produced.
    let body = format!("[{}]", good("unauthorised"));
    assert_eq!(post(&addr, None, json, body.as_bytes()).await.0, 401);
    assert_eq!(
        post(&addr, Some("test-token-2"), json, body.as_bytes())
            .await
            .0,
        401
    );
    assert_eq!(post(&addr, Some(""), json, body.as_bytes()).await.0, 401);
    // The totals API's 401 shape: it names the scheme it takes.
    let reply = ingest::load::client::request(
        &addr,
        "POST",
        "/v1/orders",
        &[("Content-Type", json)],
        body.as_bytes(),
    )
    .await
    .expect("ingest answers");
    assert_eq!(
        (reply.status, reply.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    assert_eq!(
        topic_messages(&world.brokers, &world.orders),
        accepted,
        "exactly the accepted events are in the topic"
    );

    let (status, spec) = http(&addr, "GET", "/openapi.json", &[], b"").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        spec,
        std::fs::read(common::repo().join("ingest/openapi.json")).unwrap()
    );
}

async fn wait_for(addr: &str, path: &str, status: u16) {
    let what = format!("{path} answers {status}");
    common::eventually(&what, Duration::from_secs(60), || async {
        http(addr, "GET", path, &[], b"").await.map(|r| r.0).ok() == Some(status)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_gives_503_then_recovers() {
    let mut world = World::new("ingest-outage", Backend::Postgres).await;
    let mut broker = common::PrivateBroker::start(&mut world);
    common::create_topics(&world.brokers, &[&world.orders]).await;
    let (ingest, addr) = world
        .start_ingest("ingest", TOKEN, &[("ingest.ack_timeout_ms", "3000")])
        .await;
    let event = |id: &str| {
        format!(
            r#"[{{"event_id":"{id}","order_id":"o","merchant_id":"m-1","kind":"sale","amount":"2","currency":"EUR","occurred_at":"2026-11-20T10:00:00Z"}}]"#
        )
    };
    assert_eq!(
        post(
            &addr,
            Some(TOKEN),
            "application/json",
            event("before").as_bytes()
        )
        .await
        .0,
        200
    );

    broker.kill();
    wait_for(&addr, "/readyz", 503).await;
    let (status, outcome) = post(
        &addr,
        Some(TOKEN),
        "application/json",
        event("during").as_bytes(),
    )
    .await;
    assert_eq!(status, 503, "{outcome:?}");
    assert!(outcome
        .and_then(|o| o.error)
        .is_some_and(|e| e.contains("broker")));
    world.assert_running(ingest);

    broker.start_again();
    wait_for(&addr, "/readyz", 200).await;
    // The producer reconnects on its own; the first requests may still see 503.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = post(
            &addr,
            Some(TOKEN),
            "application/json",
            event("after").as_bytes(),
        )
        .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "requests still fail 60 s after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    world.assert_running(ingest);
}
