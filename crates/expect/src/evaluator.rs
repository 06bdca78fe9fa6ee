//! The Kafka side of expectations: the consumer group that decides who owns which source, the
//! state topic, and the transactions that publish alerts, state and offsets together.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use herald_kafka::KafkaProperties;

use crate::config::{ExpectConfig, ExpectationsConfig};
use herald_kafka::{
    client_config, ensure_topics, partition_counts, AssignmentChanges, Rebalances, TopicSpec, TransactionalProducer,
};
use herald_sdk::printable::{printable, LOG_CHARS};
use herald_sdk::StageEvent;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::engine::{Alert, Engine, PairKey, PairState};
use crate::error::ExpectError;
use crate::partition::partition_of;
use crate::rules::{compile, Rule};

/// The most sources warned about as misplaced (one warning each).
const MAX_MISPLACED_WARNED: usize = 1000;

/// How long a transaction may stay open before the broker aborts it: a process killed
/// mid-transaction holds back the new owner of its partitions at most this long.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to collect changes (offsets, state) before committing them; alerts go at once.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// How long to wait before starting over after a failure.
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// A wait on Kafka's answer.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest restore of one partition's state.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// Evaluates the config's `[[expect]]` rules until `cancel`. Kafka failures start the evaluator
/// over from what it committed; an invalid rule is an error.
pub async fn run(
    kafka: &KafkaProperties,
    settings: &ExpectationsConfig,
    rules: &[ExpectConfig],
    cancel: CancellationToken,
) -> Result<(), ExpectError> {
    let rules = Arc::new(compile(rules)?);
    if rules.is_empty() {
        return Ok(());
    }
    while !cancel.is_cancelled() {
        let result = match Evaluator::start(kafka, settings, Arc::clone(&rules)).await {
            Ok(evaluator) => evaluator.run(&cancel).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(err @ ExpectError::Rule { .. }) => return Err(err),
            Err(err) => {
                warn!(error = %herald_sdk::error_chain(&err).join(": "), "Expectations: starting over from what was committed.");
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(RESTART_AFTER) => {}
                }
            }
        }
    }
    Ok(())
}

/// The consumer's context: notes rebalances for the evaluator's loop.
#[derive(Default)]
struct EvaluatorContext {
    rebalances: Rebalances,
}

impl ClientContext for EvaluatorContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching a partition's end is how the evaluator knows it is caught up, not an error.
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if end_of_partition {
            return;
        }
        if let Some(folded) = herald_kafka::fold::fold(&format!("expectations: {error}")) {
            warn!(error = %error, reason, "Expectations: Kafka client error{}.", herald_kafka::fold::repeated(folded));
        }
    }
}

impl ConsumerContext for EvaluatorContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.note(rebalance, true);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.note(rebalance, false);
    }
}

/// One run of the evaluator, from its committed state.
struct Evaluator {
    props: KafkaProperties,
    settings: ExpectationsConfig,
    state_topic: String,
    partitions: i32,
    consumer: Arc<StreamConsumer<EvaluatorContext>>,
    /// A client of its own for end offsets: the consumer's connection is often busy with a
    /// long-polling fetch, which a lookup would wait behind.
    lookup: Arc<BaseConsumer>,
    /// The transactional producer: polled only while a transaction commits, so an idle
    /// evaluator costs no producer thread waking ten times a second.
    producer: TransactionalProducer,
    engine: Engine,
    /// Events partitions this process holds, restored.
    owned: BTreeSet<i32>,
    /// The next offset to read, per owned partition: every transaction commits all of them,
    /// so every transaction is fenced by the group's generation (KIP-447), alerts alone too.
    positions: BTreeMap<i32, i64>,
    /// Whether `positions` moved since the last commit.
    moved: bool,
    /// Alerts waiting for the next transaction.
    alerts: Vec<Alert>,
    /// When uncommitted changes must be committed.
    commit_by: Option<Instant>,
    /// Sources seen on a partition other than the configured partitioner's (warned once).
    misplaced: HashSet<String>,
}

