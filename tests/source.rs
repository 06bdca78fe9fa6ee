//! Postgres status-table writes → `herald run` ([[source]]) → Kafka, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::source::*;
use common::*;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_and_updates_become_keyed_stage_events_with_their_origin() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let name = unique("src");
    let config =
        TempConfig::new(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", source_config(&name, &schema, &topic, "")));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");

    // A legacy job: a RUNNING row, later updated to SUCCESS.
    run_a_legacy_job(&pool, &schema).await;
    let messages = read_committed(&topic, 2);
    assert_the_legacy_jobs_events(&messages, &schema, &herald.log());

    // The admin API counts what the source published.
    let address = admin_address(&mut herald);
    let (_, metrics) = http(&address, "GET", "/metrics");
    assert!(metrics.contains(&format!("herald_source_published_total{{source=\"{name}\"}} 2")), "{metrics}");
    assert!(metrics.contains(&format!("herald_source_backlog{{source=\"{name}\"}} 0")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_commits_after_a_later_one_is_not_missed() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, ""));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");

    // A takes the lower change id but commits last; B commits first. An id cursor that moved
    // past B while A was open would never see A.
    let mut a = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {schema}.pipeline_status (event, stage, source, status) VALUES ('STAGE_COMPLETE', 's', 'A', 'SUCCESS')"))
        .execute(&mut *a)
        .await
        .unwrap();
    let mut b = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {schema}.pipeline_status (event, stage, source, status) VALUES ('STAGE_COMPLETE', 's', 'B', 'SUCCESS')"))
        .execute(&mut *b)
        .await
        .unwrap();
    b.commit().await.unwrap();
    // Give herald every chance to read B (and, with a naive cursor, to skip A for good).
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.commit().await.unwrap();
    insert(&pool, &schema, "C", "s", "SUCCESS", 0).await;

    let messages = read_committed(&topic, 3);
    let sources: Vec<String> = messages.iter().map(|m| json(m)["source"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sources.iter().cloned().collect::<BTreeSet<_>>(), ["A", "B", "C"].map(String::from).into());
    assert_eq!(sources.len(), 3, "each once: {sources:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_transaction_and_restart_publish_every_row_exactly_once() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, "batch_size = 20"));
    // The capture starts when it is installed: install it before the legacy writer starts.
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let total = 3000;
    write_rows_through_three_sigkills(&pool, &schema, &config, total).await;
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");

    let messages = read_committed(&topic, total);
    assert_each_record_once(&messages, total, &herald.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_and_source_on_one_table_never_loop() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = source_config(&unique("src"), &schema, &topic, "");
    assert_both_directions_never_loop(&pool, &schema, &topic, &source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_active_instance_is_killed() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, ""));
    let mut first = Herald::run(&config);
    first.wait_for_log("Source active");
    let mut second = Herald::run(&config);
    second.wait_for_log("standing by");
    for i in 0..50 {
        insert(&pool, &schema, "A", "s", "SUCCESS", i).await;
    }
    read_committed(&topic, 50);

    first.signal("KILL");
    first.wait_exit();
    for i in 50..100 {
        insert(&pool, &schema, "A", "s", "SUCCESS", i).await;
    }
    second.wait_for_log("Source active");
    let messages = read_committed(&topic, 100);
    let records: Vec<i64> = messages.iter().map(|m| json(m)["records"].as_i64().unwrap()).collect();
    assert_eq!(records, (0..100).collect::<Vec<_>>(), "in order, each once, across the takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_an_event_goes_to_the_dead_letter_topic_and_the_rest_flows() {
    let pool = pool().await;
    let schema = unique("legacy").replace('-', "_");
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.job_status (src_system text, step text, state text, finished_at timestamp)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let topic = unique("events");
    let dlq = unique("dlq");
    let config = TempConfig::new(&source_config(
        &unique("src"),
        &schema,
        &topic,
        &format!(
            "table = \"{schema}.job_status\"\ndead_letter_topic = \"{dlq}\"\nconstants = {{ event = \"STAGE_COMPLETE\" }}\n\
             columns = {{ source = \"src_system\", stage = \"step\", status = \"state\", timestamp = \"finished_at\" }}"
        ),
    ));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    for (source, state) in [(Some("A"), "SUCCESS"), (None, "SUCCESS"), (Some("B"), "FAILED")] {
        sqlx::query(&format!("INSERT INTO {schema}.job_status VALUES ($1, 'bronze', $2, now())"))
            .bind(source)
            .bind(state)
            .execute(&pool)
            .await
            .unwrap();
    }
    let events = read_committed(&topic, 2);
    let sources: Vec<String> = events.iter().map(|m| json(m)["source"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sources, ["A", "B"]);
    let letters = read_committed(&dlq, 1);
    assert_eq!(letters.len(), 1);
    let reason = header(&letters[0], "__connect.errors.exception.message").unwrap();
    assert!(reason.contains("column `src_system` (the event's `source`) is NULL"), "the column is named: {reason}");
    assert_eq!(json(&letters[0])["state"], "SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_on_the_watched_table_does_not_stall_writers_when_herald_starts() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let name = unique("src");
    let config = TempConfig::new(&source_config(&name, &schema, &topic, ""));
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A legacy job inserted its RUNNING row and is still working when herald starts.
    let mut job = pool.begin().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {schema}.pipeline_status (event, stage, source, status) VALUES ('STAGE_COMPLETE', 'bronze', 'OrdersDB', 'RUNNING')"
    ))
    .execute(&mut *job)
    .await
    .unwrap();
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");

    // Another writer of the same table is not held up by anything herald did at start.
    let writer = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(URL.parse::<sqlx::postgres::PgConnectOptions>().unwrap().options([("statement_timeout", "1s")]))
        .await
        .unwrap();
    let started = Instant::now();
    sqlx::query(&format!(
        "INSERT INTO {schema}.pipeline_status (event, stage, source, status) VALUES ('STAGE_COMPLETE', 'bronze', 'Payments', 'SUCCESS')"
    ))
    .execute(&writer)
    .await
    .unwrap_or_else(|err| panic!("a writer was stalled by herald's start: {err}\n{}", herald.log()));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "the insert took {took:?}");
    // herald's connections say whose they are.
    let named: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(format!("herald/{name}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(named >= 2, "lock and reader connections are named herald/{name}: {named}");

    job.commit().await.unwrap();
    let messages = read_committed(&topic, 2);
    let mut sources: Vec<String> = messages.iter().map(|m| json(m)["source"].as_str().unwrap().to_owned()).collect();
    sources.sort();
    assert_eq!(sources, ["OrdersDB", "Payments"], "both rows, each once");
    assert!(!herald.log().contains("Change capture installed"), "run did no DDL:\n{}", herald.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_changes_are_deleted_and_a_sigkill_mid_stream_duplicates_nothing() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let name = unique("src");
    let config = TempConfig::new(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        source_config(&name, &schema, &topic, "batch_size = 500")
    ));
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let total: i64 = 50_000;
    for chunk in 0..10 {
        sqlx::query(&format!(
            "INSERT INTO {schema}.pipeline_status (event, stage, source, records, status)
             SELECT 'STAGE_COMPLETE', 's', 'src' || (n % 7), n, 'SUCCESS' FROM generate_series($1::bigint, $2::bigint) AS n"
        ))
        .bind(chunk * 5_000)
        .bind(chunk * 5_000 + 4_999)
        .execute(&pool)
        .await
        .unwrap();
    }
    let held = |pool: PgPool, schema: String| async move {
        // Changes, not recorded rows: a statement's rows are recorded in chunks of 100.
        sqlx::query_scalar::<_, i64>(&format!(
            "SELECT coalesce(sum(coalesce(changed_count, 1)), 0)::int8 FROM {schema}.herald_changes"
        ))
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(held(pool.clone(), schema.clone()).await, total);

    // Killed while publishing (and deleting), then restarted.
    let mut first = Herald::run(&config);
    first.wait_for_log("Source active");
    let deadline = Instant::now() + PATIENCE;
    while held(pool.clone(), schema.clone()).await > total - 5_000 {
        assert!(Instant::now() < deadline, "nothing deleted:\n{}", first.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("KILL");
    first.wait_exit();
    let mut herald = Herald::run(&config);
    let admin = admin_address(&mut herald);
    herald.wait_for_log("Source active");

    let messages = read_committed(&topic, total as usize);
    assert_each_record_once(&messages, total as usize, &herald.log());

    // What is published is deleted: at most one batch stays behind.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = held(pool.clone(), schema.clone()).await;
        if left <= 500 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} changes still held:\n{}", herald.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let progress: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.herald_capture_progress WHERE source_name = $1"))
            .bind(&name)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(progress, 1);
    // The admin API shows what the table holds (measured every few seconds).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = http(&admin, "GET", "/sources");
        assert_eq!(status, 200);
        let sources: serde_json::Value = serde_json::from_str(&body).unwrap();
        let source = &sources.as_array().unwrap()[0];
        assert_eq!(source["name"], name.as_str());
        if source["capture_rows"].as_i64().unwrap() <= 500 && source["published"].as_i64().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_alone_creates_the_greenfield_table_and_drop_source_removes_its_capture() {
    let pool = pool().await;
    let schema = unique("fresh").replace('-', "_");
    let name = unique("src");
    let config = TempConfig::new(&source_config(&name, &schema, &unique("events"), ""));
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{schema}.pipeline_status"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(table.is_some(), "the greenfield table exists");
    // Idempotent, and quiet: nothing left to do.
    let again = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));

    // migrate registered the source: no change of the table is deleted before it published it.
    let registered: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.herald_capture_progress WHERE source_name = $1 AND source_table = $2"
    ))
    .bind(&name)
    .bind(format!("{schema}.pipeline_status"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(registered, 1);
    let out = herald().args(["migrate", "--drop-source", &name, "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("forgotten"));
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.herald_capture_progress"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // It was the table's last source: the trigger is gone, the writers pay nothing more.
    let triggers: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1)")
        .bind(format!("{schema}.pipeline_status"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(triggers, 0);
    let unknown = herald().args(["migrate", "--drop-source", "nope", "--config"]).arg(&config.path).output().unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no [[source]] named `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_for_kafka_is_dead_lettered_trimmed_and_the_rows_after_it_flow_exactly_once() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let dlq = format!("{topic}.dlq");
    let name = unique("src");
    let config = TempConfig::new(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        source_config(&name, &schema, &topic, &format!("dead_letter_topic = \"{dlq}\""))
    ));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "before", "s", "SUCCESS", 1).await;
    insert_huge(&pool, &schema, "huge", 2).await;
    insert(&pool, &schema, "after", "s", "SUCCESS", 3).await;
    assert_the_huge_row_was_dead_lettered(&topic, &dlq);

    // Not stuck: ready, and /sources says active.
    let address = admin_address(&mut herald);
    let (status, ready) = http(&address, "GET", "/health/ready");
    assert_eq!(status, 200, "{ready}");
    let (_, sources) = http(&address, "GET", "/sources");
    let sources: serde_json::Value = serde_json::from_str(&sources).unwrap();
    assert_eq!(sources[0]["status"], "active", "{sources}");
    assert!(sources[0]["stuck_since"].is_null(), "{sources}");

    // The cursor moved past it once: a restart publishes nothing again.
    herald.signal("TERM");
    herald.wait_exit();
    insert(&pool, &schema, "later", "s", "SUCCESS", 4).await;
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    let messages = read_committed(&topic, 3);
    assert_eq!(messages.len(), 3, "before, after, later: nothing twice");
    assert_eq!(read_committed(&dlq, 1).len(), 1, "one dead letter");
    herald.signal("TERM");
    herald.wait_exit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rows_become_events_or_dead_letters_and_never_stop_the_source() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let table = odd_table(&pool, &schema).await;
    let (topic, name) = (unique("events"), unique("src"));
    let dlq = format!("{topic}.dlq");
    let config =
        TempConfig::new(&source_config(&name, &schema, &topic, &format!("{table}dead_letter_topic = \"{dlq}\"\n")));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    let (published, dead) = write_hostile_rows(&pool, &schema).await;
    assert_hostile_rows_sorted(&topic, &dlq, &published, dead);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_and_status_read_to_the_end_of_what_the_source_published() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, ""));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "OrdersDB", "bronze", "SUCCESS", 7).await;
    read_committed(&topic, 1);
    // The source commits each batch in a transaction; an aborted one after it ends the topic.
    let aborted = event_json("Payments", "bronze", "SUCCESS", 8);
    produce_transaction(&topic, &[(Some("Payments"), aborted.as_bytes())], false).await;

    let wait = herald_command(&[
        "wait",
        "--topic",
        &topic,
        "--source",
        "OrdersDB",
        "--stage",
        "bronze",
        "--since",
        "1h",
        "--timeout",
        "20s",
    ]);
    assert_eq!(wait.status.code(), Some(0), "{}", String::from_utf8_lossy(&wait.stderr));
    assert!(String::from_utf8_lossy(&wait.stdout).contains("\"records\":7"));
    let status = herald_command(&["status", "--topic", &topic, "--timeout", "20s"]);
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.contains("OrdersDB") && !table.contains("Payments"), "{table}");
    herald.signal("TERM");
    herald.wait_exit();
}

/// Runs `herald <args> --brokers <the test broker>`.
fn herald_command(args: &[&str]) -> std::process::Output {
    herald().args(args).args(["--brokers", BROKERS]).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_names_the_writer_of_its_row() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, ""));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    let options: sqlx::postgres::PgConnectOptions = URL.parse().unwrap();
    let legacy = PgPoolOptions::new().connect_with(options.application_name("nightly-load.sh")).await.unwrap();
    insert(&legacy, &schema, "OrdersDB", "bronze", "SUCCESS", 1).await;
    let messages = read_committed(&topic, 1);
    let writer = header(&messages[0], "herald.origin.writer");
    assert_eq!(writer.as_deref(), Some("nightly-load.sh (herald)"), "who still writes the table");
    herald.signal("TERM");
    herald.wait_exit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_dropped_or_disabled_behind_herald_s_back_stops_the_source_saying_so() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, ""));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "before", "s", "SUCCESS", 1).await;
    read_committed(&topic, 1);
    herald.signal("TERM");
    herald.wait_exit();

    sqlx::query(&format!("DROP TRIGGER herald_capture ON {schema}.pipeline_status")).execute(&pool).await.unwrap();
    insert(&pool, &schema, "unseen", "s", "SUCCESS", 2).await;
    let mut herald = Herald::run(&config);
    let status = herald.wait_exit();
    let log = herald.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("capture trigger (`herald_capture`") && log.contains("is gone"), "{log}");
    assert!(log.contains("herald published every change up to transaction"), "{log}");
    let check = common::herald().args(["check", "--config"]).arg(&config.path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(!check.status.success() && said.contains("is gone") && said.contains("herald reconcile"), "{said}");
    let out = common::herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(!out.status.success(), "migrate does not reinstall it over the gap");

    // While herald runs: disabled, then seen within a poll interval (1 s here).
    let name = config_source_name(&config);
    let out =
        common::herald().args(["migrate", "--drop-source", &name, "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    sqlx::query(&format!("ALTER TABLE {schema}.pipeline_status DISABLE TRIGGER herald_capture"))
        .execute(&pool)
        .await
        .unwrap();
    let status = herald.wait_exit();
    assert!(!status.success() && herald.log().contains("is disabled"), "{}", herald.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_trigger_recovered_as_printed_publishes_each_missing_status_once_and_none_twice() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, "snapshot = \"latest\""));
    let lose = format!("DROP TRIGGER herald_capture ON {schema}.pipeline_status");
    recover_a_lost_capture_as_printed(&pool, &schema, &config, &topic, &lose).await;
}

/// The name of the one `[[source]]` in `config`.
fn config_source_name(config: &TempConfig) -> String {
    let text = std::fs::read_to_string(&config.path).unwrap();
    let line = text.lines().find(|line| line.starts_with("name = ")).unwrap();
    line.trim_start_matches("name = ").trim_matches('"').to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_with_snapshot_latest_publishes_each_pair_s_latest_row_then_streams_without_a_gap_or_double() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, "snapshot = \"latest\""));
    // The capture is installed first (as `herald migrate` does): rows written from then on are
    // captured, and those the snapshot sees are not streamed again.
    let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_the_snapshot_joins_the_stream(&pool, &schema, &config, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_capture_lost_resync_publishes_what_the_topic_lacks_once_and_streams_on() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, "on_capture_lost = \"resync\""));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "A", "s", "SUCCESS", 1).await;
    insert(&pool, &schema, "B", "s", "SUCCESS", 2).await;
    read_committed(&topic, 2);
    herald.signal("TERM");
    herald.wait_exit();

    // Lost while stopped: the trigger dropped, rows written meanwhile.
    sqlx::query(&format!("DROP TRIGGER herald_capture ON {schema}.pipeline_status")).execute(&pool).await.unwrap();
    insert(&pool, &schema, "B", "s", "FAILED", 3).await;
    insert(&pool, &schema, "C", "s", "SUCCESS", 4).await;
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    assert!(herald.log().contains("Capture lost; resyncing") && herald.log().contains("is gone"), "{}", herald.log());
    insert(&pool, &schema, "D", "s", "SUCCESS", 5).await;
    let records = |messages: &[rdkafka::message::OwnedMessage]| -> Vec<i64> {
        messages.iter().map(|m| json(m)["records"].as_i64().unwrap()).collect()
    };
    let messages = read_committed(&topic, 5);
    let mut got = records(&messages);
    got[2..4].sort_unstable();
    assert_eq!(got, [1, 2, 3, 4, 5], "A and B not again; B's newer row and C once; then D streamed");

    // Lost while running: disabled, then seen within a poll interval, and resynced.
    sqlx::query(&format!("ALTER TABLE {schema}.pipeline_status DISABLE TRIGGER herald_capture"))
        .execute(&pool)
        .await
        .unwrap();
    insert(&pool, &schema, "E", "s", "SUCCESS", 6).await;
    let messages = read_committed(&topic, 6);
    assert_eq!(records(&messages)[5], 6, "{}", herald.log());
    insert(&pool, &schema, "F", "s", "SUCCESS", 7).await;
    let messages = read_committed(&topic, 7);
    assert_eq!(records(&messages).len(), 7, "the trigger is back: F streamed, nothing twice; {}", herald.log());
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_a_multi_row_statement_is_published_once_in_the_order_it_was_written() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, "batch_size = 70"));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    let table = format!("{schema}.pipeline_status");

    // A bulk writer: 300 rows in one INSERT … SELECT (more than four Kafka transactions' worth).
    sqlx::query(&format!(
        "INSERT INTO {table} (event, stage, source, records, status)
         SELECT 'STAGE_COMPLETE', 's', 'bulk', g, 'SUCCESS' FROM generate_series(1, 300) AS g"
    ))
    .execute(&pool)
    .await
    .unwrap();
    // Three of them updated by one statement; one UPDATE that matches nothing.
    sqlx::query(&format!(
        "UPDATE {table} SET status = 'FAILED', records = records + 1000 WHERE source = 'bulk' AND records <= 3"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!("UPDATE {table} SET status = 'FAILED' WHERE source = 'nobody'")).execute(&pool).await.unwrap();
    // An upsert that both updates a row and inserts one, and two statements in one transaction.
    let last: i64 =
        sqlx::query_scalar(&format!("SELECT id FROM {table} WHERE records = 300")).fetch_one(&pool).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} (id, event, stage, source, records, status) VALUES
           ($1, 'STAGE_COMPLETE', 's', 'bulk', 2000, 'SUCCESS'),
           ($1 + 100000, 'STAGE_COMPLETE', 's', 'upsert', 2001, 'SUCCESS')
         ON CONFLICT (id) DO UPDATE SET records = EXCLUDED.records"
    ))
    .bind(last)
    .execute(&pool)
    .await
    .unwrap();
    let mut transaction = pool.begin().await.unwrap();
    for records in [3000, 3001] {
        sqlx::query(&format!(
            "INSERT INTO {table} (event, stage, source, records, status) VALUES ('STAGE_COMPLETE', 's', 'tx', $1, 'SUCCESS')"
        ))
        .bind(records)
        .execute(&mut *transaction)
        .await
        .unwrap();
    }
    transaction.commit().await.unwrap();

    let messages = read_committed(&topic, 307);
    let log = herald.log();
    assert_eq!(messages.len(), 307, "each row once, the UPDATE matching nothing publishes nothing: {log}");
    let records: Vec<i64> = messages.iter().map(|m| json(m)["records"].as_i64().unwrap()).collect();
    let operations: Vec<String> =
        messages.iter().map(|m| header(m, "herald.origin.operation").unwrap_or_default()).collect();
    assert_eq!(records[..300], (1..=300).collect::<Vec<_>>(), "the bulk insert in the order it wrote: {log}");
    assert!(operations[..300].iter().all(|op| op == "INSERT"));
    // Recorded in chunks of 100 rows, each row named by its chunk's change id and its place.
    let change = |index: usize| header(&messages[index], "herald.origin.change").unwrap_or_default();
    let (first, place) = change(0).split_once('.').map(|(id, n)| (id.to_owned(), n.to_owned())).unwrap();
    assert_eq!(place, "1");
    assert_eq!(change(99), format!("{first}.100"));
    assert!(change(100).ends_with(".1") && !change(100).starts_with(&format!("{first}.")), "{}", change(100));
    assert!(!change(305).contains('.'), "a one-row statement keeps a plain change id: {}", change(305));
    let mut updated = records[300..303].to_vec();
    updated.sort_unstable();
    assert_eq!(updated, [1001, 1002, 1003]);
    assert!(operations[300..303].iter().all(|op| op == "UPDATE"));
    // Within the upsert, Postgres runs the INSERT statement trigger before the UPDATE one.
    let mut upserted: Vec<(i64, &str)> =
        records[303..305].iter().copied().zip(operations[303..305].iter().map(String::as_str)).collect();
    upserted.sort_unstable();
    assert_eq!(upserted, [(2000, "UPDATE"), (2001, "INSERT")]);
    assert_eq!(records[305..], [3000, 3001], "the transaction's statements in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_level_capture_of_an_earlier_herald_is_swapped_in_one_transaction_losing_and_doubling_nothing() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, ""));
    let table = format!("{schema}.pipeline_status");
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "A", "s", "SUCCESS", 1).await;
    read_committed(&topic, 1);
    herald.signal("TERM");
    herald.wait_exit();
    // The capture as an earlier herald installed it: one row-level trigger.
    sqlx::raw_sql(&format!(
        "DROP TRIGGER herald_capture ON {table}; DROP TRIGGER herald_capture_update ON {table};
         CREATE TRIGGER herald_capture AFTER INSERT OR UPDATE ON {table}
         FOR EACH ROW EXECUTE FUNCTION {schema}.herald_capture()"
    ))
    .execute(&pool)
    .await
    .unwrap();
    // The row-level trigger is a whole capture: with herald's position in Kafka, nothing is lost.
    let check = common::herald().args(["check", "--config"]).arg(&config.path).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    // A writer's transaction is open as herald starts: the swap waits for it (500 ms at a time,
    // out of the lock queue), and its rows are captured by the row-level trigger.
    let mut writer = pool.begin().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} (event, stage, source, records, status) VALUES ('STAGE_COMPLETE', 's', 'W', 2, 'SUCCESS')"
    ))
    .execute(&mut *writer)
    .await
    .unwrap();
    let mut herald = Herald::run(&config);
    herald.wait_for_log("did not get its lock in time");
    sqlx::query(&format!(
        "INSERT INTO {table} (event, stage, source, records, status) VALUES ('STAGE_COMPLETE', 's', 'W', 3, 'SUCCESS')"
    ))
    .execute(&mut *writer)
    .await
    .unwrap();
    writer.commit().await.unwrap();
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "B", "s", "SUCCESS", 4).await;
    sqlx::query(&format!("UPDATE {table} SET records = 5 WHERE records = 4")).execute(&pool).await.unwrap();

    let messages = read_committed(&topic, 5);
    let records: Vec<i64> = messages.iter().map(|m| json(m)["records"].as_i64().unwrap()).collect();
    assert_eq!(records, [1, 2, 3, 4, 5], "each row once, in order, across the swap: {}", herald.log());
    let kinds: Vec<(String, i16)> = sqlx::query_as(&format!(
        "SELECT tgname::text, tgtype FROM pg_trigger WHERE tgrelid = '{table}'::regclass AND NOT tgisinternal ORDER BY 1"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        [("herald_capture".to_owned(), 4), ("herald_capture_update".to_owned(), 16)],
        "statement-level now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_update_trigger_dropped_alone_is_a_lost_capture_too() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let config = TempConfig::new(&source_config(&unique("src"), &schema, &topic, ""));
    let mut herald = Herald::run(&config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "A", "s", "SUCCESS", 1).await;
    read_committed(&topic, 1);
    // Inserts are still captured; updates made now would not be.
    sqlx::query(&format!("DROP TRIGGER herald_capture_update ON {schema}.pipeline_status"))
        .execute(&pool)
        .await
        .unwrap();
    let status = herald.wait_exit();
    let log = herald.log();
    assert!(!status.success() && log.contains("`herald_capture_update`") && log.contains("is gone"), "{log}");
}
