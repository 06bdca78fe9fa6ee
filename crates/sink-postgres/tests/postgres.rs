//! The Postgres sink against a real Postgres (`scripts/services up`), through the `Sink` API.
//! Each test works in a schema of its own, so tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::type_complexity)]

use std::collections::HashMap;

use herald_sdk::{Sink, SinkRecord, StageEvent};
use herald_sink_postgres::{PostgresSinkConfig, Setup};
use rand::seq::SliceRandom;
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", rand::rng().random_range(0..u64::MAX) % 1_000_000_000_000)
}

async fn pool() -> PgPool {
    PgPoolOptions::new().max_connections(2).connect(URL).await.unwrap_or_else(|err| {
        panic!("no Postgres at {URL} ({err}): start the test services with `scripts/services up`")
    })
}

fn event(source: &str, stage: &str, status: &str, timestamp: &str, seq: usize) -> StageEvent {
    StageEvent::from_json(
        format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"{stage}","source":"{source}","records":{seq},"timestamp":"{timestamp}","status":"{status}","seq":{seq}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn record(event: StageEvent, partition: i32, offset: i64) -> SinkRecord {
    SinkRecord { event: event.into(), topic: "events".into(), partition, offset, origin: None, raw: None }
}

fn config(json: serde_json::Value) -> PostgresSinkConfig {
    let mut value = json;
    value["url"] = URL.into();
    serde_json::from_value(value).unwrap()
}

async fn greenfield(schema: &str, mode: &str) -> Box<dyn Sink> {
    config(serde_json::json!({ "schema": schema, "mode": mode }))
        .connect("test", "test-group", Setup::Migrate)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn greenfield_history_keeps_every_event_and_latest_the_newest_per_source_and_stage() {
    let pool = pool().await;
    let schema = unique("gf");
    let mut sink = greenfield(&schema, "both").await;
    let batch = vec![
        record(event("OrdersDB", "bronze", "RUNNING", "2026-11-26T10:00:00", 0), 0, 0),
        record(event("OrdersDB", "bronze", "SUCCESS", "2026-11-26T10:05:00.123456", 1), 0, 1),
        record(event("UsersDB", "bronze", "SUCCESS", "2026-11-26T10:06:00+01:00", 2), 1, 0),
    ];
    let outcome = sink.write(&batch).await.unwrap();
    assert!(outcome.rejected.is_empty());

    let history = sqlx::query(&format!(
        "SELECT source, status, records, event_time::text, payload->>'seq', origin, kafka_partition, kafka_offset
         FROM {schema}.pipeline_status ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    let rows: Vec<(String, String, i64, String, String, String, i32, i64)> = history
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("OrdersDB".into(), "RUNNING".into(), 0, "2026-11-26 10:00:00+00".into(), "0".into(), "kafka".into(), 0, 0),
            (
                "OrdersDB".into(),
                "SUCCESS".into(),
                1,
                "2026-11-26 10:05:00.123456+00".into(),
                "1".into(),
                "kafka".into(),
                0,
                1
            ),
            ("UsersDB".into(), "SUCCESS".into(), 2, "2026-11-26 09:06:00+00".into(), "2".into(), "kafka".into(), 1, 0),
        ]
    );
    let latest: Vec<(String, String)> =
        sqlx::query_as(&format!("SELECT source, status FROM {schema}.pipeline_status_latest ORDER BY source"))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(latest, vec![("OrdersDB".into(), "SUCCESS".into()), ("UsersDB".into(), "SUCCESS".into())]);
    let offsets: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "SELECT partition, next_offset FROM {schema}.herald_offsets WHERE consumer_group = 'test-group' ORDER BY partition"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(offsets, vec![(0, 2), (1, 1)]);
}

#[tokio::test]
async fn upsert_keeps_the_newest_event_under_shuffled_and_republished_input() {
    let pool = pool().await;
    let schema = unique("upsert");
    let mut sink = greenfield(&schema, "upsert").await;
    let sources = ["A", "B", "C", "D", "E"];
    // 300 events whose timestamps arrive in random order, as from producers with skewed clocks.
    let mut seconds: Vec<usize> = (0..300).collect();
    seconds.shuffle(&mut rand::rng());
    let events: Vec<StageEvent> = seconds
        .iter()
        .enumerate()
        .map(|(seq, &s)| {
            let ts = format!("2026-11-26T{:02}:{:02}:{:02}", 10 + s / 3600, (s / 60) % 60, s % 60);
            event(sources[seq % sources.len()], "bronze", "SUCCESS", &ts, seq)
        })
        .collect();
    let mut newest: HashMap<&str, (String, usize)> = HashMap::new();
    for (seq, e) in events.iter().enumerate() {
        let ts = e.timestamp.instant().to_rfc3339();
        let entry = newest.entry(sources[seq % sources.len()]).or_insert((ts.clone(), seq));
        if ts > entry.0 {
            *entry = (ts, seq);
        }
    }
    // Deliver in uneven batches, then republish everything (new offsets, same events).
    let mut offset = 0;
    for round in 0..2 {
        for chunk in events.chunks(17 + round * 10) {
            let batch: Vec<SinkRecord> = chunk
                .iter()
                .map(|e| {
                    offset += 1;
                    record(e.clone(), 0, offset)
                })
                .collect();
            sink.write(&batch).await.unwrap();
        }
    }

    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT source, payload->>'seq' FROM {schema}.pipeline_status_latest WHERE stage = 'bronze' ORDER BY source"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected: Vec<(String, String)> = sources.iter().map(|s| (s.to_string(), newest[s].1.to_string())).collect();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn replayed_offsets_are_written_once_exactly() {
    let pool = pool().await;
    let schema = unique("eo");
    let mut sink = greenfield(&schema, "append").await;
    let batch = |range: std::ops::Range<i64>| -> Vec<SinkRecord> {
        range
            .map(|o| record(event("A", "s", "SUCCESS", "2026-11-26T10:00:00", o as usize), (o % 2) as i32, o / 2))
            .collect()
    };
    sink.write(&batch(0..100)).await.unwrap();
    // As after a crash before Kafka's commit: the tail of the last batch comes again, then more.
    sink.write(&batch(60..160)).await.unwrap();
    sink.write(&batch(0..160)).await.unwrap();

    assert_eq!(count(&pool, &format!("SELECT count(*) FROM {schema}.pipeline_status")).await, 160);
    assert_eq!(
        count(&pool, &format!("SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM {schema}.pipeline_status"))
            .await,
        160
    );
}

async fn legacy_table(pool: &PgPool, schema: &str) {
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(pool).await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.job_status (
            id serial PRIMARY KEY,
            src_system varchar(40) NOT NULL,
            step varchar(40) NOT NULL,
            state varchar(8) NOT NULL,
            row_count integer,
            finished_at timestamp,
            updated_by text,
            UNIQUE (src_system, step))"
    ))
    .execute(pool)
    .await
    .unwrap();
}

fn legacy_config(schema: &str, mode: &str) -> PostgresSinkConfig {
    let mut table = serde_json::json!({
        "name": format!("{schema}.job_status"),
        "columns": { "src_system": "source", "step": "stage", "state": "status", "row_count": "records", "finished_at": "timestamp" },
        "constants": { "updated_by": "herald" },
    });
    if mode == "upsert" {
        table["conflict_key"] = serde_json::json!(["src_system", "step"]);
    }
    config(serde_json::json!({ "schema": schema, "mode": mode, "table": table }))
}

#[tokio::test]
async fn legacy_table_gets_mapped_columns_constants_and_newest_wins() {
    let pool = pool().await;
    let schema = unique("legacy");
    legacy_table(&pool, &schema).await;
    let mut sink = legacy_config(&schema, "upsert").connect("test", "g", Setup::Migrate).await.unwrap();
    sink.write(&[
        record(event("OrdersDB", "bronze", "SUCCESS", "2026-11-26T10:05:00", 7), 0, 0),
        record(event("OrdersDB", "bronze", "RUNNING", "2026-11-26T10:00:00", 3), 0, 1), // older, arrives later
        record(event("UsersDB", "bronze", "FAILED", "2026-11-26T10:01:00", 1), 0, 2),
    ])
    .await
    .unwrap();

    let rows: Vec<(String, String, String, Option<i32>, String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT src_system, step, state, row_count, finished_at::text, updated_by FROM {schema}.job_status ORDER BY src_system"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "OrdersDB".into(),
                "bronze".into(),
                "SUCCESS".into(),
                Some(7),
                "2026-11-26 10:05:00".into(),
                Some("herald".into())
            ),
            (
                "UsersDB".into(),
                "bronze".into(),
                "FAILED".into(),
                Some(1),
                "2026-11-26 10:01:00".into(),
                Some("herald".into())
            ),
        ]
    );
    // The greenfield tables were not created in legacy mode; herald's bookkeeping was.
    let tables: Vec<String> =
        sqlx::query_scalar(&format!("SELECT tablename::text FROM pg_tables WHERE schemaname = '{schema}' ORDER BY 1"))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(tables, ["_sqlx_migrations", "herald_offsets", "herald_rejections", "job_status"]);
}