impl Evaluator {
    async fn start(
        props: &KafkaProperties,
        settings: &ExpectationsConfig,
        rules: Arc<Vec<Rule>>,
    ) -> Result<Self, ExpectError> {
        let topic = settings.topic.clone();
        let counts = {
            let (props, topics) = (props.clone(), vec![topic.clone()]);
            tokio::task::spawn_blocking(move || partition_counts(&props, &topics, KAFKA_TIMEOUT))
                .await
                .map_err(|_| ExpectError::kafka("reading metadata")(KafkaError::Canceled))?
                .map_err(ExpectError::kafka("reading metadata"))?
        };
        let partitions = counts.first().map_or(0, |(_, count)| *count);
        if partitions == 0 {
            return Err(ExpectError::NoTopic(topic));
        }
        let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
        let state_topic = settings.state_topic();
        ensure_topics(props, &[TopicSpec::compacted(state_topic.as_str(), partitions)])
            .await
            .map_err(ExpectError::kafka("creating the state topic"))?;

        let consumer: StreamConsumer<EvaluatorContext> = client_config(props)
            .set("group.id", &settings.group_id)
            .set("client.id", format!("herald.expect.{}", settings.group_id))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // A dead process's sources move on within seconds.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1500")
            .create_with_context(EvaluatorContext::default())
            .map_err(ExpectError::kafka("creating the consumer"))?;
        consumer.subscribe(&[topic.as_str()]).map_err(ExpectError::kafka("subscribing"))?;
        let lookup: BaseConsumer = client_config(props)
            .set("group.id", format!("{}.lookup", settings.group_id))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(ExpectError::kafka("creating the lookup client"))?;
        let id = format!("herald.expect.{}.{:016x}", settings.group_id, rand::random::<u64>());
        let producer = TransactionalProducer::start(props, &id, TRANSACTION_TIMEOUT)
            .await
            .map_err(ExpectError::kafka("starting the transactional producer"))?;
        info!(topic = %topic, group = %settings.group_id, rules = rules.len(), "Expectations evaluator started.");
        Ok(Self {
            props: props.clone(),
            settings: settings.clone(),
            state_topic,
            partitions,
            consumer: Arc::new(consumer),
            lookup: Arc::new(lookup),
            producer,
            engine: Engine::new(rules),
            owned: BTreeSet::new(),
            positions: BTreeMap::new(),
            moved: false,
            alerts: Vec::new(),
            commit_by: None,
            misplaced: HashSet::new(),
        })
    }

    fn partition_of(&self, source: &str) -> i32 {
        partition_of(self.settings.partitioner, source.as_bytes(), self.partitions)
    }

