//! The stage event: the small JSON message a pipeline stage publishes when it finishes a unit of work.

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

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
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let bounds = Bounds { start: text.as_ptr().addr(), len: text.len() };
        match deserializer.deserialize_map(IndexVisitor { bounds }).and_then(|index| deserializer.end().map(|()| index))
        {
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
            "timestamp" => Some(Cow::Borrowed(&self.timestamp.raw)),
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
enum Field<'de> {
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

/// Where a stage event's known fields lie in its JSON text, as [`StageEvent::index`] found them:
/// enough to read them without building a [`StageEvent`]. A text field whose JSON string holds
/// escapes has no place (its text is not its bytes): reading it parses the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventIndex {
    event: Option<Span>,
    stage: Option<Span>,
    source: Option<Span>,
    status: Option<Span>,
    timestamp: Option<Span>,
    /// The `records` field.
    pub(crate) records: Option<i64>,
    /// The instant the timestamp names.
    pub(crate) instant: DateTime<Utc>,
}

impl EventIndex {
    /// An index of `event` that places no field (every text field is read from the event).
    fn unplaced(event: &StageEvent) -> Self {
        Self {
            event: None,
            stage: None,
            source: None,
            status: None,
            timestamp: None,
            records: event.records,
            instant: event.timestamp.instant(),
        }
    }

    /// Known text field `name` in `text` (the JSON the index was made from); `None` for a field
    /// without a place, or any other name.
    pub(crate) fn text_of<'t>(&self, text: &'t str, name: &str) -> Option<&'t str> {
        let span = match name {
            "event" => self.event,
            "stage" => self.stage,
            "source" => self.source,
            "status" => self.status,
            "timestamp" => self.timestamp,
            _ => None,
        }?;
        text.get(span.start.get() as usize..span.end as usize)
    }
}

/// Where a string lies in the text, by byte offsets (a message is far below 4 GiB). A string's
/// text never starts at 0 (its opening quote comes first), so an absent span costs no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: NonZeroU32,
    end: u32,
}

/// The text being indexed: its address and length, to place the strings borrowed from it.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    start: usize,
    len: usize,
}

impl Bounds {
    /// Where `part`, borrowed from the text, lies in it.
    fn span_of(self, part: &str) -> Option<Span> {
        let start = part.as_ptr().addr().checked_sub(self.start)?;
        let end = start.checked_add(part.len()).filter(|&end| end <= self.len)?;
        Some(Span { start: NonZeroU32::new(u32::try_from(start).ok()?)?, end: u32::try_from(end).ok()? })
    }
}

/// [`StageEventVisitor`]'s rules, keeping only where the known fields are.
struct IndexVisitor {
    bounds: Bounds,
}

impl<'de> serde::de::Visitor<'de> for IndexVisitor {
    type Value = EventIndex;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a stage event object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<EventIndex, A::Error> {
        use serde::de::Error;
        let text = |map: &mut A| map.next_value_seed(Located { bounds: self.bounds, timestamp: false });
        let mut seen = 0u8;
        let (mut event, mut stage, mut source, mut status, mut timestamp) = (None, None, None, None, None);
        let (mut records, mut instant) = (None, None);
        while let Some(field) = map.next_key::<Field<'de>>()? {
            if seen & field.bit() != 0 {
                return Err(A::Error::duplicate_field(field.name()));
            }
            seen |= field.bit();
            match field {
                Field::Event => event = text(&mut map)?.0,
                Field::Stage => stage = text(&mut map)?.0,
                Field::Source => source = text(&mut map)?.0,
                Field::Status => status = text(&mut map)?.0,
                Field::Records => records = map.next_value::<Option<i64>>()?,
                Field::Timestamp => {
                    (timestamp, instant) = map.next_value_seed(Located { bounds: self.bounds, timestamp: true })?;
                }
                Field::Other(_) => {
                    map.next_value::<AnyJson>()?;
                }
            }
        }
        if let Some(field) = Field::REQUIRED.iter().find(|field| seen & field.bit() == 0) {
            return Err(A::Error::missing_field(field.name()));
        }
        let instant = instant.ok_or_else(|| A::Error::missing_field("timestamp"))?;
        Ok(EventIndex { event, stage, source, status, timestamp, records, instant })
    }
}

