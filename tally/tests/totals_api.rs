//! The totals API of `tally ingest` over the real pipeline (worker,
//! aggregator, broker) on PostgreSQL and on SQLite:
//!
//! - a merchant's days and range sums, on both bases, equal the totals
//!   tables to the last decimal digit, and the tables equal the totals the
//!   test computes itself;
//! - a day's top merchants are the ranking the test computes from the table;
//! - `If-None-Match` gets 304 until a new event changes the merchant's total;
//! - a missing or unknown token gets 401, a write token 403 (and a read
//!   token 403 on `POST /v1/orders`); bad parameters get 400 naming them;
//! - the served OpenAPI document is the checked-in one, and describes both routes;
//! - a PostgreSQL role with only SELECT, whose DateStyle is `SQL, DMY`, runs
//!   the API, `tally query` and `tally verify`: nothing it reads migrates,
//!   and every day reads back as `YYYY-MM-DD`.

#[macro_use]
mod common;
mod files;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{assert_totals_equal, local, produce, produce_raw, traffic, Backend, World};
use ingest::load::client::Reply;
use ingest::totals::{MerchantTotals, TopMerchants, MAX_RANGE_DAYS};
use schemas::{Amount, Day, Sums, TotalsKey};

const WRITE: &str = "write-token-1";
const READ: &str = "read-token-1";
const PATIENCE: Duration = Duration::from_secs(600);

on_both_databases!(served_totals_are_the_tables);

async fn get(addr: &str, path: &str, token: Option<&str>, if_none_match: Option<&str>) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    if let Some(tag) = if_none_match {
        headers.push(("If-None-Match", tag));
    }
    ingest::load::client::request(addr, "GET", path, &headers, b"")
        .await
        .expect("ingest answers")
}

/// The JSON of a 200 answer.
fn ok<T: serde::de::DeserializeOwned>(reply: &Reply, what: &str) -> T {
    assert_eq!(
        reply.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A table's rows as the API shows them: the zone and sums of each key.
type Rows = BTreeMap<TotalsKey, (String, Sums)>;

/// One merchant's rows of both tables, read through the store.
async fn table_rows(store: &store::Store, merchant: &str) -> [Rows; 2] {
    let utc = store.totals(Some(merchant)).await.unwrap();
    let local = store.local_totals(Some(merchant)).await.unwrap();
    [
        utc.into_iter()
            .map(|(k, s)| (k, ("UTC".to_owned(), s)))
            .collect(),
        local
            .into_iter()
            .map(|(k, l)| (k, (l.time_zone.into_owned(), l.sums)))
            .collect(),
    ]
}

/// Asks for `merchant`'s whole history on `basis`, in ranges of at most
/// [`MAX_RANGE_DAYS`], and checks every day and every range's sums against
/// `table`, comparing the decimal strings.
async fn check_merchant(addr: &str, merchant: &str, basis: &str, table: &Rows) {
    let first = table.keys().map(|k| k.day).min().unwrap();
    let last = table.keys().map(|k| k.day).max().unwrap();
    let mut served = Rows::new();
    let mut from = first;
    while from <= last {
        let to = Day((from.0 + MAX_RANGE_DAYS - 1).min(last.0));
        let path = format!("/v1/merchants/{merchant}/totals?from={from}&to={to}&basis={basis}");
        let answer: MerchantTotals = ok(&get(addr, &path, Some(READ), None).await, &path);
        let in_range: Vec<_> = table
            .iter()
            .filter(|(key, _)| (from..=to).contains(&key.day))
            .collect();
        assert_eq!(answer.days.len(), in_range.len(), "{path}");
        // Each range's sums, per currency, from the table's rows.
        let mut sums: BTreeMap<&str, (usize, Sums)> = BTreeMap::new();
        for (key, (_, row)) in &in_range {
            let sum = sums.entry(&key.currency).or_default();
            sum.0 += 1;
            sum.1.merge(row);
        }
        assert_eq!(answer.sums.len(), sums.len(), "{path}");
        for (served_sum, (currency, (days, sum))) in answer.sums.iter().zip(&sums) {
            assert_eq!(
                (
                    served_sum.currency.as_str(),
                    served_sum.days,
                    served_sum.sales_amount.to_string(),
                    served_sum.sales_count,
                    served_sum.refund_amount.to_string(),
                    served_sum.refund_count,
                    served_sum.net_amount.to_string(),
                ),
                (
                    *currency,
                    *days,
                    sum.sales_amount.to_string(),
                    sum.sales_count,
                    sum.refund_amount.to_string(),
                    sum.refund_count,
                    sum.net_amount().to_string(),
                ),
                "{path}"
            );
        }
        for row in answer.days {
            assert_eq!(row.net_amount, row.sales_amount - row.refund_amount);
            let key = TotalsKey {
                merchant_id: merchant.to_owned(),
                currency: row.currency,
                day: row.day,
            };
            served.insert(
                key,
                (
                    row.time_zone,
                    Sums {
                        sales_amount: row.sales_amount,
                        sales_count: row.sales_count,
                        refund_amount: row.refund_amount,
                        refund_count: row.refund_count,
                    },
                ),
            );
        }
        from = Day(to.0 + 1);
    }
    common::assert_rows_equal(&format!("{merchant} on {basis}"), table, &served);
}

/// The exact decimal strings of a merchant's answer: what a client reads.
fn strings(reply: &Reply) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    value["days"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            ["sales_amount", "refund_amount", "net_amount"]
                .map(|field| row[field].as_str().unwrap().to_owned())
        })
        .collect()
}