    async fn run(mut self, cancel: &CancellationToken) -> Result<(), ExpectError> {
        loop {
            let wake = self.next_wake();
            let received = tokio::select! {
                _ = cancel.cancelled() => {
                    self.commit().await?;
                    return Ok(());
                }
                received = self.consumer.recv() => Some(received.map(|message| message.detach())),
                _ = tokio::time::sleep_until(wake) => None,
            };
            if let Some(changes) = self.consumer.context().rebalances.take() {
                self.rebalanced(changes).await?;
            }
            match received {
                Some(Ok(message)) => self.read(&message),
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(err)) => {
                    if let Some(folded) = herald_kafka::fold::fold(&format!("expectations: consume: {err}")) {
                        let repeated = herald_kafka::fold::repeated(folded);
                        warn!(error = %err, "Expectations: Kafka consumer error{repeated}; librdkafka will retry.");
                    }
                }
            }
            self.tick().await?;
            let due = self.commit_by.is_some_and(|at| at <= Instant::now());
            if !self.alerts.is_empty() || due {
                self.commit().await?;
            }
        }
    }

    /// The next moment to look again: a deadline, a pending commit, or a second from now (to
    /// notice rebalances while idle).
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        if let Some(at) = self.engine.next_wakeup() {
            // A deadline already passed is waiting for its partition to be read to the end:
            // look again soon, without spinning.
            let until = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO).max(Duration::from_millis(20));
            wake = wake.min(now + until);
        }
        if let Some(at) = self.commit_by {
            wake = wake.min(at);
        }
        wake
    }

    fn read(&mut self, message: &OwnedMessage) {
        let partition = message.partition();
        if !self.owned.contains(&partition) {
            return;
        }
        self.positions.insert(partition, message.offset() + 1);
        self.moved = true;
        self.commit_by.get_or_insert_with(|| Instant::now() + COMMIT_EVERY);
        let Some(event) = message.payload().and_then(|payload| StageEvent::from_json(payload).ok()) else { return };
        let expected = self.partition_of(&event.source);
        if expected != partition {
            // Warned once per source, for a bounded number of sources: a producer's sources are
            // not to grow herald's memory.
            if self.misplaced.len() < MAX_MISPLACED_WARNED && self.misplaced.insert(event.source.clone()) {
                warn!(
                    source = %printable(&event.source, LOG_CHARS),
                    partition, expected, partitioner = ?self.settings.partitioner,
                    "Expectations: this source's events are not where the configured partitioner puts them; set [expectations] partitioner to the producers' own."
                );
            }
            return;
        }
        let alerts = self.engine.on_event(&event, Utc::now());
        self.alerts.extend(alerts);
    }

    async fn tick(&mut self) -> Result<(), ExpectError> {
        let now = Utc::now();
        if self.engine.next_wakeup().is_none_or(|at| at > now) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let caught_up = self.caught_up().await?;
        debug!(?caught_up, took = ?started.elapsed(), "Expectations: a deadline passed; partitions read to their end.");
        let partitioner = self.settings.partitioner;
        let partitions = self.partitions;
        let alerts = self
            .engine
            .on_tick(now, |source| caught_up.contains(&partition_of(partitioner, source.as_bytes(), partitions)));
        self.alerts.extend(alerts);
        Ok(())
    }

    /// The owned partitions read up to their end (the last stable offset) as of now.
    async fn caught_up(&self) -> Result<BTreeSet<i32>, ExpectError> {
        let consumer = Arc::clone(&self.consumer);
        let lookup = Arc::clone(&self.lookup);
        let positions = self.positions.clone();
        let topic = self.settings.topic.clone();
        tokio::task::spawn_blocking(move || {
            let position = consumer.position().map_err(ExpectError::kafka("reading positions"))?;
            let mut done = BTreeSet::new();
            for (partition, read) in positions {
                // librdkafka's position also moves past transaction markers at the end; before
                // the first fetch it has none, and what was read (or committed) stands.
                let at = match position.find_partition(&topic, partition).map(|element| element.offset()) {
                    Some(Offset::Offset(at)) => at.max(read),
                    _ => read,
                };
                let (_, end) = lookup
                    .fetch_watermarks(&topic, partition, KAFKA_TIMEOUT)
                    .map_err(ExpectError::kafka("reading end offsets"))?;
                if at >= end {
                    done.insert(partition);
                }
            }
            Ok(done)
        })
        .await
        .map_err(|_| ExpectError::kafka("reading positions")(KafkaError::Canceled))?
    }

    /// Takes in what a rebalance changed: the evaluator reads one topic, so only partition
    /// numbers matter.
    async fn rebalanced(&mut self, changes: AssignmentChanges) -> Result<(), ExpectError> {
        let revoked: Vec<i32> = changes.revoked.iter().map(|(_, partition)| *partition).collect();
        let assigned: Vec<i32> = changes.assigned.iter().map(|(_, partition)| *partition).collect();
        if !revoked.is_empty() {
            // The partitions are gone: what was not committed for them is dropped, never
            // committed late (their new owner starts from the last commit and redoes it).
            for partition in &revoked {
                self.owned.remove(partition);
                self.positions.remove(partition);
            }
            let (partitioner, partitions, owned) = (self.settings.partitioner, self.partitions, self.owned.clone());
            let owns = |source: &str| owned.contains(&partition_of(partitioner, source.as_bytes(), partitions));
            self.engine.release(owns);
            self.alerts.retain(|alert| owns(&alert.source));
            info!(partitions = ?revoked, "Expectations: partitions moved to another process.");
        }
        for partition in assigned {
            let restored = self.restore(partition).await?;
            let position = self.committed_position(partition).await?;
            self.positions.insert(partition, position);
            let count = restored.len();
            let (partitioner, partitions) = (self.settings.partitioner, self.partitions);
            self.engine.adopt(
                restored,
                |source| partition_of(partitioner, source.as_bytes(), partitions) == partition,
                Utc::now(),
            );
            self.owned.insert(partition);
            info!(partition, restored = count, watched = self.engine.len(), "Expectations: partition taken over.");
        }
        Ok(())
    }

    /// Where the group's committed offset (or, with none, the start) puts `partition`.
    async fn committed_position(&self, partition: i32) -> Result<i64, ExpectError> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.settings.topic.clone();
        tokio::task::spawn_blocking(move || {
            let mut wanted = TopicPartitionList::new();
            wanted.add_partition(&topic, partition);
            let committed = consumer
                .committed_offsets(wanted, KAFKA_TIMEOUT)
                .map_err(ExpectError::kafka("reading committed offsets"))?;
            if let Some(Offset::Offset(offset)) = committed.find_partition(&topic, partition).map(|e| e.offset()) {
                return Ok(offset);
            }
            let (low, _) = consumer
                .fetch_watermarks(&topic, partition, KAFKA_TIMEOUT)
                .map_err(ExpectError::kafka("reading offsets"))?;
            Ok(low)
        })
        .await
        .map_err(|_| ExpectError::kafka("reading committed offsets")(KafkaError::Canceled))?
    }

    /// The committed state of `partition`, read after any transaction still open on it ended.
    async fn restore(&self, partition: i32) -> Result<Vec<(PairKey, PairState)>, ExpectError> {
        let (props, topic) = (self.props.clone(), self.state_topic.clone());
        tokio::task::spawn_blocking(move || restore_partition(&props, &topic, partition))
            .await
            .map_err(|_| ExpectError::kafka("restoring state")(KafkaError::Canceled))?
    }

    /// Publishes the pending alerts and changed state, with the offsets read, in one transaction.
    async fn commit(&mut self) -> Result<(), ExpectError> {
        self.commit_by = None;
        let states = self.engine.take_changed();
        if self.alerts.is_empty() && states.is_empty() && !self.moved {
            return Ok(());
        }
        if self.positions.is_empty() {
            // Nothing owned: nothing to alert or persist.
            self.alerts.clear();
            return Ok(());
        }
        self.moved = false;
        let alerts = std::mem::take(&mut self.alerts);
        let now = Utc::now();
        let mut records = Vec::with_capacity(alerts.len() + states.len());
        for alert in &alerts {
            let partition = self.partition_of(&alert.source);
            records.push((self.settings.topic.clone(), partition, alert.source.clone(), alert.to_json(now)));
        }
        for ((rule, source), state) in &states {
            let key = serde_json::json!([rule, source]).to_string();
            let value = serde_json::to_string(state).unwrap_or_default();
            records.push((self.state_topic.clone(), self.partition_of(source), key, value));
        }
        let mut offsets = TopicPartitionList::new();
        for (&partition, &next) in &self.positions {
            offsets
                .add_partition_offset(&self.settings.topic, partition, Offset::Offset(next))
                .map_err(ExpectError::kafka("listing offsets"))?;
        }
        let metadata = self
            .consumer
            .group_metadata()
            .ok_or_else(|| ExpectError::kafka("reading the group's metadata")(KafkaError::Canceled))?;
        let started = std::time::Instant::now();
        transact(&self.producer, &records, offsets, metadata).await?;
        debug!(took = ?started.elapsed(), alerts = alerts.len(), states = states.len(), "Expectations committed.");
        for alert in &alerts {
            info!(rule = %alert.rule, source = %printable(&alert.source, LOG_CHARS), stage = %printable(&alert.stage, LOG_CHARS), kind = ?alert.kind, expected_by = %alert.expected_by, "Expectation alert published.");
        }
        Ok(())
    }
}

