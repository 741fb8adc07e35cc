//! Merchants' time zones: IANA names, checked against the time zone
//! database compiled into tally (chrono-tz; [`TZDB_VERSION`] names its IANA
//! release), and the local calendar day an instant falls on there.
//!
//! A new IANA release reaches tally with a chrono-tz update: raise the
//! `chrono-tz` version in the workspace's `Cargo.toml` and rebuild.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Offset, TimeZone};
use chrono_tz::Tz;

use crate::day::{format_rfc3339_millis, Day, MAX_DAY, MIN_DAY};
use crate::event::Invalid;
use crate::fx::{short_words as words, FxMap, SHORT};

/// The IANA time zone database release compiled in.
pub const TZDB_VERSION: &str = chrono_tz::IANA_TZDB_VERSION;

/// An IANA time zone, such as `Europe/Berlin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(Tz);

impl Zone {
    /// Coordinated Universal Time: the zone of a merchant that has none.
    pub const UTC: Zone = Zone(Tz::UTC);

    /// Reads an IANA name, exactly as the database spells it. The error
    /// gives the value and the reason.
    pub fn parse(name: &str) -> Result<Zone, String> {
        Tz::from_str(name).map(Zone).map_err(|_| {
            format!(
                "{name:?} is not an IANA time zone name (such as Europe/Berlin or Asia/Tokyo) \
                 in the database compiled into tally ({TZDB_VERSION})"
            )
        })
    }

    /// The IANA name.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The local calendar day of the instant `micros` (since the Unix
    /// epoch, UTC) in this zone, with the offset in force at that instant:
    /// daylight saving time included, to the microsecond.
    pub fn local_day(self, micros: i64) -> Day {
        let utc = DateTime::from_timestamp_micros(micros).expect("within chrono's range");
        let date = utc.with_timezone(&self.0).date_naive();
        Day(date.num_days_from_ce() - UNIX_EPOCH_FROM_CE)
    }

    /// The local days `[first, end)` whose every instant lies inside the UTC
    /// days `[from, to)`: the local days a recomputation of those UTC days
    /// sees whole. Empty (`first >= end`) when none does.
    ///
    /// West of UTC the last local day runs past `to` (Pacific/Honolulu's day
    /// D ends at 10:00 UTC on D+1) and is left out; east of UTC the first
    /// one began before `from` and is left out. Local days are read at
    /// every quarter hour within 30 hours of each edge, so a day that a
    /// transition at midnight repeats counts as reaching past the edge.
    pub fn whole_local_days(self, from: Day, to: Day) -> (Day, Day) {
        const STEP: i64 = 15 * 60 * 1_000_000;
        const STEPS: i64 = 30 * MICROS_PER_HOUR / STEP;
        let (start, end) = (
            i64::from(from.0) * MICROS_PER_DAY,
            i64::from(to.0) * MICROS_PER_DAY,
        );
        // The latest local day seen before `from`, the earliest from `to` on.
        let before = (0..=STEPS)
            .map(|k| self.local_day(start - 1 - k * STEP).0)
            .max()
            .expect("at least one step");
        let after = (0..=STEPS)
            .map(|k| self.local_day(end + k * STEP).0)
            .min()
            .expect("at least one step");
        (Day(before + 1), Day(after))
    }

