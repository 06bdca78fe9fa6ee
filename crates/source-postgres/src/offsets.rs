//! The offsets topic's records: each source's position, under its name, and the snapshot its
//! first start (or a resync) read, under `<name>.snapshot`; how they are encoded, and read back
//! without a producer (which would fence a running source). The one home of that layout: the
//! publisher writes these records, the source reads them, a retire forgets them.

use std::time::Duration;

use herald_kafka::client_config;
use herald_kafka::KafkaProperties;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use serde_json::{Map, Value};

use crate::capture::Cursor;
use crate::continuity::{Committed, ServerIdentity};
use crate::error::SourceError;

/// The key of source `name`'s position on the offsets topic.
pub(crate) fn position_key(name: &str) -> String {
    name.to_owned()
}

/// The key of source `name`'s snapshot on the offsets topic.
pub(crate) fn snapshot_key(name: &str) -> String {
    format!("{name}.snapshot")
}

/// A source's position, stored on the offsets topic in the same Kafka transaction as the
/// events before it: the trigger mode's (txid, change id) cursor, the WAL mode's commit LSN.
/// The publisher adds the server it was read from and the time (see [`Committed`]).
pub(crate) trait Checkpoint: Sized + Send + 'static {
    /// Writes the position's fields into the record's JSON object.
    fn encode(&self, record: &mut Map<String, Value>);
    /// Reads a record back; `None` for a record of another shape (another capture mode).
    fn decode(record: &Value) -> Option<Self>;
}

impl Checkpoint for Cursor {
    fn encode(&self, record: &mut Map<String, Value>) {
        record.insert("txid".into(), self.txid.into());
        record.insert("id".into(), self.id.into());
    }

    fn decode(record: &Value) -> Option<Self> {
        Some(Cursor { txid: record["txid"].as_u64()?, id: record["id"].as_i64()? })
    }
}

/// The cursor record: the position, the server it was read from, and when.
pub(crate) fn cursor_record(position: &impl Checkpoint, server: ServerIdentity) -> String {
    let mut record = Map::new();
    position.encode(&mut record);
    record.insert("system".into(), server.system.to_string().into());
    record.insert("timeline".into(), server.timeline.into());
    record.insert("at".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into());
    Value::Object(record).to_string()
}

/// A cursor record read back.
fn read_record<C: Checkpoint>(payload: &[u8]) -> Option<Committed<C>> {
    let record: Value = serde_json::from_slice(payload).ok()?;
    let position = C::decode(&record)?;
    let server = match (record["system"].as_str().and_then(|s| s.parse().ok()), record["timeline"].as_u64()) {
        (Some(system), Some(timeline)) => Some(ServerIdentity { system, timeline: u32::try_from(timeline).ok()? }),
        _ => None,
    };
    let at = record["at"].as_str().and_then(|at| at.parse().ok());
    Some(Committed { position, server, at })
}

/// The position source `name` committed last on `topic`, read with `read_committed`, without a
/// producer (which would fence a running source).
pub(crate) async fn read_committed<C: Checkpoint>(
    props: &KafkaProperties,
    topic: &str,
    name: &str,
) -> Result<Option<Committed<C>>, SourceError> {
    let key = position_key(name);
    let mut records = read_records(props, topic, std::slice::from_ref(&key)).await?;
    Ok(records.remove(&key).and_then(|payload| read_record(&payload)))
}

/// What source `name` stored on the offsets `topic`: its position, and the snapshot its first
/// start (or a resync) read, if any; one pass over the topic.
pub(crate) async fn read_start<C: Checkpoint>(
    props: &KafkaProperties,
    topic: &str,
    name: &str,
) -> Result<(Option<Committed<C>>, Option<crate::snapshot::Snapshot>), SourceError> {
    let (position_key, snapshot_key) = (position_key(name), snapshot_key(name));
    let mut records = read_records(props, topic, &[position_key.clone(), snapshot_key.clone()]).await?;
    let position = records.remove(&position_key).and_then(|payload| read_record(&payload));
    let snapshot = records.remove(&snapshot_key).and_then(|payload| read_record(&payload)).map(|c| c.position);
    Ok((position, snapshot))
}

async fn read_records(
    props: &KafkaProperties,
    topic: &str,
    keys: &[String],
) -> Result<std::collections::HashMap<String, Vec<u8>>, SourceError> {
    let (props, topic, keys) = (props.clone(), topic.to_owned(), keys.to_vec());
    tokio::task::spawn_blocking(move || read_latest_records(&props, &topic, &keys)).await?
}

