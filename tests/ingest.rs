//! The ingest listener against the real OpenLineage Python client (openlineage-python, installed
//! by `scripts/services up`) and the real broker: what orchestrators send becomes stage events
//! that `herald wait` sees, and what is not a run, not authorized or not readable publishes
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

const TOKEN: &str = "ingest-test-token-0123456789";

fn lineage_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/lineage_client.py")
}

/// A herald whose only job is the ingest listener, publishing to `topic`; and its address.
fn ingest(topic: &str, extra: &str) -> (Herald, TempConfig, String) {
    let config = TempConfig::new(&format!(
        "{}\n[ingest]\nlisten = \"127.0.0.1:0\"\ntopic = \"{topic}\"\ntoken = \"{TOKEN}\"\n{extra}\n",
        kafka_section()
    ));
    let mut herald = Herald::run(&config);
    let address = logged_address(&mut herald, "Ingest listener listening.");
    (herald, config, address)
}

/// Emits `events` (`JOB:TYPE[:ROWS][:ERROR]`) over the OpenLineage HTTP transport, gzip, with
/// `token` as its api key.
fn emit_http(address: &str, token: &str, namespace: &str, events: &[&str]) -> Output {
    Command::new(python())
        .arg(lineage_script())
        .args(["http", &format!("http://{address}"), token, namespace])
        .args(events)
        .output()
        .unwrap()
}

fn wait(topic: &str, source: &str, stage: &str, timeout: &str) -> Output {
    herald()
        .args(["wait", "--topic", topic, "--source", source, "--stage", stage, "--since", "10m", "--timeout", timeout])
        .output()
        .unwrap()
}

