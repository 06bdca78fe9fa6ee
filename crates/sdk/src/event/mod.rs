//! The stage event: the small JSON message a pipeline stage publishes when it finishes a unit of work.

//!
//! Layout: this file (the event, its parse, its errors), `index.rs` (validating a payload and
//! noting where its known fields lie, without building an event), `timestamp.rs` (the
//! timestamp, read fast in the usual shapes, and the clock-skew check of newest-wins sinks).

mod index;
mod timestamp;

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

pub(crate) use index::EventIndex;
pub use timestamp::{check_clock_skew, AheadOfClock, EventTimestamp, TimestampError, DEFAULT_MAX_CLOCK_SKEW};

/// The event name a finished stage publishes.
pub const STAGE_COMPLETE: &str = "STAGE_COMPLETE";

/// A stage event, as the seed's Python producer writes it:
///
/// ```json
/// {"event":"STAGE_COMPLETE","stage":"bronze_ingest","source":"OrdersDB","records":14823,
///  "timestamp":"2026-11-26T10:15:00.123456","status":"SUCCESS"}
/// ```
///
/// Fields herald does not know are kept in [`StageEvent::extra`] and written back unchanged, in
/// their original order, after the known ones; the timestamp is written back exactly as received.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageEvent {
    /// What happened, e.g. `STAGE_COMPLETE`.
    pub event: String,
    /// The pipeline stage that emitted the event, e.g. `bronze_ingest`.
    pub stage: String,
    /// The data source the unit of work was about, e.g. `OrdersDB`; also the Kafka key.
    pub source: String,
    /// How many records the stage processed, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<i64>,
    /// When the stage finished.
    pub timestamp: EventTimestamp,
    /// The outcome, e.g. `SUCCESS` or `FAILED`.
    pub status: String,
    /// Every other field of the message, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StageEvent {
    /// Whether this event is a stage's outcome: a `STAGE_COMPLETE` whose status is `SUCCESS`
    /// or `FAILED`.
    pub fn is_outcome(&self) -> bool {
        self.event == STAGE_COMPLETE && (self.status == "SUCCESS" || self.status == "FAILED")
    }

    /// Whether this event says a new run of its stage began, which makes an earlier outcome
    /// stale: a `STAGE_STARTED`, or a `STAGE_COMPLETE` whose status is neither `SUCCESS` nor
    /// `FAILED` (`RUNNING`). A table upserted by (source, stage) then shows this row, and a
    /// poller reading it waits: `wait`, expectations and the board decide "done" the same way.
    pub fn starts_a_run(&self) -> bool {
        self.event == "STAGE_STARTED" || (self.event == STAGE_COMPLETE && !self.is_outcome())
    }

    /// Parses a Kafka message value. The error says which field is missing or has the wrong type.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EventError> {
        Self::from_json_str(std::str::from_utf8(bytes).map_err(EventError::NotUtf8)?)
    }

    /// [`StageEvent::from_json`] for a payload already known to be UTF-8.
    pub fn from_json_str(text: &str) -> Result<Self, EventError> {
        // The default recursion limit (128) bounds nesting, so a hostile message cannot blow the stack.
        match serde_json::from_str(text) {
            Ok(event) => Ok(event),
            // Parse again, tracking the path, only to say where the problem is.
            Err(_) => {
                let mut deserializer = serde_json::Deserializer::from_str(text);
                let _: StageEvent = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
                    let path = err.path().to_string();
                    EventError::Invalid { path, source: err.into_inner() }
                })?;
                let end = deserializer.end();
                Err(EventError::Invalid { path: ".".into(), source: end.err().unwrap_or_else(|| trailing_error(text)) })
            }
        }
    }

    /// Checks that `text` is a stage event that [`StageEvent::from_json_str`] takes, without
    /// building one: nothing is copied or allocated unless a string holds escapes. The error is
    /// `from_json_str`'s. Fields of other names are read in full, as `serde_json::Value` reads
    /// them, so whatever passes here parses.
    pub fn validate(text: &str) -> Result<(), EventError> {
        Self::index(text).map(drop)
    }

    /// [`StageEvent::validate`], noting where the known fields lie in `text`, so they can be
    /// read from it without building the event.
    pub(crate) fn index(text: &str) -> Result<EventIndex, EventError> {
        match index::read(text) {
            Ok(index) => Ok(index),
            // The parse itself says where the problem is.
            Err(_) => match Self::from_json_str(text) {
                Err(err) => Err(err),
                // Unreachable while the two agree (unit-tested); an index without places reads
                // every field from the parse.
                Ok(event) => Ok(EventIndex::unplaced(&event)),
            },
        }
    }

    /// The JSON text of the event, on one line.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, integers and `Value`s into a String cannot fail:
        // serde_json only fails on non-string map keys or a failing writer, and neither is possible.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The Kafka key of the event: its source, as the seed producer keys its messages.
    pub fn key(&self) -> &str {
        &self.source
    }

    /// The value of a top-level field as text, for filters and templates: strings as they are,
    /// numbers and booleans in their JSON form; `None` for a missing, null, array or object field.
    /// Strings are borrowed: filters, templates and sinks read fields of every event.
    pub fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            "event" => Some(Cow::Borrowed(&self.event)),
            "stage" => Some(Cow::Borrowed(&self.stage)),
            "source" => Some(Cow::Borrowed(&self.source)),
            "status" => Some(Cow::Borrowed(&self.status)),
            "timestamp" => Some(Cow::Borrowed(self.timestamp.as_str())),
            "records" => self.records.map(|n| Cow::Owned(n.to_string())),
            other => match self.extra.get(other)? {
                Value::String(s) => Some(Cow::Borrowed(s)),
                Value::Number(n) => Some(Cow::Owned(n.to_string())),
                Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
                Value::Null | Value::Array(_) | Value::Object(_) => None,
            },
        }
    }
}

