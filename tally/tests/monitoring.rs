//! Monitoring and deployment: the files in `deploy/` and `docker-compose.yml`
//! are valid, name only metrics the code exports, and a real Prometheus
//! scraping a real pipeline sees every one of them and fires the lag alert.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{produce, traffic, Backend, World};

fn repo() -> PathBuf {
    common::repo()
}

/// Runs a provisioned tool from the repository root; panics with its output unless it succeeds.
fn run_tool(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program}: {e}; run the tests through scripts/test, which installs it"
            )
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_config_and_rules() {
    run_tool(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    run_tool(
        "promtool",
        &["check", "rules", "deploy/prometheus/rules/tally.yml"],
    );
    run_tool(
        "promtool",
        &["test", "rules", "deploy/prometheus/tests/tally.test.yml"],
    );
}

#[test]
fn compose_file_is_valid() {
    run_tool(
        "docker-compose",
        &["--file", "docker-compose.yml", "config", "--quiet"],
    );
}

/// Every PromQL expression of the dashboard (`expr` of each target).
fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard(), &mut out);
    out
}

/// The Grafana dashboard, as JSON.
fn dashboard() -> serde_json::Value {
    let text =
        std::fs::read_to_string(repo().join("deploy/grafana/dashboards/tally.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// The SQL of the dashboard's one PostgreSQL panel (the top merchants).
fn panel_sql(dashboard: &serde_json::Value) -> &str {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["targets"][0]["rawSql"].as_str())
        .unwrap()
}

/// Every rule's `expr` from the rules file: inline, or a `|` block of deeper-indented lines.
fn rule_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest != "|" && rest != ">" {
            out.push(rest.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        out.push(block.join(" "));
    }
    out
}

fn rules_text() -> String {
    std::fs::read_to_string(repo().join("deploy/prometheus/rules/tally.yml")).unwrap()
}

/// The metric names a PromQL expression selects. Strings, label matchers,
/// ranges, Grafana variables, grouping clauses, functions and keywords are
/// skipped; whatever identifier is left is a metric name.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations may put `by (…)` before their parenthesis, so they are keywords too.
    const KEYWORDS: [&str; 20] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "group",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < chars.len() {
            if chars[i] == open {
                depth += 1;
            } else if chars[i] == close {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '$' || c.is_ascii_digit() {
            // A Grafana variable, or a number or duration.
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i = skip_group(next, '(', ')');
                }
            } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// What the code registers: every crate's metrics, initialised as the
/// services initialise them, with histograms' derived series.
fn exported_names() -> BTreeSet<String> {
    shard_worker::metrics::init();
    aggregator::metrics::init();
    ingest::metrics::init();
    let mut names = BTreeSet::from(["up".to_owned(), "ALERTS".to_owned()]);
    // Descriptors name the labelled metrics that have no series yet.
    let collectors = shard_worker::metrics::collectors()
        .into_iter()
        .chain(aggregator::metrics::collectors())
        .chain(ingest::metrics::collectors());
    names.extend(collectors.flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone())));
    for family in prometheus::gather() {
        let name = family.name().to_owned();
        if family.get_field_type() == prometheus::proto::MetricType::HISTOGRAM {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name);
    }
    names
}

/// Every metric the dashboard and the alert rules query.
fn used_names() -> BTreeSet<String> {
    dashboard_exprs()
        .iter()
        .chain(&rule_exprs(&rules_text()))
        .flat_map(|e| metric_names(e))
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(tally_x_seconds_bucket{job=~"a|b", le!="1"}[$__rate_interval])))
        / on (partition) group_left (instance) max_over_time(tally_y[5m:1s]) > 0 and up == 0 or vector(1) * "by(z)""#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from([
            "tally_x_seconds_bucket".into(),
            "tally_y".into(),
            "up".into()
        ])
    );
    let rules = "      - alert: A\n        expr: |\n          sum(a_metric) > 0\n          and b_metric\n        for: 1m\n      - alert: B\n        expr: c_metric == 0\n";
    assert_eq!(
        rule_exprs(rules),
        vec![
            "sum(a_metric) > 0 and b_metric".to_owned(),
            "c_metric == 0".to_owned()
        ]
    );
}

