//! Settings of the Postgres source.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use herald_pg::{Ident, QualifiedName};

use crate::error::SourceError;

/// `[[source]] name = "status-table", type = "postgres", url = "postgres://…", …`.
///
/// Without `table`, the source watches herald's greenfield `pipeline_status` in `schema`, and
/// skips the rows herald's sink wrote there (`origin = 'kafka'`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Connection URL (TLS with `sslmode=require` …). Never printed.
    pub url: SecretString,
    /// Schema of herald's tables (`herald_changes`, and the greenfield `pipeline_status`).
    /// Default `"public"`.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The table to watch, `table` or `schema.table`. Default: the greenfield `pipeline_status`.
    #[serde(default)]
    pub table: Option<String>,
    /// Kafka topic the events go to. Default `"pipeline.stage.events"`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Event field → column, the sink's mapping reversed, e.g.
    /// `{ source = "src_system", stage = "step", status = "state", records = "row_count", timestamp = "finished_at" }`.
    /// Default (greenfield): `event`, `stage`, `source`, `records`, `status` from the same-named
    /// columns, `timestamp` from `event_time`, and extra fields from the `payload` JSON column.
    #[serde(default)]
    pub columns: Option<BTreeMap<String, String>>,
    /// Event field → constant, for fields the table has no column for, e.g.
    /// `{ event = "STAGE_COMPLETE" }`.
    #[serde(default)]
    pub constants: BTreeMap<String, String>,
    /// The event field whose value is the Kafka key. Default `"source"`, as `herald publish`.
    #[serde(default = "default_key_field")]
    pub key_field: String,
    /// Rows not to publish because herald's sink wrote them (no loops). Default (greenfield):
    /// `{ column = "origin", value = "kafka" }`; for a legacy table, the sink's marker constant,
    /// e.g. `{ column = "updated_by", value = "herald" }`.
    #[serde(default)]
    pub skip_when: Option<SkipWhen>,
    /// Where rows that cannot become events go, with the reason in `__connect.errors.*` headers.
    /// Default `"herald.dlq.<name>"`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// The compacted topic holding each source's cursor, written in the same Kafka transaction
    /// as the events. Default `"herald.source-offsets"`.
    #[serde(default = "default_offsets_topic")]
    pub offsets_topic: String,
    /// Most changes published in one Kafka transaction. Default `500`.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Safety interval: besides `LISTEN`, changes are looked for this often. Default `"5s"`.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How changes are captured. `"trigger"` (default): a trigger records each change in
    /// `herald_changes`; works on any Postgres and role that may create a trigger. `"wal"`:
    /// logical replication (pgoutput) from a replication slot; no trigger, no extra writes, but
    /// needs `wal_level = logical` and a role with the `REPLICATION` attribute, and a slot that
    /// is not read pins WAL (see `max_retained_wal_mb`).
    #[serde(default)]
    pub capture: Capture,
    /// WAL capture: the replication slot. Default `herald_<source name>` (characters other than
    /// letters, digits and `_` become `_`).
    #[serde(default)]
    pub slot: Option<String>,
    /// WAL capture: the publication limited to the watched table. Default: the slot's name.
    /// herald creates it when its role owns the table; otherwise a DBA creates it with
    /// `CREATE PUBLICATION <name> FOR TABLE <table> WITH (publish = 'insert, update')`.
    #[serde(default)]
    pub publication: Option<String>,
    /// WAL capture: warn when the slot holds back more WAL than this many MiB (a stopped herald
    /// pins WAL until the disk is full; bound it on the server with `max_slot_wal_keep_size`).
    /// Default `1024`.
    #[serde(default = "default_max_retained_wal_mb")]
    pub max_retained_wal_mb: u64,
    /// Warn when `herald_changes` holds more than this many rows of the watched table.
    /// Published changes are deleted once every source of the table has published them, so
    /// the table normally holds about one batch; a growing count means a source of this table
    /// is stopped or removed (see `herald migrate --drop-source`). Default `100000`.
    #[serde(default = "default_max_capture_rows")]
    pub max_capture_rows: i64,
    /// What the first start (no position in Kafka yet) publishes of what the table already
    /// holds. `"none"` (default): nothing, changes from then on. `"latest"`: the latest row of
    /// each (source, stage), read in one snapshot; the changes of the transactions that
    /// snapshot sees are then not streamed again, and the ones it does not see are, so nothing
    /// is missed or doubled between the two.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// What to do when the capture was lost behind herald's back (a slot dropped or advanced, a
    /// trigger dropped or disabled, a restore or failover). `"stop"` (default): stop, saying what
    /// was lost and since when, and the ways forward. `"resync"`: install the capture again,
    /// compare the table's latest rows with the topic's latest events, publish the rows that
    /// differ (exactly once, with the new position) and stream on; a WARN says what was lost.
    #[serde(default)]
    pub on_capture_lost: OnCaptureLost,
}

