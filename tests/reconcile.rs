//! `herald reconcile`: a status table against a topic, both ways, with repair, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Output;

use common::source::*;
use common::*;

/// `herald reconcile --config <config> <args>`.
fn reconcile(config: &TempConfig, args: &[&str]) -> Output {
    herald().arg("reconcile").arg("--config").arg(&config.path).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_s_table_and_topic_are_compared_and_repaired_exactly_once() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let name = unique("src");
    let config = TempConfig::new(&source_config(&name, &schema, &topic, ""));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "A", "bronze", "SUCCESS", 1).await;
    insert(&pool, &schema, "B", "bronze", "SUCCESS", 2).await;
    read_committed(&topic, 2);
    herald.signal("TERM");
    herald.wait_exit();

    let agree = reconcile(&config, &["--source", &name]);
    assert_eq!(agree.status.code(), Some(0), "{}", text(&agree));
    assert!(text(&agree).contains("agree on 2 (source, stage) pairs"), "{}", text(&agree));

    // The capture is lost; rows written meanwhile never reach the topic.
    sqlx::query(&format!("DROP TRIGGER herald_capture ON {schema}.pipeline_status")).execute(&pool).await.unwrap();
    insert(&pool, &schema, "B", "bronze", "FAILED", 3).await;
    insert(&pool, &schema, "C", "bronze", "SUCCESS", 4).await;
    insert(&pool, &schema, "C", "silver", "SUCCESS", 5).await;

    let diverged = reconcile(&config, &["--source", &name, "--json"]);
    assert_eq!(diverged.status.code(), Some(3), "{}", text(&diverged));
    let report: serde_json::Value = serde_json::from_slice(&diverged.stdout).unwrap();
    let verdicts: Vec<(String, String, String)> = report["divergences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let field = |name: &str| d[name].as_str().unwrap().to_owned();
            (field("source"), field("stage"), field("verdict"))
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("B".into(), "bronze".into(), "table_newer".into()),
            ("C".into(), "bronze".into(), "table_only".into()),
            ("C".into(), "silver".into(), "table_only".into()),
        ]
    );
    let human = reconcile(&config, &["--source", &name]);
    assert!(text(&human).contains("only in the table") && text(&human).contains("3 of 4"), "{}", text(&human));

    let repaired = reconcile(&config, &["--source", &name, "--repair"]);
    assert_eq!(repaired.status.code(), Some(0), "{}", text(&repaired));
    assert!(text(&repaired).contains("Repaired 3"), "{}", text(&repaired));
    let messages = read_committed(&topic, 5);
    let published: Vec<(String, String)> = messages[2..]
        .iter()
        .map(|m| (json(m)["source"].as_str().unwrap().to_owned(), json(m)["status"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(published.len(), 3, "each missing row once: {published:?}");
    assert!(published.contains(&("B".into(), "FAILED".into())));
    assert_eq!(header(&messages[4], "herald.origin.repair").as_deref(), Some("reconcile"));
    assert_eq!(
        header(&messages[4], "herald.origin").as_deref(),
        header(&messages[0], "herald.origin").as_deref(),
        "repaired events carry the source's origin, so its own sink never writes them back"
    );

    // A second repair publishes nothing: they agree.
    let again = reconcile(&config, &["--source", &name, "--repair"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(text(&again).contains("agree on 4"), "{}", text(&again));
    assert_eq!(read_committed(&topic, 5).len(), 5, "nothing more published");
}

/// Ties and NULLs in a legacy table. Two rows of one pair in one transaction share `now()`: the
/// later written is the latest on both sides (the table's key, the topic's offset), so they
/// agree and a repair publishes nothing. A pair whose newest row has a NULL status is reported,
/// naming the column: never dropped, never "agree". `--repair` converges: a second publishes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_and_nulls_are_ordered_and_reported_and_repair_converges() {
    let pool = pool().await;
    let schema = unique("ties").replace('-', "_");
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
    let mapping = odd_table(&pool, &schema).await;
    let topic = unique("events");
    let name = unique("src");
    let config = TempConfig::new(&source_config(&name, &schema, &topic, &mapping));
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    // One transaction, one now(): RUNNING then SUCCESS for (A, silver), for several pairs.
    let mut tx = pool.begin().await.unwrap();
    for source in ["A", "B", "C", "D", "E"] {
        for state in ["RUNNING", "SUCCESS"] {
            sqlx::query(&format!(
                "INSERT INTO {schema}.odd_jobs (src, step, state, n, at) VALUES ('{source}', 'silver', '{state}', 1, now())"
            ))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
    read_committed(&topic, 10);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());

    let agree = reconcile(&config, &["--source", &name]);
    assert_eq!(agree.status.code(), Some(0), "the later row of each tie is the latest on both sides: {}", text(&agree));
    assert!(text(&agree).contains("agree on 5 (source, stage) pairs"), "{}", text(&agree));
    let repair = reconcile(&config, &["--source", &name, "--repair"]);
    assert_eq!(repair.status.code(), Some(0), "{}", text(&repair));
    assert_eq!(read_committed(&topic, 10).len(), 10, "nothing published by a repair of agreeing sides");

    // The newest row of (F, silver) has no status; (G, silver) has only a NULL-timestamp row.
    sqlx::query(&format!(
        "INSERT INTO {schema}.odd_jobs (src, step, state, n, at) VALUES ('F', 'silver', 'SUCCESS', 1, now() - interval '1 minute'), \
         ('F', 'silver', NULL, 2, now()), ('G', 'silver', 'SUCCESS', 3, NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let diverged = reconcile(&config, &["--source", &name, "--json"]);
    assert_eq!(diverged.status.code(), Some(3), "{}", text(&diverged));
    let report: serde_json::Value = serde_json::from_slice(&diverged.stdout).unwrap();
    let unreadable: Vec<(String, String)> = report["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["source"].as_str().unwrap().to_owned(), row["reason"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(unreadable.len(), 2, "{unreadable:?}");
    assert!(
        unreadable.iter().any(|(source, reason)| source == "F" && reason.contains("column `state`")),
        "{unreadable:?}"
    );
    assert!(
        unreadable.iter().any(|(source, reason)| source == "G" && reason.contains("column `at`")),
        "{unreadable:?}"
    );
    assert_eq!(report["pairs"], 7, "{report}");
    let human = reconcile(&config, &["--source", &name, "--repair"]);
    assert_eq!(human.status.code(), Some(3), "{}", text(&human));
    assert!(text(&human).contains("Repaired 0; 2 cannot be repaired from this side:"), "{}", text(&human));
    assert!(text(&human).contains("F/silver: the newest row cannot become an event"), "{}", text(&human));
    assert_eq!(read_committed(&topic, 10).len(), 10, "an unreadable row is never published");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_route_s_table_is_compared_with_what_it_consumed_and_repaired() {
    let pool = pool().await;
    let schema = unique("rec").replace('-', "_");
    let topic = unique("events");
    create_topic(&topic, 2).await;
    let route = unique("route");
    let config = TempConfig::new(&route_config(
        &route,
        &topic,
        "",
        &format!("[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\n"),
    ));
    let events: Vec<String> = (0..4).map(|seq| event_json(&format!("S{seq}"), "bronze", "SUCCESS", seq)).collect();
    let messages: Vec<(Option<&str>, &[u8])> =
        events.iter().enumerate().map(|(i, e)| (Some(["S0", "S1", "S2", "S3"][i]), e.as_bytes())).collect();
    produce(&topic, &messages).await;
    let mut herald = Herald::run(&config);
    let latest = format!("{schema}.pipeline_status_latest");
    wait_for_rows(&pool, &latest, 4).await;
    herald.signal("TERM");
    herald.wait_exit();

    let agree = reconcile(&config, &["--since", "30d", "--route", &route]);
    assert_eq!(agree.status.code(), Some(0), "{}", text(&agree));

    // An event the route has not reached yet is not a divergence: it is in flight.
    let late = event_json("S9", "bronze", "SUCCESS", 9);
    produce(&topic, &[(Some("S9"), late.as_bytes())]).await;
    let in_flight = reconcile(&config, &["--since", "30d", "--route", &route]);
    assert_eq!(in_flight.status.code(), Some(0), "{}", text(&in_flight));
    assert!(text(&in_flight).contains("1 events the route has not reached yet"), "{}", text(&in_flight));

    // Someone deletes a row and rewrites another: the table now lacks what the route wrote.
    sqlx::query(&format!("DELETE FROM {latest} WHERE source = 'S1'")).execute(&pool).await.unwrap();
    sqlx::query(&format!("UPDATE {latest} SET status = 'FAILED' WHERE source = 'S2'")).execute(&pool).await.unwrap();
    let diverged = reconcile(&config, &["--since", "30d", "--route", &route]);
    assert_eq!(diverged.status.code(), Some(3), "{}", text(&diverged));
    assert!(text(&diverged).contains("only in the topic") && text(&diverged).contains("same instant, different"));

    let history = format!("{schema}.pipeline_status");
    let before: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {history}")).fetch_one(&pool).await.unwrap();
    let repaired = reconcile(&config, &["--since", "30d", "--route", &route, "--repair"]);
    assert_eq!(repaired.status.code(), Some(0), "{}", text(&repaired));
    let rows: Vec<(String, String)> =
        sqlx::query_as(&format!("SELECT source, status FROM {latest} ORDER BY source")).fetch_all(&pool).await.unwrap();
    let expected: Vec<(String, String)> = (0..4).map(|seq| (format!("S{seq}"), "SUCCESS".to_owned())).collect();
    assert_eq!(rows, expected);
    let again = reconcile(&config, &["--since", "30d", "--route", &route, "--repair"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let after: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {history}")).fetch_one(&pool).await.unwrap();
    assert_eq!(after, before, "the history already held both events (by offset): a repair adds no row to it");
    let doubled: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) - count(DISTINCT (kafka_topic, kafka_partition, kafka_offset)) FROM {history}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(doubled, 0, "no offset twice in the history");

    // The route then goes on where it was: the in-flight event arrives, nothing twice.
    let mut herald = Herald::run(&config);
    wait_for_rows(&pool, &latest, 5).await;
    herald.signal("TERM");
    herald.wait_exit();
    let agree = reconcile(&config, &["--since", "30d", "--route", &route]);
    assert_eq!(agree.status.code(), Some(0), "{}", text(&agree));
    assert!(text(&agree).contains("agree on 5"), "{}", text(&agree));
}

/// A legacy append table without the offset: two events of a pair share a timestamp, and an
/// event the table refuses stops a route that has no dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_s_ties_converge_and_a_refused_event_reaches_the_dead_letter_topic_once_one_is_set() {
    let pool = pool().await;
    let table = format!("public.{}", unique("legacy_status").replace('-', "_"));
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, src text NOT NULL, step text NOT NULL, state text NOT NULL,
                               done_at timestamptz NOT NULL, CONSTRAINT known_state CHECK (state <> 'BOGUS'))"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let topic = unique("events");
    create_topic(&topic, 1).await;
    let (route, dlq) = (unique("route"), unique("dlq"));
    create_topic(&dlq, 1).await;
    let sink = format!(
        "[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\n[route.sink.table]\nname = \"{table}\"\n\
         columns = {{ src = \"source\", step = \"stage\", state = \"status\", done_at = \"timestamp\" }}\n"
    );
    let at = "2026-12-01T10:00:00.000000";
    let event = |source: &str, status: &str| {
        format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"silver","source":"{source}","timestamp":"{at}","status":"{status}"}}"#
        )
    };
    let events = [event("A", "RUNNING"), event("A", "SUCCESS"), event("B", "SUCCESS"), event("C", "BOGUS")];
    let messages: Vec<(Option<&str>, &[u8])> =
        events.iter().zip(["A", "A", "B", "C"]).map(|(e, key)| (Some(key), e.as_bytes())).collect();
    produce(&topic, &messages).await;

    // No dead-letter topic: the refusal stops the route (and, its only unit, herald).
    let config = TempConfig::new(&route_config(&route, &topic, "", &sink));
    let mut herald = Herald::run(&config);
    assert_eq!(herald.wait_exit().code(), Some(1), "{}", herald.log());
    let rows: Vec<(String, String)> =
        sqlx::query_as(&format!("SELECT src, state FROM {table} ORDER BY id")).fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 3, "A twice and B written, C refused: {rows:?}");

    // A's two rows tie; the table holds the topic's newest (SUCCESS), so they agree, and the
    // refused event is named with its reason and where its dead letter is (nowhere yet).
    for _ in 0..2 {
        let out = reconcile(&config, &["--since", "30d", "--route", &route, "--repair"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(text(&out).contains("agree on 2"), "{}", text(&out));
        assert!(text(&out).contains("1 events the table refused"), "{}", text(&out));
        assert!(text(&out).contains("known_state"), "the reason: {}", text(&out));
        assert!(text(&out).contains("no dead_letter_topic"), "{}", text(&out));
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&pool).await.unwrap();
        assert_eq!(count, 3, "a repair that finds agreement writes nothing");
    }

    // With a dead-letter topic set, the refused event goes there (the route resumes at it),
    // once, and reconcile says so.
    let with_dlq = TempConfig::new(&route_config(&route, &topic, &format!("dead_letter_topic = \"{dlq}\""), &sink));
    let mut herald = Herald::run(&with_dlq);
    let letters = consume_all(&dlq, 1);
    assert_eq!(header(&letters[0], "__connect.errors.offset").as_deref(), Some("3"));
    herald.wait_for_log("Message sent to the dead-letter topic");
    herald.signal("TERM");
    herald.wait_exit();
    let out = reconcile(&with_dlq, &["--since", "30d", "--route", &route]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("1 of them in dead-letter topic"), "{}", text(&out));
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&pool).await.unwrap();
    assert_eq!(count, 3, "nothing written twice on the way");

    // Sent and acknowledged: another start does not send it again.
    let mut herald = Herald::run(&with_dlq);
    herald.wait_for_log("Postgres sink ready");
    std::thread::sleep(std::time::Duration::from_secs(3));
    herald.signal("TERM");
    herald.wait_exit();
    assert_eq!(message_count(&dlq), 1, "one dead letter, not one per start");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.unwrap();
}

/// How many messages `topic` holds (its log end, one partition).
fn message_count(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", BROKERS).create().unwrap();
    let (low, high) = consumer.fetch_watermarks(topic, 0, std::time::Duration::from_secs(10)).unwrap();
    high - low
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reconcile_requests_are_clear_errors() {
    let config = TempConfig::new(&stdout_route_config("out", "t", ""));
    let unknown = reconcile(&config, &["--source", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown).contains("no [[source]] named `nope`"), "{}", text(&unknown));
    let not_postgres = reconcile(&config, &["--route", "out"]);
    assert_eq!(not_postgres.status.code(), Some(1));
    assert!(text(&not_postgres).contains("writes to a `stdout` sink"), "{}", text(&not_postgres));
    let neither = herald().args(["reconcile", "--config"]).arg(&config.path).output().unwrap();
    assert_eq!(neither.status.code(), Some(2), "clap: one of --source or --route");
}

/// The seed of a generated case: `HERALD_TEST_SEED` to replay one, else a new one (printed).
fn seed() -> u64 {
    let seed = std::env::var("HERALD_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("HERALD_TEST_SEED={seed}");
    seed
}

/// One instant spelled as a producer or a legacy writer might: UTC, another zone, or naive.
fn spelled(minute: u32, rng: &mut impl rand::Rng) -> String {
    match rng.random_range(0..3) {
        0 => format!("2026-12-01T10:{minute:02}:00Z"),
        1 => format!("2026-12-01T12:{minute:02}:00+02:00"),
        _ => format!("2026-12-01T10:{minute:02}:00"),
    }
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| panic!("{err}: {}", text(out)))
}

/// Topic → table, generated: events with ties, three spellings of one instant and duplicates,
/// then rows deleted from both tables and statuses rewritten. One `--repair` makes them agree;
/// a second writes nothing; the history never holds an offset twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_route_table_converges_in_one_repair_and_a_second_writes_nothing() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let pool = pool().await;
    let schema = unique("gen").replace('-', "_");
    let topic = unique("events");
    create_topic(&topic, 2).await;
    let route = unique("route");
    let config = TempConfig::new(&route_config(
        &route,
        &topic,
        "",
        &format!("[route.sink]\ntype = \"postgres\"\nurl = \"{URL}\"\nschema = \"{schema}\"\n"),
    ));
    let mut events: Vec<(String, String)> = Vec::new();
    for _ in 0..40 {
        let source = format!("S{}", rng.random_range(0..5));
        let stage = ["bronze", "silver"][rng.random_range(0..2)];
        let status = ["RUNNING", "SUCCESS", "FAILED"][rng.random_range(0..3)];
        let json = format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"{stage}","source":"{source}","status":"{status}","timestamp":"{}"}}"#,
            spelled(rng.random_range(0..4), &mut rng)
        );
        let copies = if rng.random_bool(0.15) { 2 } else { 1 };
        for _ in 0..copies {
            events.push((source.clone(), json.clone()));
        }
    }
    let messages: Vec<(Option<&str>, &[u8])> =
        events.iter().map(|(key, json)| (Some(key.as_str()), json.as_bytes())).collect();
    produce(&topic, &messages).await;
    let mut herald = Herald::run(&config);
    let history = format!("{schema}.pipeline_status");
    let latest = format!("{schema}.pipeline_status_latest");
    wait_for_rows(&pool, &history, events.len() as i64).await;
    herald.signal("TERM");
    herald.wait_exit();
    let agree = reconcile(&config, &["--since", "3650d", "--route", &route]);
    assert_eq!(agree.status.code(), Some(0), "as the route wrote it: {}", text(&agree));

    // Rows deleted from both tables, statuses rewritten.
    for table in [&latest, &history] {
        sqlx::query(&format!("DELETE FROM {table} WHERE random() < 0.3")).execute(&pool).await.unwrap();
    }
    sqlx::query(&format!("UPDATE {latest} SET status = 'TAMPERED' WHERE random() < 0.3")).execute(&pool).await.unwrap();
    let first = reconcile(&config, &["--since", "3650d", "--route", &route, "--repair", "--json"]);
    assert_eq!(first.status.code(), Some(0), "one repair makes them agree: {}", text(&first));
    println!("first repair: {}", report(&first));
    let agree = reconcile(&config, &["--since", "3650d", "--route", &route, "--json"]);
    assert_eq!(agree.status.code(), Some(0), "{}", text(&agree));
    assert_eq!(report(&agree)["divergences"], serde_json::json!([]));

    let tables = || async {
        let latest: Vec<(String, String, String, i64)> =
            sqlx::query_as(&format!("SELECT source, stage, status, kafka_offset FROM {latest} ORDER BY source, stage"))
                .fetch_all(&pool)
                .await
                .unwrap();
        let history: Vec<(String, i32, i64)> = sqlx::query_as(&format!(
            "SELECT kafka_topic, kafka_partition, kafka_offset FROM {history} ORDER BY 1, 2, 3"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        (latest, history)
    };
    let before = tables().await;
    let mut offsets = before.1.clone();
    offsets.dedup();
    assert_eq!(offsets.len(), before.1.len(), "an offset twice in the history");
    let second = reconcile(&config, &["--since", "3650d", "--route", &route, "--repair", "--json"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert_eq!(report(&second)["repaired"], 0, "{}", text(&second));
    assert_eq!(tables().await, before, "a second repair changes nothing");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
}

/// Table → topic, generated: rows written before the capture (never published) and after,
/// with ties in one transaction, three spellings of one instant, and NULL statuses. One
/// `--repair` publishes what the topic lacks; then the only pairs left are those whose newest
/// row cannot become an event, each named; a second repair publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_source_table_converges_in_one_repair_and_a_second_publishes_nothing() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let pool = pool().await;
    let schema = unique("gens").replace('-', "_");
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
    let mapping = odd_table(&pool, &schema).await;
    let topic = unique("events");
    let name = unique("src");
    let config = TempConfig::new(&source_config(&name, &schema, &topic, &mapping));
    let write_rows = |rng: &mut rand::rngs::StdRng, count: usize, nulls: bool| {
        let mut statements = Vec::new();
        for _ in 0..count {
            let source = format!("S{}", rng.random_range(0..6));
            let state = if nulls && rng.random_bool(0.15) {
                "NULL".to_owned()
            } else {
                format!("'{}'", ["RUNNING", "SUCCESS", "FAILED"][rng.random_range(0..3)])
            };
            let at = if rng.random_bool(0.3) {
                "now()".to_owned()
            } else {
                format!("'{}'", spelled(rng.random_range(0..4), rng))
            };
            statements.push(format!(
                "INSERT INTO {schema}.odd_jobs (src, step, state, n, at) VALUES ('{source}', 'silver', {state}, 1, {at})"
            ));
        }
        statements
    };
    // Before the capture: the topic never sees these.
    let mut tx = pool.begin().await.unwrap();
    for statement in write_rows(&mut rng, 25, true) {
        sqlx::query(&statement).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    let captured = write_rows(&mut rng, 20, false);
    let mut tx = pool.begin().await.unwrap();
    for statement in &captured {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    read_committed(&topic, captured.len());
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());

    let first = reconcile(&config, &["--since", "3650d", "--source", &name, "--repair", "--json"]);
    let first_report = report(&first);
    println!("first repair: {first_report}");
    let unreadable = first_report["unreadable"].as_array().unwrap().len();
    assert_eq!(first.status.code(), Some(if unreadable == 0 { 0 } else { 3 }), "{}", text(&first));
    for row in first_report["unreadable"].as_array().unwrap() {
        assert!(row["reason"].as_str().unwrap().contains("column `state`"), "{row}");
    }
    let after = reconcile(&config, &["--since", "3650d", "--source", &name, "--json"]);
    let after_report = report(&after);
    // What is left are the unreadable pairs (and the topic's older event of such a pair).
    for divergence in after_report["divergences"].as_array().unwrap() {
        let pair = (divergence["source"].as_str().unwrap(), divergence["stage"].as_str().unwrap());
        assert!(
            after_report["unreadable"]
                .as_array()
                .unwrap()
                .iter()
                .any(|row| (row["source"].as_str().unwrap(), row["stage"].as_str().unwrap()) == pair),
            "left after a repair: {divergence}"
        );
    }
    // The sum of the partitions' end offsets: a transaction moves them even with nothing in it.
    let end = |topic: &str| {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", BROKERS).create().unwrap();
        let timeout = std::time::Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, timeout).unwrap().1).sum::<i64>()
    };
    let published = end(&topic);
    let second = reconcile(&config, &["--since", "3650d", "--source", &name, "--repair", "--json"]);
    assert_eq!(report(&second)["repaired"], 0, "{}", text(&second));
    assert_eq!(end(&topic), published, "a second repair publishes nothing (not even a transaction marker)");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
}
