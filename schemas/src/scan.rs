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

/// What the scan learnt about a value while passing over it, so that
/// nobody reads its bytes again to learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Not a string: a number, literal, object or array.
    Other,
    /// A string of printable ASCII (U+0020..U+007E) with no escape: the text
    /// between its quotes is its value, and it holds no control character.
    Printable,
    /// A string with no escape, holding some byte at or above 0x7F.
    Unescaped,
    /// A string with at least one escape.
    Escaped,
}

/// The raw text of one value, as the scan found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// The value's text: strings keep their quotes and escapes.
    pub raw: &'a str,
    /// What kind of value it is.
    pub shape: Shape,
}

/// Scans `text`, which must hold exactly one JSON object, and returns for
/// each name in `wanted` the token of its value, or `None` when the key is
/// absent.
///
/// Keys with escapes are compared after unescaping. A wanted key that
/// appears twice is an error: an event must not say two things. Wanted
/// names are plain: no quote, backslash or control character.
#[inline(always)]
pub fn object_fields<'a, const N: usize>(
    text: &'a str,
    wanted: &[&str; N],
) -> Result<[Option<Token<'a>>; N], ScanError> {
    let mut scanner = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
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
                    let escaped = scanner.string_rest()? == Shape::Escaped;
                    slot_of(&text[key_start..scanner.at], escaped, wanted)
                }
            };
            scanner.whitespace();
            scanner.expect(b':', "expected `:` after a key")?;
            scanner.whitespace();
            let value_start = scanner.at;
            let shape = scanner.value(0)?;
            if let Some(slot) = slot {
                if found[slot].is_some() {
                    return Err(ScanError {
                        reason: "a field appears twice",
                        at: key_start,
                    });
                }
                found[slot] = Some(Token {
                    raw: &text[value_start..scanner.at],
                    shape,
                });
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

/// The events of an ingest request body, each with its position: the
/// 1-based line number of each non-blank line for NDJSON, else the 0-based
/// index of each element of the one JSON array the body must hold.
///
/// Fails when a non-NDJSON body is not one JSON array.
pub fn body_items(text: &str, ndjson: bool) -> Result<Vec<(usize, &str)>, ScanError> {
    if ndjson {
        return Ok(text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| (i + 1, line))
            .collect());
    }
    Ok(array_elements(text)?.into_iter().enumerate().collect())
}

/// Splits `text`, which must hold exactly one JSON array, into the raw text
/// of each element (validated, not parsed).
pub fn array_elements(text: &str) -> Result<Vec<&str>, ScanError> {
    let mut scanner = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
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

/// After the value of a member of a top-level object, at byte `at`:
/// `Some` when the rest of `text` is further members and the object's end,
/// none of them under a key in `wanted`. An escaped key gives `None` too,
/// unread, and so does anything that is not JSON: the caller then scans the
/// whole object the general way, which tells them apart.
pub(crate) fn members_after<const N: usize>(
    text: &str,
    at: usize,
    wanted: &[&str; N],
) -> Option<()> {
    let mut scanner = Scanner {
        text,
        bytes: text.as_bytes(),
        at,
    };
    loop {
        scanner.whitespace();
        match scanner.next()? {
            b'}' => break,
            b',' => scanner.whitespace(),
            _ => return None,
        }
        scanner.expect(b'"', "expected a key string").ok()?;
        // A key is read in one plain run: one that stops anywhere but at
        // its closing quote is escaped (unread) or not JSON.
        let key = scanner.plain_string()?;
        if wanted.iter().any(|name| same(name.as_bytes(), key)) {
            return None;
        }
        scanner.whitespace();
        scanner.expect(b':', "expected `:` after a key").ok()?;
        scanner.whitespace();
        // A plain string value likewise; any other value, an escaped
        // string included, is scanned in full.
        let start = scanner.at;
        let plain = scanner.peek() == Some(b'"') && {
            scanner.at += 1;
            scanner.plain_string().is_some()
        };
        if !plain {
            scanner.at = start;
            scanner.value(0).ok()?;
        }
    }
    scanner.whitespace();
    (scanner.at == scanner.bytes.len()).then_some(())
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

/// Byte equality for short texts such as keys, inlined: a `memcmp` call cost
/// more than the comparison itself. Four to sixteen bytes are compared as
/// two overlapping words, the first and the last.
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        _ => a == b,
    }
}

