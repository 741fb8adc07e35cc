//! The load generator: realistic, deterministic order traffic that carries
//! its own exact expected totals.
//!
//! Given the same [`GeneratorConfig`], the same messages come out in the same
//! order on every machine (a SplitMix64 stream, no platform RNG), so the
//! expected totals of a seed are reproducible.

use schemas::day::{format_rfc3339_millis, Day};
use schemas::event::Kind;
use schemas::{Amount, Sums, Totals, TotalsKey};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Seed of the whole stream.
    pub seed: u64,
    /// Messages to emit, including duplicates and invalid ones.
    pub events: u64,
    /// Distinct merchants; their traffic follows a Zipf-like skew (s = 1.1).
    pub merchants: u32,
    /// Currencies merchants sell in (each merchant uses one or two).
    pub currencies: Vec<String>,
    /// Share of valid events that are refunds.
    pub refund_share: f64,
    /// Share of messages that repeat a recent event byte for byte.
    pub duplicate_share: f64,
    /// Share of messages that break a rule.
    pub invalid_share: f64,
    /// Share of valid events dated 1 to 30 days before `day`.
    pub late_share: f64,
    /// The "current" UTC day the stream is about.
    pub day: Day,
    /// The messages travel without a Kafka key (over HTTP, where ingest keys
    /// them), so no invalid message relies on a wrong key.
    pub keyless: bool,
    /// How the valid events are written.
    pub layout: Layout,
}

/// How valid events are written. Invalid ones are always compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Every event in the producer layout: the schema's seven keys first and
    /// in order, compact, printable ASCII, then `"channel":"web"`.
    Producer,
    /// What a platform's producers really send: each merchant's events come
    /// from one of four services, a quarter of the merchants each: one
    /// writes the producer layout; one is Python's `json.dumps` (`", "` and
    /// `": "` separators, its own key order, non-ASCII text `\u`-escaped,
    /// astral characters as surrogate pairs, a nested customer and a list of
    /// items); one is JavaScript's `JSON.stringify` (compact, another key
    /// order, the amount a number, raw UTF-8 text in unknown fields); one is
    /// Jackson writing keys in alphabetical order with a metadata object.
    Varied,
}

impl Layout {
    /// The layout named `name` (`producer` or `varied`).
    pub fn parse(name: &str) -> Option<Layout> {
        match name {
            "producer" => Some(Layout::Producer),
            "varied" => Some(Layout::Varied),
            _ => None,
        }
    }
}

impl Default for GeneratorConfig {
    fn default() -> GeneratorConfig {
        GeneratorConfig {
            seed: 42,
            events: 1_000_000,
            merchants: 1_000,
            currencies: ["EUR", "USD", "GBP", "JPY", "CHF"]
                .map(String::from)
                .to_vec(),
            refund_share: 0.08,
            duplicate_share: 0.02,
            invalid_share: 0.002,
            late_share: 0.03,
            day: Day(20_777), // 2026-11-20
            keyless: false,
            layout: Layout::Producer,
        }
    }
}

/// How the pipeline must treat a generated message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Truth {
    /// A valid event seen for the first time: counted.
    Counted {
        /// Its key in `merchant_sales`.
        key: TotalsKey,
        /// Sale or refund.
        kind: Kind,
        /// Its amount.
        amount: Amount,
    },
    /// A byte-for-byte repeat of a recent counted event: not counted again.
    Duplicate,
    /// Breaks the named rule: goes to the dead-letter topic.
    Invalid(&'static str),
}

/// One message to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Message key (the merchant id; absent for some invalid messages).
    pub key: Option<String>,
    /// Message value.
    pub payload: Vec<u8>,
    /// The expected outcome.
    pub truth: Truth,
}

/// SplitMix64: tiny, fast and identical everywhere (so a seed reproduces a
/// run; tests use it too).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One of `items`, which must not be empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const RECENT: usize = 512;
const INVALID_KINDS: [&str; 8] = [
    "negative_amount",
    "too_precise",
    "lowercase_currency",
    "missing_merchant",
    "malformed_json",
    "bad_timestamp",
    "bad_kind",
    "key_mismatch",
];

/// An iterator of generated messages that also keeps their expected totals.
pub struct Generator {
    config: GeneratorConfig,
    rng: Rng,
    zipf_cdf: Vec<f64>,
    emitted: u64,
    recent: Vec<(String, Vec<u8>)>,
    totals: Totals,
    counted: u64,
}