    /// The instant (ms since the Unix epoch) at which local day `day` has
    /// ended for good in this zone: the first instant from which every
    /// later one falls on a later local day. Where a transition repeats the
    /// day's last hour, that is the end of the repeat.
    pub fn day_end_ms(self, day: Day) -> i64 {
        const STEP: i64 = 15 * 60 * 1_000_000;
        let midnight = (i64::from(day.0) + 1) * MICROS_PER_DAY;
        // Every zone's offset lies within 26 hours of UTC.
        let (first, last) = (
            midnight - 26 * MICROS_PER_HOUR,
            midnight + 26 * MICROS_PER_HOUR,
        );
        let mut still = first;
        let mut t = first;
        while t <= last {
            if self.local_day(t) <= day {
                still = t;
            }
            t += STEP;
        }
        // The day ends within the step after `still`; no zone changes its
        // offset twice within 15 minutes, so the local day only rises there.
        let (mut low, mut high) = (still, still + STEP);
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.local_day(mid) <= day {
                low = mid;
            } else {
                high = mid;
            }
        }
        high.div_euclid(1_000) + i64::from(high.rem_euclid(1_000) != 0)
    }

    /// The offset from UTC in force at the instant `micros`, in seconds.
    fn offset_secs(self, micros: i64) -> i64 {
        let utc = DateTime::from_timestamp_micros(micros).expect("within chrono's range");
        let offset = self.0.offset_from_utc_datetime(&utc.naive_utc());
        i64::from(offset.fix().local_minus_utc())
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;
const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// Offsets of (zone, UTC hour) pairs, direct-mapped. An hour is kept only
/// when its zone has the same offset at its first and its last microsecond,
/// so no transition falls inside it (the IANA database never puts two
/// transitions of one zone within an hour of each other). An hour with a
/// transition inside, such as St. John's 05:30 UTC change, is looked up
/// event by event.
pub struct HourCache {
    /// [`SLOTS`] of them once used; none before, so that an unused cache
    /// costs no allocation.
    slots: Box<[Option<Hour>]>,
}

/// Slots of a cache: enough for every hour of a month of late events in a
/// handful of zones, so that a worker's cache stays warm across batches.
const SLOTS: usize = 2_048;

/// A zone (its static name), a UTC hour, and the offset (µs) that holds for
/// all of it, if one does.
type Hour = (&'static str, i64, Option<i64>);

impl Default for HourCache {
    fn default() -> HourCache {
        HourCache {
            slots: Box::new([]),
        }
    }
}

thread_local! {
    /// The cache of this thread's last batch, for its next one.
    static SPARE: std::cell::Cell<Option<HourCache>> = const { std::cell::Cell::new(None) };
}

impl HourCache {
    /// This thread's cache, warm from its earlier batches, or a new one.
    pub fn take() -> HourCache {
        SPARE.with(|spare| spare.take()).unwrap_or_default()
    }

    /// Keeps this cache for the thread's next [`HourCache::take`].
    pub fn keep(self) {
        SPARE.with(|spare| spare.set(Some(self)));
    }

    /// The local day of the instant `micros` in `zone`: [`Zone::local_day`],
    /// with the offsets of whole UTC hours kept here, for a caller that
    /// already knows the zone.
    pub fn local_day(&mut self, zone: Zone, micros: i64) -> Day {
        let offset = if zone == Zone::UTC {
            0
        } else {
            self.offset_micros(zone, micros)
        };
        Day((micros + offset).div_euclid(MICROS_PER_DAY) as i32)
    }

    fn offset_micros(&mut self, zone: Zone, micros: i64) -> i64 {
        if self.slots.is_empty() {
            self.slots = vec![None; SLOTS].into_boxed_slice();
        }
        let hour = micros.div_euclid(MICROS_PER_HOUR);
        let name = zone.name();
        // The zone's name is a static string: its address identifies it.
        let slot = (name.as_ptr() as usize >> 3)
            .wrapping_add(hour as usize)
            .wrapping_mul(0x9e37)
            >> 4
            & (SLOTS - 1);
        let whole = match self.slots[slot] {
            Some((cached, at, whole)) if at == hour && std::ptr::eq(cached, name) => whole,
            _ => {
                let start = hour * MICROS_PER_HOUR;
                let first = zone.offset_secs(start);
                let last = zone.offset_secs(start + MICROS_PER_HOUR - 1);
                let whole = (first == last).then_some(first * 1_000_000);
                self.slots[slot] = Some((name, hour, whole));
                whole
            }
        };
        whole.unwrap_or_else(|| zone.offset_secs(micros) * 1_000_000)
    }
}

/// Days from 0001-01-01 (day 1 in chrono's count) to 1970-01-01.
const UNIX_EPOCH_FROM_CE: i32 = 719_163;

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every merchant's zone at one moment, and the zone of all others: what a
/// worker buckets a batch's local days by.
#[derive(Debug, Clone)]
pub struct Zones {
    by_merchant: FxMap<String, Zone>,
    /// The same, for the lookups of the hot path: ids of up to 16 bytes,
    /// and of 17 to 48.
    short: InlineIds<2>,
    long: InlineIds<{ LONG / 8 }>,
    default: Zone,
    /// The tables are larger than [`TOUCHED_FROM`]: worth a [`Zones::touch`].
    large: bool,
}

/// Tables smaller than this stay in the cache while a batch is decoded, so
/// touching them ahead only costs a hash.
const TOUCHED_FROM: usize = 256 * 1024;

impl PartialEq for Zones {
    fn eq(&self, other: &Zones) -> bool {
        self.by_merchant == other.by_merchant && self.default == other.default
    }
}

impl Eq for Zones {}

impl Default for Zones {
    fn default() -> Zones {
        Zones::new(HashMap::new(), Zone::UTC)
    }
}

impl Zones {
    /// Merchants' zones, and `default` for merchants not among them.
    pub fn new(by_merchant: HashMap<String, Zone>, default: Zone) -> Zones {
        let by_merchant: FxMap<String, Zone> = by_merchant.into_iter().collect();
        let (short, long) = (InlineIds::of(&by_merchant), InlineIds::of(&by_merchant));
        Zones {
            large: short.bytes() + long.bytes() > TOUCHED_FROM,
            short,
            long,
            by_merchant,
            default,
        }
    }

    /// The zone of `merchant`.
    pub fn of(&self, merchant: &str) -> Zone {
        (self.short.get(merchant))
            .or_else(|| self.long.get(merchant))
            .unwrap_or_else(|| self.by_merchant.get(merchant).copied())
            .unwrap_or(self.default)
    }

    /// Prefetches the table slot where `merchant`'s zone would be found, so that
    /// [`Zones::of`] a few events later finds it in the cache: with many
    /// merchants the tables are larger than the cache, and touched ahead,
    /// their misses overlap.
    pub fn touch(&self, merchant: &str) {
        if self.large {
            self.short.touch(merchant);
            self.long.touch(merchant);
        }
    }

    /// Merchants with a zone of their own.
    pub fn len(&self) -> usize {
        self.by_merchant.len()
    }

    /// True when every merchant is in the default zone.
    pub fn is_empty(&self) -> bool {
        self.by_merchant.is_empty()
    }

    /// The local day of `merchant`'s instant `micros` ([`Zone::local_day`]).
    pub fn local_day(&self, merchant: &str, micros: i64) -> Day {
        self.zone_of(merchant).local_day(micros)
    }

    /// Refuses an event whose day in its merchant's zone falls outside
    /// 0001-01-01..=9999-12-31, the days both tables store: only one on the
    /// era's first or last UTC day can (`9999-12-31T20:00:00Z` is
    /// 10000-01-01 in Tokyo). The reason names the zone and the local day.
    /// One comparison for every other event.
    pub fn check_local_era(&self, merchant: &str, micros: i64, day: Day) -> Result<(), Invalid> {
        if day != MIN_DAY && day != MAX_DAY {
            return Ok(());
        }
        let local = self.local_day(merchant, micros);
        if local.checked().is_ok() {
            return Ok(());
        }
        Err(Invalid::new(
            "occurred_at",
            &format_rfc3339_millis(micros),
            format!(
                "falls on local day {local} in {}, the merchant's time zone: outside \
                 {MIN_DAY}..{MAX_DAY}, the days tally can store",
                self.of(merchant)
            ),
        ))
    }

    /// [`Zones::of`], without a lookup when every merchant keeps the default.
    fn zone_of(&self, merchant: &str) -> Zone {
        if self.by_merchant.is_empty() {
            self.default
        } else {
            self.of(merchant)
        }
    }
}

/// The zones of merchants whose ids fit in `W` words, in an open-addressing
/// table whose ids are stored inline: a lookup is a multiply, and a
/// comparison of `W` words and a length, with no pointer to follow. (A
/// `HashMap<String, _>` lookup took 21 ns per event, most of the cost of
/// local days.) Two tables: ids of up to [`SHORT`] bytes in slots of two
/// words, and longer ones of up to [`LONG`] bytes (UUIDs, ULIDs, prefixed
/// ids) in slots of six, a cache line each.
#[derive(Debug, Clone)]
struct InlineIds<const W: usize> {
    /// A power of two, at least twice the ids held.
    slots: Box<[Slot<W>]>,
}

/// An id's bytes (as [`inline_words`] reads them), its length ([`EMPTY`]
/// for a free slot), and its zone.
#[derive(Debug, Clone, Copy)]
struct Slot<const W: usize> {
    words: [u64; W],
    len: u8,
    zone: Zone,
}

const EMPTY: u8 = u8::MAX;

/// Longest id the second table holds inline.
const LONG: usize = 48;

/// The `W` words that, with its length, identify `id` in a table of `W`
/// words: `None` when the id belongs to the other table (or neither). A
/// long id's words are read straight from it, the last one overlapping
/// the one before.
fn inline_words<const W: usize>(id: &str) -> Option<[u64; W]> {
    let b = id.as_bytes();
    let mut out = [0; W];
    if W == 2 {
        out.copy_from_slice(&words(id)?);
        return Some(out);
    }
    if b.len() <= SHORT || b.len() > W * 8 {
        return None;
    }
    for (i, word) in out.iter_mut().enumerate().take(b.len().div_ceil(8)) {
        let at = (i * 8).min(b.len() - 8);
        *word = u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"));
    }
    Some(out)
}

impl<const W: usize> InlineIds<W> {
    fn of(by_merchant: &FxMap<String, Zone>) -> InlineIds<W> {
        let held = (by_merchant.keys())
            .filter(|m| inline_words::<W>(m).is_some())
            .count();
        let free = Slot {
            words: [0; W],
            len: EMPTY,
            zone: Zone::UTC,
        };
        let mut table = InlineIds {
            slots: vec![free; (held * 2).next_power_of_two().max(16)].into_boxed_slice(),
        };
        for (merchant, zone) in by_merchant {
            if let Some(words) = inline_words::<W>(merchant) {
                let at = table.find(words, merchant.len() as u8);
                table.slots[at] = Slot {
                    words,
                    len: merchant.len() as u8,
                    zone: *zone,
                };
            }
        }
        table
    }

    /// The table's size in memory.
    fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    /// The slot where a probe for the id starts.
    fn home(&self, words: [u64; W], len: u8) -> usize {
        // One full-width multiply, its halves folded: every input bit
        // reaches the low bits that pick the slot.
        let mut mixed = u64::from(len).rotate_right(8);
        for (i, word) in words.iter().enumerate() {
            mixed ^= word.rotate_left(29 * i as u32);
        }
        let product = u128::from(mixed) * u128::from(0x9e37_79b9_7f4a_7c15_u64);
        ((product as u64) ^ ((product >> 64) as u64)) as usize & (self.slots.len() - 1)
    }

    /// Prefetches the slot where `merchant` would be found (if the id is this
    /// table's length), so that its lookup soon after finds it in the cache.
    fn touch(&self, merchant: &str) {
        if let Some(words) = inline_words::<W>(merchant) {
            crate::cache::prefetch(&self.slots[self.home(words, merchant.len() as u8)]);
        }
    }

    /// The slot holding the id, or the free slot where it would go.
    fn find(&self, words: [u64; W], len: u8) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = self.home(words, len);
        loop {
            let slot = &self.slots[at];
            if slot.len == EMPTY || (slot.len == len && slot.words == words) {
                return at;
            }
            at = (at + 1) & mask;
        }
    }

    /// The zone of `merchant`; `None` when the id is not this table's
    /// length (ask the next).
    fn get(&self, merchant: &str) -> Option<Option<Zone>> {
        let words = inline_words::<W>(merchant)?;
        let slot = &self.slots[self.find(words, merchant.len() as u8)];
        Some((slot.len != EMPTY).then_some(slot.zone))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_local_day_ends_at_its_zones_next_midnight() {
        let day = Day::parse("2026-03-01").unwrap();
        let utc_end = (i64::from(day.0) + 1) * 86_400_000;
        let end = |zone: &str| Zone::parse(zone).unwrap().day_end_ms(day);
        let hour = 3_600_000;
        assert_eq!(end("UTC"), utc_end);
        assert_eq!(end("Asia/Tokyo"), utc_end - 9 * hour);
        assert_eq!(end("Pacific/Kiritimati"), utc_end - 14 * hour);
        assert_eq!(end("America/St_Johns"), utc_end + 3 * hour + hour / 2);
        // St. John's summer time: -02:30.
        let summer = Day::parse("2026-07-01").unwrap();
        let summer_end = (i64::from(summer.0) + 1) * 86_400_000;
        assert_eq!(
            Zone::parse("America/St_Johns").unwrap().day_end_ms(summer),
            summer_end + 2 * hour + hour / 2
        );
    }
    #[test]
    fn each_merchant_gets_its_own_zone_whatever_its_id() {
        let ids = [
            "",
            "m",
            "m\0",
            "m-00001",
            "m-00002",
            "m-0000100000",
            "exactly-16-bytes",
            "seventeen-bytes!!",
            "a-much-longer-merchant-id-0001",
            "3f2a9c4e-8b1d-4e7a-9c2f-5d6e7f8a9b0c",
            "3f2a9c4e-8b1d-4e7a-9c2f-5d6e7f8a9b0d",
            "an-id-of-exactly-forty-nine-bytes-000000000000001",
            "an-id-of-exactly-forty-eight-bytes-0000000000001",
            "ünïcödé",
            "m-00001 ",
        ];
        let zones = ["Asia/Tokyo", "Europe/Berlin", "America/St_Johns"];
        let by_merchant: HashMap<String, Zone> = ids
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, id)| ((*id).to_owned(), Zone::parse(zones[i % 3]).unwrap()))
            .chain((0..5_000).map(|i| (format!("x-{i:05}"), Zone::parse(zones[i % 3]).unwrap())))
            // Ids of every length either table holds, and one more, that
            // differ from "aaa…" in one byte: each byte position must count.
            .chain((1..=LONG + 1).flat_map(|len| {
                (0..len).map(move |at| {
                    let mut id = vec![b'a'; len];
                    id[at] = b'b';
                    let zone = Zone::parse(zones[(len + at) % 3]).unwrap();
                    (String::from_utf8(id).unwrap(), zone)
                })
            }))
            .collect();
        let table = Zones::new(by_merchant.clone(), Zone::UTC);
        for (id, zone) in &by_merchant {
            assert_eq!(table.of(id), *zone, "{id:?}");
        }
        // Not there: the default, whether short, long or empty.
        for id in [
            "",
            "m\0\0",
            "x-05000",
            "M",
            "seventeen-bytes!?",
            "a-much-longer-merchant-id-0002",
        ] {
            assert_eq!(table.of(id), Zone::UTC, "{id:?}");
        }
        for len in 1..=LONG + 1 {
            assert_eq!(table.of(&"a".repeat(len)), Zone::UTC, "{len}");
        }
    }

    use super::*;
    use crate::day::parse_rfc3339;

    fn day_at(zone: &str, instant: &str) -> String {
        let micros = parse_rfc3339(instant).unwrap();
        Zone::parse(zone).unwrap().local_day(micros).to_string()
    }

    #[test]
    fn local_days_follow_each_zones_offset_and_its_daylight_saving_time() {
        // UTC and a whole-hour zone without DST.
        assert_eq!(day_at("UTC", "2026-03-29T23:59:59.999999Z"), "2026-03-29");
        assert_eq!(day_at("Asia/Tokyo", "2026-03-29T14:59:59Z"), "2026-03-29");
        assert_eq!(day_at("Asia/Tokyo", "2026-03-29T15:00:00Z"), "2026-03-30");
        // −03:30 in winter, −02:30 in summer (DST from 2026-03-08).
        assert_eq!(
            day_at("America/St_Johns", "2026-01-15T03:29:59Z"),
            "2026-01-14"
        );
        assert_eq!(
            day_at("America/St_Johns", "2026-01-15T03:30:00Z"),
            "2026-01-15"
        );
        assert_eq!(
            day_at("America/St_Johns", "2026-07-15T02:30:00Z"),
            "2026-07-15"
        );
        assert_eq!(
            day_at("America/St_Johns", "2026-07-15T02:29:59Z"),
            "2026-07-14"
        );
        // Berlin on the day clocks go back (2026-10-25, 03:00 CEST → 02:00 CET):
        // the day has 25 hours, from 22:00 UTC on the 24th to 23:00 UTC on the 25th;
        // both 02:30s (00:30 and 01:30 UTC) fall on the 25th.
        assert_eq!(
            day_at("Europe/Berlin", "2026-10-24T21:59:59Z"),
            "2026-10-24"
        );
        assert_eq!(
            day_at("Europe/Berlin", "2026-10-24T22:00:00Z"),
            "2026-10-25"
        );
        assert_eq!(
            day_at("Europe/Berlin", "2026-10-25T00:30:00Z"),
            "2026-10-25"
        );
        assert_eq!(
            day_at("Europe/Berlin", "2026-10-25T01:30:00Z"),
            "2026-10-25"
        );
        assert_eq!(
            day_at("Europe/Berlin", "2026-10-25T22:59:59Z"),
            "2026-10-25"
        );
        assert_eq!(
            day_at("Europe/Berlin", "2026-10-25T23:00:00Z"),
            "2026-10-26"
        );
        // The day clocks go forward (2026-03-29) has 23 hours: 23:00 UTC to 22:00 UTC.
        assert_eq!(
            day_at("Europe/Berlin", "2026-03-28T23:00:00Z"),
            "2026-03-29"
        );
        assert_eq!(
            day_at("Europe/Berlin", "2026-03-29T21:59:59Z"),
            "2026-03-29"
        );
        assert_eq!(
            day_at("Europe/Berlin", "2026-03-29T22:00:00Z"),
            "2026-03-30"
        );
        // Lord Howe: +11:00 in summer, +10:30 from 2026-04-05 02:00 local.
        assert_eq!(
            day_at("Australia/Lord_Howe", "2026-04-03T12:59:59Z"),
            "2026-04-03"
        );
        assert_eq!(
            day_at("Australia/Lord_Howe", "2026-04-03T13:00:00Z"),
            "2026-04-04"
        );
        assert_eq!(
            day_at("Australia/Lord_Howe", "2026-04-06T13:29:59Z"),
            "2026-04-06"
        );
        assert_eq!(
            day_at("Australia/Lord_Howe", "2026-04-06T13:30:00Z"),
            "2026-04-07"
        );
    }

    #[test]
    fn a_merchants_local_day_is_its_zones_and_others_get_the_default() {
        let tokyo = Zone::parse("Asia/Tokyo").unwrap();
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        let zones = Zones::new(HashMap::from([("m-tokyo".to_string(), tokyo)]), berlin);
        assert_eq!(zones.of("m-tokyo"), tokyo);
        assert_eq!(zones.of("m-other"), berlin);
        // Every quarter hour across both of Berlin's 2026 changes, and Lord
        // Howe's half-hour one, agrees with the calendar conversion.
        let lord_howe = Zone::parse("Australia/Lord_Howe").unwrap();
        let st_johns = Zone::parse("America/St_Johns").unwrap();
        for (zone, around) in [
            (berlin, "2026-03-29T01:00:00Z"),
            (berlin, "2026-10-25T01:00:00Z"),
            (lord_howe, "2026-04-04T15:00:00Z"),
            (st_johns, "2026-03-08T05:30:00Z"),
        ] {
            let zones = Zones::new(HashMap::new(), zone);
            let (at, mut cache) = (parse_rfc3339(around).unwrap(), HourCache::default());
            for step in -200..200i64 {
                let micros = at + step * 450_000_000 + 1;
                let calendar = zone.local_day(micros);
                assert_eq!(zones.local_day("m", micros), calendar, "{zone} {micros}");
                assert_eq!(
                    cache.local_day(zones.of("m"), micros),
                    calendar,
                    "{zone} {micros}, cached"
                );
            }
        }
        assert_eq!(
            Zones::default().local_day("m", parse_rfc3339("2026-03-29T23:59:59Z").unwrap()),
            Day::parse("2026-03-29").unwrap()
        );
    }

    #[test]
    fn only_iana_names_are_zones() {
        assert_eq!(
            Zone::parse("Europe/Berlin").unwrap().name(),
            "Europe/Berlin"
        );
        assert_eq!(Zone::parse("UTC").unwrap(), Zone::UTC);
        for bad in ["Europe/Berlinn", "europe/berlin", "", "+02:00", "CEST "] {
            let error = Zone::parse(bad).unwrap_err();
            assert!(error.contains("not an IANA time zone name"), "{error}");
        }
    }
}

