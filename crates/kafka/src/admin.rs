//! The few admin calls herald makes: creating the topics it writes, counting partitions.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::properties::{client_config, KafkaProperties};

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
