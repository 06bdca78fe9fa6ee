//! WAL capture: the table's inserts and updates read from a logical replication slot (pgoutput).
//!
//! No trigger and no `herald_changes`: the legacy writers' transactions write nothing extra.
//! Transactions arrive in the WAL's commit order, whole, so there is no out-of-order-commit
//! hazard to guard against. Exactly once, as in trigger mode: the events of one or more whole
//! transactions and the commit LSN they end at go to Kafka in one transaction; only after it
//! committed is the slot told (`update_applied_lsn`) that Postgres may recycle that WAL. On
//! restart herald starts from its own LSN and drops any transaction that ends at or below it.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Buf;
use futures::FutureExt;
use herald_core::observe::SourceMetrics;
use herald_pg::{Ddl, Ident, PgError};
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Number, Value};
use sqlx::{PgConnection, Row};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::SourceError;
use crate::publisher::{Checkpoint, Outgoing, Publisher};
use crate::rows::RowMapper;

/// How often the slot's retained WAL is measured.
const SLOT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How soon a confirmed LSN reaches the server.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The WAL mode's position in Kafka: the end LSN of the last whole transaction published, and,
/// when a batch ended inside a large transaction, how many of that transaction's row changes
/// were published. A transaction of any size is published in batches of `batch_size`, and a
/// restart skips exactly what is already in Kafka.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WalPosition {
    /// End LSN of the last whole transaction published.
    pub(crate) lsn: u64,
    /// A transaction published in part: its commit LSN and how many of its row changes (of the
    /// watched table, in WAL order) are in Kafka.
    pub(crate) partial: Option<Partial>,
}

/// A transaction published in part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Partial {
    /// Where its commit record starts (pgoutput's Begin `final_lsn`): the same on every replay.
    pub(crate) commit: u64,
    /// Row changes of the watched table published.
    pub(crate) done: u64,
}

impl Checkpoint for WalPosition {
    fn encode(&self) -> String {
        match self.partial {
            None => format!(r#"{{"lsn":{}}}"#, self.lsn),
            Some(partial) => {
                format!(r#"{{"lsn":{},"partial_commit":{},"partial_done":{}}}"#, self.lsn, partial.commit, partial.done)
            }
        }
    }

    fn decode(payload: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(payload).ok()?;
        let partial = match (value["partial_commit"].as_u64(), value["partial_done"].as_u64()) {
            (Some(commit), Some(done)) => Some(Partial { commit, done }),
            _ => None,
        };
        Some(WalPosition { lsn: value["lsn"].as_u64()?, partial })
    }
}

/// Which row changes of a session are new, and where a publish leaves the source: the
/// decisions of the stream, free of I/O.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Transactions whose commit record starts before this are in Kafka already.
    start: u64,
    /// A transaction partly in Kafka before this session.
    resume: Option<Partial>,
    /// End LSN of the last whole transaction seen.
    complete_end: u64,
    current: Option<Transaction>,
}

#[derive(Debug)]
struct Transaction {
    commit: u64,
    /// Row changes of the watched table seen so far.
    seen: u64,
    /// How many of the first ones are in Kafka already.
    skip: u64,
    /// Committed before `start`: all of it is in Kafka already.
    old: bool,
}

impl Progress {
    /// A session starting at `start` (see [`WalStream::run`]) after `resumed` was read back.
    pub(crate) fn new(start: u64, resumed: WalPosition) -> Self {
        Self { start, resume: resumed.partial, complete_end: start, current: None }
    }

    /// A transaction begins; its commit record starts at `commit`.
    pub(crate) fn begin(&mut self, commit: u64) {
        let skip = self.resume.filter(|partial| partial.commit == commit).map_or(0, |partial| partial.done);
        self.current = Some(Transaction { commit, seen: 0, skip, old: commit < self.start });
    }

    /// A row change of the watched table: whether it is new (to be published).
    pub(crate) fn admit(&mut self) -> bool {
        match &mut self.current {
            Some(transaction) if !transaction.old => {
                transaction.seen += 1;
                transaction.seen > transaction.skip
            }
            _ => false,
        }
    }