/// Forgets source `name`'s position and snapshot: tombstones on the compacted offsets `topic`,
/// so the next activation starts as a first one.
pub(crate) async fn forget_position(props: &KafkaProperties, topic: &str, name: &str) -> Result<(), SourceError> {
    let producer: rdkafka::producer::FutureProducer =
        herald_kafka::reliable_producer_config(props).create().map_err(SourceError::kafka("creating a producer"))?;
    for key in [position_key(name), snapshot_key(name)] {
        let record: FutureRecord<'_, str, str> = FutureRecord::to(topic).key(&key);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(err, _)| SourceError::kafka("forgetting the source's position")(err))?;
    }
    Ok(())
}

/// The latest committed value of each of `keys` on partition 0 of the offsets `topic` (a
/// tombstone forgets it), read to the end with `read_committed`.
fn read_latest_records(
    props: &KafkaProperties,
    topic: &str,
    keys: &[String],
) -> Result<std::collections::HashMap<String, Vec<u8>>, SourceError> {
    let mut latest = std::collections::HashMap::new();
    let consumer: BaseConsumer = client_config(props)
        .set("group.id", format!("herald.source-offsets-reader.{}", keys.first().map_or("", String::as_str)))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(SourceError::kafka("creating the offsets reader"))?;
    let timeout = Duration::from_secs(15);
    // No offsets topic yet (a source never started): no position.
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(SourceError::kafka("reading the offsets topic's metadata"))?;
    if metadata
        .topics()
        .iter()
        .all(|found| found.name() != topic || found.error().is_some() || found.partitions().is_empty())
    {
        return Ok(latest);
    }
    let (start, end) =
        consumer.fetch_watermarks(topic, 0, timeout).map_err(SourceError::kafka("reading offsets watermarks"))?;
    if end <= start {
        return Ok(latest);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(SourceError::kafka("assigning the offsets topic"))?;
    consumer.assign(&assignment).map_err(SourceError::kafka("assigning the offsets topic"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let position = consumer
            .position()
            .ok()
            .and_then(|p| p.find_partition(topic, 0).and_then(|e| e.offset().to_raw()))
            .unwrap_or(-1);
        // Transaction markers take offsets too, so "done" is the position, not the last message.
        if position >= end {
            return Ok(latest);
        }
        // A position read only partly could be an old one: never guess.
        if std::time::Instant::now() > deadline {
            return Err(SourceError::kafka("reading the offsets topic to its end")(
                rdkafka::error::KafkaError::Canceled,
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else { continue };
                if keys.iter().any(|wanted| wanted == key) {
                    match message.payload() {
                        Some(payload) => latest.insert(key.to_owned(), payload.to_vec()),
                        None => latest.remove(key),
                    };
                }
            }
            Some(Err(err)) => return Err(SourceError::kafka("reading the offsets topic")(err)),
            None => {}
        }
    }
}

/// Where a source stands, as `herald offsets show --source` prints it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredPosition {
    /// The position in words: `LSN 0/1A2B3C8` (WAL capture) or `transaction 812, change 40`
    /// (trigger capture).
    pub position: String,
    /// When it was stored.
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// The server's timeline it was read on, when recorded.
    pub timeline: Option<u32>,
}

impl crate::instance::PostgresSource {
    /// The position this source committed last on its offsets topic (everything before it is
    /// published), or `None` before its first start; read without a producer, so a running
    /// source is not disturbed.
    pub async fn position(&self, kafka: &KafkaProperties) -> Result<Option<StoredPosition>, SourceError> {
        let (topic, name) = (&self.config.offsets_topic, self.name.as_str());
        let stored = match self.config.capture {
            crate::config::Capture::Wal => read_committed::<crate::wal::WalPosition>(kafka, topic, name)
                .await?
                .map(|c| (format!("LSN {}", crate::continuity::lsn(c.position.lsn)), c.at, c.server)),
            crate::config::Capture::Trigger => read_committed::<Cursor>(kafka, topic, name)
                .await?
                .map(|c| (format!("transaction {}, change {}", c.position.txid, c.position.id), c.at, c.server)),
        };
        Ok(stored.map(|(position, at, server)| StoredPosition {
            position,
            at,
            timeline: server.map(|server| server.timeline),
        }))
    }
}
