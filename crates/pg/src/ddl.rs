//! DDL on a database that application writers share: never wait in the lock queue ahead of them.
//!
//! Postgres grants locks in queue order. A `CREATE TRIGGER` waiting behind one long transaction
//! makes every later `INSERT` of that table wait behind the `CREATE TRIGGER`, so one open
//! transaction plus one waiting DDL stops the whole legacy pipeline. herald's DDL therefore runs
//! under a short `lock_timeout`: when the lock is not granted in time the statement gives up
//! (and the writers behind it proceed), herald logs who holds the lock, backs off, and tries
//! again.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::{PgConnection, Row};
use tracing::warn;

use crate::blocker::Blocker;
use crate::error::PgError;
use crate::sqlstate::is_lock_timeout;

/// How herald runs DDL: a short wait per try, tries with backoff, a limit on the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ddl {
    /// Longest one try waits for its lock before giving up (and letting writers pass).
    pub lock_timeout: Duration,
    /// How long to keep trying before the DDL fails with [`PgError::LockNotGranted`].
    pub give_up_after: Duration,
}

impl Default for Ddl {
    fn default() -> Self {
        // While a DDL statement waits for its lock, the writers that come after it wait too: a
        // try must be short enough that a writer held up by it barely notices, and long enough
        // for the transactions holding the lock now to end on a busy table.
        Self { lock_timeout: Duration::from_millis(500), give_up_after: Duration::from_secs(300) }
    }
}

impl Ddl {
    /// Runs the DDL `sql` (what it does: `what`) under `lock_timeout` until it succeeds, fails
    /// for another reason, or `give_up_after` has passed. `sql` may be several statements
    /// separated by `;`: they run as one transaction (the simple query protocol's implicit one),
    /// all or none, so a swap of one object for another is never seen half done. `relations` (e.g.
    /// `"ops"."job_status"`) and `schema` say whose locks to report when a try times out.
    pub async fn execute(
        &self,
        conn: &mut PgConnection,
        what: &'static str,
        relations: &[String],
        schema: Option<&str>,
        sql: &str,
    ) -> Result<(), PgError> {
        let mut attempts = self.attempts(what, relations, schema);
        loop {
            attempts.arm(conn).await?;
            // A bare `&str` runs through the simple query protocol: several statements, one transaction.
            let result = sqlx::Executor::execute(&mut *conn, sql).await.map(drop).map_err(PgError::query(what));
            if let Some(done) = attempts.settle(conn, result).await? {
                return Ok(done);
            }
        }
    }

    /// The tries of one piece of DDL, for work that is more than one statement:
    /// `loop { attempts.arm(conn)?; let result = …; if let Some(v) = attempts.settle(conn, result)? { break v } }`.
    pub fn attempts(&self, what: &'static str, relations: &[String], schema: Option<&str>) -> DdlAttempts {
        DdlAttempts {
            ddl: *self,
            what,
            relations: relations.to_vec(),
            schema: schema.map(str::to_owned),
            started: Instant::now(),
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times()
                .build(),
            tries: 0,
        }
    }
}

/// The tries of one piece of DDL under a [`Ddl`] policy (see [`Ddl::attempts`]).
// Owns what it reports on: a future holding borrowed fields across its awaits is not provably
// `Send` to today's compiler, and sinks' futures must be.
pub struct DdlAttempts {
    ddl: Ddl,
    what: &'static str,
    relations: Vec<String>,
    schema: Option<String>,
    started: Instant,
    backoff: backon::ExponentialBackoff,
    tries: u32,
}

impl DdlAttempts {
    /// Sets the session's `lock_timeout` for the next try.
    pub async fn arm(&mut self, conn: &mut PgConnection) -> Result<(), PgError> {
        self.tries += 1;
        let timeout = format!("SET lock_timeout = '{}ms'", self.ddl.lock_timeout.as_millis().max(1));
        sqlx::query(&timeout).execute(&mut *conn).await.map_err(PgError::query("setting lock_timeout"))?;
        Ok(())
    }

    /// Resets `lock_timeout` and judges a try: `Ok(Some(value))` done; `Ok(None)` the lock was
    /// not granted in time (logged with who holds it, after a backoff pause): try again; `Err`
    /// another failure, or the lock never granted within `give_up_after`.
    pub async fn settle<T>(
        &mut self,
        conn: &mut PgConnection,
        result: Result<T, PgError>,
    ) -> Result<Option<T>, PgError> {
        let reset = sqlx::query("RESET lock_timeout").execute(&mut *conn).await;
        let error = match result {
            Ok(value) => {
                reset.map_err(PgError::query("resetting lock_timeout"))?;
                return Ok(Some(value));
            }
            Err(error) if lock_timed_out(&error) => error,
            Err(error) => return Err(error),
        };
        let (what, tries) = (self.what, self.tries);
        let blockers = lock_holders(conn, &self.relations, self.schema.as_deref()).await.unwrap_or_default();
        let described = if blockers.is_empty() {
            "(none left)".to_owned()
        } else {
            blockers.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        };
        let waited = self.started.elapsed();
        if waited >= self.ddl.give_up_after {
            warn!(what, tries, blockers = %described, error = %error, "DDL never got its lock; giving up.");
            return Err(PgError::LockNotGranted { what, waited, blockers });
        }
        let pause = self.backoff.next().unwrap_or(Duration::from_secs(10));
        warn!(
            what,
            tries,
            lock_timeout_ms = self.ddl.lock_timeout.as_millis() as u64,
            retry_in_ms = pause.as_millis() as u64,
            blockers = %described,
            "DDL did not get its lock in time; it stepped out of the lock queue so writers are not held up, and will try again."
        );
        tokio::time::sleep(pause).await;
        Ok(None)
    }
}

fn lock_timed_out(error: &PgError) -> bool {
    error.statement_error().is_some_and(is_lock_timeout)
}

/// Sessions other than this one holding locks on `relations` or on any relation of `schema`.
pub(crate) async fn lock_holders(
    conn: &mut PgConnection,
    relations: &[String],
    schema: Option<&str>,
) -> Result<Vec<Blocker>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), coalesce(a.state, ''),
                coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8, l.mode, l.relation::regclass::text
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND (l.relation IN (SELECT to_regclass(name) FROM unnest($1::text[]) AS name)
                OR l.relation IN (SELECT oid FROM pg_class WHERE relnamespace = to_regnamespace($2)))
         ORDER BY a.xact_start NULLS LAST, a.pid
         LIMIT 20",
    )
    .bind(relations.to_vec())
    .bind(schema.map(|s| format!("\"{s}\"")))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Blocker {
                pid: row.try_get(0)?,
                application: row.try_get(1)?,
                user: row.try_get(2)?,
                state: row.try_get(3)?,
                transaction_age_secs: row.try_get(4)?,
                mode: row.try_get(5)?,
                relation: row.try_get(6)?,
            })
        })
        .collect()
}
