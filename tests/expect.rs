//! Expectations against the real broker, with schedules of seconds: alerts for stages that did
//! not happen, exactly once across restarts and across processes, one of them SIGKILLed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

/// Every committed alert on `topic` (read_committed, to its end), in offset order per partition.
fn alerts(topic: &str, partitions: i32) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", unique("alert-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut at_end = std::collections::BTreeSet::new();
    let mut alerts = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while at_end.len() < partitions as usize {
        assert!(Instant::now() < deadline, "never reached the end of {topic}");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let event: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
                if event["event"].as_str().is_some_and(|name| name.starts_with("STAGE_") && name != "STAGE_COMPLETE") {
                    alerts.push(event);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(err)) => panic!("{err}"),
            None => {}
        }
    }
    alerts
}

/// `(event, source, stage)` of each alert.
fn summary(alerts: &[serde_json::Value]) -> Vec<(String, String, String)> {
    let mut summary: Vec<(String, String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["event"].as_str().unwrap().into(),
                a["source"].as_str().unwrap().into(),
                a["stage"].as_str().unwrap().into(),
            )
        })
        .collect();
    summary.sort();
    summary
}

/// Polls the topic until `done(alerts)`; panics after `PATIENCE`.
async fn wait_for_alerts(topic: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alerts = alerts(topic, 3);
        if done(&alerts) {
            return alerts;
        }
        assert!(Instant::now() < deadline, "alerts never came; got {:?}", summary(&alerts));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn config(topic: &str, group: &str, rules: &str) -> TempConfig {
    TempConfig::new(&format!("{}[expectations]\ntopic = \"{topic}\"\ngroup_id = \"{group}\"\n{rules}", kafka_section()))
}

async fn publish(topic: &str, source: &str, stage: &str, status: &str) {
    let event = format!(
        r#"{{"event":"STAGE_COMPLETE","stage":"{stage}","source":"{source}","timestamp":"{}","status":"{status}"}}"#,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
    );
    produce(topic, &[(Some(source), event.as_bytes())]).await;
}

const SILVER_AFTER_BRONZE: &str = r#"
[[expect]]
name = "silver-after-bronze"
stage = "silver"
after = "bronze"
within = "3s"
missing_after = "1h"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stage_alerts_once_a_late_success_recovers_and_a_restart_alerts_nothing_again() {
    let topic = unique("expect");
    create_topic(&topic, 3).await;
    let config = config(&topic, &unique("group"), SILVER_AFTER_BRONZE);
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Expectations: partition taken over.");

    publish(&topic, "OrdersDB", "bronze", "SUCCESS").await;
    publish(&topic, "Payments", "bronze", "SUCCESS").await;
    publish(&topic, "Payments", "silver", "SUCCESS").await; // in time: no alert
    publish(&topic, "UsersDB", "bronze", "FAILED").await; // not a success: nothing is due

    let late = wait_for_alerts(&topic, |alerts| !alerts.is_empty()).await;
    assert_eq!(summary(&late), [("STAGE_LATE".into(), "OrdersDB".into(), "silver".into())]);
    let alert = &late[0];
    assert_eq!((alert["status"].as_str(), alert["rule"].as_str()), (Some("LATE"), Some("silver-after-bronze")));
    assert_eq!(alert["last_event"], serde_json::Value::Null, "no silver event of OrdersDB yet");
    let expected_by: chrono::DateTime<chrono::Utc> = alert["expected_by"].as_str().unwrap().parse().unwrap();
    let alerted: chrono::DateTime<chrono::Utc> = alert["timestamp"].as_str().unwrap().parse().unwrap();
    println!("STAGE_LATE published {} ms after its deadline", (alerted - expected_by).num_milliseconds());

    // The evaluator writes with transactions; with an aborted one after its alert, `herald wait`
    // for the alert still reads to the end and returns it.
    let aborted = serde_json::json!({"event": "STAGE_LATE", "stage": "silver", "source": "Payments", "status": "LATE",
        "timestamp": chrono::Utc::now().to_rfc3339()});
    produce_transaction(&topic, &[(Some("Payments"), aborted.to_string().as_bytes())], false).await;
    let wait = common::herald()
        .args(["wait", "--brokers", BROKERS, "--topic", &topic, "--source", "OrdersDB", "--stage", "silver"])
        .args(["--event", "STAGE_LATE", "--since", "1h", "--timeout", "20s"])
        .output()
        .unwrap();
    assert_eq!(wait.status.code(), Some(0), "{}", String::from_utf8_lossy(&wait.stderr));
    assert!(String::from_utf8_lossy(&wait.stdout).contains("\"rule\":\"silver-after-bronze\""));

    // A restart picks the state up from Kafka: no second alert for the same miss.
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Expectations: partition taken over.");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alerts(&topic, 3).len(), 1, "the restarted evaluator alerted again");

    // The late success recovers it, once.
    publish(&topic, "OrdersDB", "silver", "SUCCESS").await;
    let all = wait_for_alerts(&topic, |alerts| alerts.len() >= 2).await;
    assert_eq!(
        summary(&all),
        [
            ("STAGE_LATE".into(), "OrdersDB".into(), "silver".into()),
            ("STAGE_RECOVERED".into(), "OrdersDB".into(), "silver".into())
        ]
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(alerts(&topic, 3).len(), 2, "nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_alerts_late_then_missing_once_per_deadline_until_the_stage_succeeds() {
    let topic = unique("expect");
    create_topic(&topic, 3).await;
    let rules = r#"
[[expect]]
name = "gold-every-3s"
stage = "gold"
sources = ["OrdersDB"]
by = "*/3 * * * * *"
timezone = "Europe/Berlin"
missing_after = "2s"
"#;
    let config = config(&topic, &unique("group"), rules);
    let herald = Herald::run(&config);
    // Three deadlines pass with no gold.
    let missed =
        wait_for_alerts(&topic, |alerts| alerts.iter().filter(|a| a["event"] == "STAGE_MISSING").count() >= 3).await;
    let mut per_deadline: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for alert in &missed {
        per_deadline
            .entry(alert["expected_by"].as_str().unwrap().into())
            .or_default()
            .push(alert["event"].as_str().unwrap().into());
    }
    for (deadline, events) in &per_deadline {
        let complete = events == &["STAGE_LATE", "STAGE_MISSING"];
        let pending = events == &["STAGE_LATE"];
        assert!(complete || pending, "deadline {deadline}: {events:?}");
    }
    // From now on gold succeeds every second: no more alerts once it is paid.
    for _ in 0..8 {
        publish(&topic, "OrdersDB", "gold", "SUCCESS").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = alerts(&topic, 3).len();
    for _ in 0..8 {
        publish(&topic, "OrdersDB", "gold", "SUCCESS").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = alerts(&topic, 3);
    assert_eq!(after.len(), before, "alerts while every deadline was paid: {:?}", summary(&after[before..]));
    drop(herald);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_with_one_sigkilled_at_the_deadline_alert_exactly_once_per_miss() {
    let topic = unique("expect");
    create_topic(&topic, 3).await;
    let rules = r#"
[[expect]]
name = "silver-after-bronze"
stage = "silver"
after = "bronze"
within = "6s"
missing_after = "1h"
"#;
    let config = config(&topic, &unique("group"), rules);
    let mut processes: Vec<Herald> = (0..3).map(|_| Herald::run(&config)).collect();
    // Wait until the group settled with a partition each.
    for herald in &mut processes {
        herald.wait_for_log("Expectations: partition taken over.");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sources: Vec<String> = (0..9).map(|n| format!("source-{n}")).collect();
    let published = Instant::now();
    for source in &sources {
        publish(&topic, source, "bronze", "SUCCESS").await;
    }
    // SIGKILL one process right at the deadline.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(published.elapsed())).await;
    processes[1].signal("KILL");
    let late = wait_for_alerts(&topic, |alerts| alerts.len() >= sources.len()).await;
    // Time for a duplicate to show up, had there been one (session and transaction timeouts).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let all = alerts(&topic, 3);
    let expected: Vec<(String, String, String)> =
        sources.iter().map(|s| ("STAGE_LATE".to_owned(), s.clone(), "silver".to_owned())).collect();
    assert_eq!(summary(&all), expected, "exactly one alert per miss (first seen: {})", late.len());
}
