//! One route's worker: consume → parse → filter → batch → sink → dead letters → store offsets.
//!
//! Writes are sequential on purpose: a batch is fully settled (sink Ok, dead letters
//! acknowledged, offsets stored) before the next is written, which keeps per-partition order and
//! makes "offsets advance only after the sink has the data" true by construction. Reading is
//! not, for sinks whose writes wait on another system ([`Sink::read_ahead`](herald_sdk::Sink::read_ahead)): while a batch is
//! written, a task of its own reads and parses the next one (at most one batch ahead), so
//! herald's share of the work runs beside the sink's on another core. That task
//! cannot ask the sink anything, so at a rebalance it ends its batch and the worker takes over.
//! librdkafka keeps fetching in the background, bounded by `queued.max.messages.kbytes`.
//!
//! Layout, one job per file:
//! - `consumer.rs`: the Kafka consumer, its settings and its rebalance context;
//! - `fetched.rs`: a message as the route holds it, copied out of librdkafka once;
//! - `read.rs`: reading messages as the sink needs them (at fetch time or when a batch is
//!   prepared) and filtering them into records;
//! - `batch.rs`: planning a batch from a [`batch::BatchSource`];
//! - `resume.rs`: resuming where a sink that stores offsets left off, behind a `Seek` trait;
//! - `delivery.rs`: settling a batch (dead letters, which offsets may be stored);
//! - `isolate.rs`: writing until every record is settled: retries, partial progress, poison;
//! - `lag.rs`: the consumer lag and broker state for metrics;
//! - this file, which ties them to the consumer: the worker loop, pausing, the read-ahead task.
//!
//! Everything but `consumer.rs`, `lag.rs` and this file knows no Kafka client, and is tested
//! without a network under tokio's paused clock.

mod batch;
mod consumer;
mod delivery;
mod fetched;
mod isolate;
mod lag;
mod read;
mod resume;

use std::sync::Arc;

use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, MessageStream};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::RouteConfig;
use crate::dlq::DeadLetterQueue;
use crate::error::RouteError;
use crate::observe::RouteShared;
use herald_sdk::error_chain;
use herald_sdk::printable::{printable, LOG_CHARS};
use herald_sdk::sink::{Sink, SinkError};

use batch::{gather, BatchAdmission, BatchSource, IdleWakeups, Limits};
pub(crate) use consumer::{create_consumer, RouteConsumer};
use delivery::{DeadLetters, Delivery, NextOffsets};
use fetched::FetchedMessage;
use herald_kafka::AssignmentChanges;
pub(crate) use lag::{watch_lag, LagSubject};
use read::{fetch, prepare, PreparedBatch, ReadSettings};
pub(crate) use resume::Resumption;

