//! The contract between the runtime and a sink.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde::{Serialize, Serializer};

use chrono::{DateTime, Utc};

use crate::event::{EventIndex, EventTimestamp, StageEvent};

/// A boxed error from a sink's own error type, kept as the cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One event on its way to a sink, with the Kafka coordinates it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    /// The event; read its fields as a [`StageEvent`]'s.
    pub event: LazyEvent,
    /// The topic it was read from (shared by the records of a batch read from it).
    pub topic: Arc<str>,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Where the event was born when not on Kafka: the `herald.origin` header herald's own
    /// sources set, e.g. `postgres:public.pipeline_status`. A sink writing that very table skips
    /// the event, so a row never travels back to where it came from.
    pub origin: Option<String>,
    /// The message's payload as received (the JSON `event` was parsed from), when the runtime
    /// kept it: a sink passing events through unchanged writes it as it is instead of encoding
    /// `event` again. Use [`SinkRecord::json_line`].
    pub raw: Option<std::sync::Arc<str>>,
}

impl SinkRecord {
    /// The event as one line of JSON: the payload as received when it is one line (most are),
    /// else `event` encoded again (which keeps every field, unknown ones included).
    pub fn json_line(&self) -> std::borrow::Cow<'_, str> {
        match self.raw.as_deref().map(str::trim) {
            Some(line) if !line.contains('\n') && !line.contains('\r') => std::borrow::Cow::Borrowed(line),
            _ => std::borrow::Cow::Owned(self.event.to_json()),
        }
    }
}

/// A record's event, parsed the first time a field is read. It derefs to [`StageEvent`].
///
/// Built from a payload, it is validated and indexed: where the known fields lie in the payload
/// is noted, so [`LazyEvent::field`], [`LazyEvent::key`], [`LazyEvent::instant`] and
/// [`LazyEvent::records`] read them without building a [`StageEvent`] (no copy of any field).
/// Anything else read through the [`StageEvent`] it derefs to parses the event, once. A sink that
/// reads only through those methods says so with [`Sink::reads_fields`] `false`; any other sink
/// gets events parsed already.
#[derive(Clone)]
pub struct LazyEvent {
    /// The payload, validated as a stage event; `None` when built from a parsed event.
    text: Option<Arc<str>>,
    /// Where the payload's known fields lie; `None` when built from a parsed event.
    index: Option<EventIndex>,
    /// Boxed: most events are never parsed, and a record should not carry the room for one.
    parsed: OnceLock<Box<StageEvent>>,
}

impl LazyEvent {
    /// An event in `text`, validated and indexed now and parsed when first read as a whole.
    /// Fails as [`StageEvent::from_json_str`] would.
    pub fn validated(text: Arc<str>) -> Result<Self, crate::EventError> {
        let index = StageEvent::index(&text)?;
        Ok(Self { text: Some(text), index: Some(index), parsed: OnceLock::new() })
    }

    /// Whether the event has been parsed (or was built parsed).
    pub fn is_parsed(&self) -> bool {
        self.parsed.get().is_some()
    }

    /// Changes the event (parsing it first if need be); for tests and for sinks that rewrite
    /// events. The payload the record was read from is left as it was.
    pub fn edit(&mut self, change: impl FnOnce(&mut StageEvent)) {
        let mut event = self.parsed.take().unwrap_or_else(|| Box::new(self.parse()));
        change(&mut event);
        self.text = None;
        self.index = None;
        self.parsed = OnceLock::from(event);
    }

