//! A transactional producer's lifecycle, in one place: the settings, `init_transactions` (which
//! fences any earlier producer of the same id and aborts its open transaction), and each
//! transaction's begin, commit or abort. librdkafka's transactional calls block, so they run on
//! tokio's blocking pool; each message's acknowledgement is awaited before the commit.

use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::properties::{client_config, KafkaProperties};

/// How long a blocking transactional call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A producer whose messages become visible to `read_committed` readers only together, when
/// a transaction commits.
#[derive(Clone)]
pub struct TransactionalProducer {
    producer: FutureProducer,
}

impl TransactionalProducer {
    /// A producer with transactional id `id` on top of the `[kafka]` properties, initialised:
    /// any earlier producer of `id` is fenced, and its open transaction aborted. A
    /// transaction left open longer than `timeout` (a killed process) is aborted by the broker.
    pub async fn start(props: &KafkaProperties, id: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let producer: FutureProducer = client_config(props)
            .set("transactional.id", id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("transaction.timeout.ms", timeout.as_millis().to_string())
            // Every transaction is awaited right after it is queued: lingering only delays it.
            // In three A/B pairs at 100 rows/s (the WAL source), p99 9.6–11.2 ms with 0 against
            // 11.9–18.3 with 1; p50 the same.
            .set("linger.ms", "0")
            // A transaction begun while the broker still writes the previous one's markers is
            // refused (CONCURRENT_TRANSACTIONS) and retried after `retry.backoff.ms`; with
            // librdkafka's 100 ms default, about 1 transaction in 1,600 waited that long.
            .set("retry.backoff.ms", "10")
            .create()?;
        let init = producer.clone();
        tokio::task::spawn_blocking(move || init.init_transactions(CALL_TIMEOUT))
            .await
            .map_err(|_| KafkaError::Canceled)??;
        Ok(Self { producer })
    }

    /// The producer, to queue this transaction's messages on (`send_result`).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Begins a transaction.
    pub fn begin(&self) -> Result<(), KafkaError> {
        self.producer.begin_transaction()
    }

    /// Adds a consumer's `offsets` to the transaction, under the group's `metadata`: they commit
    /// with the messages, and a process the group has moved on from is fenced (KIP-447).
    pub async fn send_offsets(
        &self,
        offsets: TopicPartitionList,
        metadata: ConsumerGroupMetadata,
    ) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    /// Commits the transaction: every message queued in it becomes visible at once. Call it
    /// once each message's delivery future has resolved.
    pub async fn commit(&self) -> Result<(), KafkaError> {
        self.delivery_reports_released().await;
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.commit_transaction(CALL_TIMEOUT))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    /// Aborts the transaction: nothing queued in it becomes visible. Errors are the caller's
    /// to ignore: the broker aborts an open transaction on its timeout anyway.
    pub async fn abort(&self) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.abort_transaction(CALL_TIMEOUT))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    /// Waits (briefly) until librdkafka counts no message of this transaction as in flight.
    ///
    /// rdkafka's polling thread resolves a delivery future before it releases the delivery
    /// report. `commit_transaction` first flushes, and a flush that still counts that report
    /// blocks in a poll of up to 100 ms for an event that never comes (the polling thread
    /// already took it): one commit in a few hundred took 100 ms longer, reproduced with bare
    /// rdkafka by `herald-bench`'s `txn_commit_probe`. The report is released within microseconds.
    async fn delivery_reports_released(&self) {
        let give_up = tokio::time::Instant::now() + Duration::from_millis(100);
        while self.producer.in_flight_count() > 0 && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}
