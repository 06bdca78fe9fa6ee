//! `herald run` end to end: a real broker, the real binary, the stdout sink.

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
    let produced = produce_events(&topic, &["A", "B", "C", "D"], 3000).await;
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
