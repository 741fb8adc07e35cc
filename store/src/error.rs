//! Database errors, with the operation that failed and whether a retry can help.

pub use retry::{Class, Classify};

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("database url {url:?} is not supported: use postgres://… or sqlite://PATH")]
    UnsupportedUrl {
        /// The URL's scheme only: the rest may hold a password.
        url: String,
    },
    /// The database URL cannot be used (the URL itself is not shown: it may
    /// hold a password).
    #[error("invalid database url: {reason}")]
    InvalidUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS settings of the database URL cannot be used.
    #[error("PostgreSQL TLS: {reason}")]
    Tls {
        /// What is wrong (names the file or setting).
        reason: String,
    },
    /// PostgreSQL refused or lost the connection, or a statement failed.
    #[error("PostgreSQL {op} failed: {}", postgres_detail(source))]
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
    /// No connection could be had from the PostgreSQL pool.
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
    /// A blocking SQLite task panicked or was cancelled.
    #[error("SQLite worker thread failed: {0}")]
    Join(String),
    /// The request breaks a rule the database holds (such as a dependency
    /// on a job that does not exist).
    #[error("{0}")]
    Refused(String),
    /// The database's schema lacks migrations this build needs, and this
    /// connection does not migrate.
    #[error(
        "the database's tally schema is at version {}, and this build needs version {needed}: \
         run `tally migrate` (or start an aggregator) with a role that may create tables",
        found.map_or_else(|| "none".to_owned(), |v| v.to_string())
    )]
    Schema {
        /// The newest migration applied; none when none is.
        found: Option<i64>,
        /// The newest migration this build knows.
        needed: i64,
    },
    /// The database did not answer in time; the connection was dropped.
    #[error("database {op} did not answer within {after_ms} ms (connection reset)")]
    Timeout {
        /// What tally was doing.
        op: &'static str,
        /// The limit that ran out.
        after_ms: u64,
    },
}

/// Transient: lost or refused connections, timeouts (ours or the server's),
/// serialization failures, deadlocks, lock timeouts, a server shutting down
/// or short of resources. Permanent: everything the same input would hit
/// again (a data exception such as a NUL byte in text, a constraint, a
/// missing table, a corrupt stored value, an unsupported URL).
impl Classify for StoreError {
    fn class(&self) -> Class {
        match self {
            StoreError::Postgres { source, .. } => match source.code() {
                // A certificate the configured CAs or host name refuse is
                // refused again on every attempt.
                None if refused_certificate(source) => Class::Permanent,
                // No SQLSTATE: the connection broke, or the server never answered.
                None => Class::Transient,
                Some(code) => postgres_class(code.code()),
            },
            StoreError::Sqlite { source, .. } => match source.sqlite_error_code() {
                Some(
                    rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::OutOfMemory,
                ) => Class::Transient,
                _ => Class::Permanent,
            },
            // An aggregator starting beside a reader may be migrating now.
            StoreError::Join(_)
            | StoreError::Pool(_)
            | StoreError::Timeout { .. }
            | StoreError::Schema { .. } => Class::Transient,
            StoreError::UnsupportedUrl { .. }
            | StoreError::InvalidUrl { .. }
            | StoreError::Tls { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Refused(_) => Class::Permanent,
        }
    }
}

/// A PostgreSQL SQLSTATE's class (Appendix A of the PostgreSQL manual).
pub fn postgres_class(sqlstate: &str) -> Class {
    const TRANSIENT_CLASSES: [&str; 6] = [
        "08", // connection exception
        "40", // transaction rollback: serialization failure, deadlock
        "53", // insufficient resources
        "57", // operator intervention: query_canceled (statement_timeout), admin shutdown
        "58", // system error (I/O)
        "XX", // internal error
    ];
    const TRANSIENT_CODES: [&str; 1] = ["55P03"]; // lock_not_available
    if TRANSIENT_CLASSES.iter().any(|c| sqlstate.starts_with(c))
        || TRANSIENT_CODES.contains(&sqlstate)
    {
        Class::Transient
    } else {
        Class::Permanent
    }
}

impl StoreError {
    /// True when retrying the same operation later can succeed (see [`Classify`]).
    pub fn is_retryable(&self) -> bool {
        Classify::is_retryable(self)
    }
}

/// The server's own message, SQLSTATE and detail when there is one (the
/// driver's `Display` says only "db error"), else the driver's text.
/// The errors behind `error`, outermost first. An `io::Error` that wraps
/// another error (as a TLS failure does) is followed into it: its own
/// `source` skips the wrapped error.
fn causes(error: &tokio_postgres::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(error) = cause {
        out.push(error);
        cause = match error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    out
}

/// Whether the TLS handshake failed on the server's certificate.
fn refused_certificate(error: &tokio_postgres::Error) -> bool {
    causes(error).iter().any(|cause| {
        matches!(
            cause.downcast_ref(),
            Some(tokio_rustls::rustls::Error::InvalidCertificate(_))
        )
    })
}

fn postgres_detail(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let detail = db.detail().map_or(String::new(), |d| format!(" ({d})"));
            format!(
                "{}: {}{detail} [SQLSTATE {}]",
                db.severity(),
                db.message(),
                db.code().code()
            )
        }
        None => {
            let mut text = error.to_string();
            let mut last = String::new();
            for cause in causes(error) {
                let shown = cause.to_string();
                // An io::Error shows the error it wraps: say it once.
                if shown != last && !text.ends_with(&shown) {
                    text = format!("{text}: {shown}");
                }
                last = shown;
            }
            text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_by_class() {
        for transient in [
            "08006", "08001", "40001", "40P01", "57014", "57P01", "53300", "55P03", "XX000",
        ] {
            assert_eq!(postgres_class(transient), Class::Transient, "{transient}");
        }
        // 22021: invalid byte sequence (a NUL in text); 23514: check violation;
        // 42P01: undefined table; 22003: numeric value out of range.
        for permanent in ["22021", "23514", "42P01", "22003", "22008"] {
            assert_eq!(postgres_class(permanent), Class::Permanent, "{permanent}");
        }
        assert!(StoreError::Timeout {
            op: "apply",
            after_ms: 1
        }
        .is_retryable());
        let corrupt = StoreError::Corrupt {
            column: "day",
            value: "x".into(),
            reason: "y".into(),
        };
        assert!(!corrupt.is_retryable());
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None);
        assert!(StoreError::Sqlite {
            op: "apply",
            source: busy
        }
        .is_retryable());
        let constraint = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(19), None);
        assert!(!StoreError::Sqlite {
            op: "apply",
            source: constraint
        }
        .is_retryable());
    }
}