/// serde_json's own error for `text`, which the fast parse refused but the tracking parse took.
fn trailing_error(text: &str) -> serde_json::Error {
    serde_json::from_str::<StageEvent>(text).err().unwrap_or_else(|| serde::de::Error::custom("not a stage event"))
}

/// Deserialized by hand rather than derived with `#[serde(flatten)]`, which buffers every field
/// before reading it and made parsing herald's most expensive step per event.
impl<'de> Deserialize<'de> for StageEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(StageEventVisitor)
    }
}

/// A key of a stage event object: a known field, or any other (its name borrowed from the
/// text when it holds no escapes).
pub(super) enum Field<'de> {
    Event,
    Stage,
    Source,
    Records,
    Timestamp,
    Status,
    Other(Cow<'de, str>),
}

impl Field<'_> {
    /// The fields an event must have.
    const REQUIRED: [Field<'static>; 5] = [Field::Event, Field::Stage, Field::Source, Field::Timestamp, Field::Status];

    /// The name of a known field, for errors (another field is never named in one).
    fn name(&self) -> &'static str {
        match self {
            Field::Event => "event",
            Field::Stage => "stage",
            Field::Source => "source",
            Field::Records => "records",
            Field::Timestamp => "timestamp",
            Field::Status => "status",
            Field::Other(_) => "",
        }
    }

    /// A known field's bit in a set of fields seen; 0 for any other.
    fn bit(&self) -> u8 {
        match self {
            Field::Event => 1,
            Field::Stage => 2,
            Field::Source => 4,
            Field::Records => 8,
            Field::Timestamp => 16,
            Field::Status => 32,
            Field::Other(_) => 0,
        }
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl FieldVisitor {
            fn known(name: &str) -> Option<Field<'static>> {
                Some(match name {
                    "event" => Field::Event,
                    "stage" => Field::Stage,
                    "source" => Field::Source,
                    "records" => Field::Records,
                    "timestamp" => Field::Timestamp,
                    "status" => Field::Status,
                    _ => return None,
                })
            }
        }
        impl<'de> serde::de::Visitor<'de> for FieldVisitor {
            type Value = Field<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a field name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, name: &'de str) -> Result<Field<'de>, E> {
                Ok(Self::known(name).unwrap_or(Field::Other(Cow::Borrowed(name))))
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Field<'de>, E> {
                Ok(Self::known(name).unwrap_or_else(|| Field::Other(Cow::Owned(name.to_owned()))))
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

struct StageEventVisitor;

impl<'de> serde::de::Visitor<'de> for StageEventVisitor {
    type Value = StageEvent;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a stage event object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StageEvent, A::Error> {
        use serde::de::Error;
        fn once<T, E: Error>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
            if slot.replace(value).is_some() {
                return Err(E::duplicate_field(name));
            }
            Ok(())
        }
        let (mut event, mut stage, mut source, mut timestamp, mut status) = (None, None, None, None, None);
        let mut records: Option<Option<i64>> = None;
        let mut extra = Map::new();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Event => once(&mut event, "event", map.next_value::<String>()?)?,
                Field::Stage => once(&mut stage, "stage", map.next_value::<String>()?)?,
                Field::Source => once(&mut source, "source", map.next_value::<String>()?)?,
                Field::Records => once(&mut records, "records", map.next_value::<Option<i64>>()?)?,
                Field::Timestamp => once(&mut timestamp, "timestamp", map.next_value::<EventTimestamp>()?)?,
                Field::Status => once(&mut status, "status", map.next_value::<String>()?)?,
                Field::Other(name) => {
                    let value = map.next_value::<Value>()?;
                    extra.insert(name.into_owned(), value);
                }
            }
        }
        Ok(StageEvent {
            event: event.ok_or_else(|| A::Error::missing_field("event"))?,
            stage: stage.ok_or_else(|| A::Error::missing_field("stage"))?,
            source: source.ok_or_else(|| A::Error::missing_field("source"))?,
            records: records.flatten(),
            timestamp: timestamp.ok_or_else(|| A::Error::missing_field("timestamp"))?,
            status: status.ok_or_else(|| A::Error::missing_field("status"))?,
            extra,
        })
    }
}

