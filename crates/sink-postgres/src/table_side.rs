//! The table's side of `herald reconcile` for a Postgres sink route: the latest event of each
//! (source, stage) read back from the table through the mapping, what the route has written
//! (its stored offsets) and refused (its rejections), and the repair that writes the events the
//! table lacks.
//!
//! The latest rows come from one `SELECT DISTINCT ON (source, stage) … ORDER BY … timestamp
//! DESC`: Postgres keeps one row per pair, and herald holds one event per pair, so memory is
//! bounded by the pairs, not by the table.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use herald_sdk::{SinkRecord, StageEvent};
use serde_json::{Map, Value};
use sqlx::{Connection, PgConnection, Row};

use crate::config::{FieldSource, PostgresSinkConfig, TablePlan};
use crate::error::PostgresSinkError;
use crate::table::TableWriter;
use herald_pg::Ident;

/// What the route has done with the topic, as Postgres records it with the rows.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The next offset to write of each (topic, partition): events before it were handled.
    pub next_offsets: HashMap<(String, i32), i64>,
    /// The events the table refused, by (topic, partition, offset), with the reason recorded.
    /// The route hands each to its dead-letter topic after recording it (or stops on it when it
    /// has none).
    pub rejected: HashMap<(String, i32, i64), String>,
}

/// What a repair did.
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    /// How many of the events were written to at least one table.
    pub written: usize,
    /// The events (by index) the compared append table already holds by their Kafka
    /// coordinates, with values someone changed since: not appended a second time.
    pub already_there: Vec<usize>,
}

/// The newest rows of one (source, stage) in a sink's table.
#[derive(Debug, Clone)]
pub struct NewestRows {
    /// The row's source column, as text.
    pub source: String,
    /// The row's stage column, as text.
    pub stage: String,
    /// The newest rows read back as events, in the table's order (the Kafka offset, where the
    /// table keeps it, descending). More than one when rows tie on timestamp and offset.
    pub events: Vec<StageEvent>,
    /// Why a newest row cannot become an event, naming the column, when one cannot.
    pub unreadable: Option<String>,
}

/// The table a Postgres sink route writes, as `herald reconcile` reads and repairs it: built
/// once from the route's name and its sink's settings (their plan checked), it owns the
/// reading back and the repair; the settings stay plain data.
#[derive(Debug, Clone)]
pub struct RouteTable {
    route: String,
    config: PostgresSinkConfig,
    /// Every table the route writes, and how.
    plans: Vec<TablePlan>,
    /// The one compared: the newest-wins table, else the only one.
    compared: TablePlan,
}

impl RouteTable {
    /// The table of route `route` writing with `config`.
    pub fn new(route: &str, config: PostgresSinkConfig) -> Result<Self, PostgresSinkError> {
        let plans = config.plans()?;
        let index = plans.iter().position(|plan| plan.upsert.is_some()).unwrap_or(0);
        let compared = plans.get(index).cloned().ok_or_else(|| PostgresSinkError::Config {
            key: "table".into(),
            reason: "the route writes no table".into(),
        })?;
        Ok(Self { route: route.to_owned(), config, plans, compared })
    }

    /// The sink's settings.
    pub fn config(&self) -> &PostgresSinkConfig {
        &self.config
    }

    /// Whether the table the route is compared on keeps event field `field` (`event`,
    /// `status`, `records`): a field it does not keep cannot differ.
    pub fn keeps_field(&self, field: &str) -> bool {
        self.compared.columns.iter().any(|(_, from)| match from {
            FieldSource::Field(name) => name == field,
            FieldSource::Event => true,
            _ => false,
        })
    }