    /// The transaction commits, ending at `end`. Returns whether it was new.
    pub(crate) fn commit(&mut self, end: u64) -> bool {
        let new = self.current.take().is_some_and(|transaction| !transaction.old);
        if new {
            self.complete_end = self.complete_end.max(end);
        }
        new
    }

    /// Whether a transaction is open.
    pub(crate) fn in_transaction(&self) -> bool {
        self.current.is_some()
    }

    /// Where the source is once everything admitted so far is published.
    pub(crate) fn checkpoint(&self) -> WalPosition {
        WalPosition {
            lsn: self.complete_end,
            partial: self
                .current
                .as_ref()
                .filter(|transaction| !transaction.old && transaction.seen > 0)
                .map(|transaction| Partial { commit: transaction.commit, done: transaction.seen }),
        }
    }
}

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

/// One relation as pgoutput described it: names and type OIDs of its columns.
struct Relation {
    /// `schema.name`.
    table: String,
    columns: Vec<(String, u32)>,
}

/// One decoded row change.
struct RowChange {
    table: String,
    operation: &'static str,
    row: Map<String, Value>,
}

/// A malformed pgoutput message: a bug on one side or the other, not something to retry.
fn malformed(what: &str) -> SourceError {
    SourceError::Replication { context: "decoding pgoutput", reason: what.to_owned() }
}

fn take_cstr(data: &mut &[u8]) -> Result<String, SourceError> {
    let end = data.iter().position(|&byte| byte == 0).ok_or_else(|| malformed("unterminated string"))?;
    let text = String::from_utf8_lossy(&data[..end]).into_owned();
    *data = &data[end + 1..];
    Ok(text)
}

fn need(data: &[u8], bytes: usize) -> Result<(), SourceError> {
    if data.remaining() < bytes {
        return Err(malformed("message ends early"));
    }
    Ok(())
}

/// Decodes one pgoutput message: a Relation updates `relations`, an Insert or Update becomes a
/// row change, anything else (Delete, Truncate, Type, Origin) is passed over.
fn decode(mut data: &[u8], relations: &mut HashMap<u32, Relation>) -> Result<Option<RowChange>, SourceError> {
    need(data, 1)?;
    match data.get_u8() {
        b'R' => {
            need(data, 4)?;
            let id = data.get_u32();
            let schema = take_cstr(&mut data)?;
            let name = take_cstr(&mut data)?;
            need(data, 3)?;
            let _replica_identity = data.get_u8();
            let count = data.get_i16().max(0) as usize;
            let mut columns = Vec::with_capacity(count);
            for _ in 0..count {
                need(data, 1)?;
                let _flags = data.get_u8();
                let column = take_cstr(&mut data)?;
                need(data, 8)?;
                let type_oid = data.get_u32();
                let _type_modifier = data.get_i32();
                columns.push((column, type_oid));
            }
            relations.insert(id, Relation { table: format!("{schema}.{name}"), columns });
            Ok(None)
        }
        tag @ (b'I' | b'U') => {
            need(data, 5)?;
            let relation =
                relations.get(&data.get_u32()).ok_or_else(|| malformed("a change for an unknown relation"))?;
            let mut kind = data.get_u8();
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                // The old key (or, with REPLICA IDENTITY FULL, the old row) of an update.
                old = Some(tuple(&mut data, &relation.columns)?.0);
                need(data, 1)?;
                kind = data.get_u8();
            }
            if kind != b'N' {
                return Err(malformed("expected a new tuple"));
            }
            let (mut row, unchanged) = tuple(&mut data, &relation.columns)?;
            // Large values an UPDATE left alone are not sent; the old row has them when the
            // table's replica identity is FULL.
            for column in unchanged {
                match old.as_mut().and_then(|old| old.remove(&column)) {
                    Some(value) => {
                        row.insert(column, value);
                    }
                    None => {
                        warn!(table = %relation.table, column = %column, "An UPDATE left a large value unchanged and Postgres did not send it; the event lacks it (REPLICA IDENTITY FULL on the table sends it).");
                    }
                }
            }
            Ok(Some(RowChange {
                table: relation.table.clone(),
                operation: if tag == b'I' { "INSERT" } else { "UPDATE" },
                row,
            }))
        }
        _ => Ok(None),
    }
}