    /// Field `name` as text, as [`StageEvent::field`] reads it. The known text fields are read
    /// straight from the payload, without parsing the event.
    pub fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some((text, index)) = self.indexed() {
            if name == "records" {
                return index.records.map(|n| Cow::Owned(n.to_string()));
            }
            if let Some(value) = index.text_of(text, name) {
                return Some(Cow::Borrowed(value));
            }
        }
        self.deref().field(name)
    }

    /// The event's source, its Kafka key, as [`StageEvent::key`].
    pub fn key(&self) -> &str {
        match self.indexed().and_then(|(text, index)| index.text_of(text, "source")) {
            Some(source) => source,
            None => self.deref().key(),
        }
    }

    /// The instant the event's timestamp names, as [`EventTimestamp::instant`].
    pub fn instant(&self) -> DateTime<Utc> {
        match self.indexed() {
            Some((_, index)) => index.instant,
            None => self.deref().timestamp.instant(),
        }
    }

    /// The event's `records` field.
    pub fn records(&self) -> Option<i64> {
        match self.indexed() {
            Some((_, index)) => index.records,
            None => self.deref().records,
        }
    }

    /// The payload and its index, unless the event was built parsed or edited.
    fn indexed(&self) -> Option<(&str, &EventIndex)> {
        Some((self.text.as_deref()?, self.index.as_ref()?))
    }

    fn parse(&self) -> StageEvent {
        let text = self.text.as_deref().unwrap_or_default();
        StageEvent::from_json_str(text).unwrap_or_else(|err| {
            // Unreachable while `validate` is as strict as the parse (unit-tested); should they
            // ever part, the sink gets an empty event with the payload kept in `extra`, not a panic.
            tracing::error!(error = %err, "An event that passed validation does not parse; please report it.");
            StageEvent {
                event: String::new(),
                stage: String::new(),
                source: String::new(),
                records: None,
                timestamp: EventTimestamp::from_instant(chrono::DateTime::UNIX_EPOCH),
                status: String::new(),
                extra: std::iter::once(("herald.unparsed".to_owned(), serde_json::Value::from(text))).collect(),
            }
        })
    }
}

/// What templates and filters read: an event's fields as text.
pub trait EventFields {
    /// Field `name` as text, as [`StageEvent::field`] reads it.
    fn field(&self, name: &str) -> Option<Cow<'_, str>>;
}

impl EventFields for StageEvent {
    fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        StageEvent::field(self, name)
    }
}

impl EventFields for LazyEvent {
    fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        LazyEvent::field(self, name)
    }
}

impl Deref for LazyEvent {
    type Target = StageEvent;

    fn deref(&self) -> &StageEvent {
        self.parsed.get_or_init(|| Box::new(self.parse()))
    }
}

impl From<StageEvent> for LazyEvent {
    fn from(event: StageEvent) -> Self {
        Self { text: None, index: None, parsed: OnceLock::from(Box::new(event)) }
    }
}

impl std::fmt::Debug for LazyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for LazyEvent {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Serialize for LazyEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

/// The default of [`Sink::default_max_events`].
pub const DEFAULT_MAX_EVENTS: usize = 500;

/// The header naming where a message herald published was born.
pub const ORIGIN_HEADER: &str = "herald.origin";

/// A destination for stage events.
///
/// The runtime calls [`Sink::write`] with batches in per-partition offset order, one batch at a
/// time, and advances the consumer offsets of a batch only after `write` returned `Ok`.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Makes one cheap real call (`SELECT 1`, `PING`, …) proving the sink is reachable.
    async fn healthcheck(&mut self) -> Result<(), SinkError>;

    /// What the sink found at its destination when it was built that works but will surprise
    /// (a unique index an append will run into): `herald check` prints each as a `warn` line and
    /// `herald run` logs it when the route starts. Default: nothing.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Delivers a batch.
    ///
    /// `Ok` means the sink has **durably accepted** every record of the batch except those listed
    /// in [`WriteOutcome::rejected`], which it will never accept (they go to the dead-letter
    /// topic), and those in [`WriteOutcome::unfinished`], which the runtime writes again after
    /// a backoff. `Err(SinkError::Retriable)` means nothing may be assumed delivered: the runtime
    /// writes the same records again after a backoff, so writes should be idempotent where the
    /// sink allows. `Err(SinkError::Fatal)` stops the route.
    ///
    /// Classify each failure by its cause: a record the destination can never take (a value it
    /// refuses, a value that cannot be encoded for it) is a rejection, never an error; a
    /// destination that fails for a while is retriable; only configuration is fatal. A record
    /// that keeps failing alone while the destination answers is dead-lettered by the runtime
    /// anyway, after `retry.poison_after` attempts, but that is the safety net, not the rule.
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError>;

    /// Where each of `partitions` should resume, for a sink that stores consumed offsets itself,
    /// in the same transaction as the data (`next offset to deliver`, by topic and partition).
    ///
    /// The runtime asks when partitions are assigned and starts each one there rather than at
    /// Kafka's committed offset, which may lag behind the sink's, or be gone. The default, no
    /// offsets, leaves Kafka's committed offsets in charge.
    async fn stored_offsets(&mut self, partitions: &[(String, i32)]) -> Result<Vec<((String, i32), i64)>, SinkError> {
        let _ = partitions;
        Ok(Vec::new())
    }

