//! One reading of Postgres errors for every herald component.

/// What a failed statement means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connection lost, server restarting, deadlock, a lock not granted in time: try again.
    Transient,
    /// A value the table refuses (SQLSTATE class 22 data exception, 23 constraint violation,
    /// 54000 a row or index entry too large; a value the driver cannot encode): only that row
    /// is at fault.
    Row,
    /// Missing table or column, permissions, bad SQL: retrying cannot help.
    Fatal,
}

/// Decides per error whether a retry can help.
pub fn classify(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => classify_sqlstate(&code),
            None => Failure::Fatal,
        },
        sqlx::Error::Encode(_) => Failure::Row,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Transient,
        _ => Failure::Fatal,
    }
}

/// The SQLSTATE of `lock_timeout` expiring (`lock_not_available`).
pub(crate) const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Whether `error` is a `lock_timeout` that expired.
pub(crate) fn is_lock_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(LOCK_NOT_AVAILABLE))
}

fn classify_sqlstate(code: &str) -> Failure {
    match code {
        // lock_not_available (lock_timeout), object_in_use: someone else holds it for now.
        LOCK_NOT_AVAILABLE | "55006" => return Failure::Transient,
        // read_only_sql_transaction: the server is a standby (a failover under way, or an
        // endpoint not yet moved to the new primary). The destination's fault, for now.
        "25006" => return Failure::Transient,
        // program_limit_exceeded: "index row size 2720 exceeds maximum 2712", "row is too big".
        // (Its siblings, a statement too complex or too many columns, are the SQL's, not a row's.)
        "54000" => return Failure::Row,
        _ => {}
    }
    match code.get(..2) {
        Some("22" | "23") => Failure::Row,
        // connection exception, transaction rollback (serialization, deadlock), insufficient
        // resources, operator intervention (shutdown, query canceled), system error
        Some("08" | "40" | "53" | "57" | "58") => Failure::Transient,
        _ => Failure::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        assert_eq!(classify_sqlstate("23505"), Failure::Row); // unique violation
        assert_eq!(classify_sqlstate("22001"), Failure::Row); // string too long
        assert_eq!(classify_sqlstate("22021"), Failure::Row); // NUL in text
        assert_eq!(classify_sqlstate("54000"), Failure::Row); // index row too large
        assert_eq!(classify_sqlstate("54001"), Failure::Fatal); // statement too complex
        assert_eq!(classify_sqlstate("40P01"), Failure::Transient); // deadlock
        assert_eq!(classify_sqlstate("57P01"), Failure::Transient); // admin shutdown
        assert_eq!(classify_sqlstate("55P03"), Failure::Transient); // lock_timeout
        assert_eq!(classify_sqlstate("25006"), Failure::Transient); // read-only: a standby
        assert_eq!(classify_sqlstate("25P02"), Failure::Fatal); // in failed transaction: a bug
        assert_eq!(classify_sqlstate("42P01"), Failure::Fatal); // undefined table
        assert_eq!(classify_sqlstate("42501"), Failure::Fatal); // permission denied
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Transient);
    }
}
