//! `tally migrate`: the database schema brought to this version.

use crate::cli::DatabaseArgs;
use crate::error::{CliError, CliResult};
use store::Store;

use super::database_url;

/// `tally migrate`: applies the migrations this build knows.
pub async fn migrate(database: DatabaseArgs) -> CliResult {
    let url = database_url(&database)?;
    Store::connect(&url).await.map_err(CliError::run)?;
    eprintln!("The database's tally schema is up to date.");
    Ok(())
}
