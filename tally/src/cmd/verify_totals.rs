//! `tally verify-totals`: a generator's expected totals against the database.

use std::io::BufReader;

use ingest::load::expected;

use crate::cli::VerifyArgs;
use crate::error::{CliError, CliResult};
use crate::render;

use super::open_store;

/// Compares the file's rows with `merchant_sales`: exit 0 when every key
/// matches, 1 when any differs (each one printed), 2 for a bad file or URL.
pub async fn verify(args: VerifyArgs) -> CliResult {
    let file = std::fs::File::open(&args.file).map_err(|error| {
        CliError::config(format!("cannot open {}: {error}", args.file.display()))
    })?;
    let want = expected::read(BufReader::new(file))
        .map_err(|error| CliError::config(format!("{}: {error}", args.file.display())))?;
    let store = open_store(&args.database).await?;
    let have = store
        .totals(None)
        .await
        .map_err(|error| CliError::run(format!("cannot read merchant_sales: {error}")))?;
    let json = args
        .json
        .then(|| serde_json::json!({ "file": args.file.display().to_string() }));
    render::report_as(&want, &have, json)
}
