//! A single-pass scanner for the top level of one JSON object (or array): it
//! checks the whole text is valid JSON and returns the raw token of each
//! wanted key (or element), without building values or copying anything.
//!
//! This is the first step of the worker's hot path. serde_json's derive
//! spent most of its time matching key names and validating tokens through
//! generic visitors; here each byte is looked at once.

/// Nesting deeper than this is refused rather than recursed into.
const MAX_DEPTH: usize = 64;

/// Why a text is not a JSON object: a sentence and the byte position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    /// What was wrong.
    pub reason: &'static str,
    /// Byte offset in the text where it was noticed.
    pub at: usize,
}

/// Scans `text`, which must hold exactly one JSON object, and returns for
/// each name in `wanted` the raw token of its value (strings keep their
/// quotes and escapes), or `None` when the key is absent.
///
/// Keys with escapes are compared after unescaping. A wanted key that
/// appears twice is an error: an event must not say two things. Wanted
/// names are plain: no quote, backslash or control character.
pub fn object_fields<'a, const N: usize>(
    text: &'a str,
    wanted: &[&str; N],
) -> Result<[Option<&'a str>; N], ScanError> {
    let mut scanner = Scanner { text, bytes: text.as_bytes(), at: 0 };
    let mut found = [None; N];
    // Producers write the keys in one order: try the slot after the last
    // one matched before comparing against every wanted key.
    let mut guess = 0;
    scanner.whitespace();
    scanner.expect(b'{', "expected `{` at the start of the object")?;
    scanner.whitespace();
    if scanner.peek() == Some(b'}') {
        scanner.at += 1;
    } else {
        loop {
            let key_start = scanner.at;
            scanner.expect(b'"', "expected a key string")?;
            let slot = match scanner.literal_key(wanted.get(guess).copied()) {
                true => Some(guess),
                false => {
                    let escaped = scanner.string_rest()?;
                    slot_of(&text[key_start..scanner.at], escaped, wanted)
                }
            };
            scanner.whitespace();
            scanner.expect(b':', "expected `:` after a key")?;
            scanner.whitespace();
            let value_start = scanner.at;
            scanner.value(0)?;
            let value = &text[value_start..scanner.at];
            if let Some(slot) = slot {
                if found[slot].is_some() {
                    return Err(ScanError { reason: "a field appears twice", at: key_start });
                }
                found[slot] = Some(value);
                guess = slot + 1;
            }
            scanner.whitespace();
            match scanner.next() {
                Some(b',') => scanner.whitespace(),
                Some(b'}') => break,
                _ => return Err(scanner.error("expected `,` or `}` after a value")),
            }
        }
    }
    scanner.whitespace();
    if scanner.at != scanner.bytes.len() {
        return Err(scanner.error("unexpected characters after the object"));
    }
    Ok(found)
}

/// Splits `text`, which must hold exactly one JSON array, into the raw text
/// of each element (validated, not parsed).
pub fn array_elements(text: &str) -> Result<Vec<&str>, ScanError> {
    let mut scanner = Scanner { text, bytes: text.as_bytes(), at: 0 };
    let mut elements = Vec::new();
    scanner.whitespace();
    scanner.expect(b'[', "expected `[` at the start of the array")?;
    scanner.whitespace();
    if scanner.peek() == Some(b']') {
        scanner.at += 1;
    } else {
        loop {
            let start = scanner.at;
            scanner.value(0)?;
            elements.push(&text[start..scanner.at]);
            scanner.whitespace();
            match scanner.next() {
                Some(b',') => scanner.whitespace(),
                Some(b']') => break,
                _ => return Err(scanner.error("expected `,` or `]` after an element")),
            }
        }
    }
    scanner.whitespace();
    if scanner.at != scanner.bytes.len() {
        return Err(scanner.error("unexpected characters after the array"));
    }
    Ok(elements)
}

/// The slot of a key that was not the one expected next (`literal_key`
/// already tried that one).
fn slot_of<const N: usize>(key_token: &str, escaped: bool, wanted: &[&str; N]) -> Option<usize> {
    let inner = &key_token.as_bytes()[1..key_token.len() - 1];
    if !escaped {
        return wanted.iter().position(|w| same(w.as_bytes(), inner));
    }
    let key: String = serde_json::from_str(key_token).ok()?;
    wanted.iter().position(|w| *w == key)
}