/// One transaction: `records` (topic, partition, key, value), then the consumer's `offsets`
/// under the group's `metadata` (which fences a process the group has moved on from), then the
/// commit; on any failure the transaction is aborted and nothing of it is visible.
async fn transact(
    producer: &TransactionalProducer,
    records: &[(String, i32, String, String)],
    offsets: TopicPartitionList,
    metadata: ConsumerGroupMetadata,
) -> Result<(), ExpectError> {
    producer.begin().map_err(ExpectError::kafka("beginning a transaction"))?;
    let result = async {
        let deliveries = records.iter().map(|(topic, partition, key, value)| {
            let record = FutureRecord::to(topic).partition(*partition).key(key.as_str()).payload(value.as_str());
            // Waits for room while librdkafka's queue is full, then for the acknowledgement.
            producer.producer().send(record, KAFKA_TIMEOUT)
        });
        // Every record is acknowledged before the offsets join the transaction.
        for delivered in join_all(deliveries).await {
            delivered.map_err(|(err, _)| ExpectError::kafka("writing the records")(err))?;
        }
        producer
            .send_offsets(offsets, metadata)
            .await
            .map_err(ExpectError::kafka("committing offsets in the transaction"))?;
        producer.commit().await.map_err(ExpectError::kafka("committing a transaction"))
    }
    .await;
    if result.is_err() {
        let _ = producer.abort().await;
    }
    result
}

