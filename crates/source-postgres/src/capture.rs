//! The Postgres side: installing the trigger, reading changes in commit-safe order.

use std::collections::BTreeMap;

use herald_pg::{Ddl, Ident, QualifiedName};
use sqlx::migrate::Migrator;
use sqlx::{PgConnection, Row};
use tracing::info;

use crate::error::SourceError;

/// Where the source has got to: the last change published, in (transaction id, change id) order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The writer's transaction id (`xid8`).
    pub txid: u64,
    /// The change id.
    pub id: i64,
}

/// One captured row change.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The recorded row it came from; every row of a statement's chunk shares it.
    pub(crate) cursor: Cursor,
    /// What `herald.origin.change` says: the change id, and for a chunk of several rows the
    /// row's place in it (`1234.7`).
    pub(crate) position: String,
    pub(crate) operation: String,
    pub(crate) row: serde_json::Map<String, serde_json::Value>,
    /// Who wrote it: `<application_name> (<role>)`, when the capture recorded it.
    pub(crate) writer: Option<String>,
}

/// herald's triggers on a watched table, each `AFTER <event> REFERENCING NEW TABLE … FOR EACH
/// STATEMENT` calling `herald_capture_statement()`: its name and `tgtype` (INSERT 4, UPDATE 16;
/// no ROW bit). A transition table is only allowed on a trigger of one event, hence two.
const TRIGGERS: [(&str, &str, i16); 2] = [("herald_capture", "INSERT", 4), ("herald_capture_update", "UPDATE", 16)];

/// The capture's trigger function (statement-level, reading the transition table).
const FUNCTION: &str = "herald_capture_statement()";

/// herald's capture migrations (`herald_changes`, its clean-up ledger, the trigger function),
/// plus the greenfield tables when the source watches `pipeline_status`.
fn migrators(greenfield: bool) -> Vec<Migrator> {
    let mut capture = sqlx::migrate!("migrations/capture");
    capture.set_ignore_missing(true);
    let mut migrators = vec![capture];
    if greenfield {
        migrators.push(herald_pg::greenfield_migrator());
    }
    migrators
}

/// Whether the capture of `table` is installed and current: every capture migration applied
/// and herald's trigger on the table, enabled, calling herald's function for inserts and
/// updates. Reads the catalog only.
pub(crate) async fn installed(
    conn: &mut PgConnection,
    schema: &Ident,
    table: &str,
    greenfield: bool,
) -> Result<bool, SourceError> {
    if herald_pg::pending_migrations(conn, schema, &migrators(greenfield)).await? {
        return Ok(false);
    }
    let names: Vec<String> = TRIGGERS.iter().map(|(name, _, _)| (*name).to_owned()).collect();
    let types: Vec<i16> = TRIGGERS.iter().map(|(_, _, tgtype)| *tgtype).collect();
    let current: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger t JOIN unnest($2::text[], $3::int2[]) AS wanted(name, tgtype)
           ON t.tgname = wanted.name AND t.tgtype = wanted.tgtype
         WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal AND t.tgenabled <> 'D'
           AND t.tgnewtable IS NOT NULL AND t.tgfoid = to_regprocedure($4)",
    )
    .bind(quoted(table)?)
    .bind(names)
    .bind(types)
    .bind(format!("{schema}.{FUNCTION}"))
    .fetch_one(&mut *conn)
    .await
    .map_err(SourceError::postgres("looking for the capture triggers"))?;
    Ok(current == TRIGGERS.len() as i64)
}

