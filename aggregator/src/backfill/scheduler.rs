//! Runs due schedules: one scheduler at a time (elected through the
//! database), one job per due tick, and a missed tick caught up once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use store::jobs::{Leadership, Schedule, Scope};
use store::Store;
use tokio_util::sync::CancellationToken;

use super::plan::plan;
use super::runner::now_ms;
use super::schedule::{Cron, Range};
use super::source::Format;
use crate::metrics::{SCHEDULER_LEADER, SCHEDULE_RUNS};

/// After a schedule fails to create its job, wait this long before trying again.
const RETRY_AFTER_MS: i64 = 60_000;

/// Checks schedules every `poll` while this process leads, until `shutdown`.
pub async fn run(store: Arc<Store>, poll: Duration, shutdown: CancellationToken) {
    let mut leadership: Option<Leadership> = None;
    let mut failed_at: HashMap<String, i64> = HashMap::new();
    loop {
        if leadership.as_ref().is_some_and(|l| !l.is_held()) {
            tracing::warn!("Lost the scheduler lock; another aggregator may take over.");
            leadership = None;
        }
        if leadership.is_none() {
            match store.try_lead().await {
                Ok(Some(lead)) => {
                    tracing::info!("Leading the scheduler: this aggregator runs due schedules.");
                    leadership = Some(lead);
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "Cannot try for the scheduler lock; will retry."),
            }
        }
        SCHEDULER_LEADER.set(i64::from(leadership.is_some()));
        if leadership.is_some() {
            match store.schedules().await {
                Ok(schedules) => {
                    for schedule in schedules {
                        fire_if_due(&store, &schedule, now_ms(), &mut failed_at).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "Cannot read schedules; will retry."),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(poll) => {}
        }
    }
    SCHEDULER_LEADER.set(0);
}

async fn fire_if_due(store: &Store, schedule: &Schedule, now: i64, failed_at: &mut HashMap<String, i64>) {
    if failed_at.get(&schedule.name).is_some_and(|&at| now - at < RETRY_AFTER_MS) {
        return;
    }
    let parsed = Cron::parse(&schedule.cron).and_then(|cron| Ok((cron, Range::parse(&schedule.day_range)?)));
    let (cron, range) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::error!(schedule = schedule.name, "Schedule is invalid: {error}");
            failed_at.insert(schedule.name.clone(), now);
            return;
        }
    };
    // Only the latest tick: a scheduler that was down for three nights runs once.
    let Some(due) = cron.latest(schedule.last_due, now) else {
        return;
    };
    let (from, to) = range.days(due);
    let scope = Scope { from, to, merchants: schedule.merchants.clone() };
    let format = Format::parse("format", &schedule.format).ok();
    let job = match plan(&schedule.source, format, scope, None, Some(schedule.name.clone())) {
        Ok(job) => job,
        Err(error) => {
            tracing::error!(schedule = schedule.name, "Schedule is due but cannot create its job: {error}");
            SCHEDULE_RUNS.with_label_values(&["error"]).inc();
            failed_at.insert(schedule.name.clone(), now);
            return;
        }
    };
    match store.fire_schedule(&schedule.name, schedule.last_due, due, &job, now).await {
        Ok(Some(id)) => {
            failed_at.remove(&schedule.name);
            SCHEDULE_RUNS.with_label_values(&["created"]).inc();
            tracing::info!(schedule = schedule.name, job = id, days = %format!("[{from}, {to})"), "Schedule fired.");
        }
        Ok(None) => {} // another scheduler got there first
        Err(error) => tracing::warn!(schedule = schedule.name, %error, "Cannot create the scheduled job; will retry."),
    }
}
