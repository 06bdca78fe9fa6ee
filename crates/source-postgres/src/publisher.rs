//! The Kafka side: a transactional producer that publishes a batch of events together with the
//! source's cursor, and reads the cursor back on start.

use std::time::Duration;

use futures::future::join_all;
use herald_kafka::KafkaProperties;
use herald_kafka::{client_config, ensure_topics, TopicSpec, TransactionalProducer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use serde_json::{Map, Value};

use crate::capture::Cursor;
use crate::continuity::{Committed, ServerIdentity};
use crate::error::SourceError;

/// How long a transaction may stay open before the broker aborts it.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A source's position, stored on the offsets topic in the same Kafka transaction as the
/// events before it: the trigger mode's (txid, change id) cursor, the WAL mode's commit LSN.
/// The publisher adds the server it was read from and the time (see [`Committed`]).
pub(crate) trait Checkpoint: Sized + Send + 'static {
    /// Writes the position's fields into the record's JSON object.
    fn encode(&self, record: &mut Map<String, Value>);
    /// Reads a record back; `None` for a record of another shape (another capture mode).
    fn decode(record: &Value) -> Option<Self>;
}

impl Checkpoint for Cursor {
    fn encode(&self, record: &mut Map<String, Value>) {
        record.insert("txid".into(), self.txid.into());
        record.insert("id".into(), self.id.into());
    }

    fn decode(record: &Value) -> Option<Self> {
        Some(Cursor { txid: record["txid"].as_u64()?, id: record["id"].as_i64()? })
    }
}

/// The cursor record: the position, the server it was read from, and when.
fn cursor_record(position: &impl Checkpoint, server: ServerIdentity) -> String {
    let mut record = Map::new();
    position.encode(&mut record);
    record.insert("system".into(), server.system.to_string().into());
    record.insert("timeline".into(), server.timeline.into());
    record.insert("at".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into());
    Value::Object(record).to_string()
}

/// A cursor record read back.
fn read_record<C: Checkpoint>(payload: &[u8]) -> Option<Committed<C>> {
    let record: Value = serde_json::from_slice(payload).ok()?;
    let position = C::decode(&record)?;
    let server = match (record["system"].as_str().and_then(|s| s.parse().ok()), record["timeline"].as_u64()) {
        (Some(system), Some(timeline)) => Some(ServerIdentity { system, timeline: u32::try_from(timeline).ok()? }),
        _ => None,
    };
    let at = record["at"].as_str().and_then(|at| at.parse().ok());
    Some(Committed { position, server, at })
}

/// One message to publish.
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) value: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// Publishes batches exactly once: the events and the cursor that follows them commit in one
/// Kafka transaction, so `read_committed` consumers see each row once and a restart resumes
/// exactly after the last committed batch.
///
/// Transactions alternate between two producers (`herald.source.{name}` and
/// `herald.source.{name}.alt`), one after the other, never overlapping: a producer that begins
/// a transaction right after its own last commit finds the broker still writing that commit's
/// markers, is told `CONCURRENT_TRANSACTIONS`, and librdkafka retries 20 ms later, which is the
/// latency tail of a source under steady load (a bare probe, back to back: p99 14.7–22.5 ms with
/// one producer, 7.7–8.6 ms alternating two). Both are initialised at start, so both of a
/// zombie's producers are fenced.
pub(crate) struct Publisher {
    producers: [TransactionalProducer; 2],
    /// Which producer takes the next transaction.
    turn: std::sync::atomic::AtomicUsize,
    /// The server the source reads, recorded with each position.
    server: ServerIdentity,
    offsets_topic: String,
    cursor_key: String,
}

impl Publisher {
    /// Creates the topics it writes (if missing), then a transactional producer whose
    /// `init_transactions` fences any earlier producer of this source and aborts its open
    /// transaction.
    pub(crate) async fn start(
        props: &KafkaProperties,
        source: &str,
        topics: &[TopicSpec],
        offsets_topic: &str,
        server: ServerIdentity,
    ) -> Result<Self, SourceError> {
        ensure_topics(props, topics).await.map_err(SourceError::kafka("creating the topics it writes"))?;
        let start = |id: String| async move {
            TransactionalProducer::start(props, &id, TRANSACTION_TIMEOUT)
                .await
                .map_err(SourceError::kafka("starting the transactional producer"))
        };
        let (first, second) =
            tokio::try_join!(start(format!("herald.source.{source}")), start(format!("herald.source.{source}.alt")))?;
        Ok(Self {
            producers: [first, second],
            turn: std::sync::atomic::AtomicUsize::new(0),
            server,
            offsets_topic: offsets_topic.to_owned(),
            cursor_key: source.to_owned(),
        })
    }