/// The trigger capture of `table` as it stands: the trigger, the change ids used so far, the
/// current transaction id, the server. Reads the catalog only.
pub(crate) async fn observe(
    conn: &mut PgConnection,
    schema: &Ident,
    table: &str,
    server: crate::continuity::ServerIdentity,
) -> Result<crate::continuity::TriggerCapture, SourceError> {
    use crate::continuity::TriggerCapture;
    // Each of herald's triggers, enabled or not. A row-level `herald_capture` (an install that
    // has not been swapped to statement-level capture yet) captures both events alone.
    let found: Vec<(String, String, i16)> = sqlx::query_as(
        "SELECT tgname::text, tgenabled::text, tgtype FROM pg_trigger
         WHERE tgrelid = to_regclass($1) AND tgname = ANY($2) AND NOT tgisinternal",
    )
    .bind(quoted(table)?)
    .bind(TRIGGERS.iter().map(|(name, _, _)| (*name).to_owned()).collect::<Vec<String>>())
    .fetch_all(&mut *conn)
    .await
    .map_err(SourceError::postgres("looking for the capture triggers"))?;
    let trigger = trigger_state(&found);
    let last_change_id = match sqlx::query_scalar::<_, Option<String>>("SELECT pg_get_serial_sequence($1, 'id')")
        .bind(format!("{schema}.herald_changes"))
        .fetch_one(&mut *conn)
        .await
    {
        Ok(Some(sequence)) => {
            let (last, called): (i64, bool) = sqlx::query_as(&format!("SELECT last_value, is_called FROM {sequence}"))
                .fetch_one(&mut *conn)
                .await
                .map_err(SourceError::postgres("reading the change ids"))?;
            Some(if called { last } else { 0 })
        }
        // `herald_changes` (or its sequence) is gone.
        Ok(None) | Err(sqlx::Error::Database(_)) => None,
        Err(err) => return Err(SourceError::postgres("reading the change ids")(err)),
    };
    // The next transaction id to be assigned (without assigning one, as pg_current_xact_id would).
    let current_txid: String = sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(SourceError::postgres("reading the current transaction id"))?;
    let current_txid = current_txid.parse().unwrap_or(u64::MAX);
    Ok(TriggerCapture { trigger, last_change_id, current_txid, server })
}

/// Creates `herald_changes`, its ledger and the capture function in `schema` (and the greenfield
/// tables when watched), then the trigger on `table`; idempotent. Every statement runs under
/// `ddl`'s short `lock_timeout` and is retried with backoff, so it never waits in the lock
/// queue ahead of the table's writers. Returns the table's `schema.name`.
pub(crate) async fn install(
    conn: &mut PgConnection,
    schema: &Ident,
    table: &str,
    greenfield: bool,
    ddl: &Ddl,
) -> Result<String, SourceError> {
    herald_pg::migrate_in_schema(conn, schema, migrators(greenfield), ddl).await?;
    let resolved = resolve(conn, table).await?;
    let watched = quoted(&resolved)?;
    ddl.execute(
        conn,
        "creating the capture triggers",
        std::slice::from_ref(&watched),
        None,
        &install_triggers(schema, &watched),
    )
    .await?;
    info!(table = %resolved, "Change capture installed.");
    Ok(resolved)
}

/// The DDL installing herald's statement-level triggers on `watched`, as one transaction: an
/// earlier row-level `herald_capture` is dropped in the same transaction its replacements are
/// created in, so no statement of a writer is captured twice or not at all across the swap.
fn install_triggers(schema: &Ident, watched: &str) -> String {
    let mut ddl = String::new();
    for (name, event, _) in TRIGGERS {
        // Dropped and created rather than replaced: CREATE OR REPLACE cannot turn a row-level
        // trigger into a statement-level one with a transition table.
        ddl.push_str(&format!(
            "DROP TRIGGER IF EXISTS {name} ON {watched};
             CREATE TRIGGER {name} AFTER {event} ON {watched}
             REFERENCING NEW TABLE AS herald_new_rows
             FOR EACH STATEMENT EXECUTE FUNCTION {schema}.{FUNCTION};"
        ));
    }
    ddl
}

/// The capture's state from herald's triggers found on the table (name, `tgenabled`, `tgtype`):
/// missing when one is, disabled when one is. A row-level `herald_capture` alone (installed by
/// an earlier herald, capturing inserts and updates) is a whole capture.
fn trigger_state(found: &[(String, String, i16)]) -> crate::continuity::TriggerState {
    use crate::continuity::TriggerState;
    /// `tgtype` bit of a row-level trigger.
    const ROW: i16 = 1;
    let row_level = found.iter().any(|(name, _, tgtype)| name == TRIGGERS[0].0 && tgtype & ROW != 0);
    let complete = row_level || TRIGGERS.iter().all(|(name, _, _)| found.iter().any(|(found, _, _)| found == name));
    if !complete {
        TriggerState::Missing
    } else if found.iter().any(|(_, enabled, _)| enabled == "D") {
        TriggerState::Disabled
    } else {
        TriggerState::Enabled
    }
}

/// Whether herald's table `name` exists in `schema`.
async fn exists(conn: &mut PgConnection, schema: &Ident, name: &'static str) -> Result<bool, SourceError> {
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{schema}.\"{name}\""))
        .fetch_one(&mut *conn)
        .await
        .map_err(SourceError::postgres("looking for herald's tables"))?;
    Ok(found.is_some())
}

