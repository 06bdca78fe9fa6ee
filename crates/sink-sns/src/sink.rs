//! The SNS sink: events → `PublishBatch` calls, partial failures retried entry by entry.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sns::error::ProvideErrorMetadata;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use aws_sdk_sns::Client;
use herald_sdk::{BoxError, Rejection, Sink, SinkError, SinkRecord, WriteOutcome};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::classify::{classify, Failure};
use crate::config::SnsSinkConfig;
use crate::error::{EntryRejected, EntryTooLarge, SnsSinkError};

/// SNS's limit on one message with its attributes, and on one `PublishBatch` request.
const MAX_BYTES: usize = 256 * 1024;
/// SNS's limit on entries per `PublishBatch`.
const MAX_ENTRIES: usize = 10;
/// Attempts at entries that failed for SNS's own reasons, within one `write`.
const ENTRY_ATTEMPTS: usize = 5;

pub(crate) struct SnsSink {
    config: SnsSinkConfig,
    client: Client,
}

/// One message ready to publish.
struct Entry {
    /// Index of its record in the batch; also its id within a `PublishBatch`.
    index: usize,
    topic: String,
    body: String,
    subject: Option<String>,
    attributes: HashMap<String, MessageAttributeValue>,
    /// FIFO only: the Kafka key (the source) and an id fixed by the Kafka coordinates.
    fifo: Option<(String, String)>,
    bytes: usize,
}

impl Entry {
    fn to_request(&self) -> Result<PublishBatchRequestEntry, BoxError> {
        let mut builder = PublishBatchRequestEntry::builder()
            .id(self.index.to_string())
            .message(&self.body)
            .set_subject(self.subject.clone())
            .set_message_attributes(Some(self.attributes.clone()));
        if let Some((group, dedup)) = &self.fifo {
            builder = builder.message_group_id(group).message_deduplication_id(dedup);
        }
        Ok(builder.build()?)
    }
}

fn is_fifo(topic: &str) -> bool {
    topic.ends_with(".fifo")
}

/// SNS's rules for the text of a message, a subject and a FIFO message group id, checked before
/// sending so an event SNS would refuse is rejected alone, with the reason.
mod rules {
    use crate::error::EntryInvalid;

    /// Characters SNS accepts in messages and attribute values (XML 1.0's).
    fn allowed(c: char) -> bool {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
    }

    pub(super) fn text(what: &'static str, text: &str) -> Result<(), EntryInvalid> {
        if text.chars().all(allowed) {
            Ok(())
        } else {
            Err(EntryInvalid { what, reason: "it holds a control character SNS does not accept" })
        }
    }

    /// ASCII, no control characters or line breaks, at most 100 characters.
    pub(super) fn subject(subject: &str) -> Result<(), EntryInvalid> {
        if subject.is_empty() || subject.len() >= 100 {
            return Err(EntryInvalid { what: "subject", reason: "it must be 1 to 99 characters" });
        }
        if !subject.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(EntryInvalid { what: "subject", reason: "it must be printable ASCII on one line" });
        }
        Ok(())
    }

    /// 1 to 128 characters of letters, digits and ASCII punctuation.
    pub(super) fn group_id(group: &str) -> Result<(), EntryInvalid> {
        if !(1..=128).contains(&group.len()) || !group.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EntryInvalid {
                what: "FIFO message group id (the event's source)",
                reason: "it must be 1 to 128 ASCII letters, digits or punctuation",
            });
        }
        Ok(())
    }
}

