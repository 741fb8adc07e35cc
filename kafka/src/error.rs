//! What a Kafka operation failed on, and which broker answers are worth
//! retrying.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use retry::{Class, Classify};

/// A Kafka operation that failed, with the brokers it went to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client operation failed.
    #[error("Kafka {op} failed (brokers {brokers}): {source}")]
    Client {
        /// What tally was doing.
        op: &'static str,
        /// The configured bootstrap servers.
        brokers: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A topic could not be created.
    #[error("could not create topic {topic:?}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
}

impl Error {
    /// A closure that wraps librdkafka's error of `op` against `brokers`.
    pub fn client(op: &'static str, brokers: &str) -> impl FnOnce(KafkaError) -> Error {
        let brokers = brokers.to_owned();
        move |source| Error::Client {
            op,
            brokers,
            source,
        }
    }
}

/// A refused topic is permanent; a client error is what [`class_of`] says.
impl Classify for Error {
    fn class(&self) -> Class {
        match self {
            Error::Client { source, .. } => class_of(source),
            Error::Topic { .. } => Class::Permanent,
        }
    }
}

/// librdkafka's error with its class, for [`retry::retry`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Classified(pub KafkaError);

impl Classify for Classified {
    fn class(&self) -> Class {
        class_of(&self.0)
    }
}

/// Broker errors: a message or request the broker refuses for its content or
/// size, or a name it refuses, is permanent; everything else (transport,
/// timeouts, leaders moving, throttling, a full local queue) is transient.
pub fn class_of(error: &KafkaError) -> Class {
    let code = match error {
        KafkaError::MessageProduction(code) | KafkaError::AdminOp(code) => *code,
        KafkaError::ClientCreation(_)
        | KafkaError::ClientConfig(..)
        | KafkaError::Subscription(_) => return Class::Permanent,
        other => {
            return other
                .rdkafka_error_code()
                .map_or(Class::Transient, code_class)
        }
    };
    code_class(code)
}

fn code_class(code: RDKafkaErrorCode) -> Class {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::MessageBatchTooLarge
        | C::InvalidTopic
        | C::InvalidConfig
        | C::InvalidArgument
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::UnsupportedCompressionType
        | C::UnsupportedVersion => Class::Permanent,
        _ => Class::Transient,
    }
}

/// The broker or the producer refused a record for its size.
pub fn is_too_large(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize)
    )
}

/// Whether Kafka refused a record for what it is (its size or form): the
/// sender's fault, which no retry would change. Any other failure (a
/// refused login or ACL, an unknown topic, a timeout) is the pipeline's.
pub fn refuses_the_record(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::{
        InvalidMessageSize, InvalidRecord, MessageBatchTooLarge, MessageSizeTooLarge,
    };
    matches!(
        error,
        KafkaError::MessageProduction(
            MessageSizeTooLarge | InvalidMessageSize | MessageBatchTooLarge | InvalidRecord
        )
    )
}

/// The producer's local queue is full: wait for room and send again.
pub fn is_queue_full(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_by_class() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(class_of(&too_large), Class::Permanent);
        assert!(!Classified(too_large).is_retryable());
        for transient in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert_eq!(
                class_of(&KafkaError::MessageProduction(transient)),
                Class::Transient,
                "{transient:?}"
            );
        }
        assert_eq!(
            class_of(&KafkaError::ClientCreation("bad".into())),
            Class::Permanent
        );
    }

    #[test]
    fn only_the_record_s_own_faults_refuse_it() {
        let production = KafkaError::MessageProduction;
        assert!(refuses_the_record(&production(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(refuses_the_record(&production(
            RDKafkaErrorCode::InvalidRecord
        )));
        // The pipeline's faults: retried as a whole, never blamed on a record.
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::UnsupportedVersion,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert!(!refuses_the_record(&production(code)), "{code:?}");
        }
        assert!(!refuses_the_record(&KafkaError::Canceled));
    }
}