    /// The route's dead-letter topic has acknowledged the dead letters of these records, which
    /// this sink rejected: `(topic, partition, offset)` each. A sink that stores offsets and
    /// records its refusals resumes a partition at its oldest refusal not yet acknowledged, so
    /// that a crash between its commit and the dead letter (or a route with no dead-letter topic
    /// yet) sends the dead letter again instead of losing it; here it marks them sent. If this
    /// fails the dead letters are sent again on the next assignment (at least once). The default
    /// does nothing.
    async fn dead_letters_sent(&mut self, rejected: &[(String, i32, i64)]) -> Result<(), SinkError> {
        let _ = rejected;
        Ok(())
    }

    /// Called while the route is idle (no message for a few seconds), at most that often, for
    /// a sink that stores offsets: whether its destination still holds what it acknowledged.
    /// A database that lost acknowledged commits (a failover to a standby that was behind)
    /// answers [`SinkError::Behind`], and the route writes the lost events again at once rather
    /// than at the next event, which on a quiet topic may be hours away. Any other error is
    /// left to the next write. The default checks nothing.
    async fn check_still_held(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Whether this sink stores the consumed offsets with its data ([`Sink::stored_offsets`]):
    /// it then counts every record before the newest it accepted as delivered. The runtime never
    /// writes past a record it has not settled for such a sink, so a record it suspects of
    /// being poison is judged by the healthcheck alone. The default is `false`.
    fn stores_offsets(&self) -> bool {
        false
    }

    /// The batch size when the route does not set `batch.max_events`. A batch takes only what is
    /// already fetched, so this bounds it under a backlog and adds no latency otherwise. Sinks
    /// with a fixed cost per write (a database transaction) want more.
    fn default_max_events(&self) -> usize {
        DEFAULT_MAX_EVENTS
    }

    /// Whether this sink reads events as whole [`StageEvent`]s (their struct fields, `extra`,
    /// `to_json`): the runtime then parses each event before the write, on the task that reads
    /// ahead. A sink that reads fields only through [`LazyEvent::field`], [`LazyEvent::key`],
    /// [`LazyEvent::instant`], [`LazyEvent::records`], templates and [`SinkRecord::json_line`]
    /// says `false`: the runtime then only validates and indexes each message, and the known
    /// fields are read from the payload with no copy. The default is `true`.
    fn reads_fields(&self) -> bool {
        true
    }

    /// Whether the runtime must keep every message's key and headers: the sink reads
    /// [`SinkRecord::origin`] (a header), or it may reject records (their dead letters carry the
    /// original key and headers). A sink that does neither (stdout) says `false`; keys and
    /// headers are then kept only for messages that fail to parse, which go to the dead-letter
    /// topic with theirs. The default is `true`.
    ///
    /// librdkafka parses a message's header block on each read, even an empty one: on a stdout
    /// route that was 6% of the CPU.
    fn needs_keys_and_headers(&self) -> bool {
        true
    }

    /// Whether the runtime reads and parses the next batch on a task of its own while this sink
    /// writes one. Worth it when a write mostly waits on another system (a database, a network
    /// round trip): herald's share then runs on another core meanwhile. A sink whose writes are
    /// herald's own CPU work (stdout) is faster without handing batches between threads. The
    /// default is `true`.
    fn read_ahead(&self) -> bool {
        true
    }

    /// Flushes and releases resources at shutdown.
    async fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// What a successful [`Sink::write`] could not deliver.
///
/// Every record of the batch that is in neither list was durably accepted.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Records the sink will never accept, by index into the batch, each with the reason.
    pub rejected: Vec<Rejection>,
    /// Records the sink did not deliver this time because the destination failed part way (one
    /// request of several was refused for a while, a connection dropped): the runtime writes
    /// these again, and only these, after a backoff. A sink that writes a batch as several
    /// requests reports the rest here instead of failing the whole batch, so a steadily flaky
    /// destination still drains.
    pub unfinished: Option<Unfinished>,
}

impl WriteOutcome {
    /// Every record was accepted.
    pub fn all_accepted() -> Self {
        Self::default()
    }