/// What the first start publishes of the table's existing rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Nothing: changes from the first start on.
    #[default]
    None,
    /// The latest row of each (source, stage).
    Latest,
}

/// What to do when the capture was lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCaptureLost {
    /// Stop with an error that says what was lost.
    #[default]
    Stop,
    /// Reinstall, publish what the topic lacks of the table's latest rows, stream on.
    Resync,
}

/// How a source captures the changes of its table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// A trigger writes each change into `herald_changes`; herald reads it in commit-safe order.
    #[default]
    Trigger,
    /// Logical replication: pgoutput from a replication slot, in the WAL's commit order.
    Wal,
}

/// Skip rows whose `column` holds `value`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkipWhen {
    /// The column.
    pub column: String,
    /// The value marking rows herald's sink wrote.
    pub value: String,
}

fn default_schema() -> String {
    "public".into()
}

fn default_topic() -> String {
    "pipeline.stage.events".into()
}

fn default_key_field() -> String {
    "source".into()
}

fn default_offsets_topic() -> String {
    "herald.source-offsets".into()
}

fn default_batch_size() -> usize {
    500
}

fn default_max_retained_wal_mb() -> u64 {
    1024
}

fn default_max_capture_rows() -> i64 {
    100_000
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}

/// The validated plan: which table, how rows become events.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// herald's schema (`herald_changes`, and the greenfield tables).
    pub(crate) schema: Ident,
    /// Whether the watched table is herald's greenfield `pipeline_status` (created if missing).
    pub(crate) greenfield: bool,
    /// The watched table as written in the config (resolved through the catalog later).
    pub(crate) table: String,
    pub(crate) columns: BTreeMap<String, String>,
    pub(crate) payload_column: Option<String>,
    pub(crate) skip_when: Option<SkipWhen>,
}

