//! The hand-written parsers, which are on the hot path, proven against
//! maintained libraries over edge cases and generated inputs:
//!
//! - amounts against rust_decimal: what tally accepts, rust_decimal reads as
//!   the same value; what tally refuses breaks one of its documented rules
//!   (plain `digits[.digits]`, at most 4 fractional and 18 integer digits,
//!   greater than 0), or rust_decimal refuses it too;
//! - RFC 3339 against chrono: what tally accepts, chrono reads as the same
//!   instant (to the microsecond; a leap second as the last microsecond of
//!   its minute); what tally refuses, chrono refuses, or it lies outside the
//!   years tally keeps (0001–9999, as stated and as a UTC day).
//!
//! The JSON scanner is proven against serde_json by the `decode` and
//! `ingest_body` fuzz targets (`fuzz/`), which `scripts/test` runs.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike};
use rust_decimal::Decimal;
use schemas::day::parse_rfc3339;
use schemas::Amount;

/// A small deterministic generator (SplitMix64): the same inputs every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// `from` to `below - 1` random digits.
    fn digits(&mut self, from: usize, below: usize) -> String {
        let n = from + self.below(below - from);
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
}

/// tally's own rules for the text of an amount, beyond its value.
fn plain_decimal_within_limits(text: &str) -> bool {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !int.is_empty()
        && digits(int)
        && digits(frac)
        && !(text.contains('.') && frac.is_empty())
        && frac.len() <= 4
        && int.trim_start_matches('0').len() <= 18
}

/// Checks one amount; true when tally accepted it.
fn check_amount(text: &str) -> bool {
    let ours = Amount::parse_event_amount(text);
    let theirs = Decimal::from_str_exact(text);
    match (&ours, &theirs) {
        (Ok(amount), Ok(decimal)) => {
            assert_eq!(Decimal::from_i128_with_scale(amount.0, 4), *decimal, "{text:?}");
        }
        (Ok(amount), Err(e)) => panic!("{text:?}: tally accepted {amount}, rust_decimal refused: {e}"),
        (Err(_), Ok(decimal)) => assert!(
            !plain_decimal_within_limits(text) || decimal.is_zero() || decimal.is_sign_negative(),
            "{text:?}: tally refused ({ours:?}) what rust_decimal reads as {decimal}, within tally's rules"
        ),
        (Err(_), Err(_)) => {}
    }
    ours.is_ok()
}

#[test]
fn amounts_agree_with_rust_decimal() {
    for text in [
        "19.99",
        "0.0001",
        "1",
        "007.50",
        "999999999999999999.9999",
        "1000000000000000000",
        "0",
        "0.0000",
        "-5",
        "+5",
        "1.23456",
        "1.",
        ".5",
        "1e2",
        "1E2",
        "1,50",
        "1_000",
        " 1",
        "1 ",
        "",
        "-",
        "-0",
        "00",
        "0.00001",
        "12345678901234567890",
        "000000000000000000001.5",
    ] {
        check_amount(text);
    }
    let mut rng = Rng(7);
    let mut accepted = 0;
    for _ in 0..200_000 {
        let text = match rng.below(3) {
            // Decimal-looking text around the limits.
            0 => {
                let int = rng.digits(0, 22);
                match rng.below(3) {
                    0 => int,
                    _ => format!("{int}.{}", rng.digits(0, 7)),
                }
            }
            // Any mix of the characters amounts are written with.
            1 => (0..rng.below(12))
                .map(|_| rng.pick(&["0", "1", "9", "5", ".", "-", "+", "e", "_", " ", ","]))
                .collect(),
            // A valid amount with one character changed.
            _ => {
                let mut text: Vec<u8> =
                    format!("{}.{}", rng.digits(1, 6), rng.digits(1, 5)).into_bytes();
                let at = rng.below(text.len());
                text[at] = rng.pick(&["0", ".", "-", "e", "x"]).as_bytes()[0];
                String::from_utf8(text).unwrap()
            }
        };
        accepted += usize::from(check_amount(&text));
    }
    // Both sides of the line are well covered.
    assert!(
        (40_000..160_000).contains(&accepted),
        "{accepted} of 200000 accepted"
    );
}

