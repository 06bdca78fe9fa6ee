/*!
herald-pg: what herald's Postgres sink and Postgres source both need to know about Postgres.

herald writes into and reads from databases that belong to other teams. Everything here exists
so that neither side can harm them, and so that both sides behave the same way:

- [`Ident`] and [`QualifiedName`]: identifiers from config, validated and always quoted.
- [`connect_options`]: every connection is named `herald/<route or source>` in
  `pg_stat_activity`, so a DBA sees who is who.
- [`classify`]: one reading of SQLSTATEs (retry, reject the row, or stop).
- [`Ddl`]: **no DDL waits in a lock queue ahead of application writers.** Each statement runs
  under a short `lock_timeout`; when it times out, herald logs who holds the lock (pid,
  application, transaction age), backs off and tries again, instead of making every later
  `INSERT` queue behind it.
- [`migrate_in_schema`]: herald's embedded migrations, run inside its schema under one advisory
  lock and the same DDL rules.

Layout: `ident.rs`, `connect.rs`, `sqlstate.rs`, `ddl.rs`, `blocker.rs` (who held the lock DDL
waited for), `migrate.rs`, `error.rs`.
*/
#![deny(missing_docs)]

mod blocker;
mod connect;
mod ddl;
mod error;
mod ident;
mod migrate;
mod sqlstate;

pub use blocker::Blocker;
pub use connect::{application_name, connect_options};
pub use ddl::{Ddl, DdlAttempts};
pub use error::PgError;
pub use ident::{Ident, QualifiedName};
pub use migrate::{greenfield_migrator, migrate_in_schema, pending_migrations};
pub use sqlstate::{classify, Failure};
