//! After an incident, end to end against the services: `herald redrive` sends a route's dead
//! letters back through it once their cause is fixed, and `herald tap` shows each message a
//! running route handles with its outcome.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::source::*;
use common::*;

/// A Postgres route (append mode) on `topic` with dead-letter topic `dlq`.
fn postgres_route(route: &str, topic: &str, dlq: &str, schema: &str, extra: &str) -> TempConfig {
    TempConfig::new(&route_config(
        route,
        topic,
        &format!("dead_letter_topic = \"{dlq}\"\n{extra}"),
        &format!("[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\nmode = \"append\"\n"),
    ))
}

/// `herald redrive --json` with `args`: its exit code and report.
fn redrive(config: &TempConfig, route: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let out = herald()
        .args(["redrive", "--json", "--route", route, "--config"])
        .arg(&config.path)
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (out.status.code().unwrap(), report)
}

/// A count of the report's classes.
fn count(report: &serde_json::Value, what: &str) -> u64 {
    report["classes"].as_object().unwrap().values().map(|c| c[what].as_u64().unwrap()).sum()
}

/// The `records` of every row, sorted.
async fn rows(pool: &sqlx::PgPool, schema: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT records FROM {schema}.pipeline_status ORDER BY records"))
        .fetch_all(pool)
        .await
        .unwrap()
}

/// One past the last offset of partition 0 of `topic`.
fn log_end(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", BROKERS).create().unwrap();
    consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap().1
}

async fn produce_numbered(topic: &str, range: std::ops::Range<usize>) {
    let events: Vec<String> = range.map(|seq| event_json(&format!("S{seq}"), "bronze", "SUCCESS", seq)).collect();
    let messages: Vec<(Option<&str>, &[u8])> = events.iter().map(|e| (Some("k"), e.as_bytes())).collect();
    produce(topic, &messages).await;
}

/// The incident: a Postgres route whose table has `check` (named `incident`), run over events
/// numbered `numbered` until `dead` of them are dead letters, then stopped.
struct Incident {
    pool: sqlx::PgPool,
    schema: String,
    topic: String,
    dlq: String,
    route: String,
    config: TempConfig,
}

impl Incident {
    async fn new(check: &str, numbered: std::ops::Range<usize>, dead: usize) -> Self {
        let pool = pool().await;
        let schema = unique("redrive").replace('-', "_");
        let (topic, dlq, route) = (unique("events"), unique("dlq"), unique("to-db"));
        create_topic(&topic, 1).await;
        let config = postgres_route(&route, &topic, &dlq, &schema, "");
        let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        sqlx::query(&format!("ALTER TABLE {schema}.pipeline_status ADD CONSTRAINT incident CHECK ({check})"))
            .execute(&pool)
            .await
            .unwrap();
        produce_numbered(&topic, numbered.clone()).await;
        let mut herald = Herald::run(&config);
        wait_for_rows(&pool, &format!("{schema}.pipeline_status"), (numbered.len() - dead) as i64).await;
        assert_eq!(consume_all(&dlq, dead).len(), dead);
        herald.signal("TERM");
        assert!(herald.wait_exit().success(), "{}", herald.log());
        Self { pool, schema, topic, dlq, route, config }
    }

