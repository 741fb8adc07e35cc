//! What an operator asks for when adding a schedule, checked into the
//! schedule the database stores.

use schemas::job::{Cron, Format, Range};

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
    /// Whether `today` may be asked for: its jobs replace a day still going on.
    pub include_open_days: bool,
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
        let cron = Cron::parse(cron).map_err(|e| format!("`--cron` = {cron:?}: {e}"))?;
        let day_range = Range::parse(&self.range).map_err(|e| format!("`--range`: {e}"))?;
        if day_range == Range::Today && !self.include_open_days {
            return Err("`--range` = \"today\": each job would replace a day still going on, erasing \
                 the events streamed after its files were written; use yesterday or last-N-days, or \
                 pass --include-open-days to replace today anyway"
                .to_owned());
        }
        let format = match &self.format {
            Some(format) => Some(Format::parse("--format", format)?),
            None => None,
        };
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
            cron,
            source: self.source.clone(),
            format,
            day_range,
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
            (
                ScheduleRequest {
                    range: "today".into(),
                    ..good.clone()
                },
                "--include-open-days",
            ),
        ] {
            let error = bad.check(0).unwrap_err();
            assert!(error.contains(names), "{error}");
        }
    }

    #[test]
    fn today_is_a_range_only_when_asked_for_by_name() {
        let today = ScheduleRequest {
            name: "intraday".into(),
            cron: "0 * * * *".into(),
            range: "today".into(),
            include_open_days: true,
            ..ScheduleRequest::default()
        };
        assert_eq!(today.check(0).unwrap().day_range, Range::Today);
    }

    fn at(text: &str) -> i64 {
        schemas::day::parse_rfc3339(text).unwrap() / 1000
    }
}