/// The `W` bytes of `bytes` from `at`, as an integer to compare.
#[inline]
fn word<const W: usize>(bytes: &[u8], at: usize) -> u64 {
    let mut buffer = [0u8; 8];
    buffer[..W].copy_from_slice(&bytes[at..at + W]);
    u64::from_le_bytes(buffer)
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

/// The high bit of each byte of `word` at or above 0x7F (DEL and every
/// non-ASCII byte). Only whether it is zero is exact: a carry out of an
/// 0xFF byte may flag the byte above, which is flagged anyway.
#[inline]
fn wide(word: u64) -> u64 {
    (word | word.wrapping_add(ONES)) & HIGHS
}

/// How many bytes at the start of `bytes` are plain string characters (not
/// `"`, not `\`, not a control character), and whether all of them are
/// printable ASCII. Eight bytes per step, in safe SWAR arithmetic, the last
/// few as one word padded.
#[inline]
pub(crate) fn plain_run(bytes: &[u8]) -> (usize, bool) {
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    let mut seen_wide = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let hits = stops(word);
        if hits != 0 {
            let run = (hits.trailing_zeros() / 8) as usize;
            // Only the bytes before the stop belong to the run.
            let before = word & !(u64::MAX << (8 * run));
            return (at + run, seen_wide | wide(before) == 0);
        }
        seen_wide |= wide(word);
        at += 8;
    }
    // The last bytes as one word too, padded with NULs: a control
    // character, so the run ends at the end of the bytes at the latest.
    let rest = chunks.remainder();
    let mut padded = [0; 8];
    padded[..rest.len()].copy_from_slice(rest);
    let word = u64::from_le_bytes(padded);
    let run = (stops(word).trailing_zeros() / 8) as usize;
    let before = word & !(u64::MAX << (8 * run));
    (at + run, seen_wide | wide(before) == 0)
}

