//! A corpus of malformed messages: every one reaches the dead-letter topic with the right
//! headers, the good messages between them keep flowing, and herald's memory stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use herald_kafka::headers::connect as headers;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_message_reaches_the_dead_letter_topic_and_good_ones_flow() {
    require_kafka();
    let topic = unique("events");
    let dlq = unique("dlq");
    // The source topic takes 12 MB messages, as a misbehaving producer's topic might.
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", BROKERS).create().unwrap();
    let new_topic = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "12582912");
    admin.create_topics([&new_topic], &AdminOptions::new()).await.unwrap();

    let ten_mb = format!(
        r#"{{"event":"STAGE_COMPLETE","stage":"s","source":"A","timestamp":"2026-11-26T10:00:00","status":"SUCCESS","blob":"{}"}}"#,
        "x".repeat(10_000_000)
    );
    let deep = format!(
        r#"{{"event":"E","stage":"s","source":"A","timestamp":"2026-11-26T10:00:00","status":"S","x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("not utf-8", vec![0xc3, 0x28, 0xff, 0xfe]),
        ("not json", b"STAGE_COMPLETE bronze OrdersDB".to_vec()),
        ("10 MB", ten_mb.into_bytes()),
        ("nested 10,000 deep", deep.into_bytes()),
        ("wrong types", br#"{"event":1,"stage":["s"],"source":{"a":1},"timestamp":5,"status":null}"#.to_vec()),
        ("missing fields", br#"{"event":"STAGE_COMPLETE"}"#.to_vec()),
        ("bad timestamp", br#"{"event":"E","stage":"s","source":"A","timestamp":"yesterday","status":"S"}"#.to_vec()),
        ("a JSON array", b"[1,2,3]".to_vec()),
        ("empty", Vec::new()),
    ];
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("message.max.bytes", "12582912")
        .set("acks", "all")
        .create()
        .unwrap();
    let huge_header = "h".repeat(200_000);
    for (i, (_, value)) in corpus.iter().enumerate() {
        let good = event_json("Good", "s", "SUCCESS", i);
        producer
            .send(FutureRecord::to(&topic).key("Good").payload(good.as_bytes()), Duration::from_secs(30))
            .await
            .unwrap();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "trace-id", value: Some(&format!("t-{i}")) })
            .insert(Header { key: "huge", value: Some(huge_header.as_str()) });
        producer
            .send(
                FutureRecord::to(&topic).key("Bad").payload(value.as_slice()).headers(headers),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let last = event_json("Good", "s", "SUCCESS", corpus.len());
    producer
        .send(FutureRecord::to(&topic).key("Good").payload(last.as_bytes()), Duration::from_secs(30))
        .await
        .unwrap();

    let config =
        TempConfig::new(&stdout_route_config(&unique("route"), &topic, &format!("dead_letter_topic = \"{dlq}\"")));
    let mut herald = Herald::run(&config);
    let lines = herald.wait_for_lines(corpus.len() + 1);
    assert_eq!(seqs(&lines).into_iter().map(|(_, s)| s).collect::<Vec<_>>(), (0..=corpus.len()).collect::<Vec<_>>());

    let letters = consume_all(&dlq, corpus.len());
    assert_eq!(letters.len(), corpus.len());
    for (i, (letter, (what, value))) in letters.iter().zip(&corpus).enumerate() {
        assert_eq!(letter.payload().unwrap_or_default(), value.as_slice(), "{what}: value unchanged");
        assert_eq!(letter.key(), Some(&b"Bad"[..]), "{what}: key unchanged");
        assert_eq!(header(letter, headers::OFFSET), Some((2 * i + 1).to_string()), "{what}");
        assert_eq!(header(letter, headers::TOPIC).as_deref(), Some(topic.as_str()));
        assert_eq!(header(letter, headers::STAGE).as_deref(), Some("VALUE_CONVERTER"), "{what}");
        assert!(header(letter, headers::EXCEPTION_MESSAGE).is_some_and(|m| !m.is_empty()), "{what}");
        if *what == "10 MB" {
            assert!(header(letter, headers::EXCEPTION_MESSAGE).unwrap().contains("max_message_bytes"));
        }
        assert_eq!(header(letter, "trace-id"), Some(format!("t-{i}")), "{what}: original headers kept");
        assert_eq!(header(letter, "huge").map(|h| h.len()), Some(200_000), "{what}");
    }
    let rss = rss_kib(herald_pid(&herald));
    eprintln!("herald RSS after the corpus: {rss} KiB");
    assert!(rss < 300 * 1024, "herald holds {rss} KiB after the corpus");
}

fn herald_pid(herald: &Herald) -> u32 {
    herald.pid()
}
