//! Settling one batch, with no Kafka client in sight: write its records (retrying transient
//! failures, see `isolate.rs`), dead-letter what can never be delivered, and say which offsets
//! may now be stored. Reading the messages into records is `read.rs`'s. The worker hands it messages and stores what it returns, so
//! "offsets advance only after the sink has the data" is decided here, and tested here with a
//! fake sink under paused time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::error::KafkaError;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::fetched::FetchedMessage;
use super::isolate::Written;
use super::read::PreparedBatch;
use crate::config::{RetryConfig, RouteConfig};
use crate::dlq::{DeadLetter, DeadLetterQueue, FailedStage};
use crate::error::RouteError;
use crate::observe::RouteShared;
use crate::tap::{Outcome, Tapped};
use herald_sdk::error_chain;
use herald_sdk::printable::{printable, LOG_CHARS};
use herald_sdk::sink::Sink;

/// Where undeliverable messages go: the route's dead-letter topic.
#[async_trait]
pub(crate) trait DeadLetters: Send + Sync {
    /// The topic's name, for logs and errors.
    fn topic(&self) -> &str;
    /// Returns once every letter is acknowledged.
    async fn send_all(&self, letters: &[DeadLetter]) -> Result<(), KafkaError>;
}

#[async_trait]
impl DeadLetters for DeadLetterQueue {
    fn topic(&self) -> &str {
        DeadLetterQueue::topic(self)
    }

    async fn send_all(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        DeadLetterQueue::send_all(self, letters).await
    }
}

/// Events skipped in a row by the filter before the route warns.
const SKIP_STREAK_WARNING: u64 = 1_000;

/// The next offset to read per (topic, partition): what a settled batch lets the worker store.
pub(crate) type NextOffsets = BTreeMap<(String, i32), i64>;

/// What settling one batch needs from its route.
pub(crate) struct Delivery<'a> {
    /// The route's settings: filter, size limit, retry policy.
    pub(crate) route: &'a RouteConfig,
    /// The route's sink.
    pub(crate) sink: &'a mut dyn Sink,
    /// The route's dead-letter topic, if it has one.
    pub(crate) dead_letters: Option<&'a dyn DeadLetters>,
    /// The route's metrics and state.
    pub(crate) stats: &'a RouteShared,
}

impl Delivery<'_> {
    /// Delivers one batch, prepared from `messages`: sink writes (retried, and narrowed down to
    /// a poison record when one keeps failing, see `isolate.rs`), then dead letters.
    /// `Ok(Some(offsets))`: the batch is settled and these offsets may be stored; `Ok(None)`:
    /// cancelled while waiting to retry, nothing may be stored (the batch is read again).
    pub(crate) async fn deliver(
        &mut self,
        messages: &[FetchedMessage],
        prepared: PreparedBatch,
        cancel: &CancellationToken,
    ) -> Result<Option<NextOffsets>, RouteError> {
        self.stats.consumed.inc_by(messages.len() as u64);
        self.stats.skipped.inc_by(prepared.skipped);
        self.note_skip_streak(&prepared);
        let PreparedBatch { records, record_origin, mut letters, .. } = prepared;
        let tapping = self.stats.tap.is_watched();
        if tapping {
            tap_skipped(self.stats, messages, &record_origin, &letters);
        }
        // Without a dead-letter topic, fail before writing anything: the operator fixes the
        // config and the batch is read again from its first offset.
        self.require_dead_letter_topic(&letters)?;
        let mut refused = Vec::new();

        if !records.is_empty() {
            let timer = self.stats.write_seconds.start_timer();
            let written = self.write_until_settled(messages, &records, &record_origin, cancel).await;
            timer.observe_duration();
            let Some(written) = written? else {
                return Ok(None);
            };
            self.stats.delivered.inc_by(written.accepted as u64);
            if tapping {
                tap_delivered(self.stats, messages, &record_origin, &written);
            }
            self.stats.update(|state| state.last_event_at = Some(chrono::Utc::now()));
            for rejection in written.rejected {
                let Some(message) = record_origin.get(rejection.index).and_then(|&i| messages.get(i)) else {
                    return Err(RouteError::BadRejectionIndex { index: rejection.index, batch: records.len() });
                };
                refused.push((message.topic().to_owned(), message.partition(), message.offset()));
                letters.push(DeadLetter::new(
                    message.to_owned_message(),
                    FailedStage::Sink,
                    "SinkRejection",
                    rejection.error.as_ref(),
                ));
            }
        }
        self.send_dead_letters(&letters).await?;
        if !refused.is_empty() {
            if let Err(err) = self.sink.dead_letters_sent(&refused).await {
                warn!(route = %self.route.name, error = %error_chain(&err).join(": "), "Cannot mark the refused events' dead letters as sent; they are sent again when the partition is next assigned.");
            }
        }
        Ok(Some(next_offsets(messages)))
    }

    /// Warns when the filter has let nothing through for 1,000 events in a row (and again at
    /// 10,000, 100,000, …): its values may match no event, and every skipped event is committed.
    fn note_skip_streak(&self, prepared: &PreparedBatch) {
        if !prepared.records.is_empty() {
            self.stats.skipped_in_a_row.store(0, Ordering::Relaxed);
            return;
        }
        let before = self.stats.skipped_in_a_row.fetch_add(prepared.skipped, Ordering::Relaxed);
        let after = before + prepared.skipped;
        let mut threshold = SKIP_STREAK_WARNING;
        while threshold <= after {
            if before < threshold {
                let fields: Vec<&str> = self.route.filter.fields().collect();
                warn!(
                    route = %self.route.name,
                    skipped_in_a_row = after,
                    filter_fields = ?fields,
                    "The route's filter has let no event through for {threshold} events in a row: check its values against the events on the topic (each skipped event is committed)."
                );
            }
            threshold = threshold.saturating_mul(10);
        }
    }

    /// Sends `letters` to the dead-letter topic and waits for the acknowledgements; without a
    /// dead-letter topic, stops the route naming the first.
    pub(super) async fn send_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), RouteError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.require_dead_letter_topic(letters)?;
        let Some(queue) = self.dead_letters else { return Ok(()) };
        for letter in letters {
            warn!(
                route = %self.route.name, topic = letter.message.topic(), partition = letter.message.partition(),
                offset = letter.message.offset(), dead_letter_topic = queue.topic(),
                reason = %printable(&letter.reason(), LOG_CHARS), "Message sent to the dead-letter topic."
            );
        }
        queue
            .send_all(letters)
            .await
            .map_err(|source| RouteError::DeadLetter { topic: queue.topic().to_owned(), source })?;
        self.stats.dead_lettered.inc_by(letters.len() as u64);
        if self.stats.tap.is_watched() {
            self.stats.tap.offer(letters.iter().map(|letter| {
                move || {
                    let message = &letter.message;
                    Tapped::new(
                        (Arc::from(message.topic()), message.partition(), message.offset()),
                        Outcome::DeadLettered,
                        message.payload(),
                        Some(letter.reason()),
                    )
                }
            }));
        }
        Ok(())
    }

    fn require_dead_letter_topic(&self, letters: &[DeadLetter]) -> Result<(), RouteError> {
        match (letters.first(), self.dead_letters) {
            (Some(letter), None) => Err(RouteError::Undeliverable {
                topic: letter.message.topic().to_owned(),
                partition: letter.message.partition(),
                offset: letter.message.offset(),
                reason: letter.reason(),
            }),
            _ => Ok(()),
        }
    }
}

