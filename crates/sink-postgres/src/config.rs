//! Settings of the Postgres sink, and the table plans they describe.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::error::PostgresSinkError;
use herald_pg::{Ident, QualifiedName};

/// `sink = { type = "postgres", url = "postgres://…", … }`.
///
/// Without `table`, herald writes its own greenfield schema: the `pipeline_status` history
/// and the `pipeline_status_latest` table pollers read. With `table`, it writes an existing
/// (legacy) table through a column mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection URL, e.g. `"postgres://herald:secret@db:5432/pipelines?sslmode=require"`
    /// (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` select TLS). Never printed.
    pub url: SecretString,
    /// Schema of herald's own tables (`herald_offsets`, `herald_rejections`, and in greenfield
    /// mode `pipeline_status`, `pipeline_status_latest`); created if missing. Default `"public"`.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// `"append"` (a row per event), `"upsert"` (the newest event per key) or `"both"`
    /// (greenfield only: history and latest). Default: `"both"` for greenfield; for a legacy
    /// table `"upsert"` when it has a `conflict_key`, else `"append"`.
    #[serde(default)]
    pub mode: Option<WriteMode>,
    /// An existing table to write instead of the greenfield schema.
    #[serde(default)]
    pub table: Option<LegacyTableConfig>,
    /// Most connections in the pool. Default `2` (one writer, one for health checks).
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// How long to wait for a connection before the write counts as failed (and is retried).
    /// Default `"10s"`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest a statement may run before Postgres cancels it (and the write is retried).
    /// Default `"60s"`.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// How long herald's session may sit idle inside an open transaction before Postgres ends
    /// it (`idle_in_transaction_session_timeout`): a herald that vanished mid-batch never holds
    /// its offsets rows' locks against the herald that takes over. Default `"60s"`.
    #[serde(default = "default_idle_in_transaction_timeout", with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
    /// For upserts (newest wins): an event dated more than this ahead of herald's clock goes to
    /// the dead-letter topic instead, since it would stay "newest" over every real event after it
    /// (a year-9999 timestamp would pin its row forever). Default `"1h"`.
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
}

fn default_max_clock_skew() -> Duration {
    herald_sdk::DEFAULT_MAX_CLOCK_SKEW
}

/// How events become rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Insert a row per event.
    Append,
    /// Keep one row per key, the newest event by timestamp then Kafka offset.
    Upsert,
    /// Greenfield only: history (append) and latest (upsert).
    Both,
}

/// An existing table and how event fields map onto its columns.
///
/// ```toml
/// [route.sink.table]
/// name = "ops.job_status"
/// columns = { src_system = "source", step = "stage", state = "status", row_count = "records", finished_at = "timestamp" }
/// constants = { updated_by = "herald" }
/// conflict_key = ["src_system", "step"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyTableConfig {
    /// The table, `table` or `schema.table`; unquoted identifiers (letters, digits, `_`).
    pub name: String,
    /// Column → what to write there: an event field name (`"source"`, `"records"`, any extra
    /// field), or `"$event"` (the whole event as JSON), `"$topic"`, `"$partition"`, `"$offset"`.
    pub columns: BTreeMap<String, String>,
    /// Column → a constant written on every row, e.g. a marker that the row came from Kafka so
    /// the Postgres source does not republish it: `{ updated_by = "herald" }`.
    #[serde(default)]
    pub constants: BTreeMap<String, String>,
    /// The columns of a unique index to upsert on; required for `mode = "upsert"`.
    #[serde(default)]
    pub conflict_key: Vec<String>,
}

fn default_schema() -> String {
    "public".into()
}

fn default_pool_size() -> u32 {
    2
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_statement_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_idle_in_transaction_timeout() -> Duration {
    Duration::from_secs(60)
}

/// What a mapped column receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldSource {
    /// An event field, by name.
    Field(String),
    /// The whole event as JSON.
    Event,
    /// The Kafka topic.
    Topic,
    /// The Kafka partition.
    Partition,
    /// The Kafka offset.
    Offset,
    /// A constant from the config.
    Constant(String),
}

impl FieldSource {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "$event" => FieldSource::Event,
            "$topic" => FieldSource::Topic,
            "$partition" => FieldSource::Partition,
            "$offset" => FieldSource::Offset,
            other if other.starts_with('$') => {
                return Err(format!("`{other}` is not one of $event, $topic, $partition, $offset"))
            }
            "" => return Err("an empty field name".into()),
            field => FieldSource::Field(field.to_owned()),
        })
    }
}

