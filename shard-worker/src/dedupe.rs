//! The per-partition dedupe window: the 128-bit hashes of the event ids seen
//! within the last `window_ms` of message time, each with a digest of the
//! event's content so that a repeated id with different content shows.
//!
//! Entries are kept in offset order so that the lowest offset still inside
//! the window is the front of the queue; that offset is stored with the fence
//! as `dedupe_from_offset`, and a new owner re-reads from there to rebuild
//! the window before counting anything.
//!
//! # The window's clock
//!
//! Ids leave the window when the window's clock is `window_ms` past their
//! message time. The clock is the newest message time seen, but never later
//! than the wall clock: a producer whose clock runs ahead cannot empty the
//! window (and so let a retry count twice), nor stop eviction until real time
//! catches up. The clock at each partial's end is stored with the fence
//! (`dedupe_clock_ms`), and a rebuild never lets its clock pass that value, so
//! a new owner evicts no more than the old one had.
//!
//! # The cap
//!
//! Each window holds at most `max_ids` ids. When a new id would exceed it,
//! the oldest id leaves early and `evicted_by_cap` counts it: a retry of that
//! event would then be counted again, so the cap is sized well above a busy
//! partition's ids per window (see the book's configuration reference).
//!
//! A rebuild cannot tell which of the ids it reads the old owner held: a
//! retry at or after `dedupe_from_offset` of an id first seen before it was
//! a repeat to the old owner (nothing inserted) but is new to the rebuild.
//! Had such ids counted against the cap, each would push out an id the old
//! owner still held, and a later retry of that id would count twice. So the
//! ids a rebuild inserts sit beside the cap (`rebuilt`): the cap binds the
//! ids the new owner inserts itself, exactly as it bound the old owner's,
//! and the rebuilt ids leave from the front as they would have. Once the
//! last of them has left, the window is held to `max_ids` again. For that
//! while a window may hold up to `max_ids` plus the ids the rebuild read.

use std::collections::VecDeque;

use xxhash_rust::xxh3::xxh3_128;

use crate::id_table::{tag_of, IdTable};

/// One id in the window, in the order it was first seen.
struct Entry {
    /// The id's 128-bit hash, as two halves (an `u128` would pad the entry
    /// to 48 bytes); the low half is the table's hash.
    id: [u64; 2],
    /// Digest of the content first seen with the id.
    digest: u64,
    offset: i64,
    time_ms: i64,
}

/// What a sighting of an event id means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// Not seen inside the window: count it.
    First,
    /// Seen before with the same content: a retry, not counted.
    Repeat,
    /// Seen before with different content: not counted, and dead-lettered
    /// as a conflicting duplicate so that the difference is visible.
    Conflict,
}

/// An event id's 128-bit hash, by which the window knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdHash([u64; 2]);

impl IdHash {
    /// The hash of `event_id`.
    pub fn of(event_id: &str) -> IdHash {
        let hash = xxh3_128(event_id.as_bytes());
        IdHash([hash as u64, (hash >> 64) as u64])
    }
}

/// Ids seen in one partition within the window.
pub struct DedupeWindow {
    window_ms: i64,
    max_ids: usize,
    /// Every id held, oldest first.
    order: VecDeque<Entry>,
    /// The sequence number of `order`'s front: each entry's is its position
    /// plus this, so that positions survive eviction from the front.
    front_seq: u64,
    /// The entries' sequence numbers (low 32 bits) by id. `max_ids` is
    /// below 2^32, so the low bits name one entry.
    table: IdTable,
    /// The window's clock: newest message time, held at or below `ceiling_ms`.
    clock_ms: i64,
    /// The wall clock now: the latest the clock may reach.
    ceiling_ms: i64,
    /// Messages below this offset are a rebuild of what an earlier owner saw…
    rebuild_until: i64,
    /// …and the clock may not pass that owner's clock at the fence while reading them.
    rebuild_ceiling_ms: i64,
    /// Ids the rebuild inserted, while any of them is held: room beside the cap.
    rebuilt: usize,
    evicted_by_cap: u64,
}

