//! The expected-totals file: the exact `merchant_sales` rows a generated run
//! must produce, as CSV, so that any run can be checked key by key.
//!
//! ```text
//! merchant_id,currency,day,sales_amount,sales_count,refund_amount,refund_count
//! m-00001,EUR,2026-11-20,1234.5600,17,20.0000,1
//! ```
//!
//! Amounts are exact decimal text with four fractional digits; `day` is the
//! UTC calendar day. A `merchant_id` holding a comma, a quote or a line break
//! is quoted as RFC 4180 says (`"a,""b"""`). Rows are sorted by key.

use std::fmt;
use std::io::{self, BufRead, Write};

use schemas::{Amount, Day, Sums, Totals, TotalsKey};

/// The header line, which the reader requires verbatim.
pub const HEADER: &str =
    "merchant_id,currency,day,sales_amount,sales_count,refund_amount,refund_count";

/// A line of an expected-totals file that could not be read.
#[derive(Debug)]
pub struct FileError {
    /// 1-based line number (0 for I/O errors before any line).
    pub line: usize,
    /// The column, or `file` for whole-line problems.
    pub field: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, `{}`: {}", self.line, self.field, self.reason)
    }
}

impl std::error::Error for FileError {}

/// Writes `totals` as CSV, header first, one row per key in key order.
///
/// Fails only when `out` does.
pub fn write(totals: &Totals, mut out: impl Write) -> io::Result<()> {
    writeln!(out, "{HEADER}")?;
    for (key, sums) in totals {
        writeln!(
            out,
            "{},{},{},{},{},{},{}",
            quoted(&key.merchant_id),
            key.currency,
            key.day,
            sums.sales_amount,
            sums.sales_count,
            sums.refund_amount,
            sums.refund_count
        )?;
    }
    out.flush()
}

fn quoted(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// Reads a file written by [`write`].
///
/// Fails on the first line that is not a well-formed row, naming the line,
/// the column and the reason; a key that appears twice is an error too.
pub fn read(input: impl BufRead) -> Result<Totals, FileError> {
    let mut totals = Totals::new();
    let mut lines = input.lines().enumerate().map(|(i, line)| (i + 1, line));
    let io_error = |line, e: io::Error| FileError {
        line,
        field: "file",
        reason: e.to_string(),
    };
    match lines.next() {
        Some((_, Ok(header))) if header.trim_end() == HEADER => {}
        Some((n, Ok(other))) => {
            return Err(FileError {
                line: n,
                field: "file",
                reason: format!("header {other:?} is not {HEADER:?}"),
            })
        }
        Some((n, Err(e))) => return Err(io_error(n, e)),
        None => {
            return Err(FileError {
                line: 0,
                field: "file",
                reason: "the file is empty".into(),
            })
        }
    }
    // A quoted merchant id may span lines; gather until quotes balance.
    let mut pending = String::new();
    let mut start = 0;
    for (n, line) in lines {
        let line = line.map_err(|e| io_error(n, e))?;
        if pending.is_empty() {
            start = n;
            if line.trim().is_empty() {
                continue;
            }
        } else {
            pending.push('\n');
        }
        pending.push_str(&line);
        if pending.matches('"').count() % 2 == 1 {
            continue;
        }
        let (key, sums) = row(&pending).map_err(|(field, reason)| FileError {
            line: start,
            field,
            reason,
        })?;
        if totals.insert(key, sums).is_some() {
            return Err(FileError {
                line: start,
                field: "file",
                reason: "this key already appeared".into(),
            });
        }
        pending.clear();
    }
    if !pending.is_empty() {
        return Err(FileError {
            line: start,
            field: "merchant_id",
            reason: "unterminated quoted field".into(),
        });
    }
    Ok(totals)
}

fn row(line: &str) -> Result<(TotalsKey, Sums), (&'static str, String)> {
    let (merchant_id, rest) = if let Some(quoted) = line.strip_prefix('"') {
        let mut id = String::new();
        let mut chars = quoted.char_indices().peekable();
        let rest = loop {
            match chars.next() {
                Some((_, '"')) if chars.peek().map(|c| c.1) == Some('"') => {
                    id.push('"');
                    chars.next();
                }
                Some((i, '"')) => break &quoted[i + 1..],
                Some((_, c)) => id.push(c),
                None => return Err(("merchant_id", "unterminated quoted field".into())),
            }
        };
        let rest = rest.strip_prefix(',').ok_or((
            "merchant_id",
            "expected `,` after the quoted field".to_owned(),
        ))?;
        (id, rest)
    } else {
        let (id, rest) = line
            .split_once(',')
            .ok_or(("file", "expected 7 columns".to_owned()))?;
        (id.to_owned(), rest)
    };
    let columns: Vec<&str> = rest.trim_end_matches('\r').split(',').collect();
    let [currency, day, sales_amount, sales_count, refund_amount, refund_count] = columns[..]
    else {
        return Err((
            "file",
            format!("expected 7 columns, found {}", columns.len() + 1),
        ));
    };
    if merchant_id.is_empty() {
        return Err(("merchant_id", "is empty".into()));
    }
    let amount = |field, text: &str| {
        Amount::parse_stored(text).map_err(|e| (field, format!("{text:?}: {e}")))
    };
    let count = |field, text: &str| {
        text.parse::<i64>()
            .map_err(|e| (field, format!("{text:?}: {e}")))
    };
    let key = TotalsKey {
        merchant_id,
        currency: currency.to_owned(),
        day: Day::parse(day).map_err(|e| ("day", format!("{day:?}: {e}")))?,
    };
    let sums = Sums {
        sales_amount: amount("sales_amount", sales_amount)?,
        sales_count: count("sales_count", sales_count)?,
        refund_amount: amount("refund_amount", refund_amount)?,
        refund_count: count("refund_count", refund_count)?,
    };
    Ok((key, sums))
}

/// How one key differs between the expected totals and the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The key.
    pub key: TotalsKey,
    /// The expected row, if the file has one.
    pub expected: Option<Sums>,
    /// The database row, if it has one.
    pub actual: Option<Sums>,
}