#[tokio::test]
async fn appended_values_keep_tabs_newlines_backslashes_and_nulls_intact() {
    let pool = pool().await;
    let schema = unique("escape");
    let mut sink = greenfield(&schema, "append").await;
    let awkward = serde_json::json!({
        "event": "STAGE_COMPLETE", "stage": "line1\nline2\r", "source": "a\tb\\c", "status": "\\N",
        "timestamp": "2026-11-26T10:00:00", "note": "\"quoted\" ünïcode ✓ \\.",
    });
    let plain = serde_json::json!({
        "event": "STAGE_COMPLETE", "stage": "s", "source": "src", "status": "OK", "timestamp": "2026-11-26T10:00:01",
    });
    // The payload as received goes into `payload` as it is: here pretty-printed, so its
    // newlines and indentation must be escaped too. The second record has no payload text and
    // is encoded again.
    let received = format!("{}\r\n", serde_json::to_string_pretty(&awkward).unwrap().replace("  ", "\t"));
    let mut as_received = record(StageEvent::from_json(received.as_bytes()).unwrap(), 0, 0);
    as_received.raw = Some(received.as_str().into());
    let batch = vec![as_received, record(StageEvent::from_json(plain.to_string().as_bytes()).unwrap(), 0, 1)];
    assert!(sink.write(&batch).await.unwrap().rejected.is_empty());

    let rows: Vec<(String, String, String, Option<i64>, serde_json::Value)> = sqlx::query_as(&format!(
        "SELECT source, stage, status, records, payload FROM {schema}.pipeline_status ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_str(), rows[0].3),
        ("a\tb\\c", "line1\nline2\r", "\\N", None)
    );
    assert_eq!(rows[0].4, awkward);
    assert_eq!(rows[1].4["source"], "src");
}

#[tokio::test]
async fn a_view_over_a_legacy_table_is_appended_to_through_insert() {
    let pool = pool().await;
    let schema = unique("view");
    legacy_table(&pool, &schema).await;
    // COPY cannot write a view; the sink falls back to INSERT, which Postgres routes to the table.
    sqlx::query(&format!("CREATE VIEW {schema}.job_status_v AS SELECT * FROM {schema}.job_status"))
        .execute(&pool)
        .await
        .unwrap();
    let table = serde_json::json!({
        "name": format!("{schema}.job_status_v"),
        "columns": { "src_system": "source", "step": "stage", "state": "status" },
    });
    let mut sink = config(serde_json::json!({ "schema": schema, "mode": "append", "table": table }))
        .connect("test", "g", Setup::Migrate)
        .await
        .unwrap();
    let batch: Vec<SinkRecord> = (0..3)
        .map(|i| record(event(&format!("src{i}"), "bronze", "SUCCESS", "2026-11-26T10:00:00", i), 0, i as i64))
        .collect();
    assert!(sink.write(&batch).await.unwrap().rejected.is_empty());
    let written: Vec<String> = sqlx::query_scalar(&format!("SELECT src_system FROM {schema}.job_status ORDER BY id"))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(written, ["src0", "src1", "src2"]);
}

/// `len` events from `src0` on, at offsets 0…, whose status at `bad` is too long for the legacy
/// table's `varchar(8)`.
fn batch_with_a_bad_status(len: usize, bad: usize) -> Vec<SinkRecord> {
    (0..len)
        .map(|i| {
            let status = if i == bad { "WAY_TOO_LONG_FOR_VARCHAR_8" } else { "SUCCESS" };
            record(event(&format!("src{i}"), "bronze", status, "2026-11-26T10:00:00", i), 0, i as i64)
        })
        .collect()
}

/// Appending to a table with `UNIQUE (src_system, step)`, fed from `source` and `stage`: the sink
/// says so when built (for `check` and the route's start), and the second event of a pair is
/// refused with the index named and the upsert that fits. Upsert on that key warns of nothing.
#[tokio::test]
async fn an_append_a_unique_index_will_refuse_is_warned_of_and_the_refusal_names_upsert() {
    let pool = pool().await;
    let schema = unique("uniq");
    legacy_table(&pool, &schema).await;
    let mut sink = legacy_config(&schema, "append").connect("test", "g", Setup::Migrate).await.unwrap();
    let warnings = sink.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("(src_system, step)") && warnings[0].contains("mode = \"upsert\""), "{warnings:?}");
    assert!(warnings[0].contains("conflict_key = [\"src_system\", \"step\"]"), "{warnings:?}");
    let outcome = sink
        .write(&[
            record(event("OrdersDB", "bronze", "RUNNING", "2026-11-26T10:00:00", 1), 0, 0),
            record(event("OrdersDB", "bronze", "SUCCESS", "2026-11-26T10:05:00", 2), 0, 1),
        ])
        .await
        .unwrap();
    assert_eq!(outcome.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1]);
    let reason = herald_sdk::error_chain(outcome.rejected[0].error.as_ref()).join(": ");
    assert!(reason.contains("mode = \"upsert\"") && reason.contains("duplicate key"), "{reason}");
    let upsert = legacy_config(&schema, "upsert").connect("test", "g2", Setup::Migrate).await.unwrap();
    assert!(upsert.warnings().is_empty(), "{:?}", upsert.warnings());
}

