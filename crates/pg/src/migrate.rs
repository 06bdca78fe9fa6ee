//! herald's embedded migrations, run inside herald's schema, under one advisory lock shared by
//! every herald process, with the DDL rules of [`Ddl`].

use sqlx::migrate::Migrator;
use sqlx::PgConnection;
use tracing::info;

use crate::ddl::Ddl;
use crate::error::PgError;
use crate::ident::Ident;

/// The advisory lock every herald migration holds, so processes starting together migrate once.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_lock(hashtext('herald.migrate'))";
const MIGRATION_UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('herald.migrate'))";

/// The greenfield tables herald owns: `pipeline_status` (a row per event) and
/// `pipeline_status_latest` (the newest event per source and stage). The sink writes them; the
/// source watches `pipeline_status`. Either creates them.
pub fn greenfield_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("migrations/greenfield");
    // Each component applies its own sets of migrations into one `_sqlx_migrations` table.
    migrator.set_ignore_missing(true);
    migrator
}

/// Applies `migrators` inside `schema` (created if missing). When every migration is already
/// applied it issues no DDL and takes no lock at all; otherwise it runs under herald's
/// migration lock, each try under `ddl`'s `lock_timeout`.
pub async fn migrate_in_schema(
    conn: &mut PgConnection,
    schema: &Ident,
    mut migrators: Vec<Migrator>,
    ddl: &Ddl,
) -> Result<(), PgError> {
    if !pending_migrations(conn, schema, &migrators).await? {
        return Ok(());
    }
    // herald's own advisory lock serialises herald processes. sqlx's lock is one per database
    // (shared with every other sqlx application there), and a migration that fails, as one
    // whose lock_timeout expired does, returns without releasing it: a retry on the same
    // connection would hold it for the connection's life.
    for migrator in &mut migrators {
        migrator.set_locking(false);
    }
    let migrators = migrators.as_slice();
    let mut locking = ddl.attempts("taking herald's migration lock", &[], None);
    loop {
        locking.arm(conn).await?;
        let result = sqlx::query(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map(drop)
            .map_err(PgError::query("taking the migration lock"));
        if locking.settle(conn, result).await?.is_some() {
            break;
        }
    }
    let mut migrating = ddl.attempts("migrating herald's tables", &[], Some(schema.as_str()));
    let result = loop {
        if let Err(err) = migrating.arm(conn).await {
            break Err(err);
        }
        let result = apply(conn, schema, migrators).await;
        match migrating.settle(conn, result).await {
            Ok(Some(())) => break Ok(()),
            Ok(None) => {}
            Err(err) => break Err(err),
        }
    };
    let unlocked = sqlx::query(MIGRATION_UNLOCK).execute(&mut *conn).await;
    result?;
    unlocked.map_err(PgError::query("releasing the migration lock"))?;
    info!(schema = schema.as_str(), "herald's tables are migrated.");
    Ok(())
}

/// Whether any migration of `migrators` is not yet applied in `schema` (reads the ledger only).
pub async fn pending_migrations(
    conn: &mut PgConnection,
    schema: &Ident,
    migrators: &[Migrator],
) -> Result<bool, PgError> {
    let ledger = format!("{schema}.\"_sqlx_migrations\"");
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&ledger)
        .fetch_one(&mut *conn)
        .await
        .map_err(PgError::query("looking for herald's migration ledger"))?;
    if exists.is_none() {
        return Ok(true);
    }
    let applied: Vec<i64> = sqlx::query_scalar(&format!("SELECT version FROM {ledger} WHERE success"))
        .fetch_all(&mut *conn)
        .await
        .map_err(PgError::query("reading herald's migration ledger"))?;
    Ok(migrators.iter().flat_map(|m| m.iter()).any(|migration| !applied.contains(&migration.version)))
}

async fn apply(conn: &mut PgConnection, schema: &Ident, migrators: &[Migrator]) -> Result<(), PgError> {
    let exists = sqlx::query("SELECT 1 FROM pg_namespace WHERE nspname = $1")
        .bind(schema.as_str().to_owned())
        .fetch_optional(&mut *conn)
        .await
        .map_err(PgError::query("looking up herald's schema"))?
        .is_some();
    if !exists {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut *conn)
            .await
            .map_err(PgError::query("creating herald's schema"))?;
    }
    // The migrations name tables unqualified: run them inside the schema, then leave it, so the
    // connection's later statements resolve names as before.
    sqlx::query(&format!("SET search_path TO {schema}"))
        .execute(&mut *conn)
        .await
        .map_err(PgError::query("entering herald's schema"))?;
    let mut result = Ok(());
    for migrator in migrators {
        // `run_direct`, not `run`: `run` is generic over `Acquire`, which today's compiler
        // cannot prove `Send` for inside a sink's (boxed, `Send`) future.
        result = migrator
            .run_direct(&mut *conn)
            .await
            .map_err(|source| PgError::Migrate { schema: schema.as_str().to_owned(), source });
        if result.is_err() {
            break;
        }
    }
    let reset = sqlx::query("RESET search_path").execute(&mut *conn).await;
    result?;
    reset.map(drop).map_err(PgError::query("leaving herald's schema"))
}
