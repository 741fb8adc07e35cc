//! The order event: its owned form, its validation rules, and the borrowed
//! decoder used on the worker's hot path.
//!
//! Decoding scans the object once for the raw token of each field (no
//! `serde_json::Value` tree, no serde visitors) and borrows strings from the
//! message wherever they hold no escapes.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The decoder's fast path for events laid out as producers write them.
mod fast;

use crate::amount::Amount;
use crate::day::{parse_rfc3339, Day, EpochMicros};
use crate::scan::{object_fields, same, Shape, Token};

/// Longest accepted `event_id`, `order_id` or `merchant_id`, in bytes.
pub const MAX_ID_BYTES: usize = 128;
const MAX_VALUE_IN_REASON: usize = 64;

/// Whether an event adds to sales or to refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Adds to `sales_amount` and `sales_count`.
    Sale,
    /// Adds to `refund_amount` and `refund_count`; subtracts from net.
    Refund,
}

impl Kind {
    /// The event's spelling: `sale` or `refund`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sale => "sale",
            Kind::Refund => "refund",
        }
    }
}

/// An order event as producers write it (owned; used by generators and tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// Dedupe key: the same logical event always carries the same id.
    pub event_id: String,
    /// The order this event belongs to.
    pub order_id: String,
    /// The merchant, also the message key.
    pub merchant_id: String,
    /// Sale or refund.
    pub kind: Kind,
    /// Positive amount with at most 4 fractional digits.
    pub amount: Amount,
    /// ISO 4217 shaped currency code.
    pub currency: String,
    /// RFC 3339 timestamp with an offset.
    pub occurred_at: String,
}

/// A decoded event that passed every rule. Strings borrow from the message
/// unless they contained JSON escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEvent<'a> {
    /// Dedupe key.
    pub event_id: Cow<'a, str>,
    /// Order id.
    pub order_id: Cow<'a, str>,
    /// Merchant id.
    pub merchant_id: Cow<'a, str>,
    /// Sale or refund.
    pub kind: Kind,
    /// Exact amount, > 0.
    pub amount: Amount,
    /// Three upper-case ASCII letters.
    pub currency: Cow<'a, str>,
    /// `occurred_at` in UTC microseconds.
    pub occurred_at: EpochMicros,
    /// The UTC day of `occurred_at`.
    pub day: Day,
}

impl<'a> ValidEvent<'a> {
    /// An event of fields that each passed their rule; the day follows from
    /// `occurred_at`.
    pub(crate) fn new(
        event_id: impl Into<Cow<'a, str>>,
        order_id: impl Into<Cow<'a, str>>,
        merchant_id: impl Into<Cow<'a, str>>,
        kind: Kind,
        amount: Amount,
        currency: impl Into<Cow<'a, str>>,
        occurred_at: EpochMicros,
    ) -> ValidEvent<'a> {
        ValidEvent {
            event_id: event_id.into(),
            order_id: order_id.into(),
            merchant_id: merchant_id.into(),
            kind,
            amount,
            currency: currency.into(),
            occurred_at,
            day: Day::of_micros(occurred_at),
        }
    }
}

/// Why an event was rejected: the field, the offending value (shortened) and
/// the rule it broke. Sent to the dead-letter topic in headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The event field, or `payload` when the message is not a JSON object.
    pub field: &'static str,
    /// The offending value as it appeared, cut to 64 characters.
    pub value: String,
    /// The rule that was broken.
    pub reason: String,
}

impl Invalid {
    /// A rejection of `value` in `field`; the value is cut to 64 characters.
    pub fn new(field: &'static str, value: &str, reason: impl Into<String>) -> Invalid {
        let value = match value.char_indices().nth(MAX_VALUE_IN_REASON) {
            Some((cut, _)) => format!("{}…", &value[..cut]),
            None => value.to_owned(),
        };
        Invalid {
            field,
            value,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field `{}`: value {:?} {}",
            self.field, self.value, self.reason
        )
    }
}

