//! Publishing a request's events and knowing when Kafka has them: one idempotent producer
//! (`acks=all`) for the listener, every event keyed by its source, and a probe that keeps
//! asking the brokers for the topic, so a request while Kafka does not answer is refused at
//! once instead of after the publish timeout.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_kafka::{reliable_producer_config, KafkaProperties};
use herald_sdk::StageEvent;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Why a request's events are not all acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The brokers do not answer (or did not acknowledge in time): worth retrying later.
    #[error("Kafka at {brokers} does not answer{detail}; retry later")]
    Unavailable {
        /// `bootstrap.servers`.
        brokers: String,
        /// What librdkafka said, when it said something.
        detail: String,
    },
    /// The topic does not exist: a deployment problem, not the client's.
    #[error("topic `{topic}` does not exist at {brokers}; create it with `herald migrate` or your cluster's tools")]
    NoTopic {
        /// The topic.
        topic: String,
        /// `bootstrap.servers`.
        brokers: String,
    },
    /// Kafka refused the events for another reason (e.g. too large, not authorized).
    #[error("Kafka refused the event: {0}")]
    Refused(#[source] KafkaError),
    /// The producer could not be made (a bad `[kafka]` property).
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
}

/// What the probe last saw of the brokers.
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;
const NO_TOPIC: u8 = 3;

/// How often the probe asks.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The listener's producer, shared by every request.
pub(crate) struct Publisher {
    /// Replaced when it fails fatally (an idempotent producer can, e.g. on a sequence gap after
    /// an unclean leader election), so one such error does not refuse every later request.
    producer: std::sync::RwLock<FutureProducer>,
    /// How the producer is made, for its replacement.
    config: rdkafka::ClientConfig,
    topic: String,
    brokers: String,
    timeout: Duration,
    state: Arc<AtomicU8>,
}

impl Publisher {
    /// A producer for `topic` with `timeout` per request, and its probe (until `stop`).
    pub(crate) fn new(
        kafka: &KafkaProperties,
        topic: &str,
        timeout: Duration,
        stop: CancellationToken,
    ) -> Result<Self, PublishError> {
        let millis = timeout.as_millis().max(1).to_string();
        let mut config = reliable_producer_config(kafka);
        config
            .set("client.id", "herald-ingest")
            .set("linger.ms", "1")
            // No event waits longer than a request does: a request answered 503 leaves nothing
            // queued that could still be published after its client gave up.
            .set("message.timeout.ms", &millis)
            .set("topic.metadata.propagation.max.ms", &millis);
        let producer: FutureProducer = config.create().map_err(PublishError::Producer)?;
        let publisher = Self {
            producer: std::sync::RwLock::new(producer.clone()),
            config,
            topic: topic.to_owned(),
            brokers: kafka.bootstrap_servers().to_owned(),
            timeout,
            state: Arc::new(AtomicU8::new(UNKNOWN)),
        };
        tokio::spawn(probe(producer, publisher.topic.clone(), Arc::clone(&publisher.state), stop));
        Ok(publisher)
    }

    /// The topic events go to.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether the last probe found the brokers and the topic (`Ok`), or why not.
    pub(crate) fn ready(&self) -> Result<(), PublishError> {
        match self.state.load(Ordering::Relaxed) {
            DOWN => Err(self.unavailable(String::new())),
            NO_TOPIC => Err(PublishError::NoTopic { topic: self.topic.clone(), brokers: self.brokers.clone() }),
            _ => Ok(()),
        }
    }

    /// Publishes `events` in order, each keyed by its source, and returns once Kafka
    /// acknowledged every one (`acks=all`), or with why not. Refused at once while the probe
    /// says the brokers do not answer.
    pub(crate) async fn publish(&self, events: &[StageEvent]) -> Result<usize, PublishError> {
        self.ready()?;
        let producer = self.producer.read().map_or_else(|poisoned| poisoned.into_inner().clone(), |held| held.clone());
        let published = self.publish_with(&producer, events).await;
        if published.is_err() {
            self.replace_if_fatal(&producer);
        }
        published
    }