    /// Some records were delivered; `indexes` (into the batch) were not, for the transient
    /// reason `error`. Returns a plain `Err(Retriable)` when nothing at all was delivered or
    /// rejected, which means the same to the runtime.
    pub fn partial(
        batch_len: usize,
        rejected: Vec<Rejection>,
        mut indexes: Vec<usize>,
        error: BoxError,
    ) -> Result<Self, SinkError> {
        indexes.sort_unstable();
        indexes.dedup();
        if indexes.is_empty() {
            return Ok(Self { rejected, unfinished: None });
        }
        if rejected.is_empty() && indexes.len() >= batch_len {
            return Err(SinkError::Retriable(error));
        }
        Ok(Self { rejected, unfinished: Some(Unfinished { indexes, error }) })
    }
}

/// The records of a batch a write left for later (see [`WriteOutcome::unfinished`]).
#[derive(Debug)]
pub struct Unfinished {
    /// Indexes into the batch, in batch order.
    pub indexes: Vec<usize>,
    /// The destination's transient failure.
    pub error: BoxError,
}

/// What is left to write of a batch while it is written piece by piece: after a partial
/// outcome, after a batch was split to find a record that fails alone. Indexes are into the
/// batch as first handed over; each piece is written in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    indexes: Vec<usize>,
}

/// What one write of a [`Pending`] piece settled, by index into the whole batch.
#[derive(Debug, Default)]
pub struct Settled {
    /// Records accepted.
    pub accepted: usize,
    /// Records refused for good, by index into the whole batch.
    pub rejected: Vec<Rejection>,
    /// The transient failure that left records unfinished, if any did.
    pub unfinished: Option<BoxError>,
}

impl Pending {
    /// Every record of a batch of `len`.
    pub fn all(len: usize) -> Self {
        Self { indexes: (0..len).collect() }
    }

    /// Exactly these records (indexes into the whole batch), in batch order.
    pub fn of(mut indexes: Vec<usize>) -> Self {
        indexes.sort_unstable();
        indexes.dedup();
        Self { indexes }
    }

    /// The indexes left, in batch order.
    pub fn indexes(&self) -> &[usize] {
        &self.indexes
    }

    /// How many records are left.
    pub fn len(&self) -> usize {
        self.indexes.len()
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }

    /// The records left, to hand to [`Sink::write`]. Borrowed when nothing has been settled
    /// yet (the common case), copied otherwise.
    pub fn records<'a>(&self, batch: &'a [SinkRecord]) -> std::borrow::Cow<'a, [SinkRecord]> {
        if self.indexes.len() == batch.len() {
            return std::borrow::Cow::Borrowed(batch);
        }
        std::borrow::Cow::Owned(self.indexes.iter().filter_map(|&index| batch.get(index).cloned()).collect())
    }

    /// Splits the records left in two halves, in order (for finding the record a batch fails
    /// on); `None` when one or none is left.
    pub fn split(&self) -> Option<(Pending, Pending)> {
        if self.indexes.len() < 2 {
            return None;
        }
        let (left, right) = self.indexes.split_at(self.indexes.len() / 2);
        Some((Pending { indexes: left.to_vec() }, Pending { indexes: right.to_vec() }))
    }

    /// Takes in what a write of [`Pending::records`] returned: what it rejected leaves, what it
    /// left unfinished stays, the rest was accepted and leaves. Indexes out of range are
    /// returned as `Err` with the bad index (a bug in the sink).
    pub fn settle(&mut self, outcome: WriteOutcome) -> Result<Settled, usize> {
        let WriteOutcome { rejected, unfinished } = outcome;
        let written = self.indexes.len();
        let whole = |index: usize| self.indexes.get(index).copied().ok_or(index);
        let rejected = rejected
            .into_iter()
            .map(|Rejection { index, error }| Ok(Rejection { index: whole(index)?, error }))
            .collect::<Result<Vec<_>, usize>>()?;
        let (left, error) = match unfinished {
            Some(Unfinished { indexes, error }) => {
                let left = indexes.iter().map(|&index| whole(index)).collect::<Result<Vec<_>, usize>>()?;
                (left, Some(error))
            }
            None => (Vec::new(), None),
        };
        let left: Vec<usize> =
            Pending::of(left).indexes.into_iter().filter(|i| !rejected.iter().any(|r| r.index == *i)).collect();
        let accepted = written.saturating_sub(rejected.len() + left.len());
        self.indexes = left;
        Ok(Settled { accepted, rejected, unfinished: error })
    }
}