/// A deduplication id that is the same every time this Kafka message is delivered.
fn deduplication_id(record: &SinkRecord) -> String {
    let digest = Sha256::digest(format!("{}/{}/{}", record.topic, record.partition, record.offset));
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl SnsSink {
    pub(crate) fn new(config: SnsSinkConfig, client: Client) -> Self {
        Self { config, client }
    }

    fn topic_for(&self, record: &SinkRecord) -> Option<String> {
        let routed = self.config.topic_by.as_ref().and_then(|routing| {
            let value = record.event.field(&routing.field)?;
            routing.topics.get(value.as_ref()).cloned()
        });
        routed.or_else(|| self.config.topic_arn.clone())
    }

    fn entry(&self, index: usize, record: &SinkRecord) -> Result<Entry, BoxError> {
        let topic = self.topic_for(record).ok_or_else(|| -> BoxError {
            "no topic: `topic_by` has no entry for this event and `topic_arn` is not set".into()
        })?;
        let body = match &self.config.message {
            Some(template) => template.render(&record.event)?,
            None => record.json_line().into_owned(),
        };
        rules::text("message", &body)?;
        let subject = self.config.subject.as_ref().map(|t| t.render(&record.event)).transpose()?;
        if let Some(subject) = &subject {
            rules::subject(subject)?;
        }
        let mut attributes = HashMap::new();
        let mut bytes = body.len() + subject.as_ref().map_or(0, String::len);
        for (name, kind) in &self.config.attributes {
            let Some(value) = record.event.field(name).filter(|v| !v.is_empty()) else { continue };
            rules::text("message attribute", &value)?;
            bytes += name.len() + kind.as_str().len() + value.len();
            attributes.insert(
                name.clone(),
                MessageAttributeValue::builder().data_type(kind.as_str()).string_value(value.into_owned()).build()?,
            );
        }
        if bytes > MAX_BYTES {
            return Err(Box::new(EntryTooLarge { bytes, limit: MAX_BYTES }));
        }
        if is_fifo(&topic) {
            rules::group_id(record.event.key())?;
        }
        let fifo = is_fifo(&topic).then(|| (record.event.key().to_owned(), deduplication_id(record)));
        Ok(Entry { index, topic, body, subject, attributes, fifo, bytes })
    }

    /// Publishes entries for one topic in `PublishBatch` calls, in order, into `rejected` (the
    /// entries SNS refused for their content; entries failing for SNS's own reasons are retried
    /// here a few times). On a failure, the entries not published yet are returned with it.
    async fn publish_topic(
        &self,
        topic: &str,
        entries: &[Entry],
        rejected: &mut Vec<Rejection>,
    ) -> Result<(), (Vec<usize>, SnsSinkError)> {
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < entries.len() && end - start < MAX_ENTRIES && bytes + entries[end].bytes <= MAX_BYTES {
                bytes += entries[end].bytes;
                end += 1;
            }
            match self.publish_chunk(topic, &entries[start..end]).await {
                Ok(refused) => rejected.extend(refused),
                // The chunks before it are published: only this one and the rest are left.
                Err(err) => return Err((entries[start..].iter().map(|entry| entry.index).collect(), err)),
            }
            start = end;
        }
        Ok(())
    }

    async fn publish_chunk(&self, topic: &str, chunk: &[Entry]) -> Result<Vec<Rejection>, SnsSinkError> {
        let mut pending: Vec<&Entry> = chunk.iter().collect();
        let mut rejected = Vec::new();
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=ENTRY_ATTEMPTS {
            let mut requests = Vec::with_capacity(pending.len());
            for entry in &pending {
                match entry.to_request() {
                    Ok(request) => requests.push(request),
                    Err(error) => rejected.push(Rejection { index: entry.index, error }),
                }
            }
            pending.retain(|entry| !rejected.iter().any(|r| r.index == entry.index));
            if requests.is_empty() {
                return Ok(rejected);
            }
            let sent = self
                .client
                .publish_batch()
                .topic_arn(topic)
                .set_publish_batch_request_entries(Some(requests))
                .send()
                .await;
            let output = match sent {
                Ok(output) => output,
                Err(error) => match classify(&error) {
                    // One bad entry can fail the whole request: find it by publishing one by one.
                    Failure::Invalid => return self.publish_one_by_one(topic, &pending, rejected).await,
                    failure => return Err(SnsSinkError::call("PublishBatch", topic, failure, Box::new(error))),
                },
            };
            let mut retry = Vec::new();
            let mut last = String::new();
            for failed in output.failed() {
                let Some(entry) = pending.iter().find(|e| e.index.to_string() == failed.id()) else { continue };
                let code = failed.code().to_owned();
                let message = failed.message().unwrap_or_default().to_owned();
                if failed.sender_fault() {
                    rejected.push(Rejection { index: entry.index, error: Box::new(EntryRejected { code, message }) });
                } else {
                    last = format!("{code}: {message}");
                    retry.push(*entry);
                }
            }
            if retry.is_empty() {
                return Ok(rejected);
            }
            if attempt == ENTRY_ATTEMPTS {
                return Err(SnsSinkError::StillFailing {
                    topic: topic.to_owned(),
                    count: retry.len(),
                    attempts: attempt,
                    last,
                });
            }
            warn!(topic, failed = retry.len(), attempt, reason = %last, "SNS failed some entries; retrying those.");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            pending = retry;
        }
        Ok(rejected)
    }

    async fn publish_one_by_one(
        &self,
        topic: &str,
        entries: &[&Entry],
        mut rejected: Vec<Rejection>,
    ) -> Result<Vec<Rejection>, SnsSinkError> {
        for entry in entries {
            let mut request = self
                .client
                .publish()
                .topic_arn(topic)
                .message(&entry.body)
                .set_subject(entry.subject.clone())
                .set_message_attributes(Some(entry.attributes.clone()));
            if let Some((group, dedup)) = &entry.fifo {
                request = request.message_group_id(group).message_deduplication_id(dedup);
            }
            if let Err(error) = request.send().await {
                match classify(&error) {
                    Failure::Invalid => {
                        let code = error.code().unwrap_or("InvalidParameter").to_owned();
                        let message = error.message().unwrap_or_default().to_owned();
                        rejected
                            .push(Rejection { index: entry.index, error: Box::new(EntryRejected { code, message }) });
                    }
                    failure => return Err(SnsSinkError::call("Publish", topic, failure, Box::new(error))),
                }
            }
        }
        Ok(rejected)
    }
}