/// Registers `source` as a reader of `table`'s changes (if it is not yet): from now on no
/// change of the table is deleted before this source has published it.
pub(crate) async fn register(
    conn: &mut PgConnection,
    schema: &Ident,
    source: &str,
    table: &str,
) -> Result<(), SourceError> {
    sqlx::query(&format!(
        "INSERT INTO {schema}.herald_capture_progress (source_name, source_table, txid, id)
         VALUES ($1, $2, '0'::xid8, 0) ON CONFLICT (source_name) DO NOTHING"
    ))
    .bind(source)
    .bind(table)
    .execute(&mut *conn)
    .await
    .map_err(SourceError::postgres("registering the source"))?;
    Ok(())
}

/// How many sources are registered as readers of `table`.
pub(crate) async fn readers(conn: &mut PgConnection, schema: &Ident, table: &str) -> Result<i64, SourceError> {
    if !exists(conn, schema, "herald_capture_progress").await? {
        return Ok(0);
    }
    sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.herald_capture_progress WHERE source_table = $1"))
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .map_err(SourceError::postgres("counting the table's sources"))
}

/// Removes the capture of `table` its last source no longer needs: the trigger (DDL under
/// `ddl`) and the table's captured changes (in batches).
pub(crate) async fn uninstall(
    conn: &mut PgConnection,
    schema: &Ident,
    table: &str,
    ddl: &Ddl,
) -> Result<(), SourceError> {
    let watched = quoted(table)?;
    let statement: String =
        TRIGGERS.iter().map(|(name, _, _)| format!("DROP TRIGGER IF EXISTS {name} ON {watched};")).collect();
    ddl.execute(conn, "dropping the capture triggers", std::slice::from_ref(&watched), None, &statement).await?;
    if exists(conn, schema, "herald_changes").await? {
        loop {
            let deleted = sqlx::query(&format!(
                "DELETE FROM {schema}.herald_changes WHERE id IN
                 (SELECT id FROM {schema}.herald_changes WHERE source_table = $1 LIMIT 5000)"
            ))
            .bind(table)
            .execute(&mut *conn)
            .await
            .map_err(SourceError::postgres("deleting the table's captured changes"))?
            .rows_affected();
            if deleted < 5000 {
                break;
            }
        }
    }
    info!(table, "Change capture removed: no source reads this table any more.");
    Ok(())
}

/// Records that `source` has published everything up to `cursor` of `table`.
pub(crate) async fn record_progress(
    conn: &mut PgConnection,
    schema: &Ident,
    source: &str,
    table: &str,
    cursor: Cursor,
) -> Result<(), SourceError> {
    sqlx::query(&format!(
        "INSERT INTO {schema}.herald_capture_progress AS p (source_name, source_table, txid, id)
         VALUES ($1, $2, $3::text::xid8, $4)
         ON CONFLICT (source_name) DO UPDATE
         SET source_table = EXCLUDED.source_table, txid = EXCLUDED.txid, id = EXCLUDED.id, updated_at = now()"
    ))
    .bind(source)
    .bind(table)
    .bind(cursor.txid.to_string())
    .bind(cursor.id)
    .execute(&mut *conn)
    .await
    .map_err(SourceError::postgres("recording the source's progress"))?;
    Ok(())
}

/// Deletes up to `limit` changes of `table` that every source of the table has published (at or
/// below the lowest progress recorded for it). Returns how many it deleted.
pub(crate) async fn prune(
    conn: &mut PgConnection,
    schema: &Ident,
    table: &str,
    limit: i64,
) -> Result<u64, SourceError> {
    let done = sqlx::query(&format!(
        "WITH bound AS (
             SELECT txid, id FROM {schema}.herald_capture_progress
             WHERE source_table = $1 ORDER BY txid, id LIMIT 1
         ), doomed AS (
             SELECT c.id FROM {schema}.herald_changes c, bound b
             WHERE c.source_table = $1 AND (c.txid, c.id) <= (b.txid, b.id)
             ORDER BY c.txid, c.id LIMIT $2
         )
         DELETE FROM {schema}.herald_changes c USING doomed d WHERE c.id = d.id"
    ))
    .bind(table)
    .bind(limit)
    .execute(&mut *conn)
    .await
    .map_err(SourceError::postgres("deleting published changes"))?;
    Ok(done.rows_affected())
}