#[test]
fn dashboard_and_rules_name_only_exported_metrics() {
    let exported = exported_names();
    let used = used_names();
    assert!(
        used.len() >= 12,
        "the dashboard and rules query the pipeline: {used:?}"
    );
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard or rules name metrics the code does not export: {unknown:?}"
    );

    // The panels and alerts an operator was promised.
    let dashboard = dashboard();
    assert_eq!(dashboard["title"], "tally — merchant sales pipeline");
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Events by outcome",
        "Consumer lag per partition",
        "End-to-end latency",
        "Freshness per partition",
        "Dead-letter rate",
        "Flush duration",
        "Upserted rows",
        "Fenced and dropped partials",
        "Backfill jobs by state",
        "Ingest requests by status",
        "Imported files by outcome",
        "Imported rows by outcome",
        "Top merchants today ($basis day)",
    ] {
        assert!(
            titles.contains(&wanted),
            "panel {wanted:?} missing from {titles:?}"
        );
    }
    let sql = panel_sql(&dashboard);
    assert!(
        sql.contains("FROM merchant_sales") && sql.contains("FROM merchant_sales_local"),
        "the top-merchants panel reads both tables: {sql}"
    );
    let rules = rules_text();
    for alert in [
        "TallyConsumerLagGrowing",
        "TallyNoCommitWithLag",
        "TallyFenceViolation",
        "TallyDeadLetterRateHigh",
        "TallySinkErrors",
        "TallyBackfillJobFailed",
        "TallyScheduleMissed",
        "TallyTargetDown",
        "TallyPartitionParked",
        "TallyDedupeWindowFull",
        "TallyImportFailed",
        "TallyLocalDaysShort",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "alert {alert} missing"
        );
    }
    assert_eq!(
        rules.matches("alert: ").count(),
        rules.matches("runbook: ").count(),
        "every alert has a runbook line"
    );
}

