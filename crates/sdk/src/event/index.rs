//! Validating a payload as a stage event and noting where its known fields lie, without
//! building the event: the rules of the parse, kept by a visitor that copies nothing.

use std::fmt;
use std::num::NonZeroU32;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};

use super::timestamp::read_instant;
use super::timestamp::TimestampError;
use super::{Field, StageEvent};

/// Validates `text` as a stage event by the parse's rules, noting where its known fields lie.
pub(super) fn read(text: &str) -> Result<EventIndex, serde_json::Error> {
    use serde::Deserializer as _;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let bounds = Bounds { start: text.as_ptr().addr(), len: text.len() };
    let index = (&mut deserializer).deserialize_map(IndexVisitor { bounds })?;
    deserializer.end()?;
    Ok(index)
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
    pub(super) fn unplaced(event: &StageEvent) -> Self {
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
            None => Err(E::custom(TimestampError::new(text))),
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
