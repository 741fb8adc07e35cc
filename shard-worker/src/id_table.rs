//! The dedupe window's index: an open-addressing table of 8-byte slots, each
//! holding 32 bits of an id's hash and the id's sequence number in the
//! window's queue.
//!
//! The window is larger than the cache, so each probe is a cache miss and
//! the misses are the cost. Here a lookup and the insert after it touch one
//! line, and removing the oldest id touches one more. A general hash map
//! keeps control bytes and entries apart, which doubles both.
//!
//! The table never holds two slots of one id. A tag match is only a hint:
//! the caller checks the full 128-bit id against its queue.

/// A slot: `tag << 32 | seq`, or `EMPTY`. Tags have their top bit set, so
/// no slot is `EMPTY`.
const EMPTY: u64 = 0;

/// The tag of a 64-bit id hash: its low 32 bits with the top bit set. Its
/// low bits are the home slot, so slots can move without the full id.
pub(crate) fn tag_of(hash: u64) -> u32 {
    hash as u32 | 0x8000_0000
}

/// Linear probing with backward-shift deletion, at most half full.
pub(crate) struct IdTable {
    slots: Vec<u64>,
    len: usize,
}

impl IdTable {
    /// The most slots a table may have: home slots come from the tag's low
    /// 31 bits.
    const MAX_SLOTS: usize = 1 << 31;

    /// Ids that fit without growing past the cap.
    pub(crate) const MAX_IDS: usize = Self::MAX_SLOTS / 2 - 1;

    pub(crate) fn new() -> IdTable {
        IdTable {
            slots: vec![EMPTY; 16],
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The sequence number of the id tagged `tag` for which `is_id` holds.
    pub(crate) fn find(&self, tag: u32, mut is_id: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.mask();
        let mut at = tag as usize & mask;
        loop {
            let slot = self.slots[at];
            if slot == EMPTY {
                return None;
            }
            if (slot >> 32) as u32 == tag && is_id(slot as u32) {
                return Some(slot as u32);
            }
            at = (at + 1) & mask;
        }
    }

    /// Prefetches the home slot of `tag` (see
    /// [`crate::dedupe::DedupeWindow::touch`]).
    #[inline]
    pub(crate) fn touch(&self, tag: u32) {
        schemas::cache::prefetch(&self.slots[tag as usize & self.mask()]);
    }

    /// Adds an id that is not in the table. Call [`IdTable::needs_room`]
    /// first and [`IdTable::rebuild`] when it says so.
    pub(crate) fn insert(&mut self, tag: u32, seq: u32) {
        let mask = self.mask();
        let mut at = tag as usize & mask;
        while self.slots[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.slots[at] = u64::from(tag) << 32 | u64::from(seq);
        self.len += 1;
    }

    /// True when one more id would fill the table past half.
    pub(crate) fn needs_room(&self) -> bool {
        (self.len + 1) * 2 > self.slots.len()
    }

    /// Starts over with room for `len` ids at a quarter full (twice the
    /// slots when `len` just filled half), ready for every id to be
    /// inserted again.
    pub(crate) fn rebuild(&mut self, len: usize) {
        let slots = (len.max(4) * 4).next_power_of_two().min(Self::MAX_SLOTS);
        self.slots = vec![EMPTY; slots];
        self.len = 0;
    }

    /// Removes the id tagged `tag` with sequence number `seq`, if present.
    pub(crate) fn remove(&mut self, tag: u32, seq: u32) {
        let mask = self.mask();
        let wanted = u64::from(tag) << 32 | u64::from(seq);
        let mut hole = tag as usize & mask;
        loop {
            match self.slots[hole] {
                EMPTY => return,
                slot if slot == wanted => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        // Shift later slots of the cluster back into the hole, unless that
        // would move one before its home slot.
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let slot = self.slots[at];
            if slot == EMPTY {
                break;
            }
            let home = (slot >> 32) as usize & mask;
            // The slot may move to `hole` only if its home is not in (hole, at].
            if (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask) {
                self.slots[hole] = slot;
                hole = at;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model: ids are hashes; the queue is a Vec of them by sequence.
    fn find(table: &IdTable, ids: &[Option<u64>], hash: u64) -> Option<u32> {
        table.find(tag_of(hash), |seq| ids[seq as usize] == Some(hash))
    }

    #[test]
    fn finds_what_it_holds_through_growth_and_removal() {
        // Hashes that collide on their home slots, to build long clusters.
        let hashes: Vec<u64> = (0..3_000u64).map(|i| (i % 7) | (i << 40)).collect();
        let mut ids: Vec<Option<u64>> = Vec::new();
        let mut table = IdTable::new();
        for &hash in &hashes {
            assert_eq!(find(&table, &ids, hash), None);
            if table.needs_room() {
                table.rebuild(table.len());
                for (seq, id) in ids.iter().enumerate() {
                    if let Some(id) = id {
                        table.insert(tag_of(*id), seq as u32);
                    }
                }
            }
            table.insert(tag_of(hash), ids.len() as u32);
            ids.push(Some(hash));
        }
        // Remove every third id, oldest first, and check all the rest.
        for seq in (0..ids.len()).step_by(3) {
            let hash = ids[seq].take().expect("held");
            table.remove(tag_of(hash), seq as u32);
        }
        for (seq, id) in ids.iter().enumerate() {
            let hash = hashes[seq];
            assert_eq!(find(&table, &ids, hash), id.map(|_| seq as u32), "{seq}");
        }
        assert_eq!(table.len(), ids.iter().flatten().count());
    }

    #[test]
    fn removal_wraps_around_the_end() {
        let mut table = IdTable::new();
        let mask = table.mask() as u64;
        // Three ids at the last home slot: the cluster wraps to slots 0 and 1.
        let ids = [Some(mask), Some(mask | 1 << 40), Some(mask | 2 << 40)];
        for (seq, id) in ids.iter().enumerate() {
            table.insert(tag_of(id.unwrap()), seq as u32);
        }
        table.remove(tag_of(ids[0].unwrap()), 0);
        let held = [None, ids[1], ids[2]];
        assert_eq!(find(&table, &held, ids[1].unwrap()), Some(1));
        assert_eq!(find(&table, &held, ids[2].unwrap()), Some(2));
    }
}
