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

/// What the route has done with the topic, as Postgres records it with the rows.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The next offset to write of each (topic, partition): events before it were handled.
    pub next_offsets: HashMap<(String, i32), i64>,
    /// The events the table refused (sent to the dead-letter topic), by (topic, partition, offset).
    pub rejected: HashSet<(String, i32, i64)>,
}

impl PostgresSinkConfig {
    /// Whether the table the route is compared on keeps event field `field` (`event`,
    /// `status`, `records`): a field it does not keep cannot differ.
    pub fn keeps_field(&self, field: &str) -> Result<bool, PostgresSinkError> {
        let plan = self.compared_plan()?;
        Ok(plan.columns.iter().any(|(_, from)| match from {
            FieldSource::Field(name) => name == field,
            FieldSource::Event => true,
            _ => false,
        }))
    }

    /// The latest event of each (source, stage) in the route's table: the newest-wins table
    /// when it has one (`pipeline_status_latest`), else its only table. A row that does not
    /// read back as an event is left out.
    pub async fn latest_events(&self, route: &str) -> Result<Vec<StageEvent>, PostgresSinkError> {
        let plan = self.compared_plan()?;
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
        let tie = offset.map_or_else(String::new, |offset| format!(", {offset} DESC"));
        let sql = format!(
            "SELECT to_jsonb(t) FROM (SELECT DISTINCT ON ({source}, {stage}) * FROM {table}
             ORDER BY {source}, {stage}, {timestamp} DESC{tie}) t",
            table = plan.table
        );
        let mut conn = self.connect_for_reconcile(route).await?;
        let mut latest = Vec::new();
        {
            let mut rows = sqlx::query(&sql).fetch(&mut conn);
            while let Some(row) = rows.try_next().await? {
                if let Ok(Value::Object(row)) = row.try_get::<Value, _>(0) {
                    if let Some(event) = event_of(&plan, row) {
                        latest.push(event);
                    }
                }
            }
        }
        let _ = conn.close().await;
        Ok(latest)
    }

    /// What consumer group `consumer_group` has written and refused, from herald's bookkeeping
    /// tables beside the rows.
    pub async fn written(&self, route: &str, consumer_group: &str) -> Result<Written, PostgresSinkError> {
        let schema = self.schema_ident()?;
        let mut conn = self.connect_for_reconcile(route).await?;
        let offsets: Vec<(String, i32, i64)> = sqlx::query_as(&format!(
            "SELECT topic, partition, next_offset FROM {schema}.herald_offsets WHERE consumer_group = $1"
        ))
        .bind(consumer_group)
        .fetch_all(&mut conn)
        .await?;
        let rejected: Vec<(String, i32, i64)> = sqlx::query_as(&format!(
            "SELECT topic, partition, \"offset\" FROM {schema}.herald_rejections WHERE consumer_group = $1"
        ))
        .bind(consumer_group)
        .fetch_all(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(Written {
            next_offsets: offsets.into_iter().map(|(topic, partition, next)| ((topic, partition), next)).collect(),
            rejected: rejected.into_iter().collect(),
        })
    }

    /// Writes `records` (events the table lacks, with the Kafka coordinates they were read at)
    /// into every table of the route in one transaction, as the sink writes them: a newest-wins
    /// table keeps the newest per key, so writing again changes nothing. The stored offsets are
    /// not moved (the route's own progress is its own). Returns how many events were written.
    pub async fn repair(&self, route: &str, records: &[SinkRecord]) -> Result<usize, PostgresSinkError> {
        if records.is_empty() {
            return Ok(0);
        }
        let mut conn = self.connect_for_reconcile(route).await?;
        let mut writers = Vec::new();
        for plan in self.plans()? {
            writers.push(TableWriter::prepare(&mut conn, plan).await?);
        }
        let refs: Vec<&SinkRecord> = records.iter().collect();
        let mut tx = conn.begin().await?;
        for writer in &writers {
            writer.write(&mut tx, &refs).await?;
        }
        tx.commit().await?;
        Ok(records.len())
    }

    /// The plan whose table `reconcile` reads: the newest-wins one, else the only one.
    fn compared_plan(&self) -> Result<TablePlan, PostgresSinkError> {
        let plans = self.plans()?;
        let index = plans.iter().position(|plan| plan.upsert.is_some()).unwrap_or(0);
        plans.into_iter().nth(index).ok_or_else(|| PostgresSinkError::Config {
            key: "table".into(),
            reason: "the route writes no table".into(),
        })
    }

    async fn connect_for_reconcile(&self, route: &str) -> Result<PgConnection, PostgresSinkError> {
        PgConnection::connect_with(&self.connect_options(&format!("{route}/reconcile"))?)
            .await
            .map_err(PostgresSinkError::Connect)
    }
}

/// A row read back as the event it was written from: the `$event` column when mapped, with
/// the mapped fields over it; fields the table does not keep stay empty (they are not compared).
fn event_of(plan: &TablePlan, mut row: Map<String, Value>) -> Option<StageEvent> {
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
                Some(Value::Null) | None => {}
                Some(value) => {
                    event.insert(name.clone(), value);
                }
            }
        }
    }
    for field in ["event", "status"] {
        event.entry(field).or_insert_with(|| Value::String(String::new()));
    }
    serde_json::from_value(Value::Object(event)).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn plan(json: &str) -> TablePlan {
        let config: PostgresSinkConfig = serde_json::from_str(json).unwrap();
        config.compared_plan().unwrap()
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
        assert!(config.keeps_field("status").unwrap() && !config.keeps_field("records").unwrap());
        let row = serde_json::json!({"src": "A", "step": "s", "done_at": "2026-12-01T10:00:00", "state": "FAILED"});
        let Value::Object(row) = row else { unreachable!() };
        let event = event_of(&config.compared_plan().unwrap(), row).unwrap();
        assert_eq!((event.status.as_str(), event.event.as_str(), event.records), ("FAILED", "", None));
    }
}
