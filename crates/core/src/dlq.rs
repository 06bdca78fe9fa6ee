//! The dead-letter topic: where a route puts messages it can never deliver.
//!
//! Each dead letter is the original message — key, value and headers unchanged — plus the
//! headers Kafka Connect's `DeadLetterQueueReporter` writes, so existing DLQ tooling reads them.

use std::time::Duration;

use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use herald_kafka::headers::connect as headers;
use herald_kafka::{reliable_producer_config, KafkaProperties};

/// Where in the route a message failed, as Kafka Connect names its stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedStage {
    /// The message is not a stage event (not UTF-8, not JSON, fields missing or mistyped).
    Parse,
    /// The sink refused the event as invalid.
    Sink,
}

impl FailedStage {
    fn connect_name(self) -> &'static str {
        match self {
            FailedStage::Parse => "VALUE_CONVERTER",
            FailedStage::Sink => "TASK_PUT",
        }
    }

    fn class(self) -> &'static str {
        match self {
            FailedStage::Parse => "herald_core::event::StageEvent",
            FailedStage::Sink => "herald_core::sink::Sink",
        }
    }
}

/// A message that will go to the dead-letter topic, with why.
#[derive(Debug)]
pub struct DeadLetter {
    /// The original message.
    pub message: OwnedMessage,
    /// Where it failed.
    pub stage: FailedStage,
    /// The error type, e.g. `EventError::Invalid`.
    pub error_kind: String,
    /// The error and its causes, outermost first.
    pub error_chain: Vec<String>,
}

impl DeadLetter {
    /// A dead letter for `message` that failed at `stage` with `error`.
    pub fn new(
        message: OwnedMessage,
        stage: FailedStage,
        error_kind: impl Into<String>,
        error: &dyn std::error::Error,
    ) -> Self {
        Self { message, stage, error_kind: error_kind.into(), error_chain: herald_sdk::error_chain(error) }
    }

    /// The error on one line, causes joined by `: `.
    pub fn reason(&self) -> String {
        self.error_chain.join(": ")
    }
}

/// Delivery results of the dead-letter producer, collected by its context.
#[derive(Default)]
struct Deliveries {
    failures: Mutex<Vec<KafkaError>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((err, _)) = result {
            self.failures.lock().unwrap_or_else(PoisonError::into_inner).push(err.clone());
        }
    }
}

/// A producer bound to one route's dead-letter topic. It is polled only while it sends (a
/// `FutureProducer`'s polling thread cost 1% of a core per route while idle).
#[derive(Clone)]
pub struct DeadLetterQueue {
    producer: Arc<BaseProducer<Deliveries>>,
    topic: String,
    route: String,
}

/// How long a batch of dead letters may take to be acknowledged.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

impl DeadLetterQueue {
    /// A dead-letter queue writing to `topic` for `route`.
    pub fn new(props: &KafkaProperties, topic: &str, route: &str) -> Result<Self, KafkaError> {
        let producer: BaseProducer<Deliveries> = reliable_producer_config(props)
            // A dead letter can be as large as any message the route reads.
            .set("message.max.bytes", props.get("message.max.bytes").unwrap_or(herald_kafka::MAX_DEAD_LETTER_BYTES))
            .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
            .create_with_context(Deliveries::default())?;
        Ok(Self { producer: Arc::new(producer), topic: topic.to_owned(), route: route.to_owned() })
    }

    /// The topic dead letters go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends every letter and returns once the broker acknowledged all of them.
    pub async fn send_all(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        let records: Vec<Outgoing> = letters.iter().map(|letter| self.outgoing(letter)).collect();
        let (producer, topic) = (Arc::clone(&self.producer), self.topic.clone());
        tokio::task::spawn_blocking(move || send_blocking(&producer, &topic, records))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    fn outgoing(&self, letter: &DeadLetter) -> Outgoing {
        let original = &letter.message;
        let partition = original.partition().to_string();
        let offset = original.offset().to_string();
        // A dead letter read back from this very topic (by `herald redrive`) that failed again
        // keeps where it was first read; its error headers are replaced, not repeated.
        let redriven = original.topic() == self.topic;
        let origin = redriven.then(|| herald_kafka::headers::dead_letter_of(original.headers())).flatten();
        let (origin_topic, origin_partition, origin_offset) = match &origin {
            Some((_, topic, partition, offset)) => (topic.as_str(), partition.to_string(), offset.to_string()),
            None => (original.topic(), partition, offset),
        };
        let mut headers = OwnedHeaders::new();
        if let Some(existing) = original.headers() {
            for header in existing.iter().filter(|header| !header.key.starts_with(headers::PREFIX)) {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let message = letter.error_chain.first().map(String::as_str).unwrap_or_default();
        let stacktrace = letter.error_chain.join("\ncaused by: ");
        for (key, value) in [
            (headers::TOPIC, origin_topic),
            (headers::PARTITION, origin_partition.as_str()),
            (headers::OFFSET, origin_offset.as_str()),
            (headers::CONNECTOR, self.route.as_str()),
            (headers::TASK_ID, "0"),
            (headers::STAGE, letter.stage.connect_name()),
            (headers::CLASS, letter.stage.class()),
            (headers::EXCEPTION_CLASS, letter.error_kind.as_str()),
            (headers::EXCEPTION_MESSAGE, message),
            (headers::EXCEPTION_STACKTRACE, stacktrace.as_str()),
        ] {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        Outgoing { key: original.key().map(<[u8]>::to_vec), payload: original.payload().map(<[u8]>::to_vec), headers }
    }
}

/// One dead letter ready to send.
struct Outgoing {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: OwnedHeaders,
}

/// Queues `records` and polls until every one is acknowledged or failed.
fn send_blocking(producer: &BaseProducer<Deliveries>, topic: &str, records: Vec<Outgoing>) -> Result<(), KafkaError> {
    producer.context().failures.lock().unwrap_or_else(PoisonError::into_inner).clear();
    for outgoing in records {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(outgoing.headers);
        if let Some(key) = outgoing.key.as_deref() {
            record = record.key(key);
        }
        if let Some(payload) = outgoing.payload.as_deref() {
            record = record.payload(payload);
        }
        herald_kafka::producer::send_queued(producer, record)?;
    }
    if !herald_kafka::producer::settle(producer, SEND_TIMEOUT) {
        return Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut));
    }
    match producer.context().failures.lock().unwrap_or_else(PoisonError::into_inner).pop() {
        Some(err) => Err(err),
        None => Ok(()),
    }
}
