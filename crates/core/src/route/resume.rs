//! Resuming where the sink left off: a sink that stores offsets with its data (Postgres) is
//! asked, when partitions are assigned, where each resumes, and the consumer is moved there
//! rather than trusting Kafka's committed offset, which may lag behind the sink's or be gone.
//!
//! A seek is tried as soon as librdkafka allows (it refuses until it fetches the partition, a
//! few milliseconds after the assignment), so a quiet partition does not wait for a new event;
//! after a bounded number of refusals, the partition's first message decides. What resuming
//! needs of the consumer is the [`Seek`] trait, so this is unit-tested without Kafka.

use std::collections::HashMap;
use std::time::Duration;

use herald_kafka::AssignmentChanges;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::Offset;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::batch::BatchAdmission;
use super::consumer::RouteConsumer;
use super::delivery::retry_delays;
use super::fetched::FetchedMessage;
use crate::config::RouteConfig;
use crate::error::RouteError;
use herald_sdk::error_chain;
use herald_sdk::sink::{Sink, SinkError};

/// Early seeks of a partition: tried every [`EARLY_SEEK_RETRY`] for up to five seconds.
const EARLY_SEEKS: u8 = 100;
/// How long an idle route waits before trying a refused early seek again.
pub(super) const EARLY_SEEK_RETRY: Duration = Duration::from_millis(50);
/// How long a seek may wait for librdkafka's fetcher to take the new position.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// What resuming needs of a consumer.
pub(crate) trait Seek {
    /// Moves `partition` of `topic` to `offset`; refused while the partition is not fetched.
    fn seek_to(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError>;
}

impl Seek for RouteConsumer {
    fn seek_to(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
        self.seek(topic, partition, Offset::Offset(offset), SEEK_TIMEOUT)
    }
}

/// Where newly assigned partitions must resume, per the sink's own stored offsets.
#[derive(Debug, Default)]
pub(crate) struct Resumption {
    at: HashMap<(String, i32), Resume>,
}

/// Where one newly assigned partition resumes.
#[derive(Debug, Clone, Copy)]
struct Resume {
    /// The sink's next offset to deliver.
    offset: i64,
    /// Seeks left to try while no message of the partition has arrived; after the last, the
    /// partition's first message decides.
    early_seeks_left: u8,
}

impl Resumption {
    /// Takes in a rebalance: forgets revoked partitions, and asks `sink` where the assigned ones
    /// resume, retrying transient failures with the route's backoff (a fatal one stops the
    /// route; shutdown stops asking).
    pub(super) async fn rebalanced(
        &mut self,
        route: &RouteConfig,
        changes: AssignmentChanges,
        sink: &mut dyn Sink,
        cancel: &CancellationToken,
    ) -> Result<(), RouteError> {
        for partition in &changes.revoked {
            self.at.remove(partition);
        }
        if changes.assigned.is_empty() {
            return Ok(());
        }
        let mut delays = retry_delays(&route.retry, None);
        let stored = loop {
            match sink.stored_offsets(&changes.assigned).await {
                Ok(stored) => break stored,
                Err(error @ SinkError::Fatal(_)) => return Err(RouteError::Sink(error)),
                Err(error) => {
                    let delay = delays.next().unwrap_or(route.retry.max_backoff);
                    warn!(route = %route.name, error = %error_chain(&error).join(": "), retry_in = ?delay, "Cannot read the sink's stored offsets; retrying.");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = sleep(delay) => {}
                    }
                }
            }
        };
        for (partition, offset) in stored {
            debug!(route = %route.name, topic = %partition.0, partition = partition.1, offset, "Sink has stored an offset.");
            self.at.insert(partition, Resume { offset, early_seeks_left: EARLY_SEEKS });
        }
        Ok(())
    }

    /// For the first message of a newly assigned partition: when the sink stored a different
    /// next offset than the message's, seek there, drop what was read of that partition and
    /// skip the message. The sink's offset wins because it was written with the data.
    pub(super) fn admit(
        &mut self,
        route: &RouteConfig,
        consumer: &impl Seek,
        message: &FetchedMessage,
        batch: &mut Vec<FetchedMessage>,
    ) -> BatchAdmission {
        if self.at.is_empty() {
            return BatchAdmission::Join;
        }
        let key = (message.topic().to_owned(), message.partition());
        let Some(Resume { offset: resume, .. }) = self.at.remove(&key) else { return BatchAdmission::Join };
        if message.offset() == resume {
            return BatchAdmission::Join;
        }
        info!(
            route = %route.name, topic = %key.0, partition = key.1, from = message.offset(), to = resume,
            "Resuming where the sink's stored offset says."
        );
        batch.retain(|m| !(m.topic() == key.0 && m.partition() == key.1));
        if let Err(err) = consumer.seek_to(&key.0, key.1, resume) {
            // The sink still drops what it already has; only the shortcut is lost.
            warn!(route = %route.name, error = %err, "Seek to the sink's stored offset failed; continuing from Kafka's.");
            return BatchAdmission::Join;
        }
        BatchAdmission::Skip
    }

