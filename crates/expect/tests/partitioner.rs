//! herald's idea of a key's partition against librdkafka's own partitioners on the real broker:
//! the evaluator relies on it to know who owns a source that never published.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use herald_expect::Partitioner;
use herald_kafka::KafkaProperties;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_of_agrees_with_librdkafka_for_both_partitioners() {
    let topic = format!("herald-partitioner-{}-{}", std::process::id(), rand::random::<u32>());
    herald_kafka::ensure_topic(&KafkaProperties::default(), &topic, 7).await.unwrap();
    for (name, partitioner) in
        [("consistent_random", Partitioner::ConsistentRandom), ("murmur2_random", Partitioner::Murmur2Random)]
    {
        let producer: FutureProducer =
            ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092").set("partitioner", name).create().unwrap();
        for n in 0..60 {
            let key = format!("source-{n}-{}", "x".repeat(n % 7));
            let record = FutureRecord::to(&topic).key(key.as_str()).payload("{}");
            let delivery = producer.send(record, Duration::from_secs(30)).await.map_err(|(err, _)| err).unwrap();
            let partition = delivery.partition;
            assert_eq!(herald_expect::partition_of(partitioner, key.as_bytes(), 7), partition, "{name}: key {key}");
        }
    }
}
