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

use crate::day::Day;
use crate::fx::FxMap;

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
    slots: Box<[Option<Hour>; 256]>,
}

/// A zone (its static name), a UTC hour, and the offset (µs) that holds for
/// all of it, if one does.
type Hour = (&'static str, i64, Option<i64>);

impl Default for HourCache {
    fn default() -> HourCache {
        HourCache {
            slots: Box::new([None; 256]),
        }
    }
}

impl HourCache {
    fn offset_micros(&mut self, zone: Zone, micros: i64) -> i64 {
        let hour = micros.div_euclid(MICROS_PER_HOUR);
        let name = zone.name();
        // The zone's name is a static string: its address identifies it.
        let slot = (name.as_ptr() as usize >> 3)
            .wrapping_add(hour as usize)
            .wrapping_mul(0x9e37)
            >> 4
            & 255;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zones {
    /// Fx-hashed: the lookup runs once per event on the hot path.
    by_merchant: FxMap<String, Zone>,
    default: Zone,
}

impl Default for Zones {
    fn default() -> Zones {
        Zones::new(HashMap::new(), Zone::UTC)
    }
}

impl Zones {
    /// Merchants' zones, and `default` for merchants not among them.
    pub fn new(by_merchant: HashMap<String, Zone>, default: Zone) -> Zones {
        Zones {
            by_merchant: by_merchant.into_iter().collect(),
            default,
        }
    }

    /// The zone of `merchant`.
    pub fn of(&self, merchant: &str) -> Zone {
        self.by_merchant
            .get(merchant)
            .copied()
            .unwrap_or(self.default)
    }

    /// Merchants with a zone of their own.
    pub fn len(&self) -> usize {
        self.by_merchant.len()
    }

    /// True when every merchant is in the default zone.
    pub fn is_empty(&self) -> bool {
        self.by_merchant.is_empty()
    }

    /// The local day of `merchant`'s instant `micros`: the same as
    /// [`Zone::local_day`], in integer arithmetic on the offset in force.
    pub fn local_day(&self, merchant: &str, micros: i64) -> Day {
        self.local_day_with(merchant, micros, |zone| {
            zone.offset_secs(micros) * 1_000_000
        })
    }

    /// [`Zones::local_day`], with the offsets of whole UTC hours kept in
    /// `cache`: the hot path asks for the same few zones and hours again
    /// and again.
    pub fn local_day_cached(&self, cache: &mut HourCache, merchant: &str, micros: i64) -> Day {
        self.local_day_with(merchant, micros, |zone| cache.offset_micros(zone, micros))
    }

    /// The local day, with `offset_micros` giving a zone's offset at `micros`.
    fn local_day_with(
        &self,
        merchant: &str,
        micros: i64,
        offset_micros: impl FnOnce(Zone) -> i64,
    ) -> Day {
        let zone = if self.by_merchant.is_empty() {
            self.default
        } else {
            self.of(merchant)
        };
        let offset = if zone == Zone::UTC {
            0
        } else {
            offset_micros(zone)
        };
        Day((micros + offset).div_euclid(MICROS_PER_DAY) as i32)
    }
}

#[cfg(test)]
mod tests {
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
                    zones.local_day_cached(&mut cache, "m", micros),
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
