//! The vocabulary of backfill and import jobs, parsed once at the edge
//! (flags, config, the database) and passed on as types: the formats files
//! come in, five-field cron expressions (UTC), and day ranges relative to
//! the day a schedule fires.
//!
//! Cron fields are minute, hour, day of month, month and day of week
//! (0–7, Sunday is 0 or 7); each is `*`, a number, a range `a-b`, a step
//! `*/n` or `a-b/n`, or a comma list of those. As in classic cron, when both
//! day fields are restricted a day matches either. `@hourly`, `@daily`,
//! `@weekly` and `@monthly` are accepted.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::day::{civil_from_days, Day};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// The formats a backfill reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet, read by DataFusion.
    Parquet,
    /// CSV with a header row, read by DataFusion with every column as text.
    Csv,
    /// One event object per line, read by the workers' own decoder.
    Ndjson,
}

impl Format {
    /// Reads `parquet`, `csv` or `ndjson`; `field` names the flag in the error.
    pub fn parse(field: &str, text: &str) -> Result<Format, String> {
        match text {
            "parquet" => Ok(Format::Parquet),
            "csv" => Ok(Format::Csv),
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            other => Err(format!(
                "`{field}` = {other:?}: must be parquet, csv or ndjson"
            )),
        }
    }

    /// The format a file name's extension implies.
    pub fn of_path(path: &str) -> Option<Format> {
        let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        match name.rsplit_once('.')?.1 {
            "parquet" | "pq" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job stores for its format when each file's comes from its name.
pub const BY_EXTENSION: &str = "auto";

impl Format {
    /// The format of a job's file `location`: the job's, or (`None`) the
    /// one its name implies.
    pub fn of_file(job: Option<Format>, location: &str) -> Result<Format, String> {
        job.or_else(|| Format::of_path(location)).ok_or_else(|| {
            format!("cannot tell the format of {location:?} from its name; pass --format")
        })
    }

    /// The stored spelling of a job's format: [`BY_EXTENSION`] for none.
    pub fn stored(format: Option<Format>) -> &'static str {
        format.map_or(BY_EXTENSION, Format::as_str)
    }

    /// Reads a stored job format: [`BY_EXTENSION`] or empty is none.
    pub fn parse_stored(text: &str) -> Result<Option<Format>, String> {
        match text {
            BY_EXTENSION | "" => Ok(None),
            text => Format::parse("format", text).map(Some),
        }
    }
}

impl Serialize for Format {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    /// The expression as given.
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    any_day: bool,
    any_weekday: bool,
}

fn field(text: &str, name: &str, min: u32, max: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("{name} step {step:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("{name} step must be at least 1"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let number = |t: &str| -> Result<u32, String> {
            let n: u32 = t
                .parse()
                .map_err(|_| format!("{name} {t:?} is not a number"))?;
            if n < min || n > max {
                return Err(format!("{name} {n} is outside {min}-{max}"));
            }
            Ok(n)
        };
        let (low, high) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None if step > 1 => (number(range)?, max),
                None => (number(range)?, number(range)?),
            },
        };
        if low > high {
            return Err(format!("{name} range {range:?} runs backwards"));
        }
        for n in (low..=high).step_by(step as usize) {
            bits |= 1 << n;
        }
    }
    Ok(bits)
}

