//! `tally backfill`, `tally import`, `tally jobs` and `tally verify`: jobs
//! from the command line, and reconciliation of files against the table.

use std::time::{Duration, Instant};

use backfill::{
    check_days_over, compute, list_files, now_ms, plan, plan_import, Format, ScheduleRequest,
};
use schemas::Day;
use store::jobs::{Job, Kind, Requeue, Scope, State};
use store::Store;

use crate::cli::{
    BackfillArgs, ImportArgs, JobsArgs, JobsCommand, ReconcileArgs, ScheduleArgs, ScheduleCommand,
    SourceArgs,
};
use crate::error::{CliError, CliResult};
use crate::query::open_store;

/// The scope and format the flags ask for; errors name the flag.
fn scope(args: &SourceArgs) -> Result<(Scope, Option<Format>), String> {
    let day =
        |flag: &str, text: &str| Day::parse(text).map_err(|e| format!("`{flag}` = {text:?}: {e}"));
    let (from, to) = (day("--from", &args.from)?, day("--to", &args.to)?);
    if from >= to {
        return Err(format!(
            "`--to` = {:?}: must be after --from ({}); the range is [from, to)",
            args.to, args.from
        ));
    }
    let mut merchants = args.merchants.clone();
    merchants.sort();
    merchants.dedup();
    let format = args
        .format
        .as_deref()
        .map(|f| Format::parse("--format", f))
        .transpose()?;
    Ok((
        Scope {
            from,
            to,
            merchants,
        },
        format,
    ))
}

/// The checked arguments and the open database; a bad argument exits 2
/// before any connection is made.
async fn checked<T>(
    arguments: Result<T, String>,
    database: &crate::cli::DatabaseArgs,
) -> Result<(T, Store), CliError> {
    let arguments = arguments.map_err(CliError::config)?;
    Ok((arguments, open_store(database).await?))
}

/// A job the database created; a configuration error when it refused the
/// request (a bad `--after`), a run-time one when it failed.
fn created<T>(result: Result<T, store::StoreError>) -> Result<T, CliError> {
    result.map_err(|error| match error {
        store::StoreError::Refused(reason) => CliError::config(reason),
        error => CliError::run(format!("cannot create the job: {error}")),
    })
}

/// Creates a job; with `--wait`, follows it to the end.
pub async fn backfill(args: BackfillArgs) -> CliResult {
    let scope = scope(&args.source).and_then(|(scope, format)| {
        if !args.include_open_days {
            check_days_over(&scope, now_ms())?;
        }
        Ok((scope, format))
    });
    let job = match scope {
        Ok((scope, format)) => {
            plan(
                &args.source.source,
                format,
                scope,
                args.shards,
                None,
                args.job.after.clone(),
            )
            .await
        }
        Err(error) => Err(error),
    };
    let (job, store) = checked(job, &args.database).await?;
    let id = created(store.create_job(&job, now_ms()).await)?;
    println!("{id}");
    eprintln!(
        "Job {id}: {} {} file(s), days [{}, {}), {} task(s).",
        Format::stored(job.format),
        job.tasks[0].files.len(),
        job.scope.from,
        job.scope.to,
        job.tasks.len()
    );
    if !args.job.wait {
        return Ok(());
    }
    follow(&store, id).await
}

/// Queues an import job of the files that need importing; with `--wait`,
/// follows it to the end. Files imported before are skipped and named.
pub async fn import(args: ImportArgs) -> CliResult {
    let format = args
        .format
        .as_deref()
        .map(|f| Format::parse("--format", f))
        .transpose();
    let job = match format {
        Ok(format) => plan_import(&args.source, format, args.job.after.clone()).await,
        Err(error) => Err(error),
    };
    let (job, store) = checked(job, &args.database).await?;
    let queued = created(
        store
            .queue_import(&job, Requeue::AfterFailure, now_ms())
            .await,
    )?;
    for file in queued.files.iter().filter(|f| !f.queued) {
        eprintln!(
            "  skipped {}: {}",
            file.location,
            file.reason.as_deref().unwrap_or("")
        );
    }
    let Some(id) = queued.job_id else {
        eprintln!("Nothing to import: every file was imported or queued before.");
        return Ok(());
    };
    println!("{id}");
    let files = queued.files.iter().filter(|f| f.queued).count();
    eprintln!(
        "Job {id}: import of {files} file(s) from {}{}.",
        job.source,
        after_text(&job.after)
    );
    if !args.job.wait {
        return Ok(());
    }
    follow(&store, id).await
}

