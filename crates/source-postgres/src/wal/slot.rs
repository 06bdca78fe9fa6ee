//! The replication slot and the publication: creating them (under `lock_timeout`, as the
//! other DDL), dropping them when a source is retired, reading the slot's state, and the
//! replication connection's settings.

use std::collections::HashMap;
use std::time::Duration;

use herald_pg::{Ddl, Ident, PgError};
use pgwire_replication::{Lsn, ReplicationConfig, TlsConfig};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgConnection, Row};
use tracing::info;

use crate::error::SourceError;

/// How soon a confirmed LSN reaches the server.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The slot and publication of one source.
#[derive(Debug, Clone)]
pub(crate) struct WalNames {
    pub(crate) slot: String,
    pub(crate) publication: String,
}

/// Makes sure the server, the table, the publication and the slot are ready for WAL capture,
/// creating the publication and the slot when missing (DDL under `ddl`'s `lock_timeout`).
/// Refuses a table without a replica identity: once it is in a publication that publishes
/// updates, Postgres would refuse the application's own `UPDATE`s of it.
pub(crate) async fn ensure(
    conn: &mut PgConnection,
    table: &str,
    names: &WalNames,
    ddl: &Ddl,
) -> Result<(), SourceError> {
    require_logical_wal(conn).await?;
    let quoted = crate::capture::quoted(table)?;
    require_replica_identity(conn, table, &quoted).await?;
    let publication =
        Ident::new(&names.publication).map_err(|reason| SourceError::Config { key: "publication".into(), reason })?;
    if !publication_exists(conn, &names.publication).await? {
        let statement =
            format!("CREATE PUBLICATION {publication} FOR TABLE {quoted} WITH (publish = 'insert, update')");
        let created =
            ddl.execute(conn, "creating the publication", std::slice::from_ref(&quoted), None, &statement).await;
        match created {
            Ok(()) => info!(publication = %names.publication, table, "Publication created."),
            Err(PgError::Query { source: sqlx::Error::Database(db), .. }) if db.code().as_deref() == Some("42501") => {
                return Err(SourceError::Config {
                    key: "publication".into(),
                    reason: format!(
                        "herald's role may not publish `{table}` (it must own the table); a DBA can run: {statement}"
                    ),
                });
            }
            Err(err) => return Err(err.into()),
        }
    }
    let published: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname || '.' || tablename = $2",
    )
    .bind(&names.publication)
    .bind(table)
    .fetch_optional(&mut *conn)
    .await
    .map_err(SourceError::postgres("reading the publication's tables"))?;
    if published.is_none() {
        return Err(SourceError::Config {
            key: "publication".into(),
            reason: format!("publication `{}` exists but does not include `{table}`", names.publication),
        });
    }
    let slot = sqlx::query("SELECT plugin::text, database::text FROM pg_replication_slots WHERE slot_name = $1")
        .bind(&names.slot)
        .fetch_optional(&mut *conn)
        .await
        .map_err(SourceError::postgres("looking up the replication slot"))?;
    match slot {
        Some(row) => {
            let plugin: Option<String> = row.try_get(0).map_err(SourceError::postgres("reading the slot"))?;
            let database: Option<String> = row.try_get(1).map_err(SourceError::postgres("reading the slot"))?;
            let current: String = sqlx::query_scalar("SELECT current_database()::text")
                .fetch_one(&mut *conn)
                .await
                .map_err(SourceError::postgres("reading the database name"))?;
            if plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(current.as_str()) {
                return Err(SourceError::Config {
                    key: "slot".into(),
                    reason: format!(
                        "slot `{}` exists but is not a pgoutput slot of database `{current}` (plugin {plugin:?}, database {database:?})",
                        names.slot
                    ),
                });
            }
        }
        None => {
            // Waits for transactions running now to end (it needs a consistent starting point),
            // but takes no lock on any table: writers are not held up. Say what it waits for.
            let oldest = sqlx::query(
                "SELECT pid, coalesce(application_name, ''), extract(epoch FROM now() - xact_start)::float8
                 FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
                 ORDER BY xact_start LIMIT 1",
            )
            .fetch_optional(&mut *conn)
            .await
            .map_err(SourceError::postgres("looking for open transactions"))?;
            if let Some(row) = oldest {
                let pid: i32 = row.try_get(0).map_err(SourceError::postgres("reading pg_stat_activity"))?;
                let application: String = row.try_get(1).map_err(SourceError::postgres("reading pg_stat_activity"))?;
                // No `xact_start` for some backends holding an xid (a background worker).
                let age: Option<f64> = row.try_get(2).map_err(SourceError::postgres("reading pg_stat_activity"))?;
                info!(slot = %names.slot, pid, application, transaction_age_secs = ?age, "Creating the replication slot waits for the transactions open now to end; the oldest:");
            }
            let created = sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
                .bind(&names.slot)
                .execute(&mut *conn)
                .await;
            match created {
                Ok(_) => info!(slot = %names.slot, "Replication slot created; changes from now on are captured."),
                // Created meanwhile by another herald: fine.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42710") => {}
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
                    return Err(SourceError::Config {
                        key: "capture".into(),
                        reason: format!(
                            "herald's role may not create a replication slot: {} (a DBA can run ALTER ROLE <role> REPLICATION)",
                            db.message()
                        ),
                    });
                }
                Err(err) => return Err(SourceError::postgres("creating the replication slot")(err)),
            }
        }
    }
    Ok(())
}

