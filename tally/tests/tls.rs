//! tally over TLS against real servers on loopback (`scripts/test` starts
//! them with a CA it generates): a PostgreSQL that takes only TLS and a
//! password, and the Apache Kafka broker's TLS listeners (SASL_SSL with
//! SCRAM users, SSL, and SSL that requires a client certificate).
//!
//! - PostgreSQL: `verify-full` connects; a wrong CA, a wrong host name and
//!   `sslmode=disable` are refused with errors that say why, once (no
//!   retrying), and never show the password.
//! - The whole pipeline: ingest over HTTPS and `tally generate` straight to
//!   Kafka, workers and aggregators over
//!   Kafka TLS with SASL (SCRAM-SHA-512; ingest SCRAM-SHA-256) and
//!   PostgreSQL TLS, with every secret from the environment or
//!   a file; the totals are exact, the scheduler's lock (a connection of its
//!   own) is taken over TLS too, and neither password shows in any log,
//!   `/metrics` page, error or `--help`.
//! - A Kafka CA that does not sign the broker's certificate, or a SASL
//!   password the broker refuses, stops each role at startup with
//!   librdkafka's reason; a misspelt password property is named, its value
//!   not; a refused database password is not repeated; `--help` shows no
//!   secret held in the environment. One test each.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    assert_totals_equal, expected_totals, fresh_tls_postgres, https, required, unique, World,
};
use ingest::load::generate::{Generated, Generator, GeneratorConfig, Truth};
use ingest::orders::Outcome;
use store::Store;

const TOKEN: &str = "tls-token";

async fn connect_error(url: &str) -> String {
    let error = Store::connect(url)
        .await
        .err()
        .unwrap_or_else(|| panic!("connected: {url}"));
    assert!(
        !error.is_retryable(),
        "a refused connection is not retried: {error}"
    );
    let text = error.to_string();
    assert!(
        !text.contains(&required("TALLY_TEST_PG_TLS_PASSWORD")),
        "the password shows: {text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_checks_the_ca_and_the_host_name() {
    let url = fresh_tls_postgres(&unique("pg-tls")).await;
    assert!(url.contains("sslmode=verify-full"));
    let store = Store::connect(&url)
        .await
        .expect("verify-full with the right CA connects");
    assert!(store.totals(None).await.unwrap().is_empty());

    let wrong_ca = url.replace(
        &required("TALLY_TEST_TLS_CA"),
        &required("TALLY_TEST_TLS_WRONG_CA"),
    );
    let error = connect_error(&wrong_ca).await;
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "{error}"
    );

    // The certificate names 127.0.0.1 and localhost; connect to 127.0.0.1
    // under another name (hostaddr), as a misrouted DNS entry would.
    let wrong_host = url.replace("@127.0.0.1:", "@db.elsewhere.test:") + "&hostaddr=127.0.0.1";
    let error = connect_error(&wrong_host).await;
    assert!(
        error.contains("invalid peer certificate") && error.contains("db.elsewhere.test"),
        "{error}"
    );
    // verify-ca checks the chain but not the name, as libpq does.
    Store::connect(&wrong_host.replace("verify-full", "verify-ca"))
        .await
        .expect("verify-ca ignores the name");

    // The server takes only TLS: without it, PostgreSQL's own refusal.
    let error = connect_error(&url.replace("verify-full", "disable")).await;
    assert!(error.contains("no encryption"), "{error}");
    let error = connect_error(&url.replace("verify-full", "verify-everything")).await;
    assert!(error.contains("sslmode=\"verify-everything\""), "{error}");
}