/// The event's fields, in the order `decode` reads them from the scan.
pub(crate) const FIELDS: [&str; 7] = [
    "event_id",
    "order_id",
    "merchant_id",
    "kind",
    "amount",
    "currency",
    "occurred_at",
];

fn present<'a>(raw: Option<Token<'a>>, field: &'static str) -> Result<Token<'a>, Invalid> {
    match raw {
        None => Err(Invalid::new(field, "", "is missing")),
        Some(token) if same(token.raw.as_bytes(), b"null") => {
            Err(Invalid::new(field, "", "is missing"))
        }
        Some(token) => Ok(token),
    }
}

fn string<'a>(
    raw: Option<Token<'a>>,
    field: &'static str,
) -> Result<(Cow<'a, str>, Shape), Invalid> {
    let token = present(raw, field)?;
    let inner = || &token.raw[1..token.raw.len() - 1];
    match token.shape {
        Shape::Printable | Shape::Unescaped => Ok((Cow::Borrowed(inner()), token.shape)),
        Shape::Escaped => serde_json::from_str::<String>(token.raw)
            .map(|value| (Cow::Owned(value), Shape::Escaped))
            .map_err(|e| Invalid::new(field, token.raw, format!("is not a valid string: {e}"))),
        Shape::Other => Err(Invalid::new(field, token.raw, "must be a JSON string")),
    }
}

fn id<'a>(raw: Option<Token<'a>>, field: &'static str) -> Result<Cow<'a, str>, Invalid> {
    let (value, shape) = string(raw, field)?;
    check_length(&value, field)?;
    // Printable ASCII holds no control character: only other strings need the scan.
    if shape != Shape::Printable {
        check_controls(&value, field)?;
    }
    Ok(value)
}

/// Checks a merchant id given anywhere (a flag, a file) by the event's rules.
pub fn check_merchant_id(value: &str) -> Result<(), Invalid> {
    check_id(value, "merchant_id")
}

fn check_id(value: &str, field: &'static str) -> Result<(), Invalid> {
    check_length(value, field)?;
    check_controls(value, field)
}

fn check_length(value: &str, field: &'static str) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(Invalid::new(field, value, "must be 1 to 128 bytes long"));
    }
    Ok(())
}

#[inline]
fn check_controls(value: &str, field: &'static str) -> Result<(), Invalid> {
    // PostgreSQL refuses U+0000 in text, and no id needs a control character.
    // Raw C0 controls never reach here from JSON (it forbids them unescaped),
    // so the byte test only lets DEL, C1 controls (lead byte 0xC2) and
    // unescaped strings through to the exact check. Every byte is tested,
    // without stopping at the first suspect one: the loop then runs many
    // bytes at a time (three times as fast on ids of 10 to 36 bytes).
    let suspect = (value.bytes()).fold(false, |seen, b| {
        seen | (b < 0x20) | (b == 0x7f) | (b == 0xc2)
    });
    if suspect {
        return controls_in(value, field);
    }
    Ok(())
}

/// [`check_controls`]' exact check, apart so that the usual path inlines.
#[cold]
fn controls_in(value: &str, field: &'static str) -> Result<(), Invalid> {
    match value.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => {
            let reason = format!(
                "must not contain control characters (U+{:04X} at byte {at})",
                u32::from(c)
            );
            Err(Invalid::new(field, value, reason))
        }
        None => Ok(()),
    }
}

fn kind(raw: Option<Token<'_>>) -> Result<Kind, Invalid> {
    kind_of(&string(raw, "kind")?.0)
}

fn kind_of(value: &str) -> Result<Kind, Invalid> {
    match value.as_bytes() {
        sale if same(sale, b"sale") => Ok(Kind::Sale),
        refund if same(refund, b"refund") => Ok(Kind::Refund),
        _ => Err(Invalid::new(
            "kind",
            value,
            "must be \"sale\" or \"refund\"",
        )),
    }
}

