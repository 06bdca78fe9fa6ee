//! Where a route resumes, per topic-partition, as an operator needs it after an incident: the
//! position it reads from next (the sink's stored offsets where the sink keeps them with its
//! data, as the Postgres sink does, else the consumer group's committed offsets), the log's
//! start and end, the lag, and the time of the next event it will read.
//!
//! Reading joins no group and commits nothing: reading a group's committed offsets and one
//! message per partition leaves the group as it was. Moving a route ([`ResetTo`]) is for a
//! route no process runs: its group must be empty ([`group_members`]).

pub mod letters;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_kafka::KafkaProperties;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// How long each Kafka request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the positions could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    /// A Kafka request failed.
    #[error("Kafka: {context}: {source}")]
    Kafka {
        /// What was being read.
        context: &'static str,
        /// What librdkafka reported.
        #[source]
        source: KafkaError,
    },
    /// A topic the route reads is not in the cluster.
    #[error("topic `{0}` does not exist")]
    NoTopic(String),
    /// `--to-offset` named a partition the route does not read.
    #[error("the route does not read partition {partition} of `{topic}`")]
    NoPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// `--to-offset` named an offset the log does not hold.
    #[error("offset {offset} is outside `{topic}` partition {partition}'s log ({log_start} to its end, {log_end})")]
    OutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset asked for.
        offset: i64,
        /// The log's oldest offset.
        log_start: i64,
        /// One past its newest.
        log_end: i64,
    },
    /// Reading a window of a topic stopped short: no message for 30 s before its end.
    #[error("reading `{topic}` stalled before the end of partitions {partitions:?}")]
    Stalled {
        /// The topic.
        topic: String,
        /// The partitions not read to their end.
        partitions: Vec<i32>,
    },
    /// The blocking task reading Kafka died.
    #[error("internal task failed: {0}")]
    Task(String),
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> OffsetsError {
    move |source| OffsetsError::Kafka { context, source }
}

/// Who keeps the position a partition resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptBy {
    /// The sink, with its data (the Postgres sink's `herald_offsets`): Kafka's committed offset
    /// is not read by the route.
    Sink,
    /// The consumer group's committed offset.
    Group,
    /// Nobody yet: the route starts where `start_from` says.
    Nobody,
}

/// One topic-partition of a route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Position {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset the route reads next, when someone keeps one.
    pub resumes_from: Option<i64>,
    /// Who keeps it.
    pub kept_by: KeptBy,
    /// The consumer group's committed offset, shown beside the sink's (they differ for a
    /// route whose sink stores offsets; the sink's is the one that counts).
    pub group_committed: Option<i64>,
    /// The oldest offset the log still holds.
    pub log_start: i64,
    /// One past the newest.
    pub log_end: i64,
    /// Events between the position and the log's end (from the log's start when there is no
    /// position, or it was deleted by retention).
    pub lag: i64,
    /// When the next event the route will read was produced (its Kafka timestamp), if there is one.
    pub next_event_at: Option<DateTime<Utc>>,
}

/// The positions of a route reading `topics` (names) as consumer group `group`; `stored` are the
/// sink's own offsets when the sink keeps them (`None` for a sink that does not).
pub async fn route_positions(
    props: &KafkaProperties,
    group: &str,
    topics: &[String],
    stored: Option<HashMap<(String, i32), i64>>,
) -> Result<Vec<Position>, OffsetsError> {
    let (props, group, topics) = (props.clone(), group.to_owned(), topics.to_vec());
    blocking(move || read_positions(&props, &group, &topics, stored.as_ref())).await
}

fn read_positions(
    props: &KafkaProperties,
    group: &str,
    topics: &[String],
    stored: Option<&HashMap<(String, i32), i64>>,
) -> Result<Vec<Position>, OffsetsError> {
    let consumer: BaseConsumer = herald_kafka::client_config(props)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(kafka("creating a consumer"))?;
    let metadata = consumer.fetch_metadata(None, KAFKA_TIMEOUT).map_err(kafka("reading the cluster's metadata"))?;
    let mut partitions = TopicPartitionList::new();
    for name in topics {
        let topic = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == name && topic.error().is_none())
            .ok_or_else(|| OffsetsError::NoTopic(name.clone()))?;
        for partition in topic.partitions() {
            partitions.add_partition(name, partition.id());
        }
    }
    let committed =
        consumer.committed_offsets(partitions.clone(), KAFKA_TIMEOUT).map_err(kafka("reading the group's offsets"))?;
    let mut positions = Vec::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic().to_owned(), element.partition());
        let (log_start, log_end) =
            consumer.fetch_watermarks(&topic, partition, KAFKA_TIMEOUT).map_err(kafka("reading the log's ends"))?;
        let group_committed = match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        };
        let (resumes_from, kept_by) = match stored {
            Some(stored) => match stored.get(&(topic.clone(), partition)) {
                Some(offset) => (Some(*offset), KeptBy::Sink),
                None => (None, KeptBy::Nobody),
            },
            None => (group_committed, if group_committed.is_some() { KeptBy::Group } else { KeptBy::Nobody }),
        };
        let from = resumes_from.unwrap_or(log_start).max(log_start);
        positions.push(Position {
            topic,
            partition,
            resumes_from,
            kept_by,
            group_committed,
            log_start,
            log_end,
            lag: (log_end - from).max(0),
            next_event_at: None,
        });
    }
    next_event_times(&consumer, &mut positions)?;
    Ok(positions)
}