fn value(message: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(message.payload().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openlineage_runs_posted_by_the_python_client_become_stage_events_that_wait_sees() {
    let topic = unique("lineage");
    create_topic(&topic, 3).await;
    let namespace = unique("OrdersDB");
    let (_herald, _config, address) = ingest(&topic, "");

    // A START alone is a run in progress: `wait` does not call the stage done.
    let sent = emit_http(&address, TOKEN, &namespace, &["bronze_ingest:START"]);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let running = wait(&topic, &namespace, "bronze_ingest", "3s");
    assert_eq!(running.status.code(), Some(124), "a START is no outcome: {}", String::from_utf8_lossy(&running.stdout));

    // The run completes (rowCounts of two outputs, one without statistics); a DatasetEvent says
    // nothing of a run; a second job fails.
    let sent = emit_http(
        &address,
        TOKEN,
        &namespace,
        &["bronze_ingest:COMPLETE:14000,823", "DATASET", "silver_build:START", "silver_build:FAIL::division by zero"],
    );
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let done = wait(&topic, &namespace, "bronze_ingest", "60s");
    assert_eq!(done.status.code(), Some(0), "{}", String::from_utf8_lossy(&done.stderr));
    let outcome: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!((outcome["status"].as_str(), outcome["records"].as_i64()), (Some("SUCCESS"), Some(14823)), "{outcome}");
    assert_eq!(outcome["outputs"].as_array().map(Vec::len), Some(2), "{outcome}");
    let failed = wait(&topic, &namespace, "silver_build", "60s");
    assert_eq!(failed.status.code(), Some(3), "a FAILED run ends the wait with 3");
    let failure: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(failure["status"], "FAILED");
    assert_eq!(failure["error_message"], "division by zero");

    // Exactly the four run transitions, keyed by source (the job's namespace), in order.
    let messages = consume_exactly(&topic, 4);
    let seen: Vec<(String, String, String)> = messages
        .iter()
        .map(|message| {
            assert_eq!(message.key(), Some(namespace.as_bytes()));
            let event = value(message);
            (
                event["stage"].as_str().unwrap().into(),
                event["event"].as_str().unwrap().into(),
                event["event_type"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("bronze_ingest", "STAGE_STARTED", "START"),
        ("bronze_ingest", "STAGE_COMPLETE", "COMPLETE"),
        ("silver_build", "STAGE_STARTED", "START"),
        ("silver_build", "STAGE_COMPLETE", "FAIL"),
    ];
    assert_eq!(seen, expected.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned())));
    // One run's events share its run id.
    assert_eq!(value(&messages[0])["run_id"], value(&messages[1])["run_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_wrong_tokens_publish_nothing_and_say_why() {
    let topic = unique("ingest");
    create_topic(&topic, 1).await;
    let (mut herald, _config, address) =
        ingest(&topic, "max_body_bytes = 4096\nmax_events_per_request = 3\n[admin]\nlisten = \"127.0.0.1:0\"");
    let admin = admin_address(&mut herald);
    let authorized = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    let good = |source: &str, seq: usize| event_json(source, "bronze", "SUCCESS", seq);

    // The token: missing or wrong is 401, whatever the body.
    let (status, _) = request_with_body(&address, "POST", "/events", "", &good("A", 0));
    assert_eq!(status, 401);
    let (status, _) = request_with_body(
        &address,
        "POST",
        "/events",
        "Authorization: Bearer wrong-token-0123456789\r\n",
        &good("A", 0),
    );
    assert_eq!(status, 401);
    let sent = emit_http(&address, "wrong-token-0123456789", "ns", &["job:COMPLETE"]);
    let told = String::from_utf8_lossy(&sent.stderr);
    assert!(!sent.status.success() && told.contains("401"), "the client is told: {told}");

    // Bodies that are not what the endpoint takes: 400 with where, and nothing published.
    let ndjson_with_a_bad_line = format!("{}\n{{\"event\":\"STAGE_COMPLETE\"}}\n{}", good("A", 1), good("B", 2));
    let wrong_run_id = r#"{"eventType":"COMPLETE","eventTime":"2026-12-07T10:00:00Z","run":{"runId":7},"job":{"namespace":"n","name":"j"}}"#;
    for (path, body, status, says) in [
        ("/events", "not json".to_owned(), 400, "not a stage event"),
        ("/events", ndjson_with_a_bad_line, 400, "line 2"),
        (
            "/events",
            format!("{}\n{}\n{}\n{}", good("A", 3), good("A", 4), good("A", 5), good("A", 6)),
            413,
            "max_events_per_request",
        ),
        ("/events", format!("{{\"pad\":\"{}\"}}", "x".repeat(5000)), 413, ""),
        ("/api/v1/lineage", wrong_run_id.to_owned(), 400, "run.runId"),
        ("/api/v1/lineage", "{\"eventType\":\"COMPLETE\"".to_owned(), 400, "not an OpenLineage event"),
    ] {
        let (answered, reason) = request_with_body(&address, "POST", path, &authorized, &body);
        assert_eq!(answered, status, "{path} {body:.60}: {reason}");
        assert!(reason.contains(says), "{path}: {reason}");
    }
    let (status, reason) =
        request_with_body(&address, "POST", "/events", &format!("{authorized}Content-Encoding: br\r\n"), &good("A", 7));
    assert_eq!(status, 415, "{reason}");

    // Then a good NDJSON body: exactly its three events reach the topic, in order.
    let batch = format!("{}\n{}\n{}\n", good("A", 10), good("B", 11), good("A", 12));
    let (status, answer) = request_with_body(&address, "POST", "/events", &authorized, &batch);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"published\":3"), "{answer}");
    let messages = consume_exactly(&topic, 3);
    let seen: Vec<(String, u64)> = messages
        .iter()
        .map(|message| {
            (String::from_utf8_lossy(message.key().unwrap()).into_owned(), value(message)["seq"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(seen, [("A".to_owned(), 10), ("B".to_owned(), 11), ("A".to_owned(), 12)]);

    // The admin API counts answers by endpoint and status, and the events published; a path of
    // the client's choosing is `other`, never a label of its own.
    let _ = request_with_body(&address, "POST", "/made-up/path", &authorized, "{}");
    let (_, metrics) = http(&admin, "GET", "/metrics");
    for line in [
        r#"herald_ingest_events_total{endpoint="/events"} 3"#,
        r#"herald_ingest_requests_total{endpoint="/events",status="200"} 1"#,
        r#"herald_ingest_requests_total{endpoint="/events",status="400"} 2"#,
        r#"herald_ingest_requests_total{endpoint="/events",status="401"} 2"#,
        r#"herald_ingest_requests_total{endpoint="/events",status="413"} 2"#,
        r#"herald_ingest_requests_total{endpoint="/events",status="415"} 1"#,
        r#"herald_ingest_requests_total{endpoint="/api/v1/lineage",status="400"} 2"#,
        r#"herald_ingest_requests_total{endpoint="other",status="404"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(!metrics.contains("made-up"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_reads_what_the_openlineage_kafka_transport_writes_as_stage_events() {
    let (topic, dlq) = (unique("lineage"), unique("lineage-dlq"));
    create_topic(&topic, 1).await;
    let namespace = unique("Billing");
    let sent = Command::new(python())
        .arg(lineage_script())
        .args(["kafka", BROKERS, &topic, &namespace])
        .args(["bronze:START", "bronze:COMPLETE:5,7", "DATASET", "silver:FAIL::boom"])
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    // A message that is no OpenLineage event at all, among them.
    produce(&topic, &[(Some("x"), br#"{"eventType":"COMPLETE","run":{"runId":1}}"#)]).await;
    let route = stdout_route_config(
        &unique("route"),
        &topic,
        &format!("input = \"openlineage\"\ndead_letter_topic = \"{dlq}\""),
    );
    let config = TempConfig::new(&route);
    let mut herald = Herald::run(&config);

    // The three run transitions, mapped as the ingest listener maps them; the DatasetEvent is
    // skipped and the unreadable message dead-lettered.
    let lines = herald.wait_for_lines(3);
    let events: Vec<serde_json::Value> = lines.iter().map(|line| serde_json::from_str(line).unwrap()).collect();
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|event| {
            (event["stage"].as_str().unwrap(), event["event"].as_str().unwrap(), event["status"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("bronze", "STAGE_STARTED", "RUNNING"),
            ("bronze", "STAGE_COMPLETE", "SUCCESS"),
            ("silver", "STAGE_COMPLETE", "FAILED")
        ]
    );
    assert!(events.iter().all(|event| event["source"] == namespace.as_str()));
    assert_eq!(events[1]["records"], 12);
    assert_eq!(events[2]["error_message"], "boom");
    let letters = consume_all(&dlq, 1);
    let why = header(&letters[0], "__connect.errors.exception.message").unwrap_or_default();
    let chain = header(&letters[0], "__connect.errors.exception.stacktrace").unwrap_or_default();
    assert!(why.contains("OpenLineage") && chain.contains("run.runId"), "{why} / {chain}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(herald.lines().len(), 3, "nothing else was delivered: {:?}", herald.lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_a_request_gets_429_and_publishes_nothing_of_it() {
    let topic = unique("ingest-rate");
    create_topic(&topic, 1).await;
    let (_herald, _config, address) = ingest(&topic, "max_events_per_second = 1");
    let authorized = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    let post = |body: &str| request_with_body(&address, "POST", "/events", &authorized, body);

    // More events in one request than a second allows can never pass.
    let two = format!("{}\n{}", event_json("A", "bronze", "SUCCESS", 0), event_json("A", "bronze", "SUCCESS", 1));
    assert_eq!(post(&two).0, 413);
    // One a second: back to back, a request soon finds the budget spent.
    let (mut published, mut refused) = (Vec::new(), Vec::new());
    for seq in 10..20 {
        let (status, answer) = post(&event_json("A", "bronze", "SUCCESS", seq));
        match status {
            200 => published.push(seq as u64),
            429 => {
                assert!(answer.contains("max_events_per_second"), "{answer}");
                refused.push(seq);
            }
            other => panic!("{other}: {answer}"),
        }
        if !refused.is_empty() && !published.is_empty() {
            break;
        }
    }
    assert!(!published.is_empty() && !refused.is_empty(), "published {published:?}, refused {refused:?}");
    let seen: Vec<u64> =
        consume_exactly(&topic, published.len()).iter().map(|m| value(m)["seq"].as_u64().unwrap()).collect();
    assert_eq!(seen, published, "exactly the accepted events");
}