/// A route at work.
pub(crate) struct RouteWorker {
    pub(crate) route: Arc<RouteConfig>,
    /// Shared with the task reading the next batch while one is written.
    pub(crate) consumer: Arc<RouteConsumer>,
    pub(crate) sink: Box<dyn Sink>,
    /// The route's `batch.max_events`, or the sink's default.
    pub(crate) max_events: usize,
    pub(crate) dead_letters: Option<DeadLetterQueue>,
    pub(crate) stats: Arc<RouteShared>,
    /// Messages received while paused, delivered first after resuming.
    pub(crate) held: Vec<FetchedMessage>,
    /// Where newly assigned partitions must resume, per the sink's own stored offsets: sought
    /// as soon as librdkafka allows, or checked against the first message of each.
    pub(crate) resumption: Resumption,
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
        let mut prefetched: Option<(Vec<FetchedMessage>, PreparedBatch)> = None;
        let reading = ReadSettings::new(&self.route, self.sink.as_ref());
        // The read-ahead task came back with nothing: it waited idle already, so the next wait
        // asks the sink at once whether its destination still holds what it acknowledged.
        let mut idle_already = false;
        while !cancel.is_cancelled() {
            if *pause_requests.borrow_and_update() {
                // Read but not written: held, and delivered first after resuming.
                if let Some((messages, _)) = prefetched.take() {
                    self.held.splice(0..0, messages);
                }
                self.pause_until_resumed(&mut pause_requests, reading, cancel).await;
                continue;
            }
            let (batch, prepared) = match prefetched.take() {
                Some(next) => next,
                None => {
                    let feed = BatchReader {
                        route: &self.route,
                        consumer: &self.consumer,
                        max_events: self.max_events,
                        reading,
                        still_held_after: self.sink.stores_offsets().then_some(if idle_already {
                            std::time::Duration::ZERO
                        } else {
                            STILL_HELD_CHECK
                        }),
                    };
                    idle_already = false;
                    // Coerced here to a borrow as short as this batch's.
                    let sink: &mut dyn Sink = self.sink.as_mut();
                    let next =
                        feed.next_batch(Some(sink), &mut self.resumption, &mut self.held, &mut pause_requests, cancel);
                    match next.await {
                        Ok(Some(next)) => next,
                        Ok(None) => continue,
                        // Found while idle: the destination lost what it acknowledged.
                        Err(RouteError::Sink(SinkError::Behind { events, source })) => {
                            self.read_again_from_the_sink(Vec::new(), events, &*source).await?;
                            continue;
                        }
                        Err(err) => return Err(err),
                    }
                }
            };
            let delivered = if self.sink.read_ahead() {
                self.deliver_while_reading_on(&batch, prepared, reading, &pause_requests, cancel).await
            } else {
                self.deliver(&batch, prepared, cancel).await.map(|()| None)
            };
            prefetched = match delivered {
                Ok(next) => {
                    idle_already = next.is_none() && self.sink.read_ahead();
                    next
                }
                Err(RouteError::Sink(SinkError::Behind { events, source })) => {
                    self.read_again_from_the_sink(batch, events, &*source).await?;
                    None
                }
                Err(err) => return Err(err),
            };
        }
        Ok(())
    }

    /// The sink's destination lost what it acknowledged (see [`SinkError::Behind`]): nothing
    /// of `batch` was written. Every assigned partition is read again from where the sink's
    /// stored offsets say, or from the first message not written yet (of `batch` and the
    /// messages held and the batch read ahead, which are dropped), whichever is earlier; a
    /// partition with neither from its committed offset. The sink skips what it still holds.
    async fn read_again_from_the_sink(
        &mut self,
        batch: Vec<FetchedMessage>,
        events: u64,
        reason: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> Result<(), RouteError> {
        warn!(
            route = %self.route.name, events, reason = %printable(&error_chain(reason).join(": "), LOG_CHARS),
            "The sink's database is behind what herald delivered to it (a failover to a standby that had not received everything?); reading again from where the database stands, to write what it lost."
        );
        self.stats.replayed.inc_by(events);
        let mut from: std::collections::BTreeMap<(String, i32), i64> = std::collections::BTreeMap::new();
        for message in batch.iter().chain(self.held.iter()) {
            let at = from.entry((message.topic().to_owned(), message.partition())).or_insert(message.offset());
            *at = (*at).min(message.offset());
        }
        self.held.clear();
        let assigned: Vec<(String, i32)> = match self.consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect(),
            Err(_) => from.keys().cloned().collect(),
        };
        let stored = self.sink.stored_offsets(&assigned).await.map_err(RouteError::Sink)?;
        for (partition, offset) in stored {
            let at = from.entry(partition).or_insert(offset);
            *at = (*at).min(offset);
        }
        let unknown: Vec<&(String, i32)> = assigned.iter().filter(|partition| !from.contains_key(*partition)).collect();
        if !unknown.is_empty() {
            let mut list = TopicPartitionList::new();
            for (topic, partition) in &unknown {
                list.add_partition(topic, *partition);
            }
            let committed =
                self.consumer.committed_offsets(list, std::time::Duration::from_secs(10)).map_err(|source| {
                    RouteError::Rewind { topic: unknown[0].0.clone(), partition: unknown[0].1, offset: -1, source }
                })?;
            for element in committed.elements() {
                if let Offset::Offset(offset) = element.offset() {
                    from.insert((element.topic().to_owned(), element.partition()), offset);
                }
            }
        }
        for ((topic, partition), offset) in from {
            self.consumer
                .seek(&topic, partition, Offset::Offset(offset), std::time::Duration::from_secs(10))
                .map_err(|source| RouteError::Rewind { topic: topic.clone(), partition, offset, source })?;
        }
        Ok(())
    }

    /// Delivers `batch` and stores its offsets once settled.
    async fn deliver(
        &mut self,
        batch: &[FetchedMessage],
        prepared: PreparedBatch,
        cancel: &CancellationToken,
    ) -> Result<(), RouteError> {
        let mut delivery = Delivery {
            route: &self.route,
            sink: self.sink.as_mut(),
            dead_letters: self.dead_letters.as_ref().map(|queue| queue as &dyn DeadLetters),
            stats: &self.stats,
        };
        // `None`: shutting down mid-retry; offsets not stored, the batch is read again.
        if let Some(offsets) = delivery.deliver(batch, prepared, cancel).await? {
            store_offsets(&self.route, &self.consumer, offsets);
        }
        Ok(())
    }

    /// [`RouteWorker::deliver`] while a task of its own reads and parses the next batch, so that
    /// work runs beside the sink's (encoding, a database's commit, an HTTP round trip) on
    /// another core. Batches are still written one at a time, in order, and offsets are stored
    /// as soon as `batch` is settled. The next batch ends early at a rebalance: the message after
    /// it waits for the sink to say where new partitions resume. Returns the next batch, if one
    /// was read, prepared as `reading` says.
    async fn deliver_while_reading_on(
        &mut self,
        batch: &[FetchedMessage],
        prepared: PreparedBatch,
        reading: ReadSettings,
        pause_requests: &tokio::sync::watch::Receiver<bool>,
        cancel: &CancellationToken,
    ) -> Result<Option<(Vec<FetchedMessage>, PreparedBatch)>, RouteError> {
        // Messages held back at a rebalance go through the sink's admission first. The reader
        // has a cancellation of its own: a sink behind its acknowledgements ends its batch early.
        let reading_cancel = cancel.child_token();
        let read_ahead = self.held.is_empty().then(|| {
            let reader = ReadAhead {
                route: Arc::clone(&self.route),
                consumer: Arc::clone(&self.consumer),
                resumption: std::mem::take(&mut self.resumption),
                held: Vec::new(),
                max_events: self.max_events,
                reading,
                still_held_after: self.sink.stores_offsets().then_some(STILL_HELD_CHECK),
                pause_requests: pause_requests.clone(),
                cancel: reading_cancel.clone(),
            };
            tokio::spawn(reader.read())
        });
        let settled = self.deliver(batch, prepared, cancel).await;
        let Some(task) = read_ahead else {
            return settled.map(|()| None);
        };
        // On a failure the batch read ahead is abandoned; a sink behind its acknowledgements
        // gets it back, ended early, to read every message again (`read_again_from_the_sink`).
        let behind = matches!(settled, Err(RouteError::Sink(SinkError::Behind { .. })));
        if behind {
            reading_cancel.cancel();
        } else if settled.is_err() {
            task.abort();
        }
        let read = match task.await {
            Ok((reader, read)) => {
                self.resumption = reader.resumption;
                self.held = reader.held;
                if behind {
                    if let Ok(Some((messages, _))) = read {
                        self.held.extend(messages);
                    }
                    return settled.map(|()| None);
                }
                read
            }
            // Aborted because the route is failing: `settled` says why.
            Err(err) if err.is_cancelled() => Ok(None),
            Err(err) => Err(RouteError::ReadAhead(err.to_string())),
        };
        settled?;
        read
    }

    /// Pauses every assigned partition (and any assigned meanwhile) until resumed or cancelled,
    /// still polling so the consumer keeps its group membership. Messages already fetched are
    /// held (read as `reading` says) and delivered first after resuming.
    async fn pause_until_resumed(
        &mut self,
        requests: &mut tokio::sync::watch::Receiver<bool>,
        reading: ReadSettings,
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
                    Ok(message) => self.held.push(fetch(&message, &mut None, reading)),
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
}

