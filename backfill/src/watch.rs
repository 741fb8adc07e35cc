//! The import watch: the elected scheduler lists a folder, pattern or
//! `s3://` prefix every `import_poll_ms` and queues one import job for each
//! new file.
//!
//! - **New** means a version (location, size, ETag or modification time)
//!   that no import has queued before: the database remembers every
//!   version queued, so a restart re-imports nothing, and a file that
//!   arrived while no aggregator ran is simply new at the next listing.
//! - **Settled** means unchanged for `import_settle_ms` of this watch's own
//!   polls: a file still being written changes size or modification time
//!   and is left alone until it stops. Names starting with `.` or `_` are
//!   never listed, so a writer that writes under such a name and renames
//!   when done (or drops a `_SUCCESS` marker beside its files) needs no
//!   settle time at all. S3 objects appear whole, but get the same rule.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use store::jobs::{FileVersion, Requeue};
use store::Store;

use crate::metrics::{IMPORT_WATCH_POLLS, IMPORT_WATCH_QUEUED, IMPORT_WATCH_UNSETTLED};
use crate::plan::plan_import_files;
use crate::source::{list_present, Format};
use schemas::day::now_ms;

/// What to watch and how.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// A folder, a `*`/`?` pattern, or an `s3://bucket/prefix/`.
    pub source: String,
    /// The files' format; `None` takes each file's from its extension.
    pub format: Option<Format>,
    /// How often to list the source.
    pub poll: Duration,
    /// How long a new file must stay unchanged before it is queued.
    pub settle: Duration,
}

/// The watch's memory between polls (rebuilt from the database after a restart).
pub struct Watch {
    config: WatchConfig,
    /// New versions not yet settled, by location, with when each was first seen so.
    pending: HashMap<String, (FileVersion, Instant)>,
    /// Versions the database knows (queued once, whatever became of them).
    known: HashSet<FileVersion>,
    /// Locations already warned about (a format that cannot be told).
    warned: HashSet<String>,
    next_poll: Instant,
}

impl Watch {
    /// A watch that polls at once.
    pub fn new(config: WatchConfig) -> Watch {
        Watch {
            config,
            pending: HashMap::new(),
            known: HashSet::new(),
            warned: HashSet::new(),
            next_poll: Instant::now(),
        }
    }

    /// Whether the next listing is due.
    pub fn due(&self) -> bool {
        Instant::now() >= self.next_poll
    }

    /// Forgets unsettled files (another process leads now).
    pub fn pause(&mut self) {
        self.pending.clear();
        IMPORT_WATCH_UNSETTLED.set(0);
    }

    /// Lists the source once and queues every new file that has settled.
    pub async fn poll(&mut self, store: &Store) {
        self.next_poll = Instant::now() + self.config.poll;
        let listed = match list_present(&self.config.source).await {
            Ok(listed) => listed,
            Err(error) => {
                IMPORT_WATCH_POLLS.with_label_values(&["error"]).inc();
                tracing::warn!(
                    source = self.config.source,
                    "Cannot list the watched import source; will retry: {error}"
                );
                return;
            }
        };
        let now = Instant::now();
        let present: HashSet<&str> = listed.iter().map(|f| f.location.as_str()).collect();
        self.pending
            .retain(|location, _| present.contains(location.as_str()));
        // Versions seen for the first time: the database says whether an
        // import queued them before (this process may have just started).
        let first_sight: Vec<FileVersion> = listed
            .iter()
            .filter(|f| {
                !self.known.contains(*f)
                    && self
                        .pending
                        .get(&f.location)
                        .is_none_or(|(seen, _)| seen != *f)
            })
            .cloned()
            .collect();
        if !first_sight.is_empty() {
            match store.known_versions(&first_sight).await {
                Ok(known) => {
                    for (file, known) in first_sight.into_iter().zip(known) {
                        if known {
                            self.pending.remove(&file.location);
                            self.known.insert(file);
                        } else {
                            self.pending.insert(file.location.clone(), (file, now));
                        }
                    }
                }
                Err(error) => {
                    IMPORT_WATCH_POLLS.with_label_values(&["error"]).inc();
                    tracing::warn!(%error, "Cannot check the watched files against the database; will retry.");
                    return;
                }
            }
        }
        let settled: Vec<FileVersion> = self
            .pending
            .values()
            .filter(|(_, since)| now.duration_since(*since) >= self.config.settle)
            .map(|(file, _)| file.clone())
            .collect();
        for file in settled {
            self.queue(store, file).await;
        }
        IMPORT_WATCH_UNSETTLED.set(self.pending.len() as i64);
        IMPORT_WATCH_POLLS.with_label_values(&["ok"]).inc();
    }

    /// Queues one import job for `file`.
    async fn queue(&mut self, store: &Store, file: FileVersion) {
        let (job, unreadable) = plan_import_files(
            &self.config.source,
            vec![file.clone()],
            self.config.format,
            Vec::new(),
        );
        if let Some((location, reason)) = unreadable.into_iter().next() {
            if self.warned.insert(location.clone()) {
                tracing::warn!(
                    file = location,
                    "Watched file not imported: {reason} (set aggregator.import_format)."
                );
            }
            return;
        }
        match store.queue_import(&job, Requeue::Never, now_ms()).await {
            Ok(queued) => {
                self.pending.remove(&file.location);
                match queued.job_id {
                    Some(id) => {
                        IMPORT_WATCH_QUEUED.inc();
                        tracing::info!(
                            job = id,
                            file = file.location,
                            bytes = file.size,
                            "New file in the watched source: import queued."
                        );
                    }
                    None => {
                        let reason = queued.files[0].reason.clone().unwrap_or_default();
                        tracing::info!(file = file.location, "Watched file not queued: {reason}.");
                    }
                }
                self.known.insert(file);
            }
            Err(error) => {
                tracing::warn!(%error, file = file.location, "Cannot queue the watched file; will retry.")
            }
        }
    }
}

/// Queues one import job for the object at `location`, from a push
/// notification: `size` and `etag` are the notification's (the version it
/// announces); either missing is read from the object itself. A
/// notification delivered twice queues nothing the second time.
///
/// Fails when the object cannot be reached, its format cannot be told, or
/// the database refuses.
pub async fn queue_object(
    store: &Store,
    location: &str,
    size: Option<i64>,
    etag: Option<&str>,
    format: Option<Format>,
) -> Result<store::jobs::Queued, String> {
    let file = match (size, etag) {
        (Some(size), Some(etag)) => FileVersion {
            location: location.to_owned(),
            size,
            version: etag.trim_matches('"').to_owned(),
        },
        _ => super::source::stat(location).await?,
    };
    let (job, unreadable) = plan_import_files(location, vec![file], format, Vec::new());
    if let Some((_, reason)) = unreadable.into_iter().next() {
        return Err(reason);
    }
    store
        .queue_import(&job, Requeue::Never, now_ms())
        .await
        .map_err(|e| e.to_string())
}