/// A tuple as a JSON object keyed by column name, shaped like `to_jsonb(row)` (what the
/// trigger mode records), so both modes give the same events; and the columns whose (large,
/// TOASTed) values Postgres did not send because an UPDATE left them unchanged.
fn tuple(data: &mut &[u8], columns: &[(String, u32)]) -> Result<(Map<String, Value>, Vec<String>), SourceError> {
    need(data, 2)?;
    let count = data.get_i16().max(0) as usize;
    let mut row = Map::new();
    let mut unchanged = Vec::new();
    for index in 0..count {
        need(data, 1)?;
        let kind = data.get_u8();
        let (name, type_oid) = columns.get(index).ok_or_else(|| malformed("more values than columns"))?;
        match kind {
            b'n' => {
                row.insert(name.clone(), Value::Null);
            }
            b'u' => unchanged.push(name.clone()),
            b't' => {
                need(data, 4)?;
                let length = data.get_i32().max(0) as usize;
                need(data, length)?;
                let text = String::from_utf8_lossy(&data[..length]);
                row.insert(name.clone(), text_to_json(*type_oid, &text));
                data.advance(length);
            }
            _ => return Err(malformed("unknown tuple value kind")),
        }
    }
    Ok((row, unchanged))
}

/// A column's text value as `to_jsonb` would give it.
fn text_to_json(type_oid: u32, text: &str) -> Value {
    const BOOL: u32 = 16;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const OID: u32 = 26;
    const JSON: u32 = 114;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const TIMESTAMP: u32 = 1114;
    const TIMESTAMPTZ: u32 = 1184;
    const NUMERIC: u32 = 1700;
    const JSONB: u32 = 3802;
    match type_oid {
        BOOL => Value::Bool(text == "t"),
        INT2 | INT4 | INT8 | OID => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.into())),
        FLOAT4 | FLOAT8 | NUMERIC => text
            .parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| text.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number))
            .unwrap_or_else(|| Value::String(text.into())),
        JSON | JSONB => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        TIMESTAMP | TIMESTAMPTZ => Value::String(iso_timestamp(text)),
        _ => Value::String(text.into()),
    }
}

/// `2026-11-26 10:15:00.123456+00` (the ISO DateStyle) → `2026-11-26T10:15:00.123456+00:00`
/// (`to_jsonb`'s form). `infinity` and other forms are kept as they are.
fn iso_timestamp(text: &str) -> String {
    let Some((date, time)) = text.split_once(' ') else { return text.to_owned() };
    let mut out = format!("{date}T{time}");
    // A `+HH` or `-HH` offset gets its minutes.
    let bytes = out.as_bytes();
    let length = bytes.len();
    if length >= 3 && matches!(bytes[length - 3], b'+' | b'-') && bytes[length - 2..].iter().all(u8::is_ascii_digit) {
        out.push_str(":00");
    }
    out
}

/// What one activation of a WAL source needs.
pub(crate) struct WalStream<'a> {
    pub(crate) name: &'a str,
    pub(crate) table: &'a str,
    pub(crate) rows: RowMapper<'a>,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: &'a SourceMetrics,
    pub(crate) batch_size: usize,
    /// A connection for slot measurements.
    pub(crate) conn: PgConnection,
    /// The connection holding the source's advisory lock, checked now and then.
    pub(crate) lock: PgConnection,
    pub(crate) names: WalNames,
    pub(crate) max_retained_bytes: i64,
}

