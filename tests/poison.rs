//! No poison pills, end to end: one hostile event from an ordinary producer never stops or jams
//! a route. What a sink can never deliver goes to the dead-letter topic, and the rest flows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald_kafka::headers::connect as headers;
use rdkafka::Message;

/// A file of the test's own, and the exec sink config appending `$HERALD_SOURCE` to it, or
/// asking to be retried (exit 75) for the source `poison`, every time.
fn exec_sink(out: &std::path::Path) -> String {
    let script = r#"[ "$HERALD_SOURCE" = poison ] && exit 75; printf '%s\n' "$HERALD_SOURCE" >> "$OUT""#;
    format!(
        "[route.sink]\ntype = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}]\nenv = {{ OUT = {:?} }}\n",
        out.display().to_string()
    )
}

/// Waits until `out` holds `lines`.
fn wait_for_file(out: &std::path::Path, lines: &[&str], herald: &Herald) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = std::fs::read_to_string(out).unwrap_or_default();
        if seen.lines().collect::<Vec<_>>() == lines {
            return;
        }
        assert!(Instant::now() < deadline, "saw {seen:?}, wanted {lines:?}; log:\n{}", herald.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn event_from(source: &str, seq: usize) -> String {
    serde_json::json!({
        "event": "STAGE_COMPLETE", "stage": "s", "source": source, "records": seq,
        "timestamp": "2026-11-26T10:15:00", "status": "SUCCESS",
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_an_exec_value_is_dead_lettered_and_herald_keeps_going() {
    let (topic, dlq, route) = (unique("events"), unique("dlq"), unique("route"));
    create_topic(&topic, 1).await;
    let out = std::env::temp_dir().join(unique("exec-out"));
    let config =
        TempConfig::new(&route_config(&route, &topic, &format!("dead_letter_topic = \"{dlq}\""), &exec_sink(&out)));
    let mut herald = Herald::run(&config);
    // Valid JSON: the source holds U+0000, which no process environment can.
    let nul = event_from("Orders\u{0}DB", 1);
    produce(
        &topic,
        &[
            (Some("a"), event_from("first", 0).as_bytes()),
            (Some("n"), nul.as_bytes()),
            (Some("b"), event_from("second", 2).as_bytes()),
        ],
    )
    .await;
    wait_for_file(&out, &["first", "second"], &herald);
    let letters = consume_all(&dlq, 1);
    assert_eq!(letters[0].payload_view::<str>().unwrap().unwrap(), nul, "the original message");
    assert_eq!(header(&letters[0], headers::OFFSET).as_deref(), Some("1"));
    assert!(header(&letters[0], headers::EXCEPTION_MESSAGE).unwrap().contains("NUL"));
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "a clean stop, not a crash: {}", herald.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_a_sink_retries_forever_is_isolated_as_poison_and_the_rest_flows() {
    let (topic, dlq, route) = (unique("events"), unique("dlq"), unique("route"));
    create_topic(&topic, 1).await;
    let out = std::env::temp_dir().join(unique("exec-out"));
    let extra = format!(
        "dead_letter_topic = \"{dlq}\"\nretry = {{ initial_backoff = \"20ms\", max_backoff = \"200ms\", poison_after = 3 }}"
    );
    let config = TempConfig::new(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        route_config(&route, &topic, &extra, &exec_sink(&out))
    ));
    // One batch, the poison in the middle: the program asks to be retried for it, every time.
    produce(
        &topic,
        &[
            (Some("a"), event_from("a", 0).as_bytes()),
            (Some("b"), event_from("b", 1).as_bytes()),
            (Some("p"), event_from("poison", 2).as_bytes()),
            (Some("c"), event_from("c", 3).as_bytes()),
            (Some("d"), event_from("d", 4).as_bytes()),
        ],
    )
    .await;
    let mut herald = Herald::run(&config);
    wait_for_file(&out, &["a", "b", "c", "d"], &herald);
    let letters = consume_all(&dlq, 1);
    assert_eq!(header(&letters[0], headers::OFFSET).as_deref(), Some("2"));
    assert_eq!(header(&letters[0], headers::EXCEPTION_CLASS).as_deref(), Some("PoisonRecord"));
    let reason = header(&letters[0], headers::EXCEPTION_MESSAGE).unwrap();
    assert!(reason.contains("failed alone 3 times"), "{reason}");

    let address = admin_address(&mut herald);
    let (_, routes) = http(&address, "GET", "/routes");
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(routes[0]["isolated"], 1, "{routes}");
    assert!(routes[0]["last_isolated"].as_str().unwrap().starts_with(&format!("{topic}[0]@2: ")), "{routes}");
    let (_, metrics) = http(&address, "GET", "/metrics");
    assert!(metrics.contains(&format!("herald_route_isolated_total{{route=\"{route}\"}} 1")), "{metrics}");
    herald.signal("TERM");
    assert!(herald.wait_exit().success());
}
