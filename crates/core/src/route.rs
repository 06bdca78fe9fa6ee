//! One route's worker: consume → parse → filter → batch → sink → dead letters → store offsets.
//!
//! The loop is sequential on purpose: a batch is fully settled (sink Ok, dead letters
//! acknowledged, offsets stored) before the next is read, which keeps per-partition order and
//! makes "offsets advance only after the sink has the data" true by construction. librdkafka keeps
//! fetching in the background meanwhile, bounded by `queued.max.messages.kbytes`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{KafkaProperties, RouteConfig};
use crate::dlq::{error_chain, DeadLetter, DeadLetterQueue, FailedStage};
use crate::error::RouteError;
use crate::event::{EventError, StageEvent};
use crate::kafka::client_config;
use crate::observe::RouteShared;
use crate::sink::{Sink, SinkError, SinkRecord, WriteOutcome};

/// The consumer context: observes rebalances, commits and statistics.
pub(crate) struct RouteContext {
    route: String,
    stats: Arc<RouteShared>,
    /// Partitions assigned or revoked since the worker last looked, for `Sink::stored_offsets`.
    changes: Mutex<AssignmentChanges>,
    /// Whether `changes` holds anything: checked per message without taking the lock.
    changed: AtomicBool,
}

/// Partitions whose ownership changed in a rebalance.
#[derive(Debug, Default)]
struct AssignmentChanges {
    assigned: Vec<(String, i32)>,
    revoked: Vec<(String, i32)>,
}

impl RouteContext {
    fn record(&self, partitions: &TopicPartitionList, assigned: bool) {
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let list = if assigned { &mut changes.assigned } else { &mut changes.revoked };
        list.extend(partitions.elements().iter().map(|e| (e.topic().to_owned(), e.partition())));
        self.changed.store(true, Ordering::Release);
    }

    fn take_changes(&self) -> Option<AssignmentChanges> {
        if !self.changed.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner)))
    }
}

impl ClientContext for RouteContext {
    fn stats(&self, statistics: Statistics) {
        let lags = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|partition| partition.partition >= 0 && partition.consumer_lag >= 0)
            .map(|partition| partition.consumer_lag);
        let (count, total) = lags.fold((0, 0), |(count, total), lag| (count + 1, total + lag));
        self.stats.lag.store(if count == 0 { -1 } else { total }, Ordering::Relaxed);
        for (name, topic) in &statistics.topics {
            for partition in topic.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0) {
                self.stats.set_partition_lag(name, partition.partition, partition.consumer_lag);
            }
        }
        let up = statistics.brokers.values().any(|broker| broker.state == "UP");
        self.stats.kafka_up.store(up, Ordering::Relaxed);
    }
}

impl ConsumerContext for RouteContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            self.record(partitions, false);
            let revoked: Vec<String> =
                partitions.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect();
            self.stats.update(|state| state.assigned.retain(|p| !revoked.contains(p)));
            info!(route = %self.route, partitions = %describe(partitions), "Partitions revoked; committing what is done.");
            // Offsets of settled batches are stored; commit them before another member takes over.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(err) => warn!(route = %self.route, error = %err, "Commit on revoke failed."),
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.record(partitions, true);
                self.stats.update(|state| {
                    state
                        .assigned
                        .extend(partitions.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())));
                    state.assigned.sort();
                    state.assigned.dedup();
                });
                info!(route = %self.route, partitions = %describe(partitions), "Partitions assigned.")
            }
            Rebalance::Error(err) => error!(route = %self.route, error = %err, "Rebalance failed."),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => debug!(route = %self.route, offsets = %describe(offsets), "Offsets committed."),
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => warn!(route = %self.route, error = %err, "Offset commit failed; will retry with the next."),
        }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    let parts: Vec<String> = partitions
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => format!("{}[{}]@{offset}", e.topic(), e.partition()),
            _ => format!("{}[{}]", e.topic(), e.partition()),
        })
        .collect();
    parts.join(",")
}

/// The consumer of one route.
pub(crate) type RouteConsumer = StreamConsumer<RouteContext>;

