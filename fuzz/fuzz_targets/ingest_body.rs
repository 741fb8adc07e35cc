//! The ingest body parser on any bytes:
//!
//! - a JSON body splits into exactly the elements serde_json finds, with the
//!   same text each, and is refused exactly when serde_json refuses it
//!   (except past the nesting limit of 64); serde_json parses it when both
//!   `Vec<&RawValue>` and `Value` do (see the decode target), setting aside
//!   `Value`'s refusal of numbers beyond f64;
//! - every NDJSON line and every element goes through the decoder without a
//!   panic, and NDJSON positions are the lines' numbers, in order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::scan::body_items;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let ours = body_items(text, false);
    let theirs = serde_json::from_str::<Vec<&RawValue>>(text).and_then(|elements| {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(_) => Ok((elements, true)),
            Err(e) if e.to_string().starts_with("number out of range") => Ok((elements, false)),
            Err(e) => Err(e),
        }
    });
    match (&ours, &theirs) {
        (Ok(items), Ok((elements, _))) => {
            assert_eq!(items.len(), elements.len(), "{text:?}");
            for ((at, item), (index, element)) in items.iter().zip(elements.iter().enumerate()) {
                assert_eq!(*at, index);
                assert_eq!(item.trim_matches([' ', '\t', '\n', '\r']), element.get(), "{text:?}");
            }
        }
        (Ok(items), Err(error)) => panic!("split into {} elements what serde_json refuses ({error}): {text:?}", items.len()),
        (Err(error), Ok((_, fully))) => {
            let excused = error.reason.contains("nested too deeply") || (!fully && error.reason.contains("surrogate"));
            assert!(excused, "refused what serde_json parses ({}): {text:?}", error.reason)
        }
        (Err(_), Err(_)) => {}
    }
    for (_, item) in ours.unwrap_or_default() {
        let _ = schemas::event::decode(item.as_bytes(), None);
    }
    let lines = body_items(text, true).expect("NDJSON always splits");
    assert!(lines.windows(2).all(|pair| pair[0].0 < pair[1].0));
    for (_, line) in lines {
        let _ = schemas::event::decode(line.as_bytes(), Some(b"merchant"));
    }
});