/// A JSON string, and where it lies in the text when it is borrowed from it (holds no escapes).
/// For `timestamp`, it must be one [`EventTimestamp`] reads, and the instant it names comes too.
struct Located {
    bounds: Bounds,
    timestamp: bool,
}

impl Located {
    fn read<E: serde::de::Error>(
        &self,
        text: &str,
        span: Option<Span>,
    ) -> Result<(Option<Span>, Option<DateTime<Utc>>), E> {
        if !self.timestamp {
            return Ok((span, None));
        }
        match read_instant(text) {
            Some(instant) => Ok((span, Some(instant))),
            None => Err(E::custom(TimestampError { raw: text.to_owned() })),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Located {
    type Value = (Option<Span>, Option<DateTime<Utc>>);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Located {
    type Value = (Option<Span>, Option<DateTime<Utc>>);

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        self.read(text, self.bounds.span_of(text))
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        self.read(text, None)
    }
}

/// Any JSON value, read in full (strings decoded, numbers parsed) as `serde_json::Value` reads
/// it, and kept nowhere.
struct AnyJson;

impl<'de> Deserialize<'de> for AnyJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnyVisitor;
        impl<'de> serde::de::Visitor<'de> for AnyVisitor {
            type Value = AnyJson;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<AnyJson, E> {
                Ok(AnyJson)
            }
            fn visit_i64<E>(self, _: i64) -> Result<AnyJson, E> {
                Ok(AnyJson)
            }
            fn visit_u64<E>(self, _: u64) -> Result<AnyJson, E> {
                Ok(AnyJson)
            }
            fn visit_f64<E>(self, _: f64) -> Result<AnyJson, E> {
                Ok(AnyJson)
            }
            fn visit_str<E>(self, _: &str) -> Result<AnyJson, E> {
                Ok(AnyJson)
            }
            fn visit_unit<E>(self) -> Result<AnyJson, E> {
                Ok(AnyJson)
            }
            fn visit_none<E>(self) -> Result<AnyJson, E> {
                Ok(AnyJson)
            }
            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<AnyJson, D::Error> {
                AnyJson::deserialize(deserializer)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<AnyJson, A::Error> {
                while seq.next_element::<AnyJson>()?.is_some() {}
                Ok(AnyJson)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AnyJson, A::Error> {
                while map.next_entry::<AnyJson, AnyJson>()?.is_some() {}
                Ok(AnyJson)
            }
        }
        deserializer.deserialize_any(AnyVisitor)
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
        }
    }
}

/// The default `max_clock_skew` of newest-wins sinks: how far ahead of this host's clock an
/// event may be dated.
pub const DEFAULT_MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(3600);

/// An event dated further ahead of this host's clock than a newest-wins destination allows.
/// Kept, it would stay "newest" over every real event after it (a year-9999 timestamp would pin
/// its key forever), so it goes to the dead-letter topic instead.
#[derive(Debug, thiserror::Error)]
#[error(
    "the event is dated {at}, more than {max_clock_skew:?} (`max_clock_skew`) ahead of this host's clock \
     ({now}); kept, it would stay newest over every later event of its key"
)]
pub struct AheadOfClock {
    /// The event's instant.
    pub at: DateTime<Utc>,
    /// This host's clock when the event was checked.
    pub now: DateTime<Utc>,
    /// The allowance.
    pub max_clock_skew: std::time::Duration,
}

/// Refuses an instant more than `max_clock_skew` ahead of this host's clock.
pub fn check_clock_skew(at: DateTime<Utc>, max_clock_skew: std::time::Duration) -> Result<(), AheadOfClock> {
    let now = Utc::now();
    let limit = chrono::TimeDelta::from_std(max_clock_skew).ok().and_then(|skew| now.checked_add_signed(skew));
    match limit {
        Some(limit) if at > limit => Err(AheadOfClock { at, now, max_clock_skew }),
        _ => Ok(()),
    }
}

