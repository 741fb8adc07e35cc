//! `tally schedule add | list | remove`: recurring jobs.

use super::jobs::fail;
use super::open_store;
use crate::cli::{ScheduleArgs, ScheduleCommand};
use crate::error::{CliError, CliResult};
use crate::render;
use backfill::{list_files, now_ms, ScheduleRequest};

/// `tally schedule add | list | remove`.
pub async fn schedule(args: ScheduleArgs) -> CliResult {
    let new = match &args.command {
        ScheduleCommand::Add {
            name,
            cron,
            source,
            range,
            format,
            merchants,
            since,
            include_open_days,
        } => {
            let request = ScheduleRequest {
                name: name.clone(),
                cron: cron.clone(),
                source: source.clone(),
                range: range.clone(),
                format: format.clone(),
                merchants: merchants.clone(),
                since: since.clone(),
                include_open_days: *include_open_days,
            };
            let checked = request.check(now_ms());
            match checked {
                Ok(schedule) => {
                    // A typo is better seen now than at 2 a.m.; files that
                    // will only appear later are fine.
                    if let Err(warning) = list_files(source).await {
                        eprintln!("warning: {warning} (yet)");
                    }
                    Some(schedule)
                }
                Err(error) => return Err(CliError::config(error)),
            }
        }
        _ => None,
    };
    let store = open_store(&args.database).await?;
    match args.command {
        ScheduleCommand::Add { .. } => {
            let schedule = new.expect("checked above");
            match store.add_schedule(&schedule).await {
                Ok(()) => {
                    println!(
                        "Schedule {:?} added: {} (UTC), range {}, source {}.",
                        schedule.name, schedule.cron, schedule.day_range, schedule.source
                    );
                    Ok(())
                }
                Err(error) => Err(CliError::run(format!(
                    "cannot add schedule {:?} (is the name taken?): {error}",
                    schedule.name
                ))),
            }
        }
        ScheduleCommand::List { json } => match store.schedules().await {
            Ok(schedules) if json => render::print_json(&schedules),
            Ok(schedules) => {
                println!(
                    "{:<24} {:<16} {:<14} {:<24} SOURCE",
                    "NAME", "CRON", "RANGE", "LAST TICK"
                );
                for s in &schedules {
                    let last = schemas::day::format_rfc3339_millis(s.last_due * 1000);
                    println!(
                        "{:<24} {:<16} {:<14} {:<24} {}",
                        s.name, s.cron, s.day_range, last, s.source
                    );
                }
                Ok(())
            }
            Err(error) => fail(error),
        },
        ScheduleCommand::Remove { name } => match store.remove_schedule(&name).await {
            Ok(true) => {
                println!("Schedule {name:?} removed.");
                Ok(())
            }
            Ok(false) => Err(CliError::run(format!("no schedule {name:?}"))),
            Err(error) => fail(error),
        },
    }
}