    /// Seeks newly assigned partitions of which no message has arrived to the sink's stored
    /// offsets, so a quiet partition (at `latest`, say) does not wait for a new event to deliver
    /// what the sink missed. A refused seek is tried again later, a bounded number of times.
    pub(super) fn seek_early(&mut self, route: &RouteConfig, consumer: &impl Seek, batch: &mut Vec<FetchedMessage>) {
        self.at.retain(|(topic, partition), resume| {
            if resume.early_seeks_left == 0 {
                return true;
            }
            match consumer.seek_to(topic, *partition, resume.offset) {
                Ok(()) => {
                    info!(
                        route = %route.name, topic = %topic, partition = *partition, to = resume.offset,
                        "Resuming where the sink's stored offset says."
                    );
                    batch.retain(|m| !(m.topic() == topic && m.partition() == *partition));
                    false
                }
                Err(err) => {
                    resume.early_seeks_left -= 1;
                    debug!(route = %route.name, topic = %topic, partition = *partition, error = %err, "Cannot seek to the sink's stored offset yet; trying again.");
                    true
                }
            }
        });
    }

    /// When to try refused early seeks again, while any is left.
    pub(super) fn retry_after(&self) -> Option<Duration> {
        self.at.values().any(|resume| resume.early_seeks_left > 0).then_some(EARLY_SEEK_RETRY)
    }
}

#[cfg(test)]
mod tests {
    //! Resuming against a scripted consumer and sink, with tokio's clock paused.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::cell::RefCell;

    use async_trait::async_trait;

    use super::*;
    use herald_sdk::sink::{SinkRecord, WriteOutcome};

    /// A consumer that refuses the first `refusals` seeks, and records the others.
    #[derive(Default)]
    struct Seeks {
        refusals: RefCell<usize>,
        done: RefCell<Vec<(String, i32, i64)>>,
    }

    impl Seek for Seeks {
        fn seek_to(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
            let mut refusals = self.refusals.borrow_mut();
            if *refusals > 0 {
                *refusals -= 1;
                return Err(KafkaError::Seek("not fetched yet".into()));
            }
            self.done.borrow_mut().push((topic.to_owned(), partition, offset));
            Ok(())
        }
    }

    /// A sink with stored offsets, failing `failures` times first (retriably) or fatally.
    struct Stored {
        offsets: Vec<((String, i32), i64)>,
        failures: usize,
        fatal: bool,
    }

    #[async_trait]
    impl Sink for Stored {
        async fn healthcheck(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        async fn write(&mut self, _batch: &[SinkRecord]) -> Result<WriteOutcome, SinkError> {
            Ok(WriteOutcome::all_accepted())
        }
        async fn stored_offsets(&mut self, _: &[(String, i32)]) -> Result<Vec<((String, i32), i64)>, SinkError> {
            if self.fatal {
                return Err(SinkError::Fatal("permission denied".into()));
            }
            if self.failures > 0 {
                self.failures -= 1;
                return Err(SinkError::Retriable("connection refused".into()));
            }
            Ok(self.offsets.clone())
        }
    }

    fn route() -> RouteConfig {
        let text = "[[route]]\nname = \"r\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\nretry = { initial_backoff = \"1s\", max_backoff = \"4s\" }";
        crate::config::testing::route(text)
    }

    fn message(partition: i32, offset: i64) -> FetchedMessage {
        FetchedMessage::test(partition, offset, b"{}")
    }

    fn assigned(partitions: &[i32]) -> AssignmentChanges {
        AssignmentChanges { assigned: partitions.iter().map(|&p| ("t".to_owned(), p)).collect(), revoked: Vec::new() }
    }