/// A real Prometheus on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` (name, targets) every second, with
    /// tally's rules evaluated every second and every `for:` cut to 1 s.
    async fn start(dir: &Path, jobs: &[(&str, Vec<String>)]) -> Prometheus {
        let rules: String = rules_text()
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("for:") {
                    l.split("for:").next().unwrap().to_owned() + "for: 1s"
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            dir.join("rules.yml").display()
        );
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
            config += &format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            );
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = common::free_addr();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "prometheus"])
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts (scripts/test installs Debian's prometheus package)");
        let prometheus = Prometheus { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(
            common::http(&prometheus.addr, "GET", "/-/ready", &[], b"").await,
            Ok((200, _))
        ) {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready in 60 s; log in {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prometheus
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = common::http(&self.addr, "GET", &path, &[], b"")
            .await
            .expect("Prometheus answers");
        let reply: serde_json::Value =
            serde_json::from_slice(&body).expect("Prometheus answers JSON");
        assert_eq!(status, 200, "query {promql} failed: {reply}");
        reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The value of a query that returns one sample, if it returns one.
    async fn scalar(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        result
            .first()
            .and_then(|s| s["value"][1].as_str())
            .map(|v| v.parse().expect("a number"))
    }

    /// Polls `promql` every 500 ms until `done` accepts its result; panics after `timeout`.
    async fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql).await;
            if done(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} still {result:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus scrapes a worker pair, the aggregator and ingest while
/// they process events; every metric of the dashboard and rules has series;
/// lag goes up during the stream and back to 0 after it; with the aggregator
/// stopped and events still arriving, the lag alert fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one running pipeline, its steps in order"
)]
async fn prometheus_scrapes_a_running_pipeline_and_the_lag_alert_fires() {
    let mut world = World::new("monitoring", Backend::Postgres).await;
    let store = world.store().await;
    let aggregator = world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    world.start_worker("worker-b", &[]);
    let token = "monitoring-token";
    let (_, ingest) = world.start_ingest("ingest", token, &[]).await;
    let metrics = |name: &str| world.metrics[name].clone();
    let prometheus = Prometheus::start(
        &world.dir,
        &[
            (
                "tally-worker",
                vec![metrics("worker-a"), metrics("worker-b")],
            ),
            ("tally-aggregator", vec![metrics("aggregator")]),
            ("tally-ingest", vec![ingest.clone()]),
        ],
    )
    .await;
    prometheus
        .wait_for("sum(up)", Duration::from_secs(60), |r| {
            r.first().is_some_and(|s| s["value"][1] == "4")
        })
        .await;

    // Traffic through both doors: the broker directly (with duplicates and
    // invalid events) and the HTTP API. The aggregator is stopped meanwhile,
    // so the fences stand still and the lag must show the whole stream
    // however fast the workers are; it is started again once Prometheus has
    // seen the lag.
    assert_eq!(world.terminate(aggregator), 0);
    let stream = traffic(51, 60_000);
    produce(&world.brokers, &world.orders, &stream.messages).await;
    let posted = traffic(52, 2_000);
    let valid: Vec<&[u8]> = posted
        .messages
        .iter()
        .filter(|m| !matches!(m.truth, ingest::load::generate::Truth::Invalid(_)))
        .map(|m| m.payload.as_slice())
        .collect();
    let body = valid.join(&b'\n');
    let auth = format!("Bearer {token}");
    let (status, reply) = common::http(
        &ingest,
        "POST",
        "/v1/orders",
        &[
            ("authorization", &auth),
            ("content-type", "application/x-ndjson"),
        ],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let total = stream.messages.len() as u64 + valid.len() as u64;
    prometheus
        .wait_for(
            "sum(tally_worker_consumer_lag_messages)",
            Duration::from_secs(60),
            |r| {
                r.first()
                    .and_then(|s| s["value"][1].as_str())
                    .is_some_and(|v| v.parse::<f64>().is_ok_and(|lag| lag > 0.0))
            },
        )
        .await;
    let aggregator = world.restart_aggregator("aggregator");
    world
        .wait_committed(&store, total, Duration::from_secs(600))
        .await;

    // Every metric the dashboard and the rules use has series in Prometheus.
    let used = used_names();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut missing = Vec::new();
        for name in used.iter().filter(|n| *n != "ALERTS") {
            if prometheus
                .query(&format!("count({{__name__=\"{name}\"}})"))
                .await
                .is_empty()
            {
                missing.push(name.clone());
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no series in Prometheus for {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Lag: above 0 while the stream waited, then 0 on every partition.
    let partitions = common::PARTITIONS.to_string();
    prometheus
        .wait_for(
            "count(tally_worker_consumer_lag_messages == 0)",
            Duration::from_secs(60),
            |r| {
                r.first()
                    .is_some_and(|s| s["value"][1] == partitions.as_str())
            },
        )
        .await;
    let peak = prometheus
        .scalar("max_over_time(sum(tally_worker_consumer_lag_messages)[10m:1s])")
        .await
        .unwrap();
    assert!(
        peak > 0.0,
        "lag was never above 0 while {total} messages were worked off"
    );
    eprintln!("lag peaked at {peak} messages while {total} were worked off, then returned to 0");
    // The aggregator's committed-event counters cover every message exactly once.
    let total_text = total.to_string();
    prometheus
        .wait_for(
            "sum(tally_aggregator_events_total)",
            Duration::from_secs(30),
            |r| {
                r.first()
                    .is_some_and(|s| s["value"][1] == total_text.as_str())
            },
        )
        .await;

    // Aggregator stopped, events still arriving: the lag alert fires.
    assert_eq!(world.terminate(aggregator), 0);
    let more = traffic(53, 40_000);
    let firing = "ALERTS{alertname=\"TallyConsumerLagGrowing\", alertstate=\"firing\"}";
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(180);
    for chunk in more.messages.chunks(1_000).cycle() {
        produce(&world.brokers, &world.orders, chunk).await;
        if !prometheus.query(firing).await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TallyConsumerLagGrowing did not fire within 180 s; logs in {}",
            world.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "TallyConsumerLagGrowing fired {:?} after the aggregator stopped",
        stopped.elapsed()
    );
    // The lag alert can fire first (its window still holds the earlier
    // climb); the stopped aggregator is reported down within a few scrapes.
    prometheus
        .wait_for(
            "ALERTS{alertname=\"TallyTargetDown\", alertstate=\"firing\"}",
            Duration::from_secs(30),
            |down| {
                down.iter()
                    .any(|s| s["metric"]["job"] == "tally-aggregator")
            },
        )
        .await;
}

/// The top-merchants panel's SQL, run by a real PostgreSQL on each basis:
/// UTC reads today's UTC day; local reads each merchant's own today, in its
/// zone, even where that is another date than UTC's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_merchants_panel_answers_on_both_bases() {
    let world = World::new("panel", Backend::Postgres).await;
    world.store().await; // migrated
    let (client, connection) = tokio_postgres::connect(&world.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Today in UTC and in Kiritimati (+14:00) and Niue (−11:00) differ by a day.
    client
        .batch_execute(
            "INSERT INTO merchant_sales VALUES
               ('m-utc', 'EUR', (now() AT TIME ZONE 'UTC')::date, 10, 1, 0, 0, 10, now()),
               ('m-old', 'EUR', (now() AT TIME ZONE 'UTC')::date - 1, 99, 1, 0, 0, 99, now());
             INSERT INTO merchant_sales_local VALUES
               ('m-east', 'EUR', (now() AT TIME ZONE 'Pacific/Kiritimati')::date, 'Pacific/Kiritimati', 7, 1, 0, 0, 7, now()),
               ('m-west', 'EUR', (now() AT TIME ZONE 'Pacific/Niue')::date, 'Pacific/Niue', 5, 1, 0, 0, 5, now()),
               ('m-stale', 'EUR', (now() AT TIME ZONE 'Pacific/Niue')::date - 1, 'Pacific/Niue', 50, 1, 0, 0, 50, now());",
        )
        .await
        .unwrap();
    let dashboard = dashboard();
    let sql = panel_sql(&dashboard);
    let options: Vec<&str> = dashboard["templating"]["list"][0]["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["value"].as_str().unwrap())
        .collect();
    assert_eq!(options, ["utc", "local"]);
    for (basis, want) in [("utc", vec!["m-utc"]), ("local", vec!["m-east", "m-west"])] {
        let rows = client
            .query(&sql.replace("$basis", basis), &[])
            .await
            .unwrap_or_else(|e| panic!("{basis}: {e}"));
        let merchants: Vec<String> = rows.iter().map(|r| r.get("merchant_id")).collect();
        assert_eq!(merchants, want, "basis {basis}");
    }
}