/// Removes `source`'s clean-up progress, if the ledger exists. Returns whether it had a row.
pub(crate) async fn forget(conn: &mut PgConnection, schema: &Ident, source: &str) -> Result<bool, SourceError> {
    if !exists(conn, schema, "herald_capture_progress").await? {
        return Ok(false);
    }
    let done = sqlx::query(&format!("DELETE FROM {schema}.herald_capture_progress WHERE source_name = $1"))
        .bind(source)
        .execute(&mut *conn)
        .await
        .map_err(SourceError::postgres("forgetting the source's progress"))?;
    Ok(done.rows_affected() > 0)
}

/// How many changes of `table` `herald_changes` holds (a statement's chunk counts its rows),
/// counted over up to `limit` recorded rows.
pub(crate) async fn held_rows(
    conn: &mut PgConnection,
    schema: &Ident,
    table: &str,
    limit: i64,
) -> Result<i64, SourceError> {
    sqlx::query_scalar(&format!(
        "SELECT coalesce(sum(coalesce(changed_count, 1)), 0)::int8 FROM (
             SELECT changed_count FROM {schema}.herald_changes WHERE source_table = $1 LIMIT $2) AS held"
    ))
    .bind(table)
    .bind(limit)
    .fetch_one(&mut *conn)
    .await
    .map_err(SourceError::postgres("counting captured changes"))
}

/// `schema.table` (or `table`) quoted for SQL. The config validated its parts as plain
/// identifiers, and a name read back from the catalog has those same parts.
pub(crate) fn quoted(table: &str) -> Result<String, SourceError> {
    QualifiedName::parse(table)
        .map(|name| name.to_string())
        .map_err(|reason| SourceError::Config { key: "table".into(), reason })
}

/// The table's `schema.name`, as the trigger records it.
pub(crate) async fn resolve(conn: &mut PgConnection, table: &str) -> Result<String, SourceError> {
    sqlx::query_scalar::<_, Option<String>>(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = to_regclass($1)",
    )
    .bind(quoted(table)?)
    .fetch_optional(&mut *conn)
    .await
    .map_err(SourceError::postgres("looking up the watched table"))?
    .flatten()
    .ok_or_else(|| SourceError::NoTable(table.to_owned()))
}

/// The table's columns missing among `wanted`.
pub(crate) async fn missing_columns(
    conn: &mut PgConnection,
    resolved: &str,
    wanted: impl Iterator<Item = &String>,
) -> Result<Vec<String>, SourceError> {
    let (schema, name) = resolved.split_once('.').unwrap_or(("public", resolved));
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
    )
    .bind(schema)
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .map_err(SourceError::postgres("reading the watched table's columns"))?;
    Ok(wanted.filter(|column| !present.contains(column)).cloned().collect())
}

/// `<application_name> (<role>)` of a change's writer; an empty application name is said so.
fn writer(application: Option<String>, role: Option<String>) -> Option<String> {
    let role = role?;
    let application = application.filter(|name| !name.is_empty()).unwrap_or_else(|| "(no application_name)".into());
    Some(format!("{application} ({role})"))
}

/// Up to `limit` changes (more when a statement's chunk straddles it) after `cursor`, from transactions older than every transaction still
/// running, in (txid, id) order. A transaction still open may have taken a lower change id than
/// one already committed; it is read once it ends, and it sorts after everything read so far
/// because its txid is at least the xmin this read was bounded by.
pub(crate) async fn read_changes(
    conn: &mut PgConnection,
    schema: &Ident,
    table: &str,
    cursor: Cursor,
    limit: usize,
) -> Result<Vec<Change>, SourceError> {
    // The first `limit` recorded rows, then as many of them as hold fewer than `limit` changes
    // before them: a statement's chunk (up to 100 rows) is never split, so a batch may hold up
    // to 99 changes more than `limit`, and always at least one recorded row.
    let rows = sqlx::query(&format!(
        "SELECT id, txid::text, operation, row_data, changed_rows, writer_application, writer_role FROM (
             SELECT *, sum(changes) OVER (ORDER BY txid, id) AS through FROM (
                 SELECT id, txid, operation, row_data, changed_rows, writer_application, writer_role,
                        coalesce(changed_count, 1) AS changes
                 FROM {schema}.herald_changes
                 WHERE source_table = $1
                   AND txid < pg_snapshot_xmin(pg_current_snapshot())
                   AND (txid, id) > ($2::text::xid8, $3)
                 ORDER BY txid, id
                 LIMIT $4
             ) AS first
         ) AS counted
         WHERE through - changes < $4
         ORDER BY txid, id"
    ))
    .bind(table)
    .bind(cursor.txid.to_string())
    .bind(cursor.id)
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(SourceError::postgres("reading changes"))?;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0).map_err(SourceError::postgres("decoding a change"))?;
        let txid: String = row.try_get(1).map_err(SourceError::postgres("decoding a change"))?;
        let txid = txid.parse().map_err(|_| SourceError::Config {
            key: "(herald_changes.txid)".into(),
            reason: format!("`{txid}` is not an xid8"),
        })?;
        let operation: String = row.try_get(2).map_err(SourceError::postgres("decoding a change"))?;
        let single: Option<serde_json::Value> = row.try_get(3).map_err(SourceError::postgres("decoding a change"))?;
        let chunk: Option<serde_json::Value> = row.try_get(4).map_err(SourceError::postgres("decoding a change"))?;
        let writer = writer(
            row.try_get(5).map_err(SourceError::postgres("decoding a change"))?,
            row.try_get(6).map_err(SourceError::postgres("decoding a change"))?,
        );
        let cursor = Cursor { txid, id };
        let recorded = match chunk {
            Some(serde_json::Value::Array(rows)) => rows,
            Some(other) => vec![other],
            None => single.into_iter().collect(),
        };
        let many = recorded.len() > 1;
        for (index, data) in recorded.into_iter().enumerate() {
            changes.push(Change {
                cursor,
                // A row of a chunk: the change id and its place in the statement's chunk.
                position: if many { format!("{id}.{}", index + 1) } else { id.to_string() },
                operation: operation.clone(),
                row: match data {
                    serde_json::Value::Object(map) => map,
                    _ => BTreeMap::<String, serde_json::Value>::new().into_iter().collect(),
                },
                writer: writer.clone(),
            });
        }
    }
    Ok(changes)
}

