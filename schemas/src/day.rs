//! RFC 3339 timestamps and UTC calendar days, without a date library.
//!
//! The parser is on the worker's hot path, so it reads the fixed layout
//! directly instead of going through a general formatter.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC calendar day, as days since 1970-01-01 (Arrow's `Date32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i32);

/// Microseconds since the Unix epoch, in UTC.
pub type EpochMicros = i64;

/// Why a timestamp text is not RFC 3339 with an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The text does not follow `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
    #[error("is not RFC 3339 (expected YYYY-MM-DDTHH:MM:SS[.fraction] followed by Z or ±HH:MM)")]
    Layout,
    /// A field is out of its range (month 13, February 30, hour 25, ...).
    #[error("has a date or time field out of range")]
    Range,
    /// No `Z` or numeric offset.
    #[error("has no UTC offset (add Z or ±HH:MM)")]
    NoOffset,
    /// The stated date or its UTC day is outside 0001-01-01..9999-12-31,
    /// which is all that both databases and the partial format can hold.
    #[error("lies outside 0001-01-01..9999-12-31 (as stated or as a UTC day)")]
    OutOfEra,
}

/// 0001-01-01, the first day tally accepts (PostgreSQL has no year 0).
pub const MIN_DAY: Day = Day(-719_162);
/// 9999-12-31, the last day tally accepts (four-digit years only).
pub const MAX_DAY: Day = Day(2_932_896);

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a count of days since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

fn digits(bytes: &[u8], at: usize, len: usize) -> Result<u32, TimeError> {
    let slice = bytes.get(at..at + len).ok_or(TimeError::Layout)?;
    slice.iter().try_fold(0u32, |acc, &b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + u32::from(b - b'0'))
        } else {
            Err(TimeError::Layout)
        }
    })
}

/// Year, month, day, hour, minute and second of `YYYY-MM-DDTHH:MM:SS` (or
/// `t` or a space between date and time) at the start of `bytes`; `None`
/// when the first 19 bytes do not have that layout. Every byte is read and
/// tested without a branch of its own, and the fields are put together
/// after: timestamps are parsed once per event.
fn date_and_time(bytes: &[u8]) -> Option<[u32; 6]> {
    let b: &[u8; 19] = bytes.get(..19)?.try_into().ok()?;
    let d = |i: usize| b[i].wrapping_sub(b'0');
    let digits = [
        d(0),
        d(1),
        d(2),
        d(3),
        d(5),
        d(6),
        d(8),
        d(9),
        d(11),
        d(12),
        d(14),
        d(15),
        d(17),
        d(18),
    ];
    let laid_out = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !laid_out || digits.iter().fold(0, |most, &digit| most.max(digit)) > 9 {
        return None;
    }
    let two = |i: usize| u32::from(digits[i]) * 10 + u32::from(digits[i + 1]);
    Some([
        two(0) * 100 + two(2),
        two(4),
        two(6),
        two(8),
        two(10),
        two(12),
    ])
}

fn expect(bytes: &[u8], at: usize, allowed: &[u8]) -> Result<(), TimeError> {
    match bytes.get(at) {
        Some(b) if allowed.contains(b) => Ok(()),
        _ => Err(TimeError::Layout),
    }
}

/// Parses an RFC 3339 timestamp with an offset into UTC microseconds.
/// Fractions beyond microseconds are truncated; a leap second (`:60`) is
/// read as the last microsecond of its minute's 59th second.
///
/// Fails when the layout, a field's range, or the offset is wrong.
pub fn parse_rfc3339(text: &str) -> Result<EpochMicros, TimeError> {
    let b = text.as_bytes();
    let [year, month, day, hour, minute, second] = date_and_time(b).ok_or(TimeError::Layout)?;
    let mut at = 19;
    let mut micros = 0u32;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 6 {
                micros = micros * 10 + u32::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(TimeError::Layout);
        }
        for _ in (at - start)..6 {
            micros *= 10;
        }
    }
    let offset_secs: i64 = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            let oh = digits(b, at + 1, 2)?;
            expect(b, at + 3, b":")?;
            let om = digits(b, at + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(TimeError::Range);
            }
            let secs = i64::from(oh * 3600 + om * 60);
            if sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        None => return Err(TimeError::NoOffset),
        _ => return Err(TimeError::Layout),
    };
    let year = i64::from(year);
    if year == 0 {
        return Err(TimeError::OutOfEra);
    }
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(TimeError::Range);
    }
    let (second, micros) = if second == 60 {
        (59, 999_999)
    } else {
        (second, micros)
    };
    let days = days_from_civil(year, month, day);
    let local_secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let micros = (local_secs - offset_secs) * 1_000_000 + i64::from(micros);
    Day::of_micros(micros).checked()?;
    Ok(micros)
}

impl Day {
    /// The UTC day a timestamp falls on.
    pub fn of_micros(micros: EpochMicros) -> Day {
        Day(micros.div_euclid(86_400_000_000) as i32)
    }

    /// The day itself when it lies in [`MIN_DAY`]..=[`MAX_DAY`], the range
    /// whose text form is `YYYY-MM-DD` and which both databases store.
    ///
    /// Fails with [`TimeError::OutOfEra`] otherwise.
    pub fn checked(self) -> Result<Day, TimeError> {
        if (MIN_DAY..=MAX_DAY).contains(&self) {
            Ok(self)
        } else {
            Err(TimeError::OutOfEra)
        }
    }

