//! What an operator reads and checks: services that log JSON (every line
//! parses) and stay quiet while they count a stream and stop, a start-up
//! line that names the role, version, brokers and database but no secret,
//! `tally_build_info` and `process_*` on `/metrics`; `tally config check`
//! and `tally config show` against real secrets; and the book's generated
//! reference pages as this build writes them.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{assert_totals_equal, produce, traffic, Backend, World};

const PATIENCE: Duration = Duration::from_secs(120);

/// Every line of a service's log, parsed as one JSON object.
fn json_lines(dir: &Path, service: &str) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{service}.")) || !name.ends_with(".log") {
            continue;
        }
        for (number, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|error| {
                panic!("{name}:{}: not JSON ({error}): {line}", number + 1)
            });
            assert!(
                value.is_object(),
                "{name}:{}: not an object: {line}",
                number + 1
            );
            lines.push(value);
        }
    }
    assert!(
        !lines.is_empty(),
        "{service} logged nothing in {}",
        dir.display()
    );
    lines
}

/// A worker and an aggregator logging JSON count a stream exactly, log
/// nothing at WARN or above (partition EOFs included) from start to a
/// clean stop, name what they run as at start, and export the build and
/// process metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_services_log_json_and_stay_quiet() {
    let mut world = World::new("quiet", Backend::Postgres).await;
    world.env.push(("TALLY_LOG_FORMAT".into(), "json".into()));
    let store = world.store().await;
    let traffic = traffic(61, 20_000);
    let aggregator = world.start_aggregator("aggregator");
    let worker = world.start_worker("worker", &[]);
    produce(&world.brokers, &world.orders, &traffic.messages).await;
    world
        .wait_committed(&store, traffic.messages.len() as u64, PATIENCE)
        .await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
    // Idle for a while at the log end, where each of the worker's fetches
    // meets the partitions' EOF; the aggregator's job polls are the clock.
    world.wait_for_passes("aggregator", "runner", 5.0).await;

    for service in ["worker", "aggregator"] {
        let build = world.metric(service, "tally_build_info", &[]).await;
        assert_eq!(build, Some(1.0), "{service} exports tally_build_info");
        let cpu = world
            .metric(service, "process_cpu_seconds_total", &[])
            .await;
        // Whole seconds (the collector divides clock ticks): present, maybe still 0.
        assert!(cpu.is_some(), "{service} exports process_cpu_seconds_total");
        let memory = world
            .metric(service, "process_resident_memory_bytes", &[])
            .await;
        assert!(
            memory.is_some_and(|bytes| bytes > 1e6),
            "{service}: resident memory {memory:?}"
        );
    }
    assert_eq!(world.terminate(worker), 0);
    assert_eq!(world.terminate(aggregator), 0);

    // The user information of the database URL (`user[:password]@`): never logged.
    let (userinfo, place) = world
        .database_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .expect("the test database URL names a user");
    let userinfo = format!("{userinfo}@");
    for service in ["worker", "aggregator"] {
        let lines = json_lines(&world.dir, service);
        let loud: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|line| matches!(line["level"].as_str(), Some("WARN" | "ERROR")))
            .collect();
        assert!(
            loud.is_empty(),
            "{service} logged at WARN or above: {loud:#?}"
        );
        let start = lines
            .iter()
            .find(|line| line["message"] == "Starting.")
            .unwrap_or_else(|| panic!("{service} logs a start-up line"));
        assert_eq!(start["role"], service);
        assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(start["brokers"], world.brokers.as_str());
        assert_eq!(start["database"], format!("postgres {place}"));
        for line in &lines {
            assert!(
                !line.to_string().contains(&userinfo),
                "{service} logged the database's user information: {line}"
            );
        }
    }
}

