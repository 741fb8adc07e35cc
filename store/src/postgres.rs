//! PostgreSQL: fenced upserts with one multi-row `UNNEST` statement per flush.

use std::collections::BTreeMap;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use schemas::{LocalTotals, Partial, Sums, Totals, TotalsKey};
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{pg, Result, StoreError};
use crate::fence::{self, Fence, Plan};
use crate::health::Health;
use crate::jobs::{Lead, Leadership};
use crate::sql::{BoxFuture, Mode, Tx};
use crate::{closes, parse_row, sources, Claim, PartitionProgress, Standing};

mod tls;
mod tx;

const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "backfills",
        include_str!("../migrations/postgres/0002_backfills.sql"),
    ),
    (
        3,
        "dedupe_clock",
        include_str!("../migrations/postgres/0003_dedupe_clock.sql"),
    ),
    (
        4,
        "imports",
        include_str!("../migrations/postgres/0004_imports.sql"),
    ),
    (
        5,
        "hot_updates",
        include_str!("../migrations/postgres/0005_hot_updates.sql"),
    ),
    (
        6,
        "merchants",
        include_str!("../migrations/postgres/0006_merchants.sql"),
    ),
    (
        7,
        "local_sales",
        include_str!("../migrations/postgres/0007_local_sales.sql"),
    ),
    (
        8,
        "day_indexes",
        include_str!("../migrations/postgres/0008_day_indexes.sql"),
    ),
    (
        9,
        "gap_epoch",
        include_str!("../migrations/postgres/0009_gap_epoch.sql"),
    ),
    (
        10,
        "settings",
        include_str!("../migrations/postgres/0010_settings.sql"),
    ),
    (
        11,
        "closes",
        include_str!("../migrations/postgres/0011_closes.sql"),
    ),
];

/// Arbitrary constant that serialises concurrent migrations.
const MIGRATION_LOCK: i64 = 0x7a11_7a11;

/// What inserting into `merchant_sales AS s` does to a key it already
/// holds: adds to it. Shared by every statement that adds totals.
macro_rules! add_to_existing {
    ($day:literal) => {
        concat!(
            "ON CONFLICT (merchant_id, currency, ",
            $day,
            ") DO UPDATE SET
    sales_amount  = s.sales_amount  + EXCLUDED.sales_amount,
    sales_count   = s.sales_count   + EXCLUDED.sales_count,
    refund_amount = s.refund_amount + EXCLUDED.refund_amount,
    refund_count  = s.refund_count  + EXCLUDED.refund_count,
    net_amount    = s.net_amount    + EXCLUDED.net_amount,
    updated_at    = EXCLUDED.updated_at"
        )
    };
}
use add_to_existing;

const UPSERT: &str = concat!(
    "
INSERT INTO merchant_sales AS s (merchant_id, currency, day, sales_amount, sales_count,
                                 refund_amount, refund_count, net_amount, updated_at)
SELECT u.m, u.c, u.d::date, u.sa::numeric, u.sc, u.ra::numeric, u.rc,
       u.sa::numeric - u.ra::numeric, now()
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::int8[])
     AS u(m, c, d, sa, sc, ra, rc)
",
    add_to_existing!("day")
);

const UPSERT_LOCAL: &str = concat!(
    "
INSERT INTO merchant_sales_local AS s (merchant_id, currency, local_day, time_zone, sales_amount,
                                       sales_count, refund_amount, refund_count, net_amount,
                                       updated_at)
SELECT u.m, u.c, u.d::date, u.z, u.sa::numeric, u.sc, u.ra::numeric, u.rc,
       u.sa::numeric - u.ra::numeric, now()
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[],
            $8::int8[])
     AS u(m, c, d, z, sa, sc, ra, rc)
",
    add_to_existing!("local_day")
);

