//! Servers of a test's or a benchmark's own, for the ones that stop, promote or move them
//! (sharing the services' Postgres would disturb every other test):
//!
//! - [`PrivatePostgres`]: a PostgreSQL server in a directory of its own, on a port of its own,
//!   from the machine's Debian binaries; and its streaming standbys, made by `pg_basebackup` or
//!   by a file copy that keeps the replication slots.
//! - [`Endpoint`]: a TCP forwarder standing in for the DNS name or pooler that a failover
//!   re-points at the promoted server.

mod endpoint;
mod private_pg;

pub use endpoint::Endpoint;
pub use private_pg::{PrivatePostgres, ServerError};