    /// Parses `YYYY-MM-DD`. Fails on any other layout, an impossible date,
    /// or year 0000.
    pub fn parse(text: &str) -> Result<Day, TimeError> {
        let b = text.as_bytes();
        if b.len() != 10 {
            return Err(TimeError::Layout);
        }
        let (year, month, day) = (digits(b, 0, 4)?, digits(b, 5, 2)?, digits(b, 8, 2)?);
        expect(b, 4, b"-")?;
        expect(b, 7, b"-")?;
        if year == 0 {
            return Err(TimeError::OutOfEra);
        }
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
            return Err(TimeError::Range);
        }
        Ok(Day(days_from_civil(i64::from(year), month, day) as i32))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(i64::from(self.0));
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Day, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Day::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Milliseconds since the Unix epoch now, by the system clock (0 if the
/// clock is set before 1970): the one clock of fences, leases, jobs and
/// latencies.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Formats UTC microseconds as RFC 3339 with millisecond precision and `Z`.
pub fn format_rfc3339_millis(micros: EpochMicros) -> String {
    let secs = micros.div_euclid(1_000_000);
    let millis = micros.rem_euclid(1_000_000) / 1000;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_byte_of_the_date_and_time_is_held_to_its_layout() {
        // Every ASCII byte at each of the first 19 positions: a layout error
        // exactly when the byte does not belong there (a digit where the
        // layout wants one may still put a field out of its range).
        let valid = "2026-01-11T11:11:11Z";
        for at in 0..19 {
            for byte in 0u8..128 {
                let mut text = valid.as_bytes().to_vec();
                text[at] = byte;
                let text = String::from_utf8(text).unwrap();
                let fits = match at {
                    4 | 7 => byte == b'-',
                    10 => matches!(byte, b'T' | b't' | b' '),
                    13 | 16 => byte == b':',
                    _ => byte.is_ascii_digit(),
                };
                let layout = parse_rfc3339(&text) == Err(TimeError::Layout);
                assert_eq!(layout, !fits, "{text:?}");
            }
        }
        // Short of the time of day, or past it without an offset.
        for short in ["", "2026-01-11", "2026-01-11T11:11:1", "2026-01-11T11:11"] {
            assert_eq!(parse_rfc3339(short), Err(TimeError::Layout), "{short:?}");
        }
        assert_eq!(
            parse_rfc3339("2026-01-11T11:11:11"),
            Err(TimeError::NoOffset)
        );
    }

    #[test]
    fn offsets_move_the_utc_day() {
        let utc = parse_rfc3339("2026-11-20T13:45:10.123Z").unwrap();
        assert_eq!(Day::of_micros(utc).to_string(), "2026-11-20");
        let east = parse_rfc3339("2026-11-21T01:30:00+02:00").unwrap();
        assert_eq!(Day::of_micros(east).to_string(), "2026-11-20");
        let west = parse_rfc3339("2026-11-20T23:30:00-01:00").unwrap();
        assert_eq!(Day::of_micros(west).to_string(), "2026-11-21");
        assert_eq!(format_rfc3339_millis(utc), "2026-11-20T13:45:10.123Z");
    }

    #[test]
    fn rejects_bad_timestamps() {
        assert_eq!(
            parse_rfc3339("2026-11-20T13:45:10"),
            Err(TimeError::NoOffset)
        );
        assert_eq!(parse_rfc3339("2026-02-30T00:00:00Z"), Err(TimeError::Range));
        assert_eq!(parse_rfc3339("2026-11-20 13:45"), Err(TimeError::Layout));
        assert_eq!(
            parse_rfc3339("2026-11-20T13:45:10.Z"),
            Err(TimeError::Layout)
        );
        assert_eq!(parse_rfc3339("yesterday"), Err(TimeError::Layout));
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1000i64, -1, 0, 59, 365 * 30, 20_412, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(Day::parse("2024-02-29").unwrap().to_string(), "2024-02-29");
        assert!(Day::parse("2023-02-29").is_err());
    }

    #[test]
    fn the_era_bounds_are_the_first_and_last_four_digit_days() {
        assert_eq!(MIN_DAY.to_string(), "0001-01-01");
        assert_eq!(MAX_DAY.to_string(), "9999-12-31");
        assert_eq!(Day::parse("0000-12-31"), Err(TimeError::OutOfEra));
    }

    #[test]
    fn text_and_parser_agree_on_every_accepted_day() {
        for n in MIN_DAY.0..=MAX_DAY.0 {
            let text = Day(n).to_string();
            assert_eq!(Day::parse(&text), Ok(Day(n)), "{text}");
        }
    }

    #[test]
    fn days_outside_the_era_are_refused_as_stated_and_in_utc() {
        // Stated in range, but the UTC day is 10000-01-01 or 0000-12-31.
        assert_eq!(
            parse_rfc3339("9999-12-31T23:30:00-01:00"),
            Err(TimeError::OutOfEra)
        );
        assert_eq!(
            parse_rfc3339("0001-01-01T00:30:00+01:00"),
            Err(TimeError::OutOfEra)
        );
        assert_eq!(
            parse_rfc3339("0000-01-01T00:00:00Z"),
            Err(TimeError::OutOfEra)
        );
        let last = parse_rfc3339("9999-12-31T23:59:59.999999Z").unwrap();
        assert_eq!(Day::of_micros(last), MAX_DAY);
        let first = parse_rfc3339("0001-01-01T00:00:00Z").unwrap();
        assert_eq!(Day::of_micros(first), MIN_DAY);
    }
}