#[cfg(test)]
mod whole_local_days {
    use super::*;

    fn whole(zone: &str, from: &str, to: &str) -> (String, String) {
        let zone = Zone::parse(zone).unwrap();
        let (first, end) =
            zone.whole_local_days(Day::parse(from).unwrap(), Day::parse(to).unwrap());
        (first.to_string(), end.to_string())
    }

    fn pair(first: &str, end: &str) -> (String, String) {
        (first.to_owned(), end.to_owned())
    }

    #[test]
    fn west_of_utc_the_last_local_day_runs_past_the_range() {
        // Honolulu (−10:00): local 2026-03-10 is 10:00 UTC on the 10th to 10:00 on the 11th.
        assert_eq!(
            whole("Pacific/Honolulu", "2026-03-10", "2026-03-11"),
            pair("2026-03-10", "2026-03-10"),
            "one UTC day holds no whole Honolulu day"
        );
        assert_eq!(
            whole("Pacific/Honolulu", "2026-03-10", "2026-03-13"),
            pair("2026-03-10", "2026-03-12")
        );
    }

    #[test]
    fn east_of_utc_the_first_local_day_began_before_the_range() {
        // Tokyo (+09:00) and Kiritimati (+14:00): local day D began on D−1 in UTC.
        for zone in ["Asia/Tokyo", "Pacific/Kiritimati"] {
            assert_eq!(
                whole(zone, "2026-03-10", "2026-03-13"),
                pair("2026-03-11", "2026-03-13"),
                "{zone}"
            );
        }
    }