/// An event's timestamp: the text as the producer wrote it, and the instant it names.
///
/// Accepts RFC 3339 (`2026-11-26T10:15:00.123456+01:00`, `…Z`) and offset-less ISO 8601
/// (`2026-11-26T10:15:00.123456`, as Python's `datetime.utcnow().isoformat()` writes), the latter
/// read as UTC. A space may stand for the `T`.
#[derive(Clone, PartialEq, Eq)]
pub struct EventTimestamp {
    raw: String,
    instant: DateTime<Utc>,
}

impl EventTimestamp {
    /// Parses a timestamp; the error says what formats are accepted.
    pub fn parse(raw: &str) -> Result<Self, TimestampError> {
        Self::parse_owned(raw.to_owned())
    }

    fn parse_owned(raw: String) -> Result<Self, TimestampError> {
        match read_instant(&raw) {
            Some(instant) => Ok(Self { raw, instant }),
            None => Err(TimestampError { raw }),
        }
    }

    /// A timestamp for this instant, written as RFC 3339 with microseconds and `+00:00`, which
    /// Python's `datetime.fromisoformat` reads on every supported version.
    pub fn from_instant(instant: DateTime<Utc>) -> Self {
        // Truncate to what the text can say, so parsing the text gives back the same instant.
        let instant = instant.trunc_subsecs(6);
        let raw = instant.to_rfc3339_opts(SecondsFormat::Micros, false);
        Self { raw, instant }
    }

    /// Now, in UTC.
    pub fn now() -> Self {
        Self::from_instant(Utc::now())
    }

    /// The instant, in UTC.
    pub fn instant(&self) -> DateTime<Utc> {
        self.instant
    }

    /// The text exactly as the producer wrote it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Debug for EventTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Display for EventTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for EventTimestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for EventTimestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        EventTimestamp::parse_owned(raw).map_err(serde::de::Error::custom)
    }
}