fn after_text(after: &[i64]) -> String {
    if after.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = after.iter().map(i64::to_string).collect();
    format!(", after job {}", ids.join(", "))
}

/// The progress line of an import: files and rows done and left. Rows left
/// are estimated from the bytes left at the rate of the files done.
fn import_progress(job: &Job) -> String {
    let finished: Vec<_> = job.tasks.iter().filter(|t| t.state.is_final()).collect();
    let (read, rejected, duplicate) = job.rows();
    let bytes_done: i64 = finished.iter().map(|t| t.input.size).sum();
    let bytes_left: i64 = job
        .tasks
        .iter()
        .filter(|t| !t.state.is_final())
        .map(|t| t.input.size)
        .sum();
    let left = if bytes_done > 0 {
        format!(
            "~{}",
            (read as f64 / bytes_done as f64 * bytes_left as f64).round() as i64
        )
    } else {
        "?".to_owned()
    };
    format!(
        "files {}/{} done, {} left; rows {read} done ({rejected} invalid, {duplicate} duplicate), {left} left",
        finished.len(),
        job.tasks.len(),
        job.tasks.len() - finished.len(),
    )
}

/// Shows progress until the job ends; exit 0 when it succeeded.
async fn follow(store: &Store, id: i64) -> CliResult {
    let started = Instant::now();
    let mut hinted = false;
    loop {
        let job = match store.job(id).await {
            Ok(Some(job)) => job,
            Ok(None) => return Err(CliError::run(format!("job {id} disappeared"))),
            Err(error) => {
                eprintln!("\nwarning: cannot read job {id}: {error}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let done = job
            .tasks
            .iter()
            .filter(|t| t.state == State::Succeeded)
            .count();
        let attempts: i32 = job.tasks.iter().map(|t| t.attempts).sum();
        let (read, rejected, duplicate) = job.rows();
        if job.kind == Kind::Import {
            eprint!(
                "\r  {}: {}, {:.0} s   ",
                job.state,
                import_progress(&job),
                started.elapsed().as_secs_f64()
            );
        } else {
            eprint!(
                "\r  {}: {done}/{} tasks done, {attempts} attempts, {read} rows read, {rejected} rejected, {duplicate} duplicate, {:.0} s   ",
                job.state,
                job.tasks.len(),
                started.elapsed().as_secs_f64()
            );
        }
        if job.state.is_final() {
            eprintln!();
            print_job(&job);
            return if job.state == State::Succeeded {
                Ok(())
            } else {
                Err(CliError::Reported)
            };
        }
        if job.state == State::Pending
            && !hinted
            && started.elapsed() > Duration::from_secs(15)
            && job.after.iter().all(|d| d.state == State::Succeeded)
        {
            eprintln!("\n  No runner has taken the job yet: jobs run inside `tally aggregator`; is one running on this database?");
            hinted = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `tally jobs list | show | cancel`.
pub async fn jobs(args: JobsArgs) -> CliResult {
    let store = open_store(&args.database).await?;
    match args.command {
        JobsCommand::List { limit, json } => match store.jobs(limit).await {
            Ok(jobs) if json => print_json(&jobs),
            Ok(jobs) => {
                println!(
                    "{:>6}  {:<10} {:<10} {:<23} {:>7} {:>8} {:>12} {:>9} {:>9}",
                    "JOB",
                    "STATE",
                    "FORMAT",
                    "DAYS",
                    "TASKS",
                    "ATTEMPTS",
                    "ROWS",
                    "REJECTED",
                    "SECONDS"
                );
                for job in &jobs {
                    let done = job
                        .tasks
                        .iter()
                        .filter(|t| t.state == State::Succeeded)
                        .count();
                    let attempts: i32 = job.tasks.iter().map(|t| t.attempts).sum();
                    let (read, rejected, _) = job.rows();
                    println!(
                        "{:>6}  {:<10} {:<10} {:<23} {:>7} {:>8} {:>12} {:>9} {:>9}",
                        job.id,
                        job.state.as_str(),
                        Format::stored(job.format),
                        if job.kind == Kind::Import {
                            "import (adds)".to_owned()
                        } else {
                            format!("{}..{}", job.scope.from, job.scope.to)
                        },
                        format!("{done}/{}", job.tasks.len()),
                        attempts,
                        read,
                        rejected,
                        seconds(job.started_at, job.finished_at),
                    );
                }
                Ok(())
            }
            Err(error) => fail(error),
        },
        JobsCommand::Show { id, json } => match store.job(id).await {
            Ok(Some(job)) if json => print_json(&job),
            Ok(Some(job)) => {
                print_job(&job);
                Ok(())
            }
            Ok(None) => Err(CliError::run(format!("no job {id}"))),
            Err(error) => fail(error),
        },
        JobsCommand::Cancel { id } => match store.cancel_job(id, now_ms()).await {
            Ok(Some((_, true))) => {
                println!("Job {id} cancelled; merchant_sales is unchanged.");
                Ok(())
            }
            Ok(Some((state, false))) => Err(CliError::run(format!(
                "job {id} already ended ({state}); nothing to cancel"
            ))),
            Ok(None) => Err(CliError::run(format!("no job {id}"))),
            Err(error) => fail(error),
        },
    }
}

fn fail(error: store::StoreError) -> CliResult {
    Err(CliError::run(error))
}

fn print_json(value: &impl serde::Serialize) -> CliResult {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("jobs serialise")
    );
    Ok(())
}

fn seconds(started: Option<i64>, finished: Option<i64>) -> String {
    match (started, finished) {
        (Some(s), Some(f)) => format!("{:.1}", (f - s) as f64 / 1000.0),
        (Some(s), None) => format!("{:.1}…", (now_ms() - s) as f64 / 1000.0),
        _ => "-".to_owned(),
    }
}

fn print_job(job: &Job) {
    let (read, rejected, duplicate) = job.rows();
    println!("Job {}: {} {}", job.id, job.kind.as_str(), job.state);
    println!(
        "  source    {} ({})",
        job.source,
        Format::stored(job.format)
    );
    if job.kind == Kind::Backfill {
        println!("  days      [{}, {})", job.scope.from, job.scope.to);
    }
    if !job.after.is_empty() {
        let after: Vec<String> = job
            .after
            .iter()
            .map(|d| format!("job {} ({})", d.job_id, d.state))
            .collect();
        println!("  after     {}", after.join(", "));
    }
    if !job.before.is_empty() {
        let before: Vec<String> = job.before.iter().map(|id| format!("job {id}")).collect();
        println!("  before    {} (wait on this one)", before.join(", "));
    }
    if !job.scope.merchants.is_empty() {
        println!("  merchants {}", job.scope.merchants.join(", "));
    }
    if let Some(schedule) = &job.schedule {
        println!("  schedule  {schedule}");
    }
    println!("  rows      {read} read, {rejected} rejected, {duplicate} duplicate");
    if let Some(keys) = job.keys_written {
        println!("  written   {keys} rows of merchant_sales");
    }
    println!("  seconds   {}", seconds(job.started_at, job.finished_at));
    if let Some(error) = &job.last_error {
        println!("  error     {error}");
    }
    if job.kind == Kind::Import {
        return print_import_files(job);
    }
    println!(
        "  {:>4}  {:<10} {:>5} {:>8} {:>12} {:>9} {:>9} {:>8}  LAST ERROR",
        "TASK", "STATE", "SHARD", "ATTEMPTS", "ROWS", "REJECTED", "DUPLICATE", "SECONDS"
    );
    for t in &job.tasks {
        println!(
            "  {:>4}  {:<10} {:>5} {:>8} {:>12} {:>9} {:>9} {:>8}  {}",
            t.task_no,
            t.state.as_str(),
            format!("{}/{}", t.input.shard, t.input.shards),
            t.attempts,
            t.rows_read,
            t.rows_rejected,
            t.rows_duplicate,
            seconds(t.started_at, t.finished_at),
            t.last_error.as_deref().unwrap_or("")
        );
    }
    let mut by_field = std::collections::BTreeMap::<String, i64>::new();
    for t in &job.tasks {
        if let Some(fields) = t.rejections.get("by_field").and_then(|f| f.as_object()) {
            for (field, n) in fields {
                *by_field.entry(field.clone()).or_default() += n.as_i64().unwrap_or(0);
            }
        }
    }
    if !by_field.is_empty() {
        let list: Vec<String> = by_field.iter().map(|(f, n)| format!("{f} {n}")).collect();
        println!("  rejected by field: {}", list.join(", "));
        for example in job
            .tasks
            .iter()
            .filter_map(|t| t.rejections.get("examples")?.as_array())
            .flatten()
            .take(5)
        {
            println!(
                "    {}:{}: field `{}` = {}: {}",
                example["file"].as_str().unwrap_or("?"),
                example["row"],
                example["field"].as_str().unwrap_or("?"),
                example["value"],
                example["reason"].as_str().unwrap_or("?")
            );
        }
    }
}

/// An import's files: each one's state, outcome and rows, then every
/// invalid row listed (up to the per-file limit) with its row number and reason.
fn print_import_files(job: &Job) {
    println!(
        "  {:>4}  {:<10} {:<32} {:>8} {:>10} {:>8} {:>9} {:>8}  FILE",
        "TASK", "STATE", "OUTCOME", "ATTEMPTS", "ROWS", "INVALID", "DUPLICATE", "SECONDS"
    );
    for t in &job.tasks {
        let outcome = t.outcome.as_deref().unwrap_or("-");
        println!(
            "  {:>4}  {:<10} {:<32} {:>8} {:>10} {:>8} {:>9} {:>8}  {}",
            t.task_no,
            t.state.as_str(),
            outcome,
            t.attempts,
            t.rows_read,
            t.rows_rejected,
            t.rows_duplicate,
            seconds(t.started_at, t.finished_at),
            t.input.files[0]
        );
        if let Some(error) = &t.last_error {
            println!("        error: {error}");
        }
    }
    for t in job.tasks.iter().filter(|t| t.rows_rejected > 0) {
        let listed = t
            .rejections
            .get("examples")
            .and_then(|e| e.as_array())
            .map_or(&[][..], Vec::as_slice);
        println!(
            "  invalid rows of {} ({} of {} listed):",
            t.input.files[0],
            listed.len(),
            t.rows_rejected
        );
        for example in listed {
            println!(
                "    row {}: field `{}` = {}: {}",
                example["row"],
                example["field"].as_str().unwrap_or("?"),
                example["value"],
                example["reason"].as_str().unwrap_or("?")
            );
        }
    }
}

/// Recomputes the scope from files in this process and diffs it with the table.
pub async fn verify(args: ReconcileArgs) -> CliResult {
    // The same listing and format rules as a backfill, as one shard.
    let planned = match scope(&args.source) {
        Ok((scope, format)) => {
            plan(
                &args.source.source,
                format,
                scope,
                Some(1),
                None,
                Vec::new(),
            )
            .await
        }
        Err(error) => Err(error),
    };
    let (job, store) = checked(planned, &args.database).await?;
    let (scope, files) = (job.scope, &job.tasks[0].files);
    let format = job.format.expect("plan names a format");
    let computed = match compute(files, format, &scope, None, &[0], 1).await {
        Ok(mut computed) => computed.remove(0),
        Err(error) => return Err(CliError::run(error)),
    };
    eprintln!(
        "Read {} rows from {} file(s): {} rejected, {} duplicate.",
        computed.rows_read,
        files.len(),
        computed.rows_rejected,
        computed.rows_duplicate
    );
    let have = match store.totals(None).await {
        Ok(totals) => totals
            .into_iter()
            .filter(|(key, _)| scope.contains(&key.merchant_id, key.day))
            .collect(),
        Err(error) => {
            return Err(CliError::run(format!(
                "cannot read merchant_sales: {error}"
            )))
        }
    };
    crate::generate::report(&computed.totals, &have)
}

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
            Ok(schedules) if json => print_json(&schedules),
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
