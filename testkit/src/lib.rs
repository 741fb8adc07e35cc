//! What tally's tests share, so that each suite reads as its scenarios:
//!
//! - [`Backend`] and [`on_both_databases!`]: one scenario as one test on
//!   PostgreSQL and one on SQLite;
//! - [`fresh_database`]: an empty database of its own for each test;
//! - [`unique`]: names no other test (or earlier run) uses;
//! - [`required`]: the servers `scripts/test` started, or a message saying
//!   to run the tests through it;
//! - [`eventually`]: waiting for a condition, with a deadline and a message
//!   that says what did not happen.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Which database a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The PostgreSQL `scripts/test` started (`TALLY_TEST_PG_URL`).
    Postgres,
    /// An SQLite file in the temporary directory.
    Sqlite,
}

/// Runs each async scenario `fn(Backend)` as one test on PostgreSQL and one
/// on SQLite (needs `Backend` in scope at the call site).
#[macro_export]
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario(super::Backend::Postgres).await })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario(super::Backend::Sqlite).await })*
        }
    };
}

/// The value of `var`, which `scripts/test` sets; panics saying so when it
/// is missing.
pub fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the integration tests through scripts/test, which starts the broker, PostgreSQL and the S3 server")
    })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `prefix` made unique to this process, call and moment.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The URL of a new, empty database named after `id`: a database created
/// on the test PostgreSQL, or an SQLite file in the temporary directory.
pub async fn fresh_database(backend: Backend, id: &str) -> String {
    let name = id.replace('-', "_").to_lowercase();
    match backend {
        Backend::Sqlite => {
            let path = std::env::temp_dir().join(format!("tally-{name}.db"));
            format!("sqlite://{}", path.display())
        }
        Backend::Postgres => {
            let admin = required("TALLY_TEST_PG_URL");
            let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .expect("the test PostgreSQL is reachable");
            tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
            let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
            format!("{base}/{name}")
        }
    }
}

/// Waits until `probe` answers true, asking every 100 ms; panics naming
/// `what` when `timeout` passes first. A probe may itself panic to stop the
/// wait at once (a process that died, say).
pub async fn eventually<F: Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) {
    let deadline = Instant::now() + timeout;
    while !probe().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