/// Checks one timestamp; true when tally accepted it.
fn check_timestamp(text: &str) -> bool {
    let ours = parse_rfc3339(text);
    let theirs = DateTime::parse_from_rfc3339(text);
    match (&ours, &theirs) {
        (Ok(micros), Ok(instant)) => {
            // chrono keeps a leap second as a nanosecond count of 1e9 or more
            // within second 59; tally reads it as that second's last microsecond.
            let nanos = instant.nanosecond();
            let want = if nanos >= 1_000_000_000 {
                instant.timestamp() * 1_000_000 + 999_999
            } else {
                instant.timestamp() * 1_000_000 + i64::from(nanos / 1_000)
            };
            assert_eq!(*micros, want, "{text:?}");
        }
        (Ok(micros), Err(e)) => panic!("{text:?}: tally accepted {micros}, chrono refused: {e}"),
        (Err(error), Ok(instant)) => {
            let utc_year = instant.naive_utc().year();
            let outside = !(1..=9999).contains(&instant.year()) || !(1..=9999).contains(&utc_year);
            assert!(
                outside,
                "{text:?}: tally refused ({error}) what chrono reads as {instant}"
            );
        }
        (Err(_), Err(_)) => {}
    }
    ours.is_ok()
}

#[test]
fn timestamps_agree_with_chrono() {
    for text in [
        "2026-11-20T13:45:10Z",
        "2026-11-20t13:45:10z",
        "2026-11-20 13:45:10Z",
        "2016-12-31T23:59:60Z",
        "2016-12-31T23:59:60.5+00:00",
        "2026-11-21T00:30:00+01:00",
        "2026-11-20T23:30:00-05:00",
        "2026-11-20T13:45:10.123456789Z",
        "2026-11-20T13:45:10.1234567891234Z",
        "2026-02-29T10:00:00Z",
        "2024-02-29T10:00:00Z",
        "2026-11-20T24:00:00Z",
        "2026-11-20T10:00:00",
        "2026-11-20",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:30:00+01:00",
        "0000-12-31T23:00:00-02:00",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:30:00-01:00",
        "1969-12-31T23:59:59.999999Z",
        "2026-11-20T13:45:10+23:59",
        "2026-11-20T13:45:10+24:00",
        "2026-11-20T13:45:10-00:00",
        "2026-11-20T13:45:10+0100",
        "2026-11-20T13:45:10.Z",
        "2026-1-20T13:45:10Z",
        "+2026-11-20T13:45:10Z",
    ] {
        check_timestamp(text);
    }
    let mut rng = Rng(11);
    let mut accepted = 0;
    for _ in 0..200_000 {
        let year = match rng.below(4) {
            0 => format!("{:04}", rng.below(10_000)),
            _ => format!("{}", 1900 + rng.below(200)),
        };
        let mut text = format!(
            "{year}-{:02}-{:02}{}{:02}:{:02}:{:02}{}{}",
            rng.below(14),
            rng.below(33),
            rng.pick(&["T", "T", "t", " ", "_"]),
            rng.below(26),
            rng.below(61),
            rng.below(62),
            rng.pick(&[
                "",
                "",
                ".5",
                ".123",
                ".123456",
                ".123456789",
                ".1234567891",
                "."
            ]),
            rng.pick(&[
                "Z", "Z", "z", "+01:00", "-05:30", "+14:00", "-23:59", "+24:00", "", "+0100", "+01"
            ]),
        );
        // Now and then, one character changed.
        if rng.below(4) == 0 {
            let mut bytes = text.into_bytes();
            let at = rng.below(bytes.len());
            bytes[at] = rng.pick(&["0", "9", ":", "-", "T", "x", "+"]).as_bytes()[0];
            text = String::from_utf8(bytes).unwrap();
        }
        accepted += usize::from(check_timestamp(&text));
    }
    assert!(
        (20_000..180_000).contains(&accepted),
        "{accepted} of 200000 accepted"
    );
}

#[test]
fn the_helpers_hold() {
    assert!(
        plain_decimal_within_limits("1.5")
            && !plain_decimal_within_limits("1.")
            && !plain_decimal_within_limits(".5")
    );
    assert_eq!(Decimal::from_str("19.99").unwrap().to_string(), "19.99");
}
