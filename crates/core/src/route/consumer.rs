//! The route's Kafka consumer: its settings, and the context that watches rebalances and
//! commits for the worker and the admin API.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use herald_kafka::{client_config, KafkaProperties, Rebalances};

use crate::config::RouteConfig;
use crate::observe::RouteShared;

/// The consumer context: observes rebalances and commits.
pub(crate) struct RouteContext {
    route: String,
    stats: Arc<RouteShared>,
    /// Partitions assigned or revoked since the worker last looked, for `Sink::stored_offsets`.
    pub(crate) rebalances: Rebalances,
}

/// No statistics callback: the lag, and that Kafka is up again, come from [`super::lag`].
impl ClientContext for RouteContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if let KafkaError::Global(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) = error {
            self.stats.kafka_up.store(false, Ordering::Relaxed);
        }
        if let Some(folded) = herald_kafka::fold::fold(&format!("route {}: {error}", self.route)) {
            error!(route = %self.route, error = %error, reason, "Kafka client error{}.", herald_kafka::fold::repeated(folded));
        }
    }
}

impl ConsumerContext for RouteContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.note(rebalance, true);
        if let Rebalance::Revoke(partitions) = rebalance {
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
        self.rebalances.note(rebalance, false);
        match rebalance {
            Rebalance::Assign(partitions) => {
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
    prefetch_kbytes: usize,
    instance_id: Option<&str>,
) -> Result<RouteConsumer, KafkaError> {
    let mut config = client_config(&KafkaProperties::default());
    // Defaults the `[kafka]` table may override…
    config
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The route's share of the process's prefetch budget, per partition: in bytes, in
        // messages (librdkafka keeps fetching until the queue holds `queued.min.messages`, and a
        // queued message costs about half a KiB besides its payload) and in the size of one
        // fetch, so many routes draining a backlog do not each pull a whole megabyte at a time.
        .set("queued.max.messages.kbytes", prefetch_kbytes.to_string())
        .set("queued.min.messages", (prefetch_kbytes * 2).clamp(1_000, 100_000).to_string())
        .set("fetch.message.max.bytes", (prefetch_kbytes * 1024 / 4).clamp(64 * 1024, 1024 * 1024).to_string())
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
        // No statistics: a client with them keeps latency histograms herald never reads.
        .set("statistics.interval.ms", "0");
    if let Some(instance) = instance_id {
        // Static membership: a restarted process takes its member's place at once.
        config.set("group.instance.id", format!("{instance}.{}", route.name));
    }
    let context = RouteContext { route: route.name.clone(), stats, rebalances: Rebalances::default() };
    let consumer: RouteConsumer = config.create_with_context(context)?;
    let topics: Vec<&str> = route.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}
