//! Reading a topic from a point in time, with no consumer group: what `herald wait`, `herald
//! status` and the status board need. It joins no group and commits nothing, so any number of
//! readers can run at once, and it knows when it has read the history that was there when it
//! started (each partition's end offset then) from events that arrive later.
//!
//! Topics written with Kafka transactions (herald's own source and expectations) are read as a
//! `read_committed` consumer reads them: the end of the history is the last stable offset, and
//! the commit and abort markers there take offsets but are never messages. So the history of a
//! partition ends when the consumer's *position* reaches its end, which the reader also checks
//! while no message comes: a history that ends in a marker or an aborted transaction is done
//! without waiting for a message after it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

use herald_sdk::StageEvent;

use crate::properties::{client_config, KafkaProperties};

/// How long a metadata or offset lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the positions of partitions with history left are checked while no message comes.
const POSITION_CHECK: Duration = Duration::from_millis(50);

/// Why a topic cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Kafka did not answer a lookup, or the consumer failed.
    #[error("Kafka at {brokers}: {what}")]
    Kafka {
        /// The bootstrap servers.
        brokers: String,
        /// What herald was doing.
        what: &'static str,
        /// The client's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// The topic does not exist (or has no partitions).
    #[error("topic `{topic}` does not exist at {brokers}")]
    NoSuchTopic {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
    },
}

/// One message read.
#[derive(Debug)]
pub struct Read {
    /// The stage event, or `None` when the message is not one (it is skipped, not an error).
    pub event: Option<StageEvent>,
    /// Whether the message was already in the topic when the reader started.
    pub in_history: bool,
    /// Where it was read: topic, partition, offset.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Where it was born when not on Kafka: its `herald.origin` header.
    pub origin: Option<String>,
    /// For a dead letter: the route that sent it and the topic, partition and offset it was
    /// read at, from its Kafka Connect headers.
    pub dead_letter_of: Option<(String, String, i32, i64)>,
}

/// A reader of some topics from a point in time on.
pub struct TopicReader {
    consumer: StreamConsumer,
    /// Per partition with history left to read: the offset where its history ends.
    history_end: HashMap<(String, i32), i64>,
    brokers: String,
}

impl TopicReader {
    /// Starts reading every partition of `topics` at the first message at or after `since`.
    /// `label` names the reader's client (`herald-<label>`). The lookups block, so they run on
    /// tokio's blocking pool.
    pub async fn open(
        props: &KafkaProperties,
        topics: &[String],
        since: DateTime<Utc>,
        label: &str,
    ) -> Result<Self, HistoryError> {
        let (props, topics, label) = (props.clone(), topics.to_vec(), label.to_owned());
        let brokers = props.bootstrap_servers().to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&props, &topics, since, &label)).await.unwrap_or_else(
            |_join| {
                Err(HistoryError::Kafka { brokers, what: "looking up offsets", source: Box::new(KafkaError::Canceled) })
            },
        )
    }

    fn open_blocking(
        props: &KafkaProperties,
        topics: &[String],
        since: DateTime<Utc>,
        label: &str,
    ) -> Result<Self, HistoryError> {
        let brokers = props.bootstrap_servers().to_owned();
        let kafka = |what: &'static str| {
            let brokers = brokers.clone();
            move |source| HistoryError::Kafka { brokers, what, source: Box::new(source) }
        };
        let consumer: StreamConsumer = client_config(props)
            // Needed by librdkafka for a consumer, though nothing joins or commits.
            .set("group.id", format!("herald-{label}-{}", std::process::id()))
            .set("client.id", format!("herald-{label}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // Committed events only; and the end offsets looked up are the last stable offsets.
            .set("isolation.level", "read_committed")
            // A 16 MiB prefetch (librdkafka's default is 64 MiB), as routes use: a long history
            // is read as fast, in a quarter of the memory.
            .set("queued.max.messages.kbytes", props.get("queued.max.messages.kbytes").unwrap_or("16384"))
            .create()
            .map_err(kafka("creating a consumer"))?;
        let mut by_time = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT).map_err(kafka("reading metadata"))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(HistoryError::NoSuchTopic { topic: topic.clone(), brokers });
            }
            for partition in partitions {
                by_time
                    .add_partition_offset(topic, partition, Offset::Offset(since.timestamp_millis()))
                    .map_err(kafka("listing partitions"))?;
            }
        }
        let starts =
            consumer.offsets_for_times(by_time, LOOKUP_TIMEOUT).map_err(kafka("looking up offsets by time"))?;
        let mut history_end = HashMap::new();
        for element in starts.elements() {
            if let Offset::Offset(start) = element.offset() {
                let (_, high) = consumer
                    .fetch_watermarks(element.topic(), element.partition(), LOOKUP_TIMEOUT)
                    .map_err(kafka("reading end offsets"))?;
                if start < high {
                    history_end.insert((element.topic().to_owned(), element.partition()), high);
                }
            }
        }
        consumer.assign(&starts).map_err(kafka("assigning partitions"))?;
        Ok(Self { consumer, history_end, brokers })
    }

    /// Whether everything that was in the topics when the reader started has been read.
    pub fn history_done(&self) -> bool {
        self.history_end.is_empty()
    }

    /// The next message, waiting for one when none is fetched; `None` when, while waiting, the
    /// history turned out to be read (its last offsets were markers or aborted messages).
    pub async fn next(&mut self) -> Result<Option<Read>, HistoryError> {
        loop {
            if self.history_end.is_empty() {
                return self.receive().await.map(Some);
            }
            tokio::select! {
                received = self.receive() => return received.map(Some),
                () = tokio::time::sleep(POSITION_CHECK) => {
                    if self.positions_past_history() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn receive(&mut self) -> Result<Read, HistoryError> {
        let message = self.consumer.recv().await.map_err(|source| HistoryError::Kafka {
            brokers: self.brokers.clone(),
            what: "reading",
            source: Box::new(source),
        })?;
        let key = (message.topic().to_owned(), message.partition());
        let in_history = match self.history_end.get(&key) {
            Some(&end) => {
                if message.offset() + 1 >= end {
                    self.history_end.remove(&key);
                }
                message.offset() < end
            }
            None => false,
        };
        let event = message.payload().and_then(|payload| StageEvent::from_json(payload).ok());
        let origin = crate::headers::origin_of(message.headers());
        let dead_letter_of = crate::headers::dead_letter_of(message.headers());
        Ok(Read { event, in_history, topic: key.0, partition: key.1, offset: message.offset(), origin, dead_letter_of })
    }

    /// Drops the partitions whose position reached the end of their history (past markers and
    /// aborted messages that never come as messages); whether the whole history is now read.
    fn positions_past_history(&mut self) -> bool {
        if let Ok(positions) = self.consumer.position() {
            for element in positions.elements() {
                let key = (element.topic().to_owned(), element.partition());
                let reached = matches!(
                    (element.offset(), self.history_end.get(&key)),
                    (Offset::Offset(position), Some(&end)) if position >= end
                );
                if reached {
                    self.history_end.remove(&key);
                }
            }
        }
        self.history_end.is_empty()
    }
}
