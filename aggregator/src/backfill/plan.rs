//! Splitting a job into tasks: one per merchant-hash shard, each reading
//! every file of the job and keeping its shard's rows.
//!
//! Tasks split by merchant rather than by file because a duplicate
//! `event_id` can sit in two files: the repeats of an event share its
//! merchant, so each shard sees all of them and counts the event once.

use store::jobs::{NewJob, NewTask, Scope};

use super::source::{list_files, Format};

/// Input bytes per shard when the caller does not choose: this bounds a
/// task's dedupe set (about 40 million ids per GiB of Parquet, 16 bytes
/// each at most 70 % full: up to 2 GiB of memory for a task).
pub const SHARD_BYTES: u64 = 2 << 30;

/// Shards come in multiples of this when the caller does not choose: the
/// runner's default parallelism, so that no runner idles through a last,
/// lone task (each task reads every file, so an odd one out costs a whole
/// extra pass).
pub const MIN_SHARDS: u64 = 2;

/// Lists the source and builds the job: the format from `format` or the
/// files' extension, and `shards` tasks (by default one per 2 GiB of input,
/// rounded up to an even number). Every task reads every file, so more
/// shards than runners cost reading time without adding speed.
pub async fn plan(source: &str, format: Option<Format>, scope: Scope, shards: Option<i32>, schedule: Option<String>) -> Result<NewJob, String> {
    if scope.from >= scope.to {
        return Err(format!("the range [{}, {}) is empty: --to must be after --from", scope.from, scope.to));
    }
    let files = list_files(source).await?;
    let format = match format {
        Some(format) => format,
        None => {
            let first = &files[0].0;
            Format::of_path(first).ok_or_else(|| format!("cannot tell the format of {first:?} from its name; pass --format"))?
        }
    };
    let bytes: u64 = files.iter().map(|(_, size)| size).sum();
    let shards = shards.unwrap_or_else(|| (bytes.div_ceil(SHARD_BYTES).div_ceil(MIN_SHARDS) * MIN_SHARDS).clamp(MIN_SHARDS, 64) as i32);
    if !(1..=1024).contains(&shards) {
        return Err(format!("--shards = {shards}: must be between 1 and 1024"));
    }
    let names: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
    let tasks = (0..shards).map(|shard| NewTask { shard, shards, files: names.clone() }).collect();
    Ok(NewJob { source: source.to_owned(), format: format.as_str().to_owned(), scope, schedule, tasks })
}
