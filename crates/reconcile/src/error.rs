//! What can stop a reconcile.

use std::time::Duration;

/// Why a reconcile could not say whether table and topic agree.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading the source's table (or publishing its repair) failed.
    #[error(transparent)]
    Source(#[from] herald_source_postgres::SourceError),
    /// Reading the sink's table (or writing its repair) failed.
    #[error(transparent)]
    Sink(#[from] herald_sink_postgres::PostgresSinkError),
    /// Reading the topic failed.
    #[error(transparent)]
    Topic(#[from] herald_kafka::reader::HistoryError),
    /// Reading the topic took longer than allowed.
    #[error("reading {topics} took longer than {after:?}; try a shorter window or a longer timeout")]
    TimedOut {
        /// The topics.
        topics: String,
        /// The limit.
        after: Duration,
    },
}