#[tokio::test]
async fn a_row_the_table_refuses_is_rejected_alone_and_again_on_replay() {
    let pool = pool().await;
    let schema = unique("poison");
    legacy_table(&pool, &schema).await;
    let mut sink = legacy_config(&schema, "append").connect("test", "g", Setup::Migrate).await.unwrap();
    let batch = batch_with_a_bad_status(10, 4);
    let outcome = sink.write(&batch).await.unwrap();
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, vec![4]);
    let reason = herald_sdk::error_chain(outcome.rejected[0].error.as_ref()).join(": ");
    assert!(reason.contains("too long"), "{reason}");
    let written: Vec<String> = sqlx::query_scalar(&format!("SELECT src_system FROM {schema}.job_status ORDER BY id"))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(written, ["src0", "src1", "src2", "src3", "src5", "src6", "src7", "src8", "src9"]);

    // Replayed after a crash: nothing is written twice, and the bad row is still reported.
    let replay = sink.write(&batch).await.unwrap();
    assert_eq!(replay.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![4]);
    assert_eq!(count(&pool, &format!("SELECT count(*) FROM {schema}.job_status")).await, 9);
}

#[tokio::test]
async fn a_row_refused_deep_in_a_large_append_is_rejected_alone() {
    // The append streams its rows in chunks; the table refuses one in a later chunk.
    let pool = pool().await;
    let schema = unique("poison_deep");
    legacy_table(&pool, &schema).await;
    let mut sink = legacy_config(&schema, "append").connect("test", "g", Setup::Migrate).await.unwrap();
    let batch = batch_with_a_bad_status(1200, 1100);
    let outcome = sink.write(&batch).await.unwrap();
    assert_eq!(outcome.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1100]);
    let written: Vec<i32> = sqlx::query_scalar(&format!("SELECT row_count FROM {schema}.job_status ORDER BY id"))
        .fetch_all(&pool)
        .await
        .unwrap();
    let expected: Vec<i32> = (0..1200).filter(|&i| i != 1100).collect();
    assert_eq!(written, expected);
    // The connection went back to the pool usable: the next batch is written.
    let next = vec![record(event("later", "bronze", "SUCCESS", "2026-11-26T10:00:00", 1200), 0, 1200)];
    assert!(sink.write(&next).await.unwrap().rejected.is_empty());
    assert_eq!(count(&pool, &format!("SELECT count(*) FROM {schema}.job_status")).await, 1200);
}

