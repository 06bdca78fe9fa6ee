//! The table's side of `herald reconcile` for a source: the latest row of each (source, stage)
//! of the watched table, read as the source reads rows (the same mapping, the same events), and
//! the repair that publishes the rows the topic lacks.
//!
//! The latest rows come from one `SELECT DISTINCT ON (source, stage) … ORDER BY … timestamp
//! DESC`: Postgres keeps one row per pair, and herald holds one event per pair, so memory is
//! bounded by the pairs, not by the table.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use herald_kafka::KafkaProperties;
use herald_sdk::StageEvent;
use serde_json::{Map, Value};
use sqlx::{PgConnection, Row};

use crate::capture;
use crate::error::SourceError;
use crate::instance::PostgresSource;
use crate::publisher::publish_alone;
use crate::rows::RowMapper;

/// The newest row of a (source, stage) that cannot become an event (a NULL status, a timestamp
/// that does not parse): reconcile reports it, never leaves the pair out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableRow {
    /// The row's source column, as text (`NULL` when it is).
    pub source: String,
    /// The row's stage column, as text.
    pub stage: String,
    /// Why it cannot be an event, naming the column.
    pub reason: String,
}

/// The latest row of one (source, stage) in the watched table, and its event.
#[derive(Debug, Clone)]
pub struct TableRow {
    /// The row as its event.
    pub event: StageEvent,
    /// The row itself, as it would be published.
    pub row: RowToPublish,
}

/// A row as a repair publishes it: compact JSON text (a parsed row takes several times its
/// text's memory, and most rows of a reconcile are never published).
#[derive(Debug, Clone)]
pub struct RowToPublish {
    /// Whether herald's own sink wrote it (it came from Kafka): never published back.
    pub from_kafka: bool,
    text: String,
}

impl RowToPublish {
    /// The row's columns.
    pub(crate) fn columns(&self) -> Option<Map<String, Value>> {
        serde_json::from_str(&self.text).ok()
    }
}

impl PostgresSource {
    /// Hands `each` the latest row of each (source, stage) of the source's table, as an event,
    /// when it is dated at or after `since` (always without it), one at a time (nothing is
    /// gathered). A pair whose latest row cannot be an event is handed over as unreadable, with
    /// why, whatever `since`.
    pub async fn latest_rows(
        &self,
        since: Option<DateTime<Utc>>,
        mut each: impl FnMut(Result<TableRow, UnreadableRow>) + Send,
    ) -> Result<(), SourceError> {
        let name = self.name.as_str();
        let plan = &self.plan;
        let mut conn = self.connect().await?;
        let table = capture::resolve(&mut conn, &plan.table).await?;
        let dead_letter_topic = self.dead_letter_topic_of();
        let mapper =
            RowMapper { name, plan, config: &self.config, table: &table, dead_letter_topic: &dead_letter_topic };
        // The latest of every pair, then the window: a pair whose latest row is older than
        // `since` is left out (filtering first would compare an older row with the topic's latest).
        read_latest(&mut conn, &mapper, &mut |row| match row {
            Ok(row) => {
                if since.is_none_or(|since| row.event.timestamp.instant() >= since) {
                    each(Ok(row));
                }
            }
            // No instant to window by: always reported.
            Err(unreadable) => each(Err(unreadable)),
        })
        .await
    }

