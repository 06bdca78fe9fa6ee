//! Dead letters as `herald redrive` reads and judges them.
//!
//! A redrive reads a window of the route's dead-letter topic (from where the last redrive left
//! off to the topic's end when it started) and judges each letter: sent back through the route
//! ([`Verdict::Redrive`]), or kept dead because the operator did not choose it (`--since`,
//! `--filter`). Kafka cannot delete a message, so a letter kept is written again at the topic's
//! end, unchanged but for a [`KEPT_HEADER`] naming the letter it copies, and the redrive then
//! passes over the original: the next redrive finds the copy. The judging makes that converge:
//! a copy whose original is still ahead of the redrive's position stands for nothing (the
//! original is judged), and an original already copied is not copied again — so a redrive that
//! stopped halfway, run again, writes no second copy, and a redrive that chooses nothing, run
//! twice, writes nothing the second time.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_kafka::headers::connect;
use herald_kafka::KafkaProperties;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::{kafka, OffsetsError};

/// The header a kept letter's copy carries: `PARTITION:OFFSET` of the letter it copies, in the
/// same topic.
pub const KEPT_HEADER: &str = "herald.redrive.kept";

/// How long reading the window may go without a message before it gives up.
const READ_STALL: Duration = Duration::from_secs(30);

/// One dead letter: the original event and why it died.
#[derive(Debug, Clone)]
pub struct Letter {
    /// Its partition in the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// When it was written to the dead-letter topic (its Kafka timestamp).
    pub written_at: Option<DateTime<Utc>>,
    /// Its error type (`__connect.errors.exception.class.name`), e.g. `SinkRejection`.
    pub error_class: String,
    /// Its error message (`__connect.errors.exception.message`).
    pub error: String,
    /// For a copy written by a redrive that kept it: the letter it copies.
    pub kept_from: Option<(i32, i64)>,
    /// The message's key.
    pub key: Option<Vec<u8>>,
    /// The original event.
    pub payload: Option<Vec<u8>>,
    /// Every header, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    /// A field of the event it holds, as text (a number as written), if it is a JSON object
    /// with that field.
    fn field(&self, name: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(self.payload.as_deref()?).ok()?;
        match value.get(name)? {
            serde_json::Value::String(text) => Some(text.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        }
    }
}

/// Which letters a redrive sends back: those written at or after `since` whose event has every
/// one of `fields` (`name`, `value`). Empty: every letter.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    /// Only letters written at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only letters whose event has each of these field values.
    pub fields: Vec<(String, String)>,
}

/// What a redrive does with one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Sent back through the route.
    Redrive,
    /// Not chosen: copied to the topic's end, so it stays dead for the next redrive.
    Keep,
    /// Not chosen, and a copy of it is already at the topic's end (a redrive that stopped
    /// halfway wrote it): nothing to write.
    AlreadyKept,
    /// A copy whose original the redrive has not passed yet: the original is judged instead.
    Superseded,
}

/// The verdict on each of `letters` (the window, in order), given where the window starts in
/// each partition.
pub fn judge(letters: &[Letter], choice: &Choice, window_starts: &HashMap<i32, i64>) -> Vec<Verdict> {
    let copied: BTreeSet<(i32, i64)> = letters.iter().filter_map(|letter| letter.kept_from).collect();
    letters
        .iter()
        .map(|letter| {
            if let Some((partition, offset)) = letter.kept_from {
                if window_starts.get(&partition).is_some_and(|start| offset >= *start) {
                    return Verdict::Superseded;
                }
            }
            let recent = match (choice.since, letter.written_at) {
                (Some(since), Some(at)) => at >= since,
                (Some(_), None) => false,
                (None, _) => true,
            };
            let matches = choice.fields.iter().all(|(name, value)| letter.field(name).as_deref() == Some(value));
            match (recent && matches, copied.contains(&(letter.partition, letter.offset))) {
                (true, _) => Verdict::Redrive,
                (false, false) => Verdict::Keep,
                (false, true) => Verdict::AlreadyKept,
            }
        })
        .collect()
}

/// Reads `topic`'s letters in each window (`partition`, from, end: end is one past the last),
/// in order per partition.
pub async fn read_letters(
    props: &KafkaProperties,
    topic: &str,
    windows: Vec<(i32, i64, i64)>,
) -> Result<Vec<Letter>, OffsetsError> {
    let (props, topic) = (props.clone(), topic.to_owned());
    crate::blocking(move || read_blocking(&props, &topic, &windows)).await
}

