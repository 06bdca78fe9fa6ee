//! Errors of the Postgres source.

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
    /// The URL does not parse (not shown: it may hold a password).
    #[error("invalid Postgres URL")]
    Url(#[source] sqlx::Error),
    /// A Postgres call failed.
    #[error("Postgres: {context}")]
    Postgres {
        /// What was being done.
        context: &'static str,
        /// What sqlx reported.
        #[source]
        source: sqlx::Error,
    },
    /// Installing the change capture failed.
    #[error("installing the change capture in schema `{schema}` failed")]
    Migrate {
        /// herald's schema.
        schema: String,
        /// What sqlx reported.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
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

    /// Whether the source should go back to standby and try again, rather than stop herald.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Postgres { .. } | SourceError::Kafka { .. } | SourceError::Fenced(_))
    }
}