impl PostgresSourceConfig {
    /// The replication slot of source `name` (WAL capture).
    pub fn slot_name(&self, name: &str) -> String {
        self.slot.clone().unwrap_or_else(|| {
            let cleaned: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_ascii_lowercase() } else { '_' })
                .collect();
            let mut slot = format!("herald_{cleaned}");
            slot.truncate(63);
            slot
        })
    }

    /// The publication of source `name` (WAL capture).
    pub fn publication_name(&self, name: &str) -> String {
        self.publication.clone().unwrap_or_else(|| self.slot_name(name))
    }

    /// Checks the settings without connecting.
    pub(crate) fn check_settings(&self) -> Result<(), SourceError> {
        self.plan().map(drop)
    }

    pub(crate) fn plan(&self) -> Result<Plan, SourceError> {
        let invalid = |key: &str, reason: String| Err(SourceError::Config { key: key.into(), reason });
        let schema = match Ident::new(&self.schema) {
            Ok(schema) => schema,
            Err(reason) => return invalid("schema", reason),
        };
        if let Some(table) = &self.table {
            if let Err(reason) = QualifiedName::parse(table) {
                return invalid("table", format!("`{table}` is not `table` or `schema.table`: {reason}"));
            }
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return invalid("batch_size", format!("{} is out of range 1..=10000", self.batch_size));
        }
        if let Some(slot) = &self.slot {
            let valid = !slot.is_empty()
                && slot.len() <= 63
                && slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return invalid("slot", format!("`{slot}`: a slot name is 1 to 63 lower-case letters, digits or `_`"));
            }
        }
        if let Some(publication) = &self.publication {
            if let Err(reason) = Ident::new(publication) {
                return invalid("publication", reason);
            }
        }
        if self.capture == Capture::Trigger && (self.slot.is_some() || self.publication.is_some()) {
            return invalid("capture", "`slot` and `publication` are for `capture = \"wal\"`".into());
        }
        if self.max_capture_rows < 1 {
            return invalid("max_capture_rows", "must be at least 1".into());
        }
        if self.poll_interval.is_zero() {
            return invalid("poll_interval", "must be greater than zero".into());
        }
        let greenfield = self.table.is_none();
        let columns = match &self.columns {
            Some(columns) => columns.clone(),
            None if greenfield => [
                ("event", "event"),
                ("stage", "stage"),
                ("source", "source"),
                ("records", "records"),
                ("status", "status"),
                ("timestamp", "event_time"),
            ]
            .into_iter()
            .map(|(field, column)| (field.to_owned(), column.to_owned()))
            .collect(),
            None => return invalid("columns", "a legacy table needs `columns` (event field → column)".into()),
        };
        for required in ["event", "stage", "source", "status", "timestamp"] {
            if !columns.contains_key(required) && !self.constants.contains_key(required) {
                return invalid("columns", format!("no column or constant gives the event field `{required}`"));
            }
        }
        if self.snapshot == SnapshotMode::Latest || self.on_capture_lost == OnCaptureLost::Resync {
            for needed in ["source", "stage", "timestamp"] {
                if !columns.contains_key(needed) {
                    let key = if self.snapshot == SnapshotMode::Latest { "snapshot" } else { "on_capture_lost" };
                    return invalid(
                        key,
                        format!("reading the latest row of each (source, stage) needs a column for `{needed}`"),
                    );
                }
            }
        }
        let skip_when = match (&self.skip_when, greenfield) {
            (Some(skip), _) => Some(skip.clone()),
            (None, true) => Some(SkipWhen { column: "origin".into(), value: "kafka".into() }),
            (None, false) => None,
        };
        Ok(Plan {
            schema,
            greenfield,
            table: self.table.clone().unwrap_or_else(|| format!("{}.pipeline_status", self.schema)),
            columns,
            payload_column: greenfield.then(|| "payload".to_owned()),
            skip_when,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greenfield_defaults_and_legacy_requirements() {
        let greenfield: PostgresSourceConfig = serde_json::from_str(r#"{"url":"postgres://x"}"#).unwrap();
        let plan = greenfield.plan().unwrap();
        assert_eq!(plan.table, "public.pipeline_status");
        assert_eq!(plan.columns["timestamp"], "event_time");
        assert_eq!(plan.skip_when.unwrap().value, "kafka");

        let legacy: PostgresSourceConfig = serde_json::from_str(
            r#"{"url":"x","table":"ops.job_status","constants":{"event":"STAGE_COMPLETE"},
                "columns":{"source":"src_system","stage":"step","status":"state","timestamp":"finished_at"}}"#,
        )
        .unwrap();
        assert!(legacy.plan().unwrap().skip_when.is_none());

        for bad in [
            r#"{"url":"x","table":"ops.job_status"}"#,
            r#"{"url":"x","table":"a;b","columns":{}}"#,
            r#"{"url":"x","table":"t","columns":{"source":"s","stage":"st","status":"x","timestamp":"t"}}"#,
            r#"{"url":"x","batch_size":0}"#,
        ] {
            assert!(serde_json::from_str::<PostgresSourceConfig>(bad).unwrap().plan().is_err(), "{bad}");
        }
    }
}
