//! The Kafka side: a transactional producer that publishes a batch of events together with the
//! source's cursor (the offsets topic's records are `offsets.rs`'s), and a repair's one-off
//! transaction through the same record loop.

use std::time::Duration;

use futures::future::join_all;
use herald_kafka::KafkaProperties;
use herald_kafka::{ensure_topics, TopicSpec, TransactionalProducer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::continuity::ServerIdentity;
use crate::error::SourceError;
use crate::offsets::{cursor_record, position_key, Checkpoint};

/// How long a transaction may stay open before the broker aborts it.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

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
            cursor_key: position_key(source),
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
        let cursor_value = cursor_record(cursor, self.server);
        let all = messages.iter().map(Outgoing::parts).chain(std::iter::once((
            self.offsets_topic.as_str(),
            Some(self.cursor_key.as_str()),
            cursor_value.as_str(),
            &[][..],
        )));
        send(producer, all).await
    }
}

impl Outgoing {
    /// Topic, key, value and headers, as a record is made of them.
    fn parts(&self) -> RecordParts<'_> {
        (self.topic.as_str(), self.key.as_deref(), self.value.as_str(), self.headers.as_slice())
    }
}

/// A record's topic, key, value and headers.
type RecordParts<'a> = (&'a str, Option<&'a str>, &'a str, &'a [(&'static str, String)]);

/// Queues `records` on `producer` (in its open transaction) and waits for each to be
/// acknowledged. The records refused as too large are named by index, with Kafka's error.
async fn send<'a>(
    producer: &TransactionalProducer,
    records: impl Iterator<Item = RecordParts<'a>>,
) -> Result<(), SendFailure> {
    let mut deliveries = Vec::new();
    let mut too_large = Vec::new();
    for (index, (topic, key, value, headers)) in records.enumerate() {
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
                failure =
                    failure.or(Some(SourceError::kafka("delivering a message")(rdkafka::error::KafkaError::Canceled)))
            }
        }
    }
    if !too_large.is_empty() {
        return Err(SendFailure::TooLarge(too_large));
    }
    failure.map_or(Ok(()), |err| Err(SendFailure::Other(err)))
}

/// Publishes `messages` in one transaction of their own, on transactional producer
/// `transactional_id`, moving no position: what `herald reconcile --repair` sends. All or
/// nothing; a message too large for Kafka fails the whole (the repair says so; the source's
/// own publishing dead-letters it instead).
pub(crate) async fn publish_alone(
    props: &KafkaProperties,
    transactional_id: &str,
    messages: &[Outgoing],
    timeout: Duration,
) -> Result<(), SourceError> {
    let producer = TransactionalProducer::start(props, transactional_id, timeout)
        .await
        .map_err(SourceError::kafka("starting the transactional producer"))?;
    producer.begin().map_err(SourceError::kafka("beginning a transaction"))?;
    let sent = match send(&producer, messages.iter().map(Outgoing::parts)).await {
        Ok(()) => producer.commit().await.map_err(SourceError::kafka("committing a transaction")),
        Err(SendFailure::Other(err)) => Err(err),
        Err(SendFailure::TooLarge(_)) => Err(SourceError::kafka("publishing a message")(
            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge),
        )),
    };
    if sent.is_err() {
        let _ = producer.abort().await;
    }
    sent
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