    /// Its cause fixed.
    async fn fix(&self) {
        let schema = &self.schema;
        sqlx::query(&format!("ALTER TABLE {schema}.pipeline_status DROP CONSTRAINT incident"))
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_after_fixing_a_constraint_delivers_every_dead_letter_once_and_a_second_redrive_nothing() {
    // The incident: a constraint refuses records >= 5.
    let incident = Incident::new("records < 5", 0..10, 5).await;
    let Incident { pool, schema, topic, dlq, route, config } = &incident;
    assert_eq!(rows(pool, schema).await, [0, 1, 2, 3, 4]);

    // A dry run says what would go back, and sends nothing.
    let (code, report) = redrive(config, route, &["--dry-run"]);
    assert_eq!((code, count(&report, "redriven"), report["letters"].as_u64()), (0, 5, Some(5)), "{report}");
    assert_eq!(rows(pool, schema).await.len(), 5);

    // Before the fix every letter fails again: counted, shown with its new error, dead still.
    let (code, report) = redrive(config, route, &[]);
    assert_eq!((code, count(&report, "redriven"), count(&report, "failed_again")), (3, 0, 5), "{report}");
    let failed = report["failed_again"].as_array().unwrap();
    assert!(failed.iter().all(|f| f["error"].as_str().unwrap().contains("incident")), "the constraint named: {report}");
    assert_eq!(rows(pool, schema).await.len(), 5);
    let letters = consume_all(dlq, 10);
    let again = &letters[5];
    let header = |name: &str| {
        use rdkafka::message::{Headers, Message};
        let headers = again.headers().unwrap();
        let values: Vec<String> = headers
            .iter()
            .filter(|h| h.key == name)
            .map(|h| String::from_utf8_lossy(h.value.unwrap()).into_owned())
            .collect();
        values
    };
    assert_eq!(header("__connect.errors.topic"), [topic.as_str()], "where it was first read, once");
    assert_eq!(header("__connect.errors.offset"), ["5"]);

    // Fixed: each letter delivered once, in order.
    incident.fix().await;
    let (code, report) = redrive(config, route, &[]);
    assert_eq!((code, count(&report, "redriven"), count(&report, "failed_again")), (0, 5, 0), "{report}");
    assert_eq!(rows(pool, schema).await, (0..10).collect::<Vec<i64>>());

    // A second redrive sends nothing back.
    let (code, report) = redrive(config, route, &[]);
    assert_eq!((code, report["letters"].as_u64(), count(&report, "redriven")), (0, Some(0), 0), "{report}");
    assert_eq!(rows(pool, schema).await, (0..10).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_not_chosen_stay_dead_for_the_next_redrive_and_none_goes_back_twice() {
    let incident = Incident::new("records < 0", 0..5, 5).await;
    incident.fix().await;
    let Incident { pool, schema, dlq, route, config, .. } = &incident;

    // Only S2 goes back; the four others stay dead.
    let (code, report) = redrive(config, route, &["--filter", "source=S2"]);
    assert_eq!((code, count(&report, "redriven"), count(&report, "kept")), (0, 1, 4), "{report}");
    assert_eq!(rows(pool, schema).await, [2]);
    // Run again with the same choice: nothing more goes back, and nothing is kept twice.
    let (code, report) = redrive(config, route, &["--filter", "source=S2"]);
    assert_eq!((code, count(&report, "redriven"), count(&report, "kept")), (0, 0, 4), "{report}");
    assert_eq!(log_end(dlq), 9, "the 5 letters and one copy of each of the 4 kept, once");
    // Then everything: the other four, once each.
    let (code, report) = redrive(config, route, &[]);
    assert_eq!((code, count(&report, "redriven"), count(&report, "failed_again")), (0, 4, 0), "{report}");
    assert_eq!(rows(pool, schema).await, [0, 1, 2, 3, 4]);
    let (code, report) = redrive(config, route, &[]);
    assert_eq!((code, count(&report, "redriven")), (0, 0), "{report}");
    assert_eq!(rows(pool, schema).await, [0, 1, 2, 3, 4]);
    assert_eq!(log_end(dlq), 9, "nothing dead again, nothing kept twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tap_shows_delivered_skipped_dead_lettered_and_retried() {
    let pool = pool().await;
    let schema = unique("tap").replace('-', "_");
    let (topic, dlq, route) = (unique("events"), unique("dlq"), unique("to-db"));
    create_topic(&topic, 1).await;
    let config = TempConfig::new(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        route_config(
            &route,
            &topic,
            &format!(
                "dead_letter_topic = \"{dlq}\"\nfilter = {{ status = \"SUCCESS\" }}\n\
                 retry = {{ initial_backoff = \"200ms\", max_backoff = \"500ms\" }}"
            ),
            &format!(
                "[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\nmode = \"append\"\n\
                 statement_timeout = \"300ms\"\n"
            ),
        )
    ));
    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    herald.wait_for_log("herald is running.");
    let mut tap = herald_command_tap(&config, &route, &admin);
    let lines = collect_lines(tap.stdout.take().unwrap());
    let errors = collect_lines(tap.stderr.take().unwrap());
    let deadline = Instant::now() + PATIENCE;
    while !errors.lock().unwrap().iter().any(|line| line.contains("tapping route")) {
        assert!(Instant::now() < deadline, "the tap never connected: {:?}", errors.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let success = event_json("A", "bronze", "SUCCESS", 1);
    let failed = event_json("B", "bronze", "FAILED", 2);
    produce(&topic, &[(Some("A"), success.as_bytes()), (Some("B"), failed.as_bytes()), (None, b"{not json")]).await;
    wait_for_rows(&pool, &format!("{schema}.pipeline_status"), 1).await;
    // The table locked longer than the sink's statement timeout: its write fails and is retried.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE {schema}.pipeline_status IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *locker)
        .await
        .unwrap();
    let later = event_json("C", "bronze", "SUCCESS", 3);
    produce(&topic, &[(Some("C"), later.as_bytes())]).await;
    while !herald.log().contains("Sink write failed; retrying.") {
        assert!(Instant::now() < deadline, "no retry; log:\n{}", herald.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    locker.commit().await.unwrap();
    wait_for_rows(&pool, &format!("{schema}.pipeline_status"), 2).await;

    let outcome_at = |offset: i64, outcome: &str| {
        lines.lock().unwrap().iter().filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()).any(|t| {
            t["offset"] == offset && t["outcome"] == outcome && t["topic"] == topic.as_str() && t["partition"] == 0
        })
    };
    let expected = [(0, "delivered"), (1, "skipped"), (2, "dead_lettered"), (3, "retried"), (3, "delivered")];
    while !expected.iter().all(|(offset, outcome)| outcome_at(*offset, outcome)) {
        assert!(Instant::now() < deadline, "the tap showed: {:?}", lines.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = lines.lock().unwrap().clone();
    let letter: serde_json::Value = all
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|t| t["outcome"] == "dead_lettered")
        .unwrap();
    assert_eq!(letter["event"], "{not json", "{letter}");
    assert!(letter["error"].as_str().unwrap().contains("not a valid stage event"), "{letter}");
    assert!(!outcome_at(1, "delivered") && !outcome_at(0, "skipped"), "one outcome each: {all:?}");
    tap.kill().unwrap();
    let _ = tap.wait();

    // The same redrive over the admin API: the unparsable letter would go back, and fails again.
    let json = "Content-Type: application/json\r\n";
    let path = format!("/routes/{route}/redrive");
    let (status, body) = request_with_body(&admin, "POST", &path, json, r#"{"dry_run": true}"#);
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, report["letters"].as_u64(), count(&report, "redriven")), (200, Some(1), 1), "{report}");
    let (status, body) = request_with_body(&admin, "POST", &path, json, "");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, count(&report, "failed_again")), (200, 1), "{report}");
    assert!(report["failed_again"][0]["error"].as_str().unwrap().contains("not a valid stage event"), "{report}");
    let (status, body) = request_with_body(&admin, "POST", &path, json, r#"{"since": "soon"}"#);
    assert!(status == 400 && body.contains("not a redrive"), "{status} {body}");
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

/// `herald tap --json` on a running herald's admin API.
fn herald_command_tap(config: &TempConfig, route: &str, admin: &str) -> std::process::Child {
    herald()
        .args(["tap", "--json", "--route", route, "--admin", admin, "--config"])
        .arg(&config.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