/// Marks every message of a settled batch as done: the next commit includes them.
fn store_offsets(route: &RouteConfig, consumer: &RouteConsumer, next: NextOffsets) {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), mut offset) in next {
        // A one-off run over a window stores nothing past its end (see `Only`).
        if let Some(end) = route.only.as_ref().and_then(|only| only.ends.get(&partition)) {
            offset = offset.min(*end);
        }
        if let Err(err) = offsets.add_partition_offset(&topic, partition, Offset::Offset(offset)) {
            warn!(route = %route.name, error = %err, "Cannot record an offset to store.");
        }
    }
    if let Err(err) = consumer.store_offsets(&offsets) {
        // The partitions were revoked meanwhile: their new owner reads these messages again.
        debug!(route = %route.name, error = %err, "Offsets not stored (partition revoked?).");
    }
}

/// The route's consumer as a batch's [`BatchSource`]. On a rebalance it asks the sink where the new
/// partitions resume, and seeks there when the sink's stored offset differs from Kafka's. The
/// read-ahead task has no sink at hand: for it a rebalance ends the batch, and the message is
/// held back for the worker.
struct ConsumerBatches<'a> {
    route: &'a RouteConfig,
    consumer: &'a RouteConsumer,
    /// The consumer's messages, as one stream for the whole batch: a stream registers its
    /// wake-up with the consumer once, where each `recv` would register one.
    messages: MessageStream<'a, consumer::RouteContext>,
    /// The topic of the message received last, shared with the next when it is the same.
    last_topic: Option<Arc<str>>,
    /// How each message is read as it is received.
    reading: ReadSettings,
    sink: Option<&'a mut dyn Sink>,
    resumption: &'a mut Resumption,
    /// When to ask the sink whether its destination still holds what it acknowledged, if no
    /// message came by then (a sink that stores offsets).
    still_held_check: Option<tokio::time::Instant>,
}

