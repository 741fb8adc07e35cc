//! `tally generate` and `tally verify-totals` against the real broker and
//! PostgreSQL: the expected-totals file is reproducible for a seed, the
//! pipeline's table matches it, and a row changed by hand is reported.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Backend, World};

fn tally(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .output()
        .expect("tally runs")
}

fn generate(world: &World, topic: &str, seed: &str, file: &Path) -> Output {
    let file = file.to_str().unwrap();
    tally(&[
        "generate",
        "--brokers",
        &world.brokers,
        "--topic",
        topic,
        "--events",
        "30000",
        "--seed",
        seed,
        "--merchants",
        "200",
        "--invalid-share",
        "0.01",
        "--duplicate-share",
        "0.05",
        "--expected",
        file,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_totals_are_reproducible_and_verified() {
    let mut world = World::new("generate", Backend::Postgres).await;
    let store = world.store().await;
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);

    let (first, again, other) = (
        world.dir.join("a.csv"),
        world.dir.join("b.csv"),
        world.dir.join("c.csv"),
    );
    let run = generate(&world, &world.orders, "5", &first);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Progress on a pipe is plain lines: no carriage return in a log.
    assert!(
        !run.stderr.contains(&b'\r'),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The same seed, published to a topic no worker reads, writes the same file.
    let spare = format!("{}-spare", world.orders);
    common::create_topics(&world.brokers, &[&spare]).await;
    assert!(generate(&world, &spare, "5", &again).status.success());
    assert!(generate(&world, &spare, "6", &other).status.success());
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(
        bytes(&first),
        bytes(&again),
        "same seed, same expected totals"
    );
    assert_ne!(bytes(&first), bytes(&other), "another seed, other totals");

    world
        .wait_committed(&store, 30_000, Duration::from_secs(600))
        .await;
    let verify = tally(&[
        "verify-totals",
        first.to_str().unwrap(),
        "--database-url",
        &world.database_url,
    ]);
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(stdout.starts_with("OK: all "), "{stdout}");

    // Change one row by hand: verify-totals names exactly that key and fails.
    let (client, connection) = tokio_postgres::connect(&world.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "UPDATE merchant_sales SET sales_count = sales_count + 1
             WHERE (merchant_id, currency, day) = (SELECT merchant_id, currency, day FROM merchant_sales
                                                   ORDER BY merchant_id, currency, day LIMIT 1)
             RETURNING merchant_id, currency, day::text",
            &[],
        )
        .await
        .unwrap();
    let key = format!(
        "{} {} {}",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        row.get::<_, String>(2)
    );
    let verify = tally(&[
        "verify-totals",
        first.to_str().unwrap(),
        "--database-url",
        &world.database_url,
    ]);
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "{stdout}");
    let diffs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("DIFF ")).collect();
    assert_eq!(diffs.len(), 1, "{stdout}");
    assert!(diffs[0].starts_with(&format!("DIFF {key}:")), "{stdout}");

    json_views_agree(&world, &store, &first, &key, &row.get::<_, String>(0)).await;
}

/// `verify-totals --json` gives the one difference `key` with both sides,
/// and `query --json` the merchant's rows as the table holds them.
async fn json_views_agree(
    world: &World,
    store: &store::Store,
    file: &Path,
    key: &str,
    merchant: &str,
) {
    // The same outcome as JSON: one difference, the database's count one more.
    let verify = tally(&[
        "verify-totals",
        file.to_str().unwrap(),
        "--database-url",
        &world.database_url,
        "--json",
    ]);
    assert_eq!(verify.status.code(), Some(1));
    let outcome: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(outcome["matches"], false);
    let differences = outcome["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{outcome}");
    let difference = &differences[0];
    assert_eq!(
        format!(
            "{} {} {}",
            difference["merchant_id"].as_str().unwrap(),
            difference["currency"].as_str().unwrap(),
            difference["day"].as_str().unwrap()
        ),
        key
    );
    assert_eq!(
        difference["database"]["sales_count"].as_i64().unwrap(),
        difference["expected"]["sales_count"].as_i64().unwrap() + 1
    );

    // `query --json` gives the merchant's rows as the table holds them.
    let query = tally(&[
        "query",
        "--merchant",
        merchant,
        "--database-url",
        &world.database_url,
        "--json",
    ]);
    assert!(query.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&query.stdout).unwrap();
    let table = store.totals(Some(merchant)).await.unwrap();
    assert_eq!(rows.len(), table.len());
    for (row, (key, sums)) in rows.iter().zip(&table) {
        assert_eq!(row["day"], key.day.to_string());
        assert_eq!(row["currency"], key.currency);
        assert_eq!(row["sales_amount"], sums.sales_amount.to_string());
        assert_eq!(row["refund_count"], sums.refund_count);
    }
}

#[test]
fn bad_arguments_name_the_flag() {
    let out = tally(&["generate", "--duplicate-share", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`--duplicate-share`"));
    let bad = std::env::temp_dir().join(format!("tally-bad-expected-{}.csv", std::process::id()));
    std::fs::write(&bad, "merchant_id,currency\n").unwrap();
    let out = tally(&[
        "verify-totals",
        bad.to_str().unwrap(),
        "--database-url",
        "sqlite:///nonexistent/x.sqlite",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(bad).unwrap();
}
