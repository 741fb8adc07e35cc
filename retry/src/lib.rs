//! tally's one retry policy, read by every retry loop in the worker, the
//! aggregator, the store and the backfill runner. It knows no client
//! library: each error type says its own class (the Kafka errors' in the
//! `kafka` crate, the database's in `store`).
//!
//! An error says which [`Class`] it is in ([`Classify`]). A transient one (a
//! lost connection, a serialization failure, a deadlock, a timeout, a broker
//! that is away) is retried with capped, jittered exponential backoff
//! ([`Backoff`], [`retry`]). A permanent one (a data exception, an unreadable
//! partial, a message too large) is handed back at once: retrying it would
//! only repeat it, so the caller isolates the work at fault and reports it.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Whether retrying the same operation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Retrying later can succeed: connection loss, timeouts, serialization
    /// failures, deadlocks, a broker that is away.
    Transient,
    /// The same input fails the same way every time: never retried blindly.
    Permanent,
}

/// Errors that know their [`Class`].
pub trait Classify {
    /// This error's class.
    fn class(&self) -> Class;

    /// True for [`Class::Transient`].
    fn is_retryable(&self) -> bool {
        self.class() == Class::Transient
    }
}

/// Capped exponential backoff with jitter: attempt n waits
/// `min(cap, base · 2ⁿ⁻¹)` plus up to half as much again, chosen at random,
/// so that many clients failing together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

/// 100 ms, doubling to at most 10 s: the policy of every loop that keeps an
/// operator's pipeline going through an outage.
pub const DEFAULT_BASE: Duration = Duration::from_millis(100);
/// See [`DEFAULT_BASE`].
pub const DEFAULT_CAP: Duration = Duration::from_secs(10);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(DEFAULT_BASE, DEFAULT_CAP)
    }
}

impl Backoff {
    /// Backoff starting at `base` and growing to at most `cap` (before jitter).
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let millis = delay_ms(
            self.base.as_millis() as u64,
            self.cap.as_millis() as u64,
            self.attempt,
            random(),
        );
        Duration::from_millis(millis)
    }

    /// Starts again from `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The wait in ms before attempt `attempt` (1-based): `min(cap, base · 2ⁿ⁻¹)`
/// plus a jitter of up to half of that, drawn from `seed`. Pure, so loops whose
/// attempt count lives in a database (backfill tasks) use the same schedule.
pub fn delay_ms(base_ms: u64, cap_ms: u64, attempt: u32, seed: u64) -> u64 {
    let exponential = base_ms
        .saturating_mul(1u64 << (attempt.clamp(1, 40) - 1))
        .min(cap_ms);
    exponential + mix(seed) % (exponential / 2 + 1)
}

/// splitmix64: a well-spread value from any seed.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32))
}

/// Runs `op` until it succeeds or fails permanently. Each transient failure
/// is passed to `on_retry` with the wait that follows (for metrics), logged
/// with `operation`, and retried after [`Backoff::default`]'s next delay.
///
/// Fails with the first permanent error. Transient errors are retried
/// without end: callers that must stop (shutdown) race this against their
/// cancellation.
pub async fn retry<T, E, F, Fut>(
    operation: &'static str,
    op: F,
    on_retry: impl FnMut(&E),
) -> Result<T, E>
where
    E: Classify + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_with(Backoff::default(), operation, op, on_retry).await
}

/// [`retry`] with a given backoff.
///
/// Fails with the first permanent error.
pub async fn retry_with<T, E, F, Fut>(
    mut backoff: Backoff,
    operation: &'static str,
    mut op: F,
    mut on_retry: impl FnMut(&E),
) -> Result<T, E>
where
    E: Classify + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() => {
                let wait = backoff.next_delay();
                on_retry(&error);
                tracing::warn!(operation, %error, retry_in_ms = wait.as_millis() as u64, "Operation failed; retrying.");
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                tracing::error!(operation, %error, "Operation failed permanently; not retrying.");
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_bounded_jitter() {
        for attempt in 1..=12u32 {
            let plain = (100u64 << (attempt - 1)).min(10_000);
            for seed in 0..200 {
                let wait = delay_ms(100, 10_000, attempt, seed);
                assert!(
                    (plain..=plain + plain / 2).contains(&wait),
                    "attempt {attempt}: {wait}"
                );
            }
        }
        let spread: std::collections::BTreeSet<u64> =
            (0..50).map(|s| delay_ms(1_000, 10_000, 1, s)).collect();
        assert!(spread.len() > 10, "jitter spreads retries: {spread:?}");
    }

    #[derive(Debug)]
    struct Flaky(Class);
    impl Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl Classify for Flaky {
        fn class(&self) -> Class {
            self.0
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_permanent_ones_returned() {
        let fast = || Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let mut calls = 0;
        let mut retried = 0;
        let result = retry_with(
            fast(),
            "flaky",
            || {
                calls += 1;
                let outcome = if calls < 4 {
                    Err(Flaky(Class::Transient))
                } else {
                    Ok(calls)
                };
                async move { outcome }
            },
            |_| retried += 1,
        )
        .await;
        assert_eq!((result.unwrap(), retried), (4, 3));

        let mut calls = 0;
        let result: Result<(), _> = retry_with(
            fast(),
            "broken",
            || {
                calls += 1;
                async { Err(Flaky(Class::Permanent)) }
            },
            |_| {},
        )
        .await;
        assert_eq!((result.unwrap_err().0, calls), (Class::Permanent, 1));
    }
}