fn amount(raw: Option<Token<'_>>) -> Result<Amount, Invalid> {
    let token = present(raw, "amount")?;
    let text: Cow<'_, str> = if token.shape != Shape::Other {
        string(raw, "amount")?.0
    } else if token
        .raw
        .starts_with(|c: char| c == '-' || c.is_ascii_digit())
    {
        Cow::Borrowed(token.raw)
    } else {
        return Err(Invalid::new(
            "amount",
            token.raw,
            "must be a decimal string or a JSON number",
        ));
    };
    amount_of(&text)
}

fn amount_of(text: &str) -> Result<Amount, Invalid> {
    Amount::parse_event_amount(text).map_err(|e| Invalid::new("amount", text, e.to_string()))
}

fn currency<'a>(raw: Option<Token<'a>>) -> Result<Cow<'a, str>, Invalid> {
    let (value, _) = string(raw, "currency")?;
    check_currency(&value)?;
    Ok(value)
}

/// Checks a currency code given anywhere (a query parameter) by the event's rule.
pub fn check_currency(value: &str) -> Result<(), Invalid> {
    if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Invalid::new(
            "currency",
            value,
            "must be three upper-case letters (ISO 4217)",
        ));
    }
    Ok(())
}

fn occurred_at(raw: Option<Token<'_>>) -> Result<EpochMicros, Invalid> {
    occurred_at_of(&string(raw, "occurred_at")?.0)
}

fn occurred_at_of(value: &str) -> Result<EpochMicros, Invalid> {
    parse_rfc3339(value).map_err(|e| Invalid::new("occurred_at", value, e.to_string()))
}

/// An event's fields as separate column values (a row of a backfill file),
/// `None` where the value is null or the column is absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Columns<'a> {
    /// `event_id` text.
    pub event_id: Option<&'a str>,
    /// `order_id` text.
    pub order_id: Option<&'a str>,
    /// `merchant_id` text.
    pub merchant_id: Option<&'a str>,
    /// `kind` text.
    pub kind: Option<&'a str>,
    /// `amount` as decimal text (a decimal column's exact text).
    pub amount: Option<&'a str>,
    /// `currency` text.
    pub currency: Option<&'a str>,
    /// `occurred_at`: RFC 3339 text, or a timestamp column's UTC microseconds.
    pub occurred_at: Option<Occurred<'a>>,
}

/// How a file holds `occurred_at`.
#[derive(Debug, Clone, Copy)]
pub enum Occurred<'a> {
    /// RFC 3339 text with an offset, as in the event.
    Text(&'a str),
    /// A timestamp column, already in UTC microseconds.
    Micros(EpochMicros),
}

/// Validates one row of a backfill file by the same rules as a message.
pub fn from_columns(row: Columns<'_>) -> Result<ValidEvent<'_>, Invalid> {
    fn need<'a>(value: Option<&'a str>, field: &'static str) -> Result<&'a str, Invalid> {
        value.ok_or_else(|| Invalid::new(field, "", "is missing"))
    }
    let event_id = need(row.event_id, "event_id")?;
    check_id(event_id, "event_id")?;
    let order_id = need(row.order_id, "order_id")?;
    check_id(order_id, "order_id")?;
    let merchant_id = need(row.merchant_id, "merchant_id")?;
    check_id(merchant_id, "merchant_id")?;
    let kind = kind_of(need(row.kind, "kind")?)?;
    let amount = amount_of(need(row.amount, "amount")?)?;
    let currency = need(row.currency, "currency")?;
    check_currency(currency)?;
    let occurred_at = match row.occurred_at {
        None => return Err(Invalid::new("occurred_at", "", "is missing")),
        Some(Occurred::Text(text)) => occurred_at_of(text)?,
        Some(Occurred::Micros(micros)) => {
            let day = Day::of_micros(micros).checked();
            day.map_err(|e| {
                Invalid::new(
                    "occurred_at",
                    &crate::day::format_rfc3339_millis(micros),
                    e.to_string(),
                )
            })?;
            micros
        }
    };
    Ok(ValidEvent::new(
        event_id,
        order_id,
        merchant_id,
        kind,
        amount,
        currency,
        occurred_at,
    ))
}

/// Decodes and validates one message value. `key` is the message key; when
/// present, `merchant_id` must equal it.
///
/// An event laid out as producers write it takes a fast path (`fast`);
/// any other layout, and every invalid event, the general one.
///
/// Fails with the first rule the message breaks: invalid UTF-8, not a JSON
/// object, or a field rule from the event schema.
pub fn decode<'a>(payload: &'a [u8], key: Option<&[u8]>) -> Result<ValidEvent<'a>, Invalid> {
    let text = utf8(payload)?;
    match fast::decode(text, key) {
        Some(event) => Ok(event),
        None => general(text, key),
    }
}

