//! The runtime's errors.

use rdkafka::error::KafkaError;

use herald_sdk::sink::SinkError;

/// Why a route stopped.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The Kafka consumer could not be created or subscribed.
    #[error("cannot create the Kafka consumer")]
    Consumer(#[source] KafkaError),
    /// Reading a partition again from where the sink's destination stands failed.
    #[error("cannot read {topic}[{partition}] again from offset {offset}")]
    Rewind {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Where it was to be read from.
        offset: i64,
        /// Why the seek failed.
        #[source]
        source: KafkaError,
    },
    /// The task reading the next batch while one is written failed unexpectedly.
    #[error("reading the next batch failed: {0}")]
    ReadAhead(String),
    /// The dead-letter topic could not be created or its producer made.
    #[error("cannot set up dead-letter topic `{topic}`")]
    DeadLetterSetup {
        /// The topic.
        topic: String,
        /// What Kafka said.
        #[source]
        source: KafkaError,
    },
    /// A message can never be delivered and the route has nowhere to put it.
    #[error(
        "message {topic}[{partition}]@{offset} cannot be delivered ({reason}) and the route has no \
         `dead_letter_topic`; set one to divert such messages and keep going"
    )]
    Undeliverable {
        /// Its topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Why it cannot be delivered.
        reason: String,
    },
    /// The dead-letter topic did not acknowledge a dead letter.
    #[error("dead-letter topic `{topic}` did not accept a message")]
    DeadLetter {
        /// The topic.
        topic: String,
        /// What Kafka said.
        #[source]
        source: KafkaError,
    },
    /// The sink failed in a way retrying cannot fix.
    #[error("the sink failed permanently")]
    Sink(#[source] SinkError),
    /// The sink kept failing for `retry.max_retries` retries.
    #[error("the sink still failed after {retries} retries")]
    RetriesExhausted {
        /// How many retries were made.
        retries: u64,
        /// The last failure.
        #[source]
        source: SinkError,
    },
    /// The sink rejected a record index that is not in the batch: a bug in that sink.
    #[error("the sink rejected record {index} of a batch of {batch}")]
    BadRejectionIndex {
        /// The index the sink returned.
        index: usize,
        /// The batch length.
        batch: usize,
    },
}

/// Why `run` returned an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A route stopped with an error; the others were shut down cleanly.
    #[error("route `{route}` stopped")]
    Route {
        /// The route.
        route: String,
        /// Why it stopped.
        #[source]
        source: RouteError,
    },
    /// A route task panicked or was aborted.
    #[error("route `{route}` task ended abnormally")]
    Task {
        /// The route.
        route: String,
        /// What tokio reported.
        #[source]
        source: tokio::task::JoinError,
    },
}
