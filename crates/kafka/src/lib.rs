/*!
herald-kafka: herald's Kafka plumbing, shared by the route runtime, the source, expectations,
the status board and the commands.

Every Kafka client herald makes starts from the `[kafka]` table ([`KafkaProperties`],
[`client_config`]). Beside that, the few things more than one part of herald does with Kafka
live here once: creating the topics herald writes ([`admin`]), reading topics from a point in
time with no consumer group ([`TopicReader`]: `wait`, `status`, the board), noting a
consumer's rebalances for the task that owns it ([`Rebalances`]), and a transactional
producer's lifecycle ([`TransactionalProducer`]: the source, the expectations).

The one decision to know: **nothing here knows what a route, a sink or a source is**. The
crate depends on herald-sdk only for the stage event, so every herald crate that speaks Kafka
can depend on it without depending on the route runtime.

# Layout
- [`properties`]: the `[kafka]` table and client configs built from it.
- [`admin`]: creating topics, counting partitions.
- [`reader`]: [`TopicReader`], a topic read from a point in time.
- [`rebalance`]: [`Rebalances`], what a consumer's rebalances changed.
- [`transactional`]: the [`TransactionalProducer`].
- [`producer`]: queueing on a full queue, and waiting for acknowledgements without librdkafka's
  slow flush (`BaseProducer`).
- [`headers`]: the headers herald writes: a message's origin, Kafka Connect's dead-letter ones.
*/
#![deny(missing_docs)]

pub mod admin;
pub mod fold;
pub mod headers;
pub mod producer;
pub mod properties;
pub mod reader;
pub mod rebalance;
pub mod transactional;

pub use admin::{
    await_brokers, ensure_topic, ensure_topic_with, ensure_topics, partition_counts, TopicSpec, MAX_DEAD_LETTER_BYTES,
};
pub use properties::{client_config, reliable_producer_config, KafkaProperties, TopicDefaults};
pub use reader::{HistoryError, Read, TopicReader};
pub use rebalance::{AssignmentChanges, Rebalances};
pub use transactional::TransactionalProducer;
