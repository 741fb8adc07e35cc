//! Runs due schedules: one scheduler at a time (elected through the
//! database), one job per due tick, and a missed tick caught up once. The
//! same leader runs the import watch ([`super::watch`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use store::jobs::{Leadership, Schedule, Scope};
use store::Store;
use tokio_util::sync::CancellationToken;

use crate::metrics::{POLLS, SCHEDULER_LEADER, SCHEDULES_OVERDUE, SCHEDULE_RUNS};
use crate::plan::plan;
use crate::watch::{Watch, WatchConfig};
use schemas::day::now_ms;

/// After a schedule fails to create its job, wait this long before trying again.
const RETRY_AFTER_MS: i64 = 60_000;

/// A due tick still without its job this long after it fell due counts as missed.
const OVERDUE_AFTER_MS: i64 = 5 * 60_000;

/// Checks schedules every `poll`, and runs the import watch when there is
/// one, while this process leads, until `shutdown`.
pub async fn run(
    store: Arc<Store>,
    poll: Duration,
    watch: Option<WatchConfig>,
    shutdown: CancellationToken,
) {
    let mut watch = watch.map(Watch::new);
    let mut leadership: Option<Leadership> = None;
    let mut failed_at: HashMap<String, i64> = HashMap::new();
    loop {
        if leadership.as_ref().is_some_and(|l| !l.is_held()) {
            tracing::warn!("Lost the scheduler lock; another aggregator may take over.");
            leadership = None;
            if let Some(watch) = &mut watch {
                watch.pause();
            }
        }
        if leadership.is_none() {
            match store.try_lead().await {
                Ok(Some(lead)) => {
                    tracing::info!("Leading the scheduler: this aggregator runs due schedules.");
                    leadership = Some(lead);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "Cannot try for the scheduler lock; will retry.")
                }
            }
        }
        SCHEDULER_LEADER.set(i64::from(leadership.is_some()));
        if leadership.is_some() {
            match store.schedules().await {
                Ok(schedules) => {
                    let mut overdue = 0;
                    for schedule in schedules {
                        let now = now_ms();
                        let late = overdue_at(&schedule, now);
                        if !fire_if_due(&store, &schedule, now, &mut failed_at).await && late {
                            overdue += 1;
                        }
                    }
                    SCHEDULES_OVERDUE.set(overdue);
                }
                Err(error) => tracing::warn!(%error, "Cannot read schedules; will retry."),
            }
            if let Some(watch) = watch.as_mut().filter(|w| w.due()) {
                watch.poll(&store).await;
            }
            POLLS.with_label_values(&["scheduler"]).inc();
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(poll) => {}
        }
    }
    SCHEDULER_LEADER.set(0);
    SCHEDULES_OVERDUE.set(0);
}

/// True when the schedule cannot run, or a tick older than the grace period
/// has no job yet.
fn overdue_at(schedule: &Schedule, now: i64) -> bool {
    schedule
        .cron
        .latest(schedule.last_due, now - OVERDUE_AFTER_MS)
        .is_some()
}

/// Creates the job of the schedule's latest due tick, if any. False when a
/// tick is due and no job was created for it.
async fn fire_if_due(
    store: &Store,
    schedule: &Schedule,
    now: i64,
    failed_at: &mut HashMap<String, i64>,
) -> bool {
    if failed_at
        .get(&schedule.name)
        .is_some_and(|&at| now - at < RETRY_AFTER_MS)
    {
        return false;
    }
    // Only the latest tick: a scheduler that was down for three nights runs once.
    let Some(due) = schedule.cron.latest(schedule.last_due, now) else {
        return true;
    };
    let (from, to) = schedule.day_range.days(due);
    let scope = Scope {
        from,
        to,
        merchants: schedule.merchants.clone(),
    };
    let job = match plan(
        &schedule.source,
        schedule.format,
        scope,
        None,
        Some(schedule.name.clone()),
        Vec::new(),
    )
    .await
    {
        Ok(job) => job,
        Err(error) => {
            tracing::error!(
                schedule = schedule.name,
                "Schedule is due but cannot create its job: {error}"
            );
            SCHEDULE_RUNS.with_label_values(&["error"]).inc();
            failed_at.insert(schedule.name.clone(), now);
            return false;
        }
    };
    match store
        .fire_schedule(&schedule.name, schedule.last_due, due, &job, now)
        .await
    {
        Ok(Some(id)) => {
            failed_at.remove(&schedule.name);
            SCHEDULE_RUNS.with_label_values(&["created"]).inc();
            tracing::info!(schedule = schedule.name, job = id, days = %format!("[{from}, {to})"), "Schedule fired.");
            true
        }
        Ok(None) => true, // another scheduler got there first
        Err(error) => {
            tracing::warn!(schedule = schedule.name, %error, "Cannot create the scheduled job; will retry.");
            false
        }
    }
}