impl BatchSource for ConsumerBatches<'_> {
    async fn recv(&mut self) -> Result<FetchedMessage, KafkaError> {
        match self.messages.next().await {
            Some(received) => received.map(|message| fetch(&message, &mut self.last_topic, self.reading)),
            // librdkafka's message streams never end.
            None => std::future::pending().await,
        }
    }

    async fn admit(
        &mut self,
        message: &FetchedMessage,
        batch: &mut Vec<FetchedMessage>,
        cancel: &CancellationToken,
    ) -> Result<BatchAdmission, RouteError> {
        if self.consumer.context().rebalances.has_changes() {
            if self.sink.is_none() {
                return Ok(BatchAdmission::HoldBack);
            }
            if let Some(changes) = self.consumer.context().rebalances.take() {
                self.apply_assignment_changes(changes, cancel).await?;
            }
        }
        Ok(self.resumption.admit(self.route, self.consumer, message, batch))
    }

    fn idle_wakeups(&self) -> IdleWakeups {
        let retry_after = if self.consumer.context().rebalances.has_changes() {
            // A change whose signal another batch took (the read-ahead task hands it over).
            Some(std::time::Duration::ZERO)
        } else {
            let check = self.still_held_check.map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
            match (self.resumption.retry_after(), check) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        IdleWakeups { signal: Some(self.consumer.context().rebalances.signal()), retry_after }
    }

    /// Acts on a rebalance while no message comes: asks the sink where the new partitions
    /// resume and seeks there at once. The read-ahead task, with no sink, hands over instead.
    async fn attend(
        &mut self,
        batch: &mut Vec<FetchedMessage>,
        cancel: &CancellationToken,
    ) -> Result<bool, RouteError> {
        if self.consumer.context().rebalances.has_changes() {
            if self.sink.is_none() {
                return Ok(true);
            }
            if let Some(changes) = self.consumer.context().rebalances.take() {
                self.apply_assignment_changes(changes, cancel).await?;
            }
        }
        if self.still_held_check.is_some_and(|at| at <= tokio::time::Instant::now()) {
            self.still_held_check = Some(tokio::time::Instant::now() + STILL_HELD_CHECK);
            if batch.is_empty() {
                match self.sink.as_deref_mut() {
                    // The read-ahead task ends its empty batch: the worker, with the sink, asks.
                    None => return Ok(true),
                    Some(sink) => match sink.check_still_held().await {
                        Ok(()) => {}
                        Err(error @ SinkError::Behind { .. }) => return Err(RouteError::Sink(error)),
                        // The next write meets it, and retries as for any write. Meanwhile
                        // the destination is away (a failover under way?): asked again sooner,
                        // so what it lost is written again soon after it is back.
                        Err(error) => {
                            debug!(route = %self.route.name, error = %error, "Idle check of the sink failed.");
                            self.still_held_check = Some(tokio::time::Instant::now() + STILL_HELD_RETRY);
                        }
                    },
                }
            }
        }
        self.resumption.seek_early(self.route, self.consumer, batch);
        Ok(false)
    }
}

