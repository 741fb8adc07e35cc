//! `tally demo` runs the embedded pipeline and exits 0 only when the
//! database equals the generator's exact totals; a first run is quiet:
//! nothing at WARN or above.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `tally demo` with `args` on a database in a directory of its own;
/// returns its output and that directory (for the caller to remove).
fn demo(name: &str, args: &[&str]) -> (Output, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tally-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = dir.join("demo.sqlite");
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("demo")
        .args(args)
        .arg("--database")
        .arg(&database)
        .output()
        .expect("tally demo runs");
    (output, dir)
}

#[test]
fn demo_exits_zero_with_matching_totals() {
    let (output, dir) = demo("demo-test", &["--events", "300000"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Totals match the generator's exact totals"),
        "{stdout}"
    );
    assert!(stdout.contains("Top merchants"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let loud: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect();
    assert!(
        loud.is_empty(),
        "the demo logged warnings or errors:\n{}",
        loud.join("\n")
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `tally demo --json` prints one JSON object on standard output, whose
/// counts agree with each other and with the generator's.
#[test]
fn demo_json_is_one_object_with_its_counts() {
    let (output, dir) = demo("demo-json", &["--events", "50000", "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stderr.contains('\r'),
        "progress on a pipe is plain lines: {stderr}"
    );
    let outcome: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON object ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(outcome["matches"], true);
    assert_eq!(outcome["messages"], 50_000);
    assert_eq!(outcome["counted"], outcome["expected_counted"]);
    assert_eq!(outcome["differing_keys"], 0);
    let [counted, duplicates, invalid] =
        ["counted", "duplicates", "invalid"].map(|k| outcome[k].as_u64().unwrap());
    assert_eq!(counted + duplicates + invalid, 50_000, "{outcome}");
    assert_eq!(outcome["top_merchants"].as_array().unwrap().len(), 10);
    let _ = std::fs::remove_dir_all(dir);
}