/// Drops the source's slot and publication, if present. Returns whether anything was dropped.
pub(crate) async fn drop_capture(conn: &mut PgConnection, names: &WalNames) -> Result<bool, SourceError> {
    let mut dropped = false;
    let slot: Option<bool> = sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
        .bind(&names.slot)
        .fetch_optional(&mut *conn)
        .await
        .map_err(SourceError::postgres("looking up the replication slot"))?;
    match slot {
        Some(true) => {
            return Err(SourceError::Config {
                key: "slot".into(),
                reason: format!("slot `{}` is being read right now: stop the herald that reads it first", names.slot),
            })
        }
        Some(false) => {
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(&names.slot)
                .execute(&mut *conn)
                .await
                .map_err(SourceError::postgres("dropping the replication slot"))?;
            dropped = true;
        }
        None => {}
    }
    if publication_exists(conn, &names.publication).await? {
        let publication = Ident::new(&names.publication)
            .map_err(|reason| SourceError::Config { key: "publication".into(), reason })?;
        let statement = format!("DROP PUBLICATION IF EXISTS {publication}");
        Ddl::default().execute(conn, "dropping the publication", &[], None, &statement).await?;
        dropped = true;
    }
    Ok(dropped)
}

/// The slot's confirmed LSN and the WAL it holds back (bytes from its restart LSN to now), or
/// `None` when there is no such slot.
pub(crate) async fn slot_state(conn: &mut PgConnection, slot: &str) -> Result<Option<(u64, i64)>, SourceError> {
    let row = sqlx::query(
        "SELECT coalesce(pg_wal_lsn_diff(confirmed_flush_lsn, '0/0'), 0)::bigint,
                coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(&mut *conn)
    .await
    .map_err(SourceError::postgres("reading the replication slot"))?;
    match row {
        Some(row) => {
            let confirmed: i64 = row.try_get(0).map_err(SourceError::postgres("reading the replication slot"))?;
            let retained: i64 = row.try_get(1).map_err(SourceError::postgres("reading the replication slot"))?;
            Ok(Some((confirmed.max(0) as u64, retained)))
        }
        None => Ok(None),
    }
}

/// Refuses a cursor from another WAL history: Kafka's LSN ahead of the server's means the
/// database was restored or failed over to a replica that was behind, or the offsets topic
/// belongs to another database. Starting anyway would skip new rows silently.
pub(crate) async fn check_history(conn: &mut PgConnection, in_kafka: u64) -> Result<(), SourceError> {
    let current: i64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .fetch_one(&mut *conn)
        .await
        .map_err(SourceError::postgres("reading the server's WAL position"))?;
    if in_kafka > current.max(0) as u64 {
        return Err(SourceError::Config {
            key: "offsets_topic".into(),
            reason: format!(
                "the source's cursor in Kafka (LSN {}) is ahead of this server's WAL ({}): the database was \
                 restored or failed over to a replica that was behind, or the offsets topic belongs to another \
                 database. herald will not guess which rows are new; to start from the slot, use a new source \
                 name or a new offsets_topic",
                Lsn::from_u64(in_kafka),
                Lsn::from_u64(current.max(0) as u64)
            ),
        });
    }
    Ok(())
}

async fn require_logical_wal(conn: &mut PgConnection) -> Result<(), SourceError> {
    let level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&mut *conn)
        .await
        .map_err(SourceError::postgres("reading wal_level"))?;
    if level != "logical" {
        return Err(SourceError::Config {
            key: "capture".into(),
            reason: format!(
                "the server runs with wal_level = {level}; WAL capture needs wal_level = logical \
                 (ALTER SYSTEM SET wal_level = logical, then a restart), or use capture = \"trigger\""
            ),
        });
    }
    Ok(())
}