#[async_trait]
impl Sink for SnsSink {
    /// Fields are read only through the record's event accessors, templates and
    /// `json_line`, straight from the payload: the runtime need not parse events.
    fn reads_fields(&self) -> bool {
        false
    }

    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        let mut unreachable = Vec::new();
        for topic in self.config.topics() {
            if let Err(error) = self.client.get_topic_attributes().topic_arn(topic).send().await {
                let detail = error.code().map_or_else(|| herald_sdk::error_chain(&error).join(": "), str::to_owned);
                unreachable.push(format!("{topic}: {detail}"));
            }
        }
        if unreachable.is_empty() {
            Ok(())
        } else {
            Err(SnsSinkError::Unreachable(unreachable).into())
        }
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
        let mut outcome = WriteOutcome::all_accepted();
        // Entries grouped by topic, each group in batch order (per-source order for FIFO topics).
        let mut by_topic: Vec<(String, Vec<Entry>)> = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            match self.entry(index, record) {
                Ok(entry) => match by_topic.iter_mut().find(|(topic, _)| *topic == entry.topic) {
                    Some((_, entries)) => entries.push(entry),
                    None => by_topic.push((entry.topic.clone(), vec![entry])),
                },
                Err(error) => outcome.rejected.push(Rejection { index, error }),
            }
        }
        let mut unfinished = Vec::new();
        let mut failure = None;
        for (topic, entries) in &by_topic {
            if failure.is_some() {
                unfinished.extend(entries.iter().map(|entry| entry.index));
                continue;
            }
            if let Err((left, err)) = self.publish_topic(topic, entries, &mut outcome.rejected).await {
                if !err.is_retriable() {
                    return Err(err.into());
                }
                unfinished.extend(left);
                failure = Some(err);
            }
        }
        match failure {
            // What was published is done; only the rest is written again.
            Some(err) => WriteOutcome::partial(batch.len(), outcome.rejected, unfinished, Box::new(err)),
            None => Ok(outcome),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deduplication_ids_depend_only_on_kafka_coordinates() {
        let event = herald_sdk::StageEvent::from_json(
            br#"{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:00:00","status":"S"}"#,
        )
        .unwrap();
        let record = |offset| SinkRecord {
            event: event.clone().into(),
            topic: "t".repeat(249).into(),
            partition: 2,
            offset,
            origin: None,
            raw: None,
        };
        assert_eq!(deduplication_id(&record(7)), deduplication_id(&record(7)));
        assert_ne!(deduplication_id(&record(7)), deduplication_id(&record(8)));
        assert_eq!(deduplication_id(&record(7)).len(), 64, "within SNS's 128-character limit");
    }
}
