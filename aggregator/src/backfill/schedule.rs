//! Schedules: five-field cron expressions (UTC) and relative day ranges.
//!
//! Cron fields are minute, hour, day of month, month and day of week
//! (0–7, Sunday is 0 or 7); each is `*`, a number, a range `a-b`, a step
//! `*/n` or `a-b/n`, or a comma list of those. As in classic cron, when both
//! day fields are restricted a day matches either. `@hourly`, `@daily`,
//! `@weekly` and `@monthly` are accepted.

use schemas::day::civil_from_days;
use schemas::Day;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
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
    pub fn parse(text: &str) -> Result<Cron, String> {
        let text = match text.trim() {
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
            minutes: field(minute, "minute", 0, 59)?,
            hours: field(hour, "hour", 0, 23)? as u32,
            days: field(day, "day of month", 1, 31)? as u32,
            months: field(month, "month", 1, 12)? as u16,
            weekdays: (weekdays & 0x7f) as u8,
            any_day: day == "*",
            any_weekday: weekday == "*",
        })
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

/// What an operator asks for when adding a schedule, as given.
#[derive(Debug, Clone, Default)]
pub struct ScheduleRequest {
    /// 1 to 128 bytes.
    pub name: String,
    /// Five-field cron expression (UTC).
    pub cron: String,
    /// Where the files are.
    pub source: String,
    /// `yesterday`, `today` or `last-N-days`.
    pub range: String,
    /// The files' format; none: told from each name.
    pub format: Option<String>,
    /// Merchants to recompute; empty: every one.
    pub merchants: Vec<String>,
    /// RFC 3339 time of the last tick taken as done; none: now.
    pub since: Option<String>,
}

impl ScheduleRequest {
    /// The schedule to store, checked: fails naming the flag and the rule
    /// when the name, cron expression, range, format or `since` is invalid.
    /// Merchants are sorted and deduplicated.
    pub fn check(&self, now_ms: i64) -> Result<store::jobs::Schedule, String> {
        let name = &self.name;
        if name.is_empty() || name.len() > 128 {
            return Err(format!("schedule name {name:?} must be 1 to 128 bytes"));
        }
        let cron = &self.cron;
        Cron::parse(cron).map_err(|e| format!("`--cron` = {cron:?}: {e}"))?;
        Range::parse(&self.range).map_err(|e| format!("`--range`: {e}"))?;
        if let Some(format) = &self.format {
            super::source::Format::parse("--format", format)?;
        }
        let last_due = match &self.since {
            Some(text) => {
                schemas::day::parse_rfc3339(text)
                    .map_err(|e| format!("`--since` = {text:?}: {e}"))?
                    / 1000
            }
            None => now_ms,
        };
        let mut merchants = self.merchants.clone();
        merchants.sort();
        merchants.dedup();
        Ok(store::jobs::Schedule {
            name: name.clone(),
            cron: cron.clone(),
            source: self.source.clone(),
            format: self.format.clone().unwrap_or_default(),
            day_range: self.range.clone(),
            merchants,
            created_at: now_ms,
            last_due,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_request_is_checked_field_by_field() {
        let good = ScheduleRequest {
            name: "nightly".into(),
            cron: "30 2 * * *".into(),
            source: "file:///data/".into(),
            range: "yesterday".into(),
            merchants: vec!["m-2".into(), "m-1".into(), "m-2".into()],
            ..ScheduleRequest::default()
        };
        let schedule = good.check(5_000).unwrap();
        assert_eq!(
            (schedule.merchants.as_slice(), schedule.last_due),
            (&["m-1".to_owned(), "m-2".to_owned()][..], 5_000)
        );
        let since = ScheduleRequest {
            since: Some("2026-11-20T00:00:00Z".into()),
            ..good.clone()
        };
        assert_eq!(
            since.check(5_000).unwrap().last_due,
            at("2026-11-20T00:00:00Z")
        );
        for (bad, names) in [
            (
                ScheduleRequest {
                    name: String::new(),
                    ..good.clone()
                },
                "schedule name",
            ),
            (
                ScheduleRequest {
                    cron: "bad cron".into(),
                    ..good.clone()
                },
                "`--cron`",
            ),
            (
                ScheduleRequest {
                    range: "last-week".into(),
                    ..good.clone()
                },
                "`--range`",
            ),
            (
                ScheduleRequest {
                    format: Some("xml".into()),
                    ..good.clone()
                },
                "--format",
            ),
            (
                ScheduleRequest {
                    since: Some("2026-11-20".into()),
                    ..good.clone()
                },
                "`--since`",
            ),
        ] {
            let error = bad.check(0).unwrap_err();
            assert!(error.contains(names), "{error}");
        }
    }

    fn at(text: &str) -> i64 {
        schemas::day::parse_rfc3339(text).unwrap() / 1000
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
}