    /// The newest rows of each (source, stage) in the route's table: the newest-wins table
    /// when it has one (`pipeline_status_latest`), else its only table. Rows are ordered by
    /// timestamp, then by the Kafka offset where the table keeps it (the topic's own order);
    /// rows that still tie are all returned, for the comparison to find the topic's event among
    /// them. A pair whose newest row cannot become an event is returned with the reason.
    pub async fn latest_rows(&self) -> Result<Vec<NewestRows>, PostgresSinkError> {
        let plan = &self.compared;
        let column = |field: &str| {
            plan.columns
                .iter()
                .find(|(_, from)| *from == FieldSource::Field(field.into()))
                .map(|(c, _)| c.clone())
                .ok_or_else(|| PostgresSinkError::Config {
                    key: "table.columns".into(),
                    reason: format!("reconcile needs a column that holds the event's `{field}`"),
                })
        };
        let (source, stage, timestamp) = (column("source")?, column("stage")?, column("timestamp")?);
        let offset = plan.columns.iter().find(|(_, from)| *from == FieldSource::Offset).map(|(c, _)| c.clone());
        let tie = offset.map_or_else(String::new, |offset| format!(", {offset} DESC NULLS LAST"));
        let sql = format!(
            "SELECT to_jsonb(t) - 'herald_reconcile_rank' FROM (
                 SELECT *, rank() OVER (PARTITION BY {source}, {stage} ORDER BY {timestamp} DESC NULLS LAST{tie})
                        AS herald_reconcile_rank
                 FROM {table}) t
             WHERE herald_reconcile_rank = 1
             ORDER BY {source}, {stage}",
            table = plan.table
        );
        let (source, stage) = (source.as_str().to_owned(), stage.as_str().to_owned());
        let mut conn = self.connect_for_reconcile().await?;
        let mut latest: Vec<NewestRows> = Vec::new();
        {
            let mut rows = sqlx::query(&sql).fetch(&mut conn);
            while let Some(row) = rows.try_next().await? {
                let Ok(Value::Object(row)) = row.try_get::<Value, _>(0) else { continue };
                let text = |column: &str| match row.get(column) {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                let (row_source, row_stage) = (text(&source), text(&stage));
                let same_pair = latest.last().is_some_and(|last| last.source == row_source && last.stage == row_stage);
                if !same_pair {
                    latest.push(NewestRows {
                        source: row_source,
                        stage: row_stage,
                        events: Vec::new(),
                        unreadable: None,
                    });
                }
                let Some(pair) = latest.last_mut() else { continue };
                match event_of(plan, row) {
                    Ok(event) => pair.events.push(event),
                    Err(reason) => pair.unreadable = Some(reason),
                }
            }
        }
        let _ = conn.close().await;
        Ok(latest)
    }