const ADVANCE: &str = "
UPDATE tally_partitions AS t SET
    next_offset = u.n, dedupe_from_offset = u.df, dedupe_clock_ms = u.dc,
    counted_events = t.counted_events + u.ce,
    duplicate_events = t.duplicate_events + u.de,
    invalid_events = t.invalid_events + u.ie,
    updated_at = now()
FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
            $8::int8[])
     AS u(t, p, n, df, ce, de, ie, dc)
WHERE t.topic = u.t AND t.partition = u.p";

/// Server-side limit on one statement, unless the URL's `options` set one.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit on opening a TCP connection, unless the URL sets `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive idle time and interval: a peer that vanished (a half-open
/// connection) is noticed in about a minute even when no call is waiting.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Connections one process keeps open at most: the flushes of the live
/// stream, the backfill runner's tasks, the scheduler and the health probe
/// each take one while they work, so none waits behind another.
pub const POOL_SIZE: usize = 8;

/// Arbitrary constant naming the scheduler's PostgreSQL advisory lock.
const SCHEDULER_LOCK: i64 = 0x7a11_5c4e;

/// A PostgreSQL database: a pool of connections, each opened when first
/// needed and dropped when it breaks.
pub struct PgStore {
    config: Config,
    /// TLS as the URL's `sslmode` and `sslrootcert` ask.
    tls: MakeRustlsConnect,
    call_timeout: Duration,
    /// The job time limit, in ms ([`crate::Store::set_job_timeout`]).
    pub(crate) job_timeout_ms: std::sync::atomic::AtomicU64,
    pool: Pool,
    pub(crate) health: Health,
}

/// The URL's settings plus tally's defaults for connect, keepalive and
/// statement timeouts; returns the config and the statement timeout in force.
fn settings(url: &str) -> Result<(Config, Duration, MakeRustlsConnect)> {
    let (url, tls) = tls::split(url)?;
    let mut config: Config = url.parse().map_err(pg("parse url"))?;
    tls.apply(&mut config);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(3);
    let options = config.get_options().unwrap_or_default().to_owned();
    let statement = match statement_timeout_in(&options) {
        Some(given) => given,
        None => {
            let ms = STATEMENT_TIMEOUT.as_millis();
            config.options(format!("{options} -c statement_timeout={ms}").trim());
            STATEMENT_TIMEOUT
        }
    };
    Ok((config, statement, tls.connector()?))
}