#[expect(
    clippy::too_many_lines,
    reason = "every route and basis compared with the tables read directly, on one pipeline"
)]
async fn served_totals_are_the_tables(backend: Backend) {
    let mut world = World::new("totals-api", backend).await;
    let store = world.store().await;
    let mut traffic = traffic(23, 20_000);
    let zones = local::with_zones(&store, &mut traffic).await;
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    let database_url = world.database_url.clone();
    let (_, addr) = world
        .start_ingest(
            "ingest",
            WRITE,
            &[
                ("ingest.read_tokens", READ),
                ("ingest.database_url", &database_url),
            ],
        )
        .await;
    produce(&world.brokers, &world.orders, &traffic.messages).await;
    let mut produced = traffic.messages.len() as u64;
    world.wait_committed(&store, produced, PATIENCE).await;
    // The tables are what the test computed (the pipeline tests check
    // this in depth); the API must then serve exactly the tables.
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
    local::assert_equal(
        &local::expected(&traffic.messages, &zones),
        &store.local_totals(None).await.unwrap(),
    );

    // One merchant of each zone, and one left in the default zone.
    let mut merchants: Vec<String> = local::ZONES
        .iter()
        .filter_map(|zone| {
            let mut of_zone: Vec<&String> = zones
                .iter()
                .filter(|(_, z)| *z == zone)
                .map(|(m, _)| m)
                .collect();
            of_zone.sort();
            of_zone.first().map(|m| (*m).clone())
        })
        .collect();
    let unset = traffic
        .expected
        .keys()
        .map(|k| &k.merchant_id)
        .find(|m| !zones.contains_key(*m))
        .expect("a merchant in the default zone");
    merchants.push(unset.clone());
    for merchant in &merchants {
        let [utc, local] = table_rows(&store, merchant).await;
        check_merchant(&addr, merchant, "utc", &utc).await;
        check_merchant(&addr, merchant, "local", &local).await;
    }

    // One currency only, and `basis` left out (UTC).
    let merchant = &merchants[2];
    let [utc, _] = table_rows(&store, merchant).await;
    let (TotalsKey { day, currency, .. }, _) = utc.iter().next().unwrap();
    let path = format!("/v1/merchants/{merchant}/totals?from={day}&to={day}&currency={currency}");
    let answer: MerchantTotals = ok(&get(&addr, &path, Some(READ), None).await, &path);
    assert_eq!(answer.basis, "utc");
    assert_eq!(answer.days.len(), 1);
    assert_eq!(&answer.days[0].currency, currency);

    // A day's top merchants: the ranking computed here from the table.
    let all = store.totals(None).await.unwrap();
    let mut per_day: BTreeMap<Day, usize> = BTreeMap::new();
    for key in all.keys() {
        *per_day.entry(key.day).or_default() += 1;
    }
    let busiest = *per_day.iter().max_by_key(|(_, n)| **n).unwrap().0;
    for (basis, table) in [
        ("utc", rows_of_day(&all, busiest)),
        (
            "local",
            rows_of_day(
                &store
                    .local_totals(None)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(k, l)| (k, l.sums))
                    .collect(),
                busiest,
            ),
        ),
    ] {
        let path = format!("/v1/merchants?day={busiest}&top=5&basis={basis}");
        let answer: TopMerchants = ok(&get(&addr, &path, Some(READ), None).await, &path);
        let served: Vec<(String, usize, String, String)> = answer
            .merchants
            .iter()
            .map(|r| {
                (
                    r.totals.currency.clone(),
                    r.rank,
                    r.merchant_id.clone(),
                    r.totals.net_amount.to_string(),
                )
            })
            .collect();
        let mut want = Vec::new();
        for (currency, mut rows) in table {
            rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_bytes().cmp(b.0.as_bytes())));
            for (rank, (merchant, net)) in rows.into_iter().take(5).enumerate() {
                want.push((currency.clone(), rank + 1, merchant, net.to_string()));
            }
        }
        assert!(!want.is_empty());
        assert_eq!(served, want, "{path}");
    }

    // ETag: unchanged totals get 304; one more sale makes them change.
    let merchant = &merchants[3];
    let [utc, _] = table_rows(&store, merchant).await;
    let day = utc.keys().map(|k| k.day).max().unwrap();
    let path = format!("/v1/merchants/{merchant}/totals?from={day}&to={day}");
    let first = get(&addr, &path, Some(READ), None).await;
    let _: MerchantTotals = ok(&first, &path);
    let tag = first.header("etag").expect("an ETag").to_owned();
    let again = get(&addr, &path, Some(READ), Some(&tag)).await;
    assert_eq!((again.status, again.body.len()), (304, 0));
    assert_eq!(again.header("etag"), Some(tag.as_str()));
    let sale = format!(
        r#"{{"event_id":"api-etag-1","order_id":"o-api","merchant_id":"{merchant}","kind":"sale","amount":"0.0001","currency":"EUR","occurred_at":"{day}T12:00:00Z"}}"#
    );
    produce_raw(
        &world.brokers,
        &world.orders,
        &[(merchant.as_bytes().to_vec(), sale.into_bytes(), None)],
    )
    .await;
    produced += 1;
    world.wait_committed(&store, produced, PATIENCE).await;
    let changed = get(&addr, &path, Some(READ), Some(&tag)).await;
    let answer: MerchantTotals = ok(&changed, &path);
    assert_ne!(changed.header("etag"), Some(tag.as_str()));
    let euro = |sums: &[ingest::totals::RangeSum]| {
        sums.iter()
            .find(|s| s.currency == "EUR")
            .map_or(Amount::ZERO, |s| s.sales_amount)
    };
    let before: MerchantTotals = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(
        euro(&answer.sums),
        euro(&before.sums) + Amount(1),
        "the new sale of 0.0001 EUR is in the answer"
    );
    assert_eq!(strings(&changed).len(), answer.days.len() * 3);

    refusals(&addr, merchant).await;

    let spec = get(&addr, "/openapi.json", None, None).await;
    let checked_in = std::fs::read(common::repo().join("ingest/openapi.json")).unwrap();
    assert_eq!(
        spec.body, checked_in,
        "the served OpenAPI document is the checked-in one"
    );
    let spec: serde_json::Value = serde_json::from_slice(&spec.body).unwrap();
    for route in [
        "/v1/merchants/{merchant_id}/totals",
        "/v1/merchants/{merchant_id}/days",
        "/v1/merchants",
    ] {
        assert!(
            spec["paths"][route]["get"]["responses"]["304"].is_object(),
            "{route}"
        );
    }
}

