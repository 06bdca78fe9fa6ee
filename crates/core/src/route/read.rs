//! Reading messages as a route needs them: validated and indexed, or parsed, for the sink at
//! hand, with the route's size limit; then filtered into the records of a batch. A message is
//! read as it is fetched when its route keeps no keys or headers (`fetch`), otherwise when its
//! batch is prepared.

use std::sync::Arc;

use rdkafka::message::BorrowedMessage;

use super::fetched::{FetchedMessage, Read};
use crate::config::RouteConfig;
use crate::dlq::{DeadLetter, FailedStage};
use herald_sdk::event::{EventError, StageEvent};
use herald_sdk::sink::{LazyEvent, Sink, SinkRecord};

/// A batch parsed and filtered, ready to write: the work that can be done while the batch
/// before it is still being written.
pub(crate) struct PreparedBatch {
    /// The events that pass the route's filter.
    pub(super) records: Vec<SinkRecord>,
    /// For each record, the index of its message in the batch.
    pub(super) record_origin: Vec<usize>,
    /// Messages that cannot be parsed.
    pub(super) letters: Vec<DeadLetter>,
    /// Events the filter left out.
    pub(super) skipped: u64,
}

/// How a route reads its messages, from its settings and its sink's needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadSettings {
    /// Larger messages are refused.
    pub(crate) max_message_bytes: usize,
    /// Events are parsed now (the sink reads them as whole events); else only validated and
    /// indexed (the filter and the sink read the known fields from the payload), and parsed if
    /// the sink reads more after all.
    pub(crate) parse_now: bool,
    /// Every message's key and headers are kept; else only those of messages that fail to read.
    pub(crate) keys_and_headers: bool,
    /// The topics hold OpenLineage events (`input = "openlineage"`): each is mapped when its
    /// batch is prepared, where one of no run can be skipped.
    pub(crate) lineage: bool,
}

impl ReadSettings {
    /// How `route` reads, writing to `sink`.
    pub(crate) fn new(route: &RouteConfig, sink: &dyn Sink) -> Self {
        Self {
            max_message_bytes: route.max_message_bytes,
            parse_now: sink.reads_fields(),
            keys_and_headers: sink.needs_keys_and_headers(),
            lineage: route.input == crate::config::Input::OpenLineage,
        }
    }
}

/// Parses `messages` (or only validates and indexes them, for a sink that reads no more than the
/// known fields; a message read as it was fetched is not read again) and applies the route's
/// filter.
pub(crate) fn prepare(route: &RouteConfig, messages: &mut [FetchedMessage], reading: ReadSettings) -> PreparedBatch {
    let mut prepared = PreparedBatch {
        records: Vec::with_capacity(messages.len()),
        record_origin: Vec::with_capacity(messages.len()),
        letters: Vec::new(),
        skipped: 0,
    };
    let lineage = route.lineage();
    for (index, message) in messages.iter_mut().enumerate() {
        if route.only.as_ref().is_some_and(|only| !only.chosen.contains(&(message.partition(), message.offset()))) {
            // Not chosen (by `herald redrive`): skipped unread, so it cannot fail either.
            prepared.skipped += 1;
            continue;
        }
        let read = match message.take_reading() {
            Some(Ok(event)) => Ok((event, payload_text(message))),
            Some(Err(err)) => Err(*err),
            None => match &lineage {
                None => read(message, reading),
                Some(mapping) => match read_lineage(message, mapping, reading) {
                    Ok(Some(read)) => Ok(read),
                    // An OpenLineage event of no run: nothing to deliver, as if filtered out.
                    Ok(None) => {
                        prepared.skipped += 1;
                        continue;
                    }
                    Err(err) => Err(err),
                },
            },
        };
        match read {
            Ok((event, raw)) if route.filter.is_empty() || route.filter.matches(&event) => {
                prepared.records.push(SinkRecord {
                    event,
                    topic: message.shared_topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    origin: herald_kafka::headers::origin_of(message.headers()),
                    raw: Some(raw),
                });
                prepared.record_origin.push(index);
            }
            Ok(_) => prepared.skipped += 1,
            Err(err) => {
                prepared.letters.push(DeadLetter::new(message.to_owned_message(), FailedStage::Parse, err.kind(), &err))
            }
        }
    }
    prepared
}

/// Copies `message` out of librdkafka, read now when the route needs no keys or headers (then
/// only a message that fails to read keeps its key and headers).
pub(crate) fn fetch(
    message: &BorrowedMessage<'_>,
    last_topic: &mut Option<Arc<str>>,
    reading: ReadSettings,
) -> FetchedMessage {
    if reading.keys_and_headers || reading.lineage {
        return FetchedMessage::copy(message, last_topic, None);
    }
    let reader =
        |fetched: &FetchedMessage| -> Read { read(fetched, reading).map(|(event, _)| event).map_err(Box::new) };
    FetchedMessage::copy(message, last_topic, Some(&reader))
}

/// The payload of a message that read as an event (so it is text), shared.
fn payload_text(message: &FetchedMessage) -> Arc<str> {
    match message.text() {
        Ok(Some(text)) => Arc::clone(text),
        Ok(None) | Err(_) => Arc::from(""),
    }
}

/// The event in `message`, parsed now or only validated and indexed, and its payload as received
/// (checked as UTF-8 when fetched, and shared).
fn read(message: &FetchedMessage, reading: ReadSettings) -> Result<(LazyEvent, Arc<str>), EventError> {
    let raw = text_within_limit(message, reading)?;
    if reading.parse_now {
        let event = StageEvent::from_json_str(&raw)?;
        return Ok((event.into(), raw));
    }
    Ok((LazyEvent::validated(Arc::clone(&raw))?, raw))
}

/// The stage event `mapping` makes of the OpenLineage event in `message`, and its JSON, which
/// the sink receives as the payload; `None` for an event of no run.
fn read_lineage(
    message: &FetchedMessage,
    mapping: &herald_sdk::LineageMapping,
    reading: ReadSettings,
) -> Result<Option<(LazyEvent, Arc<str>)>, EventError> {
    let raw = text_within_limit(message, reading)?;
    match mapping.map(raw.as_bytes()) {
        Ok(herald_sdk::Lineage::Event(event)) => {
            let json: Arc<str> = Arc::from(event.to_json());
            Ok(Some((LazyEvent::from(*event), json)))
        }
        Ok(herald_sdk::Lineage::NotARun(_)) => Ok(None),
        Err(err) => Err(EventError::NotLineage(Box::new(err))),
    }
}

/// The payload as text, within the route's size limit.
fn text_within_limit(message: &FetchedMessage, reading: ReadSettings) -> Result<Arc<str>, EventError> {
    let (size, limit) = (message.payload().map_or(0, <[u8]>::len), reading.max_message_bytes);
    if size > limit {
        return Err(EventError::TooLarge { size, limit });
    }
    match message.text() {
        Ok(Some(text)) => Ok(Arc::clone(text)),
        Ok(None) => Err(EventError::Empty),
        Err(err) => Err(EventError::NotUtf8(err)),
    }
}