fn read_blocking(
    props: &KafkaProperties,
    topic: &str,
    windows: &[(i32, i64, i64)],
) -> Result<Vec<Letter>, OffsetsError> {
    let windows: Vec<(i32, i64, i64)> = windows.iter().copied().filter(|(_, from, end)| from < end).collect();
    if windows.is_empty() {
        return Ok(Vec::new());
    }
    let consumer: BaseConsumer = herald_kafka::client_config(props)
        .set("group.id", format!("herald-redrive-read-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(kafka("creating a consumer"))?;
    let mut list = TopicPartitionList::new();
    for (partition, from, _) in &windows {
        list.add_partition_offset(topic, *partition, Offset::Offset(*from)).map_err(kafka("choosing where to read"))?;
    }
    consumer.assign(&list).map_err(kafka("assigning the dead-letter topic"))?;
    let ends: HashMap<i32, i64> = windows.iter().map(|(partition, _, end)| (*partition, *end)).collect();
    let mut left: BTreeSet<i32> = ends.keys().copied().collect();
    let mut letters = Vec::new();
    let mut last_progress = std::time::Instant::now();
    while !left.is_empty() {
        if last_progress.elapsed() > READ_STALL {
            return Err(OffsetsError::Stalled { topic: topic.to_owned(), partitions: left.into_iter().collect() });
        }
        let Some(received) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = received.map_err(kafka("reading the dead-letter topic"))?;
        last_progress = std::time::Instant::now();
        let (partition, offset) = (message.partition(), message.offset());
        let Some(end) = ends.get(&partition) else { continue };
        if offset >= *end {
            left.remove(&partition);
            continue;
        }
        if offset + 1 >= *end {
            left.remove(&partition);
        }
        let headers: Vec<(String, Option<Vec<u8>>)> = message
            .headers()
            .map(|headers| headers.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        let text = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .and_then(|(_, value)| value.as_deref())
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        let kept_from = text(KEPT_HEADER).and_then(|kept| {
            let (partition, offset) = kept.split_once(':')?;
            Some((partition.parse().ok()?, offset.parse().ok()?))
        });
        letters.push(Letter {
            partition,
            offset,
            written_at: message.timestamp().to_millis().and_then(DateTime::from_timestamp_millis),
            error_class: text(connect::EXCEPTION_CLASS).unwrap_or_else(|| "unknown".to_owned()),
            error: text(connect::EXCEPTION_MESSAGE).unwrap_or_default(),
            kept_from,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    Ok(letters)
}

/// Writes a copy of each of `letters` at the end of `topic`, unchanged (key, event, headers,
/// timestamp) but for the [`KEPT_HEADER`] naming the letter it copies; returns once Kafka
/// acknowledged every copy.
pub async fn keep(props: &KafkaProperties, topic: &str, letters: &[&Letter]) -> Result<usize, OffsetsError> {
    if letters.is_empty() {
        return Ok(0);
    }
    let producer: FutureProducer =
        herald_kafka::reliable_producer_config(props).create().map_err(kafka("creating a producer"))?;
    let sends = letters.iter().map(|letter| {
        let mut headers = OwnedHeaders::new();
        for (key, value) in letter.headers.iter().filter(|(key, _)| key != KEPT_HEADER) {
            headers = headers.insert(Header { key, value: value.as_deref() });
        }
        let kept = format!("{}:{}", letter.partition, letter.offset);
        headers = headers.insert(Header { key: KEPT_HEADER, value: Some(kept.as_str()) });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = letter.key.as_deref() {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload.as_deref() {
            record = record.payload(payload);
        }
        if let Some(at) = letter.written_at {
            record = record.timestamp(at.timestamp_millis());
        }
        producer.send(record, Duration::from_secs(30))
    });
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(source, _)| OffsetsError::Kafka { context: "keeping a dead letter", source })?;
    }
    Ok(letters.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn letter(offset: i64, source: &str, kept_from: Option<(i32, i64)>) -> Letter {
        Letter {
            partition: 0,
            offset,
            written_at: DateTime::from_timestamp_millis(1_000 * offset),
            error_class: "SinkRejection".into(),
            error: "check constraint".into(),
            kept_from,
            key: None,
            payload: Some(format!(r#"{{"source":"{source}","records":{offset}}}"#).into_bytes()),
            headers: Vec::new(),
        }
    }

    #[test]
    fn without_a_choice_every_letter_goes_back() {
        let letters = [letter(0, "A", None), letter(1, "B", None)];
        let verdicts = judge(&letters, &Choice::default(), &HashMap::from([(0, 0)]));
        assert_eq!(verdicts, [Verdict::Redrive, Verdict::Redrive]);
    }

    #[test]
    fn letters_not_chosen_are_kept_once_and_their_copies_stand_for_them_only_once_passed() {
        let choice = Choice { since: None, fields: vec![("source".into(), "A".into())] };
        let first = [letter(0, "A", None), letter(1, "B", None)];
        assert_eq!(judge(&first, &choice, &HashMap::from([(0, 0)])), [Verdict::Redrive, Verdict::Keep]);
        // Stopped before passing offset 1: its copy (offset 2) is there, so nothing is copied again.
        let again = [letter(1, "B", None), letter(2, "B", Some((0, 1)))];
        assert_eq!(judge(&again, &choice, &HashMap::from([(0, 1)])), [Verdict::AlreadyKept, Verdict::Superseded]);
        // Once the original is passed, the copy is a letter like any other.
        let later = [letter(2, "B", Some((0, 1)))];
        assert_eq!(judge(&later, &choice, &HashMap::from([(0, 2)])), [Verdict::Keep]);
        let everything = Choice::default();
        assert_eq!(judge(&later, &everything, &HashMap::from([(0, 2)])), [Verdict::Redrive]);
        // Chosen while its copy is still ahead: the original goes back, the copy is passed over.
        assert_eq!(judge(&again, &everything, &HashMap::from([(0, 1)])), [Verdict::Redrive, Verdict::Superseded]);
    }

    #[test]
    fn since_and_fields_both_must_hold_and_numbers_match_as_written() {
        let letters = [letter(1, "A", None), letter(5, "A", None), letter(6, "B", None)];
        let choice = Choice {
            since: DateTime::from_timestamp_millis(5_000),
            fields: vec![("source".into(), "A".into()), ("records".into(), "5".into())],
        };
        assert_eq!(
            judge(&letters, &choice, &HashMap::from([(0, 0)])),
            [Verdict::Keep, Verdict::Redrive, Verdict::Keep]
        );
    }
}
