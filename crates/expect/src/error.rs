//! What can go wrong with expectations.

use rdkafka::error::KafkaError;

/// An expectation error.
#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    /// A rule is invalid.
    #[error("{key}: {reason}")]
    Rule {
        /// The key, e.g. `expect[0].by`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Kafka failed; the evaluator starts over from what it committed.
    #[error("Kafka: {what}")]
    Kafka {
        /// What the evaluator was doing.
        what: &'static str,
        /// The client's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// The events topic is missing.
    #[error("topic `{0}` does not exist")]
    NoTopic(String),
    /// Restoring the state of a partition took too long.
    #[error("restoring the state of partition {partition} of `{topic}` did not finish within {seconds} s")]
    Restore {
        /// The state topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// How long herald waited.
        seconds: u64,
    },
}

impl ExpectError {
    pub(crate) fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> Self {
        move |source| ExpectError::Kafka { what, source: Box::new(source) }
    }
}
