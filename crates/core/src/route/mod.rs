//! One route's worker: consume → parse → filter → batch → sink → dead letters → store offsets.
//!
//! The loop is sequential on purpose: a batch is fully settled (sink Ok, dead letters
//! acknowledged, offsets stored) before the next is read, which keeps per-partition order and
//! makes "offsets advance only after the sink has the data" true by construction. librdkafka keeps
//! fetching in the background meanwhile, bounded by `queued.max.messages.kbytes`.
//!
//! Layout: `consumer.rs` (the Kafka consumer and its rebalance context), `batch.rs` (planning a
//! batch from an [`batch::Inbox`]), `delivery.rs` (settling a batch: sink, retries, dead
//! letters, which offsets may be stored) and this file, which ties them to the consumer: pausing,
//! resuming where the sink left off, storing and committing offsets. `batch.rs` and
//! `delivery.rs` know no Kafka client, and their tests run without a network under paused time.

mod batch;
mod consumer;
mod delivery;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::RouteConfig;
use crate::dlq::{error_chain, DeadLetterQueue};
use crate::error::RouteError;
use crate::observe::RouteShared;
use crate::sink::{Sink, SinkError};

use batch::{gather, Inbox, Limits};
use consumer::AssignmentChanges;
pub(crate) use consumer::{create_consumer, RouteConsumer};
use delivery::{retry_delays, DeadLetters, Delivery, NextOffsets};

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
    /// Runs until `cancel` fires or the route fails; then closes the sink, commits what is
    /// settled and leaves the group. Leaving blocks (librdkafka waits for the group's answer),
    /// so it runs on the blocking pool: every route leaves at once, not two at a time.
    pub(crate) async fn run(mut self, cancel: CancellationToken) -> Result<(), RouteError> {
        let result = self.run_batches(&cancel).await;
        if let Err(err) = self.sink.close().await {
            warn!(route = %self.route.name, error = %err, "Closing the sink failed.");
        }
        let (consumer, name) = (self.consumer, self.route.name.clone());
        let leave = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(err) => warn!(route = %name, error = %err, "Final offset commit failed."),
            }
            consumer.unsubscribe();
            drop(consumer);
        });
        if let Err(err) = leave.await {
            warn!(route = %self.route.name, error = %err, "Leaving the consumer group failed.");
        }
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
            let held = std::mem::take(&mut self.held);
            let mut inbox = ConsumerInbox {
                route: &self.route,
                consumer: &self.consumer,
                sink: self.sink.as_mut(),
                resume_at: &mut self.resume_at,
            };
            let limits = Limits { route: &self.route.name, batch: &self.route.batch };
            let batch = gather(&mut inbox, held, limits, &mut pause_requests, cancel).await?;
            if batch.is_empty() {
                continue;
            }
            let mut delivery = Delivery {
                route: &self.route,
                sink: self.sink.as_mut(),
                dead_letters: self.dead_letters.as_ref().map(|queue| queue as &dyn DeadLetters),
                stats: &self.stats,
            };
            // `None`: shutting down mid-retry; offsets not stored, the batch is read again.
            if let Some(offsets) = delivery.settle(&batch, cancel).await? {
                self.store_offsets(offsets);
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

    /// Marks every message of a settled batch as done: the next commit includes them.
    fn store_offsets(&self, next: NextOffsets) {
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(err) = offsets.add_partition_offset(&topic, partition, Offset::Offset(offset)) {
                warn!(route = %self.route.name, error = %err, "Cannot record an offset to store.");
            }
        }
        if let Err(err) = self.consumer.store_offsets(&offsets) {
            // The partitions were revoked meanwhile: their new owner reads these messages again.
            debug!(route = %self.route.name, error = %err, "Offsets not stored (partition revoked?).");
        }
    }
}

/// The route's consumer as a batch's [`Inbox`]: on a rebalance it asks the sink where the new
/// partitions resume, and seeks there when the sink's stored offset differs from Kafka's.
struct ConsumerInbox<'a> {
    route: &'a RouteConfig,
    consumer: &'a RouteConsumer,
    sink: &'a mut dyn Sink,
    resume_at: &'a mut HashMap<(String, i32), i64>,
}

#[async_trait]
impl Inbox for ConsumerInbox<'_> {
    async fn recv(&mut self) -> Result<OwnedMessage, KafkaError> {
        self.consumer.recv().await.map(|message| message.detach())
    }

    async fn admit(
        &mut self,
        message: &OwnedMessage,
        batch: &mut Vec<OwnedMessage>,
        cancel: &CancellationToken,
    ) -> Result<bool, RouteError> {
        if let Some(changes) = self.consumer.context().take_changes() {
            self.apply_assignment_changes(changes, cancel).await?;
        }
        Ok(self.resume_where_the_sink_left_off(message, batch))
    }
}

impl ConsumerInbox<'_> {
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
        if self.resume_at.is_empty() {
            return true;
        }
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
}
