//! Latency of the Postgres source: a row insert committed → the event read by a Kafka consumer
//! (`read_committed`), at 1, 100 and 1000 rows/s, against the local services
//! (`scripts/services up`). A harness that prints numbers, not a test.
//!
//! ```sh
//! cargo run --release -p herald-source-postgres --example source_latency
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::config::KafkaProperties;
use herald_source_postgres::PostgresSourceConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use tokio_util::sync::CancellationToken;

const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

#[tokio::main]
async fn main() {
    let run = std::process::id();
    let schema = format!("latency_{run}");
    let topic = format!("latency-{run}");
    let pool = sqlx::PgPool::connect(URL).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.status (source text, stage text, status text, seq bigint, at timestamptz DEFAULT now())"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let config: PostgresSourceConfig = serde_json::from_value(serde_json::json!({
        "url": URL, "schema": schema, "table": format!("{schema}.status"), "topic": topic,
        "offsets_topic": format!("{topic}.offsets"), "poll_interval": "5s",
        "columns": { "source": "source", "stage": "stage", "status": "status", "records": "seq", "timestamp": "at" },
        "constants": { "event": "STAGE_COMPLETE" },
    }))
    .unwrap();
    config.migrate().await.unwrap();
    let cancel = CancellationToken::new();
    let kafka = KafkaProperties::default();
    let source = config.run("latency", &kafka, herald_core::observe::SourceMetrics::detached(), cancel.clone());
    let workload = measure(&pool, &schema, &topic, run, cancel.clone());
    let (source_result, ()) = tokio::join!(source, workload);
    source_result.unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
}

async fn measure(pool: &sqlx::PgPool, schema: &str, topic: &str, run: u32, cancel: CancellationToken) {
    // The reader: when each seq became visible.
    let seen: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let reader = std::thread::spawn({
        let (seen, topic) = (Arc::clone(&seen), topic.to_owned());
        move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:9092")
                .set("group.id", format!("latency-{run}"))
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("fetch.wait.max.ms", "10")
                .create()
                .unwrap();
            consumer.subscribe(&[topic.as_str()]).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
                    let event: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
                    seen.lock().unwrap().insert(event["records"].as_i64().unwrap(), Instant::now());
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await; // source active, reader assigned

    println!("{:>10} {:>6} {:>9} {:>9} {:>9}", "rows/s", "rows", "p50 ms", "p99 ms", "max ms");
    let mut seq = 0i64;
    for (rate, rows) in [(1u64, 20i64), (100, 1000), (1000, 5000)] {
        let interval = Duration::from_micros(1_000_000 / rate);
        let mut committed: Vec<(i64, Instant)> = Vec::new();
        let start = Instant::now();
        for i in 0..rows {
            let due = start + interval * i as u32;
            tokio::time::sleep_until(due.into()).await;
            sqlx::query(&format!(
                "INSERT INTO {schema}.status (source, stage, status, seq) VALUES ('src', 'bench', 'SUCCESS', $1)"
            ))
            .bind(seq)
            .execute(pool)
            .await
            .unwrap();
            committed.push((seq, Instant::now()));
            seq += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut latencies: Vec<f64> = loop {
            let seen = seen.lock().unwrap();
            if committed.iter().all(|(s, _)| seen.contains_key(s)) || Instant::now() > deadline {
                break committed
                    .iter()
                    .filter_map(|(s, at)| seen.get(s).map(|v| v.duration_since(*at).as_secs_f64() * 1000.0))
                    .collect();
            }
            drop(seen);
            std::thread::sleep(Duration::from_millis(50));
        };
        latencies.sort_by(f64::total_cmp);
        let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
        println!("{rate:>10} {rows:>6} {:>9.1} {:>9.1} {:>9.1}", pick(0.5), pick(0.99), pick(1.0));
    }
    cancel.cancel();
    drop(reader);
}