    #[test]
    fn utc_days_are_whole_in_utc() {
        assert_eq!(
            whole("UTC", "2026-03-10", "2026-03-11"),
            pair("2026-03-10", "2026-03-11")
        );
    }

    #[test]
    fn daylight_saving_time_moves_the_edges_with_the_offset() {
        // New York: −05:00 until 2026-03-08 07:00 UTC, then −04:00. Local
        // 03-07 and 03-08 lie inside [03-07, 03-10); 03-09 ends at 04:00 UTC on 03-10.
        assert_eq!(
            whole("America/New_York", "2026-03-07", "2026-03-10"),
            pair("2026-03-07", "2026-03-09")
        );
    }

    #[test]
    fn every_instant_of_a_whole_day_lies_in_the_range_and_no_other_day_does() {
        // Checked instant by instant, at every quarter hour of three days around.
        for zone in [
            "Pacific/Honolulu",
            "Pacific/Kiritimati",
            "Asia/Kathmandu",
            "America/St_Johns",
        ] {
            let zone = Zone::parse(zone).unwrap();
            let (from, to) = (
                Day::parse("2026-10-24").unwrap(),
                Day::parse("2026-10-27").unwrap(),
            );
            let (first, end) = zone.whole_local_days(from, to);
            let inside = |m: i64| {
                m >= i64::from(from.0) * MICROS_PER_DAY && m < i64::from(to.0) * MICROS_PER_DAY
            };
            let start = i64::from(from.0 - 2) * MICROS_PER_DAY;
            let mut seen_outside = std::collections::BTreeSet::new();
            for k in 0..(7 * 96) {
                let micros = start + k * 15 * 60 * 1_000_000;
                if !inside(micros) {
                    seen_outside.insert(zone.local_day(micros).0);
                }
            }
            for day in first.0..end.0 {
                assert!(
                    !seen_outside.contains(&day),
                    "{zone}: {} is not whole",
                    Day(day)
                );
            }
            for day in [first.0 - 1, end.0] {
                assert!(
                    seen_outside.contains(&day),
                    "{zone}: {} is whole but left out",
                    Day(day)
                );
            }
        }
    }
}