fn tally(args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env_remove("TALLY_CONFIG")
        .env_remove("TALLY_DATABASE_URL")
        .env_remove("TALLY_BROKERS")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("tally runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `config check`: a good file passes for every role (0); a bad one exits 2
/// naming the field; `--connect` reaches the real broker and database, and
/// says which does not answer (1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_names_bad_fields_and_reaches_what_is_configured() {
    let world = World::new("config-check", Backend::Postgres).await;
    // The test opens the database first, which migrates it.
    let _store = world.store().await;
    let good = world.dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[worker]\nbrokers = \"{b}\"\ndatabase_url = \"{d}\"\nbatch_max_events = 5000\n\n\
             [aggregator]\nbrokers = \"{b}\"\ndatabase_url = \"{d}\"\n\n\
             [ingest]\nbrokers = \"{b}\"\ntokens = \"a-token\"\n",
            b = world.brokers,
            d = world.database_url
        ),
    )
    .unwrap();
    let path = good.to_str().unwrap();
    let output = tally(&["config", "check", "--config", path], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    for role in ["worker: ok", "aggregator: ok", "ingest: ok"] {
        assert!(text(&output).contains(role), "{}", text(&output));
    }
    let output = tally(&["config", "check", "--config", path, "--connect"], &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(said.contains("answered: 1 broker(s)"), "{said}");
    assert!(said.contains("its schema is current"), "{said}");

    let bad = world.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[worker]\nbatch_max_events = 0\n[ingest]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let output = tally(&["config", "check", "--config", bad.to_str().unwrap()], &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(
        said.contains("worker.batch_max_events") && said.contains("\"0\""),
        "{said}"
    );
    assert!(
        said.contains("ingest.listen") && said.contains("nowhere"),
        "{said}"
    );
    assert!(said.contains("aggregator: ok"), "{said}");

    let unknown = world.dir.join("unknown.toml");
    std::fs::write(&unknown, "[worker]\nbatch_size = 10\n").unwrap();
    let output = tally(
        &["config", "check", "--config", unknown.to_str().unwrap()],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("batch_size"), "{}", text(&output));

    // A broker that does not answer: exit 1, naming it.
    let away = common::free_addr();
    let output = tally(
        &[
            "config",
            "check",
            "--config",
            path,
            "--connect",
            "--brokers",
            &away,
        ],
        &[],
    );
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("brokers {away}")) && said.contains("no answer"),
        "{said}"
    );
}