/// How many captured changes after `cursor` are not published yet — after a full catch-up,
/// those the xmin bound still holds back (a transaction older than them is open), worth looking
/// at again soon rather than at the next poll. Counted over up to 10,000 recorded rows.
pub(crate) async fn backlog(
    conn: &mut PgConnection,
    schema: &Ident,
    table: &str,
    cursor: Cursor,
) -> Result<i64, SourceError> {
    sqlx::query_scalar(&format!(
        "SELECT coalesce(sum(changes), 0)::int8 FROM (
             SELECT coalesce(changed_count, 1) AS changes FROM {schema}.herald_changes
             WHERE source_table = $1 AND (txid, id) > ($2::text::xid8, $3) LIMIT 10000) AS pending"
    ))
    .bind(table)
    .bind(cursor.txid.to_string())
    .bind(cursor.id)
    .fetch_one(&mut *conn)
    .await
    .map_err(SourceError::postgres("counting unpublished changes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::continuity::TriggerState;

    fn found(triggers: &[(&str, &str, i16)]) -> Vec<(String, String, i16)> {
        triggers.iter().map(|(name, enabled, tgtype)| ((*name).into(), (*enabled).into(), *tgtype)).collect()
    }

    #[test]
    fn both_statement_triggers_or_the_earlier_row_trigger_make_a_whole_capture() {
        assert_eq!(
            trigger_state(&found(&[("herald_capture", "O", 4), ("herald_capture_update", "O", 16)])),
            TriggerState::Enabled
        );
        assert_eq!(trigger_state(&found(&[("herald_capture", "O", 1 | 4 | 16)])), TriggerState::Enabled);
        assert_eq!(trigger_state(&found(&[("herald_capture", "O", 4)])), TriggerState::Missing, "updates not captured");
        assert_eq!(trigger_state(&found(&[("herald_capture_update", "O", 16)])), TriggerState::Missing);
        assert_eq!(trigger_state(&found(&[])), TriggerState::Missing);
        assert_eq!(
            trigger_state(&found(&[("herald_capture", "O", 4), ("herald_capture_update", "D", 16)])),
            TriggerState::Disabled
        );
        assert_eq!(trigger_state(&found(&[("herald_capture", "D", 1 | 4 | 16)])), TriggerState::Disabled);
    }

    #[test]
    fn the_swap_drops_and_creates_both_triggers_in_one_script() {
        let schema = Ident::trusted("herald");
        let ddl = install_triggers(&schema, "\"ops\".\"jobs\"");
        assert_eq!(ddl.matches("DROP TRIGGER IF EXISTS").count(), 2);
        assert!(ddl.contains("AFTER INSERT ON \"ops\".\"jobs\""));
        assert!(ddl.contains("AFTER UPDATE ON \"ops\".\"jobs\""));
        assert_eq!(ddl.matches("FOR EACH STATEMENT").count(), 2);
        assert!(!ddl.contains("FOR EACH ROW"));
    }
}