/// Each currency's (merchant, net) of one day.
fn rows_of_day(
    totals: &BTreeMap<TotalsKey, Sums>,
    day: Day,
) -> BTreeMap<String, Vec<(String, Amount)>> {
    let mut out: BTreeMap<String, Vec<(String, Amount)>> = BTreeMap::new();
    for (key, sums) in totals.iter().filter(|(k, _)| k.day == day) {
        out.entry(key.currency.clone())
            .or_default()
            .push((key.merchant_id.clone(), sums.net_amount()));
    }
    out
}

/// 401 without a valid token, 403 for the wrong kind, 400 naming the
/// parameter, and nothing served or produced by any of them.
async fn refusals(addr: &str, merchant: &str) {
    let good = format!("/v1/merchants/{merchant}/totals?from=2026-03-01&to=2026-03-31");
    for token in [None, Some("not-a-token"), Some("")] {
        let reply = get(addr, &good, token, None).await;
        assert_eq!(reply.status, 401, "{token:?}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    for path in [good.as_str(), "/v1/merchants?day=2026-03-01"] {
        let reply = get(addr, path, Some(WRITE), None).await;
        assert_eq!(reply.status, 403, "a write token may not read {path}");
        assert!(String::from_utf8_lossy(&reply.body).contains("read token"));
    }
    let event = br#"[{"event_id":"read-token-write","order_id":"o","merchant_id":"m-1","kind":"sale","amount":"1","currency":"EUR","occurred_at":"2026-03-01T00:00:00Z"}]"#;
    let bearer = format!("Bearer {READ}");
    let reply = ingest::load::client::request(
        addr,
        "POST",
        "/v1/orders",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        event,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 403, "a read token may not write");

    let base = format!("/v1/merchants/{merchant}/totals");
    let long = "m".repeat(200);
    let cases = [
        (format!("{base}?to=2026-03-31"), "from"),
        (format!("{base}?from=2026-03-01"), "to"),
        (format!("{base}?from=2026-02-30&to=2026-03-31"), "from"),
        (format!("{base}?from=March&to=2026-03-31"), "from"),
        (format!("{base}?from=2026-03-31&to=2026-03-01"), "to"),
        (format!("{base}?from=2025-01-01&to=2026-01-02"), "to"),
        (
            format!("{base}?from=2026-03-01&to=2026-03-31&currency=eur"),
            "currency",
        ),
        (
            format!("{base}?from=2026-03-01&to=2026-03-31&basis=solar"),
            "basis",
        ),
        (
            format!("{base}?from=2026-03-01&to=2026-03-31&form=x"),
            "form",
        ),
        (
            format!("{base}?from=2026-03-01&from=2026-03-02&to=2026-03-31"),
            "from",
        ),
        (
            format!("/v1/merchants/{long}/totals?from=2026-03-01&to=2026-03-31"),
            "merchant_id",
        ),
        ("/v1/merchants?top=5".to_owned(), "day"),
        ("/v1/merchants?day=2026-03-01&top=0".to_owned(), "top"),
        ("/v1/merchants?day=2026-03-01&top=1001".to_owned(), "top"),
        ("/v1/merchants?day=2026-03-01&top=ten".to_owned(), "top"),
        ("/v1/merchants?day=2026-03-01&basis=UTC".to_owned(), "basis"),
        (
            "/v1/merchants?day=2026-03-01&from=2026-03-01".to_owned(),
            "from",
        ),
    ];
    for (path, parameter) in cases {
        let reply = get(addr, &path, Some(READ), None).await;
        let error: ingest::http::ApiError =
            serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (reply.status, error.parameter.as_deref()),
            (400, Some(parameter)),
            "{path}: {}",
            error.error
        );
        assert!(error.error.starts_with(parameter), "{}", error.error);
    }
    // The longest range allowed is served.
    let path = format!("{base}?from=2025-01-01&to=2026-01-01");
    assert_eq!(get(addr, &path, Some(READ), None).await.status, 200);
}