/// One record a sink refused as invalid.
#[derive(Debug)]
pub struct Rejection {
    /// Index of the record in the batch passed to [`Sink::write`].
    pub index: usize,
    /// Why the sink refused it.
    pub error: BoxError,
}

/// A failed sink call, classified for the retry loop.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A failure that may pass (connection lost, timeout, throttled): retry the batch.
    #[error("sink temporarily failed")]
    Retriable(#[source] BoxError),
    /// A failure that retrying cannot fix (bad credentials, missing table): stop the route.
    #[error("sink failed")]
    Fatal(#[source] BoxError),
    /// A sink that stores offsets with its data found them behind what it acknowledged before:
    /// its destination lost commits (a failover to a standby that had not received them, a
    /// restore). Nothing of this batch was written. The runtime asks the sink where each
    /// assigned partition resumes ([`Sink::stored_offsets`]) and reads from there again, so
    /// what was lost is written again, once; `events` is how many that is.
    #[error("the sink's stored offsets are behind what it acknowledged, by {events} events")]
    Behind {
        /// How many acknowledged events the destination lost, over all partitions.
        events: u64,
        /// What the sink found, per partition.
        #[source]
        source: BoxError,
    },
}

impl SinkError {
    /// Wraps a sink's own error as retriable or fatal, as that sink classified it.
    pub fn classified(error: impl std::error::Error + Send + Sync + 'static, retriable: bool) -> Self {
        if retriable {
            SinkError::Retriable(Box::new(error))
        } else {
            SinkError::Fatal(Box::new(error))
        }
    }

    /// Whether the runtime should retry (the same batch, after a backoff).
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Retriable(_))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_validated_event_is_parsed_when_first_read_and_equals_the_eager_parse() {
        let text = r#"{"event":"STAGE_COMPLETE","stage":"bronze","source":"A","timestamp":"2026-11-26T10:15:00.1","status":"SUCCESS","x":[1]}"#;
        let lazy = LazyEvent::validated(Arc::from(text)).unwrap();
        assert!(!lazy.is_parsed());
        assert_eq!(lazy.stage, "bronze");
        assert!(lazy.is_parsed());
        assert_eq!(lazy, LazyEvent::from(StageEvent::from_json_str(text).unwrap()));
        assert_eq!(serde_json::to_string(&lazy).unwrap(), lazy.to_json());
        let refused = LazyEvent::validated(Arc::from(r#"{"event":"E"}"#)).map(|_| ()).unwrap_err();
        assert_eq!(refused.to_string(), StageEvent::from_json_str(r#"{"event":"E"}"#).unwrap_err().to_string());
    }

    #[test]
    fn known_fields_are_read_from_the_payload_without_parsing_and_agree_with_the_parse() {
        let cases = [
            r#"{"event":"STAGE_COMPLETE","stage":"bronze","source":"OrdersDB","records":14823,"timestamp":"2026-11-26T10:15:00.123456","status":"SUCCESS"}"#,
            r#"{ "status" : "FAILED", "timestamp":"2026-11-26T11:15:00+01:00", "source":"é✓", "stage":"s", "event":"E", "records":null, "x":{"source":"no"} }"#,
            // Escaped strings have no place in the payload: read from the parse.
            r#"{"event":"E","stage":"a\tb","source":"O\u0041","timestamp":"2026-11-26T10:15:00Z","status":"S\"","n":1.5}"#,
        ];
        let known = ["event", "stage", "source", "status", "timestamp", "records"];
        for text in cases {
            let parsed = StageEvent::from_json_str(text).unwrap();
            let lazy = LazyEvent::validated(Arc::from(text)).unwrap();
            for name in known {
                assert_eq!(lazy.field(name), parsed.field(name), "{name} of {text}");
            }
            assert_eq!(lazy.key(), parsed.key());
            assert_eq!(lazy.instant(), parsed.timestamp.instant());
            assert_eq!(lazy.records(), parsed.records);
            assert_eq!(lazy.is_parsed(), text.contains('\\'), "parsed only to read escaped strings: {text}");
            for name in ["n", "x", "absent"] {
                assert_eq!(lazy.field(name), parsed.field(name), "{name} of {text}");
            }
        }
        let lazy = LazyEvent::validated(Arc::from(cases[0])).unwrap();
        assert!(matches!(lazy.field("stage"), Some(Cow::Borrowed("bronze"))), "borrowed from the payload");
    }

    fn refused(index: usize) -> Rejection {
        Rejection { index, error: "refused".into() }
    }

    #[test]
    fn pending_records_map_a_pieces_outcome_back_to_the_batch() {
        let mut pending = Pending::all(6);
        let settled = pending
            .settle(WriteOutcome {
                rejected: vec![refused(1)],
                unfinished: Some(Unfinished { indexes: vec![3, 4], error: "busy".into() }),
            })
            .unwrap();
        assert_eq!((settled.accepted, settled.rejected[0].index), (3, 1));
        assert!(settled.unfinished.is_some());
        assert_eq!(pending.indexes(), [3, 4]);
        // The next write sees records 3 and 4 as its 0 and 1.
        let settled = pending.settle(WriteOutcome { rejected: vec![refused(1)], unfinished: None }).unwrap();
        assert_eq!((settled.accepted, settled.rejected[0].index), (1, 4));
        assert!(pending.is_empty());
        assert_eq!(
            Pending::all(2).settle(WriteOutcome { rejected: vec![refused(2)], unfinished: None }).unwrap_err(),
            2
        );
    }

    #[test]
    fn pending_records_split_in_order_and_borrow_a_whole_batch() {
        let batch: Vec<SinkRecord> = (0..5).map(crate::conformance::record).collect();
        let pending = Pending::all(5);
        assert!(matches!(pending.records(&batch), std::borrow::Cow::Borrowed(_)));
        let (left, right) = pending.split().unwrap();
        assert_eq!((left.indexes(), right.indexes()), (&[0, 1][..], &[2, 3, 4][..]));
        let offsets: Vec<i64> = right.records(&batch).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [2, 3, 4]);
        assert!(Pending::of(vec![4]).split().is_none());
    }

    #[test]
    fn a_partial_outcome_that_delivered_nothing_is_a_retriable_error() {
        let nothing = WriteOutcome::partial(3, Vec::new(), vec![2, 0, 1], "down".into());
        assert!(matches!(nothing, Err(SinkError::Retriable(_))));
        let some = WriteOutcome::partial(3, Vec::new(), vec![2, 1], "down".into()).unwrap();
        assert_eq!(some.unfinished.unwrap().indexes, [1, 2]);
        assert!(WriteOutcome::partial(3, Vec::new(), Vec::new(), "x".into()).unwrap().unfinished.is_none());
    }

    #[test]
    fn an_edited_event_reads_its_new_fields() {
        let text =
            r#"{"event":"E","stage":"s","source":"A","records":1,"timestamp":"2026-11-26T10:15:00","status":"S"}"#;
        let mut lazy = LazyEvent::validated(Arc::from(text)).unwrap();
        lazy.edit(|event| {
            event.source = "B".into();
            event.records = Some(2);
        });
        assert_eq!((lazy.key(), lazy.field("source").as_deref(), lazy.records()), ("B", Some("B"), Some(2)));
    }

    #[test]
    fn a_one_line_payload_passes_through_as_received_and_any_other_is_encoded_again() {
        let seed = r#"{"event": "STAGE_COMPLETE", "stage": "bronze", "source": "A", "timestamp": "2026-11-26T10:15:00.1", "status": "SUCCESS", "x": 1}"#;
        let mut record = crate::conformance::record(1);
        record.event = StageEvent::from_json(seed.as_bytes()).unwrap().into();
        assert_eq!(record.json_line(), record.event.to_json(), "no payload kept: encoded");
        record.raw = Some(std::sync::Arc::from(format!("{seed}\n")));
        assert_eq!(record.json_line(), seed, "as received, spacing and all, without the trailing newline");
        let pretty = seed.replace(", ", ",\n  ");
        record.raw = Some(std::sync::Arc::from(pretty));
        let line = record.json_line();
        assert!(
            !line.contains('\n') && line.contains(r#""x":1"#),
            "a multi-line payload is encoded on one line: {line}"
        );
    }
}