    /// What consumer group `consumer_group` has written and refused, from herald's bookkeeping
    /// tables beside the rows.
    pub async fn written(&self, consumer_group: &str) -> Result<Written, PostgresSinkError> {
        let schema = self.config.schema_ident()?;
        let mut conn = self.connect_for_reconcile().await?;
        let offsets: Vec<(String, i32, i64)> = sqlx::query_as(&format!(
            "SELECT topic, partition, next_offset FROM {schema}.herald_offsets WHERE consumer_group = $1"
        ))
        .bind(consumer_group)
        .fetch_all(&mut conn)
        .await?;
        let rejected: Vec<(String, i32, i64, String)> = sqlx::query_as(&format!(
            "SELECT topic, partition, \"offset\", reason FROM {schema}.herald_rejections WHERE consumer_group = $1"
        ))
        .bind(consumer_group)
        .fetch_all(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(Written {
            next_offsets: offsets.into_iter().map(|(topic, partition, next)| ((topic, partition), next)).collect(),
            rejected: rejected
                .into_iter()
                .map(|(topic, partition, offset, reason)| ((topic, partition, offset), reason))
                .collect(),
        })
    }

    /// Sets where consumer group `consumer_group` resumes: each of `offsets` (topic, partition,
    /// next offset) stored in one transaction, a partition without a row given one. For a route
    /// no herald runs (the caller makes sure its group is empty): a running sink would not see
    /// the change until its partitions are assigned again.
    pub async fn move_offsets(
        &self,
        consumer_group: &str,
        offsets: &[((String, i32), i64)],
    ) -> Result<(), PostgresSinkError> {
        let schema = self.config.schema_ident()?;
        let mut topics = Vec::with_capacity(offsets.len());
        let mut partitions = Vec::with_capacity(offsets.len());
        let mut next = Vec::with_capacity(offsets.len());
        for ((topic, partition), offset) in offsets {
            topics.push(topic.as_str());
            partitions.push(*partition);
            next.push(*offset);
        }
        let mut conn = self.connect_for_reconcile().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {schema}.herald_offsets (consumer_group, topic, partition, next_offset)
             SELECT $1, u.topic, u.partition, u.next_offset
             FROM UNNEST($2::text[], $3::int[], $4::bigint[]) AS u(topic, partition, next_offset)
             ON CONFLICT (consumer_group, topic, partition)
             DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
        ))
        .bind(consumer_group)
        .bind(&topics)
        .bind(&partitions)
        .bind(&next)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let _ = conn.close().await;
        Ok(())
    }

    /// Writes `records` (events the compared table lacks, with the Kafka coordinates they were
    /// read at) into every table of the route in one transaction, as the sink writes them. An
    /// append table that keeps the Kafka coordinates gets only the events it does not hold yet
    /// (by topic, partition and offset): a history never gets a row twice. A newest-wins table
    /// keeps the newest per key, so writing again changes nothing but a row someone altered.
    /// A second repair therefore writes nothing. The stored offsets are not moved (the route's
    /// own progress is its own).
    pub async fn repair(&self, records: &[SinkRecord]) -> Result<Repaired, PostgresSinkError> {
        let mut outcome = Repaired::default();
        if records.is_empty() {
            return Ok(outcome);
        }
        let compared = self.compared.table.to_string();
        let mut conn = self.connect_for_reconcile().await?;
        let mut writers = Vec::new();
        for plan in self.plans.iter().cloned() {
            let present =
                if plan.upsert.is_none() { already_there(&mut conn, &plan, records).await? } else { HashSet::new() };
            if plan.table.to_string() == compared {
                outcome.already_there = present.iter().copied().collect();
                outcome.already_there.sort_unstable();
            }
            writers.push((TableWriter::prepare(&mut conn, plan).await?, present));
        }
        let mut tx = conn.begin().await?;
        let mut written = HashSet::new();
        for (writer, present) in &writers {
            let missing: Vec<&SinkRecord> =
                records.iter().enumerate().filter(|(i, _)| !present.contains(i)).map(|(_, r)| r).collect();
            writer.write(&mut tx, &missing).await?;
            written.extend((0..records.len()).filter(|i| !present.contains(i)));
        }
        tx.commit().await?;
        outcome.written = written.len();
        Ok(outcome)
    }

    async fn connect_for_reconcile(&self) -> Result<PgConnection, PostgresSinkError> {
        PgConnection::connect_with(&self.config.connect_options(&format!("{}/reconcile", self.route))?)
            .await
            .map_err(PostgresSinkError::Connect)
    }
}

/// A row read back as the event it was written from: the `$event` column when mapped, with
/// the mapped fields over it; fields the table does not keep stay empty (they are not compared).
/// A row that cannot become an event says why, naming the column.
fn event_of(plan: &TablePlan, mut row: Map<String, Value>) -> Result<StageEvent, String> {
    let mut event = Map::new();
    for (column, from) in &plan.columns {
        if *from == FieldSource::Event {
            match row.remove(column.as_str()) {
                Some(Value::Object(payload)) => event.extend(payload),
                Some(Value::String(text)) => {
                    if let Ok(Value::Object(payload)) = serde_json::from_str(&text) {
                        event.extend(payload);
                    }
                }
                _ => {}
            }
        }
    }
    for (column, from) in &plan.columns {
        if let FieldSource::Field(name) = from {
            match row.remove(column.as_str()) {
                Some(Value::Null) | None => {
                    if matches!(name.as_str(), "source" | "stage" | "timestamp") {
                        return Err(format!("column `{}` (the event's `{name}`) is NULL", column.as_str()));
                    }
                }
                Some(value) => {
                    event.insert(name.clone(), value);
                }
            }
        }
    }
    for field in ["event", "status"] {
        event.entry(field).or_insert_with(|| Value::String(String::new()));
    }
    serde_json::from_value(Value::Object(event)).map_err(|err| format!("the row's values do not make an event: {err}"))
}