/// Runs `tally <args>` with `env` until it exits (at most 60 s): exit code and stderr.
fn run_to_exit(args: &[&str], env: &[(String, String)]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("tally {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Posts `messages` to ingest over HTTPS in NDJSON batches of 500: the
/// events accepted.
async fn post_over_https(addr: &str, messages: &[Generated]) -> usize {
    let mut accepted = 0;
    for chunk in messages.chunks(500) {
        let mut body = Vec::new();
        for message in chunk {
            body.extend_from_slice(&message.payload);
            body.push(b'\n');
        }
        let addr = addr.to_owned();
        let (status, answer) = tokio::task::spawn_blocking(move || {
            let auth = format!("Bearer {TOKEN}");
            https(
                &addr,
                "POST",
                "/v1/orders",
                &[
                    ("Content-Type", "application/x-ndjson"),
                    ("Authorization", &auth),
                ],
                &body,
            )
        })
        .await
        .unwrap();
        let outcome: Outcome = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{status} {e}: {}", String::from_utf8_lossy(&answer)));
        assert!(status == 200 || status == 207, "{status}: {outcome:?}");
        accepted += outcome.accepted;
    }
    accepted
}

/// Runs `tally generate` straight to the world's TLS listener with ingest's
/// properties: the events it published, as the generator makes them.
fn generate_to_kafka(world: &World, events: u64, seed: u64) -> Vec<Generated> {
    let generated = Command::new(env!("CARGO_BIN_EXE_tally"))
        .envs(world.env.iter().cloned())
        .args([
            "generate",
            "--brokers",
            &world.brokers,
            "--topic",
            &world.orders,
            "--merchants",
            "120",
        ])
        .args(["--events", &events.to_string(), "--seed", &seed.to_string()])
        .arg("--expected")
        .arg(world.dir.join("expected.csv"))
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    Generator::new(GeneratorConfig {
        seed,
        events,
        merchants: 120,
        ..GeneratorConfig::default()
    })
    .collect()
}

/// Ingest's `/metrics` over HTTPS, the worker's and the aggregator's, and
/// every log of the world.
async fn pages_and_logs(world: &World, ingest: &str) -> Vec<String> {
    let addr = ingest.to_owned();
    let (status, ingest_metrics) =
        tokio::task::spawn_blocking(move || https(&addr, "GET", "/metrics", &[], b""))
            .await
            .unwrap();
    assert_eq!(status, 200);
    let mut pages = vec![String::from_utf8(ingest_metrics).unwrap()];
    for service in ["worker", "aggregator"] {
        let (status, page) = common::http(&world.metrics[service], "GET", "/metrics", &[], b"")
            .await
            .unwrap();
        assert_eq!(status, 200);
        pages.push(String::from_utf8(page).unwrap());
    }
    for entry in std::fs::read_dir(&world.dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            pages.push(std::fs::read_to_string(entry.path()).unwrap());
        }
    }
    pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_tls_with_secrets_kept() {
    let mut world = World::secure("tls-pipeline").await;
    let store = world.store().await;
    let password = required("TALLY_TEST_PG_TLS_PASSWORD");
    let sasl_password = required("TALLY_TEST_KAFKA_SASL_PASSWORD");
    world.start_aggregator("aggregator");
    world.start_worker("worker", &[]);
    let (cert, key) = (
        required("TALLY_TEST_TLS_CERT"),
        required("TALLY_TEST_TLS_KEY"),
    );
    let (_, addr) = world
        .start_ingest(
            "ingest",
            TOKEN,
            &[("ingest.tls_cert", &cert), ("ingest.tls_key", &key)],
        )
        .await;

    let config = GeneratorConfig {
        seed: 7,
        events: 6_000,
        merchants: 120,
        invalid_share: 0.01,
        duplicate_share: 0.03,
        keyless: true,
        ..GeneratorConfig::default()
    };
    let messages: Vec<Generated> = Generator::new(config).collect();
    let invalid = messages
        .iter()
        .filter(|m| matches!(m.truth, Truth::Invalid(_)))
        .count();
    let accepted = post_over_https(&addr, &messages).await;
    assert_eq!(accepted, messages.len() - invalid);
    world
        .wait_committed(&store, accepted as u64, Duration::from_secs(300))
        .await;
    assert_totals_equal(
        &expected_totals(&messages),
        &store.totals(None).await.unwrap(),
    );

    // `tally generate` publishes straight to the TLS listener with ingest's
    // properties (SASL as the SCRAM-SHA-256 user); the worker counts those too.
    let (events, seed) = (3_000_u64, 11);
    let direct = generate_to_kafka(&world, events, seed);
    let messages: Vec<Generated> = messages.into_iter().chain(direct).collect();
    world
        .wait_committed(&store, accepted as u64 + events, Duration::from_secs(300))
        .await;
    assert_totals_equal(
        &expected_totals(&messages),
        &store.totals(None).await.unwrap(),
    );
    // The scheduler's lock is a connection of its own, over the same TLS.
    world
        .wait_for(
            "the aggregator leads the scheduler",
            Duration::from_secs(60),
            || async {
                world
                    .metric("aggregator", "tally_scheduler_leader", &[])
                    .await
                    == Some(1.0)
            },
        )
        .await;

    // No password in the logs or on /metrics.
    let pages = pages_and_logs(&world, &addr).await;
    assert!(pages.len() >= 6, "three /metrics pages and three logs");
    for page in &pages {
        assert!(
            !page.contains(&password),
            "a log or /metrics page shows the database password"
        );
        assert!(
            !page.contains(&sasl_password),
            "a log or /metrics page shows the SASL password"
        );
    }
}

/// The world's environment with `drop` removed and `add` set.
fn environment_with(world: &World, drop: &str, add: (&str, String)) -> Vec<(String, String)> {
    let mut env = world.env.clone();
    env.retain(|(var, _)| var != drop);
    env.push((add.0.to_owned(), add.1));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_ca_that_did_not_sign_the_broker_stops_each_role_with_the_reason() {
    let world = World::secure("tls-wrong-ca").await;
    let wrong = environment_with(
        &world,
        "TALLY_KAFKA__SSL_CA_LOCATION",
        (
            "TALLY_KAFKA__SSL_CA_LOCATION",
            required("TALLY_TEST_TLS_WRONG_CA"),
        ),
    );
    let listen = common::free_addr();
    for role in [
        vec![
            "worker",
            "--brokers",
            &world.brokers,
            "--metrics-addr",
            "127.0.0.1:0",
            "--set",
            "worker.instance_id=wrong-ca",
        ],
        vec![
            "aggregator",
            "--brokers",
            &world.brokers,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        vec![
            "ingest",
            "--brokers",
            &world.brokers,
            "--set",
            "ingest.tokens=t",
            "--set",
            &format!("ingest.listen={listen}"),
        ],
    ] {
        let (code, stderr) = run_to_exit(&role, &wrong);
        assert_eq!(code, 1, "tally {role:?}: {stderr}");
        assert!(
            stderr.contains("refused the connection")
                && stderr.contains("certificate verify failed"),
            "tally {role:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sasl_password_the_broker_refuses_stops_the_worker_without_showing_it() {
    let world = World::secure("tls-wrong-sasl").await;
    let wrong = environment_with(
        &world,
        "TALLY_KAFKA__SASL_PASSWORD_FILE",
        (
            "TALLY_KAFKA__SASL_PASSWORD",
            "not-the-sasl-password-0815".into(),
        ),
    );
    let (code, stderr) = run_to_exit(
        &[
            "worker",
            "--brokers",
            &world.brokers,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &wrong,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("SASL authentication error")
            && !stderr.contains("not-the-sasl-password-0815"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_password_property_is_named_but_its_value_is_not() {
    // librdkafka refuses the property; the error names it but not the value
    // (rdkafka's own does).
    let world = World::secure("tls-misspelt").await;
    let sasl_password = required("TALLY_TEST_KAFKA_SASL_PASSWORD");
    let mut misspelt = world.env.clone();
    misspelt.push((
        "TALLY_WORKER_KAFKA__SASL_PASWORD".into(),
        sasl_password.clone(),
    ));
    let (code, stderr) = run_to_exit(
        &[
            "worker",
            "--brokers",
            &world.brokers,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &misspelt,
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("sasl.pasword") && !stderr.contains(&sasl_password),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_password_the_server_refuses_is_not_repeated() {
    let world = World::secure("tls-wrong-pg").await;
    let password = required("TALLY_TEST_PG_TLS_PASSWORD");
    let url_file = world.dir.join("wrong-password-url");
    std::fs::write(
        &url_file,
        world
            .database_url
            .replace(&password, "not-the-password-4711"),
    )
    .unwrap();
    let wrong = environment_with(
        &world,
        "TALLY_DATABASE_URL_FILE",
        ("TALLY_DATABASE_URL_FILE", url_file.display().to_string()),
    );
    let (code, stderr) = run_to_exit(
        &[
            "aggregator",
            "--brokers",
            &world.brokers,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &wrong,
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("password authentication failed")
            && !stderr.contains("not-the-password-4711"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_shows_no_secret_even_when_the_environment_holds_it() {
    let world = World::secure("tls-help").await;
    let password = required("TALLY_TEST_PG_TLS_PASSWORD");
    let sasl_password = required("TALLY_TEST_KAFKA_SASL_PASSWORD");
    let leaky = [
        ("TALLY_DATABASE_URL".to_owned(), world.database_url.clone()),
        (
            "TALLY_KAFKA__SASL_PASSWORD".to_owned(),
            sasl_password.clone(),
        ),
    ];
    for help in [
        vec!["query", "--help"],
        vec!["worker", "--help"],
        vec!["jobs", "list", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(&help)
            .envs(leaky.iter().cloned())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && !text.contains(&password) && !text.contains(&sasl_password),
            "tally {help:?} shows a password:\n{text}"
        );
        // The variable is read there, and only its name is shown.
        assert!(
            help[0] != "query" || text.contains("[env: TALLY_DATABASE_URL]"),
            "{text}"
        );
    }
}