/// Reads the next event of each partition that has one, for its timestamp: one assignment, one
/// message per partition, no commit.
fn next_event_times(consumer: &BaseConsumer, positions: &mut [Position]) -> Result<(), OffsetsError> {
    let mut wanted = TopicPartitionList::new();
    for position in positions.iter().filter(|p| p.lag > 0) {
        let from = position.resumes_from.unwrap_or(position.log_start).max(position.log_start);
        wanted
            .add_partition_offset(&position.topic, position.partition, Offset::Offset(from))
            .map_err(kafka("choosing where to read"))?;
    }
    if wanted.count() == 0 {
        return Ok(());
    }
    consumer.assign(&wanted).map_err(kafka("assigning the partitions"))?;
    let mut left = wanted.count();
    let deadline = std::time::Instant::now() + KAFKA_TIMEOUT;
    while left > 0 && std::time::Instant::now() < deadline {
        let Some(received) = consumer.poll(Duration::from_millis(200)) else { continue };
        let Ok(message) = received else { continue };
        let Some(position) = positions
            .iter_mut()
            .find(|p| p.topic == message.topic() && p.partition == message.partition() && p.next_event_at.is_none())
        else {
            continue;
        };
        position.next_event_at = message.timestamp().to_millis().and_then(DateTime::from_timestamp_millis);
        left -= 1;
        // One message is enough: stop fetching this partition.
        let mut done = TopicPartitionList::new();
        done.add_partition(message.topic(), message.partition());
        let _ = consumer.pause(&done);
    }
    Ok(())
}

/// Where `herald offsets reset` moves a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTo {
    /// Each partition's oldest event still in the log.
    Earliest,
    /// Each partition's end: everything in the log now is skipped.
    Latest,
    /// Each partition's first event produced at or after this instant (its end when none).
    Time(DateTime<Utc>),
    /// One partition, to this offset; the others stay.
    Offset {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset read next.
        offset: i64,
    },
}

/// The members of consumer group `group` now, as `client id @ host`: empty when no process
/// runs the route.
pub async fn group_members(props: &KafkaProperties, group: &str) -> Result<Vec<String>, OffsetsError> {
    let (props, group) = (props.clone(), group.to_owned());
    blocking(move || {
        let consumer: BaseConsumer =
            herald_kafka::client_config(&props).create().map_err(kafka("creating a client"))?;
        let groups =
            consumer.fetch_group_list(Some(&group), KAFKA_TIMEOUT).map_err(kafka("describing the consumer group"))?;
        Ok(groups
            .groups()
            .iter()
            .filter(|found| found.name() == group)
            .flat_map(|found| found.members().iter().map(|m| format!("{} @ {}", m.client_id(), m.client_host())))
            .collect())
    })
    .await
}

/// The offset `to` means for each of `positions` (for [`ResetTo::Offset`], its one partition,
/// which must be one of them and whose log must hold the offset or end there).
pub async fn targets(
    props: &KafkaProperties,
    positions: &[Position],
    to: &ResetTo,
) -> Result<Vec<((String, i32), i64)>, OffsetsError> {
    match to {
        ResetTo::Earliest => Ok(positions.iter().map(|p| ((p.topic.clone(), p.partition), p.log_start)).collect()),
        ResetTo::Latest => Ok(positions.iter().map(|p| ((p.topic.clone(), p.partition), p.log_end)).collect()),
        ResetTo::Offset { topic, partition, offset } => {
            let position = positions
                .iter()
                .find(|p| &p.topic == topic && p.partition == *partition)
                .ok_or_else(|| OffsetsError::NoPartition { topic: topic.clone(), partition: *partition })?;
            if *offset < position.log_start || *offset > position.log_end {
                return Err(OffsetsError::OutOfRange {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    log_start: position.log_start,
                    log_end: position.log_end,
                });
            }
            Ok(vec![((topic.clone(), *partition), *offset)])
        }
        ResetTo::Time(at) => {
            let (props, at) = (props.clone(), at.timestamp_millis());
            let wanted: Vec<(String, i32, i64)> =
                positions.iter().map(|p| (p.topic.clone(), p.partition, p.log_end)).collect();
            blocking(move || {
                let consumer: BaseConsumer =
                    herald_kafka::client_config(&props).create().map_err(kafka("creating a client"))?;
                let mut list = TopicPartitionList::new();
                for (topic, partition, _) in &wanted {
                    list.add_partition_offset(topic, *partition, Offset::Offset(at))
                        .map_err(kafka("choosing the instant"))?;
                }
                let found =
                    consumer.offsets_for_times(list, KAFKA_TIMEOUT).map_err(kafka("finding offsets by time"))?;
                Ok(wanted
                    .into_iter()
                    .map(|(topic, partition, log_end)| {
                        let offset = found
                            .find_partition(&topic, partition)
                            .and_then(|element| match element.offset() {
                                Offset::Offset(offset) => Some(offset),
                                _ => None,
                            })
                            .unwrap_or(log_end);
                        ((topic, partition), offset)
                    })
                    .collect())
            })
            .await
        }
    }
}

/// Commits `offsets` as consumer group `group`'s: where a route whose sink keeps no offsets
/// resumes. Only for a group no process runs ([`group_members`] empty): the broker refuses a
/// commit from outside a group that has members.
pub async fn commit_group(
    props: &KafkaProperties,
    group: &str,
    offsets: &[((String, i32), i64)],
) -> Result<(), OffsetsError> {
    let (props, group, offsets) = (props.clone(), group.to_owned(), offsets.to_vec());
    blocking(move || {
        let consumer: BaseConsumer = herald_kafka::client_config(&props)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(kafka("creating a consumer"))?;
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(kafka("choosing the offsets"))?;
        }
        consumer.commit(&list, rdkafka::consumer::CommitMode::Sync).map_err(kafka("committing the group's offsets"))
    })
    .await
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OffsetsError> + Send + 'static,
) -> Result<T, OffsetsError> {
    tokio::task::spawn_blocking(work).await.map_err(|err| OffsetsError::Task(err.to_string()))?
}
