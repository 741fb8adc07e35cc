//! Database errors, with the operation that failed and whether a retry can help.

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("database url {url:?} is not supported: use postgres://… or sqlite://PATH")]
    UnsupportedUrl {
        /// The URL with any password removed.
        url: String,
    },
    /// PostgreSQL refused or lost the connection, or a statement failed.
    #[error("PostgreSQL {op} failed: {source}")]
    Postgres {
        /// What tally was doing.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A SQLite statement failed.
    #[error("SQLite {op} failed: {source}")]
    Sqlite {
        /// What tally was doing.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value could not be read back (corrupt or hand-edited row).
    #[error("stored value {value:?} in {column} is unreadable: {reason}")]
    Corrupt {
        /// Column name.
        column: &'static str,
        /// The text found.
        value: String,
        /// Why it could not be parsed.
        reason: String,
    },
    /// A blocking SQLite task panicked or was cancelled.
    #[error("SQLite worker thread failed: {0}")]
    Join(String),
}

impl StoreError {
    /// True when retrying the same operation later can succeed: lost
    /// connections, lock timeouts, serialization failures, deadlocks.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Postgres { source, .. } => match source.code() {
                None => true,
                Some(code) => {
                    let code = code.code();
                    code.starts_with("08") || code == "40001" || code == "40P01" || code.starts_with("57P")
                }
            },
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            StoreError::Join(_) => true,
            StoreError::UnsupportedUrl { .. } | StoreError::Corrupt { .. } => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn pg(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { op, source }
}

pub(crate) fn lite(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}
