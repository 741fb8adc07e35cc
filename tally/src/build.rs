//! What this binary is: its version and the commit it was built from,
//! exported as `tally_build_info`.

use std::sync::LazyLock;

use prometheus::{register_int_gauge_vec, IntGaugeVec};

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from (12 hex digits), or `unknown`.
pub const REVISION: &str = env!("TALLY_REVISION");

/// `tally --version`: the version and the commit.
pub const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("TALLY_REVISION"), ")");

/// Always 1, labelled with the version and revision, so dashboards can
/// show which build each instance runs and join it with other series.
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_build_info",
        "Always 1: the version and revision (commit) of the running build.",
        &["version", "revision"]
    )
    .expect("metric registers once")
});

/// Registers `tally_build_info` in the default registry.
pub fn register() {
    BUILD_INFO.with_label_values(&[VERSION, REVISION]).set(1);
}
