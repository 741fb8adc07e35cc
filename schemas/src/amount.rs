//! Exact money amounts.
//!
//! An [`Amount`] is an integer count of ten-thousandths, the same
//! representation as Arrow's `Decimal128(38,4)` and PostgreSQL's
//! `NUMERIC(38,4)`. Amounts are parsed from their decimal text and never pass
//! through a float.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fractional digits kept for every amount.
pub const SCALE: i8 = 4;
/// Total decimal digits of the column type.
pub const PRECISION: u8 = 38;
/// Most integer digits an event's amount may have.
pub const MAX_INTEGER_DIGITS: usize = 18;
const UNITS_PER_WHOLE: i128 = 10_000;

/// A signed amount in units of 0.0001.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub i128);

/// Why a decimal text is not an acceptable event amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Empty text.
    #[error("is empty")]
    Empty,
    /// Something other than digits and one dot (signs, exponents, spaces).
    #[error("is not a plain decimal number (digits with an optional '.' and fraction)")]
    NotDecimal,
    /// More than four fractional digits.
    #[error("has more than 4 fractional digits")]
    TooPrecise,
    /// More than eighteen integer digits.
    #[error("has too many integer digits (at most 18)")]
    TooLarge,
    /// Zero or negative.
    #[error("must be greater than 0")]
    NotPositive,
}

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);

    /// Parses an event amount: `digits[.digits]`, > 0, at most 4 fractional
    /// and 18 integer digits. A leading `-` is reported as not positive.
    ///
    /// Fails with the first rule the text breaks.
    pub fn parse_event_amount(text: &str) -> Result<Amount, AmountError> {
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Err(AmountError::Empty);
        }
        if bytes[0] == b'-' {
            return match Self::parse_unsigned(&bytes[1..], MAX_INTEGER_DIGITS) {
                Ok(_) => Err(AmountError::NotPositive),
                Err(e) => Err(e),
            };
        }
        let amount = Self::parse_unsigned(bytes, MAX_INTEGER_DIGITS)?;
        if amount.0 == 0 {
            return Err(AmountError::NotPositive);
        }
        Ok(amount)
    }

    fn parse_unsigned(bytes: &[u8], max_integer_digits: usize) -> Result<Amount, AmountError> {
        let (int_part, frac_part) = match bytes.iter().position(|&b| b == b'.') {
            Some(dot) => (&bytes[..dot], Some(&bytes[dot + 1..])),
            None => (bytes, None),
        };
        if int_part.is_empty() || frac_part.is_some_and(|f| f.is_empty()) {
            return Err(AmountError::NotDecimal);
        }
        let frac = frac_part.unwrap_or(&[]);
        if !int_part.iter().chain(frac).all(u8::is_ascii_digit) {
            return Err(AmountError::NotDecimal);
        }
        if frac.len() > SCALE as usize {
            return Err(AmountError::TooPrecise);
        }
        let significant = int_part.iter().skip_while(|&&b| b == b'0').count();
        if significant > max_integer_digits {
            return Err(AmountError::TooLarge);
        }
        let mut units: i128 = 0;
        for &b in int_part {
            units = units * 10 + i128::from(b - b'0');
        }
        let mut frac_units: i128 = 0;
        for i in 0..SCALE as usize {
            frac_units = frac_units * 10 + frac.get(i).map_or(0, |&b| i128::from(b - b'0'));
        }
        Ok(Amount(units * UNITS_PER_WHOLE + frac_units))
    }

    /// Parses the canonical text written by [`Amount`]'s `Display` (any sign,
    /// up to 4 fractional digits, no digit limit below 38). Used for values
    /// read back from the database.
    pub fn parse_stored(text: &str) -> Result<Amount, AmountError> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        // NUMERIC(38,4) leaves 34 integer digits.
        let amount = Self::parse_unsigned(rest.as_bytes(), (PRECISION - SCALE as u8) as usize)?;
        Ok(if negative { Amount(-amount.0) } else { amount })
    }

    /// Adds, saturating never: sums beyond 38 digits are out of the column's range.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;
    fn add(self, rhs: Amount) -> Amount {
        Amount(self.0 + rhs.0)
    }
}

impl std::ops::Sub for Amount {
    type Output = Amount;
    fn sub(self, rhs: Amount) -> Amount {
        Amount(self.0 - rhs.0)
    }
}

impl std::ops::AddAssign for Amount {
    fn add_assign(&mut self, rhs: Amount) {
        self.0 += rhs.0;
    }
}

impl fmt::Display for Amount {
    /// Always four fractional digits: `19.9900`, `-0.5000`. The text
    /// round-trips exactly through [`Amount::parse_stored`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / UNITS_PER_WHOLE as u128;
        let frac = abs % UNITS_PER_WHOLE as u128;
        write!(f, "{sign}{whole}.{frac:04}")
    }
}

impl FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Amount, AmountError> {
        Amount::parse_stored(s)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Amount::parse_stored(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_units() {
        assert_eq!(Amount::parse_event_amount("19.99"), Ok(Amount(199_900)));
        assert_eq!(Amount::parse_event_amount("0.0001"), Ok(Amount(1)));
        assert_eq!(Amount::parse_event_amount("7"), Ok(Amount(70_000)));
        assert_eq!(
            Amount::parse_event_amount("999999999999999999.9999"),
            Ok(Amount(9_999_999_999_999_999_999_999))
        );
    }

    #[test]
    fn rejects_each_rule() {
        use AmountError::*;
        assert_eq!(Amount::parse_event_amount(""), Err(Empty));
        assert_eq!(Amount::parse_event_amount("-5"), Err(NotPositive));
        assert_eq!(Amount::parse_event_amount("0.000"), Err(NotPositive));
        assert_eq!(Amount::parse_event_amount("1.23456"), Err(TooPrecise));
        assert_eq!(
            Amount::parse_event_amount("1234567890123456789"),
            Err(TooLarge)
        );
        assert_eq!(Amount::parse_event_amount("1e3"), Err(NotDecimal));
        assert_eq!(Amount::parse_event_amount("1."), Err(NotDecimal));
        assert_eq!(Amount::parse_event_amount(".5"), Err(NotDecimal));
        assert_eq!(Amount::parse_event_amount("+5"), Err(NotDecimal));
        assert_eq!(Amount::parse_event_amount(" 5"), Err(NotDecimal));
    }

    #[test]
    fn display_round_trips() {
        for units in [0i128, 1, -1, 199_900, -70_000, i128::from(i64::MAX) * 1000] {
            let text = Amount(units).to_string();
            assert_eq!(Amount::parse_stored(&text), Ok(Amount(units)), "{text}");
        }
        assert_eq!(Amount(-5_000).to_string(), "-0.5000");
    }
}
