//! Splitting a job into tasks.
//!
//! A backfill has one task per merchant-hash shard, each reading every file
//! of the job and keeping its shard's rows. Tasks split by merchant rather
//! than by file because a duplicate `event_id` can sit in two files: the
//! repeats of an event share its merchant, so each shard sees all of them
//! and counts the event once.
//!
//! An import has one task per file: each file commits on its own, exactly
//! once, so its `event_id`s are deduplicated within the file.

use store::jobs::{FileVersion, Kind, NewJob, NewTask, Scope};

use crate::source::{list_files, list_versions, Format};

/// Builds an import job of `files` (one task each) read from `source`.
/// Without `format`, each file's format comes from its extension, and a
/// file whose name implies none is returned apart, with the reason.
pub fn plan_import_files(
    source: &str,
    files: Vec<FileVersion>,
    format: Option<Format>,
    after: Vec<i64>,
) -> (NewJob, Vec<(String, String)>) {
    let (mut tasks, mut unreadable) = (Vec::new(), Vec::new());
    for file in files {
        match Format::of_file(format, &file.location) {
            Ok(_) => tasks.push(NewTask {
                shard: 0,
                shards: 1,
                files: vec![file.location],
                size: file.size,
                version: Some(file.version),
            }),
            Err(reason) => unreadable.push((file.location, reason)),
        }
    }
    let job = NewJob {
        kind: Kind::Import,
        source: source.to_owned(),
        format,
        scope: Scope {
            from: schemas::day::MIN_DAY,
            to: schemas::day::MAX_DAY,
            merchants: Vec::new(),
        },
        schedule: None,
        tasks,
        after,
    };
    (job, unreadable)
}

/// Lists `source` and builds its import job; fails, naming the file, when
/// one's format cannot be told from its name.
pub async fn plan_import(
    source: &str,
    format: Option<Format>,
    after: Vec<i64>,
) -> Result<NewJob, String> {
    let files = list_versions(source).await?;
    let (job, unreadable) = plan_import_files(source, files, format, after);
    match unreadable.into_iter().next() {
        Some((_, reason)) => Err(reason),
        None => Ok(job),
    }
}

/// Input bytes per shard when the caller does not choose: this bounds a
/// task's dedupe set (about 40 million ids per GiB of Parquet, 16 bytes
/// each at most 70 % full: up to 2 GiB of memory for a task).
pub const SHARD_BYTES: u64 = 2 << 30;

/// Shards come in multiples of this when the caller does not choose: the
/// runner's default parallelism, so that no runner idles through a last,
/// lone task (each task reads every file, so an odd one out costs a whole
/// extra pass).
pub const MIN_SHARDS: u64 = 2;

/// Refuses a backfill whose days are not all over at `now_ms`: its files
/// cannot hold every event of a day still going on, and the replace would
/// erase the events streamed since they were written. The local days a
/// backfill replaces lie inside its UTC days, so they are over too.
pub fn check_days_over(scope: &Scope, now_ms: i64) -> Result<(), String> {
    let ends_ms = i64::from(scope.to.0) * 86_400_000;
    if ends_ms <= now_ms {
        return Ok(());
    }
    Err(format!(
        "days [{}, {}) are not all over: UTC day {} ends at {}T00:00:00Z, and a backfill replaces \
         what was streamed with what its files hold, so the events of a day still going on that \
         reached tally after the files were written would be erased; wait until it is over, or \
         pass --include-open-days to replace it anyway",
        scope.from,
        scope.to,
        schemas::Day(scope.to.0 - 1),
        scope.to
    ))
}

/// Lists the source and builds the job: the format from `format` or the
/// files' extension, and `shards` tasks (by default one per 2 GiB of input,
/// rounded up to an even number). Every task reads every file, so more
/// shards than runners cost reading time without adding speed.
pub async fn plan(
    source: &str,
    format: Option<Format>,
    scope: Scope,
    shards: Option<i32>,
    schedule: Option<String>,
    after: Vec<i64>,
) -> Result<NewJob, String> {
    if scope.from >= scope.to {
        return Err(format!(
            "the range [{}, {}) is empty: --to must be after --from",
            scope.from, scope.to
        ));
    }
    let files = list_files(source).await?;
    let format = match format {
        Some(format) => format,
        None => {
            let first = &files[0].0;
            Format::of_path(first).ok_or_else(|| {
                format!("cannot tell the format of {first:?} from its name; pass --format")
            })?
        }
    };
    let bytes: u64 = files.iter().map(|(_, size)| size).sum();
    let shards = shards.unwrap_or_else(|| {
        (bytes.div_ceil(SHARD_BYTES).div_ceil(MIN_SHARDS) * MIN_SHARDS).clamp(MIN_SHARDS, 64) as i32
    });
    if !(1..=1024).contains(&shards) {
        return Err(format!("--shards = {shards}: must be between 1 and 1024"));
    }
    let names: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
    let size = bytes as i64;
    let tasks = (0..shards)
        .map(|shard| NewTask {
            shard,
            shards,
            files: names.clone(),
            size,
            version: None,
        })
        .collect();
    Ok(NewJob {
        kind: Kind::Backfill,
        source: source.to_owned(),
        format: Some(format),
        scope,
        schedule,
        tasks,
        after,
    })
}

#[cfg(test)]
mod days_over {
    use super::*;
    use schemas::Day;

    fn scope(from: &str, to: &str) -> Scope {
        Scope {
            from: Day::parse(from).unwrap(),
            to: Day::parse(to).unwrap(),
            merchants: Vec::new(),
        }
    }

    #[test]
    fn a_backfill_may_replace_only_days_that_are_over() {
        let now = schemas::day::parse_rfc3339("2026-12-06T22:15:00Z").unwrap() / 1000;
        assert_eq!(
            check_days_over(&scope("2026-12-05", "2026-12-06"), now),
            Ok(())
        );
        assert_eq!(
            check_days_over(&scope("2026-11-01", "2026-12-06"), now),
            Ok(())
        );
        for (from, to) in [("2026-12-06", "2026-12-07"), ("2026-12-01", "2026-12-31")] {
            let error = check_days_over(&scope(from, to), now).unwrap_err();
            assert!(error.contains("--include-open-days"), "{error}");
            assert!(error.contains("not all over"), "{error}");
        }
        // The first instant of the next day: the day just ended is over.
        let midnight = schemas::day::parse_rfc3339("2026-12-06T00:00:00Z").unwrap() / 1000;
        assert_eq!(
            check_days_over(&scope("2026-12-05", "2026-12-06"), midnight),
            Ok(())
        );
        let error = check_days_over(&scope("2026-12-05", "2026-12-06"), midnight - 1).unwrap_err();
        assert!(
            error.contains("UTC day 2026-12-05 ends at 2026-12-06T00:00:00Z"),
            "{error}"
        );
    }
}