#[cfg(test)]
mod era {
    use super::*;
    use crate::day::parse_rfc3339;

    fn check(zone: &str, at: &str) -> Result<(), Invalid> {
        let zones = Zones::new(
            HashMap::from([("m".to_owned(), Zone::parse(zone).unwrap())]),
            Zone::UTC,
        );
        let micros = parse_rfc3339(at).unwrap();
        zones.check_local_era("m", micros, Day::of_micros(micros))
    }

    #[test]
    fn a_local_day_outside_the_era_is_refused_naming_the_zone() {
        let late = check("Asia/Tokyo", "9999-12-31T20:00:00Z").unwrap_err();
        assert_eq!(late.field, "occurred_at");
        assert!(
            late.reason.contains("10000-01-01 in Asia/Tokyo"),
            "{}",
            late.reason
        );
        let early = check("America/New_York", "0001-01-01T01:00:00Z").unwrap_err();
        assert!(
            early.reason.contains("0000-12-31 in America/New_York"),
            "{}",
            early.reason
        );
        // The same instants where the local day stays inside the era.
        assert_eq!(check("America/New_York", "9999-12-31T20:00:00Z"), Ok(()));
        assert_eq!(check("Asia/Tokyo", "0001-01-01T01:00:00Z"), Ok(()));
        assert_eq!(
            check("Pacific/Kiritimati", "9999-12-31T09:59:59.999Z"),
            Ok(())
        );
        assert!(check("Pacific/Kiritimati", "9999-12-31T10:00:00Z").is_err());
        assert!(check("Etc/GMT+12", "0001-01-01T11:59:59Z").is_err());
        assert_eq!(check("Etc/GMT+12", "0001-01-01T12:00:00Z"), Ok(()));
    }
}
