//! The per-partition dedupe window: the 128-bit hashes of the event ids seen
//! within the last `window_ms` of message time.
//!
//! Entries are kept in offset order so that the lowest offset still inside
//! the window is the front of the queue; that offset is stored with the fence
//! as `dedupe_from_offset`, and a new owner re-reads from there to rebuild
//! the window before counting anything.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_128;

/// Keys are already uniform 128-bit hashes, so the map only needs their low bits.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type IdMap = HashMap<u128, i64, BuildHasherDefault<PrehashedHasher>>;

struct Entry {
    offset: i64,
    time_ms: i64,
    id: u128,
}

/// Ids seen in one partition within the window.
pub struct DedupeWindow {
    window_ms: i64,
    seen: IdMap,
    order: VecDeque<Entry>,
    newest_ms: i64,
}

impl DedupeWindow {
    /// An empty window spanning `window_ms` of message time.
    pub fn new(window_ms: i64) -> DedupeWindow {
        DedupeWindow { window_ms, seen: IdMap::default(), order: VecDeque::new(), newest_ms: i64::MIN }
    }

    /// Records `event_id` seen at `offset` and message time `time_ms`.
    /// Returns true the first time an id is seen inside the window.
    pub fn first_sighting(&mut self, event_id: &str, offset: i64, time_ms: i64) -> bool {
        let id = xxh3_128(event_id.as_bytes());
        if time_ms > self.newest_ms {
            self.newest_ms = time_ms;
            self.evict();
        }
        match self.seen.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(offset);
                self.order.push_back(Entry { offset, time_ms, id });
                true
            }
        }
    }

    fn evict(&mut self) {
        let horizon = self.newest_ms.saturating_sub(self.window_ms);
        while let Some(front) = self.order.front() {
            if front.time_ms >= horizon {
                break;
            }
            if self.seen.get(&front.id) == Some(&front.offset) {
                self.seen.remove(&front.id);
            }
            self.order.pop_front();
        }
    }

    /// The lowest offset whose id is still inside the window, or `next_offset`
    /// when the window is empty.
    pub fn dedupe_from_offset(&self, next_offset: i64) -> i64 {
        self.order.front().map_or(next_offset, |e| e.offset.min(next_offset))
    }

    /// Ids currently held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_inside_the_window_are_duplicates() {
        let mut window = DedupeWindow::new(1_000);
        assert!(window.first_sighting("a", 0, 10));
        assert!(!window.first_sighting("a", 1, 900));
        assert!(window.first_sighting("b", 2, 1_000));
        assert_eq!(window.dedupe_from_offset(3), 0);
    }

    #[test]
    fn ids_leave_the_window_with_message_time() {
        let mut window = DedupeWindow::new(1_000);
        window.first_sighting("a", 0, 0);
        window.first_sighting("b", 1, 500);
        window.first_sighting("c", 2, 1_200);
        assert_eq!(window.dedupe_from_offset(3), 1);
        assert!(window.first_sighting("a", 3, 1_300), "a left the window");
        assert_eq!(window.len(), 3);
    }
}