/// Every key whose row differs, is missing, or is unexpected, in key order.
pub fn differences(expected: &Totals, actual: &Totals) -> Vec<Difference> {
    let keys: std::collections::BTreeSet<&TotalsKey> =
        expected.keys().chain(actual.keys()).collect();
    keys.into_iter()
        .filter(|key| expected.get(*key) != actual.get(*key))
        .map(|key| Difference {
            key: key.clone(),
            expected: expected.get(key).cloned(),
            actual: actual.get(key).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Totals {
        let mut totals = Totals::new();
        for (merchant, units) in [("m-1", 12_345_600), ("odd, \"quoted\"\nid", 1), ("m-2", 0)] {
            totals.insert(
                TotalsKey {
                    merchant_id: merchant.into(),
                    currency: "EUR".into(),
                    day: Day(20_777),
                },
                Sums {
                    sales_amount: Amount(units),
                    sales_count: 3,
                    refund_amount: Amount(7),
                    refund_count: 1,
                },
            );
        }
        totals
    }

    #[test]
    fn round_trips_exactly() {
        let mut bytes = Vec::new();
        write(&sample(), &mut bytes).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(HEADER));
        assert!(
            text.contains("m-1,EUR,2026-11-20,1234.5600,3,0.0007,1"),
            "{text}"
        );
        assert_eq!(read(bytes.as_slice()).unwrap(), sample());
    }

    #[test]
    fn bad_rows_name_line_and_column() {
        let text = format!("{HEADER}\nm-1,EUR,2026-11-20,1.00001,1,0,0\n");
        let error = read(text.as_bytes()).unwrap_err();
        assert_eq!((error.line, error.field), (2, "sales_amount"));
        let text = format!("{HEADER}\nm-1,EUR,2026-13-01,1,1,0,0\n");
        assert_eq!(read(text.as_bytes()).unwrap_err().field, "day");
        let text = format!("{HEADER}\nm-1,EUR,2026-11-20,1,1,0\n");
        assert_eq!(read(text.as_bytes()).unwrap_err().field, "file");
        assert_eq!(read("merchant,currency\n".as_bytes()).unwrap_err().line, 1);
    }

    #[test]
    fn differences_list_changed_missing_and_unexpected_keys() {
        let expected = sample();
        let mut actual = sample();
        let first = expected.keys().next().unwrap().clone();
        actual.get_mut(&first).unwrap().sales_count += 1;
        let extra = TotalsKey {
            merchant_id: "new".into(),
            currency: "USD".into(),
            day: Day(1),
        };
        actual.insert(extra.clone(), Sums::default());
        let last = expected.keys().last().unwrap().clone();
        actual.remove(&last);
        let keys: Vec<TotalsKey> = differences(&expected, &actual)
            .into_iter()
            .map(|d| d.key)
            .collect();
        let mut want = vec![first, extra, last];
        want.sort();
        assert_eq!(keys, want);
    }
}
