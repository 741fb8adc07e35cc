//! The decoder's fast path: an event laid out the way producers write it is
//! decoded in one straight pass, each key compared as one literal.
//!
//! "The way producers write it" means the schema's seven keys first and in
//! the schema's order, no whitespace, every string printable ASCII without
//! escapes, and the amount a plain decimal (quoted or not); other members may
//! follow. Anything else, including every event that breaks a rule, returns
//! `None`, and [`crate::event::decode`] then takes the general path, which
//! finds the same event or names the rule. The fast path never decides that
//! an event is invalid, so it cannot give a different verdict; the tests
//! check that where it answers, its answer is the general path's.

use super::{check_currency, Kind, ValidEvent, FIELDS, MAX_ID_BYTES};
use crate::amount::Amount;
use crate::day::parse_rfc3339;
use crate::scan::{members_after, plain_run, same};

/// Where the fast pass has got to in the message.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Steps over `literal` when the text continues with exactly it. The
    /// length is a constant, so the compare is a few word loads.
    #[inline(always)]
    fn literal<const N: usize>(&mut self, literal: &[u8; N]) -> Option<()> {
        let next: [u8; N] = self
            .text
            .as_bytes()
            .get(self.at..self.at + N)?
            .try_into()
            .ok()?;
        (next == *literal).then(|| self.at += N)
    }

    /// After an opening quote: the string up to its closing quote, which it
    /// steps over, when it is all printable ASCII (so it has no escape and
    /// no control character).
    #[inline(always)]
    fn printable(&mut self) -> Option<&'a str> {
        let (run, printable) = plain_run(&self.text.as_bytes()[self.at..]);
        let end = self.at + run;
        if !printable || self.text.as_bytes().get(end) != Some(&b'"') {
            return None;
        }
        let value = &self.text[self.at..end];
        self.at = end + 1;
        Some(value)
    }

    /// An id: printable, 1 to [`MAX_ID_BYTES`] bytes.
    #[inline(always)]
    fn id(&mut self) -> Option<&'a str> {
        self.printable()
            .filter(|id| (1..=MAX_ID_BYTES).contains(&id.len()))
    }

    /// The amount's text, quoted or a bare JSON number of digits with at
    /// most one fraction (no sign, exponent or leading zero).
    #[inline(always)]
    fn amount(&mut self) -> Option<&'a str> {
        if self.literal(b"\"").is_some() {
            return self.printable();
        }
        let bytes = self.text.as_bytes();
        let start = self.at;
        let digits = |from: usize| {
            from + bytes[from..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
        };
        let mut end = digits(start);
        // JSON allows no leading zero; an amount's text would.
        if end == start || (bytes[start] == b'0' && end - start > 1) {
            return None;
        }
        if bytes.get(end) == Some(&b'.') {
            let fraction = digits(end + 1);
            if fraction == end + 1 {
                return None;
            }
            end = fraction;
        }
        self.at = end;
        Some(&self.text[start..end])
    }
}