    /// A record for the offsets topic beside the position, under source key `key` (e.g. the
    /// snapshot a first start read): published with a batch, it commits with it.
    pub(crate) fn offsets_record(&self, key: String, record: &impl Checkpoint) -> Outgoing {
        Outgoing {
            topic: self.offsets_topic.clone(),
            key: Some(key),
            value: cursor_record(record, self.server),
            headers: Vec::new(),
        }
    }

    /// Publishes `messages` and moves the position to `cursor`, atomically. A message Kafka
    /// refuses as too large (librdkafka's `message.max.bytes`, or the topic's) is the row's
    /// fault, not Kafka's: it is replaced by what `too_large` makes of it (a trimmed dead
    /// letter) and the transaction is made again, so the cursor moves past it exactly once.
    pub(crate) async fn publish(
        &self,
        mut messages: Vec<Outgoing>,
        cursor: &impl Checkpoint,
        too_large: &(dyn Fn(Outgoing, &str) -> Outgoing + Sync),
    ) -> Result<(), SourceError> {
        // A dead letter made of a message is smaller each round; a few rounds are plenty.
        for _ in 0..4 {
            let producer = self.next_producer();
            producer.begin().map_err(SourceError::kafka("beginning a transaction"))?;
            let refused = match self.send_all(producer, &messages, cursor).await {
                Ok(()) => return producer.commit().await.map_err(SourceError::kafka("committing a transaction")),
                Err(failure) => {
                    // Nothing of this batch becomes visible; the cursor stays where it was.
                    let _ = producer.abort().await;
                    match failure {
                        SendFailure::TooLarge(refused) => refused,
                        SendFailure::Other(err) => return Err(err),
                    }
                }
            };
            for (index, error) in refused {
                if let Some(slot) = messages.get_mut(index) {
                    let message = std::mem::replace(
                        slot,
                        Outgoing { topic: String::new(), key: None, value: String::new(), headers: Vec::new() },
                    );
                    *slot = too_large(message, &error);
                }
            }
        }
        Err(SourceError::kafka("publishing a batch")(rdkafka::error::KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
        )))
    }

    /// The producer whose turn it is; the next call gets the other one.
    fn next_producer(&self) -> &TransactionalProducer {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.producers[turn % self.producers.len()]
    }

    /// Queues every message and the cursor on `producer`, and waits for each to be
    /// acknowledged. The messages refused as too large are named by index, with Kafka's error.
    async fn send_all(
        &self,
        producer: &TransactionalProducer,
        messages: &[Outgoing],
        cursor: &impl Checkpoint,
    ) -> Result<(), SendFailure> {
        let mut deliveries = Vec::with_capacity(messages.len() + 1);
        let mut too_large = Vec::new();
        let cursor_value = cursor_record(cursor, self.server);
        let all = messages
            .iter()
            .map(|m| (m.topic.as_str(), m.key.as_deref(), m.value.as_str(), m.headers.as_slice()))
            .chain(std::iter::once((
                self.offsets_topic.as_str(),
                Some(self.cursor_key.as_str()),
                cursor_value.as_str(),
                &[][..],
            )));
        for (index, (topic, key, value, headers)) in all.enumerate() {
            let mut owned = OwnedHeaders::new();
            for (name, header) in headers {
                owned = owned.insert(Header { key: name, value: Some(header.as_str()) });
            }
            let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).payload(value).headers(owned);
            if let Some(key) = key {
                record = record.key(key);
            }
            match producer.producer().send_result(record) {
                Ok(delivery) => deliveries.push(async move { (index, delivery.await) }),
                // librdkafka's own limit, checked as the message is queued.
                Err((err, _)) if is_too_large(&err) => too_large.push((index, err.to_string())),
                Err((err, _)) => return Err(SendFailure::Other(SourceError::kafka("queueing a message")(err))),
            }
        }
        let mut failure = None;
        for (index, delivered) in join_all(deliveries).await {
            match delivered {
                Ok(Ok(_)) => {}
                // The topic's limit, checked by the broker.
                Ok(Err((err, _))) if is_too_large(&err) => too_large.push((index, err.to_string())),
                Ok(Err((err, _))) => failure = failure.or(Some(SourceError::kafka("delivering a message")(err))),
                Err(_canceled) => {
                    failure = failure
                        .or(Some(SourceError::kafka("delivering a message")(rdkafka::error::KafkaError::Canceled)))
                }
            }
        }
        if !too_large.is_empty() {
            return Err(SendFailure::TooLarge(too_large));
        }
        failure.map_or(Ok(()), |err| Err(SendFailure::Other(err)))
    }
}

/// Why a transaction's messages did not all get through.
enum SendFailure {
    /// These messages (by index) are larger than Kafka takes, with Kafka's error.
    TooLarge(Vec<(usize, String)>),
    /// Anything else: Kafka's fault, retried by the caller.
    Other(SourceError),
}