/// The Kafka coordinates a table keeps of each row (`$topic`, `$partition`, `$offset`), when it
/// keeps the offset: a row's identity, by which a repair knows an event is already there.
fn identity_columns(plan: &TablePlan) -> Option<[Option<Ident>; 3]> {
    let find = |wanted: FieldSource| plan.columns.iter().find(|(_, from)| *from == wanted).map(|(c, _)| c.clone());
    let offset = find(FieldSource::Offset)?;
    Some([find(FieldSource::Topic), find(FieldSource::Partition), Some(offset)])
}

/// Which of `records` (by index) `plan`'s table already holds, by their Kafka coordinates.
async fn already_there(
    conn: &mut PgConnection,
    plan: &TablePlan,
    records: &[SinkRecord],
) -> Result<HashSet<usize>, PostgresSinkError> {
    let Some(columns) = identity_columns(plan) else { return Ok(HashSet::new()) };
    // Compared as text: a legacy table may keep the offset in a text column.
    let conditions: Vec<String> = columns
        .iter()
        .zip(["u.topic", "u.partition", "u.kafka_offset"])
        .filter_map(|(column, value)| column.as_ref().map(|column| format!("t.{column}::text = {value}")))
        .collect();
    let sql = format!(
        "SELECT u.i FROM UNNEST($1::int[], $2::text[], $3::text[], $4::text[]) AS u(i, topic, partition, kafka_offset)
         WHERE EXISTS (SELECT 1 FROM {} t WHERE {})",
        plan.table,
        conditions.join(" AND ")
    );
    let indexes: Vec<i32> = (0..records.len()).filter_map(|i| i32::try_from(i).ok()).collect();
    let topics: Vec<&str> = records.iter().map(|r| &*r.topic).collect();
    let partitions: Vec<String> = records.iter().map(|r| r.partition.to_string()).collect();
    let offsets: Vec<String> = records.iter().map(|r| r.offset.to_string()).collect();
    let found: Vec<i32> =
        sqlx::query_scalar(&sql).bind(indexes).bind(topics).bind(partitions).bind(offsets).fetch_all(conn).await?;
    Ok(found.into_iter().filter_map(|i| usize::try_from(i).ok()).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn plan(json: &str) -> TablePlan {
        let config: PostgresSinkConfig = serde_json::from_str(json).unwrap();
        RouteTable::new("r", config).unwrap().compared
    }

    #[test]
    fn a_greenfield_row_reads_back_from_its_latest_table() {
        let plan = plan(r#"{"url":"postgres://x"}"#);
        assert!(plan.table.to_string().contains("pipeline_status_latest"));
        let row = serde_json::json!({
            "source": "OrdersDB", "stage": "bronze", "status": "SUCCESS", "event": "STAGE_COMPLETE",
            "records": 5, "event_time": "2026-12-01T10:00:00.123456+00:00", "kafka_offset": 7,
            "payload": {"event": "STAGE_COMPLETE", "run_id": "r1", "source": "OrdersDB"}
        });
        let Value::Object(row) = row else { unreachable!() };
        let event = event_of(&plan, row).unwrap();
        assert_eq!(
            (event.source.as_str(), event.records, event.extra["run_id"].as_str()),
            ("OrdersDB", Some(5), Some("r1"))
        );
        assert_eq!(event.timestamp.instant().to_rfc3339(), "2026-12-01T10:00:00.123456+00:00");
    }

    #[test]
    fn a_legacy_row_keeps_only_what_is_mapped() {
        let config: PostgresSinkConfig = serde_json::from_str(
            r#"{"url":"x","table":{"name":"ops.job_status",
                "columns":{"src":"source","step":"stage","done_at":"timestamp","state":"status"},
                "conflict_key":["src","step"]}}"#,
        )
        .unwrap();
        let table = RouteTable::new("r", config).unwrap();
        assert!(table.keeps_field("status") && !table.keeps_field("records"));
        let row = serde_json::json!({"src": "A", "step": "s", "done_at": "2026-12-01T10:00:00", "state": "FAILED"});
        let Value::Object(row) = row else { unreachable!() };
        let event = event_of(&table.compared, row).unwrap();
        assert_eq!((event.status.as_str(), event.event.as_str(), event.records), ("FAILED", "", None));
    }
}
