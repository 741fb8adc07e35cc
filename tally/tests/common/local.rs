//! Local days, computed the test's own way: each counted event's
//! `occurred_at` read back from its JSON, and its calendar day in the
//! merchant's zone asked of GNU `date` (glibc and the system's IANA files),
//! never of tally's compiled-in chrono-tz.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};

use ingest::load::generate::{Generated, Truth};
use schemas::{Amount, Day, Kind, LocalSums, LocalTotals, Sums, TotalsKey};

/// The zones the scenarios spread their merchants over: whole, half and
/// three-quarter-hour offsets, both hemispheres' daylight saving time, and
/// Lord Howe's half-hour one.
pub const ZONES: [&str; 5] = [
    "UTC",
    "Asia/Tokyo",
    "America/St_Johns",
    "Europe/Berlin",
    "Australia/Lord_Howe",
];

/// Every 2026 change of the zones above (UTC), and what it is.
const CHANGES_2026: [(&str, &str); 6] = [
    ("America/St_Johns", "2026-03-08T05:30:00Z"),
    ("Europe/Berlin", "2026-03-29T01:00:00Z"),
    ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
    ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),
    ("Europe/Berlin", "2026-10-25T01:00:00Z"),
    ("America/St_Johns", "2026-11-01T04:30:00Z"),
];

/// Gives merchants zones in turn (every sixth stays unset: the default, UTC).
pub fn assign(messages: &[Generated]) -> HashMap<String, &'static str> {
    let mut merchants: Vec<&str> = messages
        .iter()
        .filter_map(|m| match &m.truth {
            Truth::Counted { key, .. } => Some(key.merchant_id.as_str()),
            _ => None,
        })
        .collect();
    merchants.sort_unstable();
    merchants.dedup();
    merchants
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 6 != 5)
        .map(|(i, m)| (m.to_owned(), ZONES[i % ZONES.len()]))
        .collect()
}

/// Sets each merchant's zone (`tally_merchants`); returns them by merchant.
pub async fn set(
    store: &store::Store,
    zones: &[(&str, &'static str)],
) -> HashMap<String, &'static str> {
    let rows: Vec<_> = zones
        .iter()
        .map(|(m, z)| ((*m).to_owned(), schemas::zone::Zone::parse(z).unwrap()))
        .collect();
    store.set_zones(&rows, 0).await.unwrap();
    zones.iter().map(|(m, z)| ((*m).to_owned(), *z)).collect()
}

/// Gives the traffic's merchants zones (`tally_merchants`, before any
/// worker starts), and adds events around each of those zones' 2026 changes
/// to the traffic, spread through it.
pub async fn with_zones(
    store: &store::Store,
    traffic: &mut super::Traffic,
) -> HashMap<String, &'static str> {
    let zones = assign(&traffic.messages);
    let rows: Vec<_> = zones
        .iter()
        .map(|(m, z)| (m.clone(), schemas::zone::Zone::parse(z).unwrap()))
        .collect();
    store.set_zones(&rows, 0).await.unwrap();
    let extra = around_changes(&zones);
    let every = traffic.messages.len() / extra.len().max(1);
    for (i, message) in extra.into_iter().enumerate().rev() {
        traffic
            .messages
            .insert((i * every).min(traffic.messages.len()), message);
    }
    traffic.expected = super::expected_totals(&traffic.messages);
    zones
}

/// Events of `merchants` (one per zone) in the hours and at the local
/// midnights around each of the zones' 2026 changes: the instant itself, a
/// microsecond either side, the repeated or skipped hour, and more.
pub fn around_changes(zones: &HashMap<String, &'static str>) -> Vec<Generated> {
    let mut out = Vec::new();
    for (zone, change) in CHANGES_2026 {
        let Some(merchant) = zones
            .iter()
            .filter(|(_, z)| **z == zone)
            .map(|(m, _)| m)
            .min()
        else {
            continue;
        };
        let at = schemas::day::parse_rfc3339(change).unwrap();
        let minute = 60_000_000i64;
        let offsets = [
            -1,
            0,
            1,
            -30 * minute,
            30 * minute,
            -90 * minute,
            90 * minute,
            150 * minute,
        ];
        // And the day's edges either side of the change, in any offset from −4 h to +12 h.
        let edges = (-16..=8).map(|h: i64| h * 60 * minute);
        for (n, delta) in offsets.into_iter().chain(edges).enumerate() {
            let micros = at + delta;
            let index = out.len();
            let (kind, amount) = if n % 4 == 3 {
                (Kind::Refund, Amount(10_000 + index as i128))
            } else {
                (Kind::Sale, Amount(1_234_567 + index as i128))
            };
            let payload = format!(
                r#"{{"event_id":"dst-{index}","order_id":"o-dst-{index}","merchant_id":"{merchant}","kind":"{}","amount":"{amount}","currency":"EUR","occurred_at":"{}"}}"#,
                kind.as_str(),
                schemas::day::format_rfc3339_millis(micros - micros.rem_euclid(1_000))
            );
            let micros = micros - micros.rem_euclid(1_000);
            out.push(Generated {
                key: Some(merchant.clone()),
                payload: payload.into_bytes(),
                truth: Truth::Counted {
                    key: TotalsKey {
                        merchant_id: merchant.clone(),
                        currency: "EUR".into(),
                        day: Day(micros.div_euclid(86_400_000_000) as i32),
                    },
                    kind,
                    amount,
                },
            });
        }
    }
    out
}

