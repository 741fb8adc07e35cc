//! The base client configuration, the consumers' fetch defaults, and
//! librdkafka's log lines into `tracing`.

use std::collections::BTreeMap;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

/// An empty client configuration: the one place tally makes one.
#[allow(clippy::disallowed_methods)]
pub(crate) fn empty() -> ClientConfig {
    ClientConfig::new()
}

/// A client configuration for `brokers` and nothing else: the role sets its
/// properties, then usually the operator's (see [`client_with`]).
pub fn client(brokers: &str) -> ClientConfig {
    let mut config = empty();
    config.set("bootstrap.servers", brokers);
    config
}

/// A client configuration for `brokers` with the operator's `extra`
/// properties applied, and librdkafka's log level set to what `tracing`
/// shows (`debug` contexts in `extra` need everything).
pub fn client_with(brokers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = client(brokers);
    let level = if extra.contains_key("debug") {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    };
    config.set_log_level(level);
    apply(&mut config, extra);
    config
}

/// Sets each of `properties` on `config`, over what it holds.
pub fn apply(config: &mut ClientConfig, properties: &BTreeMap<String, String>) {
    for (key, value) in properties {
        config.set(key, value);
    }
}

/// Consumer fetch settings, each applied only when the operator's `extra`
/// does not set it.
///
/// - `fetch.wait.max.ms=10`: a broker answers a fetch as soon as it has
///   data anyway (`fetch.min.bytes=1`), so the wait only bounds how long an
///   idle fetch is held. Some brokers hold every fetch for the whole wait
///   (tansu 0.6.0 did, which at librdkafka's 500 ms capped a consumer at a
///   seventh of its speed).
/// - `queued.max.messages.kbytes=16384`: the worker gives each partition its
///   own queue, so this bounds the prefetch per partition at 16 MiB instead
///   of librdkafka's 64 MiB.
/// - `fetch.queue.backoff.ms=10`: a partition whose queue reached that bound
///   (its task was busy) is fetched again 10 ms after it has room, not a
///   second later: at librdkafka's 1,000 ms, a backlog read stalled for
///   whole tenths of a second each time a queue filled.
pub const FETCH_DEFAULTS: [(&str, &str); 3] = [
    ("fetch.wait.max.ms", "10"),
    ("queued.max.messages.kbytes", "16384"),
    ("fetch.queue.backoff.ms", "10"),
];

/// Applies [`FETCH_DEFAULTS`] that `extra` leaves unset.
pub fn fetch_defaults(config: &mut ClientConfig, extra: &BTreeMap<String, String>) {
    for (key, value) in FETCH_DEFAULTS {
        if !extra.contains_key(key) {
            config.set(key, value);
        }
    }
}

/// librdkafka warnings that are expected in ordinary running, logged at
/// INFO so that a WARN in tally's log always asks for a look:
/// - a role's `kafka` table goes to each of its clients, so a consumer
///   property is reported as ignored by its producer, and the reverse;
/// - a broker that has just started (or moved a coordinator) answers
///   "coordinator load in progress" for a moment, and librdkafka retries.
const EXPECTED_WARNINGS: [&str; 3] = [
    "is a consumer property and will be ignored by this producer instance",
    "is a producer property and will be ignored by this consumer instance",
    "Coordinator load in progress: retrying",
];

/// Sends a librdkafka log line to `tracing` (target `librdkafka`), so that
/// broker problems show up in tally's own logs.
pub fn forward_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel as L;
    let expected = EXPECTED_WARNINGS
        .iter()
        .any(|known| message.contains(known));
    match level {
        L::Warning if expected => tracing::info!(target: "librdkafka", facility, "{message}"),
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        L::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// The context of tally's producers (and of the aggregator's reader of log
/// ends): librdkafka's log lines go through [`forward_log`], as the
/// worker's consumer's do, so that expected warnings are not logged as
/// warnings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logged;

impl rdkafka::client::ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        forward_log(level, facility, message);
    }
}

impl rdkafka::consumer::ConsumerContext for Logged {}

/// tally's producer: rdkafka's, with [`Logged`] as its context.
pub type FutureProducer = rdkafka::producer::FutureProducer<Logged>;