/// `statement_timeout` from libpq-style `options` (`-c statement_timeout=…`),
/// in ms, or with an `s`/`ms`/`min` unit. `0` (no limit) is read as none given.
fn statement_timeout_in(options: &str) -> Option<Duration> {
    let value = options
        .split_whitespace()
        .find_map(|o| o.strip_prefix("statement_timeout="))?;
    let (digits, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        "" | "ms" => n,
        "s" => n * 1_000,
        "min" => n * 60_000,
        _ => return None,
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl PgStore {
    /// Connects and migrates. Fails when the URL is malformed, the server is
    /// unreachable, or a migration fails.
    pub async fn connect(url: &str) -> Result<PgStore> {
        Self::connect_as(url, true).await
    }

    /// Connects, and migrates when `migrating`; otherwise only checks that
    /// the schema has every migration this build needs (a role with no right
    /// to create tables reads and writes through this), failing with
    /// [`StoreError::Schema`] when it lacks one.
    pub(crate) async fn connect_as(url: &str, migrating: bool) -> Result<PgStore> {
        let (config, statement, tls) = settings(url)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // A connection's state is checked by `Store::timed`: one whose
                // call ran out of time is dropped, never handed out again.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let store = PgStore {
            config,
            tls,
            call_timeout: statement + Duration::from_secs(5),
            job_timeout_ms: crate::DEFAULT_JOB_TIMEOUT_MS.into(),
            pool,
            health: Health::default(),
        };
        let call = async {
            let mut client = store.conn().await?;
            if migrating {
                migrate(&mut client).await
            } else {
                check_schema(&client).await
            }
        };
        match tokio::time::timeout(store.call_timeout, call).await {
            Ok(migrated) => migrated?,
            Err(_) => {
                return Err(StoreError::Timeout {
                    op: "connect",
                    after_ms: store.call_timeout.as_millis() as u64,
                })
            }
        }
        Ok(store)
    }

    /// Opens a connection with the store's settings and TLS; `purpose` names
    /// it in the warning when it closes (the scheduler's lock holds its own).
    pub(crate) async fn open(&self, purpose: &'static str) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(pg("connect"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, purpose, "PostgreSQL connection closed.");
            }
        });
        Ok(client)
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// A connection from the pool, opened if none is idle.
    async fn conn(&self) -> Result<Conn> {
        let object = self.pool.get().await.map_err(|error| match error {
            PoolError::Backend(source) => StoreError::Postgres {
                op: "connect",
                source,
            },
            other => StoreError::Pool(other.to_string()),
        })?;
        Ok(Conn(Some(object)))
    }

    /// Runs `work` in one transaction on a pooled connection. (`mode` is
    /// for SQLite: PostgreSQL's row locks are taken by the statements.)
    pub(crate) async fn transact<R, F>(&self, mode: Mode, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R>> + Send + 'static,
    {
        self.transact_with(mode, None, work).await
    }

    /// [`PgStore::transact`], with each statement's time limit set to
    /// `statement_timeout` for this transaction only, when given: a
    /// backfill's staging and swap may take longer than a flush.
    pub(crate) async fn transact_with<R, F>(
        &self,
        _mode: Mode,
        statement_timeout: Option<Duration>,
        work: F,
    ) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R>> + Send + 'static,
    {
        let mut client = self.conn().await?;
        let out = {
            let mut tx = tx::PgTx(client.transaction().await.map_err(pg("begin"))?);
            if let Some(limit) = statement_timeout {
                let ms = limit.as_millis();
                tx.0.batch_execute(&format!("SET LOCAL statement_timeout = {ms}"))
                    .await
                    .map_err(pg("job time limit"))?;
            }
            // On an error the transaction is dropped, which rolls it back.
            let out = work(&mut tx).await?;
            tx.0.commit().await.map_err(pg("commit"))?;
            out
        };
        client.release();
        Ok(out)
    }

    /// Tries to take the scheduler's advisory lock, on a connection of its own.
    pub(crate) async fn try_lead(&self) -> Result<Option<Leadership>> {
        self.try_lead_with(SCHEDULER_LOCK, "scheduler lock").await
    }

    /// Tries to take the advisory lock `key` (`op` names it in errors), on
    /// a connection of its own.
    pub(crate) async fn try_lead_with(
        &self,
        key: i64,
        op: &'static str,
    ) -> Result<Option<Leadership>> {
        let lead = async {
            let client = self.open(op).await?;
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(pg(op))?;
            Ok(row
                .get::<_, bool>(0)
                .then_some(Leadership(Lead::Postgres(client))))
        };
        tokio::time::timeout(self.call_timeout, lead)
            .await
            .unwrap_or(Err(StoreError::Timeout {
                op,
                after_ms: self.call_timeout.as_millis() as u64,
            }))
    }

    pub(crate) async fn claim(&self, topic: &str, partition: i32, owner: &str) -> Result<Claim> {
        let client = self.conn().await?;
        let row = client
            .query_one(
                "INSERT INTO tally_partitions AS t (topic, partition, epoch, next_offset,
                     dedupe_from_offset, claimed_by, claimed_at, updated_at)
                 VALUES ($1, $2, 1, 0, 0, $3, now(), now())
                 ON CONFLICT (topic, partition) DO UPDATE SET
                     epoch = t.epoch + 1, claimed_by = EXCLUDED.claimed_by, claimed_at = now()
                 RETURNING epoch, next_offset, dedupe_from_offset, dedupe_clock_ms",
                &[&topic, &partition, &owner],
            )
            .await
            .map_err(pg("claim"))?;
        client.release();
        Ok(Claim {
            epoch: row.get(0),
            next_offset: row.get(1),
            dedupe_from_offset: row.get(2),
            dedupe_clock_ms: row.get(3),
        })
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let client = self.conn().await?;
        client.simple_query("SELECT 1").await.map_err(pg("ping"))?;
        client.release();
        Ok(())
    }

    pub(crate) async fn epoch(&self, topic: &str, partition: i32) -> Result<Option<Standing>> {
        let client = self.conn().await?;
        let row = client
            .query_opt(
                "SELECT epoch, gap_epoch FROM tally_partitions WHERE topic = $1 AND partition = $2",
                &[&topic, &partition],
            )
            .await
            .map_err(pg("epoch read"))?;
        client.release();
        Ok(row.map(|r| Standing {
            epoch: r.get(0),
            gap_epoch: r.get(1),
        }))
    }

    pub(crate) async fn apply(&self, partials: &[Partial]) -> Result<Plan> {
        let mut client = self.conn().await?;
        let plan = apply_in(
            tx::PgTx(client.transaction().await.map_err(pg("begin"))?),
            partials,
        )
        .await?;
        client.release();
        Ok(plan)
    }

    pub(crate) async fn totals(&self, merchant: Option<&str>) -> Result<Totals> {
        let client = self.conn().await?;
        let rows = client
            .query(
                "SELECT merchant_id, currency::text, to_char(day, 'YYYY-MM-DD'), sales_amount::text, sales_count,
                        refund_amount::text, refund_count
                 FROM merchant_sales WHERE $1::text IS NULL OR merchant_id = $1",
                &[&merchant],
            )
            .await
            .map_err(pg("totals read"))?;
        client.release();
        rows.iter()
            .map(|r| {
                parse_row(
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    [r.get(3), r.get(5)],
                    [r.get(4), r.get(6)],
                )
            })
            .collect()
    }

    pub(crate) async fn progress(&self) -> Result<Vec<PartitionProgress>> {
        let client = self.conn().await?;
        let rows = client
            .query(
                "SELECT topic, partition, epoch, next_offset, dedupe_from_offset, counted_events,
                        duplicate_events, invalid_events, claimed_by, dedupe_clock_ms
                 FROM tally_partitions ORDER BY topic, partition",
                &[],
            )
            .await
            .map_err(pg("progress read"))?;
        client.release();
        Ok(rows
            .iter()
            .map(|r| PartitionProgress {
                topic: r.get(0),
                partition: r.get(1),
                fence: Fence {
                    epoch: r.get(2),
                    next_offset: r.get(3),
                    dedupe_from_offset: r.get(4),
                    dedupe_clock_ms: r.get(9),
                },
                counted_events: r.get(5),
                duplicate_events: r.get(6),
                invalid_events: r.get(7),
                claimed_by: r.get(8),
            })
            .collect())
    }
}