/// How long a route that stores offsets in its sink waits idle before asking the sink whether
/// its destination still holds what it acknowledged (then again as often while idle).
const STILL_HELD_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// How soon the idle check is made again after it failed (the destination did not answer).
const STILL_HELD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the task reading the next batch takes along, and gives back with the batch.
struct ReadAhead {
    route: Arc<RouteConfig>,
    consumer: Arc<RouteConsumer>,
    resumption: Resumption,
    /// A message held back at a rebalance.
    held: Vec<FetchedMessage>,
    /// The route's batch size.
    max_events: usize,
    /// How the route reads messages, for its sink.
    reading: ReadSettings,
    /// After how long idle the batch ends for the worker to ask the sink
    /// ([`Sink::check_still_held`]); `None` for a sink that does not store offsets.
    still_held_after: Option<std::time::Duration>,
    pause_requests: tokio::sync::watch::Receiver<bool>,
    cancel: CancellationToken,
}

impl ReadAhead {
    /// Reads and prepares the next batch; gives itself back with it.
    async fn read(mut self) -> (Self, Result<Option<(Vec<FetchedMessage>, PreparedBatch)>, RouteError>) {
        let feed = BatchReader {
            route: &self.route,
            consumer: &self.consumer,
            max_events: self.max_events,
            reading: self.reading,
            still_held_after: self.still_held_after,
        };
        let read =
            feed.next_batch(None, &mut self.resumption, &mut self.held, &mut self.pause_requests, &self.cancel).await;
        (self, read)
    }
}

/// Where a route's batches come from: its consumer, read as its sink needs.
#[derive(Clone, Copy)]
struct BatchReader<'a> {
    route: &'a RouteConfig,
    consumer: &'a RouteConsumer,
    /// The route's `batch.max_events`, or the sink's default.
    max_events: usize,
    reading: ReadSettings,
    /// For a sink that stores offsets: after how long idle it is asked whether its destination
    /// still holds what it acknowledged ([`Sink::check_still_held`]), then every
    /// [`STILL_HELD_CHECK`] while idle.
    still_held_after: Option<std::time::Duration>,
}

impl<'a> BatchReader<'a> {
    /// Gathers the next batch (held messages first) and prepares it: the one path of both the
    /// worker, which has the sink at hand for rebalances, and the read-ahead task, which has
    /// not (a rebalance ends its batch). `None` when the batch came out empty.
    async fn next_batch<'b>(
        self,
        sink: Option<&'b mut dyn Sink>,
        resumption: &'b mut Resumption,
        held: &mut Vec<FetchedMessage>,
        pause_requests: &mut tokio::sync::watch::Receiver<bool>,
        cancel: &CancellationToken,
    ) -> Result<Option<(Vec<FetchedMessage>, PreparedBatch)>, RouteError>
    where
        'a: 'b,
    {
        let mut inbox = ConsumerBatches {
            route: self.route,
            consumer: self.consumer,
            messages: self.consumer.stream(),
            last_topic: None,
            reading: self.reading,
            still_held_check: self.still_held_after.map(|after| tokio::time::Instant::now() + after),
            sink,
            resumption,
        };
        let limits =
            Limits { route: &self.route.name, max_events: self.max_events, max_wait: self.route.batch.max_wait };
        let mut batch = gather(&mut inbox, held, limits, pause_requests, cancel).await?;
        if batch.is_empty() {
            return Ok(None);
        }
        let prepared = prepare(self.route, &mut batch, self.reading);
        Ok(Some((batch, prepared)))
    }
}

impl ConsumerBatches<'_> {
    /// Asks the sink where newly assigned partitions should resume.
    async fn apply_assignment_changes(
        &mut self,
        changes: AssignmentChanges,
        cancel: &CancellationToken,
    ) -> Result<(), RouteError> {
        match self.sink.as_deref_mut() {
            Some(sink) => self.resumption.rebalanced(self.route, changes, sink, cancel).await,
            None => Ok(()),
        }
    }
}