#[tokio::test]
async fn check_names_missing_and_incompatible_columns_and_changes_nothing() {
    let pool = pool().await;
    let schema = unique("check");
    legacy_table(&pool, &schema).await;
    let config = config(serde_json::json!({
        "schema": schema,
        "table": {
            "name": format!("{schema}.job_status"),
            "columns": { "src_system": "source", "stepp": "stage", "finished_at": "records", "row_count": "$event" },
        },
    }));
    let err = config.connect("test", "g", Setup::CheckOnly).await.err().expect("mapping must be refused");
    let text = herald_sdk::error_chain(&err).join(": ");
    assert!(text.contains("no column `stepp`"), "{text}");
    assert!(
        text.contains("`finished_at` is `timestamp without time zone`, which cannot hold event field `records`"),
        "{text}"
    );
    assert!(text.contains("`row_count` is `integer`, which cannot hold the event JSON"), "{text}");
    assert_eq!(count(&pool, &format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}'")).await, 1);

    let missing = PostgresSinkConfig { table: None, ..config.clone() };
    let err = missing.connect("test", "g", Setup::CheckOnly).await.err().expect("greenfield tables are missing");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_retriable_error_and_the_url_is_never_printed() {
    let mut config = config(serde_json::json!({ "connect_timeout": "1s" }));
    config.url = "postgres://herald:s3cret-pw@127.0.0.1:1/herald".to_string().into();
    let err = config.connect("test", "g", Setup::CheckOnly).await.err().expect("nothing listens on port 1");
    assert!(err.is_retriable(), "{err:?}");
    let text = format!("{} {:?}", herald_sdk::error_chain(&err).join(": "), config);
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[tokio::test]
async fn migrations_are_idempotent_and_concurrent_runs_agree() {
    let schema = unique("migrate");
    let config = config(serde_json::json!({ "schema": schema }));
    let (a, b) = tokio::join!(config.migrate_tables("test"), config.migrate_tables("test"));
    a.unwrap();
    b.unwrap();
    config.migrate_tables("test").await.unwrap();
    let pool = pool().await;
    let tables: Vec<String> =
        sqlx::query_scalar(&format!("SELECT tablename::text FROM pg_tables WHERE schemaname = '{schema}' ORDER BY 1"))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        tables,
        ["_sqlx_migrations", "herald_offsets", "herald_rejections", "pipeline_status", "pipeline_status_latest"]
    );
}

#[tokio::test]
async fn columns_without_a_binary_form_and_values_that_do_not_fit_one_are_copied_as_text() {
    let pool = pool().await;
    let schema = unique("textcopy");
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.runs (src text NOT NULL, amount numeric, tries int4, day date, at timestamptz)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let with_tries = |source: &str, tries: &str, offset: i64| {
        let json = format!(
            r#"{{"event":"STAGE_COMPLETE","stage":"s","source":"{source}","records":{offset},"timestamp":"2026-11-26T10:00:0{offset}+02:00","status":"SUCCESS","tries":{tries},"day":"2026-11-2{offset}"}}"#
        );
        record(StageEvent::from_json(json.as_bytes()).unwrap(), 0, offset)
    };
    let config = |columns: serde_json::Value| {
        config(serde_json::json!({
            // herald's offsets in the test's schema: its groups are its own.
            "schema": schema, "table": { "name": format!("{schema}.runs"), "columns": columns }, "mode": "append",
        }))
    };

    // `numeric` and `date` have no binary encoder here: the whole table goes as text.
    let mut text_table = config(serde_json::json!({ "src": "source", "amount": "records", "day": "day" }))
        .connect("test", "g1", Setup::Migrate)
        .await
        .unwrap();
    let outcome = text_table.write(&[with_tries("a", "1", 1), with_tries("b", "2", 2)]).await.unwrap();
    assert!(outcome.rejected.is_empty());
    let rows: Vec<(String, String, String)> =
        sqlx::query_as(&format!("SELECT src, amount::text, day::text FROM {schema}.runs ORDER BY src"))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows, [("a".into(), "1".into(), "2026-11-21".into()), ("b".into(), "2".into(), "2026-11-22".into())]);
    sqlx::query(&format!("TRUNCATE {schema}.runs")).execute(&pool).await.unwrap();

    // Every column has a binary form, but `"three"` does not fit `int4`'s: that batch goes as
    // text, and Postgres refuses that row alone.
    let mut binary_table = config(serde_json::json!({ "src": "source", "tries": "tries", "at": "timestamp" }))
        .connect("test", "g2", Setup::Migrate)
        .await
        .unwrap();
    let batch = [with_tries("a", "1", 1), with_tries("b", r#""three""#, 2), with_tries("c", "3", 3)];
    let outcome = binary_table.write(&batch).await.unwrap();
    assert_eq!(outcome.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [1]);
    let rows: Vec<(String, i32, String)> = sqlx::query_as(&format!(
        "SELECT src, tries, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM {schema}.runs ORDER BY src"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows, [("a".into(), 1, "2026-11-26 08:00:01".into()), ("c".into(), 3, "2026-11-26 08:00:03".into())]);
}
