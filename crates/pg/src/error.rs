//! Errors of herald's Postgres helpers.

use std::time::Duration;

use crate::blocker::Blocker;
use crate::sqlstate::{classify, Failure};

/// A failed Postgres operation, with what was being attempted.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL does not parse (not shown: it may hold a password).
    #[error("invalid Postgres URL (the URL itself is not shown: it may hold a password)")]
    Url(#[source] sqlx::Error),
    /// A statement failed.
    #[error("Postgres: {context}")]
    Query {
        /// What was being done.
        context: &'static str,
        /// What sqlx reported.
        #[source]
        source: sqlx::Error,
    },
    /// An embedded migration failed.
    #[error("migrating herald's tables in schema `{schema}` failed")]
    Migrate {
        /// herald's schema.
        schema: String,
        /// What sqlx reported.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A DDL statement could not get its lock in time, however often it tried.
    #[error(
        "{what}: gave up after {waited:?}: the lock stayed held by {}",
        if blockers.is_empty() { "a session that has since finished".to_owned() }
        else { blockers.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ") }
    )]
    LockNotGranted {
        /// The DDL.
        what: &'static str,
        /// How long herald tried.
        waited: Duration,
        /// Who held the lock at the last try.
        blockers: Vec<Blocker>,
    },
}

impl PgError {
    /// A closure for `map_err` that records what was being done.
    pub fn query(context: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| PgError::Query { context, source }
    }

    /// The statement's own error, when a statement failed.
    pub(crate) fn statement_error(&self) -> Option<&sqlx::Error> {
        match self {
            PgError::Query { source, .. }
            | PgError::Migrate {
                source:
                    sqlx::migrate::MigrateError::Execute(source) | sqlx::migrate::MigrateError::ExecuteMigration(source, _),
                ..
            } => Some(source),
            _ => None,
        }
    }

    /// What the failure means: retry, a row at fault, or stop.
    pub fn failure(&self) -> Failure {
        match (self, self.statement_error()) {
            (PgError::LockNotGranted { .. }, _) => Failure::Transient,
            (_, Some(source)) => classify(source),
            (_, None) => Failure::Fatal,
        }
    }

    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        self.failure() == Failure::Transient
    }
}
