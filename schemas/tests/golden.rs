//! Golden files: every `tests/data/*.ndjson` holds one event per line, edge
//! cases included, beside its expected outcomes (`*.outcomes`, one line per
//! event) and the totals its counted events make (`*.totals.csv`).
//!
//! An outcome is `counted MERCHANT CURRENCY DAY KIND AMOUNT`, `invalid FIELD:
//! REASON`, `duplicate of line N` (the same id and bytes) or `conflicting
//! duplicate of line N` (the same id, other content: counted once, as the
//! first, and dead-lettered). Duplicates are judged as a worker judges them
//! within its window.
//!
//! The files are the review: a change to the decoder's behaviour shows as a
//! diff of them. `TALLY_BLESS=1 cargo test -p schemas --test golden` rewrites
//! them from the code, to be read before they are committed.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use schemas::event::decode;
use schemas::{Amount, Kind};

/// (merchant, currency, day) → sales amount, sales count, refund amount, refund count.
type Totals = BTreeMap<(String, String, String), (Amount, u64, Amount, u64)>;

fn judge(events: &str) -> (String, Totals) {
    let mut outcomes = String::new();
    let mut totals = Totals::new();
    // event_id → (line, payload) of its first valid appearance.
    let mut seen: HashMap<String, (usize, &str)> = HashMap::new();
    for (index, line) in events.lines().enumerate() {
        let number = index + 1;
        let outcome = match decode(line.as_bytes(), None) {
            Err(invalid) => format!("invalid {}: {}", invalid.field, invalid.reason),
            Ok(event) => match seen.get(event.event_id.as_ref()) {
                Some((first, payload)) if *payload == line => format!("duplicate of line {first}"),
                Some((first, _)) => format!("conflicting duplicate of line {first}"),
                None => {
                    seen.insert(event.event_id.to_string(), (number, line));
                    let key = (
                        event.merchant_id.to_string(),
                        event.currency.to_string(),
                        event.day.to_string(),
                    );
                    let sums = totals.entry(key).or_insert((Amount(0), 0, Amount(0), 0));
                    let kind = match event.kind {
                        Kind::Sale => {
                            sums.0 = sums
                                .0
                                .checked_add(event.amount)
                                .expect("no overflow in the golden files");
                            sums.1 += 1;
                            "sale"
                        }
                        Kind::Refund => {
                            sums.2 = sums
                                .2
                                .checked_add(event.amount)
                                .expect("no overflow in the golden files");
                            sums.3 += 1;
                            "refund"
                        }
                    };
                    format!(
                        "counted {} {} {} {kind} {}",
                        event.merchant_id, event.currency, event.day, event.amount
                    )
                }
            },
        };
        writeln!(outcomes, "{outcome}").unwrap();
    }
    (outcomes, totals)
}

fn totals_csv(totals: &Totals) -> String {
    let mut csv = String::from(
        "merchant_id,currency,day,sales_amount,sales_count,refund_amount,refund_count\n",
    );
    for ((merchant, currency, day), (sales, sales_count, refunds, refund_count)) in totals {
        writeln!(
            csv,
            "{merchant},{currency},{day},{sales},{sales_count},{refunds},{refund_count}"
        )
        .unwrap();
    }
    csv
}

/// Compares `actual` with the file at `path`, or writes it when blessing.
fn check(path: &Path, actual: &str) {
    if std::env::var_os("TALLY_BLESS").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (TALLY_BLESS=1 writes it)", path.display()));
    for (number, (want, got)) in expected.lines().zip(actual.lines()).enumerate() {
        assert_eq!(want, got, "{} line {}", path.display(), number + 1);
    }
    assert_eq!(
        expected.lines().count(),
        actual.lines().count(),
        "{}: line count",
        path.display()
    );
}

/// This crate's directory: cargo sets `CARGO_MANIFEST_DIR` for a test it
/// runs. Read at run time, not baked in with `env!`: a build directory
/// shared by clones at other paths can reuse this test's executable.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

#[test]
fn every_golden_file_decodes_as_recorded() {
    let data = Path::new(&manifest_dir()).join("tests/data");
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        files += 1;
        let events = std::fs::read_to_string(&path).unwrap();
        let (outcomes, totals) = judge(&events);
        assert_eq!(outcomes.lines().count(), events.lines().count());
        check(&path.with_extension("outcomes"), &outcomes);
        check(&path.with_extension("totals.csv"), &totals_csv(&totals));
    }
    assert!(files > 0, "no golden files in {}", data.display());
}
