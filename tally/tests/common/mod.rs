//! Test harness: real tally processes against the real broker and database
//! that `scripts/test` starts (`TALLY_TEST_BROKERS`, `TALLY_TEST_PG_URL`).
//! Every test gets its own topics, consumer groups and database.

#![allow(dead_code, unused_macros)]

/// Runs each async scenario `fn(Backend)` as one test on PostgreSQL and one
/// on SQLite (needs `Backend` in scope at the call site).
macro_rules! on_both_databases {
    ($($scenario:ident),*) => { testkit::on_both_databases!($($scenario),*); };
}

pub mod local;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ingest::load::generate::{Generated, Generator, GeneratorConfig, Truth};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::{Amount, Day, Kind, Sums, Totals, TotalsKey};
use store::Store;

pub const PARTITIONS: i32 = 4;

pub use testkit::{eventually, required, unique, Backend};

/// The workspace root. From `CARGO_MANIFEST_DIR` as cargo sets it when it
/// runs a test, not as `env!` baked it in: a build directory shared by
/// clones at other paths can reuse a test executable built elsewhere.
pub fn repo() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    PathBuf::from(manifest)
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// One test's isolated world: topics, groups, database, scratch directory.
pub struct World {
    pub brokers: String,
    pub database_url: String,
    pub orders: String,
    pub partials: String,
    pub dlq: String,
    pub worker_group: String,
    pub aggregator_group: String,
    pub dir: PathBuf,
    /// Each service's `/metrics` address, by name (the latest start wins).
    pub metrics: HashMap<String, String>,
    /// Environment variables every service started from now on gets.
    pub env: Vec<(String, String)>,
    children: Vec<Service>,
}

impl World {
    /// Creates topics and a fresh database for one test.
    pub async fn new(name: &str, backend: Backend) -> World {
        World::with_topics(name, backend, true).await
    }

