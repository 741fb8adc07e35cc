//! The job rules that are decided in Rust, as pure functions: which
//! dependencies a job may have, when an attempt is retried and when it is
//! the last, what a lease takeover records, what an import of a file comes
//! to, and why a job is cancelled for its dependencies.
//!
//! The rules that select rows (which task runs next, which job is
//! complete) are SQL in [`super::ops`], written once for both databases.

use super::{FileVersion, ImportOutcome, LocalDays, Requeue, Scope, State};
use schemas::zone::Zone;

/// Longest wait between a task's attempts, before jitter.
pub const RETRY_CAP_MS: u64 = 10 * 60 * 1000;

/// What a task taken over from a runner whose lease ran out records as its
/// last error.
pub const LEASE_EXPIRED: &str = "its runner stopped (lease expired)";

/// The local days a backfill of `scope` replaces, zone by zone: in each
/// zone only the local days whose every instant lies inside the scope's UTC
/// days. A local day that reaches past either edge keeps its streamed rows,
/// which the job's files (cut by UTC day) cannot hold whole. Zones with no
/// whole day are left out.
pub fn local_scopes(zones: &[Zone], scope: &Scope) -> Vec<LocalDays> {
    zones
        .iter()
        .filter_map(|zone| {
            let (from, to) = zone.whole_local_days(scope.from, scope.to);
            (from < to).then(|| LocalDays {
                zone: zone.name().to_owned(),
                from,
                to,
            })
        })
        .collect()
}