/// Reads partition `partition` of the state topic: waits until no transaction is open on it
/// (a dead owner's is aborted by the broker within the transaction timeout), then reads every
/// committed record to the end; the last record of each pair wins.
fn restore_partition(
    props: &KafkaProperties,
    topic: &str,
    partition: i32,
) -> Result<Vec<(PairKey, PairState)>, ExpectError> {
    let committed: BaseConsumer = client_config(props)
        .set("group.id", "herald-expect-restore")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(ExpectError::kafka("creating the restore consumer"))?;
    let uncommitted: BaseConsumer = client_config(props)
        .set("group.id", "herald-expect-restore")
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(ExpectError::kafka("creating the restore consumer"))?;
    let started = std::time::Instant::now();
    let timed_out = || ExpectError::Restore { topic: topic.to_owned(), partition, seconds: RESTORE_TIMEOUT.as_secs() };
    let end = loop {
        let (_, stable) = committed
            .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
            .map_err(ExpectError::kafka("reading state offsets"))?;
        let (_, high) = uncommitted
            .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
            .map_err(ExpectError::kafka("reading state offsets"))?;
        if stable >= high {
            break stable;
        }
        if started.elapsed() > RESTORE_TIMEOUT {
            return Err(timed_out());
        }
        debug!(partition, stable, high, "Expectations: waiting for an open transaction on the state to end.");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut states: BTreeMap<PairKey, PairState> = BTreeMap::new();
    if end == 0 {
        return Ok(Vec::new());
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning).map_err(ExpectError::kafka("assigning"))?;
    committed.assign(&assignment).map_err(ExpectError::kafka("assigning"))?;
    loop {
        if started.elapsed() > RESTORE_TIMEOUT {
            return Err(timed_out());
        }
        match committed.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                let key = message.key().and_then(|key| serde_json::from_slice::<(String, String)>(key).ok());
                let state = message.payload().and_then(|value| serde_json::from_slice::<PairState>(value).ok());
                if let (Some(key), Some(state)) = (key, state) {
                    states.insert(key, state);
                }
                if message.offset() + 1 >= end {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(err)) => warn!(error = %err, "Expectations: error while restoring state; retrying."),
            None => {}
        }
    }
    Ok(states.into_iter().collect())
}
