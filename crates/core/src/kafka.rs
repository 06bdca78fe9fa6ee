//! Kafka clients built from the `[kafka]` properties, and the few admin calls herald makes.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaProperties;

/// A client config holding every `[kafka]` property, ready for role-specific settings.
///
/// One default differs from librdkafka's, and `[kafka]` may set it back:
/// `enable.metrics.push = false`. librdkafka pushes client metrics to brokers that ask for them
/// (KIP-714), and for that keeps about 40 histograms per client, some 0.4 MiB, whether a broker
/// asks or not: 18 MiB of 55 for 50 idle routes. herald's own metrics are served on `/metrics`.
pub fn client_config(props: &KafkaProperties) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("enable.metrics.push", "false");
    for (name, value) in props.iter() {
        config.set(name, value);
    }
    config
}

/// A producer config for messages herald must not lose or duplicate on retry:
/// `acks=all` and idempotence, on top of the `[kafka]` properties.
pub fn reliable_producer_config(props: &KafkaProperties) -> ClientConfig {
    let mut config = client_config(props);
    config.set("acks", "all").set("enable.idempotence", "true").set("linger.ms", "5");
    config
}

/// Creates `topic` with `partitions` partitions unless it exists. The replication factor is the
/// broker default (`-1`), so this works on a one-broker test cluster and a real one alike.
pub async fn ensure_topic(props: &KafkaProperties, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    ensure_topic_with(props, topic, partitions, &[]).await
}

/// [`ensure_topic`] with topic configs, e.g. `("cleanup.policy", "compact")`, used on creation only.
pub async fn ensure_topic_with(
    props: &KafkaProperties,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(props).create()?;
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    for (name, value) in configs {
        new_topic = new_topic.set(name, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics([&new_topic], &options).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// The partition count of each of `topics` (0 for a topic the broker does not have), asking
/// the cluster's metadata. Blocking: call from `spawn_blocking` in async code.
pub fn partition_counts(
    props: &KafkaProperties,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<(String, usize)>, KafkaError> {
    let consumer: BaseConsumer = client_config(props).set("group.id", "herald-metadata").create()?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    Ok(topics
        .iter()
        .map(|name| {
            let partitions = metadata
                .topics()
                .iter()
                .find(|topic| topic.name() == name && topic.error().is_none())
                .map_or(0, |topic| topic.partitions().len());
            (name.clone(), partitions)
        })
        .collect())
}

/// The `herald.origin` header among a message's `headers`, if any.
pub fn origin_of(headers: Option<&impl rdkafka::message::Headers>) -> Option<String> {
    headers?
        .iter()
        .find(|header| header.key == herald_sdk::sink::ORIGIN_HEADER)
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Polls `producer` on this thread until every message it holds is acknowledged (or failed),
/// in 1 ms steps, for at most `timeout`; false when time ran out.
///
/// rdkafka's `BaseProducer::flush` (also run first by `commit_transaction`) polls with its whole
/// remaining timeout, and when the last delivery report is taken just before librdkafka counts
/// it, that poll waits for an event that never comes: transactions took 100–200 ms instead of
/// a few. Called right before, it leaves that flush nothing to wait for.
pub fn settle<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::BaseProducer<C>,
    timeout: Duration,
) -> bool {
    use rdkafka::producer::Producer;
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        producer.poll(Duration::from_millis(1));
    }
    true
}

/// Queues `record` on `producer`, polling (which serves delivery reports and frees room) while
/// librdkafka's queue is full.
pub fn send_queued<'a, C, K, P>(
    producer: &rdkafka::producer::BaseProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'a, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C: rdkafka::producer::ProducerContext,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                producer.poll(Duration::from_millis(10));
                record = returned;
            }
            Err((err, _)) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn client_metrics_push_is_off_unless_the_kafka_table_turns_it_on() {
        let mut props = KafkaProperties::default();
        props.set("bootstrap.servers", "127.0.0.1:9092");
        let config = client_config(&props);
        assert_eq!(config.get("enable.metrics.push"), Some("false"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        props.set("enable.metrics.push", "true");
        assert_eq!(client_config(&props).get("enable.metrics.push"), Some("true"));
    }
}