impl Generator {
    /// A generator for `config`.
    pub fn new(config: GeneratorConfig) -> Generator {
        let weights: Vec<f64> = (1..=config.merchants.max(1))
            .map(|rank| 1.0 / f64::from(rank).powf(1.1))
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let zipf_cdf = weights
            .iter()
            .map(|w| {
                acc += w / sum;
                acc
            })
            .collect();
        Generator {
            rng: Rng(config.seed),
            config,
            zipf_cdf,
            emitted: 0,
            recent: Vec::with_capacity(RECENT),
            totals: Totals::new(),
            counted: 0,
        }
    }

    /// Exact totals of the counted events emitted so far.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Counted events emitted so far.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    fn merchant(&mut self) -> (String, usize) {
        let u = self.rng.unit();
        let rank = self
            .zipf_cdf
            .partition_point(|&c| c < u)
            .min(self.zipf_cdf.len() - 1);
        (format!("m-{rank:05}"), rank)
    }

    fn valid(&mut self, index: u64) -> Generated {
        let (merchant, rank) = self.merchant();
        let currencies = &self.config.currencies;
        // Each merchant sells in its home currency and, now and then, a second one.
        let home = rank % currencies.len();
        let currency = if self.rng.below(10) == 0 {
            (home + 1) % currencies.len()
        } else {
            home
        };
        let currency = currencies[currency].clone();
        let kind = if self.rng.unit() < self.config.refund_share {
            Kind::Refund
        } else {
            Kind::Sale
        };
        let cents = 100 + self.rng.below(49_900) as i128;
        let amount = if self.rng.below(20) == 0 {
            Amount(cents * 100 + self.rng.below(100) as i128)
        } else {
            Amount(cents * 100)
        };
        let days_back = if self.rng.unit() < self.config.late_share {
            1 + self.rng.below(30) as i32
        } else {
            0
        };
        let day = Day(self.config.day.0 - days_back);
        let micros = i64::from(day.0) * 86_400_000_000 + self.rng.below(86_400_000_000) as i64;
        let event = Fields {
            event_id: format!("e-{:x}-{index}", self.config.seed),
            order_id: format!("o-{index}"),
            merchant: &merchant,
            kind: kind.as_str(),
            amount: trim(amount),
            quoted: self.rng.below(10) != 0,
            currency: &currency,
            occurred_at: format_rfc3339_millis(micros),
        };
        let payload = match self.config.layout {
            Layout::Producer => event.producer(),
            Layout::Varied => match rank % 4 {
                0 => event.producer(),
                1 => event.python(&mut self.rng),
                2 => event.javascript(&mut self.rng),
                _ => event.jackson(&mut self.rng),
            },
        }
        .into_bytes();
        let key = TotalsKey {
            merchant_id: merchant.clone(),
            currency,
            day,
        };
        let mut sums = Sums::default();
        sums.add_event(kind, amount);
        self.totals.entry(key.clone()).or_default().merge(&sums);
        self.counted += 1;
        if self.recent.len() < RECENT {
            self.recent.push((merchant.clone(), payload.clone()));
        } else {
            let slot = self.rng.below(RECENT as u64) as usize;
            self.recent[slot] = (merchant.clone(), payload.clone());
        }
        Generated {
            key: Some(merchant),
            payload,
            truth: Truth::Counted { key, kind, amount },
        }
    }

    fn invalid(&mut self, index: u64) -> Generated {
        // `key_mismatch` is last, so a keyless stream draws from the others.
        let kinds = if self.config.keyless {
            &INVALID_KINDS[..INVALID_KINDS.len() - 1]
        } else {
            &INVALID_KINDS[..]
        };
        let kind = kinds[self.rng.below(kinds.len() as u64) as usize];
        let (merchant, _) = self.merchant();
        let base = |amount: &str, currency: &str, at: &str, k: &str| {
            format!(
                r#"{{"event_id":"bad-{index}","order_id":"o-{index}","merchant_id":"{merchant}","kind":"{k}","amount":{amount},"currency":"{currency}","occurred_at":"{at}"}}"#
            )
        };
        let at = "2026-11-20T10:00:00Z";
        let payload = match kind {
            "negative_amount" => base("\"-5.00\"", "EUR", at, "sale"),
            "too_precise" => base("\"1.23456\"", "EUR", at, "sale"),
            "lowercase_currency" => base("\"3.00\"", "eur", at, "sale"),
            "missing_merchant" => format!(
                r#"{{"event_id":"bad-{index}","order_id":"o","kind":"sale","amount":"1","currency":"EUR","occurred_at":"{at}"}}"#
            ),
            "malformed_json" => format!(r#"{{"event_id":"bad-{index}","amount":"#),
            "bad_timestamp" => base("\"3.00\"", "EUR", "2026-11-20 10:00", "sale"),
            "bad_kind" => base("\"3.00\"", "EUR", at, "chargeback"),
            _ => base("\"3.00\"", "EUR", at, "sale"),
        };
        let key = if kind == "key_mismatch" {
            format!("{merchant}-other")
        } else {
            merchant
        };
        Generated {
            key: Some(key),
            payload: payload.into_bytes(),
            truth: Truth::Invalid(kind),
        }
    }
}

