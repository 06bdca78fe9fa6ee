//! A message as a route holds it between the consumer and the sink: copied out of librdkafka
//! once, its payload kept as shared text when it is UTF-8 (a sink record then shares it rather
//! than copying it again), and its topic name shared with the messages fetched before it. For a
//! route that needs no key or headers but those of messages that fail (stdout), it is read
//! (validated and indexed) as it is copied, so only a failing message's key is copied and its
//! headers asked of librdkafka, which parses a header block on each ask, even an empty one.
//! How a message is read is `read.rs`'s: this file only keeps what it is handed.
//!
//! Its accessors have the names of rdkafka's [`Message`]'s, so code reads the same.

use std::sync::Arc;

use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, OwnedHeaders, OwnedMessage, Timestamp};

use herald_sdk::event::EventError;
use herald_sdk::sink::LazyEvent;

/// A fetched message.
#[derive(Debug)]
pub(crate) struct FetchedMessage {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Timestamp,
    /// Kept when the route needs every message's key, or this one failed to validate.
    key: Option<Box<[u8]>>,
    payload: Payload,
    /// Kept when the route needs every message's headers, or this one failed to validate.
    headers: Option<OwnedHeaders>,
    /// Read (validated and indexed) as fetched: `None` once taken, or when it was not (it is
    /// read later).
    reading: Option<Read>,
}

/// A message read: its event (sharing the payload's text), or why it cannot be delivered.
pub(crate) type Read = Result<LazyEvent, Box<EventError>>;

/// A message's payload.
#[derive(Debug, Clone)]
enum Payload {
    /// No payload (a tombstone).
    Absent,
    /// Valid UTF-8, as most are.
    Text(Arc<str>),
    /// Anything else, kept for the dead-letter topic, with why it is not text. Boxed: it is
    /// rare, and a batch holds many messages.
    Bytes(Box<(Vec<u8>, std::str::Utf8Error)>),
}

impl FetchedMessage {
    /// Copies `message` out of librdkafka. `last_topic` is the topic name of the message copied
    /// before, shared when it is the same (a batch mostly reads one topic). With a `reader`, the
    /// message is read as it is copied, and its key and headers kept only if that fails;
    /// without one, they are always kept.
    pub(crate) fn copy(
        message: &BorrowedMessage<'_>,
        last_topic: &mut Option<Arc<str>>,
        reader: Option<&dyn Fn(&FetchedMessage) -> Read>,
    ) -> Self {
        let name = message.topic();
        let topic = match last_topic {
            Some(topic) if **topic == *name => Arc::clone(topic),
            _ => Arc::clone(last_topic.insert(Arc::from(name))),
        };
        let mut fetched = Self {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp(),
            key: None,
            payload: Payload::from(message.payload()),
            headers: None,
            reading: None,
        };
        let keep_key_and_headers = |fetched: &mut Self| {
            fetched.key = message.key().map(Box::from);
            fetched.headers = message.headers().map(BorrowedHeaders::detach);
        };
        let Some(reader) = reader else {
            keep_key_and_headers(&mut fetched);
            return fetched;
        };
        let read = reader(&fetched);
        if read.is_err() {
            keep_key_and_headers(&mut fetched);
        }
        fetched.reading = Some(read);
        fetched
    }

    /// How it read as fetched, once: `None` when it was not read then.
    pub(crate) fn take_reading(&mut self) -> Option<Read> {
        self.reading.take()
    }

    /// The topic it was read from.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic it was read from, shared.
    pub(crate) fn shared_topic(&self) -> Arc<str> {
        Arc::clone(&self.topic)
    }

    /// Its partition.
    pub(crate) fn partition(&self) -> i32 {
        self.partition
    }

    /// Its offset.
    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    /// Its payload's bytes.
    pub(crate) fn payload(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Absent => None,
            Payload::Text(text) => Some(text.as_bytes()),
            Payload::Bytes(bytes) => Some(&bytes.0),
        }
    }

    /// Its payload as text, shared; `Err` when it is not UTF-8, `Ok(None)` when there is none.
    pub(crate) fn text(&self) -> Result<Option<&Arc<str>>, std::str::Utf8Error> {
        match &self.payload {
            Payload::Absent => Ok(None),
            Payload::Text(text) => Ok(Some(text)),
            Payload::Bytes(bytes) => Err(bytes.1),
        }
    }

    /// Its headers.
    pub(crate) fn headers(&self) -> Option<&OwnedHeaders> {
        self.headers.as_ref()
    }

    /// The message as rdkafka's own type, for the dead-letter topic.
    pub(crate) fn to_owned_message(&self) -> OwnedMessage {
        OwnedMessage::new(
            self.payload().map(<[u8]>::to_vec),
            self.key.as_deref().map(<[u8]>::to_vec),
            self.topic.to_string(),
            self.timestamp,
            self.partition,
            self.offset,
            self.headers.clone(),
        )
    }
}

impl From<Option<&[u8]>> for Payload {
    fn from(payload: Option<&[u8]>) -> Self {
        match payload {
            None => Payload::Absent,
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Payload::Text(Arc::from(text)),
                Err(err) => Payload::Bytes(Box::new((bytes.to_vec(), err))),
            },
        }
    }
}

impl From<OwnedMessage> for FetchedMessage {
    fn from(message: OwnedMessage) -> Self {
        Self {
            topic: Arc::from(message.topic()),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp(),
            key: message.key().map(Box::from),
            payload: Payload::from(message.payload()),
            headers: message.headers().cloned(),
            reading: None,
        }
    }
}

#[cfg(test)]
impl FetchedMessage {
    /// A message of topic `t` at `partition`/`offset` holding `payload`, for the runtime's tests.
    pub(crate) fn test(partition: i32, offset: i64, payload: &[u8]) -> Self {
        FetchedMessage::from(OwnedMessage::new(
            Some(payload.to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rdkafka::message::{Header, Headers};

    use super::*;

    fn owned(payload: Option<&[u8]>) -> OwnedMessage {
        let headers = OwnedHeaders::new().insert(Header { key: "h", value: Some("v") });
        OwnedMessage::new(
            payload.map(<[u8]>::to_vec),
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::CreateTime(7),
            2,
            9,
            Some(headers),
        )
    }

    #[test]
    fn a_message_goes_to_the_dead_letter_topic_exactly_as_received() {
        for payload in [Some(&b"{\"a\":1}"[..]), Some(&b"\xff\xfe not utf-8"[..]), None] {
            let fetched = FetchedMessage::from(owned(payload));
            let back = fetched.to_owned_message();
            assert_eq!(back.payload(), payload);
            assert_eq!(back.key(), Some(&b"k"[..]));
            assert_eq!((back.topic(), back.partition(), back.offset()), ("t", 2, 9));
            assert_eq!(back.timestamp(), Timestamp::CreateTime(7));
            let header = back.headers().unwrap().get(0);
            assert_eq!((header.key, header.value), ("h", Some(&b"v"[..])));
        }
    }

    #[test]
    fn text_is_shared_and_other_bytes_are_refused_as_utf8() {
        let text = FetchedMessage::from(owned(Some(b"{}")));
        assert_eq!(text.text().unwrap().map(|t| &**t), Some("{}"));
        assert!(FetchedMessage::from(owned(Some(b"\xff"))).text().is_err());
        assert!(FetchedMessage::from(owned(None)).text().unwrap().is_none());
    }
}
