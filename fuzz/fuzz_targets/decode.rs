//! The event decoder against serde_json, on any bytes:
//!
//! - what the decoder accepts, serde_json parses as an object with the same
//!   seven field values (no key twice);
//! - what serde_json parses as an object, the decoder does not call
//!   malformed (it may still refuse it for a rule: a negative amount, say),
//!   except past its documented nesting limit of 64.
//!
//! "serde_json parses" means both of its readings succeed: the derived
//! `Reference` (which refuses a field given twice, but skips other members'
//! strings unchecked) and `Value` (which refuses a lone surrogate anywhere,
//! as the decoder does, but also a number beyond f64, which JSON allows and
//! the decoder skips; that one refusal is set aside).

#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::{Amount, Kind};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// The reference: serde_json's own parse of the seven fields. Unknown
/// members are skipped (as syntax), and a field given twice is an error.
/// `amount` is kept as raw text: the decoder takes a decimal string or a
/// JSON number, and an f64 would round the number's digits.
#[derive(Deserialize)]
struct Reference<'a> {
    event_id: Option<Value>,
    order_id: Option<Value>,
    merchant_id: Option<Value>,
    kind: Option<Value>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    currency: Option<Value>,
    occurred_at: Option<Value>,
}

fn text(value: &Option<Value>) -> &str {
    match value {
        Some(Value::String(text)) => text,
        other => panic!("the decoder accepted a field that serde_json reads as {other:?}"),
    }
}

/// The amount's text: a string's decoded contents, or a number's digits.
fn amount_text(raw: Option<&RawValue>) -> String {
    let raw = raw.expect("the decoder accepted an event without an amount").get();
    if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).expect("serde_json reads back its own string")
    } else {
        assert!(raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()), "the decoder accepted an amount that serde_json reads as {raw}");
        raw.to_owned()
    }
}

fuzz_target!(|data: &[u8]| {
    let ours = schemas::event::decode(data, None);
    let object_text = std::str::from_utf8(data).ok().filter(|t| t.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{'));
    let theirs = object_text.map(|text| {
        let reference = serde_json::from_str::<Reference>(text)?;
        match serde_json::from_str::<Value>(text) {
            Ok(_) => Ok((reference, true)),
            Err(e) if e.to_string().starts_with("number out of range") => Ok((reference, false)),
            Err(e) => Err(e),
        }
    });
    match (&ours, &theirs) {
        (Ok(event), Some(Ok((reference, _)))) => {
            assert_eq!(event.event_id, text(&reference.event_id));
            assert_eq!(event.order_id, text(&reference.order_id));
            assert_eq!(event.merchant_id, text(&reference.merchant_id));
            let kind = match text(&reference.kind) {
                "sale" => Kind::Sale,
                "refund" => Kind::Refund,
                other => panic!("the decoder accepted kind {other:?}"),
            };
            assert_eq!(event.kind, kind);
            assert_eq!(Ok(event.amount), Amount::parse_event_amount(&amount_text(reference.amount)));
            assert_eq!(event.currency, text(&reference.currency));
            assert_eq!(Ok(event.occurred_at), schemas::day::parse_rfc3339(text(&reference.occurred_at)));
        }
        (Ok(event), _) => panic!("the decoder accepted what serde_json refuses: {event:?} from {:?}", String::from_utf8_lossy(data)),
        (Err(invalid), Some(Ok((_, fully)))) => {
            let malformed = invalid.field == "payload" && invalid.reason.contains("is not a valid JSON object");
            // Value stopped at the big number before it saw the rest.
            let unseen = !fully && invalid.reason.contains("surrogate");
            let too_deep = invalid.reason.contains("nested too deeply") || unseen;
            assert!(!malformed || too_deep, "the decoder calls malformed what serde_json parses: {invalid} from {:?}", String::from_utf8_lossy(data));
        }
        (Err(_), _) => {}
    }
});