/// [`decode`] without the fast path, for the tests that compare the two.
#[cfg(test)]
pub(crate) fn decode_general<'a>(
    payload: &'a [u8],
    key: Option<&[u8]>,
) -> Result<ValidEvent<'a>, Invalid> {
    general(utf8(payload)?, key)
}

fn utf8(payload: &[u8]) -> Result<&str, Invalid> {
    std::str::from_utf8(payload).map_err(|e| {
        Invalid::new(
            "payload",
            "",
            format!("is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })
}

/// Any layout of the event, and the rule it breaks when it breaks one.
fn general<'a>(text: &'a str, key: Option<&[u8]>) -> Result<ValidEvent<'a>, Invalid> {
    if !text.trim_start().starts_with('{') {
        return Err(Invalid::new("payload", text, "is not a JSON object"));
    }
    let [event_id, order_id, merchant_id, kind_token, amount_token, currency_token, occurred_at_token] =
        object_fields(text, &FIELDS).map_err(|e| {
            Invalid::new(
                "payload",
                text,
                format!("is not a valid JSON object: {} at byte {}", e.reason, e.at),
            )
        })?;
    let event_id = id(event_id, "event_id")?;
    let order_id = id(order_id, "order_id")?;
    let merchant_id = id(merchant_id, "merchant_id")?;
    if let Some(key) = key {
        if !same(key, merchant_id.as_bytes()) {
            let reason = format!(
                "does not equal the message key {:?}",
                String::from_utf8_lossy(key)
            );
            return Err(Invalid::new("merchant_id", &merchant_id, reason));
        }
    }
    let kind = kind(kind_token)?;
    let amount = amount(amount_token)?;
    let currency = currency(currency_token)?;
    let occurred_at = occurred_at(occurred_at_token)?;
    Ok(ValidEvent::new(
        event_id,
        order_id,
        merchant_id,
        kind,
        amount,
        currency,
        occurred_at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"event_id":"e-1","order_id":"o-1","merchant_id":"m-42","kind":"sale","amount":"19.99","currency":"EUR","occurred_at":"2026-11-20T13:45:10.123Z","extra":{"nested":[1,2]}}"#;

    fn field_of(payload: &str) -> &'static str {
        decode(payload.as_bytes(), None).unwrap_err().field
    }

    #[test]
    fn decodes_a_good_event() {
        let event = decode(GOOD.as_bytes(), Some(b"m-42")).unwrap();
        assert_eq!(event.amount, Amount(199_900));
        assert_eq!(event.day.to_string(), "2026-11-20");
        assert!(matches!(event.merchant_id, Cow::Borrowed("m-42")));
    }

    #[test]
    fn numbers_are_read_from_their_text() {
        let payload = GOOD.replace(r#""19.99""#, "0.1");
        assert_eq!(
            decode(payload.as_bytes(), None).unwrap().amount,
            Amount(1000)
        );
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(field_of(&GOOD.replace(r#""19.99""#, r#""-5""#)), "amount");
        assert_eq!(
            field_of(&GOOD.replace(r#""19.99""#, r#""1.23456""#)),
            "amount"
        );
        assert_eq!(field_of(&GOOD.replace(r#""19.99""#, "1e2")), "amount");
        assert_eq!(field_of(&GOOD.replace("EUR", "eur")), "currency");
        assert_eq!(
            field_of(&GOOD.replace(r#""merchant_id":"m-42","#, "")),
            "merchant_id"
        );
        assert_eq!(field_of(&GOOD.replace(r#""o-1""#, "17")), "order_id");
        assert_eq!(field_of(&GOOD.replace("sale", "chargeback")), "kind");
        assert_eq!(
            field_of(&GOOD.replace("13:45:10.123Z", "13:45:10")),
            "occurred_at"
        );
        assert_eq!(field_of(&GOOD.replace(r#""e-1""#, r#""""#)), "event_id");
        assert_eq!(field_of("{not json"), "payload");
        assert_eq!(field_of("[1,2]"), "payload");
        assert_eq!(decode(b"\xff\xfe", None).unwrap_err().field, "payload");
        let mismatch = decode(GOOD.as_bytes(), Some(b"m-7")).unwrap_err();
        assert_eq!(mismatch.field, "merchant_id");
        assert!(mismatch.to_string().contains("message key"), "{mismatch}");
    }

    #[test]
    fn control_characters_in_ids_are_refused_by_field() {
        for (from, to, field) in [
            (r#""m-42","kind""#, r#""m\u0000x","kind""#, "merchant_id"),
            (r#""e-1""#, r#""e\u001f1""#, "event_id"),
            (r#""o-1""#, "\"o\u{7f}1\"", "order_id"),
            (r#""o-1""#, "\"o\u{85}1\"", "order_id"),
        ] {
            let invalid = decode(GOOD.replace(from, to).as_bytes(), None).unwrap_err();
            assert_eq!(invalid.field, field, "{to}");
            assert!(invalid.reason.contains("control characters"), "{invalid}");
        }
        let unicode = GOOD.replace(r#""o-1""#, r#""o-ü-日本""#);
        assert_eq!(
            decode(unicode.as_bytes(), None).unwrap().order_id,
            "o-ü-日本"
        );
    }

    #[test]
    fn days_outside_the_era_are_refused() {
        for stated in [
            "9999-12-31T23:30:00-01:00",
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:10:00+00:20",
        ] {
            let payload = GOOD.replace("2026-11-20T13:45:10.123Z", stated);
            let invalid = decode(payload.as_bytes(), None).unwrap_err();
            assert_eq!(invalid.field, "occurred_at", "{stated}");
            assert!(
                invalid.reason.contains("0001-01-01..9999-12-31"),
                "{invalid}"
            );
        }
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let payload = GOOD.replace(r#""o-1""#, r#""o-\u0031""#);
        assert_eq!(decode(payload.as_bytes(), None).unwrap().order_id, "o-1");
    }

    #[test]
    fn columns_follow_the_same_rules() {
        let good = Columns {
            event_id: Some("e-1"),
            order_id: Some("o-1"),
            merchant_id: Some("m-1"),
            kind: Some("refund"),
            amount: Some("19.99"),
            currency: Some("EUR"),
            occurred_at: Some(Occurred::Text("2026-11-20T23:30:00-01:00")),
        };
        let event = from_columns(good).unwrap();
        assert_eq!(
            (event.kind, event.amount, event.day),
            (
                Kind::Refund,
                Amount(199_900),
                Day::parse("2026-11-21").unwrap()
            )
        );
        let micros = Columns {
            occurred_at: Some(Occurred::Micros(event.occurred_at)),
            ..good
        };
        assert_eq!(from_columns(micros).unwrap().day, event.day);
        for (row, field) in [
            (
                Columns {
                    merchant_id: None,
                    ..good
                },
                "merchant_id",
            ),
            (
                Columns {
                    amount: Some("1.23456"),
                    ..good
                },
                "amount",
            ),
            (
                Columns {
                    currency: Some("eur"),
                    ..good
                },
                "currency",
            ),
            (
                Columns {
                    kind: Some("chargeback"),
                    ..good
                },
                "kind",
            ),
            (
                Columns {
                    occurred_at: None,
                    ..good
                },
                "occurred_at",
            ),
        ] {
            assert_eq!(from_columns(row).unwrap_err().field, field);
        }
    }
}
