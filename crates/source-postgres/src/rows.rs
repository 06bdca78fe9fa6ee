//! Rows become stage events: the column mapping, constants, the key, loop prevention and dead
//! letters, the same for both capture modes.

use herald_kafka::headers::connect as headers;
use herald_sdk::sink::ORIGIN_HEADER;
use herald_sdk::StageEvent;
use serde_json::{Map, Value};
use tracing::warn;

use herald_sdk::printable::{printable, LOG_CHARS};

use crate::config::{Plan, PostgresSourceConfig};
use crate::publisher::Outgoing;

/// The most of a too-large event a dead letter keeps.
const TRIMMED_BYTES: usize = 64 * 1024;

/// How one source turns rows of its table into messages.
pub(crate) struct RowMapper<'a> {
    pub(crate) name: &'a str,
    pub(crate) plan: &'a Plan,
    pub(crate) config: &'a PostgresSourceConfig,
    /// The watched table, `schema.name`.
    pub(crate) table: &'a str,
    pub(crate) dead_letter_topic: &'a str,
}

impl RowMapper<'_> {
    /// The message for one changed `row` (at `position`, by `operation`): its event, a dead
    /// letter when it cannot be one, or nothing for a row herald's own sink wrote.
    pub(crate) fn message(
        &self,
        row: &Map<String, Value>,
        position: &str,
        operation: &str,
        writer: Option<&str>,
    ) -> Option<Outgoing> {
        if self.skipped(row) {
            return None;
        }
        let origin = format!("postgres:{}", self.table);
        let mut provenance = vec![
            (ORIGIN_HEADER, origin.clone()),
            ("herald.origin.change", position.to_owned()),
            ("herald.origin.operation", operation.to_owned()),
        ];
        if let Some(writer) = writer {
            provenance.push(("herald.origin.writer", writer.to_owned()));
        }
        match self.event(row) {
            Ok((event, key)) => Some(Outgoing {
                topic: self.config.topic.clone(),
                key: Some(key),
                value: event.to_json(),
                headers: provenance,
            }),
            Err(reason) => {
                warn!(source = self.name, change = position, reason = %printable(&reason, LOG_CHARS), "Row cannot become a stage event; sent to the dead-letter topic.");
                let value = Value::Object(row.clone()).to_string();
                Some(self.letter(provenance, None, value, "herald_core::event::EventError", reason))
            }
        }
    }

    /// A dead letter for a message Kafka refused as too large (`error`): the key and
    /// provenance (the change id or LSN) kept, the payload cut to fit, and the cut said in
    /// `herald.trimmed` and in the reason, with the size.
    pub(crate) fn too_large(&self, message: Outgoing, error: &str) -> Outgoing {
        let Outgoing { key, value, headers: provenance, .. } = message;
        let size = value.len();
        // A letter refused again is cut again, to a sixteenth.
        let keep = TRIMMED_BYTES.min(size / 16);
        let mut end = keep;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let change =
            provenance.iter().find(|(name, _)| *name == "herald.origin.change").map_or("?", |(_, v)| v.as_str());
        warn!(
            source = self.name,
            change,
            bytes = size,
            error,
            "A row's event is larger than Kafka takes; a trimmed copy goes to the dead-letter topic."
        );
        let reason = format!(
            "the event is {size} bytes, more than Kafka takes ({error}); the dead letter keeps its first {end}"
        );
        let mut provenance: Vec<(&'static str, String)> =
            provenance.into_iter().filter(|(name, _)| name.starts_with("herald.origin")).collect();
        provenance.push(("herald.trimmed", format!("kept {end} of {size} bytes")));
        self.letter(provenance, key, value[..end].to_owned(), "herald_source_postgres::MessageSizeTooLarge", reason)
    }

    /// A dead letter: `value` with the provenance and Kafka Connect's error headers.
    fn letter(
        &self,
        mut provenance: Vec<(&'static str, String)>,
        key: Option<String>,
        value: String,
        class: &str,
        reason: String,
    ) -> Outgoing {
        let origin = format!("postgres:{}", self.table);
        let position = provenance
            .iter()
            .find(|(name, _)| *name == "herald.origin.change")
            .map_or_else(String::new, |(_, v)| v.clone());
        provenance.extend([
            (headers::TOPIC, origin),
            (headers::PARTITION, "-1".to_owned()),
            (headers::OFFSET, position),
            (headers::CONNECTOR, self.name.to_owned()),
            (headers::TASK_ID, "0".to_owned()),
            (headers::STAGE, "VALUE_CONVERTER".to_owned()),
            (headers::CLASS, "herald_source_postgres".to_owned()),
            (headers::EXCEPTION_CLASS, class.to_owned()),
            (headers::EXCEPTION_MESSAGE, reason.clone()),
            (headers::EXCEPTION_STACKTRACE, reason),
        ]);
        Outgoing { topic: self.dead_letter_topic.to_owned(), key, value, headers: provenance }
    }

    /// Whether herald's own sink wrote `row` (the `skip_when` marker): it is never published.
    pub(crate) fn skipped(&self, row: &Map<String, Value>) -> bool {
        self.plan
            .skip_when
            .as_ref()
            .is_some_and(|skip| row.get(&skip.column).and_then(Value::as_str) == Some(skip.value.as_str()))
    }

    /// The row as a stage event, and its key.
    pub(crate) fn event(&self, row: &Map<String, Value>) -> Result<(StageEvent, String), String> {
        let mut object = Map::new();
        if let Some(Value::Object(payload)) = self.plan.payload_column.as_ref().and_then(|c| row.get(c)) {
            object.extend(payload.clone());
        }
        for (field, column) in &self.plan.columns {
            match row.get(column) {
                Some(Value::Null) | None => {
                    object.remove(field);
                }
                Some(value) => {
                    object.insert(field.clone(), value.clone());
                }
            }
        }
        for (field, value) in &self.config.constants {
            object.entry(field.clone()).or_insert_with(|| Value::String(value.clone()));
        }
        // A required field whose column is NULL: say which column, not only which field.
        for field in ["event", "stage", "source", "timestamp", "status"] {
            if !object.contains_key(field) {
                if let Some(column) = self.plan.columns.get(field) {
                    return Err(format!("column `{column}` (the event's `{field}`) is NULL"));
                }
            }
        }
        let bytes = Value::Object(object).to_string();
        let event = StageEvent::from_json(bytes.as_bytes()).map_err(|err| herald_sdk::error_chain(&err).join(": "))?;
        let key = event
            .field(&self.config.key_field)
            .map(std::borrow::Cow::into_owned)
            .ok_or_else(|| format!("the event has no key field `{}`", self.config.key_field))?;
        Ok((event, key))
    }
}
