//! The Postgres side: installing the trigger, reading changes in commit-safe order.

use std::collections::BTreeMap;

use sqlx::{PgConnection, Row};

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
    pub(crate) cursor: Cursor,
    pub(crate) operation: String,
    pub(crate) row: serde_json::Map<String, serde_json::Value>,
}

/// Creates `herald_changes` and the capture function in `schema` (idempotent; serialised by an
/// advisory lock), then the trigger on `table`. Returns the table's `schema.name`.
pub(crate) async fn install(conn: &mut PgConnection, schema: &str, table: &str) -> Result<String, SourceError> {
    sqlx::query("SELECT pg_advisory_lock(hashtext('herald.migrate'))")
        .execute(&mut *conn)
        .await
        .map_err(SourceError::postgres("taking the migration lock"))?;
    let result = install_locked(conn, schema, table).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('herald.migrate'))").execute(&mut *conn).await;
    result
}

async fn install_locked(conn: &mut PgConnection, schema: &str, table: &str) -> Result<String, SourceError> {
    let exists = sqlx::query("SELECT 1 FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_optional(&mut *conn)
        .await
        .map_err(SourceError::postgres("looking up herald's schema"))?
        .is_some();
    // Identifiers were validated as plain (letters, digits, `_`) by the config.
    if !exists {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut *conn)
            .await
            .map_err(SourceError::postgres("creating herald's schema"))?;
    }
    sqlx::query(&format!("SET search_path TO \"{schema}\""))
        .execute(&mut *conn)
        .await
        .map_err(SourceError::postgres("entering herald's schema"))?;
    let mut migrator = sqlx::migrate!("migrations/capture");
    migrator.set_ignore_missing(true);
    let migrated = migrator.run(&mut *conn).await;
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .map_err(SourceError::postgres("leaving herald's schema"))?;
    migrated.map_err(|source| SourceError::Migrate { schema: schema.to_owned(), source })?;

    let resolved = resolve(conn, table).await?;
    let (table_schema, table_name) = resolved.split_once('.').unwrap_or(("public", resolved.as_str()));
    sqlx::query(&format!(
        "CREATE OR REPLACE TRIGGER herald_capture AFTER INSERT OR UPDATE ON \"{table_schema}\".\"{table_name}\"
         FOR EACH ROW EXECUTE FUNCTION \"{schema}\".herald_capture()"
    ))
    .execute(&mut *conn)
    .await
    .map_err(SourceError::postgres("creating the capture trigger"))?;
    Ok(resolved)
}

/// The table's `schema.name`, as the trigger records it.
pub(crate) async fn resolve(conn: &mut PgConnection, table: &str) -> Result<String, SourceError> {
    let quoted: Vec<String> = table.split('.').map(|part| format!("\"{part}\"")).collect();
    sqlx::query_scalar::<_, Option<String>>(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = to_regclass($1)",
    )
    .bind(quoted.join("."))
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

/// Up to `limit` changes after `cursor`, from transactions older than every transaction still
/// running, in (txid, id) order. A transaction still open may have taken a lower change id than
/// one already committed; it is read once it ends, and it sorts after everything read so far
/// because its txid is at least the xmin this read was bounded by.
pub(crate) async fn read_changes(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
    cursor: Cursor,
    limit: usize,
) -> Result<Vec<Change>, SourceError> {
    let rows = sqlx::query(&format!(
        "SELECT id, txid::text, operation, row_data FROM \"{schema}\".herald_changes
         WHERE source_table = $1
           AND txid < pg_snapshot_xmin(pg_current_snapshot())
           AND (txid, id) > ($2::text::xid8, $3)
         ORDER BY txid, id
         LIMIT $4"
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
        let txid: String = row.try_get(1).map_err(SourceError::postgres("decoding a change"))?;
        let data: serde_json::Value = row.try_get(3).map_err(SourceError::postgres("decoding a change"))?;
        let txid = txid.parse().map_err(|_| SourceError::Config {
            key: "(herald_changes.txid)".into(),
            reason: format!("`{txid}` is not an xid8"),
        })?;
        changes.push(Change {
            cursor: Cursor { txid, id: row.try_get(0).map_err(SourceError::postgres("decoding a change"))? },
            operation: row.try_get(2).map_err(SourceError::postgres("decoding a change"))?,
            row: match data {
                serde_json::Value::Object(map) => map,
                _ => BTreeMap::<String, serde_json::Value>::new().into_iter().collect(),
            },
        });
    }
    Ok(changes)
}

/// How many captured changes after `cursor` are not published yet — after a full catch-up,
/// those the xmin bound still holds back (a transaction older than them is open), worth looking
/// at again soon rather than at the next poll. Counted up to 10,000.
pub(crate) async fn backlog(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
    cursor: Cursor,
) -> Result<i64, SourceError> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT 1 FROM \"{schema}\".herald_changes
         WHERE source_table = $1 AND (txid, id) > ($2::text::xid8, $3) LIMIT 10000) AS pending"
    ))
    .bind(table)
    .bind(cursor.txid.to_string())
    .bind(cursor.id)
    .fetch_one(&mut *conn)
    .await
    .map_err(SourceError::postgres("counting unpublished changes"))
}