/// Checks a new job's dependencies: `after` pairs each id with the state of
/// that job, `None` when there is no such job. Refuses an unknown job (a
/// job can only wait on one that exists, which is why dependencies never
/// form a cycle) and one that failed or was cancelled (the new job would
/// never run).
pub fn check_after(after: &[(i64, Option<State>)]) -> Result<(), String> {
    for &(id, state) in after {
        match state {
            None => {
                return Err(format!(
                    "--after {id}: there is no job {id}; a job can only wait on one that exists \
                     (so no cycle can form)"
                ))
            }
            Some(state @ (State::Failed | State::Cancelled)) => {
                return Err(format!(
                    "--after {id}: job {id} {state}, so a job after it would never run"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The wait before attempt `attempt + 1`: tally's one retry policy
/// ([`retry::delay_ms`]), with the attempt count kept in the database.
pub fn backoff(base_ms: u64, attempt: i32, seed: u64) -> u64 {
    retry::delay_ms(base_ms, RETRY_CAP_MS, attempt.max(1) as u32, seed)
}

/// When a task whose attempt `attempt` failed at `now` runs again: after a
/// backoff while it has attempts left of `max_attempts`, never (`None`: the
/// task fails, and its job with it) once it has used them all.
pub fn retry_at(attempt: i32, max_attempts: i32, base_ms: u64, now: i64, seed: u64) -> Option<i64> {
    (attempt < max_attempts).then(|| now + backoff(base_ms, attempt, seed) as i64)
}

/// Whether a claimed task has already been started more often than
/// `max_attempts` allows: its runners kept stopping before it finished.
pub fn exhausted(attempts: i32, max_attempts: i32) -> bool {
    attempts > max_attempts
}

/// What a claim records as the task's last error, given the state it was
/// claimed in: a running task was taken over from a runner whose lease ran
/// out; a pending one keeps its last error.
pub fn takeover_note(claimed_from: State) -> Option<&'static str> {
    (claimed_from == State::Running).then_some(LEASE_EXPIRED)
}

/// The jobs to cancel because a job they wait on failed or was cancelled,
/// from `(job, dependency, its state)` sorted by job then dependency: each
/// job once, with the reason naming its first such dependency.
pub fn orphans(found: &[(i64, i64, State)]) -> Vec<(i64, String)> {
    let mut orphans: Vec<(i64, String)> = Vec::new();
    for &(id, after, state) in found {
        if orphans.last().is_none_or(|(last, _)| *last != id) {
            orphans.push((
                id,
                format!("cancelled: job {after}, which it waits on, {state}"),
            ));
        }
    }
    orphans
}

/// What an import of `file` (content `digest`, for local files) comes to,
/// given the version of its location imported before, if any: `(job,
/// size, version, digest)`. `None` when it is the first: import it.
pub fn judge_import(
    file: &FileVersion,
    digest: Option<&str>,
    imported: Option<(i64, i64, String, Option<String>)>,
) -> Option<ImportOutcome> {
    let (job_id, size, version, old_digest) = imported?;
    Some(if size == file.size && version == file.version {
        ImportOutcome::AlreadyImported { job_id }
    } else if size == file.size && digest.is_some() && old_digest.as_deref() == digest {
        ImportOutcome::Unchanged { job_id }
    } else {
        ImportOutcome::Conflict {
            message: conflict_message(file, size, &version, job_id),
        }
    })
}

/// The conflict report for `new`, a version of a location that was already
/// imported as `old` by job `job_id`: what happened and what to do.
pub fn conflict_message(
    new: &FileVersion,
    old_size: i64,
    old_version: &str,
    job_id: i64,
) -> String {
    format!(
        "conflict: {} changed after job {job_id} imported it (size {old_size}, version {old_version}; now size {}, version {}). \
         Its new content was not counted. If it holds new orders, publish it under a new name; if it corrects \
         the old file, run `tally backfill` over the days it covers from the corrected files",
        new.location, new.size, new.version
    )
}

/// Why a version seen before is not queued again: `state` is its
/// `tally_imports` state, `job_state` that of the job that queued it.
/// `None`: queue it.
pub fn skip_reason(state: &str, job_id: i64, job_state: State, requeue: Requeue) -> Option<String> {
    match state {
        "imported" => Some(format!("already imported by job {job_id}")),
        "unchanged" => Some(format!("unchanged: the content job {job_id} imported")),
        "superseded" => Some(format!(
            "superseded: it changed before job {job_id} read it"
        )),
        "conflict" => Some(format!("conflict reported by job {job_id}")),
        _ if !job_state.is_final() => Some(format!("already queued in job {job_id}")),
        _ if requeue == Requeue::Never => Some(format!(
            "job {job_id} {job_state} before importing it; `tally import` queues it again"
        )),
        _ => None,
    }
}

/// The `tally_imports` state a version queued for a task gets when the task
/// ends without importing it.
pub fn row_state(outcome: &ImportOutcome) -> Option<&'static str> {
    match outcome {
        ImportOutcome::Superseded => Some("superseded"),
        ImportOutcome::Unchanged { .. } => Some("unchanged"),
        ImportOutcome::Conflict { .. } => Some("conflict"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_is_imported_once_and_only_a_new_content_conflicts() {
        let file = FileVersion {
            location: "/in/a.csv".into(),
            size: 10,
            version: "t2".into(),
        };
        assert_eq!(judge_import(&file, Some("d1"), None), None);
        let same = Some((4, 10, "t2".to_owned(), Some("d1".to_owned())));
        assert_eq!(
            judge_import(&file, Some("d1"), same),
            Some(ImportOutcome::AlreadyImported { job_id: 4 })
        );
        let touched = Some((4, 10, "t1".to_owned(), Some("d1".to_owned())));
        assert_eq!(
            judge_import(&file, Some("d1"), touched.clone()),
            Some(ImportOutcome::Unchanged { job_id: 4 })
        );
        let rewritten = Some((4, 10, "t1".to_owned(), Some("d0".to_owned())));
        assert!(
            matches!(judge_import(&file, Some("d1"), rewritten), Some(ImportOutcome::Conflict { message }) if message.contains("job 4"))
        );
        // Without a digest (an object), another version is a conflict.
        assert!(matches!(
            judge_import(&file, None, touched),
            Some(ImportOutcome::Conflict { .. })
        ));
    }

    #[test]
    fn dependencies_must_exist_and_be_able_to_succeed() {
        assert_eq!(
            check_after(&[
                (1, Some(State::Succeeded)),
                (2, Some(State::Pending)),
                (3, Some(State::Running))
            ]),
            Ok(())
        );
        assert!(check_after(&[(1, Some(State::Pending)), (9, None)])
            .unwrap_err()
            .contains("no job 9"));
        assert!(check_after(&[(4, Some(State::Failed))])
            .unwrap_err()
            .contains("job 4 failed"));
        assert!(check_after(&[(5, Some(State::Cancelled))])
            .unwrap_err()
            .contains("never run"));
    }

    #[test]
    fn attempts_are_retried_with_growing_waits_until_the_last() {
        let now = 1_000_000;
        let first = retry_at(1, 3, 1_000, now, 7).unwrap();
        let second = retry_at(2, 3, 1_000, now, 7).unwrap();
        assert!(first > now && second > now);
        assert_eq!(
            retry_at(3, 3, 1_000, now, 7),
            None,
            "the last attempt fails the task"
        );
        assert!(backoff(1_000, 50, 7) <= RETRY_CAP_MS + RETRY_CAP_MS / 2);
        assert!(!exhausted(3, 3) && exhausted(4, 3));
        assert_eq!(takeover_note(State::Running), Some(LEASE_EXPIRED));
        assert_eq!(takeover_note(State::Pending), None);
    }

    #[test]
    fn an_orphan_is_cancelled_once_naming_its_first_failed_dependency() {
        let found = [
            (5, 2, State::Failed),
            (5, 3, State::Cancelled),
            (7, 3, State::Cancelled),
        ];
        assert_eq!(
            orphans(&found),
            vec![
                (5, "cancelled: job 2, which it waits on, failed".to_owned()),
                (
                    7,
                    "cancelled: job 3, which it waits on, cancelled".to_owned()
                ),
            ]
        );
        assert!(orphans(&[]).is_empty());
    }

    #[test]
    fn a_file_seen_before_is_skipped_unless_an_operator_requeues_a_failure() {
        let skip = |state, job_state, requeue| skip_reason(state, 3, job_state, requeue);
        assert!(skip("imported", State::Succeeded, Requeue::AfterFailure).is_some());
        assert!(skip("queued", State::Running, Requeue::AfterFailure).is_some());
        assert!(skip("queued", State::Failed, Requeue::Never).is_some());
        assert_eq!(skip("queued", State::Failed, Requeue::AfterFailure), None);
        assert_eq!(row_state(&ImportOutcome::Superseded), Some("superseded"));
        assert_eq!(row_state(&ImportOutcome::Imported { keys: 1 }), None);
    }
}
