//! Errors of the Postgres source.

use herald_pg::{classify, Failure, PgError};
use rdkafka::error::KafkaError;

/// What stopped the source (or made it step down).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A setting is invalid.
    #[error("source setting `{key}`: {reason}")]
    Config {
        /// The key inside the `[[source]]` table.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A Postgres call failed.
    #[error("Postgres: {context}")]
    Postgres {
        /// What was being done.
        context: &'static str,
        /// What sqlx reported.
        #[source]
        source: sqlx::Error,
    },
    /// Shared Postgres work failed: connecting, migrating, DDL that never got its lock.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The watched table does not exist.
    #[error("table `{0}` does not exist")]
    NoTable(String),
    /// Mapped columns are missing from the watched table.
    #[error("table `{table}` has no column {}", missing.join(", "))]
    MissingColumns {
        /// The table.
        table: String,
        /// The columns.
        missing: Vec<String>,
    },
    /// A Kafka call failed.
    #[error("Kafka: {context}")]
    Kafka {
        /// What was being done.
        context: &'static str,
        /// What librdkafka reported.
        #[source]
        source: KafkaError,
    },
    /// Another instance took over this source's transactional id: this one must stop publishing.
    #[error("fenced: another herald instance now publishes this source")]
    Fenced(#[source] KafkaError),
    /// The replication stream broke off (connection lost, server restarting, the slot still
    /// held by a reader that is going away): the source reconnects.
    #[error("replication: {context}: {reason}")]
    ReplicationLost {
        /// What was being done.
        context: &'static str,
        /// What the replication client reported.
        reason: String,
    },
    /// The replication stream failed in a way retrying cannot mend (authentication, a missing
    /// slot or publication, a malformed message).
    #[error("replication: {context}: {reason}")]
    Replication {
        /// What was being done.
        context: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The capture is not the one the position in Kafka belongs to: changes were written that
    /// herald never saw, and cannot read any more.
    #[error(
        "source `{source_name}`: the change capture was lost: {what}. herald published every change up to \
         {since}; what the table got after that was not captured. Ways forward: `herald reconcile{config} --source \
         {source_name}` shows what the table holds that the topic lacks, and `herald reconcile{config} --source \
         {source_name} --repair` publishes it; then `herald migrate{config} --drop-source {source_name}` forgets the \
         old position, and the next start (or `POST /sources/{source_name}/restart`) captures from now, publishing \
         only what the topic lacks"
    )]
    CaptureLost {
        /// The source.
        source_name: String,
        /// What was lost.
        what: String,
        /// The last position published, and when it was stored.
        since: String,
        /// ` --config <file>` for the printed commands, when the file is known.
        config: String,
    },
    /// A retire was asked for while a herald runs the source (it holds the source's lock).
    #[error(
        "source `{source_name}` is running in a herald ({holder}): a retire now would look to it like a lost \
         capture. Stop that herald, or remove the [[source]] from its config and reload it, then retire"
    )]
    Running {
        /// The source.
        source_name: String,
        /// Who holds the lock, as Postgres shows the session.
        holder: String,
    },
    /// The server is a standby (in recovery): an endpoint not yet moved to the new primary
    /// after a failover. The source captures only from a primary, and waits for one.
    #[error("the server is a standby (in recovery): the source captures from a primary only, and waits for one")]
    Standby,
    /// A blocking task died.
    #[error("internal task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl SourceError {
    pub(crate) fn postgres(context: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| SourceError::Postgres { context, source }
    }

    pub(crate) fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> Self {
        move |source| {
            let fenced = source.rdkafka_error_code().is_some_and(|code| {
                matches!(
                    code,
                    rdkafka::types::RDKafkaErrorCode::Fenced
                        | rdkafka::types::RDKafkaErrorCode::ProducerFenced
                        | rdkafka::types::RDKafkaErrorCode::InvalidProducerEpoch
                )
            });
            if fenced {
                SourceError::Fenced(source)
            } else {
                SourceError::Kafka { context, source }
            }
        }
    }

    /// Whether the source should go back to standby and try again, rather than stop herald:
    /// Kafka trouble, and the Postgres errors [`herald_pg::classify`] calls transient (lost
    /// connection, server restarting, a lock not granted in time). A missing table or a
    /// permission error stops herald with its message instead of retrying forever.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Postgres { source, .. } => classify(source) == Failure::Transient,
            SourceError::Pg(err) => err.is_transient(),
            SourceError::Kafka { .. }
            | SourceError::Fenced(_)
            | SourceError::ReplicationLost { .. }
            | SourceError::Standby => true,
            _ => false,
        }
    }
}
