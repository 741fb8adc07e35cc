//! Bad configuration fails before connecting, with a message naming the
//! field. The brokers and database given here do not exist: a tally that
//! tried to connect would retry instead of exiting with status 2.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn tally(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("TALLY_CONFIG")
        .output()
        .expect("tally runs");
    (output, started.elapsed())
}

fn assert_rejected(args: &[&str], env: &[(&str, &str)], must_mention: &[&str]) {
    let (output, elapsed) = tally(args, env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "exit status 2 for {args:?} {env:?}; stderr: {stderr}"
    );
    for needle in must_mention {
        assert!(stderr.contains(needle), "stderr names {needle:?}: {stderr}");
    }
    assert!(
        elapsed < Duration::from_secs(5),
        "failed fast, without connecting ({elapsed:?})"
    );
}

const NOWHERE: [&str; 4] = [
    "--brokers",
    "127.0.0.1:1",
    "--database-url",
    "postgres://nobody@127.0.0.1:1/none",
];

#[test]
fn flag_values_are_checked() {
    let mut args = vec!["worker"];
    args.extend(NOWHERE);
    args.extend(["--set", "worker.batch_max_events=0"]);
    assert_rejected(
        &args,
        &[],
        &["worker.batch_max_events", "\"0\"", "between 1 and"],
    );
    let mut args = vec!["aggregator"];
    args.extend(NOWHERE);
    args.extend(["--set", "aggregator.flush_interval_ms=1"]);
    assert_rejected(&args, &[], &["aggregator.flush_interval_ms", "\"1\""]);
}

#[test]
fn environment_values_are_checked() {
    let mut args = vec!["worker"];
    args.extend(NOWHERE);
    assert_rejected(
        &args,
        &[("TALLY_WORKER_DEDUPE_WINDOW_SECS", "a while")],
        &[
            "TALLY_WORKER_DEDUPE_WINDOW_SECS",
            "worker.dedupe_window_secs",
            "integer",
        ],
    );
    assert_rejected(
        &["worker", "--brokers", "localhost"],
        &[],
        &["worker.brokers", "host:port"],
    );
    assert_rejected(
        &[
            "aggregator",
            "--database-url",
            "mysql://db/x",
            "--brokers",
            "127.0.0.1:1",
        ],
        &[],
        &["aggregator.database_url"],
    );
}

#[test]
fn file_fields_are_checked() {
    let dir = std::env::temp_dir().join(format!("tally-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tally.toml");
    std::fs::write(&file, "[worker]\nbatch_max_event = 5\n").unwrap();
    let path = file.to_str().unwrap();
    assert_rejected(
        &["worker", "--config", path],
        &[],
        &["batch_max_event", path],
    );
    std::fs::write(&file, "[worker]\norders_topic = \"has spaces\"\n").unwrap();
    assert_rejected(
        &["worker", "--config", path],
        &[],
        &["worker.orders_topic", "has spaces"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