/// Byte equality for short keys, inlined: a `memcmp` call per candidate key
/// cost more than the comparison itself.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(true, |equal, (x, y)| equal & (x == y))
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` below `n` (n ≤ 0x80). Exact for the
/// lowest such byte; bytes above it may be flagged falsely, which the caller's
/// `trailing_zeros` never looks at.
#[inline]
fn below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
}

/// How many bytes at the start of `bytes` are plain string characters: not
/// `"`, not `\`, not a control character. Eight bytes per step, in safe
/// SWAR arithmetic, then byte by byte.
#[inline]
fn plain_run(bytes: &[u8]) -> usize {
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let hits = below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20);
        if hits != 0 {
            return at + (hits.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + chunks.remainder().iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(chunks.remainder().len())
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn error(&self, reason: &'static str) -> ScanError {
        ScanError { reason, at: self.at }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), ScanError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// After a key's opening quote: when the key is exactly `name` followed
    /// by the closing quote, skips past it. A plain name matched byte for
    /// byte holds no escape, so the key needs no other scan.
    #[inline]
    fn literal_key(&mut self, name: Option<&str>) -> bool {
        let Some(name) = name else { return false };
        debug_assert!(!name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20), "wanted names are plain");
        let end = self.at + name.len();
        let hit = self.bytes.get(self.at..end).is_some_and(|key| same(key, name.as_bytes())) && self.bytes.get(end) == Some(&b'"');
        if hit {
            self.at = end + 1;
        }
        hit
    }

    /// After an opening quote: skips to just past the closing one. Returns
    /// whether the string held escapes.
    fn string_rest(&mut self) -> Result<bool, ScanError> {
        let mut escaped = false;
        loop {
            // Plain characters are the common case: skip them eight at a time.
            self.at += plain_run(&self.bytes[self.at..]);
            let Some(byte) = self.next() else { return Err(self.error("unterminated string")) };
            match byte {
                b'"' => return Ok(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        Some(b'u') => {
                            for _ in 0..4 {
                                if !self.next().is_some_and(|b| b.is_ascii_hexdigit()) {
                                    return Err(self.error("invalid \\u escape"));
                                }
                            }
                        }
                        _ => return Err(self.error("invalid escape in a string")),
                    }
                }
                0..=0x1f => return Err(self.error("control character in a string")),
                _ => {}
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), ScanError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                self.string_rest().map(drop)
            }
            Some(b'{') => self.container(depth, b'}', true),
            Some(b'[') => self.container(depth, b']', false),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a JSON value")),
        }
    }

    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Result<(), ScanError> {
        self.at += 1;
        self.whitespace();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            if keyed {
                self.expect(b'"', "expected a key string")?;
                self.string_rest()?;
                self.whitespace();
                self.expect(b':', "expected `:` after a key")?;
                self.whitespace();
            }
            self.value(depth + 1)?;
            self.whitespace();
            match self.next() {
                Some(b',') => self.whitespace(),
                Some(byte) if byte == close => return Ok(()),
                _ => return Err(self.error("expected `,` or the end of a container")),
            }
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<(), ScanError> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.required_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.required_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), ScanError> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.error("invalid number"));
        }
        self.digits();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: [&str; 2] = ["a", "b"];

    fn fields(text: &str) -> Result<[Option<&str>; 2], ScanError> {
        object_fields(text, &WANTED)
    }

    #[test]
    fn returns_raw_tokens_and_skips_the_rest() {
        let text = r#" { "x": {"deep": [1, -2.5e+3, true, null, "s\"}"]}, "b" : "t\u0041", "a":12.50 } "#;
        assert_eq!(fields(text).unwrap(), [Some("12.50"), Some(r#""t\u0041""#)]);
        assert_eq!(fields("{}").unwrap(), [None, None]);
        assert_eq!(fields(r#"{"\u0061": 1}"#).unwrap(), [Some("1"), None]);
    }

    #[test]
    fn agrees_with_serde_json_on_validity() {
        let cases = [
            r#"{"a":1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":tru}"#,
            r#"{"a":"x\q"}"#,
            r#"{"a":"x\u12"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"a":1} x"#,
            r#"{"a":{"b":[{}]}}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            r#"[1]"#,
            r#""#,
            r#"{"#,
            r#"{"a":"#,
        ];
        for case in cases {
            let ours = fields(case).is_ok();
            let theirs = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(case).is_ok();
            assert_eq!(ours, theirs, "{case}");
        }
    }

    #[test]
    fn splits_arrays_into_raw_elements() {
        assert_eq!(array_elements(r#" [ {"a":1} , "x", [2,3] ] "#).unwrap(), [r#"{"a":1}"#, r#""x""#, "[2,3]"]);
        assert_eq!(array_elements("[]").unwrap(), Vec::<&str>::new());
        for bad in ["", "[", "[1,]", "{}", "[1] 2", "[1 2]"] {
            assert!(array_elements(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_runs_stop_at_the_first_special_byte() {
        for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
            for at in 0..20 {
                let mut bytes = vec![b'a'; 20];
                // Bytes that a careless SWAR test would also flag.
                bytes.iter_mut().skip(at + 1).step_by(3).for_each(|b| *b = 0xff);
                bytes[at] = special;
                assert_eq!(plain_run(&bytes), at, "{special:#x} at {at}");
            }
        }
        assert_eq!(plain_run("é€😀 plain".as_bytes()), "é€😀 plain".len());
        assert_eq!(plain_run(&[0x21, 0x5b, 0x5d, 0x7f, 0x80]), 5);
    }

    #[test]
    fn keys_out_of_order_are_still_found() {
        assert_eq!(fields(r#"{"b":2,"a":1}"#).unwrap(), [Some("1"), Some("2")]);
        assert_eq!(fields(r#"{"x":0,"b":2,"y":0,"a":1}"#).unwrap(), [Some("1"), Some("2")]);
    }

    #[test]
    fn refuses_a_repeated_field_and_deep_nesting() {
        assert_eq!(fields(r#"{"a":1,"a":2}"#).unwrap_err().reason, "a field appears twice");
        let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(fields(&deep).unwrap_err().reason, "nested too deeply");
    }
}