/// `config show` prints the effective configuration with every secret
/// replaced: tokens, URL user information and password parameters, Kafka
/// passwords, and whatever a `_FILE` variable held.
#[test]
fn config_show_never_prints_a_secret() {
    let dir = std::env::temp_dir().join(format!("tally-config-show-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let from_file = dir.join("ca");
    std::fs::write(&from_file, "ssl-location-from-a-secret-file\n").unwrap();
    let secrets = [
        "write-token-3f9a",
        "read-token-77c1",
        "db-password-x81",
        "sasl-password-q02",
        "oauth-secret-k5",
        "ssl-location-from-a-secret-file",
        "ingest-db-pw-9",
        "oauth-config-s3",
    ];
    let env = [
        (
            "TALLY_INGEST_TOKENS",
            format!("{},second-token-is-{}", secrets[0], secrets[0]),
        ),
        ("TALLY_INGEST_READ_TOKENS", secrets[1].to_owned()),
        (
            "TALLY_DATABASE_URL",
            // A password may hold `/`: the user information ends at the `@`.
            format!("postgres://tally:ab/{}@db.internal:5433/totals", secrets[2]),
        ),
        ("TALLY_KAFKA__SASL_PASSWORD", secrets[3].to_owned()),
        (
            "TALLY_WORKER_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET",
            secrets[4].to_owned(),
        ),
        (
            "TALLY_AGGREGATOR_KAFKA__SSL_CA_LOCATION_FILE",
            from_file.display().to_string(),
        ),
        (
            "TALLY_INGEST_DATABASE_URL",
            format!(
                // The parameter's name percent-encoded, as the server decodes it.
                "postgresql://db.internal/totals?user=tally&pass%77ord={}",
                secrets[6]
            ),
        ),
        (
            "TALLY_INGEST_KAFKA__SASL_OAUTHBEARER_CONFIG",
            format!("clientId=tally clientSecret={}", secrets[7]),
        ),
    ];
    for args in [
        &["config", "show"][..],
        &["config", "show", "--json"],
        &["config", "show", "--role", "ingest"],
        &["config", "show", "--role", "aggregator", "--json"],
    ] {
        let output = tally(args, &env);
        let said = text(&output);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {said}");
        for secret in secrets {
            assert!(!said.contains(secret), "{args:?} printed {secret}:\n{said}");
        }
        assert!(said.contains("<redacted>"), "{args:?}: {said}");
    }
    let output = tally(&["config", "show", "--json"], &env);
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        shown["worker"]["database_url"],
        "postgres://<redacted>@db.internal:5433/totals"
    );
    assert_eq!(
        shown["worker"]["batch_max_events"], 20_000,
        "defaults are shown"
    );
    assert_eq!(shown["ingest"]["tokens"], "<redacted>");
    assert_eq!(shown["worker"]["kafka"]["sasl.password"], "<redacted>");
    assert_eq!(
        shown["aggregator"]["kafka"]["ssl.ca.location"],
        "<redacted>"
    );
    assert_eq!(
        shown["ingest"]["database_url"],
        "postgresql://db.internal/totals?user=tally&pass%77ord=<redacted>"
    );
    let output = tally(&["config", "show", "--role", "worker"], &env);
    let toml = String::from_utf8_lossy(&output.stdout);
    assert!(toml.starts_with("[worker]"), "{toml}");
    assert!(!toml.contains("[ingest]"), "{toml}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The book's generated pages (CLI, configuration, metrics, alerts) are
/// what this build writes: a flag, setting, metric or alert added without
/// regenerating them fails here.
#[test]
fn the_books_reference_pages_are_current() {
    let repo = common::repo();
    let out = std::env::temp_dir().join(format!("tally-reference-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["reference", "--out", out.to_str().unwrap()])
        .current_dir(&repo)
        .output()
        .expect("tally runs");
    assert!(output.status.success(), "{}", text(&output));
    let mut stale = Vec::new();
    for page in ["cli.md", "configuration.md", "metrics.md", "alerts.md"] {
        let written = std::fs::read_to_string(out.join(page)).unwrap();
        let checked_in = repo.join("docs/book/src/reference").join(page);
        if std::fs::read_to_string(&checked_in).ok().as_deref() != Some(written.as_str()) {
            stale.push(page);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        stale.is_empty(),
        "docs/book/src/reference/{{{}}} differ from what this build writes: regenerate them \
         with `cargo run -p tally -- reference` from the repository root, and commit them",
        stale.join(",")
    );
}

/// A service started without a database names the default SQLite file in a
/// warning at once (before it reaches any broker), with its start-up line.
#[test]
fn a_service_without_a_database_warns_of_the_default_sqlite_file() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = std::env::temp_dir().join(format!("tally-default-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    /// Kills the worker however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["worker", "--brokers", &common::free_addr()])
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--log",
                "info",
                "--log-format",
                "json",
            ])
            .env_remove("TALLY_CONFIG")
            .env_remove("TALLY_DATABASE_URL")
            .env_remove("RUST_LOG")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tally starts"),
    );
    // Lines are read on a thread, so a worker that never warns fails the
    // test after a minute instead of holding it.
    let (lines, received) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let warning = loop {
        let Ok(line) = received.recv_timeout(std::time::Duration::from_secs(60)) else {
            panic!(
                "no warning within a minute; the worker logged:\n{}",
                seen.join("\n")
            );
        };
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        seen.push(line);
        if value["level"] == "WARN" {
            break value;
        }
    };
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    let message = warning["message"].as_str().unwrap();
    assert!(
        message.contains("default SQLite file tally.sqlite")
            && message.contains("TALLY_DATABASE_URL"),
        "{warning}"
    );
    assert_eq!(warning["database"], "sqlite file tally.sqlite");
    assert!(
        seen.iter().any(|line| line.contains("\"Starting.\"")),
        "{seen:?}"
    );
}

/// `--metrics-addr` is refused where it does not apply: ingest serves
/// `/metrics` on its API address.
#[test]
fn ingest_refuses_a_metrics_address() {
    let output = tally(
        &[
            "ingest",
            "--metrics-addr",
            "127.0.0.1:9999",
            "--brokers",
            "127.0.0.1:1",
        ],
        &[("TALLY_INGEST_TOKENS", "a-token".to_owned())],
    );
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(
        said.contains("--metrics-addr") && said.contains("ingest.listen"),
        "{said}"
    );
}