/// One table write: which columns get what, and append or newest-wins upsert.
#[derive(Debug, Clone)]
pub(crate) struct TablePlan {
    pub(crate) table: QualifiedName,
    pub(crate) columns: Vec<(Ident, FieldSource)>,
    pub(crate) upsert: Option<UpsertPlan>,
    /// Someone else's table (`table = …`), which herald never creates; else one of herald's own.
    pub(crate) legacy: bool,
}

impl TablePlan {
    /// A `CREATE TABLE` that fits the mapping, to show a user whose table is missing.
    pub(crate) fn fitting_ddl(&self) -> String {
        let mut lines: Vec<String> = self
            .columns
            .iter()
            .map(|(column, source)| {
                let sql_type = match source {
                    FieldSource::Field(name) if name == "timestamp" => "timestamptz",
                    FieldSource::Field(name) if name == "records" => "bigint",
                    FieldSource::Event => "jsonb",
                    FieldSource::Partition => "integer",
                    FieldSource::Offset => "bigint",
                    FieldSource::Field(_) | FieldSource::Topic | FieldSource::Constant(_) => "text",
                };
                format!("{column} {sql_type}")
            })
            .collect();
        if let Some(upsert) = &self.upsert {
            let key: Vec<String> = upsert.conflict_key.iter().map(ToString::to_string).collect();
            lines.push(format!("UNIQUE ({})", key.join(", ")));
        }
        format!("CREATE TABLE {} ({})", self.table, lines.join(", "))
    }
}

/// How an upsert decides which event is newer.
#[derive(Debug, Clone)]
pub(crate) struct UpsertPlan {
    pub(crate) conflict_key: Vec<Ident>,
    /// The column holding the event timestamp, if mapped: an older event never replaces a newer.
    pub(crate) time_column: Option<Ident>,
    /// The column holding the Kafka offset, if mapped: breaks timestamp ties.
    pub(crate) offset_column: Option<Ident>,
}

impl PostgresSinkConfig {
    /// Checks the settings without connecting: identifiers, mapping, mode.
    pub(crate) fn check(&self) -> Result<(), PostgresSinkError> {
        self.plans().map(drop)
    }

    /// herald's own schema, validated.
    pub(crate) fn schema_ident(&self) -> Result<Ident, PostgresSinkError> {
        Ident::new(&self.schema).map_err(|reason| PostgresSinkError::Config { key: "schema".into(), reason })
    }

    /// The tables to write and how, validated: identifiers, mapping and mode.
    pub(crate) fn plans(&self) -> Result<Vec<TablePlan>, PostgresSinkError> {
        let invalid = |key: &str, reason: String| PostgresSinkError::Config { key: key.into(), reason };
        let schema = self.schema_ident()?;
        let Some(legacy) = &self.table else {
            let mode = self.mode.unwrap_or(WriteMode::Both);
            let mut plans = Vec::new();
            if matches!(mode, WriteMode::Append | WriteMode::Both) {
                plans.push(greenfield_plan(&schema, "pipeline_status", None));
            }
            if matches!(mode, WriteMode::Upsert | WriteMode::Both) {
                let upsert = UpsertPlan {
                    conflict_key: vec![Ident::trusted("source"), Ident::trusted("stage")],
                    time_column: Some(Ident::trusted("event_time")),
                    offset_column: Some(Ident::trusted("kafka_offset")),
                };
                plans.push(greenfield_plan(&schema, "pipeline_status_latest", Some(upsert)));
            }
            return Ok(plans);
        };

        let table = QualifiedName::parse(&legacy.name).map_err(|reason| invalid("table.name", reason))?;
        if legacy.columns.is_empty() {
            return Err(invalid("table.columns", "map at least one column, e.g. { src_system = \"source\" }".into()));
        }
        let mut columns = Vec::new();
        for (column, source) in &legacy.columns {
            let ident = Ident::new(column).map_err(|reason| invalid("table.columns", reason))?;
            let source =
                FieldSource::parse(source).map_err(|reason| invalid(&format!("table.columns.{column}"), reason))?;
            columns.push((ident, source));
        }
        for (column, value) in &legacy.constants {
            if legacy.columns.contains_key(column) {
                return Err(invalid("table.constants", format!("column `{column}` is also in `columns`")));
            }
            let ident = Ident::new(column).map_err(|reason| invalid("table.constants", reason))?;
            columns.push((ident, FieldSource::Constant(value.clone())));
        }
        let find =
            |wanted: &FieldSource| columns.iter().find(|(_, source)| source == wanted).map(|(ident, _)| ident.clone());
        let mode =
            self.mode.unwrap_or(if legacy.conflict_key.is_empty() { WriteMode::Append } else { WriteMode::Upsert });
        let upsert = match mode {
            WriteMode::Append => None,
            WriteMode::Both => {
                return Err(invalid(
                    "mode",
                    "\"both\" needs the greenfield tables; a legacy table takes \"append\" or \"upsert\"".into(),
                ))
            }
            WriteMode::Upsert => {
                if legacy.conflict_key.is_empty() {
                    return Err(invalid("table.conflict_key", "upsert needs the columns of a unique index".into()));
                }
                let mut conflict_key = Vec::new();
                for column in &legacy.conflict_key {
                    if !columns.iter().any(|(ident, _)| ident.as_str() == column) {
                        return Err(invalid("table.conflict_key", format!("`{column}` is not a mapped column")));
                    }
                    conflict_key.push(Ident::new(column).map_err(|reason| invalid("table.conflict_key", reason))?);
                }
                Some(UpsertPlan {
                    conflict_key,
                    time_column: find(&FieldSource::Field("timestamp".into())),
                    offset_column: find(&FieldSource::Offset),
                })
            }
        };
        Ok(vec![TablePlan { table, columns, upsert, legacy: true }])
    }
}

