//! Why a backfill or import attempt failed, and whether another attempt can
//! help: tally's one retry policy ([`retry::Classify`]) reads the class. A
//! transient failure (the network, a file that changed while it was read
//! or does not decode yet, the database away) is retried with backoff until
//! the attempts run out; a permanent one (a float amount, a column that
//! cannot hold text, a CSV without a header, a file that is gone or
//! forbidden) fails its job at once, with its reason.

use datafusion::error::DataFusionError;
use retry::{Class, Classify};
use store::StoreError;

/// A failed attempt of a backfill or import task.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A file's content cannot carry events exactly, or is malformed: the
    /// same file fails the same way on every attempt.
    #[error("{file}: {reason}")]
    Content {
        /// The file or object.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or object could not be read: transient, unless it is gone or
    /// may not be read (`permanent`).
    #[error("{file}: {reason}")]
    Read {
        /// The file or object.
        file: String,
        /// The error.
        reason: String,
        /// Gone, forbidden or not a file: another attempt fails the same way.
        permanent: bool,
    },
    /// The file changed while it was read: the next attempt reads it again.
    #[error("{file} changed while it was read; reading it again")]
    Changed {
        /// The file or object.
        file: String,
    },
    /// The job cannot run as stored (it names no format, or a source that
    /// cannot be used).
    #[error("{0}")]
    Job(String),
    /// The database failed.
    #[error("{op}: {source}")]
    Store {
        /// What the runner was doing.
        op: &'static str,
        /// The database's error, which says its own class.
        #[source]
        source: StoreError,
    },
    /// The work stopped before it finished (a shard's tally panicked, or
    /// the task's runners stopped too many times).
    #[error("{reason}")]
    Stopped {
        /// What stopped.
        reason: String,
        /// Whether another attempt is allowed.
        permanent: bool,
    },
}

impl TaskError {
    /// A local file's I/O error: permanent when the file is gone, forbidden
    /// or not a regular file.
    pub fn io(file: &str, error: &std::io::Error) -> TaskError {
        use std::io::ErrorKind::{InvalidData, IsADirectory, NotFound, PermissionDenied};
        TaskError::Read {
            file: file.to_owned(),
            reason: error.to_string(),
            permanent: matches!(
                error.kind(),
                NotFound | PermissionDenied | IsADirectory | InvalidData
            ),
        }
    }

    /// DataFusion's error reading a Parquet or CSV file: an I/O error as
    /// [`TaskError::io`]; an object store's as transient, but for a missing
    /// object; a file that does not decode (a Parquet footer that is not
    /// there yet, a CSV cut mid-row) as transient too, since a file still
    /// being written looks just like that; anything else (a plan or schema
    /// that cannot hold) as malformed content.
    pub fn datafusion(file: &str, error: DataFusionError) -> TaskError {
        let read = |permanent: bool| TaskError::Read {
            file: file.to_owned(),
            reason: error.to_string(),
            permanent,
        };
        match error.find_root() {
            DataFusionError::IoError(io) => TaskError::io(file, io),
            DataFusionError::ObjectStore(store) => {
                read(matches!(**store, object_store::Error::NotFound { .. }))
            }
            DataFusionError::ParquetError(_) | DataFusionError::ArrowError(..) => read(false),
            _ => TaskError::Content {
                file: file.to_owned(),
                reason: error.to_string(),
            },
        }
    }

    /// An object store's read failing mid-stream: the network, so transient.
    pub fn remote(file: &str, reason: impl Into<String>) -> TaskError {
        TaskError::Read {
            file: file.to_owned(),
            reason: reason.into(),
            permanent: false,
        }
    }

    /// Malformed content of `file`.
    pub fn content(file: &str, reason: impl Into<String>) -> TaskError {
        TaskError::Content {
            file: file.to_owned(),
            reason: reason.into(),
        }
    }
}

impl Classify for TaskError {
    fn class(&self) -> Class {
        match self {
            TaskError::Content { .. } | TaskError::Job(_) => Class::Permanent,
            TaskError::Read { permanent, .. } | TaskError::Stopped { permanent, .. } => {
                if *permanent {
                    Class::Permanent
                } else {
                    Class::Transient
                }
            }
            TaskError::Changed { .. } => Class::Transient,
            TaskError::Store { source, .. } => source.class(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_says_whether_another_attempt_can_help() {
        let gone = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!TaskError::io("a.csv", &gone).is_retryable());
        assert!(TaskError::io("a.csv", &reset).is_retryable());
        assert!(!TaskError::content("a.parquet", "column `amount` is Float64").is_retryable());
        assert!(!TaskError::Job("a backfill job names no format".into()).is_retryable());
        assert!(TaskError::Changed {
            file: "a.csv".into()
        }
        .is_retryable());
        assert!(TaskError::remote("s3://b/k", "connection reset").is_retryable());
        // A footer not written yet: the file may still be being copied in.
        let parquet = DataFusionError::ParquetError(Box::new(
            datafusion::parquet::errors::ParquetError::General("no footer".into()),
        ));
        assert!(TaskError::datafusion("a.parquet", parquet).is_retryable());
        let plan = DataFusionError::Plan("no column amount".into());
        assert!(!TaskError::datafusion("a.parquet", plan).is_retryable());
        let missing = DataFusionError::ObjectStore(Box::new(object_store::Error::NotFound {
            path: "k".into(),
            source: "404".into(),
        }));
        assert!(!TaskError::datafusion("s3://b/k", missing).is_retryable());
        let wrapped =
            DataFusionError::Context("reading".into(), Box::new(DataFusionError::IoError(reset)));
        assert!(TaskError::datafusion("a.csv", wrapped).is_retryable());
        let away = TaskError::Store {
            op: "cannot record the result",
            source: StoreError::Timeout {
                op: "finish",
                after_ms: 35_000,
            },
        };
        assert!(away.is_retryable());
        assert_eq!(
            TaskError::content("a.csv", "the header row is not UTF-8").to_string(),
            "a.csv: the header row is not UTF-8"
        );
    }
}