    /// Like [`World::new`], but leaves the partials topic for the services to
    /// create when `partials` is false.
    pub async fn with_topics(name: &str, backend: Backend, partials: bool) -> World {
        let brokers = required("TALLY_TEST_BROKERS");
        let id = unique(name);
        let dir = std::env::temp_dir().join(format!("tally-it-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let database_url = match backend {
            Backend::Postgres => testkit::fresh_database(backend, &id).await,
            Backend::Sqlite => format!("sqlite://{}", dir.join("tally.sqlite").display()),
        };
        let world = World {
            brokers,
            database_url,
            orders: format!("orders-{id}"),
            partials: format!("partials-{id}"),
            dlq: format!("dlq-{id}"),
            worker_group: format!("workers-{id}"),
            aggregator_group: format!("aggregators-{id}"),
            dir,
            metrics: HashMap::new(),
            env: Vec::new(),
            children: Vec::new(),
        };
        if partials {
            create_topics(
                &world.brokers,
                &[&world.orders, &world.partials, &world.dlq],
            )
            .await;
        } else {
            create_topics(&world.brokers, &[&world.orders, &world.dlq]).await;
        }
        world
    }

    /// A world on the TLS-only servers: the broker's SASL_SSL listener, and
    /// the PostgreSQL that takes only TLS and a password. Services get every
    /// secret from the environment or files, never from flags: the Kafka
    /// security settings as `TALLY_KAFKA__*` (the SASL password from
    /// `TALLY_KAFKA__SASL_PASSWORD_FILE`), and the database URL (with
    /// `sslmode=verify-full` and the password) from `TALLY_DATABASE_URL_FILE`.
    pub async fn secure(name: &str) -> World {
        let id = unique(name);
        let dir = std::env::temp_dir().join(format!("tally-it-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let database_url = fresh_tls_postgres(&id).await;
        let url_file = dir.join("database-url");
        std::fs::write(&url_file, format!("{database_url}\n")).unwrap();
        let sasl_file = dir.join("sasl-password");
        std::fs::write(&sasl_file, required("TALLY_TEST_KAFKA_SASL_PASSWORD")).unwrap();
        let world = World {
            brokers: required("TALLY_TEST_TLS_BROKERS"),
            database_url,
            orders: format!("orders-{id}"),
            partials: format!("partials-{id}"),
            dlq: format!("dlq-{id}"),
            worker_group: format!("workers-{id}"),
            aggregator_group: format!("aggregators-{id}"),
            dir,
            metrics: HashMap::new(),
            env: vec![
                (
                    "TALLY_DATABASE_URL_FILE".into(),
                    url_file.display().to_string(),
                ),
                ("TALLY_KAFKA__SECURITY_PROTOCOL".into(), "SASL_SSL".into()),
                (
                    "TALLY_KAFKA__SSL_CA_LOCATION".into(),
                    required("TALLY_TEST_TLS_CA"),
                ),
                (
                    "TALLY_KAFKA__SSL_ENDPOINT_IDENTIFICATION_ALGORITHM".into(),
                    "https".into(),
                ),
                ("TALLY_KAFKA__SASL_MECHANISM".into(), "SCRAM-SHA-512".into()),
                ("TALLY_KAFKA__SASL_USERNAME".into(), "tally".into()),
                (
                    "TALLY_KAFKA__SASL_PASSWORD_FILE".into(),
                    sasl_file.display().to_string(),
                ),
                // Ingest logs in as the other user, with the other mechanism.
                (
                    "TALLY_INGEST_KAFKA__SASL_MECHANISM".into(),
                    "SCRAM-SHA-256".into(),
                ),
                (
                    "TALLY_INGEST_KAFKA__SASL_USERNAME".into(),
                    "tally256".into(),
                ),
            ],
            children: Vec::new(),
        };
        create_topics(
            &world.brokers,
            &[&world.orders, &world.partials, &world.dlq],
        )
        .await;
        world
    }

    /// The value of the series of `name` whose labels include every `labels`
    /// pair, summed, from service `service`'s `/metrics`; `None` when absent.
    pub async fn metric(&self, service: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (status, body) = http(&self.metrics[service], "GET", "/metrics", &[], b"")
            .await
            .ok()?;
        assert_eq!(status, 200, "{service} serves /metrics");
        let text = String::from_utf8(body).unwrap();
        let mut found = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = series.split_once('{').map_or((series, ""), |(m, l)| (m, l));
            if metric != name
                || !labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
            {
                continue;
            }
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
        found
    }

    /// `/readyz` of service `service`: status and body (status 0 while
    /// nothing listens yet).
    pub async fn readyz(&self, service: &str) -> (u16, String) {
        match http(&self.metrics[service], "GET", "/readyz", &[], b"").await {
            Ok((status, body)) => (status, String::from_utf8_lossy(&body).into_owned()),
            Err(error) => (0, error.to_string()),
        }
    }

    /// Polls `condition` every 200 ms; panics after `timeout` naming `what`.
    pub async fn wait_for<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut() -> F,
    ) {
        let what = format!("{what} (logs in {})", self.dir.display());
        eventually(&what, timeout, || {
            for service in &self.children {
                service.assert_alive();
            }
            condition()
        })
        .await;
    }

    /// Waits until `service`'s backfill loop `which` (`runner` or
    /// `scheduler`) has made `passes` more passes: the positive signal that
    /// it has looked again, where nothing is expected to change.
    pub async fn wait_for_passes(&self, service: &str, which: &str, passes: f64) {
        let count = || async {
            self.metric(service, "tally_backfill_polls_total", &[("loop", which)])
                .await
                .unwrap_or(0.0)
        };
        let start = count().await;
        let what = format!("{passes} more passes of {service}'s {which}");
        self.wait_for(&what, Duration::from_secs(60), || async {
            count().await >= start + passes
        })
        .await;
    }

    /// The database, opened by the test itself (never through a tally process).
    pub async fn store(&self) -> Store {
        Store::connect(&self.database_url)
            .await
            .expect("test database reachable")
    }

    /// Flags every service takes; picks and records `name`'s metrics address.
    fn base_args(&mut self, name: &str) -> Vec<String> {
        self.base_args_at(name, free_addr())
    }

    /// [`World::base_args`] with the metrics address given. The database
    /// URL goes on the command line unless the environment names its file.
    fn base_args_at(&mut self, name: &str, metrics: String) -> Vec<String> {
        self.metrics.insert(name.to_owned(), metrics.clone());
        let mut args = vec![
            "--brokers".into(),
            self.brokers.clone(),
            "--metrics-addr".into(),
            metrics,
        ];
        if !self
            .env
            .iter()
            .any(|(var, _)| var == "TALLY_DATABASE_URL_FILE")
        {
            args.extend(["--database-url".into(), self.database_url.clone()]);
        }
        args
    }

    /// Starts `tally worker` as its own process.
    pub fn start_worker(&mut self, name: &str, extra: &[(&str, &str)]) -> usize {
        let mut args = vec!["worker".to_string()];
        args.extend(self.base_args(name));
        let sets = [
            ("worker.orders_topic", self.orders.as_str()),
            ("worker.partials_topic", self.partials.as_str()),
            ("worker.dlq_topic", self.dlq.as_str()),
            ("worker.group_id", self.worker_group.as_str()),
            ("worker.instance_id", name),
            ("worker.batch_max_events", "2000"),
            ("worker.batch_max_ms", "100"),
            ("worker.session_timeout_ms", "30000"),
            ("worker.kafka", "max.poll.interval.ms=60000"),
        ];
        let debug = std::env::var("TALLY_TEST_KAFKA_DEBUG")
            .ok()
            .map(|d| format!("debug={d}"));
        let debug_set = debug.as_deref().map(|d| ("worker.kafka", d));
        for (key, value) in sets.iter().chain(extra).chain(debug_set.iter()) {
            args.push("--set".into());
            args.push(format!("{key}={value}"));
        }
        self.spawn(name, args)
    }

    /// Starts `tally aggregator` as its own process.
    pub fn start_aggregator(&mut self, name: &str) -> usize {
        self.start_aggregator_with(name, &[])
    }

    /// Starts `tally aggregator` with extra `--set` fields.
    pub fn start_aggregator_with(&mut self, name: &str, extra: &[(&str, &str)]) -> usize {
        let args = self.base_args(name);
        self.spawn_aggregator(name, args, extra)
    }

    /// Starts `tally aggregator` again under `name`, on the metrics address
    /// it had before, so that a Prometheus scraping it finds it again.
    pub fn restart_aggregator(&mut self, name: &str) -> usize {
        let args = self.base_args_at(name, self.metrics[name].clone());
        self.spawn_aggregator(name, args, &[])
    }

    fn spawn_aggregator(&mut self, name: &str, base: Vec<String>, extra: &[(&str, &str)]) -> usize {
        let mut args = vec!["aggregator".to_string()];
        args.extend(base);
        for &(key, value) in [
            ("aggregator.partials_topic", self.partials.as_str()),
            ("aggregator.group_id", self.aggregator_group.as_str()),
            ("aggregator.flush_interval_ms", "200"),
            ("aggregator.session_timeout_ms", "30000"),
            // Static membership: a restarted aggregator takes its partitions back.
            ("aggregator.group_instance_id", name),
        ]
        .iter()
        .chain(extra)
        {
            args.push("--set".into());
            args.push(format!("{key}={value}"));
        }
        self.spawn(name, args)
    }

    /// Starts `tally ingest` accepting `token`; returns the service index and
    /// its `host:port` once `/readyz` says the broker is reachable.
    pub async fn start_ingest(
        &mut self,
        name: &str,
        token: &str,
        extra: &[(&str, &str)],
    ) -> (usize, String) {
        let addr = free_addr();
        self.metrics.insert(name.to_owned(), addr.clone());
        let mut args = vec![
            "ingest".to_string(),
            "--brokers".into(),
            self.brokers.clone(),
        ];
        let sets = [
            ("ingest.orders_topic", self.orders.as_str()),
            ("ingest.listen", &addr),
            ("ingest.tokens", token),
        ];
        for (key, value) in sets.iter().chain(extra) {
            args.push("--set".into());
            args.push(format!("{key}={value}"));
        }
        let index = self.spawn(name, args);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tls = extra.iter().any(|(key, _)| *key == "ingest.tls_cert");
            let status = if tls {
                let addr = addr.clone();
                tokio::task::spawn_blocking(move || https(&addr, "GET", "/readyz", &[], b"").0)
                    .await
                    .unwrap()
            } else {
                http(&addr, "GET", "/readyz", &[], b"")
                    .await
                    .map_or(0, |(status, _)| status)
            };
            if status == 200 {
                return (index, addr);
            }
            self.children[index].assert_alive();
            assert!(
                Instant::now() < deadline,
                "ingest on {addr} not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(&mut self, name: &str, args: Vec<String>) -> usize {
        let log =
            std::fs::File::create(self.dir.join(format!("{name}.{}.log", self.children.len())))
                .unwrap();
        // `setpriv --pdeathsig` (util-linux) kills the service if this test
        // process dies without running `Drop`, so no stray worker outlives it.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", env!("CARGO_BIN_EXE_tally")])
            .args(&args)
            .env(
                "TALLY_LOG",
                std::env::var("TALLY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tally binary starts");
        self.children.push(Service {
            name: name.to_owned(),
            child: Some(child),
        });
        self.children.len() - 1
    }

    /// Panics unless the service is still running.
    pub fn assert_running(&self, index: usize) {
        self.children[index].assert_alive();
    }

    /// SIGKILL: no drain, no leave-group, exactly like a crash.
    pub fn kill(&mut self, index: usize) {
        let service = &mut self.children[index];
        let mut child = service.child.take().expect("service running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self, index: usize) -> i32 {
        let service = &mut self.children[index];
        let mut child = service.child.take().expect("service running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within 60 s of SIGTERM",
                service.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the database's fences cover `messages` source messages.
    /// Panics with the last progress seen after `timeout`.
    pub async fn wait_committed(&self, store: &Store, messages: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.committed(store).await;
            if done >= messages {
                assert_eq!(done, messages, "fences moved past the produced messages");
                return;
            }
            for service in &self.children {
                service.assert_alive();
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {messages} messages committed after {timeout:?}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Source messages behind committed fences.
    pub async fn committed(&self, store: &Store) -> u64 {
        let progress = store.progress().await.expect("progress readable");
        progress
            .iter()
            .filter(|p| p.topic == self.orders)
            .map(|p| p.fence.next_offset as u64)
            .sum()
    }

    /// Reads every record of the dead-letter topic: (source partition, source offset) → payload.
    pub fn dead_letters(&self, expected: usize, timeout: Duration) -> HashMap<(i32, i64), Vec<u8>> {
        let consumer: BaseConsumer = kafka_client(&self.brokers)
            .set("group.id", unique("dlq-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&self.dlq, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = HashMap::new();
        let deadline = Instant::now() + timeout;
        while out.len() < expected && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                let header = |name: &str| -> String {
                    let headers = message.headers().expect("dead letters carry headers");
                    let h = headers
                        .iter()
                        .find(|h| h.key == name)
                        .unwrap_or_else(|| panic!("header {name} missing"));
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap()
                };
                assert!(!header("tally.reason").is_empty());
                assert!(!header("tally.field").is_empty());
                let source = (
                    header("tally.source.partition").parse().unwrap(),
                    header("tally.source.offset").parse().unwrap(),
                );
                out.insert(source, message.payload().unwrap_or_default().to_vec());
            }
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for service in &mut self.children {
            if let Some(mut child) = service.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            // The failure report carries the services' and the broker's
            // last words, so a CI log says why without the machine.
            let broker = std::env::var_os("TALLY_TEST_KAFKA_DIR")
                .map(|dir| PathBuf::from(dir).join("broker.log"));
            let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            for log in logs.iter().chain(&broker) {
                eprintln!("--- last lines of {}", log.display());
                eprintln!("{}", tail(log, 20));
            }
        } else {
            // Test worlds hold databases and logs; a passing one leaves nothing.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The last `lines` lines of a log.
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text.lines().rev().take(lines).collect();
    kept.into_iter().rev().collect::<Vec<_>>().join("\n")
}

struct Service {
    name: String,
    child: Option<Child>,
}

impl Service {
    fn assert_alive(&self) {
        // A service that exits on its own has failed: tally never crash-loops
        // on data or outages.
        if let Some(child) = &self.child {
            let pid = child.id();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive =
                std::path::Path::new(&format!("/proc/{pid}")).exists() && !stat.contains(") Z ");
            // A zombie's last stat field is its wait status (signal in the low bits).
            let status = stat.split_whitespace().last().unwrap_or("?");
            assert!(
                alive,
                "{} (pid {pid}) exited unexpectedly (wait status {status})",
                self.name
            );
        }
    }
}

/// A new database on the TLS-only PostgreSQL, made over its Unix socket; the
/// URL tally gets logs in as `tally` with its password over verified TLS.
pub async fn fresh_tls_postgres(id: &str) -> String {
    let (client, connection) =
        tokio_postgres::connect(&required("TALLY_TEST_PG_TLS_ADMIN"), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL (TLS) reachable");
    tokio::spawn(connection);
    let name = id.replace('-', "_").to_lowercase();
    client
        .batch_execute(&format!("CREATE DATABASE {name} OWNER tally"))
        .await
        .unwrap();
    let base = required("TALLY_TEST_PG_TLS_URL").replace(
        "postgres@",
        &format!("tally:{}@", required("TALLY_TEST_PG_TLS_PASSWORD")),
    );
    let (base, _) = base.rsplit_once('/').unwrap();
    format!(
        "{base}/{name}?sslmode=verify-full&sslrootcert={}",
        required("TALLY_TEST_TLS_CA")
    )
}

/// An HTTPS request through curl, trusting only the test CA: the status and body.
pub fn https(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "--max-time",
        "60",
        "--cacert",
        &required("TALLY_TEST_TLS_CA"),
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    for (name, value) in headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    if !body.is_empty() {
        command.args(["--data-binary", "@-"]);
    }
    command
        .arg(format!("https://{addr}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("curl runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(body).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let text = output.stdout;
    let split = text.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&text[split..])
        .trim()
        .parse()
        .unwrap_or(0);
    if status == 0 {
        return (0, output.stderr);
    }
    (status, text[..split].to_vec())
}

/// A Kafka client for `brokers`; for the broker's SASL_SSL listener
/// (`TALLY_TEST_TLS_BROKERS`) with the test CA and SCRAM credentials.
pub fn kafka_client(brokers: &str) -> ClientConfig {
    let mut config = kafka::client(brokers);
    if std::env::var("TALLY_TEST_TLS_BROKERS").is_ok_and(|tls| tls == brokers) {
        config
            .set("security.protocol", "SASL_SSL")
            .set("ssl.ca.location", required("TALLY_TEST_TLS_CA"))
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", "tally")
            .set("sasl.password", required("TALLY_TEST_KAFKA_SASL_PASSWORD"));
    }
    config
}

pub async fn create_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = kafka_client(brokers).create().unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        result.expect("topic created");
    }
}

/// Generated traffic plus the totals the test computes from it on its own.
pub struct Traffic {
    pub messages: Vec<Generated>,
    pub expected: Totals,
    pub invalid_payloads: Vec<Vec<u8>>,
}

/// Generates `events` messages with plenty of every kind of trouble.
pub fn traffic(seed: u64, events: u64) -> Traffic {
    let config = GeneratorConfig {
        seed,
        events,
        merchants: 300,
        refund_share: 0.1,
        duplicate_share: 0.03,
        invalid_share: 0.005,
        late_share: 0.05,
        ..GeneratorConfig::default()
    };
    let messages: Vec<Generated> = Generator::new(config).collect();
    let expected = expected_totals(&messages);
    let invalid_payloads = messages
        .iter()
        .filter(|m| matches!(m.truth, Truth::Invalid(_)))
        .map(|m| m.payload.clone())
        .collect();
    Traffic {
        messages,
        expected,
        invalid_payloads,
    }
}

/// The test's own arithmetic: plain i128 sums of the counted events.
pub fn expected_totals(messages: &[Generated]) -> Totals {
    let mut sums: BTreeMap<(String, String, i32), [i128; 4]> = BTreeMap::new();
    for message in messages {
        if let Truth::Counted { key, kind, amount } = &message.truth {
            let entry = sums
                .entry((key.merchant_id.clone(), key.currency.clone(), key.day.0))
                .or_default();
            match kind {
                Kind::Sale => {
                    entry[0] += amount.0;
                    entry[1] += 1;
                }
                Kind::Refund => {
                    entry[2] += amount.0;
                    entry[3] += 1;
                }
            }
        }
    }
    sums.into_iter()
        .map(|((merchant_id, currency, day), s)| {
            (
                TotalsKey {
                    merchant_id,
                    currency,
                    day: Day(day),
                },
                Sums {
                    sales_amount: Amount(s[0]),
                    sales_count: s[1] as i64,
                    refund_amount: Amount(s[2]),
                    refund_count: s[3] as i64,
                },
            )
        })
        .collect()
}

/// Produces `messages` to `topic` and waits for every acknowledgement.
pub async fn produce(brokers: &str, topic: &str, messages: &[Generated]) {
    let producer = kafka::producer::bulk(brokers, &Default::default()).unwrap();
    ingest::load::produce::produce_all(&producer, topic, messages.iter().cloned(), |_| {})
        .await
        .expect("broker accepts the traffic");
}

/// Compares the table with the expected totals row by row; panics listing differences.
pub fn assert_totals_equal(expected: &Totals, actual: &Totals) {
    assert_rows_equal("keys", expected, actual);
}

/// Compares two tables' rows by key; panics listing the differences (of
/// `what`, up to ten) or when nothing was expected at all.
pub fn assert_rows_equal<V: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: &BTreeMap<TotalsKey, V>,
    actual: &BTreeMap<TotalsKey, V>,
) {
    let keys: HashSet<&TotalsKey> = expected.keys().chain(actual.keys()).collect();
    let mut differences: Vec<String> = keys
        .into_iter()
        .filter(|k| expected.get(*k) != actual.get(*k))
        .map(|k| {
            format!(
                "{} {} {}: expected {:?}, got {:?}",
                k.merchant_id,
                k.currency,
                k.day,
                expected.get(k),
                actual.get(k)
            )
        })
        .collect();
    differences.sort();
    assert!(
        differences.is_empty(),
        "{} of {} {what} differ, e.g.:\n{}",
        differences.len(),
        expected.len(),
        differences[..differences.len().min(10)].join("\n")
    );
    assert!(
        !expected.is_empty(),
        "the scenario produced no countable events"
    );
}

/// A hand-made partial of one row (`merchant`, EUR, 2026-11-20) for fence tests.
pub fn partial(
    topic: &str,
    partition: i32,
    epoch: i64,
    first: i64,
    last: i64,
    merchant: &str,
    units: i128,
) -> schemas::Partial {
    schemas::Partial {
        topic: topic.to_owned(),
        partition,
        epoch,
        first_offset: first,
        last_offset: last,
        dedupe_from_offset: first,
        dedupe_clock_ms: None,
        events: schemas::partial::EventCounts {
            counted: 1,
            ..Default::default()
        },
        max_append_ms: None,
        local_rows: Vec::new(),
        rows: vec![schemas::PartialRow {
            key: TotalsKey {
                merchant_id: merchant.into(),
                currency: "EUR".into(),
                day: Day(20_777),
            },
            sums: Sums {
                sales_amount: Amount(units),
                sales_count: 1,
                ..Default::default()
            },
        }],
    }
}

/// A minimal HTTP/1.1 request (`Connection: close`): returns status and body.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let reply = ingest::load::client::request(addr, method, path, headers, body).await?;
    Ok((reply.status, reply.body))
}

/// A loopback `host:port` that nothing listened on a moment ago, below the
/// kernel's ephemeral range: a port the kernel hands out (`bind(:0)`) can be
/// taken, before the service binds it, by any outgoing connection (a
/// PostgreSQL pool opening one, say), and one below the range cannot.
pub fn free_addr() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let low = 10_000u32.min(ephemeral_low / 2);
    let span = ephemeral_low - low;
    // Start where this process's id points, so parallel test binaries spread out.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    loop {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(offset < span, "no free loopback port below {ephemeral_low}");
        let port = low + (start + offset * 7_919) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
}

/// A private Apache Kafka broker for one test (`scripts/kafka/broker`), so
/// that stopping it disturbs no other test. It keeps its storage in the
/// test's directory across [`PrivateBroker::kill`] and
/// [`PrivateBroker::start_again`]; dropped, it is killed.
pub struct PrivateBroker {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts one (plaintext, on a free port below the ephemeral range) and
    /// points `world` at it.
    pub fn start(world: &mut World) -> PrivateBroker {
        let dir = world.dir.join("broker");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_addr().rsplit_once(':').unwrap().1.parse().unwrap();
        let mut broker = PrivateBroker {
            dir,
            port,
            child: None,
        };
        broker.start_again();
        world.brokers = format!("127.0.0.1:{port}");
        broker
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on its storage and waits until it listens.
    pub fn start_again(&mut self) {
        let script = required("TALLY_TEST_KAFKA_BROKER_SCRIPT");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("script.log"))
            .unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", &script])
            .arg(&self.dir)
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the broker starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the private broker did not listen on {}: {}",
                self.port,
                std::fs::read_to_string(self.dir.join("script.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Partitions whose latest claim was made by `worker`.
pub async fn held_by(store: &Store, worker: &str) -> Vec<i32> {
    store
        .progress()
        .await
        .unwrap()
        .iter()
        .filter(|p| p.claimed_by.as_deref() == Some(worker))
        .map(|p| p.partition)
        .collect()
}

/// The high watermark of one partition of `topic`.
pub fn high_watermark(brokers: &str, topic: &str, partition: i32) -> i64 {
    let consumer: BaseConsumer = kafka_client(brokers).create().unwrap();
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap()
        .1
}

/// Messages in `topic` (all partitions), from the broker's watermarks.
pub fn topic_messages(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka_client(brokers).create().unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

/// Every process of the test PostgreSQL server: the postmaster first, then
/// its children (`TALLY_TEST_PG_DATA` names its data directory).
pub fn postgres_pids() -> Vec<u32> {
    let data = required("TALLY_TEST_PG_DATA");
    let pid_file =
        std::fs::read_to_string(format!("{data}/postmaster.pid")).expect("postmaster.pid readable");
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(postmaster)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Sends `signal` (`STOP` or `CONT`) to every PostgreSQL process.
pub fn signal_postgres(signal: &str) {
    let mut pids = postgres_pids();
    if signal == "CONT" {
        pids.reverse();
    }
    for pid in pids {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

/// Produces `(key, payload, timestamp_ms)` records to `topic` (the broker's
/// partitioner places them by key) and waits for every acknowledgement.
pub async fn produce_raw(brokers: &str, topic: &str, records: &[(Vec<u8>, Vec<u8>, Option<i64>)]) {
    let producer: rdkafka::producer::FutureProducer = kafka_client(brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for (key, payload, timestamp) in records {
        let mut record = rdkafka::producer::FutureRecord::to(topic)
            .key(key.as_slice())
            .payload(payload.as_slice());
        if let Some(ms) = timestamp {
            record = record.timestamp(*ms);
        }
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueued"),
        );
    }
    for delivery in deliveries {
        delivery
            .await
            .unwrap()
            .map_err(|(e, _)| e)
            .expect("broker acknowledges");
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One record of a topic: partition, key and payload.
pub struct Record {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Every record of `topic`, read from the beginning up to the high
/// watermarks the broker reports now.
pub fn topic_records(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = kafka_client(brokers)
        .set("group.id", unique("records-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        remaining += high - low;
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < remaining {
        assert!(
            Instant::now() < deadline,
            "read {} of {remaining} records of {topic} in 60 s",
            out.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            out.push(Record {
                partition: message.partition(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    out
}
