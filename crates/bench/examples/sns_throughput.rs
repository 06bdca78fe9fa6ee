//! Throughput of the SNS sink against the local emulator (`scripts/services up`): events/s with
//! `PublishBatch` (10 entries a call) versus one `Publish` per event. A harness that prints
//! numbers, not a test; the emulator (moto, in Python) is far slower than SNS itself, so only the
//! ratio carries over.
//!
//! ```sh
//! cargo run --release -p herald-bench --example sns_throughput -- [EVENTS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_sns::config::Credentials;
use herald_sdk::{SinkRecord, StageEvent};
use herald_sink_sns::SnsSinkConfig;

const ENDPOINT: &str = "http://127.0.0.1:4566";

#[tokio::main]
async fn main() {
    let events: usize = std::env::args().nth(1).map_or(2000, |a| a.parse().expect("EVENTS is a number"));
    let aws = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(ENDPOINT)
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .load()
        .await;
    let sns = aws_sdk_sns::Client::new(&aws);
    let topic_arn = sns
        .create_topic()
        .name(format!("bench-{}", std::process::id()))
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_owned();
    let records: Vec<SinkRecord> = (0..events)
        .map(|i| {
            let json = format!(
                r#"{{"event":"STAGE_COMPLETE","stage":"bronze_ingest","source":"source-{}","records":{i},"timestamp":"2026-11-26T10:15:00","status":"SUCCESS"}}"#,
                i % 100
            );
            SinkRecord { event: StageEvent::from_json(json.as_bytes()).unwrap().into(), topic: "bench".into(), partition: 0, offset: i as i64, origin: None, raw: None }
        })
        .collect();
    let config: SnsSinkConfig = serde_json::from_value(serde_json::json!({
        "topic_arn": topic_arn, "endpoint": ENDPOINT, "region": "us-east-1",
        "access_key_id": "test", "secret_access_key": "test",
    }))
    .unwrap();
    let mut sink = config.sink().await.unwrap();

    println!("{:<36} {:>8} {:>10} {:>12}", "calls", "events", "seconds", "events/s");
    let started = Instant::now();
    for record in &records {
        sink.write(std::slice::from_ref(record)).await.unwrap();
    }
    let single = started.elapsed().as_secs_f64();
    println!("{:<36} {events:>8} {single:>10.2} {:>12.0}", "one Publish(Batch) call per event", events as f64 / single);
    let started = Instant::now();
    for chunk in records.chunks(500) {
        sink.write(chunk).await.unwrap();
    }
    let batched = started.elapsed().as_secs_f64();
    println!(
        "{:<36} {events:>8} {batched:>10.2} {:>12.0}",
        "PublishBatch, 10 entries per call",
        events as f64 / batched
    );
    println!("PublishBatch / Publish: {:.1}x", single / batched);
}
