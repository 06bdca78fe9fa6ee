//! The few admin calls herald makes: creating the topics it writes, counting partitions.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::properties::{client_config, KafkaProperties};

/// The largest dead letter herald sends, unless `[kafka] message.max.bytes` says otherwise;
/// dead-letter topics herald creates accept it.
pub const MAX_DEAD_LETTER_BYTES: &str = "16777216";

/// A topic herald writes, and how it is created when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic.
    pub name: String,
    /// Its partitions: `None` for `[kafka.topic_defaults] partitions` (or the broker's).
    pub partitions: Option<i32>,
    /// Topic configs set on creation, e.g. `cleanup.policy = compact`.
    pub configs: Vec<(&'static str, String)>,
}

impl TopicSpec {
    /// A topic of stage events.
    pub fn events(name: impl Into<String>) -> Self {
        Self { name: name.into(), partitions: None, configs: Vec::new() }
    }

    /// A dead-letter topic: it takes messages as large as herald may send.
    pub fn dead_letters(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: None,
            configs: vec![("max.message.bytes", MAX_DEAD_LETTER_BYTES.to_owned())],
        }
    }

    /// A compacted topic of `partitions` (offsets, state): the newest record per key is kept.
    pub fn compacted(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions: Some(partitions),
            configs: vec![("cleanup.policy", "compact".to_owned())],
        }
    }
}

/// Creates each of `topics` that is missing, as its spec and `[kafka.topic_defaults]` say;
/// returns the names of those it created (the others were there).
pub async fn ensure_topics(props: &KafkaProperties, topics: &[TopicSpec]) -> Result<Vec<String>, KafkaError> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let defaults = props.topic_defaults();
    let admin: AdminClient<DefaultClientContext> = client_config(props).create()?;
    let replicas = defaults.replication_factor.unwrap_or(-1);
    // A topic named twice (the ingest listener's and the alerts' may be one) is asked for once:
    // the broker refuses a request that names one topic twice.
    let mut named = std::collections::HashSet::new();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .filter(|spec| named.insert(spec.name.as_str()))
        .map(|spec| {
            let partitions = spec.partitions.or(defaults.partitions).unwrap_or(-1);
            spec.configs.iter().fold(
                NewTopic::new(&spec.name, partitions, TopicReplication::Fixed(replicas)),
                |topic, (name, value)| topic.set(name, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut created = Vec::new();
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(created)
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

/// A client context that keeps librdkafka's own log lines and errors at DEBUG: for a client
/// whose caller reports the failure itself, once (with the brokers down, librdkafka would
/// repeat the same connection error many times a second).
struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, facility = fac, "librdkafka: {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, "librdkafka: {reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Asks for the cluster's metadata until a broker answers, `deadline` passes or `stop()` says
/// so, backing off 1 s, 2 s, 4 s … up to 15 s between tries; `on_failure(attempt, error)` after
/// each failed try. One client for all tries, so librdkafka's own connection errors are logged
/// once and folded. Blocking: call it from `spawn_blocking`. `Ok(false)`: stopped.
pub fn await_brokers(
    props: &KafkaProperties,
    deadline: std::time::Instant,
    stop: impl Fn() -> bool,
    mut on_failure: impl FnMut(u32, &KafkaError),
) -> Result<bool, KafkaError> {
    let consumer: BaseConsumer<Quiet> =
        client_config(props).set("group.id", "herald-startup").create_with_context(Quiet)?;
    let mut backoff = Duration::from_secs(1);
    for attempt in 1.. {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match consumer.fetch_metadata(None, left.clamp(Duration::from_millis(100), Duration::from_secs(5))) {
            Ok(_) => return Ok(true),
            Err(err) => {
                on_failure(attempt, &err);
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(err);
                }
                // Sleep in small steps, to stop promptly.
                let wake = std::time::Instant::now() + backoff.min(left);
                while std::time::Instant::now() < wake {
                    if stop() {
                        return Ok(false);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }
    Ok(false)
}