impl DedupeWindow {
    /// An empty window spanning `window_ms` of message time, holding at
    /// most `max_ids` ids.
    pub fn new(window_ms: i64, max_ids: usize) -> DedupeWindow {
        DedupeWindow {
            window_ms,
            max_ids: max_ids.clamp(1, IdTable::MAX_IDS),
            order: VecDeque::new(),
            front_seq: 0,
            table: IdTable::new(),
            clock_ms: i64::MIN,
            ceiling_ms: i64::MAX,
            rebuild_until: i64::MIN,
            rebuild_ceiling_ms: i64::MAX,
            rebuilt: 0,
            evicted_by_cap: 0,
        }
    }

    /// While reading offsets below `next_offset` (the rebuild after a
    /// claim), holds the clock at or below `clock_ms`, the clock the previous
    /// owner had at the fence (`i64::MAX` when it stored none), and keeps the
    /// ids it inserts beside the cap: the rebuilt window then holds at least
    /// every id that owner still held.
    pub fn rebuild_until(&mut self, next_offset: i64, clock_ms: i64) {
        self.rebuild_until = next_offset;
        self.rebuild_ceiling_ms = clock_ms;
    }

    /// Sets the latest time the clock may reach: the wall clock before each
    /// batch, or the fence's `dedupe_clock_ms` while rebuilding.
    pub fn set_ceiling(&mut self, ceiling_ms: i64) {
        self.ceiling_ms = ceiling_ms;
    }

    /// The window's clock (ms), `None` before any message: stored with the
    /// fence as `dedupe_clock_ms`.
    pub fn clock_ms(&self) -> Option<i64> {
        (self.clock_ms != i64::MIN).then_some(self.clock_ms)
    }

    /// Records `event_id`, whose content hashes to `digest`, seen at `offset`
    /// and message time `time_ms`, and says what the sighting means.
    pub fn sight(&mut self, event_id: &str, digest: u64, offset: i64, time_ms: i64) -> Sighting {
        self.sight_hashed(IdHash::of(event_id), digest, offset, time_ms)
    }

    /// Prefetches the table slot where `id` would be found, so that its sighting
    /// a few events later finds it in the cache. The table is far larger
    /// than the cache, and a probe that waits on memory also stalls the
    /// branches after it; touched a few ids ahead, the misses overlap.
    #[inline]
    pub fn touch(&self, id: IdHash) {
        self.table.touch(tag_of(id.0[0]));
    }

    /// [`DedupeWindow::sight`] of an id already hashed.
    pub fn sight_hashed(&mut self, id: IdHash, digest: u64, offset: i64, time_ms: i64) -> Sighting {
        let id = id.0;
        let ceiling = if offset < self.rebuild_until {
            self.rebuild_ceiling_ms.min(self.ceiling_ms)
        } else {
            self.ceiling_ms
        };
        let time_ms = time_ms.min(ceiling);
        if time_ms > self.clock_ms {
            self.clock_ms = time_ms;
            self.evict();
        }
        let tag = tag_of(id[0]);
        let at = |seq: u32| seq.wrapping_sub(self.front_seq as u32) as usize;
        if let Some(seq) = self.table.find(tag, |seq| self.order[at(seq)].id == id) {
            return match self.order[at(seq)].digest == digest {
                true => Sighting::Repeat,
                false => Sighting::Conflict,
            };
        }
        if self.table.needs_room() {
            self.reindex();
        }
        let seq = (self.front_seq + self.order.len() as u64) as u32;
        self.table.insert(tag, seq);
        // An entry never carries a time past the clock, so the queue stays in
        // time order for eviction even when clamped.
        self.order.push_back(Entry {
            id,
            digest,
            offset,
            time_ms: time_ms.min(self.clock_ms),
        });
        if offset < self.rebuild_until {
            self.rebuilt += 1;
        }
        while self.order.len() > (self.max_ids + self.rebuilt).min(IdTable::MAX_IDS) {
            self.pop_front();
            self.evicted_by_cap += 1;
        }
        Sighting::First
    }

    fn evict(&mut self) {
        let horizon = self.clock_ms.saturating_sub(self.window_ms);
        while self
            .order
            .front()
            .is_some_and(|front| front.time_ms < horizon)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(front) = self.order.pop_front() {
            self.table
                .remove(tag_of(front.id[0]), self.front_seq as u32);
            self.front_seq += 1;
        }
        // The rebuilt ids are the front of the queue: once the front is an
        // id of the new owner's own, the room beside the cap is gone.
        if self.rebuilt > 0
            && self
                .order
                .front()
                .is_none_or(|front| front.offset >= self.rebuild_until)
        {
            self.rebuilt = 0;
        }
    }