/// [`PgStore::apply`]'s work, in its transaction `tx`, committed.
async fn apply_in(mut tx: tx::PgTx<'_>, partials: &[Partial]) -> Result<Plan> {
    // Before any row lock: a close run waits for this flush, or this
    // flush for it (see `closes`).
    tx.lock_closes(false).await?;
    let (topics, parts): (Vec<String>, Vec<i32>) = sources(partials).into_iter().unzip();
    // Locks are taken in (topic, partition) order so that concurrent
    // aggregators cannot deadlock each other.
    let rows = tx
        .0
        .query(
            "SELECT t.topic, t.partition, t.epoch, t.next_offset, t.dedupe_from_offset, t.dedupe_clock_ms
             FROM tally_partitions t
             JOIN UNNEST($1::text[], $2::int4[]) AS u(topic, partition)
               ON t.topic = u.topic AND t.partition = u.partition
             ORDER BY t.topic, t.partition
             FOR UPDATE OF t",
            &[&topics, &parts],
        )
        .await
        .map_err(pg("fence lock"))?;
    let fences: BTreeMap<_, _> = rows
        .iter()
        .map(|r| {
            let fence = Fence {
                epoch: r.get(2),
                next_offset: r.get(3),
                dedupe_from_offset: r.get(4),
                dedupe_clock_ms: r.get(5),
            };
            ((r.get::<_, String>(0), r.get::<_, i32>(1)), fence)
        })
        .collect();
    let mut plan = fence::plan(&fences, partials);
    plan.adjustments = closes::adjust_flush(
        &mut tx,
        partials,
        &plan.applied_partials,
        &plan.local_deltas,
    )
    .await?;
    let tx::PgTx(tx) = tx;
    if !plan.deltas.is_empty() {
        upsert(&tx, &plan.deltas).await?;
    }
    if !plan.local_deltas.is_empty() {
        upsert_local(&tx, &plan.local_deltas).await?;
    }
    if !plan.advanced.is_empty() {
        advance(&tx, &plan).await?;
    }
    for ((topic, partition), epoch) in &plan.gaps {
        tx.execute(
            "UPDATE tally_partitions SET gap_epoch = $3 WHERE topic = $1 AND partition = $2 AND epoch = $3",
            &[topic, partition, epoch],
        )
        .await
        .map_err(pg("gap mark"))?;
    }
    tx.commit().await.map_err(pg("commit"))?;
    Ok(plan)
}

