//! The reproduction behind docs/benchmarks.md's note on the source's latency tail: a bare rdkafka
//! transactional `FutureProducer`, no herald code, writing one message to each of two topics per
//! transaction (as the source writes an event and its cursor), 200 transactions 10 ms apart.
//! Prints transaction-time percentiles; a ~100 ms max is the stall: `commit_transaction` called
//! right after the delivery futures resolved flushes while rdkafka's polling thread has not yet
//! released the delivery report, and waits out a 100 ms poll. With `settle`, the probe first
//! waits for `in_flight_count() == 0`, as herald's publisher does, and the stall is gone.
//! Needs the local broker (`scripts/services up`). A harness that prints numbers, not a test.
//!
//! ```sh
//! cargo run --release -p herald-bench --example txn_commit_probe -- [RETRY_BACKOFF_MS] [settle]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

#[tokio::main]
async fn main() {
    let backoff = std::env::args().nth(1).unwrap_or_else(|| "100".into());
    let settle = std::env::args().nth(2).as_deref() == Some("settle");
    let run = std::process::id();
    let (events, cursor) = (format!("probe-{run}"), format!("probe-{run}.offsets"));
    for topic in [&events, &cursor] {
        herald_kafka::ensure_topic(&Default::default(), topic, 1).await.unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("transactional.id", format!("probe-{run}"))
        .set("linger.ms", "1")
        .set("retry.backoff.ms", &backoff)
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(10)).unwrap();
    let mut samples = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        producer.begin_transaction().unwrap();
        let first = producer.send_result(FutureRecord::to(&events).payload("event").key("k")).unwrap();
        let second = producer.send_result(FutureRecord::to(&cursor).payload("cursor").key("k")).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        let delivered = start.elapsed();
        if settle {
            while producer.in_flight_count() > 0 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let committing = producer.clone();
        tokio::task::spawn_blocking(move || committing.commit_transaction(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        samples.push((start.elapsed(), delivered));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (max, delivered_at_max) = samples[199];
    println!(
        "retry.backoff.ms={backoff}: transaction p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (its messages delivered after {:.1} ms)",
        ms(samples[100].0),
        ms(samples[198].0),
        ms(max),
        ms(delivered_at_max)
    );
}