/// Shows the watchers of the route's tap the messages of a batch its filter passed over: those
/// neither made into a record nor dead-lettered.
fn tap_skipped(stats: &RouteShared, messages: &[FetchedMessage], record_origin: &[usize], letters: &[DeadLetter]) {
    let mut handled = vec![false; messages.len()];
    for &index in record_origin {
        if let Some(slot) = handled.get_mut(index) {
            *slot = true;
        }
    }
    let unreadable: BTreeSet<(i32, i64)> =
        letters.iter().map(|letter| (letter.message.partition(), letter.message.offset())).collect();
    stats.tap.offer(messages.iter().zip(handled).filter_map(|(message, handled)| {
        let skipped = !handled && !unreadable.contains(&(message.partition(), message.offset()));
        skipped.then_some(move || Tapped::new(where_from(message), Outcome::Skipped, message.payload(), None))
    }));
}

/// Shows the watchers of the route's tap the records the sink accepted: all but those it
/// refused or that were dead-lettered as poison (those are shown as they are dead-lettered).
fn tap_delivered(stats: &RouteShared, messages: &[FetchedMessage], record_origin: &[usize], written: &Written) {
    let not_delivered: BTreeSet<usize> =
        written.rejected.iter().map(|rejection| rejection.index).chain(written.poisoned.iter().copied()).collect();
    stats.tap.offer(record_origin.iter().enumerate().filter(|(record, _)| !not_delivered.contains(record)).filter_map(
        |(_, &index)| {
            let message = messages.get(index)?;
            Some(move || Tapped::new(where_from(message), Outcome::Delivered, message.payload(), None))
        },
    ));
}

/// Where `message` was read: topic, partition, offset.
pub(super) fn where_from(message: &FetchedMessage) -> (Arc<str>, i32, i64) {
    (message.shared_topic(), message.partition(), message.offset())
}

/// The route's backoff: exponential with jitter between its bounds, `limit` delays at most.
pub(crate) fn retry_delays(policy: &RetryConfig, limit: Option<u32>) -> impl Iterator<Item = std::time::Duration> {
    ExponentialBuilder::default()
        .with_min_delay(policy.initial_backoff)
        .with_max_delay(policy.max_backoff)
        .with_jitter()
        .with_max_times(limit.map_or(usize::MAX, |n| n as usize))
        .build()
}

/// One past the highest offset of each partition in `messages`.
pub(crate) fn next_offsets(messages: &[FetchedMessage]) -> NextOffsets {
    herald_sdk::next_offsets(messages.iter().map(|m| (m.topic(), m.partition(), m.offset())))
        .into_iter()
        .map(|((topic, partition), offset)| ((topic.to_owned(), partition), offset))
        .collect()
}

#[cfg(test)]
mod tests;