/// The local-day totals of the counted events: plain i128 sums by
/// (merchant, currency, local day), each day from GNU `date`.
pub fn expected(messages: &[Generated], zones: &HashMap<String, &'static str>) -> LocalTotals {
    // The instants of each zone's events, asked of `date` in one run per zone.
    let mut by_zone: BTreeMap<&str, Vec<(usize, i64)>> = BTreeMap::new();
    for (i, message) in messages.iter().enumerate() {
        if let Truth::Counted { key, .. } = &message.truth {
            let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            let at = event["occurred_at"].as_str().unwrap();
            let zone = zones.get(&key.merchant_id).copied().unwrap_or("UTC");
            by_zone.entry(zone).or_default().push((i, unix_seconds(at)));
        }
    }
    let mut days: HashMap<usize, String> = HashMap::new();
    for (zone, events) in by_zone {
        let lines: String = events.iter().map(|(_, s)| format!("@{s}\n")).collect();
        let out = date_in(zone, &lines);
        assert_eq!(out.len(), events.len());
        for ((i, _), day) in events.iter().zip(out) {
            days.insert(*i, day);
        }
    }
    let mut sums: BTreeMap<(String, String, String), (&str, [i128; 4])> = BTreeMap::new();
    for (i, message) in messages.iter().enumerate() {
        if let Truth::Counted { key, kind, amount } = &message.truth {
            let zone = zones.get(&key.merchant_id).copied().unwrap_or("UTC");
            let entry = sums
                .entry((
                    key.merchant_id.clone(),
                    key.currency.clone(),
                    days[&i].clone(),
                ))
                .or_insert((zone, [0; 4]));
            let at = if *kind == Kind::Sale { 0 } else { 2 };
            entry.1[at] += amount.0;
            entry.1[at + 1] += 1;
        }
    }
    sums.into_iter()
        .map(|((merchant_id, currency, day), (zone, s))| {
            let key = TotalsKey {
                merchant_id,
                currency,
                day: Day::parse(&day).unwrap(),
            };
            let sums = Sums {
                sales_amount: Amount(s[0]),
                sales_count: s[1] as i64,
                refund_amount: Amount(s[2]),
                refund_count: s[3] as i64,
            };
            (
                key,
                LocalSums {
                    time_zone: zone.into(),
                    sums,
                },
            )
        })
        .collect()
}

/// Whole seconds since the epoch of an RFC 3339 instant ending in `Z`
/// (a day only changes on a whole second), by `date` too.
fn unix_seconds(at: &str) -> i64 {
    // Sub-second digits never move a day: transitions fall on whole seconds.
    let whole = at.split('.').next().unwrap().trim_end_matches('Z');
    let (date, time) = whole.split_once('T').unwrap();
    let (y, mo, d): (i64, i64, i64) = {
        let p: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
        (p[0], p[1], p[2])
    };
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + t[0] * 3_600 + t[1] * 60 + t[2]
}

/// `date`'s local day (`YYYY-MM-DD`) of each `@SECONDS` line, in `zone`.
fn date_in(zone: &str, lines: &str) -> Vec<String> {
    let mut child = Command::new("date")
        .env("TZ", zone)
        .args(["-f", "-", "+%F"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("GNU date runs");
    // Written from another thread: `date` answers as it reads, and a pipe
    // full both ways would stall the two processes.
    let mut stdin = child.stdin.take().unwrap();
    let lines = lines.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(lines.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "date failed in {zone}");
    assert!(
        std::path::Path::new("/usr/share/zoneinfo")
            .join(zone)
            .exists()
            || zone == "UTC",
        "the system's IANA files (Debian's tzdata) have {zone}"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Compares `merchant_sales_local` with the expected rows, zone included;
/// panics listing differences.
pub fn assert_equal(expected: &LocalTotals, actual: &LocalTotals) {
    super::assert_rows_equal("local rows", expected, actual);
}
