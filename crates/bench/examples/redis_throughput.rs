//! Throughput of the Redis sink alone against a real Redis (`scripts/services up`): events/s for
//! a batch pipelined in one `MULTI`/`EXEC` versus one event per round trip. A harness that prints
//! numbers, not a test.
//!
//! ```sh
//! cargo run --release -p herald-bench --example redis_throughput -- [EVENTS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use herald_sdk::{SinkRecord, StageEvent};
use herald_sink_redis::RedisSinkConfig;

#[tokio::main]
async fn main() {
    let events: usize = std::env::args().nth(1).map_or(100_000, |a| a.parse().expect("EVENTS is a number"));
    let records: Vec<SinkRecord> = (0..events)
        .map(|i| {
            let json = format!(
                r#"{{"event":"STAGE_COMPLETE","stage":"bronze_ingest","source":"source-{}","records":{i},"timestamp":"2026-11-26T10:15:00.{:06}","status":"SUCCESS"}}"#,
                i % 1000,
                i % 1_000_000
            );
            SinkRecord { event: StageEvent::from_json(json.as_bytes()).unwrap().into(), topic: "bench".into(), partition: 0, offset: i as i64, origin: None, raw: None }
        })
        .collect();
    let run = std::process::id();
    println!("{:<34} {:>6} {:>10} {:>10} {:>12}", "outputs", "batch", "events", "seconds", "events/s");
    for (label, settings) in [
        ("publish", serde_json::json!({ "publish": { "channel": format!("bench.{run}.{{source}}") } })),
        (
            "publish + latest_key",
            serde_json::json!({
                "publish": { "channel": format!("bench.{run}.{{source}}") },
                "latest_key": { "key": format!("bench:{run}:{{source}}:{{stage}}"), "ttl": "10m" },
            }),
        ),
        (
            "publish + latest_key + stream",
            serde_json::json!({
                "publish": { "channel": format!("bench.{run}.{{source}}") },
                "latest_key": { "key": format!("bench:{run}:{{source}}:{{stage}}"), "ttl": "10m" },
                "stream": { "key": format!("bench:{run}:stream"), "max_len": 10000 },
            }),
        ),
    ] {
        for batch in [1, 1000] {
            let mut settings = settings.clone();
            settings["url"] = "redis://127.0.0.1:6379".into();
            let mut sink = serde_json::from_value::<RedisSinkConfig>(settings).unwrap().sink().unwrap();
            let started = Instant::now();
            for chunk in records.chunks(batch) {
                sink.write(chunk).await.unwrap();
            }
            let seconds = started.elapsed().as_secs_f64();
            println!("{label:<34} {batch:>6} {events:>10} {seconds:>10.2} {:>12.0}", events as f64 / seconds);
        }
    }
}