/// `merchant_sales` rows as the column arrays that `UNNEST` takes:
/// merchant, currency, day, sales amount and count, refund amount and count.
pub(crate) struct Columns<'a> {
    pub m: Vec<&'a str>,
    pub c: Vec<&'a str>,
    pub d: Vec<String>,
    pub sa: Vec<String>,
    pub sc: Vec<i64>,
    pub ra: Vec<String>,
    pub rc: Vec<i64>,
}

impl<'a> Columns<'a> {
    pub(crate) fn of(totals: &'a Totals) -> Columns<'a> {
        Columns::of_rows(totals.len(), totals.iter())
    }

    pub(crate) fn of_rows(
        n: usize,
        rows: impl Iterator<Item = (&'a TotalsKey, &'a Sums)>,
    ) -> Columns<'a> {
        let mut cols = Columns {
            m: Vec::with_capacity(n),
            c: Vec::with_capacity(n),
            d: Vec::with_capacity(n),
            sa: Vec::with_capacity(n),
            sc: Vec::with_capacity(n),
            ra: Vec::with_capacity(n),
            rc: Vec::with_capacity(n),
        };
        for (key, sums) in rows {
            cols.m.push(key.merchant_id.as_str());
            cols.c.push(key.currency.as_str());
            cols.d.push(key.day.to_string());
            cols.sa.push(sums.sales_amount.to_string());
            cols.sc.push(sums.sales_count);
            cols.ra.push(sums.refund_amount.to_string());
            cols.rc.push(sums.refund_count);
        }
        cols
    }
}

async fn upsert(tx: &tokio_postgres::Transaction<'_>, deltas: &Totals) -> Result<u64> {
    let c = Columns::of(deltas);
    tx.execute(UPSERT, &[&c.m, &c.c, &c.d, &c.sa, &c.sc, &c.ra, &c.rc])
        .await
        .map_err(pg("upsert"))
}

/// Adds local-day sums to `merchant_sales_local`; a row keeps its zone.
pub(crate) async fn upsert_local(
    tx: &tokio_postgres::Transaction<'_>,
    deltas: &LocalTotals,
) -> Result<u64> {
    let c = Columns::of_rows(deltas.len(), deltas.iter().map(|(k, l)| (k, &l.sums)));
    let zones: Vec<&str> = deltas.values().map(|l| l.time_zone.as_ref()).collect();
    tx.execute(
        UPSERT_LOCAL,
        &[&c.m, &c.c, &c.d, &zones, &c.sa, &c.sc, &c.ra, &c.rc],
    )
    .await
    .map_err(pg("local upsert"))
}