impl WalStream<'_> {
    /// Streams from `config` (which starts at `progress`'s start) until `cancel` or an error.
    /// Events are published as many whole transactions as have arrived when the stream pauses,
    /// up to `batch_size` events; a larger transaction in batches of `batch_size`.
    pub(crate) async fn run(
        mut self,
        config: ReplicationConfig,
        progress: Progress,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut client =
            ReplicationClient::connect(config).await.map_err(SourceError::replication("connecting for replication"))?;
        client.wait_started().await.map_err(SourceError::replication("starting replication"))?;
        info!(source = self.name, slot = %self.names.slot, lsn = %Lsn::from_u64(progress.checkpoint().lsn), "Streaming from the replication slot.");
        let result = self.stream(&mut client, progress, cancel).await;
        client.stop();
        let _ = client.shutdown().await;
        result
    }

    async fn stream(
        &mut self,
        client: &mut ReplicationClient,
        mut progress: Progress,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut relations = HashMap::new();
        let mut batch: Vec<Outgoing> = Vec::new();
        // Whether whole transactions were added to the batch since the last publish.
        let mut batch_has_commits = false;
        let mut confirmed = progress.checkpoint().lsn;
        let mut slot_check = tokio::time::interval(SLOT_CHECK_INTERVAL);
        loop {
            // Between transactions with a batch waiting: take what has already arrived, and
            // publish as soon as nothing more has.
            let event = if batch_has_commits && !progress.in_transaction() {
                match client.recv().now_or_never() {
                    Some(event) => event,
                    None => {
                        confirmed = self.publish(client, &mut batch, &progress, confirmed).await?;
                        batch_has_commits = false;
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = slot_check.tick() => {
                        self.check_slot().await?;
                        continue;
                    }
                    event = client.recv() => event,
                }
            };
            let Some(event) = event.map_err(SourceError::replication("receiving"))? else {
                return Err(SourceError::ReplicationLost {
                    context: "receiving",
                    reason: "the server ended the replication stream".into(),
                });
            };
            match event {
                ReplicationEvent::Begin { final_lsn, .. } => progress.begin(final_lsn.as_u64()),
                ReplicationEvent::XLogData { wal_start, data, .. } => {
                    let Some(change) = decode(&data, &mut relations)? else { continue };
                    if change.table != self.table || !progress.admit() {
                        continue;
                    }
                    let position = wal_start.to_string();
                    batch.extend(self.rows.message(&change.row, &position, change.operation));
                    // A large transaction goes out in batches too: bounded memory, short Kafka
                    // transactions; the checkpoint says how much of it is in Kafka.
                    if batch.len() >= self.batch_size {
                        confirmed = self.publish(client, &mut batch, &progress, confirmed).await?;
                        batch_has_commits = false;
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    if !progress.commit(end_lsn.as_u64()) {
                        continue;
                    }
                    if batch.is_empty() && !batch_has_commits {
                        // Nothing (more) of ours in it: the slot may move past it without a
                        // Kafka transaction. A restart that still gets it re-sent skips what
                        // Kafka's checkpoint says is published.
                        client.update_applied_lsn(end_lsn);
                        confirmed = confirmed.max(end_lsn.as_u64());
                    } else {
                        batch_has_commits = true;
                        if batch.len() >= self.batch_size {
                            confirmed = self.publish(client, &mut batch, &progress, confirmed).await?;
                            batch_has_commits = false;
                        }
                    }
                }
                // Idle and everything published: let the slot move on, so a quiet table on a
                // busy server does not pin WAL (Postgres's own subscribers do the same).
                ReplicationEvent::KeepAlive { wal_end, .. }
                    if !progress.in_transaction()
                        && batch.is_empty()
                        && !batch_has_commits
                        && wal_end.as_u64() > confirmed =>
                {
                    client.update_applied_lsn(wal_end);
                    confirmed = wal_end.as_u64();
                }
                _ => {}
            }
        }
    }

    /// Publishes the batch with the checkpoint `progress` gives in one Kafka transaction, then
    /// confirms the end of the last whole transaction to the slot. Returns the LSN confirmed.
    async fn publish(
        &self,
        client: &ReplicationClient,
        batch: &mut Vec<Outgoing>,
        progress: &Progress,
        confirmed: u64,
    ) -> Result<u64, SourceError> {
        let checkpoint = progress.checkpoint();
        let messages = std::mem::take(batch);
        let count = messages.len();
        let started = std::time::Instant::now();
        self.publisher.publish(messages, &checkpoint, &|message, error| self.rows.too_large(message, error)).await?;
        self.metrics.published.inc_by(count as u64);
        self.metrics.transactions.inc();
        self.metrics.progressed();
        debug!(
            source = self.name,
            published = count,
            lsn = %Lsn::from_u64(checkpoint.lsn),
            partial = ?checkpoint.partial,
            publish_ms = started.elapsed().as_secs_f64() * 1000.0,
            "Published a batch of WAL changes."
        );
        if checkpoint.lsn > confirmed {
            // Only now may Postgres forget this WAL: the events are in Kafka.
            client.update_applied_lsn(Lsn::from_u64(checkpoint.lsn));
            return Ok(checkpoint.lsn);
        }
        Ok(confirmed)
    }

    /// Checks the source lock is still held, measures the WAL the slot holds back, and warns
    /// past the limit.
    async fn check_slot(&mut self) -> Result<(), SourceError> {
        sqlx::query("SELECT 1")
            .execute(&mut self.lock)
            .await
            .map_err(SourceError::postgres("checking the source lock"))?;
        if let Some((_, retained)) = slot_state(&mut self.conn, &self.names.slot).await? {
            self.metrics.retained_wal_bytes.set(retained);
            if retained > self.max_retained_bytes {
                warn!(
                    source = self.name,
                    slot = %self.names.slot,
                    retained_mib = retained / (1024 * 1024),
                    max_retained_wal_mb = self.max_retained_bytes / (1024 * 1024),
                    "The replication slot holds back more WAL than allowed; Postgres cannot recycle it until herald catches up."
                );
            }
        }
        Ok(())
    }
}

impl SourceError {
    pub(crate) fn replication(context: &'static str) -> impl FnOnce(PgWireError) -> Self {
        move |error| match error {
            // Internal: the client's worker ended while a receive was being dropped (our
            // `now_or_never`); the session is gone either way, and a new one can start.
            PgWireError::Io(_) | PgWireError::Task(_) | PgWireError::Internal(_) => {
                SourceError::ReplicationLost { context, reason: error.to_string() }
            }
            // A slot another reader still holds (a standby's takeover races the old session's
            // exit), or a server restarting: try again.
            PgWireError::Server(ref message)
                if ["SQLSTATE 55006", "SQLSTATE 57P", "SQLSTATE 08", "SQLSTATE 53"]
                    .iter()
                    .any(|code| message.contains(code)) =>
            {
                SourceError::ReplicationLost { context, reason: error.to_string() }
            }
            _ => SourceError::Replication { context, reason: error.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_message() -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend(16384_u32.to_be_bytes());
        out.extend(b"ops\0job_status\0");
        out.push(b'd');
        out.extend(4_i16.to_be_bytes());
        for (name, oid) in [("src", 25_u32), ("n", 20), ("at", 1184), ("payload", 3802)] {
            out.push(1);
            out.extend(name.as_bytes());
            out.push(0);
            out.extend(oid.to_be_bytes());
            out.extend((-1_i32).to_be_bytes());
        }
        out
    }

    fn value(out: &mut Vec<u8>, text: &str) {
        out.push(b't');
        out.extend((text.len() as i32).to_be_bytes());
        out.extend(text.as_bytes());
    }

    #[test]
    fn pgoutput_rows_decode_like_to_jsonb() {
        let mut relations = HashMap::new();
        assert!(decode(&relation_message(), &mut relations).unwrap().is_none());
        let mut insert = vec![b'I'];
        insert.extend(16384_u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(4_i16.to_be_bytes());
        value(&mut insert, "OrdersDB");
        value(&mut insert, "14823");
        value(&mut insert, "2026-11-26 10:15:00.123456+00");
        insert.push(b'n');
        let change = decode(&insert, &mut relations).unwrap().unwrap();
        assert_eq!(change.table, "ops.job_status");
        assert_eq!(change.operation, "INSERT");
        assert_eq!(
            Value::Object(change.row),
            serde_json::json!({"src": "OrdersDB", "n": 14823, "at": "2026-11-26T10:15:00.123456+00:00", "payload": null})
        );

        // An update with the old key first, an unchanged TOASTed value, and JSON.
        let mut update = vec![b'U'];
        update.extend(16384_u32.to_be_bytes());
        update.push(b'K');
        update.extend(1_i16.to_be_bytes());
        value(&mut update, "old");
        update.push(b'N');
        update.extend(4_i16.to_be_bytes());
        value(&mut update, "Payments");
        value(&mut update, "-3");
        update.push(b'u');
        value(&mut update, r#"{"attempt": 2}"#);
        let change = decode(&update, &mut relations).unwrap().unwrap();
        assert_eq!(change.operation, "UPDATE");
        assert_eq!(
            Value::Object(change.row),
            serde_json::json!({"src": "Payments", "n": -3, "payload": {"attempt": 2}})
        );
    }

    #[test]
    fn an_unchanged_large_value_comes_from_the_old_row_under_replica_identity_full() {
        let mut relations = HashMap::new();
        decode(&relation_message(), &mut relations).unwrap();
        let mut update = vec![b'U'];
        update.extend(16384_u32.to_be_bytes());
        update.push(b'O');
        update.extend(4_i16.to_be_bytes());
        value(&mut update, "A");
        value(&mut update, "1");
        value(&mut update, "2026-11-26 10:00:00+00");
        value(&mut update, r#"{"big": "x"}"#);
        update.push(b'N');
        update.extend(4_i16.to_be_bytes());
        value(&mut update, "A");
        value(&mut update, "2");
        value(&mut update, "2026-11-26 10:05:00+00");
        update.push(b'u');
        let change = decode(&update, &mut relations).unwrap().unwrap();
        assert_eq!(change.row["payload"], serde_json::json!({"big": "x"}));
        assert_eq!(change.row["n"], 2, "changed values are the new ones");
    }

    #[test]
    fn a_restart_skips_what_kafka_has_of_a_partly_published_transaction() {
        // Before the restart: transactions up to LSN 100 whole, and 3 row changes of the one
        // committing at 150.
        let resumed = WalPosition { lsn: 100, partial: Some(Partial { commit: 150, done: 3 }) };
        assert_eq!(WalPosition::decode(resumed.encode().as_bytes()), Some(resumed));
        assert_eq!(WalPosition::decode(br#"{"lsn":7}"#), Some(WalPosition { lsn: 7, partial: None }));
        let mut progress = Progress::new(100, resumed);

        // A transaction committed before the start is in Kafka whole.
        progress.begin(90);
        assert!(!progress.admit());
        assert!(!progress.commit(95));

        // The partly published one: its first 3 changes are skipped, the rest are new.
        progress.begin(150);
        let admitted: Vec<bool> = (0..5).map(|_| progress.admit()).collect();
        assert_eq!(admitted, [false, false, false, true, true]);
        // A batch ending inside it records how far it got.
        assert_eq!(progress.checkpoint(), WalPosition { lsn: 100, partial: Some(Partial { commit: 150, done: 5 }) });
        assert!(progress.commit(160));
        assert_eq!(progress.checkpoint(), WalPosition { lsn: 160, partial: None });

        // The next transaction is new from its first change.
        progress.begin(170);
        assert!(progress.admit());
        assert!(progress.in_transaction());
        assert!(progress.commit(180));
        assert!(!progress.in_transaction());
        assert_eq!(progress.checkpoint().lsn, 180);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let mut relations = HashMap::new();
        for bad in [&b""[..], b"R", b"R\0\0\0\x01ops", b"I\0\0\0\x09N", b"I"] {
            let _ = decode(bad, &mut relations);
        }
        decode(&relation_message(), &mut relations).unwrap();
        let mut short = vec![b'I'];
        short.extend(16384_u32.to_be_bytes());
        short.extend([b'N', 0, 4, b't', 0, 0, 0, 9, b'x']);
        assert!(decode(&short, &mut relations).is_err());
    }

    #[test]
    fn text_values_become_json_like_to_jsonb() {
        assert_eq!(text_to_json(16, "t"), Value::Bool(true));
        assert_eq!(text_to_json(1700, "12.50"), serde_json::json!(12.5));
        assert_eq!(text_to_json(1114, "2026-11-26 10:15:00"), "2026-11-26T10:15:00");
        assert_eq!(text_to_json(1184, "2026-11-26 10:15:00-05"), "2026-11-26T10:15:00-05:00");
        assert_eq!(text_to_json(1184, "infinity"), "infinity");
        assert_eq!(text_to_json(25, "plain"), "plain");
    }

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
