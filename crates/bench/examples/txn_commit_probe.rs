//! The reproduction behind docs/benchmarks.md's note on the source's latency tail: a bare rdkafka
//! transactional `FutureProducer`, no herald code, writing one message to each of two topics per
//! transaction (as the source writes an event and its cursor), 1,000 transactions 10 ms apart.
//! Prints transaction-time percentiles; a ~100 ms max is the stall: `commit_transaction` called
//! right after the delivery futures resolved flushes while rdkafka's polling thread has not yet
//! released the delivery report, and waits out a 100 ms poll. With `settle`, the probe first
//! waits for `in_flight_count() == 0`, as herald's publisher does, and the stall is gone.
//! Needs the local broker (`scripts/services up`). A harness that prints numbers, not a test.
//!
//! With `PRODUCERS` 2, transactions alternate between two transactional producers, each
//! beginning its next transaction a whole transaction after its last commit: a transaction that
//! starts right after its producer's last commit finds that commit's markers still being
//! written, and the coordinator answers `CONCURRENT_TRANSACTIONS`, which librdkafka retries
//! after 20 ms. `GAP_MS` is the pause between transactions (10 ms; 0 is a source at full load).
//!
//! ```sh
//! cargo run --release -p herald-bench --example txn_commit_probe -- [RETRY_BACKOFF_MS] [settle|-] [PRODUCERS] [GAP_MS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

#[tokio::main]
async fn main() {
    let backoff = std::env::args().nth(1).unwrap_or_else(|| "100".into());
    let settle = std::env::args().nth(2).as_deref() == Some("settle");
    let producers: usize = std::env::args().nth(3).map_or(1, |n| n.parse().unwrap());
    let gap = Duration::from_millis(std::env::args().nth(4).map_or(10, |n| n.parse().unwrap()));
    let run = std::process::id();
    let (events, cursor) = (format!("probe-{run}"), format!("probe-{run}.offsets"));
    for topic in [&events, &cursor] {
        herald_kafka::ensure_topic(&Default::default(), topic, 1).await.unwrap();
    }
    let all: Vec<FutureProducer> = (0..producers)
        .map(|index| {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:9092")
                .set("transactional.id", format!("probe-{run}-{index}"))
                .set("linger.ms", "1")
                .set("retry.backoff.ms", &backoff)
                .create()
                .unwrap();
            producer.init_transactions(Duration::from_secs(10)).unwrap();
            producer
        })
        .collect();
    let mut samples = Vec::new();
    for round in 0..1000 {
        let producer = &all[round % producers];
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
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    samples.sort();
    let n = samples.len();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (max, delivered_at_max) = samples[n - 1];
    println!(
        "retry.backoff.ms={backoff} producers={producers} gap={gap:?}: transaction p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms (its messages delivered after {:.1} ms)",
        ms(samples[n / 2].0),
        ms(samples[n * 95 / 100].0),
        ms(samples[n * 99 / 100].0),
        ms(max),
        ms(delivered_at_max)
    );
}