fn greenfield_plan(schema: &Ident, table: &'static str, upsert: Option<UpsertPlan>) -> TablePlan {
    let field = |name: &str| FieldSource::Field(name.into());
    let columns = vec![
        (Ident::trusted("event"), field("event")),
        (Ident::trusted("stage"), field("stage")),
        (Ident::trusted("source"), field("source")),
        (Ident::trusted("records"), field("records")),
        (Ident::trusted("status"), field("status")),
        (Ident::trusted("event_time"), field("timestamp")),
        (Ident::trusted("payload"), FieldSource::Event),
        (Ident::trusted("origin"), FieldSource::Constant(crate::ORIGIN_KAFKA.into())),
        (Ident::trusted("kafka_topic"), FieldSource::Topic),
        (Ident::trusted("kafka_partition"), FieldSource::Partition),
        (Ident::trusted("kafka_offset"), FieldSource::Offset),
    ];
    TablePlan { table: QualifiedName::new(Some(schema.clone()), Ident::trusted(table)), columns, upsert, legacy: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_like_json: &str) -> PostgresSinkConfig {
        serde_json::from_str(toml_like_json).unwrap()
    }

    #[test]
    fn greenfield_defaults_to_history_and_latest() {
        let plans = config(r#"{"url":"postgres://x"}"#).plans().unwrap();
        let names: Vec<String> = plans.iter().map(|p| p.table.to_string()).collect();
        assert_eq!(names, [r#""public"."pipeline_status""#, r#""public"."pipeline_status_latest""#]);
        assert!(plans[0].upsert.is_none());
        let upsert = plans[1].upsert.as_ref().unwrap();
        assert_eq!(upsert.time_column.as_ref().unwrap().as_str(), "event_time");
    }

    #[test]
    fn legacy_mapping_with_conflict_key_upserts_newest_by_mapped_timestamp() {
        let plans = config(
            r#"{"url":"postgres://x","table":{"name":"ops.job_status",
                "columns":{"src_system":"source","step":"stage","state":"status","finished_at":"timestamp"},
                "constants":{"updated_by":"herald"},"conflict_key":["src_system","step"]}}"#,
        )
        .plans()
        .unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].table.to_string(), r#""ops"."job_status""#);
        let upsert = plans[0].upsert.as_ref().unwrap();
        assert_eq!(upsert.time_column.as_ref().unwrap().as_str(), "finished_at");
        assert!(upsert.offset_column.is_none());
        assert!(plans[0]
            .columns
            .iter()
            .any(|(c, s)| c.as_str() == "updated_by" && *s == FieldSource::Constant("herald".into())));
    }

    #[test]
    fn hostile_identifiers_and_bad_mappings_are_config_errors() {
        let bad = [
            r#"{"url":"x","table":{"name":"job_status; DROP TABLE x","columns":{"a":"source"}}}"#,
            r#"{"url":"x","table":{"name":"t","columns":{"a\"b":"source"}}}"#,
            r#"{"url":"x","table":{"name":"t","columns":{"a":"$nope"}}}"#,
            r#"{"url":"x","table":{"name":"t","columns":{}}}"#,
            r#"{"url":"x","mode":"upsert","table":{"name":"t","columns":{"a":"source"}}}"#,
            r#"{"url":"x","table":{"name":"t","columns":{"a":"source"},"conflict_key":["b"]}}"#,
            r#"{"url":"x","mode":"both","table":{"name":"t","columns":{"a":"source"}}}"#,
            r#"{"url":"x","schema":"Robert'); --"}"#,
        ];
        for text in bad {
            assert!(config(text).plans().is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn unknown_settings_are_rejected() {
        assert!(serde_json::from_str::<PostgresSinkConfig>(r#"{"url":"x","tabel":{}}"#).is_err());
    }
}