/// A least-privilege reader: a PostgreSQL role with USAGE on the schema and
/// SELECT on its tables, and DateStyle `SQL, DMY` (days print as
/// `10/11/2026` by default). Ingest's totals API, `tally query` and `tally
/// verify` all work through it, and serve the tables' days and sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "each reader (API, query, verify) through the same role, in order"
)]
async fn a_select_only_role_with_sql_dates_reads_everything() {
    let mut world = World::new("reader", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(29, 3_000);
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, &traffic.messages).await;
    world
        .wait_committed(&store, traffic.messages.len() as u64, PATIENCE)
        .await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());

    let role = format!("reader_{}", std::process::id());
    let (admin, connection) = tokio_postgres::connect(&world.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role};
             CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
             ALTER ROLE {role} SET DateStyle = 'SQL, DMY';"
        ))
        .await
        .unwrap();
    let (scheme, rest) = world.database_url.split_once("://").unwrap();
    let (_, host_and_db) = rest.split_once('@').unwrap();
    let reader_url = format!("{scheme}://{role}@{host_and_db}");
    // The role really cannot write, and really prints days the SQL way.
    let (reader, connection) = tokio_postgres::connect(&reader_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    assert!(reader
        .batch_execute("CREATE TABLE IF NOT EXISTS tally_migrations (version INTEGER)")
        .await
        .is_err());
    let shown: String = reader
        .query_one("SELECT DATE '2026-11-10'::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "10/11/2026");

    // The totals API, through the reader.
    let (_, addr) = world
        .start_ingest(
            "ingest",
            WRITE,
            &[
                ("ingest.read_tokens", READ),
                ("ingest.database_url", &reader_url),
            ],
        )
        .await;
    let merchant = traffic.expected.keys().next().unwrap().merchant_id.clone();
    let [utc, local] = table_rows(&store, &merchant).await;
    check_merchant(&addr, &merchant, "utc", &utc).await;
    check_merchant(&addr, &merchant, "local", &local).await;
    let day = utc.keys().next().unwrap().day;
    let top: TopMerchants = ok(
        &get(&addr, &format!("/v1/merchants?day={day}"), Some(READ), None).await,
        "top merchants",
    );
    assert!(!top.merchants.is_empty());

    // `tally query`: every day of the merchant, as YYYY-MM-DD.
    let out = files::tally(&[
        "query",
        "--merchant",
        &merchant,
        "--database-url",
        &reader_url,
    ]);
    let printed = files::stdout(&out);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for key in utc.keys() {
        assert!(
            printed.contains(&key.day.to_string()),
            "{} in {printed}",
            key.day
        );
    }

    // `tally verify`: the files hold the events the stream counted (files
    // have no message keys, so events refused only for theirs are left out),
    // so nothing differs.
    let counted: Vec<_> = traffic
        .messages
        .iter()
        .filter(|m| matches!(m.truth, ingest::load::generate::Truth::Counted { .. }))
        .cloned()
        .collect();
    let source = files::write_files(&world.dir.join("verify"), "ndjson", &counted);
    let out = files::tally(&[
        "verify",
        "--source",
        &source,
        "--from",
        "2026-10-01",
        "--to",
        "2026-11-21",
        "--database-url",
        &reader_url,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        files::stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await
        .unwrap();
}
