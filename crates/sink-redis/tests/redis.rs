//! The Redis sink against a real Redis (`scripts/services up`), through the `Sink` API.
//! Each test uses its own channel, key and stream names, so tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use herald_sdk::{SinkRecord, StageEvent};
use herald_sink_redis::RedisSinkConfig;
use rand::seq::SliceRandom;
use rand::Rng;
use redis::AsyncCommands;

const URL: &str = "redis://127.0.0.1:6379";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", rand::rng().random_range(0..u64::MAX))
}

async fn connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|err| panic!("no Redis at {URL} ({err}): start the test services with `scripts/services up`"))
}

fn event(source: &str, stage: &str, timestamp: &str, seq: usize) -> StageEvent {
    StageEvent::from_json(
        format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"{stage}","source":"{source}","records":{seq},"timestamp":"{timestamp}","status":"SUCCESS","seq":{seq}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn record(event: StageEvent, offset: i64) -> SinkRecord {
    SinkRecord { event: event.into(), topic: "events".into(), partition: 0, offset, origin: None, raw: None }
}

fn sink(settings: serde_json::Value) -> Box<dyn herald_sdk::Sink> {
    let mut settings = settings;
    settings["url"] = URL.into();
    serde_json::from_value::<RedisSinkConfig>(settings).unwrap().sink().unwrap()
}

fn seq_of(json: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(json).unwrap()["seq"].as_u64().unwrap() as usize
}

#[tokio::test]
async fn subscribe_and_psubscribe_clients_receive_every_event_in_per_key_order() {
    let prefix = unique("t");
    let client = redis::Client::open(URL).unwrap();
    let mut exact = client.get_async_pubsub().await.unwrap();
    exact.subscribe(format!("{prefix}.OrdersDB.bronze")).await.unwrap();
    let mut pattern = client.get_async_pubsub().await.unwrap();
    pattern.psubscribe(format!("{prefix}.*")).await.unwrap();

    let mut sink = sink(serde_json::json!({ "publish": { "channel": format!("{prefix}.{{source}}.{{stage}}") } }));
    let sources = ["OrdersDB", "UsersDB", "Billing"];
    let records: Vec<SinkRecord> =
        (0..300).map(|seq| record(event(sources[seq % 3], "bronze", "2026-11-26T10:00:00", seq), seq as i64)).collect();
    for chunk in records.chunks(64) {
        assert!(sink.write(chunk).await.unwrap().rejected.is_empty());
    }

    let exact_seqs: Vec<usize> = tokio::time::timeout(
        Duration::from_secs(30),
        exact.on_message().take(100).map(|m| seq_of(&m.get_payload::<String>().unwrap())).collect::<Vec<_>>(),
    )
    .await
    .expect("100 messages on the exact channel");
    assert_eq!(exact_seqs, (0..300).step_by(3).collect::<Vec<_>>());

    let by_channel: Vec<(String, usize)> = tokio::time::timeout(
        Duration::from_secs(30),
        pattern
            .on_message()
            .take(300)
            .map(|m| (m.get_channel_name().to_owned(), seq_of(&m.get_payload::<String>().unwrap())))
            .collect::<Vec<_>>(),
    )
    .await
    .expect("300 messages on the pattern");
    let mut per_channel: HashMap<String, Vec<usize>> = HashMap::new();
    for (channel, seq) in by_channel {
        per_channel.entry(channel).or_default().push(seq);
    }
    for (i, source) in sources.iter().enumerate() {
        assert_eq!(per_channel[&format!("{prefix}.{source}.bronze")], (i..300).step_by(3).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn latest_keys_hold_the_newest_event_under_shuffled_and_replayed_input() {
    let prefix = unique("k");
    let mut sink = sink(serde_json::json!({ "latest_key": { "key": format!("{prefix}:{{source}}"), "ttl": "1h" } }));
    let mut seconds: Vec<usize> = (0..200).collect();
    seconds.shuffle(&mut rand::rng());
    let sources = ["A", "B", "C", "D"];
    let events: Vec<StageEvent> = seconds
        .iter()
        .enumerate()
        .map(|(seq, &s)| event(sources[seq % 4], "bronze", &format!("2026-11-26T10:{:02}:{:02}", s / 60, s % 60), seq))
        .collect();
    let mut newest: HashMap<&str, (i64, usize)> = HashMap::new();
    for (seq, e) in events.iter().enumerate() {
        let entry = newest.entry(sources[seq % 4]).or_insert((i64::MIN, 0));
        let micros = e.timestamp.instant().timestamp_micros();
        if micros > entry.0 {
            *entry = (micros, seq);
        }
    }
    let records: Vec<SinkRecord> = events.into_iter().enumerate().map(|(seq, e)| record(e, seq as i64)).collect();
    for chunk in records.chunks(13) {
        sink.write(chunk).await.unwrap();
    }
    // A replay of everything, in reverse: nothing older may win.
    let mut replay = records.clone();
    replay.reverse();
    for chunk in replay.chunks(29) {
        sink.write(chunk).await.unwrap();
    }

    let mut redis = connection().await;
    for source in sources {
        let stored: String = redis.get(format!("{prefix}:{source}")).await.unwrap();
        assert_eq!(seq_of(&stored), newest[source].1, "source {source}");
        let ttl: i64 = redis.ttl(format!("{prefix}:{source}")).await.unwrap();
        assert!(ttl > 3500, "ttl {ttl}");
    }
}

#[tokio::test]
async fn the_stream_holds_every_event_with_its_kafka_coordinates() {
    let key = unique("s");
    let mut sink = sink(serde_json::json!({ "stream": { "key": key.clone(), "max_len": 0 } }));
    let records: Vec<SinkRecord> =
        (0..250).map(|seq| record(event("A", "bronze", "2026-11-26T10:00:00", seq), seq as i64)).collect();
    for chunk in records.chunks(100) {
        sink.write(chunk).await.unwrap();
    }
    let mut redis = connection().await;
    let entries: redis::streams::StreamRangeReply = redis.xrange_all(&key).await.unwrap();
    let seqs: Vec<usize> = entries.ids.iter().map(|id| seq_of(&id.get::<String>("event").unwrap())).collect();
    assert_eq!(seqs, (0..250).collect::<Vec<_>>());
    assert_eq!(entries.ids[7].get::<String>("offset").as_deref(), Some("7"));
    assert_eq!(entries.ids[7].get::<String>("topic").as_deref(), Some("events"));
}

#[tokio::test]
async fn a_subscriber_that_sees_the_publish_finds_the_key_already_updated() {
    let prefix = unique("both");
    let client = redis::Client::open(URL).unwrap();
    let mut subscriber = client.get_async_pubsub().await.unwrap();
    subscriber.subscribe(format!("{prefix}.chan")).await.unwrap();
    let mut sink = sink(serde_json::json!({
        "publish": { "channel": format!("{prefix}.chan") },
        "latest_key": { "key": format!("{prefix}:latest") },
    }));
    let records: Vec<SinkRecord> = (0..100)
        .map(|seq| {
            record(event("A", "bronze", &format!("2026-11-26T10:{:02}:{:02}", seq / 60, seq % 60), seq), seq as i64)
        })
        .collect();
    let writer = tokio::spawn(async move {
        for chunk in records.chunks(1) {
            sink.write(chunk).await.unwrap();
        }
    });
    let mut redis = connection().await;
    let mut messages = subscriber.on_message();
    for _ in 0..100 {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next()).await.unwrap().unwrap();
        let published = seq_of(&message.get_payload::<String>().unwrap());
        let stored: String = redis.get(format!("{prefix}:latest")).await.unwrap();
        assert!(seq_of(&stored) >= published, "key holds {} when {published} was published", seq_of(&stored));
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn an_event_missing_a_template_field_is_rejected_alone() {
    let key = unique("s");
    let mut sink = sink(serde_json::json!({ "stream": { "key": format!("{key}:{{tenant}}") } }));
    let with_tenant = |seq: usize, tenant: Option<&str>| {
        let mut e = event("A", "bronze", "2026-11-26T10:00:00", seq);
        if let Some(tenant) = tenant {
            e.extra.insert("tenant".into(), tenant.into());
        }
        record(e, seq as i64)
    };
    let outcome =
        sink.write(&[with_tenant(0, Some("acme")), with_tenant(1, None), with_tenant(2, Some("acme"))]).await.unwrap();
    assert_eq!(outcome.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1]);
    assert!(outcome.rejected[0].error.to_string().contains("no field `tenant`"));
    let mut redis = connection().await;
    let len: usize = redis.xlen(format!("{key}:acme")).await.unwrap();
    assert_eq!(len, 2);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_retriable_error() {
    let mut config: RedisSinkConfig = serde_json::from_value(
        serde_json::json!({ "url": "redis://127.0.0.1:1", "publish": {}, "connect_timeout": "1s" }),
    )
    .unwrap();
    config.response_timeout = Duration::from_secs(1);
    let mut sink = config.sink().unwrap();
    let err = sink.write(&[record(event("A", "b", "2026-11-26T10:00:00", 0), 0)]).await.unwrap_err();
    assert!(err.is_retriable(), "{err:?}");
}

#[tokio::test]
async fn latest_keys_of_different_pairs_never_collide_and_a_future_event_pins_nothing() {
    let prefix = unique("keys");
    let mut sink = sink(serde_json::json!({ "latest_key": { "key": format!("{prefix}:{{source}}:{{stage}}") } }));
    let mut redis = connection().await;
    let now = chrono::Utc::now();
    let at = |minutes: i64| (now + chrono::TimeDelta::minutes(minutes)).format("%Y-%m-%dT%H:%M:%S%.6f").to_string();

    // (a, b:c) and (a:b, c) joined with `:` would share a key; so would a stage ending in the
    // rank key's suffix with the rank key of another pair.
    let batch = vec![
        record(event("a", "b:c", &at(-3), 1), 1),
        record(event("a:b", "c", &at(-3), 2), 2),
        record(event("x", "s", &at(-3), 3), 3),
        record(event("x", "s#rank", &at(-2), 4), 4),
    ];
    let outcome = sink.write(&batch).await.unwrap();
    assert!(outcome.rejected.is_empty());
    for (key, seq) in [("a:b%3Ac", 1), ("a%3Ab:c", 2), ("x:s", 3), ("x:s%23rank", 4)] {
        let stored: String = redis.get(format!("{prefix}:{key}")).await.unwrap();
        assert_eq!(seq_of(&stored), seq, "{key}");
    }
    let rank: String = redis.get(format!("{prefix}:x:s#rank")).await.unwrap();
    assert!(rank.ends_with(":3"), "the pair's own rank, untouched: {rank}");

    // An event from year 9999 would stay newest forever: refused, and a later real event wins.
    let future = record(event("p", "s", "9999-12-31T23:59:59", 5), 5);
    let outcome = sink.write(&[future]).await.unwrap();
    assert_eq!(outcome.rejected.len(), 1);
    assert!(outcome.rejected[0].error.to_string().contains("max_clock_skew"), "{}", outcome.rejected[0].error);
    let real = record(event("p", "s", &at(-1), 6), 6);
    assert!(sink.write(&[real]).await.unwrap().rejected.is_empty());
    let stored: String = redis.get(format!("{prefix}:p:s")).await.unwrap();
    assert_eq!(seq_of(&stored), 6);
}