    async fn resuming_at(offsets: &[(i32, i64)]) -> Resumption {
        let mut sink = Stored {
            offsets: offsets.iter().map(|&(p, o)| (("t".to_owned(), p), o)).collect(),
            failures: 0,
            fatal: false,
        };
        let mut resumption = Resumption::default();
        let partitions: Vec<i32> = offsets.iter().map(|&(p, _)| p).collect();
        resumption.rebalanced(&route(), assigned(&partitions), &mut sink, &CancellationToken::new()).await.unwrap();
        resumption
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_message_elsewhere_than_the_stored_offset_seeks_there_and_drops_what_was_read() {
        let mut resumption = resuming_at(&[(0, 40), (1, 7)]).await;
        let consumer = Seeks::default();
        let mut batch = vec![message(0, 10), message(1, 7)];
        // Partition 0's first message is at 11, the sink has everything before 40.
        assert!(matches!(resumption.admit(&route(), &consumer, &message(0, 11), &mut batch), BatchAdmission::Skip));
        assert_eq!(batch.iter().map(|m| (m.partition(), m.offset())).collect::<Vec<_>>(), [(1, 7)]);
        assert_eq!(*consumer.done.borrow(), [("t".to_owned(), 0, 40)]);
        // Partition 1's is where the sink stopped: it joins, and no seek.
        assert!(matches!(resumption.admit(&route(), &consumer, &message(1, 7), &mut batch), BatchAdmission::Join));
        assert_eq!(consumer.done.borrow().len(), 1);
        // Decided once: later messages join.
        assert!(matches!(resumption.admit(&route(), &consumer, &message(0, 40), &mut batch), BatchAdmission::Join));
        assert!(resumption.retry_after().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn refused_early_seeks_are_retried_a_bounded_number_of_times() {
        let mut resumption = resuming_at(&[(0, 40)]).await;
        let consumer = Seeks { refusals: RefCell::new(3), ..Seeks::default() };
        for _ in 0..3 {
            resumption.seek_early(&route(), &consumer, &mut Vec::new());
            assert_eq!(resumption.retry_after(), Some(EARLY_SEEK_RETRY));
        }
        resumption.seek_early(&route(), &consumer, &mut Vec::new());
        assert_eq!(*consumer.done.borrow(), [("t".to_owned(), 0, 40)]);
        assert!(resumption.retry_after().is_none(), "sought: nothing left");

        // A partition librdkafka never lets seek: the first message decides after the last try.
        let mut stubborn_partition = resuming_at(&[(0, 40)]).await;
        let stubborn = Seeks { refusals: RefCell::new(usize::MAX), ..Seeks::default() };
        for _ in 0..EARLY_SEEKS {
            stubborn_partition.seek_early(&route(), &stubborn, &mut Vec::new());
        }
        assert!(stubborn_partition.retry_after().is_none(), "no more early seeks");
        let willing = Seeks::default();
        let admitted = stubborn_partition.admit(&route(), &willing, &message(0, 3), &mut Vec::new());
        assert!(matches!(admitted, BatchAdmission::Skip));
        assert_eq!(*willing.done.borrow(), [("t".to_owned(), 0, 40)]);
    }

    #[tokio::test(start_paused = true)]
    async fn stored_offsets_are_asked_again_after_a_transient_failure_and_a_revoke_forgets() {
        let started = tokio::time::Instant::now();
        let mut sink = Stored { offsets: vec![(("t".to_owned(), 0), 5)], failures: 2, fatal: false };
        let mut resumption = Resumption::default();
        resumption.rebalanced(&route(), assigned(&[0]), &mut sink, &CancellationToken::new()).await.unwrap();
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(3)..=Duration::from_secs(6)).contains(&waited),
            "two backoffs from 1 s: {waited:?}"
        );
        assert_eq!(resumption.retry_after(), Some(EARLY_SEEK_RETRY));

        let revoke = AssignmentChanges { assigned: Vec::new(), revoked: vec![("t".to_owned(), 0)] };
        resumption.rebalanced(&route(), revoke, &mut sink, &CancellationToken::new()).await.unwrap();
        assert!(resumption.retry_after().is_none(), "a revoked partition is not sought");

        let mut fatal = Stored { offsets: Vec::new(), failures: 0, fatal: true };
        match resumption.rebalanced(&route(), assigned(&[1]), &mut fatal, &CancellationToken::new()).await {
            Err(RouteError::Sink(SinkError::Fatal(_))) => {}
            other => panic!("expected a fatal sink error, got {other:?}"),
        }
    }
}