async fn require_replica_identity(conn: &mut PgConnection, table: &str, quoted: &str) -> Result<(), SourceError> {
    let row = sqlx::query(
        "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
         FROM pg_class c WHERE c.oid = to_regclass($1)",
    )
    .bind(quoted)
    .fetch_optional(&mut *conn)
    .await
    .map_err(SourceError::postgres("reading the table's replica identity"))?
    .ok_or_else(|| SourceError::NoTable(table.to_owned()))?;
    let identity: String = row.try_get(0).map_err(SourceError::postgres("reading the replica identity"))?;
    let has_primary_key: bool = row.try_get(1).map_err(SourceError::postgres("reading the replica identity"))?;
    if identity == "n" || (identity == "d" && !has_primary_key) {
        return Err(SourceError::Config {
            key: "capture".into(),
            reason: format!(
                "`{table}` has no replica identity (no primary key): in a publication, Postgres would refuse \
                 the application's UPDATEs of it. A DBA can add a primary key or run \
                 ALTER TABLE {quoted} REPLICA IDENTITY FULL; or use capture = \"trigger\""
            ),
        });
    }
    Ok(())
}

async fn publication_exists(conn: &mut PgConnection, publication: &str) -> Result<bool, SourceError> {
    Ok(sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_publication WHERE pubname = $1")
        .bind(publication)
        .fetch_optional(&mut *conn)
        .await
        .map_err(SourceError::postgres("looking up the publication"))?
        .is_some())
}

/// The replication connection's settings, from the source's URL. Values come back in text as
/// the session formats them, so the session is pinned to UTC and ISO dates.
/// Where timeline `ended` ended in the history of the server's timeline `now`, read with
/// `TIMELINE_HISTORY` on a replication session (the role herald captures with may run it), or
/// `None` when `ended` is not an ancestor of `now` there.
pub(crate) async fn timeline_ended(
    config: ReplicationConfig,
    now: u32,
    ended: u32,
) -> Result<Option<u64>, SourceError> {
    let mut client = pgwire_replication::ReplicationClient::connect_gated(config)
        .await
        .map_err(SourceError::replication("connecting to read the timeline history"))?;
    let history = client.timeline_history(now).await.map_err(SourceError::replication("reading the timeline history"));
    // Never started: dropping the client ends the session.
    drop(client);
    let history = history?;
    Ok(crate::continuity::timeline_ended(&String::from_utf8_lossy(&history.content), ended))
}

pub(crate) fn replication_config(
    url: &SecretString,
    application_name: &str,
    names: &WalNames,
    start: u64,
) -> Result<ReplicationConfig, SourceError> {
    let invalid = |reason: &str| SourceError::Config { key: "url".into(), reason: reason.to_owned() };
    let parsed = url::Url::parse(url.expose_secret()).map_err(|_| invalid("not a postgres:// URL"))?;
    let decode = |text: &str| -> String { percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned() };
    let user = decode(parsed.username());
    let password = parsed.password().map(decode).unwrap_or_default();
    let host = parsed.host_str().unwrap_or("localhost").trim_matches(|c| c == '[' || c == ']').to_owned();
    let database = match parsed.path().trim_start_matches('/') {
        "" => user.clone(),
        path => decode(path),
    };
    let query: HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    let root = query.get("sslrootcert").map(std::path::PathBuf::from);
    let tls = match query.get("sslmode").map(String::as_str) {
        None | Some("disable" | "allow" | "prefer") => TlsConfig::disabled(),
        Some("require") => TlsConfig::require(),
        Some("verify-ca") => TlsConfig::verify_ca(root),
        Some("verify-full") => TlsConfig::verify_full(root),
        Some(_) => return Err(invalid("unknown sslmode")),
    };
    // The options go into the startup `options` parameter: a password is never part of them.
    Ok(ReplicationConfig::new(host, user, password, database, names.slot.clone(), names.publication.clone())
        .with_port(parsed.port().unwrap_or(5432))
        .with_tls(tls)
        .with_start_lsn(Lsn::from_u64(start))
        .with_ack_lsn(Lsn::from_u64(start))
        .with_status_interval(STATUS_INTERVAL)
        .with_options("-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3")
        .with_application_name(application_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_url_keeps_its_parts_and_tls_mode() {
        let names = WalNames { slot: "herald_s".into(), publication: "herald_s".into() };
        let config = replication_config(
            &SecretString::from("postgres://app%40ops:p%2Fw@db.internal:6543/pipelines?sslmode=require"),
            "herald/s",
            &names,
            42,
        )
        .unwrap();
        assert_eq!((config.host.as_str(), config.port), ("db.internal", 6543));
        assert_eq!((config.user.as_str(), config.password.as_str()), ("app@ops", "p/w"));
        assert_eq!(config.database, "pipelines");
        assert_eq!(config.start_lsn.as_u64(), 42);
        assert!(config.tls.mode.requires_tls());
        assert!(replication_config(&SecretString::from("postgres://u@h/db?sslmode=bogus"), "x", &names, 0).is_err());
    }
}
