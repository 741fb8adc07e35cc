//! Files for backfill and import tests: generated events written as
//! Parquet, CSV and NDJSON, locally or into the test's S3 server, and the
//! `tally` commands and table reads the tests share.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use ingest::load::generate::{Generated, Generator, GeneratorConfig};

use crate::common::{self, World};

pub const FIELDS: [&str; 7] = [
    "event_id",
    "order_id",
    "merchant_id",
    "kind",
    "amount",
    "currency",
    "occurred_at",
];

pub fn tally(args: &[&str]) -> Output {
    tally_with(args, &[])
}

pub fn tally_with(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .expect("tally runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Generated events without a key (files have none), with every kind of trouble.
pub fn events(seed: u64, count: u64) -> Vec<Generated> {
    let config = GeneratorConfig {
        seed,
        events: count,
        merchants: 400,
        refund_share: 0.1,
        duplicate_share: 0.03,
        invalid_share: 0.01,
        late_share: 0.4,
        keyless: true,
        ..GeneratorConfig::default()
    };
    Generator::new(config).collect()
}

/// Each message's fields as column text: a string's contents, a number's
/// text; `None` when absent (a malformed message keeps what it has).
pub fn columns(payload: &[u8]) -> [Option<String>; 7] {
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(payload).unwrap_or_default();
    FIELDS.map(|field| match value.get(field)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    })
}

pub fn write_parquet(path: &Path, messages: &[Generated]) {
    let schema = Arc::new(Schema::new(
        FIELDS.map(|f| Field::new(f, DataType::Utf8, true)).to_vec(),
    ));
    let rows: Vec<[Option<String>; 7]> = messages.iter().map(|m| columns(&m.payload)).collect();
    let arrays: Vec<ArrayRef> = (0..FIELDS.len())
        .map(|c| Arc::new(rows.iter().map(|r| r[c].clone()).collect::<StringArray>()) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

pub fn write_csv(path: &Path, messages: &[Generated]) {
    let mut text = FIELDS.join(",") + ",channel\n";
    for m in messages {
        let row: Vec<String> = columns(&m.payload)
            .into_iter()
            .map(|v| {
                v.map(|v| format!("\"{}\"", v.replace('"', "\"\"")))
                    .unwrap_or_default()
            })
            .collect();
        text += &(row.join(",") + ",web\n");
    }
    std::fs::write(path, text).unwrap();
}

pub fn write_ndjson(path: &Path, messages: &[Generated]) {
    let lines: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    std::fs::write(path, lines.join(&b'\n')).unwrap();
}

/// Writes `messages` as two files of `format` under `dir`; returns the pattern.
pub fn write_files(dir: &Path, format: &str, messages: &[Generated]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let half = messages.len() / 2;
    for (n, part) in [&messages[..half], &messages[half..]]
        .into_iter()
        .enumerate()
    {
        write_format(&dir.join(format!("part-{n}.{format}")), format, part);
    }
    format!("{}/*.{format}", dir.display())
}

pub async fn wait_for_job(
    store: &store::Store,
    id: i64,
    done: impl Fn(&store::jobs::Job) -> bool,
) -> store::jobs::Job {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let job = store.job(id).await.unwrap().expect("the job exists");
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not get there in 300 s: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every column of every `merchant_sales` row as text, `updated_at` included.
pub async fn table_bytes(world: &World) -> String {
    let query = "SELECT merchant_id, currency, day, sales_amount, sales_count, refund_amount, refund_count, net_amount, updated_at
                 FROM merchant_sales ORDER BY merchant_id, currency, day";
    if let Some(path) = world.database_url.strip_prefix("sqlite://") {
        let out = Command::new("sqlite3")
            .arg(path)
            .arg(query)
            .output()
            .expect("sqlite3 runs");
        assert!(out.status.success());
        return stdout(&out);
    }
    let (client, connection) = tokio_postgres::connect(&world.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(&format!("SELECT t::text FROM ({query}) t"), &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, String>(0) + "\n").collect()
}

pub async fn execute(world: &World, sql: &str) {
    if let Some(path) = world.database_url.strip_prefix("sqlite://") {
        assert!(Command::new("sqlite3")
            .arg(path)
            .arg(sql)
            .status()
            .unwrap()
            .success());
        return;
    }
    let (client, connection) = tokio_postgres::connect(&world.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
}

/// The usual AWS variables, pointed at the test's S3 server.
pub fn s3_env() -> Vec<(String, String)> {
    let endpoint = common::required("TALLY_TEST_S3_ENDPOINT");
    [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "tally-test"),
        ("AWS_SECRET_ACCESS_KEY", "tally-test-secret"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

/// Creates `bucket` on the test's S3 server; returns a client for it.
pub async fn bucket(bucket: &str) -> object_store::aws::AmazonS3 {
    let endpoint = common::required("TALLY_TEST_S3_ENDPOINT");
    let (status, body) = common::http(
        endpoint.trim_start_matches("http://"),
        "PUT",
        &format!("/{bucket}"),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(
        status,
        200,
        "creating bucket {bucket}: {}",
        String::from_utf8_lossy(&body)
    );
    let mut builder = object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
    for (key, value) in &s3_env() {
        builder = builder.with_config(key.to_ascii_lowercase().parse().unwrap(), value);
    }
    builder.build().unwrap()
}

/// Creates `bucket` and copies every file under `dir` into it, keyed by its path relative to `dir`.
pub async fn upload(bucket_name: &str, dir: &Path) {
    use object_store::ObjectStoreExt;
    let s3 = bucket(bucket_name).await;
    for folder in std::fs::read_dir(dir).unwrap() {
        let folder = folder.unwrap().path();
        for file in std::fs::read_dir(&folder).unwrap() {
            let file = file.unwrap().path();
            let key = file.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
            s3.put(&key.as_str().into(), std::fs::read(&file).unwrap().into())
                .await
                .unwrap();
        }
    }
}

/// Writes `messages` to `path` as `format` (parquet, csv or ndjson).
pub fn write_format(path: &Path, format: &str, messages: &[Generated]) {
    match format {
        "parquet" => write_parquet(path, messages),
        "csv" => write_csv(path, messages),
        _ => write_ndjson(path, messages),
    }
}