/// Names, products and notes as shops write them: accents, other scripts,
/// an emoji (outside the Basic Multilingual Plane).
const TEXTS: [&str; 8] = [
    "Zoë Müller",
    "Łukasz Żółć",
    "José Núñez",
    "李小龍",
    "Ørjan Ås",
    "Café crème, 2×",
    "Gift 🎁 wrap",
    "Straße 5, Köln",
];

/// The fields of one valid event, to be written in some producer's layout.
struct Fields<'a> {
    event_id: String,
    order_id: String,
    merchant: &'a str,
    kind: &'static str,
    amount: String,
    /// The amount as a JSON string (`"12.5"`) rather than a number.
    quoted: bool,
    currency: &'a str,
    occurred_at: String,
}

impl Fields<'_> {
    fn amount_json(&self) -> String {
        match self.quoted {
            true => format!("\"{}\"", self.amount),
            false => self.amount.clone(),
        }
    }

    /// The producer layout: the schema's order, compact, ASCII.
    fn producer(&self) -> String {
        format!(
            r#"{{"event_id":"{}","order_id":"{}","merchant_id":"{}","kind":"{}","amount":{},"currency":"{}","occurred_at":"{}","channel":"web"}}"#,
            self.event_id,
            self.order_id,
            self.merchant,
            self.kind,
            self.amount_json(),
            self.currency,
            self.occurred_at
        )
    }

    /// Python's `json.dumps` of a dict: spaces after `,` and `:`, non-ASCII
    /// escaped, the amount a string (a `Decimal` written with `str`).
    fn python(&self, rng: &mut Rng) -> String {
        let name = python_escaped(TEXTS[rng.below(TEXTS.len() as u64) as usize]);
        let item = python_escaped(TEXTS[rng.below(TEXTS.len() as u64) as usize]);
        format!(
            r#"{{"order_id": "{}", "event_id": "{}", "merchant_id": "{}", "occurred_at": "{}", "kind": "{}", "amount": "{}", "currency": "{}", "customer": {{"name": "{name}", "vip": false}}, "items": [{{"title": "{item}", "qty": {}}}], "note": null}}"#,
            self.order_id,
            self.event_id,
            self.merchant,
            self.occurred_at,
            self.kind,
            self.amount,
            self.currency,
            1 + rng.below(3),
        )
    }

    /// JavaScript's `JSON.stringify`: compact, UTF-8 as it is, the amount a
    /// number.
    fn javascript(&self, rng: &mut Rng) -> String {
        format!(
            r#"{{"type":"order.paid","merchant_id":"{}","amount":{},"currency":"{}","kind":"{}","event_id":"{}","order_id":"{}","occurred_at":"{}","shipping":{{"city":"{}","lines":[1,2]}}}}"#,
            self.merchant,
            self.amount,
            self.currency,
            self.kind,
            self.event_id,
            self.order_id,
            self.occurred_at,
            rng.pick(&TEXTS),
        )
    }

    /// Jackson with sorted keys: alphabetical, compact, a metadata object.
    fn jackson(&self, rng: &mut Rng) -> String {
        format!(
            r#"{{"amount":{},"channel":"pos","currency":"{}","event_id":"{}","kind":"{}","merchant_id":"{}","metadata":{{"store":"{}","till":{}}},"occurred_at":"{}","order_id":"{}"}}"#,
            self.amount_json(),
            self.currency,
            self.event_id,
            self.kind,
            self.merchant,
            rng.pick(&TEXTS),
            rng.below(40),
            self.occurred_at,
            self.order_id,
        )
    }
}

