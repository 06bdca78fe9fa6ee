//! `herald run` end to end: a real broker, the real binary, the stdout sink.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeSet, HashSet};

use common::*;
use herald_kafka::headers::connect as headers;
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_route_delivers_every_event_once_in_per_key_order() {
    let topic = unique("events");
    create_topic(&topic, 3).await;
    let produced = produce_events(&topic, &["OrdersDB", "UsersDB", "Billing", "Ledger", "Crm"], 600).await;
    let config = TempConfig::new(&stdout_route_config(&unique("route"), &topic, ""));

    let mut herald = Herald::run(&config);
    let lines = herald.wait_for_lines(produced.len());
    let seen = seqs(&lines);

    assert_eq!(seen.len(), produced.len(), "every event printed exactly once");
    let seen_set: BTreeSet<_> = seen.iter().cloned().collect();
    let produced_set: BTreeSet<_> = produced.iter().cloned().collect();
    assert_eq!(seen_set, produced_set);
    assert_per_key_order(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_events_keep_unknown_fields_and_the_raw_timestamp() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let input = r#"{"event":"STAGE_COMPLETE","stage":"bronze_ingest","source":"OrdersDB","records":14823,"timestamp":"2026-11-26T10:15:00.123456","status":"SUCCESS","run_id":"r-42","tags":["a","b"]}"#;
    produce(&topic, &[(Some("OrdersDB"), input.as_bytes())]).await;
    let config = TempConfig::new(&stdout_route_config(&unique("route"), &topic, ""));

    let mut herald = Herald::run(&config);
    let lines = herald.wait_for_lines(1);
    assert_eq!(lines, vec![input.to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_delivers_only_matching_events() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let messages: Vec<String> = vec![
        event_json("OrdersDB", "bronze", "RUNNING", 0),
        event_json("OrdersDB", "bronze", "SUCCESS", 1),
        event_json("UsersDB", "bronze", "SUCCESS", 2),
        event_json("OrdersDB", "silver", "FAILED", 3),
        event_json("OrdersDB", "gold", "SUCCESS", 4),
    ];
    let batch: Vec<(Option<&str>, &[u8])> = messages.iter().map(|m| (Some("k"), m.as_bytes())).collect();
    produce(&topic, &batch).await;
    let filter = r#"filter = { source = "OrdersDB", status = ["SUCCESS", "FAILED"] }"#;
    let config = TempConfig::new(&stdout_route_config(&unique("route"), &topic, filter));

    let mut herald = Herald::run(&config);
    // A sentinel after the rest proves the skipped events were really passed over, not late.
    produce(&topic, &[(Some("k"), event_json("OrdersDB", "sentinel", "SUCCESS", 5).as_bytes())]).await;
    let lines = herald.wait_until(|lines| lines.iter().any(|l| l.contains("sentinel")), "the sentinel");
    let printed: Vec<usize> = seqs(&lines).into_iter().map(|(_, seq)| seq).collect();
    assert_eq!(printed, vec![1, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dead_letter_topic_with_connect_headers_while_good_ones_flow() {
    let topic = unique("events");
    let dlq = unique("dlq");
    let route = unique("route");
    create_topic(&topic, 1).await;
    let good_a = event_json("OrdersDB", "bronze", "SUCCESS", 0);
    let good_b = event_json("OrdersDB", "bronze", "SUCCESS", 4);
    let not_json: &[u8] = b"this is not json";
    let not_utf8: &[u8] = &[0xff, 0xfe, 0x00, 0x7b];
    let no_source = r#"{"event":"STAGE_COMPLETE","stage":"s","timestamp":"2026-11-26T10:15:00","status":"SUCCESS"}"#;
    produce(
        &topic,
        &[
            (Some("OrdersDB"), good_a.as_bytes()),
            (Some("bad-1"), not_json),
            (Some("bad-2"), not_utf8),
            (None, no_source.as_bytes()),
            (Some("OrdersDB"), good_b.as_bytes()),
        ],
    )
    .await;
    let config = TempConfig::new(&stdout_route_config(&route, &topic, &format!("dead_letter_topic = \"{dlq}\"")));

    let mut herald = Herald::run(&config);
    let lines = herald.wait_for_lines(2);
    assert_eq!(seqs(&lines), vec![("OrdersDB".to_owned(), 0), ("OrdersDB".to_owned(), 4)]);

    let letters = consume_all(&dlq, 3);
    let values: Vec<&[u8]> = letters.iter().map(|m| m.payload().unwrap()).collect();
    assert_eq!(values, vec![not_json, not_utf8, no_source.as_bytes()], "original values, in order");
    assert_eq!(letters[0].key(), Some(&b"bad-1"[..]), "original key kept");
    for (letter, offset) in letters.iter().zip([1, 2, 3]) {
        assert_eq!(header(letter, headers::TOPIC).as_deref(), Some(topic.as_str()));
        assert_eq!(header(letter, headers::PARTITION).as_deref(), Some("0"));
        assert_eq!(header(letter, headers::OFFSET), Some(offset.to_string()));
        assert_eq!(header(letter, headers::CONNECTOR).as_deref(), Some(route.as_str()));
        assert_eq!(header(letter, headers::STAGE).as_deref(), Some("VALUE_CONVERTER"));
        assert!(header(letter, headers::EXCEPTION_MESSAGE).is_some_and(|m| !m.is_empty()));
    }
    assert!(header(&letters[1], headers::EXCEPTION_CLASS).unwrap().ends_with("NotUtf8"));
    let missing = header(&letters[2], headers::EXCEPTION_STACKTRACE).unwrap();
    assert!(missing.contains("missing field `source`"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_a_malformed_message_stops_the_route_with_a_clear_error() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    produce(&topic, &[(Some("k"), b"{not json".as_slice())]).await;
    let config = TempConfig::new(&stdout_route_config(&unique("route"), &topic, ""));

    let mut herald = Herald::run(&config);
    let status = herald.wait_exit();
    assert!(!status.success(), "herald must fail rather than skip in silence");
    let log = herald.log();
    assert!(log.contains(&format!("message {topic}[0]@0 cannot be delivered")), "{log}");
    assert!(log.contains("dead_letter_topic"), "{log}");
    assert!(herald.lines().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_offsets_so_a_restart_redelivers_nothing_already_printed() {
    let topic = unique("events");
    create_topic(&topic, 2).await;
    let config = TempConfig::new(&stdout_route_config(&unique("route"), &topic, ""));
    let first = produce_events(&topic, &["A", "B", "C"], 100).await;

    let mut herald = Herald::run(&config);
    herald.wait_for_lines(first.len());
    herald.signal("TERM");
    let status = herald.wait_exit();
    assert!(status.success(), "SIGTERM exits 0; log:\n{}", herald.log());
    assert!(herald.log().contains("stopped cleanly"));

    let second: Vec<(String, usize)> = {
        let msgs: Vec<String> = (100..150).map(|seq| event_json("A", "bronze", "SUCCESS", seq)).collect();
        let batch: Vec<(Option<&str>, &[u8])> = msgs.iter().map(|m| (Some("A"), m.as_bytes())).collect();
        produce(&topic, &batch).await;
        (100..150).map(|seq| ("A".to_owned(), seq)).collect()
    };
    let mut restarted = Herald::run(&config);
    let lines = restarted.wait_for_lines(second.len());
    // A sentinel produced last is printed last: anything re-delivered would show before it.
    produce(&topic, &[(Some("A"), event_json("A", "bronze", "SUCCESS", 999).as_bytes())]).await;
    let lines =
        restarted.wait_until(|l| l.len() > lines.len() && seqs(l).iter().any(|(_, seq)| *seq == 999), "the sentinel");
    let seen = seqs(&lines);
    let mut expected = second.clone();
    expected.push(("A".to_owned(), 999));
    assert_eq!(seen, expected, "the restart printed only new events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_nothing() {
    let topic = unique("events");
    create_topic(&topic, 3).await;
    // Enough that the kill, sent once 500 are printed, lands before the end: CI once saw a busy
    // machine let 12,000 all be printed between the 500th line and the SIGKILL.
    let produced = produce_events(&topic, &["A", "B", "C", "D"], 12_000).await;
    // Small batches and a slow commit cadence make it likely the kill lands between a print and its commit.
    let config = TempConfig::new(&stdout_route_config(
        &unique("route"),
        &topic,
        "batch = { max_events = 20, max_wait = \"10ms\" }",
    ));

    let mut first = Herald::run(&config);
    first.wait_for_lines(500);
    first.signal("KILL");
    first.wait_exit();
    let before = seqs(&first.lines());
    assert!(before.len() < produced.len(), "killed mid-stream");
    assert_per_key_order(&before);

    let mut second = Herald::run(&config);
    let missing_before: HashSet<_> = produced.iter().filter(|p| !before.contains(p)).cloned().collect();
    let lines = second.wait_until(
        |lines| {
            let seen: HashSet<_> = seqs(lines).into_iter().collect();
            missing_before.iter().all(|p| seen.contains(p))
        },
        "every event not printed before the kill",
    );
    let after = seqs(&lines);
    assert_per_key_order(&after);
    let all: HashSet<_> = before.iter().chain(after.iter()).cloned().collect();
    assert_eq!(all.len(), produced.len(), "every produced event printed at least once");
    // At-least-once: only what was printed but not yet committed may come again.
    assert!(after.len() <= produced.len(), "the restart re-read at most the uncommitted tail");
}

/// A filter whose value no event has (`SUCESS`) lets nothing through; after 1,000 events in a
/// row the route says so, once, instead of committing past everything in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_lets_nothing_through_for_a_thousand_events_is_reported() {
    let topic = unique("events");
    let route = unique("route");
    create_topic(&topic, 1).await;
    let config = TempConfig::new(&stdout_route_config(&route, &topic, "filter = { status = \"SUCESS\" }"));
    produce_events(&topic, &["A", "B"], 999).await;
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Partitions assigned.");
    // 999 skipped: not yet.
    let deadline = std::time::Instant::now() + PATIENCE;
    while !herald.log().contains("skipped=999") {
        assert!(std::time::Instant::now() < deadline, "never skipped 999:\n{}", herald.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(!herald.log().contains("let no event through"), "{}", herald.log());
    produce_events(&topic, &["A"], 1).await;
    herald.wait_for_log("let no event through for 1000 events in a row");
    assert_eq!(herald.log().matches("let no event through").count(), 1);
    assert!(herald.log().contains("filter_fields=[\"status\"]"), "{}", herald.log());
    assert!(herald.lines().is_empty());
}

/// An idle route logs its progress line every `idle_progress_interval`, not every
/// `progress_interval`; once events move, a line says so at the next tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_route_logs_progress_rarely_and_a_busy_one_at_once() {
    let topic = unique("events");
    let route = unique("route");
    create_topic(&topic, 1).await;
    let config = TempConfig::new(
        &stdout_route_config(&route, &topic, "")
            .replace("progress_interval = \"1s\"", "progress_interval = \"1s\"\nidle_progress_interval = \"1h\""),
    );
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Partitions assigned.");
    // The first line says where the route starts; then ~6 ticks of nothing.
    herald.wait_for_log("Progress.");
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let idle_lines = herald.log().matches("Progress.").count();
    assert!(idle_lines <= 2, "{idle_lines} progress lines while idle:\n{}", herald.log());
    produce_events(&topic, &["A"], 5).await;
    herald.wait_for_lines(5);
    herald.wait_for_log("consumed=5");
    assert!(herald.log().contains(&format!("route={route}")));
}

/// `HERALD_LOG_FORMAT=json`: every log line is one JSON object with the time, level, target,
/// message and the event's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_route() {
    let topic = unique("events");
    let route = unique("route");
    create_topic(&topic, 1).await;
    let config = TempConfig::new(&stdout_route_config(&route, &topic, ""));
    let mut herald = Herald::run_with_env(&config, &[("HERALD_LOG_FORMAT", "json")]);
    herald.wait_for_log("Partitions assigned.");
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    let lines: Vec<serde_json::Value> = herald
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}")))
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line[key].is_string(), "no {key}: {line}");
        }
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let started = lines.iter().find(|line| line["fields"]["message"] == "Route started.").unwrap();
    assert_eq!(started["fields"]["route"], route.as_str());
    assert_eq!(started["level"], "INFO");
}

/// A port on loopback where nothing listens (bound, then let go).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kafka down at start: one clear line naming the brokers, retries until --startup-timeout,
/// then exit 1 naming Kafka (not a dead-letter topic), with a handful of lines, not hundreds.
#[test]
fn kafka_down_at_start_is_one_clear_line_then_an_error_naming_kafka() {
    let port = closed_port();
    let config = TempConfig::new(&format!(
        "[kafka]\nbootstrap.servers = \"127.0.0.1:{port}\"\n[[route]]\nname = \"r\"\ntopics = [\"t\"]\n\
         dead_letter_topic = \"t.dlq\"\nsink = {{ type = \"stdout\" }}\n"
    ));
    let started = std::time::Instant::now();
    let out = herald().args(["run", "--startup-timeout", "4s", "--config"]).arg(&config.path).output().unwrap();
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    assert!(log.contains(&format!("Kafka does not answer at 127.0.0.1:{port}")), "{log}");
    assert!(log.contains(&format!("Kafka at 127.0.0.1:{port} did not answer within --startup-timeout 4s")), "{log}");
    assert!(!log.contains("dead-letter"), "{log}");
    assert!(log.lines().count() <= 10, "{} lines:\n{log}", log.lines().count());
}

/// Kafka that comes up while herald waits at start: herald goes on by itself and delivers.
/// (The "late Kafka" is a TCP relay to the real broker, opened on a port 3 s after herald
/// started; the broker then tells the client its own address.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_that_comes_up_during_startup_is_waited_for() {
    let topic = unique("events");
    create_topic(&topic, 1).await;
    produce_events(&topic, &["A"], 3).await;
    let port = closed_port();
    let config =
        TempConfig::new(&stdout_route_config(&unique("route"), &topic, "").replace(
            &format!("bootstrap.servers = \"{BROKERS}\""),
            &format!("bootstrap.servers = \"127.0.0.1:{port}\""),
        ));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Kafka does not answer");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let relay = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = relay.accept().await {
            tokio::spawn(async move {
                if let Ok(mut broker) = tokio::net::TcpStream::connect(BROKERS).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                }
            });
        }
    });
    let lines = herald.wait_for_lines(3);
    assert_eq!(seqs(&lines).into_iter().map(|(_, seq)| seq).collect::<Vec<_>>(), vec![0, 1, 2]);
}
