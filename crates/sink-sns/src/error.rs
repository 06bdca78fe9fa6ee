//! Errors of the SNS sink.

use herald_sdk::{BoxError, SinkError};

use crate::classify::Failure;

/// What went wrong with the settings or with SNS.
#[derive(Debug, thiserror::Error)]
pub enum SnsSinkError {
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// An SNS call failed as a whole.
    #[error("SNS {operation} on {topic} failed ({kind})")]
    Call {
        /// `PublishBatch`, `Publish` or `GetTopicAttributes`.
        operation: &'static str,
        /// The topic ARN.
        topic: String,
        /// The classification, as text.
        kind: &'static str,
        /// Retry, reject or stop.
        #[doc(hidden)]
        failure: FailureKind,
        /// What the SDK reported.
        #[source]
        source: BoxError,
    },
    /// Entries kept failing for reasons not their own (throttling, internal errors).
    #[error("{count} entries for {topic} still failing after {attempts} attempts: {last}")]
    StillFailing {
        /// The topic ARN.
        topic: String,
        /// How many.
        count: usize,
        /// Attempts made.
        attempts: usize,
        /// The last code and message SNS gave.
        last: String,
    },
    /// Healthcheck: topics that cannot be reached.
    #[error("topics not reachable: {}", .0.join("; "))]
    Unreachable(Vec<String>),
}

/// A `Failure` that can live in a public error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureKind(pub(crate) Failure);

impl SnsSinkError {
    pub(crate) fn call(operation: &'static str, topic: &str, failure: Failure, source: BoxError) -> Self {
        let kind = match failure {
            Failure::Transient => "transient",
            Failure::Invalid => "refused as invalid",
            Failure::Fatal => "permanent",
        };
        SnsSinkError::Call { operation, topic: topic.to_owned(), kind, failure: FailureKind(failure), source }
    }

    /// Whether retrying can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            SnsSinkError::Call { failure, .. } => failure.0 == Failure::Transient,
            SnsSinkError::StillFailing { .. } | SnsSinkError::Unreachable(_) => true,
            SnsSinkError::Config(_) => false,
        }
    }
}

impl From<SnsSinkError> for SinkError {
    fn from(err: SnsSinkError) -> Self {
        let retriable = err.is_retriable();
        SinkError::classified(err, retriable)
    }
}

/// SNS refused one entry for its content.
#[derive(Debug, thiserror::Error)]
#[error("SNS refused the message: {code}: {message}")]
pub(crate) struct EntryRejected {
    pub(crate) code: String,
    pub(crate) message: String,
}

/// An entry over SNS's size limit, refused before sending.
#[derive(Debug, thiserror::Error)]
#[error("the message with its attributes is {bytes} bytes, over SNS's limit of {limit}")]
pub(crate) struct EntryTooLarge {
    pub(crate) bytes: usize,
    pub(crate) limit: usize,
}

/// An entry SNS would refuse for its characters or form, refused before sending (an emulator
/// may not check, and a refusal costs a request per entry).
#[derive(Debug, thiserror::Error)]
#[error("the {what} cannot be sent to SNS: {reason}")]
pub(crate) struct EntryInvalid {
    pub(crate) what: &'static str,
    pub(crate) reason: &'static str,
}