/// The instant a timestamp names, in any of the forms [`EventTimestamp`] accepts.
fn read_instant(raw: &str) -> Option<DateTime<Utc>> {
    // Every event has a timestamp, and the seed's offset-less form failed chrono's RFC 3339
    // parser before its ISO one took it: a tenth of a stdout route's CPU. The usual shapes are
    // read by hand; anything else goes through chrono as before.
    if let Some(instant) = parse_iso_fast(raw.as_bytes()) {
        return Some(instant);
    }
    let trimmed = raw.trim();
    // The two common forms first, with chrono's fixed-format parsers; the format strings (parsed
    // anew on every call) only for the rarer spellings.
    DateTime::parse_from_rfc3339(trimmed)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| trimmed.parse::<NaiveDateTime>().map(|naive| naive.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f").map(|naive| naive.and_utc()))
        .or_else(|_| DateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f%:z").map(|t| t.with_timezone(&Utc)))
        .ok()
}

/// `YYYY-MM-DDTHH:MM:SS`, then optionally `.` and 1–9 digits, then optionally `Z` or `±HH:MM`,
/// and nothing else: the instant it names, as chrono reads it. `None` for any other text (which
/// chrono then reads, or refuses), including a leap second, so that chrono alone decides those.
fn parse_iso_fast(text: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(text: &[u8], at: usize, count: usize) -> Option<u32> {
        let part = text.get(at..at + count)?;
        part.iter().try_fold(0u32, |n, &b| b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0')))
    }
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, byte)| text.get(at) != Some(&byte)) {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(digits(text, 0, 4)?).ok()?,
        digits(text, 5, 2)?,
        digits(text, 8, 2)?,
    )?;
    let (hour, minute, second) = (digits(text, 11, 2)?, digits(text, 14, 2)?, digits(text, 17, 2)?);
    let mut at = 19;
    let mut nanos = 0;
    if text.get(at) == Some(&b'.') {
        let count = text[at + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=9).contains(&count) {
            return None;
        }
        nanos = digits(text, at + 1, count)? * 10u32.pow(9 - count as u32);
        at += 1 + count;
    }
    if second > 59 {
        return None;
    }
    let naive = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    let offset_seconds = match text.get(at..)? {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (digits(text, at + 1, 2)?, digits(text, at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    Some(naive.checked_sub_signed(chrono::TimeDelta::seconds(offset_seconds))?.and_utc())
}

/// A timestamp in none of the accepted formats.
#[derive(Debug, thiserror::Error)]
#[error(
    "timestamp `{raw}` is not ISO 8601: expected e.g. `2026-11-26T10:15:00.123456` (read as UTC) \
     or `2026-11-26T10:15:00Z` / `+01:00`"
)]
pub struct TimestampError {
    raw: String,
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
    fn chrono_reading(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| text.parse::<NaiveDateTime>().map(|naive| naive.and_utc()))
            .ok()
    }

    #[test]
    fn the_fast_timestamp_reading_agrees_with_chrono_or_leaves_the_text_to_it() {
        let taken = [
            "2026-11-26T10:15:00.123456",
            "2026-11-26T10:15:00",
            "2026-11-26T10:15:00Z",
            "2026-11-26T10:15:00.1Z",
            "2026-11-26T10:15:00.123456789",
            "2026-11-26T23:59:59.999999+01:00",
            "2026-01-01T00:30:00-05:30",
            "2024-02-29T12:00:00.000001+00:00",
            "0001-01-01T00:00:00",
            "9999-12-31T23:59:59.5-23:59",
        ];
        for text in taken {
            let fast = parse_iso_fast(text.as_bytes());
            assert!(fast.is_some(), "{text} is read by hand");
            assert_eq!(fast, chrono_reading(text), "{text}");
        }
        let left = [
            "2026-11-26 10:15:00.123456",
            "2026-11-26T10:15:60",
            "2026-11-26T10:15:00.1234567890",
            "2026-11-26T10:15:00.",
            "2026-11-26T10:15:00z",
            "2026-11-26T10:15:00+0100",
            "2026-11-26T10:15:00+24:00",
            " 2026-11-26T10:15:00",
            "2026-11-26T10:15:00 ",
            "2026-02-30T10:15:00",
            "2026-11-26T25:15:00",
            "2026-11-26T10:15",
            "+2026-11-26T10:15:00",
            "2026-1a-26T10:15:00",
            "",
        ];
        for text in left {
            assert_eq!(parse_iso_fast(text.as_bytes()), None, "{text} is left to chrono");
        }
        // …and the whole parser still takes what chrono takes there.
        for text in ["2026-11-26 10:15:00.123456", "2026-11-26T10:15:00z", " 2026-11-26T10:15:00 "] {
            assert!(EventTimestamp::parse(text).is_ok(), "{text}");
        }
        for text in ["2026-02-30T10:15:00", "2026-11-26T25:15:00", "2026-11-26T10:15"] {
            assert!(EventTimestamp::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn timestamps_with_offsets_are_converted_to_utc() {
        let plus_one = EventTimestamp::parse("2026-11-26T11:15:00+01:00").unwrap();
        let zulu = EventTimestamp::parse("2026-11-26T10:15:00Z").unwrap();
        let naive = EventTimestamp::parse("2026-11-26T10:15:00").unwrap();
        assert_eq!(plus_one.instant(), zulu.instant());
        assert_eq!(naive.instant(), zulu.instant());
        assert_eq!(plus_one.as_str(), "2026-11-26T11:15:00+01:00");
    }

    #[test]
    fn generated_timestamps_round_trip() {
        let now = EventTimestamp::now();
        assert!(now.as_str().ends_with("+00:00"), "{now}");
        assert_eq!(EventTimestamp::parse(now.as_str()).unwrap().instant(), now.instant());
    }

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