/// Creates the route's consumer and subscribes it to the route's topics.
pub(crate) fn create_consumer(
    props: &KafkaProperties,
    route: &RouteConfig,
    stats: Arc<RouteShared>,
    statistics_interval_ms: u128,
) -> Result<RouteConsumer, KafkaError> {
    let mut config = client_config(&KafkaProperties::default());
    // Defaults the `[kafka]` table may override…
    config
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("queued.max.messages.kbytes", "16384")
        // When the prefetch queue is full, look again soon: librdkafka's default (1 s) leaves a
        // fast sink idle for most of that second once it has drained the queue.
        .set("fetch.queue.backoff.ms", "20")
        .set("auto.commit.interval.ms", "1000")
        .set("client.id", format!("herald.{}", route.name));
    for (name, value) in props.iter() {
        config.set(name, value);
    }
    // …and the settings the delivery guarantee rests on, which it may not.
    config
        .set("group.id", route.group_id())
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", route.start_from.as_offset_reset())
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", statistics_interval_ms.to_string());
    let context = RouteContext {
        route: route.name.clone(),
        stats,
        changes: Mutex::new(AssignmentChanges::default()),
        changed: AtomicBool::new(false),
    };
    let consumer: RouteConsumer = config.create_with_context(context)?;
    let topics: Vec<&str> = route.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// A route at work.
pub(crate) struct RouteWorker {
    pub(crate) route: RouteConfig,
    pub(crate) consumer: RouteConsumer,
    pub(crate) sink: Box<dyn Sink>,
    pub(crate) dead_letters: Option<DeadLetterQueue>,
    pub(crate) stats: Arc<RouteShared>,
    /// Messages received while paused, delivered first after resuming.
    pub(crate) held: Vec<OwnedMessage>,
    /// Where newly assigned partitions must resume, per the sink's own stored offsets; checked
    /// against the first message of each.
    pub(crate) resume_at: HashMap<(String, i32), i64>,
}

impl RouteWorker {
    /// Runs until `cancel` fires or the route fails; then commits what is settled and closes the sink.
    pub(crate) async fn run(mut self, cancel: CancellationToken) -> Result<(), RouteError> {
        let result = self.run_batches(&cancel).await;
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => warn!(route = %self.route.name, error = %err, "Final offset commit failed."),
        }
        if let Err(err) = self.sink.close().await {
            warn!(route = %self.route.name, error = %err, "Closing the sink failed.");
        }
        self.consumer.unsubscribe();
        result
    }

    async fn run_batches(&mut self, cancel: &CancellationToken) -> Result<(), RouteError> {
        let mut pause_requests = self.stats.pause_requests();
        self.stats.update(|state| state.status = "running");
        while !cancel.is_cancelled() {
            if *pause_requests.borrow_and_update() {
                self.pause_until_resumed(&mut pause_requests, cancel).await;
                continue;
            }
            let batch = self.next_batch(&mut pause_requests, cancel).await?;
            if !batch.is_empty() {
                self.settle(batch, cancel).await?;
            }
        }
        Ok(())
    }

    /// Pauses every assigned partition (and any assigned meanwhile) until resumed or cancelled,
    /// still polling so the consumer keeps its group membership. Messages already fetched are
    /// held and delivered first after resuming.
    async fn pause_until_resumed(
        &mut self,
        requests: &mut tokio::sync::watch::Receiver<bool>,
        cancel: &CancellationToken,
    ) {
        info!(route = %self.route.name, "Route paused.");
        self.stats.update(|state| state.status = "paused");
        let pause_all = |consumer: &RouteConsumer| {
            if let Ok(assignment) = consumer.assignment() {
                if let Err(err) = consumer.pause(&assignment) {
                    warn!(error = %err, "Pausing partitions failed.");
                }
            }
        };
        pause_all(&self.consumer);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = requests.changed() => {
                    if changed.is_err() || !*requests.borrow_and_update() {
                        break;
                    }
                }
                received = self.consumer.recv() => match received {
                    Ok(message) => self.held.push(message.detach()),
                    Err(err) => warn!(route = %self.route.name, error = %err, "Kafka consumer error while paused."),
                },
                _ = sleep(std::time::Duration::from_millis(500)) => pause_all(&self.consumer),
            }
        }
        if let Ok(assignment) = self.consumer.assignment() {
            if let Err(err) = self.consumer.resume(&assignment) {
                warn!(route = %self.route.name, error = %err, "Resuming partitions failed.");
            }
        }
        self.stats.update(|state| state.status = "running");
        info!(route = %self.route.name, "Route resumed.");
    }

    /// Waits for a first message, then takes what is already fetched, lingering up to `max_wait`
    /// for more, until the batch is full.
    async fn next_batch(
        &mut self,
        pause_requests: &mut tokio::sync::watch::Receiver<bool>,
        cancel: &CancellationToken,
    ) -> Result<Vec<OwnedMessage>, RouteError> {
        let mut batch = std::mem::take(&mut self.held);
        let mut deadline = (!batch.is_empty()).then(|| Instant::now() + self.route.batch.max_wait);
        while batch.len() < self.route.batch.max_events {
            let received = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                // A pause request ends the batch here; the caller pauses.
                _ = pause_requests.changed() => break,
                // Before the deadline: what is already fetched joins the batch even when the
                // linger is over, so a backlog is written in full batches.
                received = self.consumer.recv() => received,
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break,
            };
            match received {
                Ok(message) => {
                    let message = message.detach();
                    if let Some(changes) = self.consumer.context().take_changes() {
                        self.apply_assignment_changes(changes, cancel).await?;
                    }
                    if !self.resume_where_the_sink_left_off(&message, &mut batch) {
                        continue;
                    }
                    batch.push(message);
                    deadline.get_or_insert_with(|| Instant::now() + self.route.batch.max_wait);
                }
                Err(err) => {
                    warn!(route = %self.route.name, error = %err, "Kafka consumer error; librdkafka will retry.");
                    // Errors such as an unknown topic repeat at once: don't spin on them.
                    sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
        Ok(batch)
    }

    /// Asks the sink where newly assigned partitions should resume (retrying transient failures).
    async fn apply_assignment_changes(
        &mut self,
        changes: AssignmentChanges,
        cancel: &CancellationToken,
    ) -> Result<(), RouteError> {
        for partition in &changes.revoked {
            self.resume_at.remove(partition);
        }
        if changes.assigned.is_empty() {
            return Ok(());
        }
        let mut delays = retry_delays(&self.route.retry, None);
        let stored = loop {
            match self.sink.stored_offsets(&changes.assigned).await {
                Ok(stored) => break stored,
                Err(error @ SinkError::Fatal(_)) => return Err(RouteError::Sink(error)),
                Err(error) => {
                    let delay = delays.next().unwrap_or(self.route.retry.max_backoff);
                    warn!(route = %self.route.name, error = %error_chain(&error).join(": "), retry_in = ?delay, "Cannot read the sink's stored offsets; retrying.");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = sleep(delay) => {}
                    }
                }
            }
        };
        for (partition, offset) in stored {
            debug!(route = %self.route.name, topic = %partition.0, partition = partition.1, offset, "Sink has stored an offset.");
            self.resume_at.insert(partition, offset);
        }
        Ok(())
    }

    /// For the first message of a newly assigned partition: when the sink stored a different
    /// next offset than Kafka's committed one, seek there, drop what was read of that partition
    /// and return false. The sink's offset wins because it was written with the data.
    fn resume_where_the_sink_left_off(&mut self, message: &OwnedMessage, batch: &mut Vec<OwnedMessage>) -> bool {
        let key = (message.topic().to_owned(), message.partition());
        let Some(resume) = self.resume_at.remove(&key) else { return true };
        if message.offset() == resume {
            return true;
        }
        info!(
            route = %self.route.name, topic = %key.0, partition = key.1, from = message.offset(), to = resume,
            "Resuming where the sink's stored offset says."
        );
        batch.retain(|m| !(m.topic() == key.0 && m.partition() == key.1));
        if let Err(err) = self.consumer.seek(&key.0, key.1, Offset::Offset(resume), std::time::Duration::from_secs(10))
        {
            // The sink still drops what it already has; only the shortcut is lost.
            warn!(route = %self.route.name, error = %err, "Seek to the sink's stored offset failed; continuing from Kafka's.");
            return true;
        }
        false
    }

    /// Delivers one batch: sink writes (retried), dead letters, then the offsets.
    async fn settle(&mut self, messages: Vec<OwnedMessage>, cancel: &CancellationToken) -> Result<(), RouteError> {
        let stats = Arc::clone(&self.stats);
        stats.consumed.inc_by(messages.len() as u64);

        let mut records = Vec::with_capacity(messages.len());
        let mut record_origin = Vec::with_capacity(messages.len());
        let mut letters = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            match parse(message, self.route.max_message_bytes) {
                Ok(event) if self.route.filter.matches(&event) => {
                    records.push(SinkRecord {
                        event,
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                        origin: crate::kafka::origin_of(message),
                    });
                    record_origin.push(index);
                }
                Ok(_) => {
                    stats.skipped.inc();
                }
                Err(err) => letters.push(DeadLetter::new(message.clone(), FailedStage::Parse, err.kind(), &err)),
            }
        }
        // Without a dead-letter topic, fail before writing anything: the operator fixes the
        // config and the batch is read again from its first offset.
        self.require_dead_letter_topic(&letters)?;

        if !records.is_empty() {
            let timer = stats.write_seconds.start_timer();
            let written = self.write_with_retry(&records, cancel).await;
            timer.observe_duration();
            let Some(outcome) = written? else {
                return Ok(()); // shutting down mid-retry: offsets not stored, the batch is read again
            };
            stats.delivered.inc_by((records.len() - outcome.rejected.len()) as u64);
            stats.update(|state| state.last_event_at = Some(chrono::Utc::now()));
            for rejection in outcome.rejected {
                let Some(message) = record_origin.get(rejection.index).and_then(|&i| messages.get(i)) else {
                    return Err(RouteError::BadRejectionIndex { index: rejection.index, batch: records.len() });
                };
                letters.push(DeadLetter::new(
                    message.clone(),
                    FailedStage::Sink,
                    "SinkRejection",
                    rejection.error.as_ref(),
                ));
            }
            self.require_dead_letter_topic(&letters)?;
        }

        if let Some(queue) = &self.dead_letters {
            if !letters.is_empty() {
                for letter in &letters {
                    warn!(
                        route = %self.route.name, topic = letter.message.topic(), partition = letter.message.partition(),
                        offset = letter.message.offset(), dead_letter_topic = queue.topic(), reason = %letter.reason(),
                        "Message sent to the dead-letter topic."
                    );
                }
                queue
                    .send_all(&letters)
                    .await
                    .map_err(|source| RouteError::DeadLetter { topic: queue.topic().to_owned(), source })?;
                stats.dead_lettered.inc_by(letters.len() as u64);
            }
        }

        self.store_offsets(&messages);
        Ok(())
    }

    fn require_dead_letter_topic(&self, letters: &[DeadLetter]) -> Result<(), RouteError> {
        match (letters.first(), &self.dead_letters) {
            (Some(letter), None) => Err(RouteError::Undeliverable {
                topic: letter.message.topic().to_owned(),
                partition: letter.message.partition(),
                offset: letter.message.offset(),
                reason: letter.reason(),
            }),
            _ => Ok(()),
        }
    }

    /// Writes the batch, retrying transient failures with exponential backoff and jitter.
    /// `Ok(None)`: cancelled while waiting to retry.
    async fn write_with_retry(
        &mut self,
        records: &[SinkRecord],
        cancel: &CancellationToken,
    ) -> Result<Option<WriteOutcome>, RouteError> {
        let policy = &self.route.retry;
        let mut delays = retry_delays(policy, policy.max_retries);
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            let error = match self.sink.write(records).await {
                Ok(outcome) => {
                    if attempt > 1 {
                        self.stats.sink_failing.store(false, Ordering::Relaxed);
                        self.stats.update(|state| state.status = "running");
                    }
                    return Ok(Some(outcome));
                }
                Err(error @ SinkError::Fatal(_)) => return Err(RouteError::Sink(error)),
                Err(error) => error,
            };
            self.stats.sink_failing.store(true, Ordering::Relaxed);
            let reason = error_chain(&error).join(": ");
            self.stats.update(|state| {
                state.status = "retrying";
                state.last_error = Some(reason);
            });
            let Some(delay) = delays.next() else {
                return Err(RouteError::RetriesExhausted { retries: attempt - 1, source: error });
            };
            self.stats.retries.inc();
            warn!(
                route = %self.route.name, attempt, retry_in = ?delay, batch = records.len(),
                error = %error_chain(&error).join(": "), "Sink write failed; retrying."
            );
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = sleep(delay) => {}
            }
        }
    }

    /// Marks every message of a settled batch as done: the next commit includes them.
    fn store_offsets(&self, messages: &[OwnedMessage]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for message in messages {
            let entry = next.entry((message.topic(), message.partition())).or_insert(0);
            *entry = (*entry).max(message.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(err) = offsets.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                warn!(route = %self.route.name, error = %err, "Cannot record an offset to store.");
            }
        }
        if let Err(err) = self.consumer.store_offsets(&offsets) {
            // The partitions were revoked meanwhile: their new owner reads these messages again.
            debug!(route = %self.route.name, error = %err, "Offsets not stored (partition revoked?).");
        }
    }
}

/// The route's backoff: exponential with jitter between its bounds, `limit` delays at most.
fn retry_delays(policy: &crate::config::RetryConfig, limit: Option<u32>) -> impl Iterator<Item = std::time::Duration> {
    ExponentialBuilder::default()
        .with_min_delay(policy.initial_backoff)
        .with_max_delay(policy.max_backoff)
        .with_jitter()
        .with_max_times(limit.map_or(usize::MAX, |n| n as usize))
        .build()
}

fn parse(message: &OwnedMessage, limit: usize) -> Result<StageEvent, EventError> {
    match message.payload() {
        Some(payload) if payload.len() > limit => Err(EventError::TooLarge { size: payload.len(), limit }),
        Some(payload) => StageEvent::from_json(payload),
        None => Err(EventError::Empty),
    }
}
