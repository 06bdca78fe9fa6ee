//! herald against the article's own Python clients (confluent-kafka, installed by
//! `scripts/services up`): it reads what their producer writes, and their consumer wakes on
//! what `herald publish` writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn seed_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/seed.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_delivers_what_the_seed_python_producer_publishes() {
    let topic = unique("events");
    create_topic(&topic, 3).await;
    let out = Command::new(python()).arg(seed_script()).args(["publish", BROKERS, &topic]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let config = TempConfig::new(&stdout_route_config(
        &unique("route"),
        &topic,
        r#"filter = { event = "STAGE_COMPLETE", status = "SUCCESS" }"#,
    ));
    let mut herald = Herald::run(&config);
    let lines = herald.wait_for_lines(1);
    let event: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(event["source"], "OrdersDB");
    assert_eq!(event["stage"], "bronze_ingest");
    assert_eq!(event["records"], 14823);
    // `datetime.utcnow().isoformat()` has no offset: herald keeps it as written and reads it as UTC.
    let timestamp = event["timestamp"].as_str().unwrap();
    assert!(!timestamp.ends_with('Z') && !timestamp.contains('+'), "{timestamp}");
    let age = chrono::Utc::now() - herald_sdk::EventTimestamp::parse(timestamp).unwrap().instant();
    assert!(age.num_seconds().abs() < 600, "read as UTC: {timestamp} is {age} away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_python_consumer_wakes_on_herald_publish() {
    let topic = unique("events");
    create_topic(&topic, 3).await;
    let mut waiter = Command::new(python())
        .arg(seed_script())
        .args(["wait", BROKERS, &topic, &unique("risk-analysis-trigger")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The seed consumer starts at `latest`: publish until it has joined and sees one.
    let deadline = Instant::now() + PATIENCE;
    while waiter.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the seed consumer never woke up");
        let out = herald()
            .args([
                "publish",
                "--brokers",
                BROKERS,
                "--topic",
                &topic,
                "--source",
                "OrdersDB",
                "--stage",
                "bronze_ingest",
                "--records",
                "14823",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Bronze ingest done. 14823 records. Starting risk analysis."
    );
}
