//! `tally demo` runs the embedded pipeline and exits 0 only when the
//! database equals the generator's exact totals; a first run is quiet:
//! nothing at WARN or above.

use std::process::Command;

#[test]
fn demo_exits_zero_with_matching_totals() {
    let dir = std::env::temp_dir().join(format!("tally-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = dir.join("demo.sqlite");
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "demo",
            "--events",
            "300000",
            "--database",
            database.to_str().unwrap(),
        ])
        .output()
        .expect("tally demo runs");
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
