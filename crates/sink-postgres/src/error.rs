//! Errors of the Postgres sink.

use herald_sdk::SinkError;

use herald_pg::{classify, Failure, PgError};

/// What went wrong talking to Postgres or with the sink's settings.
#[derive(Debug, thiserror::Error)]
pub enum PostgresSinkError {
    /// A setting is invalid.
    #[error("sink setting `{key}`: {reason}")]
    Config {
        /// The key inside the sink table.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Connecting failed.
    #[error("cannot connect to Postgres")]
    Connect(#[source] sqlx::Error),
    /// Naming the connection, migrating herald's tables or other shared Postgres work failed.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// Reading the table's columns from the catalog failed.
    #[error("cannot read the columns of `{table}`")]
    Catalog {
        /// The table.
        table: String,
        /// What Postgres said.
        #[source]
        source: sqlx::Error,
    },
    /// The table does not exist (or is not visible to herald's user).
    #[error("table {table} does not exist (greenfield tables are created by `herald migrate` or `herald run`)")]
    NoTable {
        /// The table.
        table: String,
    },
    /// The existing table `table = …` names does not exist (or is not visible to herald's user).
    #[error(
        "table {table} does not exist: herald writes to this table but does not create it, since it is \
         not herald's own (`herald migrate` creates only herald's tables); fix `table.name`, or create it, \
         e.g. `{ddl}`"
    )]
    NoLegacyTable {
        /// The table.
        table: String,
        /// A `CREATE TABLE` that fits the mapping.
        ddl: String,
    },
    /// Mapped columns are missing or of an incompatible type.
    #[error("table {table} does not fit the mapping: {}", problems.join("; "))]
    Mapping {
        /// The table.
        table: String,
        /// One line per problem.
        problems: Vec<String>,
    },
    /// A statement failed.
    #[error("Postgres query failed")]
    Query(#[from] sqlx::Error),
    /// The table's unique index refused a row an append wrote (what `herald check` warns of).
    #[error("refused by the table: {hint}")]
    RefusedByIndex {
        /// Which index, and what to write instead.
        hint: String,
        /// What Postgres said.
        #[source]
        source: sqlx::Error,
    },
    /// An event dated too far ahead for a newest-wins table.
    #[error(transparent)]
    AheadOfClock(#[from] herald_sdk::AheadOfClock),
    /// The server behind the url is a standby (in recovery): herald writes only to a primary.
    #[error("the server is a standby (in recovery): herald writes only to a primary, and waits for one")]
    Standby,
    /// The database's stored offsets are behind what this sink committed before: it lost
    /// commits (a failover to a standby that had not received them, a restore).
    #[error("the database is behind what herald wrote to it: {}", describe_behind(.partitions))]
    Behind {
        /// Per partition: topic, partition, the database's next offset, herald's.
        partitions: Vec<(String, i32, i64, i64)>,
    },
}

fn describe_behind(partitions: &[(String, i32, i64, i64)]) -> String {
    let each: Vec<String> = partitions
        .iter()
        .map(|(topic, partition, stored, written)| {
            format!(
                "{topic}[{partition}] holds up to offset {stored}, herald had written up to {written} ({} events)",
                written - stored
            )
        })
        .collect();
    each.join("; ")
}

impl PostgresSinkError {
    /// What the failure means for the batch.
    pub(crate) fn failure(&self) -> Failure {
        match self {
            PostgresSinkError::Query(err)
            | PostgresSinkError::RefusedByIndex { source: err, .. }
            | PostgresSinkError::Connect(err)
            | PostgresSinkError::Catalog { source: err, .. } => classify(err),
            PostgresSinkError::Pg(err) => err.failure(),
            PostgresSinkError::AheadOfClock(_) => Failure::Row,
            PostgresSinkError::Behind { .. } | PostgresSinkError::Standby => Failure::Transient,
            _ => Failure::Fatal,
        }
    }

    /// Whether retrying can succeed.
    pub fn is_retriable(&self) -> bool {
        self.failure() == Failure::Transient
    }
}

impl From<PostgresSinkError> for SinkError {
    fn from(err: PostgresSinkError) -> Self {
        if let PostgresSinkError::Behind { partitions } = &err {
            let events =
                partitions.iter().map(|(_, _, stored, written)| u64::try_from(written - stored).unwrap_or(0)).sum();
            return SinkError::Behind { events, source: Box::new(err) };
        }
        let retriable = err.is_retriable();
        SinkError::classified(err, retriable)
    }
}

/// An event the table refused in an earlier delivery of the same batch (before a crash), found
/// again in `herald_rejections` on replay.
#[derive(Debug, thiserror::Error)]
#[error("rejected by the table on an earlier delivery: {reason}")]
pub(crate) struct PreviouslyRejected {
    pub(crate) reason: String,
}
