//! Throughput of the Postgres sink alone: events/s written through `Sink::write` into a real
//! Postgres (`scripts/services up`), per mode and batch size. A harness that prints numbers, not
//! a test.
//!
//! ```sh
//! cargo run --release -p herald-bench --example postgres_throughput -- [EVENTS] [BATCH,BATCH,…]
//! ```
//! Defaults: 100000 events, batch sizes 1,100,1000, modes append and upsert (1000 keys).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use herald_sdk::{SinkRecord, StageEvent};
use herald_sink_postgres::{PostgresSinkConfig, Setup};

const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().map_or(100_000, |a| a.parse().expect("EVENTS is a number"));
    let batches: Vec<usize> = args.next().map_or_else(
        || vec![1, 100, 1000],
        |a| a.split(',').map(|b| b.parse().expect("batch sizes are numbers")).collect(),
    );
    let records: Vec<SinkRecord> = (0..events)
        .map(|i| {
            let json = format!(
                r#"{{"event":"STAGE_COMPLETE","stage":"bronze_ingest","source":"source-{}","records":{i},"timestamp":"2026-11-26T10:15:00.{:06}","status":"SUCCESS"}}"#,
                i % 1000,
                i % 1_000_000
            );
            SinkRecord {
                event: StageEvent::from_json(json.as_bytes()).unwrap().into(),
                topic: "bench".into(),
                partition: (i % 3) as i32,
                offset: (i / 3) as i64,
                origin: None,
                raw: None,
            }
        })
        .collect();

    println!("{:<8} {:>6} {:>10} {:>10} {:>12}", "mode", "batch", "events", "seconds", "events/s");
    for mode in ["append", "upsert"] {
        for &batch in &batches {
            let schema = format!("bench_{mode}_{batch}_{}", std::process::id());
            let config: PostgresSinkConfig =
                serde_json::from_value(serde_json::json!({ "url": URL, "schema": schema, "mode": mode })).unwrap();
            let mut sink = config.connect("bench", "bench", Setup::Migrate).await.unwrap();
            let started = Instant::now();
            for chunk in records.chunks(batch) {
                sink.write(chunk).await.unwrap();
            }
            let seconds = started.elapsed().as_secs_f64();
            println!("{mode:<8} {batch:>6} {events:>10} {seconds:>10.2} {:>12.0}", events as f64 / seconds);
            sink.close().await.unwrap();
            let pool = sqlx::PgPool::connect(URL).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
        }
    }
}