async fn advance(tx: &tokio_postgres::Transaction<'_>, plan: &Plan) -> Result<u64> {
    let mut cols: (Vec<&str>, Vec<i32>, Vec<i64>, Vec<i64>) = Default::default();
    let (mut ce, mut de, mut ie, mut dc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((topic, partition), fence) in &plan.advanced {
        let events = plan
            .events
            .get(&(topic.clone(), *partition))
            .copied()
            .unwrap_or_default();
        cols.0.push(topic);
        cols.1.push(*partition);
        cols.2.push(fence.next_offset);
        cols.3.push(fence.dedupe_from_offset);
        ce.push(events.counted as i64);
        de.push(events.duplicate as i64);
        ie.push(events.invalid as i64);
        dc.push(fence.dedupe_clock_ms);
    }
    tx.execute(
        ADVANCE,
        &[&cols.0, &cols.1, &cols.2, &cols.3, &ce, &de, &ie, &dc],
    )
    .await
    .map_err(pg("fence advance"))
}

/// Checks that every migration this build knows has been applied, with a
/// read of `tally_migrations` only.
async fn check_schema(client: &Client) -> Result<()> {
    let needed = MIGRATIONS.last().map_or(0, |m| m.0);
    let found = match client
        .query_one("SELECT max(version) FROM tally_migrations", &[])
        .await
    {
        Ok(row) => row.get::<_, Option<i32>>(0),
        // No tally_migrations: nothing was ever migrated.
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            None
        }
        Err(error) => return Err(pg("schema version read")(error)),
    };
    match found {
        Some(found) if found >= needed => Ok(()),
        found => Err(StoreError::Schema {
            found: found.map(i64::from),
            needed: i64::from(needed),
        }),
    }
}

async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await.map_err(pg("begin migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tally_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)",
    )
    .await
    .map_err(pg("migration table"))?;
    for &(version, name, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM tally_migrations WHERE version = $1",
                &[&version],
            )
            .await
            .map_err(pg("migration check"))?;
        if done.is_none() {
            tx.batch_execute(sql).await.map_err(pg("migration"))?;
            tx.execute(
                "INSERT INTO tally_migrations (version, name, applied_at) VALUES ($1, $2, now())",
                &[&version, &name],
            )
            .await
            .map_err(pg("migration record"))?;
            tracing::info!(version, name, "Applied PostgreSQL migration.");
        }
    }
    tx.commit().await.map_err(pg("commit migration"))
}

/// A pooled connection that goes back to the pool only from a call that
/// finished ([`Conn::release`]). One whose call failed, panicked or ran out
/// of time may be mid-statement or mid-transaction, so it is taken out of the
/// pool and closed instead: no waiting call is ever handed a stuck one.
/// Closing ends the connection task once the server answers (or keepalive
/// gives up), which rolls its transaction back.
struct Conn(Option<Object>);

impl Conn {
    /// Returns the connection to the pool.
    fn release(mut self) {
        self.0.take();
    }
}

impl std::ops::Deref for Conn {
    type Target = Object;
    fn deref(&self) -> &Object {
        self.0.as_ref().expect("held until released or dropped")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Object {
        self.0.as_mut().expect("held until released or dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(Object::take(object));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_sets_timeouts_unless_the_url_does() {
        let (config, statement, _) = settings("postgres://u@h/db").unwrap();
        assert_eq!(statement, STATEMENT_TIMEOUT);
        assert_eq!(config.get_options(), Some("-c statement_timeout=30000"));
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let (config, statement, _) =
            settings("postgres://u@h/db?connect_timeout=2&options=-c%20statement_timeout%3D90s")
                .unwrap();
        assert_eq!(statement, Duration::from_secs(90));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(
            statement_timeout_in("-c statement_timeout=250"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(statement_timeout_in("-c statement_timeout=0"), None);
    }
}