impl Cron {
    /// Parses an expression; the error says which field is wrong and why.
    pub fn parse(given: &str) -> Result<Cron, String> {
        let text = match given.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            other => other,
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = parts[..] else {
            return Err(format!(
                "{text:?} has {} fields; cron needs 5: minute hour day-of-month month day-of-week",
                parts.len()
            ));
        };
        let mut weekdays = field(weekday, "day of week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Cron {
            text: given.to_owned(),
            minutes: field(minute, "minute", 0, 59)?,
            hours: field(hour, "hour", 0, 23)? as u32,
            days: field(day, "day of month", 1, 31)? as u32,
            months: field(month, "month", 1, 12)? as u16,
            weekdays: (weekdays & 0x7f) as u8,
            any_day: day == "*",
            any_weekday: weekday == "*",
        })
    }

    /// The expression as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, days_since_epoch: i64) -> bool {
        let (_, month, day) = civil_from_days(days_since_epoch);
        if self.months & (1 << month) == 0 {
            return false;
        }
        // 1970-01-01 was a Thursday (4).
        let weekday = (days_since_epoch + 4).rem_euclid(7) as u32;
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        match (self.any_day, self.any_weekday) {
            (false, false) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }

    /// The latest tick in `(after, until]` (milliseconds since the epoch,
    /// on whole minutes), if any. Looks back at most 400 days.
    pub fn latest(&self, after: i64, until: i64) -> Option<i64> {
        let floor = after.max(until - 400 * DAY_MS);
        let mut day = until.div_euclid(DAY_MS);
        while day * DAY_MS + DAY_MS > floor {
            if self.day_matches(day) {
                for hour in (0..24).rev() {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    for minute in (0..60).rev() {
                        if self.minutes & (1 << minute) == 0 {
                            continue;
                        }
                        let at = day * DAY_MS + (hour * 60 + minute) * MINUTE_MS;
                        if at <= until {
                            return (at > after).then_some(at);
                        }
                    }
                }
            }
            day -= 1;
        }
        None
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Cron {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A day range relative to the day a schedule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The day before.
    Yesterday,
    /// The day itself.
    Today,
    /// The N days before (`last-7-days`).
    LastDays(i32),
}

impl Range {
    /// Reads `yesterday`, `today` or `last-N-days`.
    pub fn parse(text: &str) -> Result<Range, String> {
        match text {
            "yesterday" => Ok(Range::Yesterday),
            "today" => Ok(Range::Today),
            _ => text
                .strip_prefix("last-")
                .and_then(|r| r.strip_suffix("-days"))
                .and_then(|n| n.parse().ok())
                .filter(|n| (1..=3660).contains(n))
                .map(Range::LastDays)
                .ok_or_else(|| {
                    format!("{text:?} is not a range: use yesterday, today or last-N-days")
                }),
        }
    }

    /// `[from, to)` for a tick at `due` (milliseconds since the epoch).
    pub fn days(self, due: i64) -> (Day, Day) {
        let today = Day(due.div_euclid(DAY_MS) as i32);
        match self {
            Range::Yesterday => (Day(today.0 - 1), today),
            Range::Today => (today, Day(today.0 + 1)),
            Range::LastDays(n) => (Day(today.0 - n), today),
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Range::Yesterday => f.write_str("yesterday"),
            Range::Today => f.write_str("today"),
            Range::LastDays(n) => write!(f, "last-{n}-days"),
        }
    }
}

impl Serialize for Range {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        crate::day::parse_rfc3339(text).unwrap() / 1000
    }

    #[test]
    fn latest_tick_is_caught_up_once() {
        let daily = Cron::parse("30 2 * * *").unwrap();
        // Three missed nights give one tick: the latest.
        assert_eq!(
            daily.latest(at("2026-11-18T00:00:00Z"), at("2026-11-21T10:00:00Z")),
            Some(at("2026-11-21T02:30:00Z"))
        );
        assert_eq!(
            daily.latest(at("2026-11-21T02:30:00Z"), at("2026-11-21T10:00:00Z")),
            None
        );
        let every_15 = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            every_15.latest(0, at("2026-11-21T10:14:59Z")),
            Some(at("2026-11-21T10:00:00Z"))
        );
        // Mondays (2026-11-23 is a Monday), or the 1st.
        let either = Cron::parse("0 0 1 * 1").unwrap();
        assert_eq!(
            either.latest(0, at("2026-11-25T00:00:00Z")),
            Some(at("2026-11-23T00:00:00Z"))
        );
        assert_eq!(
            either.latest(0, at("2026-12-01T05:00:00Z")),
            Some(at("2026-12-01T00:00:00Z"))
        );
        assert_eq!(
            Cron::parse("@weekly")
                .unwrap()
                .latest(0, at("2026-11-25T00:00:00Z")),
            Some(at("2026-11-22T00:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_and_ranges_say_why() {
        assert!(Cron::parse("* * *").unwrap_err().contains("5"));
        assert!(Cron::parse("61 * * * *").unwrap_err().contains("minute"));
        assert!(Cron::parse("* * * * 1-x")
            .unwrap_err()
            .contains("day of week"));
        assert_eq!(Range::parse("last-7-days"), Ok(Range::LastDays(7)));
        assert!(Range::parse("last-week").is_err());
        let due = at("2026-11-21T02:30:00Z");
        assert_eq!(
            Range::Yesterday.days(due),
            (
                Day::parse("2026-11-20").unwrap(),
                Day::parse("2026-11-21").unwrap()
            )
        );
        assert_eq!(
            Range::LastDays(7).days(due).0,
            Day::parse("2026-11-14").unwrap()
        );
    }

    #[test]
    fn formats_and_ranges_round_trip_their_stored_spelling() {
        for format in [Format::Parquet, Format::Csv, Format::Ndjson] {
            assert_eq!(
                Format::parse_stored(Format::stored(Some(format))),
                Ok(Some(format))
            );
        }
        assert_eq!(Format::parse_stored(Format::stored(None)), Ok(None));
        assert_eq!(Format::of_file(None, "/in/a.CSV.gz"), Ok(Format::Csv));
        assert!(Format::of_file(None, "/in/a.xml")
            .unwrap_err()
            .contains("--format"));
        for range in [Range::Yesterday, Range::Today, Range::LastDays(7)] {
            assert_eq!(Range::parse(&range.to_string()), Ok(range));
        }
        assert_eq!(Cron::parse("@daily").unwrap().to_string(), "@daily");
    }
}