    /// Publishes `rows` (the table's latest where the topic lacks them or is older) to the
    /// source's topic in one Kafka transaction, keyed and shaped as the source publishes them,
    /// with `herald.origin.repair = reconcile`. Rows herald's sink wrote are never published
    /// back. Returns how many were published.
    pub async fn repair(&self, kafka: &KafkaProperties, rows: &[RowToPublish]) -> Result<usize, SourceError> {
        let name = self.name.as_str();
        let plan = &self.plan;
        let mut conn = self.connect().await?;
        let table = capture::resolve(&mut conn, &plan.table).await?;
        let dead_letter_topic = self.dead_letter_topic_of();
        let mapper =
            RowMapper { name, plan, config: &self.config, table: &table, dead_letter_topic: &dead_letter_topic };
        let messages: Vec<_> = rows
            .iter()
            .filter(|row| !row.from_kafka)
            .filter_map(|row| row.columns())
            .filter_map(|row| mapper.message(&row, "reconcile", "repair", None))
            .filter(|message| message.topic == self.config.topic)
            .map(|mut message| {
                message.headers.push(("herald.origin.repair", "reconcile".into()));
                message
            })
            .collect();
        if messages.is_empty() {
            return Ok(0);
        }
        herald_kafka::ensure_topics(kafka, &self.topics())
            .await
            .map_err(SourceError::kafka("creating the topics it writes"))?;
        publish_alone(kafka, &format!("herald.reconcile.{name}"), &messages, REPAIR_TIMEOUT).await?;
        Ok(messages.len())
    }
}

/// Hands `each` the latest row of each (source, stage) of `mapper`'s table, read on `conn` (in
/// whatever snapshot its transaction holds), as an event, or why it cannot be one.
///
/// "Latest" is one total order, the one the source publishes in: by timestamp (NULL last),
/// then by the table's primary key, then by the row's physical place, newest first. Two rows
/// of one pair written in one transaction share `now()`; the one written later is the latest,
/// as its event is the later one on the topic.
pub(crate) async fn read_latest(
    conn: &mut PgConnection,
    mapper: &RowMapper<'_>,
    each: &mut (dyn FnMut(Result<TableRow, UnreadableRow>) + Send),
) -> Result<(), SourceError> {
    let plan = mapper.plan;
    let column = |field: &str| {
        let column = plan.columns.get(field).ok_or_else(|| SourceError::Config {
            key: "columns".into(),
            reason: format!("reading the latest rows needs the event field `{field}` from a column, not a constant"),
        })?;
        herald_pg::Ident::new(column)
            .map(|ident| ident.to_string())
            .map_err(|reason| SourceError::Config { key: "columns".into(), reason })
    };
    let (source, stage, timestamp) = (column("source")?, column("stage")?, column("timestamp")?);
    let table = capture::quoted(mapper.table)?;
    let mut tie_break = String::new();
    for key in primary_key(conn, mapper.table).await? {
        let key = herald_pg::Ident::new(&key).map_err(|reason| SourceError::Config { key: "table".into(), reason })?;
        tie_break.push_str(&format!("{key} DESC, "));
    }
    let sql = format!(
        "SELECT to_jsonb(t)::text, t.{source}::text, t.{stage}::text FROM (SELECT DISTINCT ON ({source}, {stage}) * FROM {table}
         ORDER BY {source}, {stage}, {timestamp} DESC NULLS LAST, {tie_break}ctid DESC) t"
    );
    let mut rows = sqlx::query(&sql).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await.map_err(SourceError::postgres("reading the table's latest rows"))? {
        let text: String = row.try_get(0).map_err(SourceError::postgres("decoding a row"))?;
        let named = |at: usize| row.try_get::<Option<String>, _>(at).ok().flatten().unwrap_or_else(|| "NULL".into());
        let unreadable = |reason: String| UnreadableRow { source: named(1), stage: named(2), reason };
        let columns = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(columns)) => columns,
            _ => {
                each(Err(unreadable("the row is not a JSON object".into())));
                continue;
            }
        };
        let from_kafka = mapper.skipped(&columns);
        match mapper.event(&columns) {
            Ok((event, _)) => each(Ok(TableRow { event, row: RowToPublish { from_kafka, text } })),
            Err(reason) => each(Err(unreadable(reason))),
        }
    }
    Ok(())
}

/// The columns of `table`'s primary key, in order (none without one).
async fn primary_key(conn: &mut PgConnection, table: &str) -> Result<Vec<String>, SourceError> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ordinality)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY k.ordinality",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(SourceError::postgres("reading the table's primary key"))
}

/// How long the repair's transaction and its calls may take.
const REPAIR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
