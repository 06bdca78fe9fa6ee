//! The SNS sink against the moto server (`scripts/services up`, 127.0.0.1:4566): real HTTP, the
//! real AWS SDK, SQS queues subscribed to read back what SNS delivered. Each test creates its own
//! topics and queues.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_sns::config::Credentials;
use aws_sdk_sqs::types::QueueAttributeName;
use herald_sdk::{SinkRecord, StageEvent};
use herald_sink_sns::SnsSinkConfig;
use rand::Rng;

const ENDPOINT: &str = "http://127.0.0.1:4566";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", rand::rng().random_range(0..u64::MAX))
}

async fn shared_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(ENDPOINT)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await
}

/// A topic with a queue subscribed to it (optionally through a filter policy).
struct Subscribed {
    topic_arn: String,
    queue_url: String,
    sqs: aws_sdk_sqs::Client,
}

async fn subscribed(fifo: bool, filter_policy: Option<&str>) -> Subscribed {
    let config = shared_config().await;
    let sns = aws_sdk_sns::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let suffix = if fifo { ".fifo" } else { "" };
    let name = unique("herald-test");
    let mut topic = sns.create_topic().name(format!("{name}{suffix}"));
    if fifo {
        topic = topic.attributes("FifoTopic", "true").attributes("ContentBasedDeduplication", "false");
    }
    let topic_arn = topic
        .send()
        .await
        .unwrap_or_else(|err| {
            panic!("no SNS emulator at {ENDPOINT} ({err:?}): start the test services with `scripts/services up`")
        })
        .topic_arn()
        .unwrap()
        .to_owned();
    let mut queue = sqs.create_queue().queue_name(format!("{name}{suffix}"));
    if fifo {
        queue = queue.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let queue_url = queue.send().await.unwrap().queue_url().unwrap().to_owned();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let mut subscribe = sns.subscribe().topic_arn(&topic_arn).protocol("sqs").endpoint(queue_arn);
    if let Some(policy) = filter_policy {
        subscribe = subscribe.attributes("FilterPolicy", policy);
    }
    subscribe.send().await.unwrap();
    Subscribed { topic_arn, queue_url, sqs }
}

impl Subscribed {
    /// Reads SNS envelopes from the queue until `expected` arrived, then once more to be sure
    /// nothing else follows.
    async fn drain(&self, expected: usize) -> Vec<serde_json::Value> {
        let mut messages = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut empty_after_expected = 0;
        while Instant::now() < deadline && empty_after_expected < 2 {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            let batch = received.messages();
            if batch.is_empty() && messages.len() >= expected {
                empty_after_expected += 1;
            }
            for message in batch {
                messages.push(serde_json::from_str(message.body().unwrap()).unwrap());
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(message.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        messages
    }
}

fn event(source: &str, status: &str, seq: usize) -> StageEvent {
    StageEvent::from_json(
        format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"bronze","source":"{source}","records":{seq},"timestamp":"2026-11-26T10:00:00","status":"{status}","seq":{seq}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn records(events: Vec<StageEvent>) -> Vec<SinkRecord> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| SinkRecord {
            event: event.into(),
            topic: "events".into(),
            partition: 0,
            offset: i as i64,
            origin: None,
            raw: None,
        })
        .collect()
}

async fn sink(settings: serde_json::Value) -> Box<dyn herald_sdk::Sink> {
    let mut settings = settings;
    settings["endpoint"] = ENDPOINT.into();
    settings["region"] = "us-east-1".into();
    settings["access_key_id"] = "test".into();
    settings["secret_access_key"] = "test".into();
    serde_json::from_value::<SnsSinkConfig>(settings).unwrap().sink().await.unwrap()
}

fn inner(envelope: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(envelope["Message"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_filter_policy_subscriber_receives_exactly_the_matching_events_with_their_attributes() {
    let target = subscribed(false, Some(r#"{"status": ["FAILED"], "source": ["OrdersDB"]}"#)).await;
    let mut sink = sink(serde_json::json!({
        "topic_arn": target.topic_arn,
        "subject": "{stage} of {source}: {status}",
        "attributes": { "event": "String", "source": "String", "stage": "String", "status": "String", "records": "Number" },
    }))
    .await;
    let statuses = ["SUCCESS", "FAILED", "RUNNING"];
    let sources = ["OrdersDB", "UsersDB"];
    let batch = records((0..60).map(|seq| event(sources[seq % 2], statuses[seq % 3], seq)).collect());
    let outcome = sink.write(&batch).await.unwrap();
    assert!(outcome.rejected.is_empty());

    let received = target.drain(10).await;
    let mut seqs: Vec<u64> = received.iter().map(|m| inner(m)["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (0..60u64).filter(|s| s % 2 == 0 && s % 3 == 1).collect();
    assert_eq!(seqs, expected, "only FAILED events of OrdersDB");
    let first = &received[0];
    assert_eq!(first["MessageAttributes"]["status"]["Value"], "FAILED");
    assert_eq!(first["MessageAttributes"]["source"]["Type"], "String");
    assert_eq!(first["MessageAttributes"]["records"]["Type"], "Number");
    assert_eq!(first["Subject"], "bronze of OrdersDB: FAILED");
}

#[tokio::test]
async fn a_fifo_topic_keeps_per_source_order_and_drops_replayed_duplicates() {
    let target = subscribed(true, None).await;
    let mut sink = sink(serde_json::json!({ "topic_arn": target.topic_arn })).await;
    let sources = ["OrdersDB", "UsersDB", "Billing"];
    let batch = records((0..45).map(|seq| event(sources[seq % 3], "SUCCESS", seq)).collect());
    sink.write(&batch).await.unwrap();
    // Redelivered after a crash: the same Kafka offsets, so the same deduplication ids.
    sink.write(&batch[20..]).await.unwrap();

    let received = target.drain(45).await;
    assert_eq!(received.len(), 45, "replayed messages were deduplicated");
    let mut per_source: HashMap<String, Vec<u64>> = HashMap::new();
    for message in &received {
        let event = inner(message);
        per_source
            .entry(event["source"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["seq"].as_u64().unwrap());
    }
    for (i, source) in sources.iter().enumerate() {
        assert_eq!(per_source[*source], (i as u64..45).step_by(3).collect::<Vec<_>>(), "{source} in order");
    }
}

#[tokio::test]
async fn events_are_routed_to_topics_by_a_field_with_a_default() {
    let orders = subscribed(false, None).await;
    let rest = subscribed(false, None).await;
    let mut sink = sink(serde_json::json!({
        "topic_arn": rest.topic_arn,
        "topic_by": { "field": "source", "topics": { "OrdersDB": orders.topic_arn } },
    }))
    .await;
    let batch =
        records((0..12).map(|seq| event(["OrdersDB", "UsersDB", "Billing"][seq % 3], "SUCCESS", seq)).collect());
    sink.write(&batch).await.unwrap();
    let to_orders: Vec<u64> = orders.drain(4).await.iter().map(|m| inner(m)["seq"].as_u64().unwrap()).collect();
    let mut sorted = to_orders.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 3, 6, 9]);
    assert_eq!(rest.drain(8).await.len(), 8);
}

#[tokio::test]
async fn an_oversized_or_unrenderable_event_is_rejected_alone() {
    let target = subscribed(false, None).await;
    let mut sink = sink(serde_json::json!({ "topic_arn": target.topic_arn, "subject": "{stage} for {tenant}" })).await;
    let mut events: Vec<StageEvent> = (0..5).map(|seq| event("A", "SUCCESS", seq)).collect();
    for e in &mut events {
        e.extra.insert("tenant".into(), "acme".into());
    }
    events[1].extra.insert("blob".into(), "x".repeat(300 * 1024).into());
    events[3].extra.remove("tenant");
    let outcome = sink.write(&records(events)).await.unwrap();
    let mut rejected: Vec<(usize, String)> = outcome.rejected.iter().map(|r| (r.index, r.error.to_string())).collect();
    rejected.sort();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0].0, 1);
    assert!(rejected[0].1.contains("over SNS's limit"), "{}", rejected[0].1);
    assert_eq!(rejected[1].0, 3);
    assert!(rejected[1].1.contains("tenant"), "{}", rejected[1].1);
    assert_eq!(target.drain(3).await.len(), 3);
}

#[tokio::test]
async fn the_healthcheck_names_topics_that_cannot_be_reached() {
    let target = subscribed(false, None).await;
    let missing = "arn:aws:sns:us-east-1:123456789012:herald-no-such-topic";
    let mut sink = sink(serde_json::json!({ "topic_arn": target.topic_arn })).await;
    sink.healthcheck().await.unwrap();
    let mut sink = sink_with_missing(&target.topic_arn, missing).await;
    let err = sink.healthcheck().await.unwrap_err();
    let text = herald_sdk::error_chain(&err).join(": ");
    assert!(text.contains(missing) && !text.contains(&format!("{}:", target.topic_arn)), "{text}");
}

async fn sink_with_missing(present: &str, missing: &str) -> Box<dyn herald_sdk::Sink> {
    sink(serde_json::json!({ "topic_arn": present, "topic_by": { "field": "source", "topics": { "X": missing } } }))
        .await
}

/// The SNS sink under the conformance suite: a standard topic (at least once), its queue read
/// back; the subject template needs the `lane` field, so an event without it is refused.
struct SnsHarness {
    target: Subscribed,
    received: Vec<i64>,
}

#[async_trait::async_trait]
impl herald_sdk::conformance::Harness for SnsHarness {
    fn replay(&self) -> herald_sdk::conformance::Replay {
        herald_sdk::conformance::Replay::AtLeastOnce
    }

    async fn sink(&mut self) -> Result<Box<dyn herald_sdk::Sink>, herald_sdk::BoxError> {
        Ok(sink(serde_json::json!({ "topic_arn": self.target.topic_arn, "subject": "{lane}: {source}" })).await)
    }

    async fn write_unreachable(&mut self, batch: &[SinkRecord]) -> Option<Result<(), herald_sdk::SinkError>> {
        let mut unreachable = serde_json::from_value::<SnsSinkConfig>(serde_json::json!({
            "topic_arn": self.target.topic_arn, "endpoint": "http://127.0.0.1:1", "region": "us-east-1",
            "access_key_id": "test", "secret_access_key": "test", "timeout": "2s",
        }))
        .unwrap()
        .sink()
        .await
        .unwrap();
        Some(unreachable.write(batch).await.map(drop))
    }

    fn refused(&self, mut record: SinkRecord) -> Option<SinkRecord> {
        record.event.edit(|event| drop(event.extra.remove("lane")));
        Some(record)
    }

    async fn delivered(&mut self) -> Result<Vec<i64>, herald_sdk::BoxError> {
        // What arrived since the last look, added to what arrived before.
        for envelope in self.target.drain(0).await {
            self.received.push(inner(&envelope)["records"].as_i64().ok_or("no records field")?);
        }
        Ok(self.received.clone())
    }
}

#[tokio::test]
async fn the_sns_sink_keeps_every_promise_at_least_once() {
    let mut harness = SnsHarness { target: subscribed(false, None).await, received: Vec::new() };
    herald_sdk::conformance::check(&mut harness).await.unwrap();
}