/// The high bit of each byte of `word` that ends a plain run (a quote, a
/// backslash or a control character); exact for the lowest, as [`below`].
#[inline]
fn stops(word: u64) -> u64 {
    below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
        | below(word, 0x20)
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
        ScanError {
            reason,
            at: self.at,
        }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), ScanError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    /// After an opening quote: the string's bytes, stepping past its
    /// closing quote, when no escape or control character comes first.
    #[inline(always)]
    fn plain_string(&mut self) -> Option<&[u8]> {
        let start = self.at;
        let (run, _) = plain_run(&self.bytes[start..]);
        if self.bytes.get(start + run) != Some(&b'"') {
            return None;
        }
        self.at = start + run + 1;
        Some(&self.bytes[start..start + run])
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// After a key's opening quote: when the key is exactly `name` followed
    /// by the closing quote, skips past it. A plain name matched byte for
    /// byte holds no escape, so the key needs no other scan.
    #[inline(always)]
    fn literal_key(&mut self, name: Option<&str>) -> bool {
        let Some(name) = name else { return false };
        debug_assert!(
            !name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20),
            "wanted names are plain"
        );
        let end = self.at + name.len();
        let hit = self
            .bytes
            .get(self.at..end)
            .is_some_and(|key| same(key, name.as_bytes()))
            && self.bytes.get(end) == Some(&b'"');
        if hit {
            self.at = end + 1;
        }
        hit
    }

    /// After an opening quote: skips to just past the closing one, and says
    /// which kind of string it was.
    #[inline]
    fn string_rest(&mut self) -> Result<Shape, ScanError> {
        let mut escaped = false;
        let mut printable = true;
        loop {
            // Plain characters are the common case: skip them eight at a time.
            let (run, run_printable) = plain_run(&self.bytes[self.at..]);
            self.at += run;
            printable &= run_printable;
            let Some(byte) = self.next() else {
                return Err(self.error("unterminated string"));
            };
            match byte {
                b'"' if escaped => return Ok(Shape::Escaped),
                b'"' if printable => return Ok(Shape::Printable),
                b'"' => return Ok(Shape::Unescaped),
                b'\\' => {
                    escaped = true;
                    match self.next() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        // A surrogate must come as a high-low pair: a lone one
                        // is no character, and serde_json refuses it too.
                        Some(b'u') => match self.hex4()? {
                            0xD800..=0xDBFF => {
                                let low = match (self.next(), self.next()) {
                                    (Some(b'\\'), Some(b'u')) => self.hex4()?,
                                    _ => return Err(self.error("lone surrogate in a \\u escape")),
                                };
                                if !(0xDC00..=0xDFFF).contains(&low) {
                                    return Err(self.error("lone surrogate in a \\u escape"));
                                }
                            }
                            0xDC00..=0xDFFF => {
                                return Err(self.error("lone surrogate in a \\u escape"))
                            }
                            _ => {}
                        },
                        _ => return Err(self.error("invalid escape in a string")),
                    }
                }
                0..=0x1f => return Err(self.error("control character in a string")),
                _ => {}
            }
        }
    }

    /// The four hex digits of a `\\u` escape, as a UTF-16 code unit.
    fn hex4(&mut self) -> Result<u16, ScanError> {
        let mut unit = 0u16;
        for _ in 0..4 {
            let digit = self.next().and_then(|b| (b as char).to_digit(16));
            let Some(digit) = digit else {
                return Err(self.error("invalid \\u escape"));
            };
            unit = unit << 4 | digit as u16;
        }
        Ok(unit)
    }

    fn value(&mut self, depth: usize) -> Result<Shape, ScanError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                return self.string_rest();
            }
            Some(b'{') => self.container(depth, b'}', true),
            Some(b'[') => self.container(depth, b']', false),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a JSON value")),
        }?;
        Ok(Shape::Other)
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

    #[test]
    fn surrogates_come_in_pairs_as_serde_json_requires() {
        for (text, ok) in [
            (r#"{"a":"\ud83d\ude00"}"#, true),
            (r#"{"a":"\u00e9\uFFFF"}"#, true),
            (r#"{"a":"\ud800"}"#, false),
            (r#"{"a":"\udc00"}"#, false),
            (r#"{"a":"\ud800\u0041"}"#, false),
            (r#"{"a":"\ud800x"}"#, false),
            (r#"{"c":["\udfff"]}"#, false),
        ] {
            assert_eq!(fields(text).is_ok(), ok, "{text}");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(text).is_ok(),
                ok,
                "serde_json on {text}"
            );
        }
    }

    fn fields(text: &str) -> Result<[Option<Token<'_>>; 2], ScanError> {
        object_fields(text, &WANTED)
    }

    fn raw<'a>(tokens: [Option<Token<'a>>; 2]) -> [Option<&'a str>; 2] {
        tokens.map(|token| token.map(|t| t.raw))
    }

    fn shape(text: &str) -> Shape {
        fields(text).unwrap()[0].unwrap().shape
    }

    #[test]
    fn returns_raw_tokens_and_skips_the_rest() {
        let text =
            r#" { "x": {"deep": [1, -2.5e+3, true, null, "s\"}"]}, "b" : "t\u0041", "a":12.50 } "#;
        assert_eq!(
            raw(fields(text).unwrap()),
            [Some("12.50"), Some(r#""t\u0041""#)]
        );
        assert_eq!(raw(fields("{}").unwrap()), [None, None]);
        assert_eq!(raw(fields(r#"{"\u0061": 1}"#).unwrap()), [Some("1"), None]);
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
            let theirs =
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(case).is_ok();
            assert_eq!(ours, theirs, "{case}");
        }
    }

    #[test]
    fn splits_arrays_into_raw_elements() {
        assert_eq!(
            array_elements(r#" [ {"a":1} , "x", [2,3] ] "#).unwrap(),
            [r#"{"a":1}"#, r#""x""#, "[2,3]"]
        );
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
                bytes
                    .iter_mut()
                    .skip(at + 1)
                    .step_by(3)
                    .for_each(|b| *b = 0xff);
                bytes[at] = special;
                assert_eq!(plain_run(&bytes), (at, true), "{special:#x} at {at}");
            }
        }
        assert_eq!(
            plain_run("é€😀 plain".as_bytes()),
            ("é€😀 plain".len(), false)
        );
        assert_eq!(plain_run(&[0x21, 0x5b, 0x5d, 0x7f, 0x80]), (5, false));
        assert_eq!(plain_run(b"~ printable!"), (12, true));
    }

    #[test]
    fn printable_means_no_byte_from_del_up_before_the_quote() {
        // DEL or a wide byte at every position of a run, before and after
        // word boundaries; bytes after the closing quote do not count.
        for len in 1..20 {
            for at in 0..len {
                for odd in [0x7f_u8, 0x80, 0xc2, 0xff] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = odd;
                    bytes.extend_from_slice(b"\"\xff\xff\xff\xff\xff\xff\xff\xff");
                    assert_eq!(plain_run(&bytes), (len, false), "{odd:#x} at {at} of {len}");
                    bytes[at] = b'~';
                    assert_eq!(plain_run(&bytes), (len, true), "{len}");
                }
            }
        }
    }

    #[test]
    fn each_value_has_its_shape() {
        assert_eq!(shape(r#"{"a":"plain ascii ~"}"#), Shape::Printable);
        assert_eq!(shape(r#"{"a":"ü"}"#), Shape::Unescaped);
        assert_eq!(shape("{\"a\":\"del\u{7f}\"}"), Shape::Unescaped);
        assert_eq!(shape(r#"{"a":"\u0041"}"#), Shape::Escaped);
        assert_eq!(shape(r#"{"a":"ü\n"}"#), Shape::Escaped);
        for other in ["1", "-2.5e3", "true", "null", "[\"x\"]", r#"{"x":"y"}"#] {
            assert_eq!(
                shape(&format!(r#"{{"a":{other}}}"#)),
                Shape::Other,
                "{other}"
            );
        }
    }

    #[test]
    fn short_texts_compare_by_words() {
        let texts = [
            "",
            "a",
            "ab",
            "abc",
            "kind",
            "amount",
            "currency",
            "event_id",
            "merchant_id",
            "0123456789abcdef",
            "0123456789abcdefg",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(same(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
            }
            // One byte changed anywhere is seen.
            for at in 0..a.len() {
                let mut changed = a.as_bytes().to_vec();
                changed[at] ^= 1;
                assert!(!same(a.as_bytes(), &changed), "{a} at {at}");
            }
        }
    }

    #[test]
    fn keys_out_of_order_are_still_found() {
        assert_eq!(
            raw(fields(r#"{"b":2,"a":1}"#).unwrap()),
            [Some("1"), Some("2")]
        );
        assert_eq!(
            raw(fields(r#"{"x":0,"b":2,"y":0,"a":1}"#).unwrap()),
            [Some("1"), Some("2")]
        );
    }

    #[test]
    fn refuses_a_repeated_field_and_deep_nesting() {
        assert_eq!(
            fields(r#"{"a":1,"a":2}"#).unwrap_err().reason,
            "a field appears twice"
        );
        let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(fields(&deep).unwrap_err().reason, "nested too deeply");
    }
}
