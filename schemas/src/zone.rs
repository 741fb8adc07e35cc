//! Merchants' time zones: IANA names, checked against the time zone
//! database compiled into tally (chrono-tz; [`TZDB_VERSION`] names its IANA
//! release), and the local calendar day an instant falls on there.
//!
//! A new IANA release reaches tally with a chrono-tz update: raise the
//! `chrono-tz` version in the workspace's `Cargo.toml` and rebuild.

use std::str::FromStr;

use chrono::{DateTime, Datelike};
use chrono_tz::Tz;

use crate::day::Day;

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
}

/// Days from 0001-01-01 (day 1 in chrono's count) to 1970-01-01.
const UNIX_EPOCH_FROM_CE: i32 = 719_163;

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
