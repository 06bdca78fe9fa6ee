//! A session that held a lock herald's DDL waited for: what `herald migrate` reports so an
//! operator knows whom to ask (or whom to end) before trying again.

use std::fmt;

/// A session holding a lock that herald's DDL waited for, as `pg_locks`/`pg_stat_activity`
/// show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    /// Backend pid (`pg_terminate_backend` takes it).
    pub pid: i32,
    /// The session's `application_name`.
    pub application: String,
    /// The session's user.
    pub user: String,
    /// `active`, `idle in transaction`, …
    pub state: String,
    /// Seconds since its transaction began.
    pub transaction_age_secs: f64,
    /// The lock mode it holds, e.g. `RowExclusiveLock`.
    pub mode: String,
    /// The relation it holds the lock on.
    pub relation: String,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} (application `{}`, user `{}`, {}, transaction open {:.1}s, {} on {})",
            self.pid, self.application, self.user, self.state, self.transaction_age_secs, self.mode, self.relation
        )
    }
}