    /// Indexes every entry again in a table with room to grow.
    fn reindex(&mut self) {
        self.table.rebuild(self.order.len());
        for (position, entry) in self.order.iter().enumerate() {
            self.table.insert(
                tag_of(entry.id[0]),
                (self.front_seq + position as u64) as u32,
            );
        }
    }

    /// The lowest offset whose id is still inside the window, or `next_offset`
    /// when the window is empty.
    pub fn dedupe_from_offset(&self, next_offset: i64) -> i64 {
        self.order
            .front()
            .map_or(next_offset, |e| e.offset.min(next_offset))
    }

    /// Ids currently held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Ids that left early because the window was full, since the last call.
    pub fn take_evicted_by_cap(&mut self) -> u64 {
        std::mem::take(&mut self.evicted_by_cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAME: u64 = 7;

    fn first(window: &mut DedupeWindow, id: &str, offset: i64, time_ms: i64) -> bool {
        window.sight(id, SAME, offset, time_ms) == Sighting::First
    }

    #[test]
    fn repeats_inside_the_window_are_duplicates() {
        let mut window = DedupeWindow::new(1_000, 100);
        assert!(first(&mut window, "a", 0, 10));
        assert!(!first(&mut window, "a", 1, 900));
        assert!(first(&mut window, "b", 2, 1_000));
        assert_eq!(window.dedupe_from_offset(3), 0);
    }

    #[test]
    fn ids_leave_the_window_with_message_time() {
        let mut window = DedupeWindow::new(1_000, 100);
        first(&mut window, "a", 0, 0);
        first(&mut window, "b", 1, 500);
        first(&mut window, "c", 2, 1_200);
        assert_eq!(window.dedupe_from_offset(3), 1);
        assert!(first(&mut window, "a", 3, 1_300), "a left the window");
        assert_eq!(window.len(), 3);
    }

    #[test]
    fn a_clock_running_ahead_does_not_empty_the_window() {
        let now = 10_000_000;
        let mut window = DedupeWindow::new(900_000, 100);
        window.set_ceiling(now);
        first(&mut window, "a", 0, now - 60_000);
        // A producer an hour ahead: read as now, so "a" stays.
        assert!(first(&mut window, "ahead", 1, now + 3_600_000));
        assert_eq!(window.clock_ms(), Some(now));
        assert!(
            !first(&mut window, "a", 2, now - 30_000),
            "the retry of a is a duplicate"
        );
        // Eviction goes on with real time.
        window.set_ceiling(now + 900_000);
        assert!(first(&mut window, "b", 3, now + 900_000));
        assert_eq!(
            window.len(),
            2,
            "a left, the early message stayed until its clamped time passes"
        );
    }

    #[test]
    fn a_rebuild_evicts_no_more_than_the_previous_owner() {
        // The previous owner read "a", then "ahead" clamped to its wall clock
        // 10_000, and stopped with its clock at 10_000.
        let mut window = DedupeWindow::new(1_000, 100);
        window.rebuild_until(2, 10_000);
        window.set_ceiling(50_000); // much later now
        first(&mut window, "a", 0, 9_500);
        first(&mut window, "ahead", 1, 60_000);
        assert_eq!(window.clock_ms(), Some(10_000));
        assert!(
            !first(&mut window, "a", 2, 9_600),
            "a retry of a is still a duplicate after the rebuild"
        );
    }

    #[test]
    fn different_content_under_one_id_is_a_conflict() {
        let mut window = DedupeWindow::new(1_000, 100);
        assert_eq!(window.sight("a", 1, 0, 0), Sighting::First);
        assert_eq!(window.sight("a", 1, 1, 0), Sighting::Repeat);
        assert_eq!(window.sight("a", 2, 2, 0), Sighting::Conflict);
    }

    #[test]
    fn sequence_numbers_wrap_past_32_bits() {
        let mut window = DedupeWindow::new(1_000, 3);
        window.front_seq = u64::from(u32::MAX) - 1;
        for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            assert!(first(&mut window, id, i as i64, 0));
        }
        assert_eq!(window.len(), 3);
        for (i, id) in ["c", "d", "e"].iter().enumerate() {
            assert_eq!(
                window.sight(id, SAME, 10 + i as i64, 0),
                Sighting::Repeat,
                "{id}"
            );
        }
        assert_eq!(window.sight("e", SAME + 1, 20, 0), Sighting::Conflict);
        assert!(first(&mut window, "a", 21, 0), "a was evicted by the cap");
    }

    /// The trace of a rebuild under a binding cap: the old owner held
    /// {b, c, d} at the fence, its `dedupe_from_offset` at b; the rebuild
    /// from there also reads the retry of a (first seen before b), which
    /// must not push b out.
    #[test]
    fn a_rebuild_under_the_cap_keeps_every_id_the_old_owner_held() {
        let old_owner = |window: &mut DedupeWindow| {
            assert!(first(window, "a", 0, 0));
            assert!(first(window, "b", 1, 0));
            assert!(first(window, "c", 2, 0));
            assert!(!first(window, "a", 3, 0), "the retry of a is a repeat");
            assert!(first(window, "d", 4, 0), "a leaves by the cap");
        };
        let mut old = DedupeWindow::new(i64::MAX / 4, 3);
        old_owner(&mut old);
        let from = old.dedupe_from_offset(5);
        assert_eq!((from, old.len()), (1, 3));

        let mut rebuilt = DedupeWindow::new(i64::MAX / 4, 3);
        rebuilt.rebuild_until(5, i64::MAX);
        for (offset, id) in ["b", "c", "a", "d"].iter().enumerate() {
            rebuilt.sight(id, SAME, from + offset as i64, 0);
        }
        assert_eq!(rebuilt.take_evicted_by_cap(), 0);
        for (offset, id) in ["b", "c", "d"].iter().enumerate() {
            assert_eq!(
                rebuilt.sight(id, SAME, 5 + offset as i64, 0),
                Sighting::Repeat,
                "the old owner held {id}, so its retry is not counted again"
            );
            assert_eq!(old.sight(id, SAME, 5 + offset as i64, 0), Sighting::Repeat);
        }

        // New ids: the cap binds the new owner's own ids as it bound the old
        // owner's, the rebuilt ids leave from the front, and once they are
        // gone the window is back at the cap.
        for (offset, id) in ["e", "f", "g"].iter().enumerate() {
            assert!(first(&mut rebuilt, id, 8 + offset as i64, 0));
            assert!(first(&mut old, id, 8 + offset as i64, 0));
        }
        assert_eq!((rebuilt.len(), old.len()), (7, 3));
        for (offset, id) in ["h", "i", "j", "k"].iter().enumerate() {
            assert!(first(&mut rebuilt, id, 11 + offset as i64, 0));
        }
        assert_eq!(rebuilt.len(), 3, "every rebuilt id has left");
        assert!(!first(&mut rebuilt, "k", 15, 0));
        assert!(first(&mut rebuilt, "h", 16, 0), "h left by the cap");
    }

    /// Without a cap that binds, a rebuild holds exactly what the old owner held.
    #[test]
    fn a_rebuild_with_room_holds_what_the_old_owner_held() {
        let mut rebuilt = DedupeWindow::new(i64::MAX / 4, 100);
        rebuilt.rebuild_until(3, i64::MAX);
        for (offset, id) in ["a", "b", "a"].iter().enumerate() {
            rebuilt.sight(id, SAME, offset as i64, 0);
        }
        assert_eq!(rebuilt.len(), 2);
        for offset in 3..200 {
            assert!(first(&mut rebuilt, &format!("n{offset}"), offset, 0));
        }
        assert_eq!(rebuilt.len(), 100);
    }

    #[test]
    fn the_cap_evicts_the_oldest_and_counts_it() {
        let mut window = DedupeWindow::new(i64::MAX / 4, 3);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            assert!(first(&mut window, id, i as i64, 0));
        }
        assert_eq!((window.len(), window.take_evicted_by_cap()), (3, 1));
        assert_eq!(window.dedupe_from_offset(4), 1);
        assert!(first(&mut window, "a", 4, 0), "a was evicted by the cap");
    }
}