/// Why a message is not a valid stage event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The message value is not UTF-8 text.
    #[error("message value is not UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// The message is not JSON, or not a stage event (a required field is missing or mistyped).
    #[error("message is not a valid stage event at `{path}`")]
    Invalid {
        /// Where in the message the problem is (`.` for the whole message).
        path: String,
        /// What serde_json found there.
        #[source]
        source: serde_json::Error,
    },
    /// The message has no value at all (a tombstone).
    #[error("message has no value")]
    Empty,
    /// The message is not an OpenLineage event the route's mapping can read (`input =
    /// "openlineage"`).
    #[error("message is not an OpenLineage run event herald can map")]
    NotLineage(#[source] Box<crate::openlineage::LineageError>),
    /// The message is larger than the route accepts.
    #[error("message is {size} bytes, over the route's max_message_bytes of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl EventError {
    /// The error's type name, for dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::NotUtf8(_) => "herald_core::event::EventError::NotUtf8",
            EventError::Invalid { .. } => "herald_core::event::EventError::Invalid",
            EventError::Empty => "herald_core::event::EventError::Empty",
            EventError::TooLarge { .. } => "herald_core::event::EventError::TooLarge",
            EventError::NotLineage(_) => "herald_core::event::EventError::NotLineage",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"event": "STAGE_COMPLETE", "stage": "bronze_ingest", "source": "OrdersDB", "records": 14823, "timestamp": "2026-11-26T10:15:00.123456", "status": "SUCCESS"}"#;

    #[test]
    fn parses_the_seed_producers_message_with_naive_timestamp_as_utc() {
        let event = StageEvent::from_json(SEED.as_bytes()).unwrap();
        assert_eq!(event.event, "STAGE_COMPLETE");
        assert_eq!(event.stage, "bronze_ingest");
        assert_eq!(event.key(), "OrdersDB");
        assert_eq!(event.records, Some(14823));
        assert_eq!(event.status, "SUCCESS");
        assert_eq!(event.timestamp.instant().to_rfc3339(), "2026-11-26T10:15:00.123456+00:00");
        assert!(event.extra.is_empty());
    }

    #[test]
    fn reemits_unknown_fields_and_the_raw_timestamp_unchanged() {
        let input = r#"{"event":"STAGE_COMPLETE","stage":"s","source":"A","records":1,"timestamp":"2026-11-26 10:15:00","status":"SUCCESS","run_id":"r-9","meta":{"b":1,"a":[true,null]},"attempt":2}"#;
        let event = StageEvent::from_json(input.as_bytes()).unwrap();
        assert_eq!(event.to_json(), input);
    }

    #[test]
    fn validation_takes_exactly_what_the_parse_takes() {
        let cases = [
            SEED,
            r#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00Z","status":"S"}"#,
            r#"{"event":"E","stage":"s","source":"A","records":null,"timestamp":"2026-11-26 10:15:00","status":"S","meta":{"b":[1,2.5,-3e10,true,null,"x\u00e9"]}}"#,
            r#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S","x":1,"x":2}"#,
            r#"{"event":"E\n","stage":"s\"","source":"A","timestamp":"2026-11-26T10:15:00","status":"S"}"#,
            // Refused by both:
            r#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00"}"#,
            r#"{"event":"E","event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S"}"#,
            r#"{"event":"E","stage":"s","source":"A","records":"12","timestamp":"2026-11-26T10:15:00","status":"S"}"#,
            r#"{"event":"E","stage":"s","source":"A","records":1.5,"timestamp":"2026-11-26T10:15:00","status":"S"}"#,
            r#"{"event":"E","stage":7,"source":"A","timestamp":"2026-11-26T10:15:00","status":"S"}"#,
            r#"{"event":"E","stage":"s","source":"A","timestamp":"yesterday","status":"S"}"#,
            r#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S","x":"\ud800"}"#,
            r#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S","x":[1e400]}"#,
            r#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S","x":{"k":"\q"}}"#,
            r#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S"} trailing"#,
            r#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S""#,
            r#"["event","E"]"#,
            "",
        ];
        for text in cases {
            let parsed = StageEvent::from_json_str(text);
            let validated = StageEvent::validate(text);
            assert_eq!(validated.is_ok(), parsed.is_ok(), "{text}");
            if let (Err(validated), Err(parsed)) = (validated, parsed) {
                assert_eq!(validated.to_string(), parsed.to_string(), "the parse's own error: {text}");
            }
        }
    }

    /// What chrono alone makes of `text`: the reading the fast path must agree with.

    #[test]
    fn missing_field_is_named_in_the_error() {
        let err = StageEvent::from_json(
            br#"{"event":"STAGE_COMPLETE","stage":"s","timestamp":"2026-11-26T10:15:00","status":"SUCCESS"}"#,
        )
        .unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(text.contains("missing field `source`"), "{text}");
    }

    #[test]
    fn wrong_type_is_located_by_path() {
        let err = StageEvent::from_json(br#"{"event":"E","stage":"s","source":"A","records":"many","timestamp":"2026-11-26T10:15:00","status":"SUCCESS"}"#)
            .unwrap_err();
        match err {
            EventError::Invalid { path, .. } => assert_eq!(path, "records"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_timestamp_not_json_and_not_utf8_are_errors() {
        let bad_time =
            StageEvent::from_json(br#"{"event":"E","stage":"s","source":"A","timestamp":"yesterday","status":"S"}"#);
        assert!(matches!(bad_time, Err(EventError::Invalid { ref path, .. }) if path == "timestamp"));
        assert!(matches!(StageEvent::from_json(b"not json"), Err(EventError::Invalid { .. })));
        assert!(matches!(StageEvent::from_json(&[0xff, 0xfe]), Err(EventError::NotUtf8(_))));
        assert!(matches!(StageEvent::from_json(b"[1,2]"), Err(EventError::Invalid { .. })));
        assert!(StageEvent::from_json(format!("{SEED} trailing").as_bytes()).is_err());
    }

    #[test]
    fn deeply_nested_input_is_rejected_without_overflowing_the_stack() {
        let mut deep = String::from(
            r#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:15:00","status":"S","x":"#,
        );
        deep.push_str(&"[".repeat(10_000));
        deep.push_str(&"]".repeat(10_000));
        deep.push('}');
        assert!(StageEvent::from_json(deep.as_bytes()).is_err());
    }

    #[test]
    fn field_reads_known_and_extra_fields_as_text() {
        let event = StageEvent::from_json(
            br#"{"event":"E","stage":"s","source":"A","records":7,"timestamp":"2026-11-26T10:15:00","status":"S","n":1.5,"flag":true,"obj":{}}"#,
        )
        .unwrap();
        assert_eq!(event.field("records").as_deref(), Some("7"));
        assert_eq!(event.field("n").as_deref(), Some("1.5"));
        assert_eq!(event.field("flag").as_deref(), Some("true"));
        assert_eq!(event.field("obj"), None);
        assert_eq!(event.field("absent"), None);
    }
}