/// The event in `text` when it is laid out as producers write it and breaks
/// no rule; `None` sends it to the general path.
#[inline]
pub(crate) fn decode<'a>(text: &'a str, key: Option<&[u8]>) -> Option<ValidEvent<'a>> {
    let mut cursor = Cursor { text, at: 0 };
    cursor.literal(b"{\"event_id\":\"")?;
    let event_id = cursor.id()?;
    cursor.literal(b",\"order_id\":\"")?;
    let order_id = cursor.id()?;
    cursor.literal(b",\"merchant_id\":\"")?;
    let merchant_id = cursor.id()?;
    if key.is_some_and(|key| !same(key, merchant_id.as_bytes())) {
        return None;
    }
    cursor.literal(b",\"kind\":\"")?;
    let kind = if cursor.literal(b"sale\"").is_some() {
        Kind::Sale
    } else {
        cursor.literal(b"refund\"")?;
        Kind::Refund
    };
    cursor.literal(b",\"amount\":")?;
    let amount = Amount::parse_event_amount(cursor.amount()?).ok()?;
    cursor.literal(b",\"currency\":\"")?;
    let currency = cursor.printable()?;
    check_currency(currency).ok()?;
    cursor.literal(b",\"occurred_at\":\"")?;
    let occurred_at = parse_rfc3339(cursor.printable()?).ok()?;
    // The last byte, or more members, none of them one of the schema's keys.
    if cursor.at + 1 != text.len() || cursor.literal(b"}").is_none() {
        members_after(text, cursor.at, &FIELDS)?;
    }
    Some(ValidEvent::new(
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
    use crate::event::decode_general;

    const EVENTS: [&str; 5] = [
        r#"{"event_id":"e-7-1","order_id":"o-1","merchant_id":"m-00042","kind":"sale","amount":"19.99","currency":"EUR","occurred_at":"2026-11-20T13:45:10.123Z","channel":"web"}"#,
        r#"{"event_id":"e-7-2","order_id":"o-2","merchant_id":"m-00042","kind":"refund","amount":250,"currency":"USD","occurred_at":"2026-11-20T23:30:00-01:00"}"#,
        r#"{"event_id":"e-7-3","order_id":"o-3","merchant_id":"m-00042","kind":"sale","amount":0.5,"currency":"JPY","occurred_at":"2026-11-20T13:45:10Z","x":{"y":[1,"ü"]},"z":null}"#,
        r#"{"event_id":"e","order_id":"o","merchant_id":"m-00042","kind":"sale","amount":"7","currency":"GBP","occurred_at":"2026-02-28T13:45:10.123456789+05:30"}"#,
        r#"{"event_id":"e-7-5","order_id":"o-5","merchant_id":"m-00042","kind":"refund","amount":"99999999999999999.9999","currency":"CHF","occurred_at":"2026-11-20T13:45:10.1Z"}"#,
    ];

    /// Where the fast path answers, its answer is the general path's.
    fn agrees(text: &str, key: Option<&[u8]>) -> bool {
        let general = decode_general(text.as_bytes(), key);
        match decode(text, key) {
            None => true,
            Some(fast) => {
                assert_eq!(Ok(&fast), general.as_ref(), "{text}");
                true
            }
        }
    }

    #[test]
    fn producers_layout_takes_the_fast_path() {
        for event in EVENTS {
            let fast = decode(event, Some(b"m-00042")).unwrap_or_else(|| panic!("slow: {event}"));
            assert_eq!(
                Ok(fast),
                decode_general(event.as_bytes(), Some(b"m-00042")),
                "{event}"
            );
        }
    }

    #[test]
    fn whatever_it_declines_the_general_path_decides() {
        let declined = [
            EVENTS[0].replace(r#""kind""#, r#" "kind""#),
            EVENTS[0].replace("e-7-1", r#"e-\u0037"#),
            EVENTS[0].replace("o-1", "o-ü"),
            EVENTS[0].replace(r#""channel""#, r#""kind""#),
            EVENTS[0].replace(r#""channel""#, r#""\u006bind""#),
            EVENTS[1].replace("250", "0250"),
            EVENTS[1].replace("250", "2.5e2"),
            EVENTS[1].replace("250", "-250"),
            EVENTS[0].replace(r#""kind":"sale","#, ""),
        ];
        for text in &declined {
            assert!(decode(text, None).is_none(), "{text}");
            assert!(agrees(text, None));
        }
        assert!(decode(EVENTS[0], Some(b"m-7")).is_none());
        // Whitespace among the members after the schema's keys is still fast.
        let spaced = EVENTS[0].replace(r#","channel":"web"}"#, r#" , "channel" : "web" } "#);
        assert!(decode(&spaced, None).is_some() && agrees(&spaced, None));
        // So are members after them whose strings hold escapes or non-ASCII
        // text; an escaped key is left to the general path.
        for tail in [r#""note":"a\"b\u00e9""#, r#""note":"ü","n":[1,"\n"]"#] {
            let extra = EVENTS[0].replace(r#""channel":"web""#, tail);
            assert!(decode(&extra, None).is_some(), "{extra}");
            assert!(agrees(&extra, None));
        }
        let escaped_key = EVENTS[0].replace(r#""channel""#, r#""ch\u0061nnel""#);
        assert!(decode(&escaped_key, None).is_none() && agrees(&escaped_key, None));
    }

    /// Every byte of every sample replaced by each byte that means something
    /// to JSON or to a rule, dropped, or doubled: the fast path either
    /// declines or agrees.
    #[test]
    fn every_one_byte_change_is_declined_or_agreed() {
        let bytes: Vec<u8> = b"\"\\{}[],:-+.0159eEZzT tn\x00\x1f\x7f"
            .iter()
            .copied()
            .chain([0xc3, 0xff])
            .collect();
        for event in EVENTS {
            for at in 0..event.len() {
                let mut variants =
                    vec![[&event.as_bytes()[..at], &event.as_bytes()[at + 1..]].concat()];
                variants.push([&event.as_bytes()[..=at], &event.as_bytes()[at..]].concat());
                for &b in &bytes {
                    let mut changed = event.as_bytes().to_vec();
                    changed[at] = b;
                    variants.push(changed);
                }
                for variant in variants {
                    if let Ok(text) = std::str::from_utf8(&variant) {
                        agrees(text, Some(b"m-00042"));
                        agrees(text, None);
                    }
                }
            }
        }
    }
}