fn is_too_large(err: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{MessageBatchTooLarge, MessageSizeTooLarge};
    matches!(err.rdkafka_error_code(), Some(MessageSizeTooLarge | MessageBatchTooLarge))
}

/// The position source `key` committed last on `topic`, read with `read_committed`, without a
/// producer (which would fence a running source).
pub(crate) async fn read_committed<C: Checkpoint>(
    props: &KafkaProperties,
    topic: &str,
    key: &str,
) -> Result<Option<Committed<C>>, SourceError> {
    let mut records = read_records(props, topic, &[key.to_owned()]).await?;
    Ok(records.remove(key).and_then(|payload| read_record(&payload)))
}

/// What source `name` stored on the offsets `topic`: its position, and the snapshot its first
/// start (or a resync) read, if any; one pass over the topic.
pub(crate) async fn read_start<C: Checkpoint>(
    props: &KafkaProperties,
    topic: &str,
    name: &str,
) -> Result<(Option<Committed<C>>, Option<crate::snapshot::Snapshot>), SourceError> {
    let snapshot_key = crate::snapshot::key(name);
    let mut records = read_records(props, topic, &[name.to_owned(), snapshot_key.clone()]).await?;
    let position = records.remove(name).and_then(|payload| read_record(&payload));
    let snapshot = records.remove(&snapshot_key).and_then(|payload| read_record(&payload)).map(|c| c.position);
    Ok((position, snapshot))
}

async fn read_records(
    props: &KafkaProperties,
    topic: &str,
    keys: &[String],
) -> Result<std::collections::HashMap<String, Vec<u8>>, SourceError> {
    let (props, topic, keys) = (props.clone(), topic.to_owned(), keys.to_vec());
    tokio::task::spawn_blocking(move || read_latest_records(&props, &topic, &keys)).await?
}

/// Forgets source `key`'s position: a tombstone on the compacted offsets `topic`, so the next
/// activation starts as a first one.
pub(crate) async fn forget_position(props: &KafkaProperties, topic: &str, key: &str) -> Result<(), SourceError> {
    let producer: rdkafka::producer::FutureProducer =
        herald_kafka::reliable_producer_config(props).create().map_err(SourceError::kafka("creating a producer"))?;
    for key in [key.to_owned(), crate::snapshot::key(key)] {
        let record: FutureRecord<'_, str, str> = FutureRecord::to(topic).key(&key);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(err, _)| SourceError::kafka("forgetting the source's position")(err))?;
    }
    Ok(())
}

/// The latest committed value of each of `keys` on partition 0 of the offsets `topic` (a
/// tombstone forgets it), read to the end with `read_committed`.
fn read_latest_records(
    props: &KafkaProperties,
    topic: &str,
    keys: &[String],
) -> Result<std::collections::HashMap<String, Vec<u8>>, SourceError> {
    let mut latest = std::collections::HashMap::new();
    let consumer: BaseConsumer = client_config(props)
        .set("group.id", format!("herald.source-offsets-reader.{}", keys.first().map_or("", String::as_str)))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(SourceError::kafka("creating the offsets reader"))?;
    let timeout = Duration::from_secs(15);
    // No offsets topic yet (a source never started): no position.
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(SourceError::kafka("reading the offsets topic's metadata"))?;
    if metadata
        .topics()
        .iter()
        .all(|found| found.name() != topic || found.error().is_some() || found.partitions().is_empty())
    {
        return Ok(latest);
    }
    let (start, end) =
        consumer.fetch_watermarks(topic, 0, timeout).map_err(SourceError::kafka("reading offsets watermarks"))?;
    if end <= start {
        return Ok(latest);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(SourceError::kafka("assigning the offsets topic"))?;
    consumer.assign(&assignment).map_err(SourceError::kafka("assigning the offsets topic"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let position = consumer
            .position()
            .ok()
            .and_then(|p| p.find_partition(topic, 0).and_then(|e| e.offset().to_raw()))
            .unwrap_or(-1);
        // Transaction markers take offsets too, so "done" is the position, not the last message.
        if position >= end {
            return Ok(latest);
        }
        // A position read only partly could be an old one: never guess.
        if std::time::Instant::now() > deadline {
            return Err(SourceError::kafka("reading the offsets topic to its end")(
                rdkafka::error::KafkaError::Canceled,
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else { continue };
                if keys.iter().any(|wanted| wanted == key) {
                    match message.payload() {
                        Some(payload) => latest.insert(key.to_owned(), payload.to_vec()),
                        None => latest.remove(key),
                    };
                }
            }
            Some(Err(err)) => return Err(SourceError::kafka("reading the offsets topic")(err)),
            None => {}
        }
    }
}