/// `text` as the inside of a JSON string written by Python's `json.dumps`
/// (`ensure_ascii`): every non-ASCII character as `\uXXXX`, those beyond
/// the Basic Multilingual Plane as a surrogate pair.
fn python_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out
}

/// `19.9900` → `19.99`, `7.0000` → `7`: the shortest exact text.
fn trim(amount: Amount) -> String {
    let text = amount.to_string();
    let text = text.trim_end_matches('0');
    text.trim_end_matches('.').to_owned()
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        if self.emitted >= self.config.events {
            return None;
        }
        let index = self.emitted;
        self.emitted += 1;
        let roll = self.rng.unit();
        if roll < self.config.invalid_share {
            return Some(self.invalid(index));
        }
        if roll < self.config.invalid_share + self.config.duplicate_share && !self.recent.is_empty()
        {
            let (key, payload) =
                self.recent[self.rng.below(self.recent.len() as u64) as usize].clone();
            return Some(Generated {
                key: Some(key),
                payload,
                truth: Truth::Duplicate,
            });
        }
        Some(self.valid(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::event::decode;

    fn small(seed: u64) -> GeneratorConfig {
        GeneratorConfig {
            seed,
            events: 20_000,
            invalid_share: 0.05,
            duplicate_share: 0.05,
            ..Default::default()
        }
    }

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<_> = Generator::new(small(7)).collect();
        let b: Vec<_> = Generator::new(small(7)).collect();
        let c: Vec<_> = Generator::new(small(8)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn truth_matches_the_validator() {
        for layout in [Layout::Producer, Layout::Varied] {
            truth_matches_the_validator_in(layout);
        }
    }

    fn truth_matches_the_validator_in(layout: Layout) {
        let mut generator = Generator::new(GeneratorConfig { layout, ..small(3) });
        let mut seen = std::collections::HashSet::new();
        let mut totals = Totals::new();
        for message in generator.by_ref() {
            let decoded = decode(&message.payload, message.key.as_deref().map(str::as_bytes));
            match (&message.truth, decoded) {
                (Truth::Counted { key, kind, amount }, Ok(event)) => {
                    assert!(seen.insert(event.event_id.to_string()));
                    assert_eq!(
                        (event.kind, event.amount, event.day),
                        (*kind, *amount, key.day)
                    );
                    totals
                        .entry(key.clone())
                        .or_default()
                        .add_event(*kind, *amount);
                }
                (Truth::Duplicate, Ok(event)) => assert!(seen.contains(event.event_id.as_ref())),
                (Truth::Invalid(_), Err(_)) => {}
                (truth, decoded) => panic!("{truth:?} decoded as {decoded:?}"),
            }
        }
        assert_eq!(&totals, generator.totals());
    }

    #[test]
    fn python_escapes_as_json_dumps_does() {
        // Python 3.11: json.dumps('Gift 🎁 Zoë "q" \\')
        assert_eq!(
            python_escaped("Gift 🎁 Zoë \"q\" \\"),
            r#"Gift \ud83c\udf81 Zo\u00eb \"q\" \\"#
        );
    }

    #[test]
    fn the_varied_layout_takes_every_shape() {
        let messages: Vec<Generated> = Generator::new(GeneratorConfig {
            layout: Layout::Varied,
            ..small(5)
        })
        .collect();
        let has = |needle: &str| {
            messages
                .iter()
                .any(|m| String::from_utf8_lossy(&m.payload).contains(needle))
        };
        assert!(has(r#"{"event_id":"#), "the producer layout");
        assert!(has(r#"{"order_id": "#) && has(r#"\u"#), "json.dumps");
        assert!(has(r#"{"type":"order.paid""#), "JSON.stringify");
        assert!(has(r#"{"amount":"#), "Jackson's sorted keys");
    }

    #[test]
    fn keyless_streams_need_no_key_to_be_judged() {
        let config = GeneratorConfig {
            keyless: true,
            invalid_share: 0.2,
            ..small(4)
        };
        for message in Generator::new(config) {
            assert_ne!(message.truth, Truth::Invalid("key_mismatch"));
            let decoded = decode(&message.payload, None);
            assert_eq!(
                decoded.is_err(),
                matches!(message.truth, Truth::Invalid(_)),
                "{message:?}"
            );
        }
    }
}
