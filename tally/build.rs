//! Records the commit the binary is built from (`TALLY_REVISION`), for
//! `tally --version`, the start-up log and `tally_build_info`. Outside a Git
//! checkout (a source archive) it is `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TALLY_REVISION={revision}");
    // Built again when HEAD moves: a checkout, or a commit on the branch.
    let git = Path::new("../.git");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        if let Some(reference) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=../.git/{reference}");
        }
    }
}
