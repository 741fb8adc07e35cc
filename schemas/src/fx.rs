//! Fast hashing for the hot path's small maps: the word-at-a-time hash of
//! rustc's `FxHasher`. Their keys are short ids (merchants, currencies),
//! where it is several times faster than the standard library's SipHash.
//! The keys here are set by the operator or come out of one batch's
//! aggregate, so nobody outside chooses collisions.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` hashed with [`Fx`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// Eight bytes at a time: rotate, xor, multiply.
#[derive(Debug, Default)]
pub struct Fx(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for Fx {
    /// The state, its bits mixed into each other (MurmurHash3's final
    /// mix). Each multiply carries a bit only upwards, so the state's low
    /// bits depend on little but the last word's low bytes, while the table
    /// picks a bucket by the low bits: ids that differ only in their last
    /// characters (`m-00001`, `m-00002`, which land in a word's high bytes)
    /// shared a few buckets, and a lookup among 1,000 merchants took 50 ns.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_i32(&mut self, i: i32) {
        self.add(i as u32 as u64);
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
}

/// Longest text [`short_words`] reads: two words.
pub const SHORT: usize = 16;

/// Two words that, with the length, identify a text of up to [`SHORT`]
/// bytes (an id), so that tables can compare ids as numbers; `None` for a
/// longer one. The words are read straight from the
/// id, overlapping where it is short (as wyhash does): copying it into a
/// zero-padded buffer first stalled every lookup on reading the copy back.
pub fn short_words(id: &str) -> Option<[u64; 2]> {
    let b = id.as_bytes();
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"));
    let half = |at: usize| {
        u64::from(u32::from_le_bytes(
            b[at..at + 4].try_into().expect("four bytes"),
        ))
    };
    Some(match b.len() {
        0 => [0, 0],
        // Every byte is read for lengths 1 to 3: first, middle, last.
        len @ 1..=3 => [
            u64::from(b[0]) | u64::from(b[len / 2]) << 8 | u64::from(b[len - 1]) << 16,
            0,
        ],
        len @ 4..=7 => [half(0) | half(len - 4) << 32, 0],
        len @ 8..=SHORT => [word(0), word(len - 8)],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_differ_hash_apart_and_equal_ones_alike() {
        let mut map: FxMap<(&str, &str, i32), u32> = FxMap::default();
        for (i, m) in ["m", "m-1", "m-10", "merchant-00000001", "merchant-00000002"]
            .iter()
            .enumerate()
        {
            map.insert((m, "EUR", 1), i as u32);
            map.insert((m, "EUR", 2), 10 + i as u32);
        }
        assert_eq!(map.len(), 10);
        assert_eq!(map[&("merchant-00000002", "EUR", 2)], 14);
    }

    #[test]
    fn ids_that_differ_only_at_their_end_spread_over_the_buckets() {
        // What a table of 1,024 buckets looks at: the low 10 bits.
        let buckets: std::collections::HashSet<u64> = (0..1_000)
            .map(|i| {
                let mut hasher = Fx::default();
                std::hash::Hash::hash(&format!("merchant-{i:06}"), &mut hasher);
                hasher.finish() & 1_023
            })
            .collect();
        assert!(buckets.len() > 500, "{} buckets used", buckets.len());
    }
}