    async fn publish_with(&self, producer: &FutureProducer, events: &[StageEvent]) -> Result<usize, PublishError> {
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            let payload = event.to_json();
            let record = FutureRecord::to(&self.topic).key(event.key()).payload(&payload);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((err, _)) => {
                    // The queue is full: what was queued is still awaited below, so the answer
                    // says whether it landed; the rest is not sent.
                    debug!(error = %err, "Ingest producer queue full.");
                    let _ = futures::future::join_all(deliveries).await;
                    return Err(self.classify(err));
                }
            }
        }
        let mut first_error = None;
        for outcome in futures::future::join_all(deliveries).await {
            let failure = match outcome {
                Ok(Ok(_)) => continue,
                Ok(Err((err, _))) => err,
                // The producer was dropped with the event queued: only at shutdown.
                Err(_) => KafkaError::Canceled,
            };
            first_error.get_or_insert(failure);
        }
        match first_error {
            None => Ok(events.len()),
            Some(err) => Err(self.classify(err)),
        }
    }

    /// A producer that failed fatally refuses everything from then on: a new one takes its
    /// place, so the request after this one is published again (this one was answered with
    /// the error, and its client retries).
    fn replace_if_fatal(&self, failed: &FutureProducer) {
        let Some((code, reason)) = failed.client().fatal_error() else { return };
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                error!(error = %code, reason = %reason, "Ingest producer failed fatally; replaced with a new one.");
                let mut held = self.producer.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                *held = fresh;
            }
            Err(err) => error!(error = %err, "Ingest producer failed fatally and cannot be replaced."),
        }
    }

    fn unavailable(&self, detail: String) -> PublishError {
        PublishError::Unavailable { brokers: self.brokers.clone(), detail }
    }

    /// The error the client is told: retry later, a missing topic, or a refusal.
    fn classify(&self, err: KafkaError) -> PublishError {
        use RDKafkaErrorCode as Code;
        match err.rdkafka_error_code() {
            Some(Code::UnknownTopic | Code::UnknownTopicOrPartition) => {
                PublishError::NoTopic { topic: self.topic.clone(), brokers: self.brokers.clone() }
            }
            Some(
                Code::MessageTimedOut
                | Code::RequestTimedOut
                | Code::AllBrokersDown
                | Code::BrokerTransportFailure
                | Code::QueueFull
                | Code::NotEnoughReplicas
                | Code::NotEnoughReplicasAfterAppend
                | Code::LeaderNotAvailable
                | Code::NotLeaderForPartition,
            )
            | None => self.unavailable(format!(" ({err}; waited at most {:?})", self.timeout)),
            Some(_) => PublishError::Refused(err),
        }
    }
}

/// Asks for the topic's metadata every second and notes what it found in `state`, logging each
/// change once.
async fn probe(producer: FutureProducer, topic: String, state: Arc<AtomicU8>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(PROBE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (client, name) = (producer.clone(), topic.clone());
        let seen =
            tokio::task::spawn_blocking(move || match client.client().fetch_metadata(Some(&name), PROBE_EVERY) {
                Ok(metadata) => {
                    let missing = metadata.topics().iter().all(|topic| topic.name() != name || topic.error().is_some());
                    if missing {
                        NO_TOPIC
                    } else {
                        UP
                    }
                }
                Err(_) => DOWN,
            })
            .await
            .unwrap_or(UNKNOWN);
        let before = state.swap(seen, Ordering::Relaxed);
        if before != seen {
            match seen {
                UP => info!(topic = %topic, "Ingest: Kafka answers; publishing."),
                DOWN => warn!(topic = %topic, "Ingest: Kafka does not answer; requests get 503 until it does."),
                NO_TOPIC => warn!(topic = %topic, "Ingest: the topic does not exist; requests get 503 until it does."),
                _ => {}
            }
        }
    }
}
