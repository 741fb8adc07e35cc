//! The set of `event_id` digests a backfill task has counted.
//!
//! A task of 10 million rows keeps millions of 128-bit digests, far more than
//! any cache holds, so nearly every lookup misses to memory. Looked up one
//! after another, those misses cost most of a task's time. [`IdSet::insert_all`]
//! prefetches the slot of the digest a few places ahead before it inserts
//! the current one, so the processor overlaps their misses instead of
//! waiting for each in turn.

/// An open-addressing set of 128-bit digests (linear
/// probing; 0 marks an empty slot, and the digest 0 is kept aside).
pub struct IdSet {
    slots: Vec<u128>,
    len: usize,
    has_zero: bool,
}

/// How far ahead `insert_all` touches slots.
const AHEAD: usize = 16;

impl Default for IdSet {
    fn default() -> IdSet {
        IdSet {
            slots: vec![0; 1 << 10],
            len: 0,
            has_zero: false,
        }
    }
}

impl IdSet {
    /// Digests held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len + usize::from(self.has_zero)
    }

    /// The slot where a probe for `digest` starts. xxh3's low bits are as
    /// random as its high ones.
    fn home(&self, digest: u128) -> usize {
        digest as usize & (self.slots.len() - 1)
    }

    /// Makes room for `more` digests without growing (at most 70 % full).
    pub fn reserve(&mut self, more: usize) {
        let needed = (self.len + more) * 10 / 7 + 1;
        if needed <= self.slots.len() {
            return;
        }
        let old = std::mem::replace(&mut self.slots, vec![0; needed.next_power_of_two()]);
        for digest in old.into_iter().filter(|&d| d != 0) {
            let mut at = self.home(digest);
            while self.slots[at] != 0 {
                at = (at + 1) & (self.slots.len() - 1);
            }
            self.slots[at] = digest;
        }
    }

    fn insert_reserved(&mut self, digest: u128) -> bool {
        if digest == 0 {
            return !std::mem::replace(&mut self.has_zero, true);
        }
        let mask = self.slots.len() - 1;
        let mut at = self.home(digest);
        loop {
            match self.slots[at] {
                0 => {
                    self.slots[at] = digest;
                    self.len += 1;
                    return true;
                }
                held if held == digest => return false,
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Adds `digest`; true when it was not there yet.
    pub fn insert(&mut self, digest: u128) -> bool {
        self.reserve(1);
        self.insert_reserved(digest)
    }

    /// Adds each digest in order; `fresh[i]` tells whether `digests[i]` was
    /// new (so of two equal digests only the first is fresh).
    pub fn insert_all(&mut self, digests: &[u128], fresh: &mut Vec<bool>) {
        self.reserve(digests.len());
        fresh.clear();
        fresh.reserve(digests.len());
        for (i, &digest) in digests.iter().enumerate() {
            if let Some(&ahead) = digests.get(i + AHEAD) {
                schemas::cache::prefetch(&self.slots[self.home(ahead)]);
            }
            fresh.push(self.insert_reserved(digest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn agrees_with_a_hash_set_through_growth_and_repeats() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Digests of a small range of ids, so many repeat, within and across batches; 0 included.
        let digest = |k: u64| {
            if k == 0 {
                0
            } else {
                xxhash_rust::xxh3::xxh3_128(&k.to_le_bytes())
            }
        };
        let digests: Vec<u128> = (0..200_000).map(|_| digest(next() % 150_000)).collect();
        let (mut set, mut reference) = (IdSet::default(), HashSet::new());
        let mut fresh = Vec::new();
        for batch in digests.chunks(7_777) {
            set.insert_all(batch, &mut fresh);
            let expected: Vec<bool> = batch.iter().map(|&d| reference.insert(d)).collect();
            assert_eq!(fresh, expected);
        }
        assert!(!set.insert(digests[0]) && set.insert(u128::MAX));
        assert_eq!(set.len(), reference.len() + 1);
        assert!(set.slots.len() >= set.len * 10 / 7, "at most 70 % full");
    }
}
