//! Kafka → `herald run` → Postgres, end to end: real broker, real Postgres, the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use herald_kafka::headers::connect as headers;
use herald_testkit::PrivatePostgres;
use rand::Rng;
use rdkafka::Message;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const URL: &str = "postgres://herald:herald@127.0.0.1:5432/herald";

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new().max_connections(2).connect(url).await.unwrap_or_else(|err| {
        panic!("no Postgres at {url} ({err}): start the test services with `scripts/services up`")
    })
}

fn postgres_route(route: &str, topic: &str, sink: &str, extra: &str) -> String {
    route_config(route, topic, extra, &format!("[route.sink]\ntype = \"postgres\"\n{sink}"))
}

/// Polls `sql` (a count) until it returns at least `expected`; panics with herald's log otherwise.
async fn wait_for_count(pool: &PgPool, sql: &str, expected: i64, herald: &mut Herald) -> i64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let count: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1);
        if count >= expected {
            return count;
        }
        assert!(Instant::now() < deadline, "only {count} of {expected} rows; log:\n{}", herald.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_poller_of_pipeline_status_sees_every_event_in_per_source_order() {
    let pool = pool(URL).await;
    let topic = unique("events");
    let schema = unique("poller").replace('-', "_");
    create_topic(&topic, 3).await;
    let config = TempConfig::new(&postgres_route(
        &unique("route"),
        &topic,
        &format!("url = \"{URL}\"\nschema = \"{schema}\""),
        "batch = { max_events = 50, max_wait = \"20ms\" }",
    ));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Partitions assigned");

    // The seed's pipeline_status pattern: a coordinator polling every 200 ms for new rows.
    let poller_pool = pool.clone();
    let poll_sql =
        format!("SELECT id, source, (payload->>'seq')::int FROM {schema}.pipeline_status WHERE id > $1 ORDER BY id");
    let poller = tokio::spawn(async move {
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut last_id = 0i64;
        let deadline = Instant::now() + PATIENCE;
        while seen.len() < 500 && Instant::now() < deadline {
            let rows: Vec<(i64, String, i32)> =
                sqlx::query_as(&poll_sql).bind(last_id).fetch_all(&poller_pool).await.unwrap_or_default();
            for (id, source, seq) in rows {
                last_id = id;
                seen.push((source, seq as usize));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    });
    let produced = produce_events(&topic, &["OrdersDB", "UsersDB", "Billing", "Ledger", "Crm"], 500).await;

    let seen = poller.await.unwrap();
    assert_eq!(seen.len(), produced.len(), "the poller saw every event once; log:\n{}", herald.log());
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), produced.iter().cloned().collect::<BTreeSet<_>>());
    assert_per_key_order(&seen);
    let latest: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.pipeline_status_latest"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(latest, 5, "one latest row per source (one stage)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_into_postgres_across_repeated_sigkills() {
    let pool = pool(URL).await;
    let topic = unique("events");
    let schema = unique("eo").replace('-', "_");
    create_topic(&topic, 3).await;
    let produced = produce_events(&topic, &["A", "B", "C", "D", "E", "F"], 20_000).await;
    let config = TempConfig::new(&postgres_route(
        &unique("route"),
        &topic,
        &format!("url = \"{URL}\"\nschema = \"{schema}\"\nmode = \"append\""),
        "batch = { max_events = 25, max_wait = \"5ms\" }",
    ));
    let count_sql = format!("SELECT count(*) FROM {schema}.pipeline_status");

    let mut rng = rand::rng();
    let mut kills = 0;
    for round in 0..4 {
        let before: i64 = sqlx::query_scalar(&count_sql).fetch_one(&pool).await.unwrap_or(0);
        if before >= produced.len() as i64 {
            break;
        }
        let mut herald = Herald::run(&config);
        // Kill at a random moment once this run has written something, while it is still writing.
        wait_for_count(&pool, &count_sql, before + 1, &mut herald).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        let now: i64 = sqlx::query_scalar(&count_sql).fetch_one(&pool).await.unwrap();
        herald.signal("KILL");
        herald.wait_exit();
        if now < produced.len() as i64 {
            kills += 1;
        }
        eprintln!("round {round}: killed at about {now} rows");
    }
    assert!(kills >= 2, "the kills should land mid-stream (only {kills} did)");

    let mut herald = Herald::run(&config);
    wait_for_count(&pool, &count_sql, produced.len() as i64, &mut herald).await;
    // A sentinel produced last: once it is in, nothing older can still be on its way.
    produce(&topic, &[(Some("A"), event_json("A", "sentinel", "SUCCESS", 99_999).as_bytes())]).await;
    wait_for_count(&pool, &format!("{count_sql} WHERE stage = 'sentinel'"), 1, &mut herald).await;

    let rows: Vec<(String, i32, i32, i64)> = sqlx::query_as(&format!(
        "SELECT source, (payload->>'seq')::int, kafka_partition, kafka_offset FROM {schema}.pipeline_status WHERE stage <> 'sentinel'"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), produced.len(), "no row missing, none twice");
    let coordinates: BTreeSet<(i32, i64)> = rows.iter().map(|r| (r.2, r.3)).collect();
    assert_eq!(coordinates.len(), produced.len(), "no offset written twice");
    let seen: BTreeSet<(String, usize)> = rows.iter().map(|r| (r.0.clone(), r.1 as usize)).collect();
    assert_eq!(seen, produced.iter().cloned().collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_mid_stream_loses_nothing() {
    let server = PrivatePostgres::start().unwrap();
    let pool = pool(&server.url()).await;
    let topic = unique("events");
    create_topic(&topic, 2).await;
    let config = TempConfig::new(&postgres_route(
        &unique("route"),
        &topic,
        &format!("url = \"{}\"\nmode = \"append\"\nconnect_timeout = \"1s\"", server.url()),
        "retry = { initial_backoff = \"100ms\", max_backoff = \"1s\" }",
    ));
    let first = produce_events(&topic, &["A", "B", "C"], 200).await;
    let mut herald = Herald::run(&config);
    let count_sql = "SELECT count(*) FROM pipeline_status";
    wait_for_count(&pool, count_sql, first.len() as i64, &mut herald).await;
    pool.close().await;

    server.control("stop").unwrap();
    let second: Vec<String> = (200..500).map(|seq| event_json("A", "bronze_ingest", "SUCCESS", seq)).collect();
    let batch: Vec<(Option<&str>, &[u8])> = second.iter().map(|m| (Some("A"), m.as_bytes())).collect();
    produce(&topic, &batch).await;
    herald.wait_for_log("Sink write failed; retrying.");
    server.control("start").unwrap();

    let pool = self::pool(&server.url()).await;
    wait_for_count(&pool, count_sql, 500, &mut herald).await;
    produce(&topic, &[(Some("A"), event_json("A", "sentinel", "SUCCESS", 999).as_bytes())]).await;
    wait_for_count(&pool, "SELECT count(*) FROM pipeline_status WHERE stage = 'sentinel'", 1, &mut herald).await;
    let seqs: Vec<i32> =
        sqlx::query_scalar("SELECT (payload->>'seq')::int FROM pipeline_status WHERE stage <> 'sentinel' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(seqs, (0..500).collect::<Vec<i32>>(), "every event once, across the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_row_alone_goes_to_the_dead_letter_topic_and_the_rest_is_written() {
    let pool = pool(URL).await;
    let topic = unique("events");
    let dlq = unique("dlq");
    let schema = unique("legacy").replace('-', "_");
    create_topic(&topic, 1).await;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.job_status (src_system varchar(40), step varchar(40), state varchar(8), row_count int, finished_at timestamptz, updated_by text)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let events: Vec<String> = (0..20)
        .map(|seq| {
            event_json(
                &format!("src{seq}"),
                "bronze",
                if seq == 13 { "SUCCEEDED_WITH_WARNINGS" } else { "SUCCESS" },
                seq,
            )
        })
        .collect();
    let batch: Vec<(Option<&str>, &[u8])> = events.iter().map(|m| (Some("k"), m.as_bytes())).collect();
    produce(&topic, &batch).await;
    let route = unique("route");
    let config = TempConfig::new(&postgres_route(
        &route,
        &topic,
        &format!(
            "url = \"{URL}\"\nschema = \"{schema}\"\n[route.sink.table]\nname = \"{schema}.job_status\"\n\
             columns = {{ src_system = \"source\", step = \"stage\", state = \"status\", row_count = \"records\", finished_at = \"timestamp\" }}\n\
             constants = {{ updated_by = \"herald\" }}"
        ),
        &format!("dead_letter_topic = \"{dlq}\""),
    ));
    let mut herald = Herald::run(&config);
    wait_for_count(&pool, &format!("SELECT count(*) FROM {schema}.job_status"), 19, &mut herald).await;

    let letters = consume_all(&dlq, 1);
    assert_eq!(letters[0].payload(), Some(events[13].as_bytes()));
    assert_eq!(header(&letters[0], headers::OFFSET).as_deref(), Some("13"));
    assert_eq!(header(&letters[0], headers::STAGE).as_deref(), Some("TASK_PUT"));
    let reason = header(&letters[0], headers::EXCEPTION_STACKTRACE).unwrap();
    assert!(reason.contains("too long"), "{reason}");
    let written: Vec<i32> = sqlx::query_scalar(&format!(
        "SELECT row_count FROM {schema}.job_status WHERE updated_by = 'herald' ORDER BY row_count"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(written, (0..20).filter(|&s| s != 13).collect::<Vec<i32>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_mapping_that_does_not_fit_the_table_and_migrate_creates_the_greenfield_tables() {
    let schema = unique("chk").replace('-', "_");
    let legacy = TempConfig::new(&postgres_route(
        "r",
        "pipeline.stage.events",
        &format!(
            "url = \"{URL}\"\nschema = \"{schema}\"\nmode = \"upsert\"\n[route.sink.table]\nname = \"{schema}.missing_table\"\nconflict_key = [\"src\", \"step\"]\n\
             columns = {{ src = \"source\", step = \"stage\", n = \"records\", at = \"timestamp\", raw = \"$event\", off = \"$offset\" }}"
        ),
        "",
    ));
    let out = herald().args(["check", "--config"]).arg(&legacy.path).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let table = format!("\"{schema}\".\"missing_table\"");
    assert!(report.contains("FAIL  route r") && report.contains(&format!("{table} does not exist")), "{report}");
    // Not sent in a loop to `herald migrate`: told herald does not create it, and what would fit.
    assert!(report.contains("does not create it") && !report.contains("created by `herald migrate`"), "{report}");
    let ddl = report.split('`').find(|part| part.starts_with("CREATE TABLE")).unwrap_or_else(|| panic!("{report}"));
    assert!(
        ddl.contains("\"at\" timestamptz")
            && ddl.contains("\"raw\" jsonb")
            && ddl.contains("UNIQUE (\"src\", \"step\")"),
        "{ddl}"
    );
    // The DDL shown is one that fits: run it (and `herald migrate` for herald's own offsets
    // table), and the check passes.
    let pool = pool(URL).await;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
    sqlx::query(ddl).execute(&pool).await.unwrap();
    let out = herald().args(["migrate", "--config"]).arg(&legacy.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = herald().args(["check", "--config"]).arg(&legacy.path).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("sink `postgres` reachable"), "{report}");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();

    let greenfield = TempConfig::new(&postgres_route(
        "r",
        "pipeline.stage.events",
        &format!("url = \"{URL}\"\nschema = \"{schema}\""),
        "",
    ));
    let out = herald().args(["check", "--config"]).arg(&greenfield.path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "tables not migrated yet");
    let out = herald().args(["migrate", "--config"]).arg(&greenfield.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = herald().args(["check", "--config"]).arg(&greenfield.path).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("sink `postgres` reachable"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_kafka_offsets_are_gone_resumes_from_the_offsets_stored_in_postgres() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let pool = pool(URL).await;
    let topic = unique("events");
    let group = unique("group");
    let schema = unique("resume").replace('-', "_");
    create_topic(&topic, 1).await;
    let route = unique("route");
    let sink = format!("url = \"{URL}\"\nschema = \"{schema}\"\nmode = \"append\"");
    let config_starting_from = |start: &str| {
        TempConfig::new(&postgres_route(
            &route,
            &topic,
            &sink,
            &format!("group_id = \"{group}\"\nstart_from = \"{start}\""),
        ))
    };
    let count_sql = format!("SELECT count(*) FROM {schema}.pipeline_status");
    // The first run reads from the start: at `latest`, events produced as the partition is
    // assigned could land before the consumer has looked up where the end is, and be skipped.
    produce_events(&topic, &["A"], 100).await;
    let first_config = config_starting_from("earliest");
    let mut herald = Herald::run(&first_config);
    wait_for_count(&pool, &count_sql, 100, &mut herald).await;
    herald.signal("TERM");
    assert!(herald.wait_exit().success());

    // The group's Kafka offsets expire (here: are deleted) while herald is down and events arrive.
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", BROKERS).create().unwrap();
    let deleted = admin.delete_groups(&[group.as_str()], &AdminOptions::new()).await.unwrap();
    assert!(deleted.iter().all(|r| r.is_ok()), "{deleted:?}");
    let missed: Vec<String> = (100..150).map(|seq| event_json("A", "bronze_ingest", "SUCCESS", seq)).collect();
    let batch: Vec<(Option<&str>, &[u8])> = missed.iter().map(|m| (Some("A"), m.as_bytes())).collect();
    produce(&topic, &batch).await;

    // `latest`: without the sink's offsets, a group that lost its Kafka offsets would skip ahead.
    let config = config_starting_from("latest");
    let mut restarted = Herald::run(&config);
    // No new event is needed: herald seeks to the sink's offset once the partition is assigned.
    wait_for_count(&pool, &count_sql, 150, &mut restarted).await;
    // And goes on from there: an event sent now is read once, after the missed ones.
    produce(&topic, &[(Some("A"), event_json("A", "sentinel", "SUCCESS", 999).as_bytes())]).await;
    let sentinel_sql = format!("{count_sql} WHERE stage = 'sentinel'");
    wait_for_count(&pool, &sentinel_sql, 1, &mut restarted).await;
    let total: i64 = sqlx::query_scalar(&count_sql).fetch_one(&pool).await.unwrap();
    assert_eq!(total, 151, "each event once");
    let seqs: Vec<i32> = sqlx::query_scalar(&format!(
        "SELECT (payload->>'seq')::int FROM {schema}.pipeline_status WHERE stage <> 'sentinel' ORDER BY 1"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(seqs, (0..150).collect::<Vec<i32>>(), "resumed at Postgres' offset 100: nothing skipped, nothing twice");
    assert!(restarted.log().contains("Resuming where the sink's stored offset says"), "{}", restarted.log());
}
