//! The Postgres source with `capture = "wal"` (logical replication), end to end: the same
//! promises as the trigger mode, without a trigger or `herald_changes`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::source::*;
use common::*;
use sqlx::PgPool;

/// A WAL source of its own: a unique slot (named so `scripts/services up` may drop it if a
/// killed run leaves it behind), dropped again by [`WalSource::drop`].
struct WalSource {
    name: String,
    slot: String,
    config: TempConfig,
}

impl WalSource {
    fn new(schema: &str, topic: &str, extra: &str) -> Self {
        let name = unique("wsrc");
        let slot = format!("herald_waltest_{}", rand::random::<u32>());
        let config = TempConfig::new(&format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
            source_config(&name, schema, topic, &format!("capture = \"wal\"\nslot = \"{slot}\"\n{extra}"))
        ));
        Self { name, slot, config }
    }

    fn migrate(&self) {
        let out = herald().args(["migrate", "--config"]).arg(&self.config.path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Drops the slot and the publication, as an operator retiring the source would.
    fn drop_capture(&self) {
        let out = herald().args(["migrate", "--drop-source", &self.name, "--config"]).arg(&self.config.path).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for WalSource {
    /// A test that fails midway still removes its slot, which would otherwise pin WAL on the
    /// services' Postgres for good.
    fn drop(&mut self) {
        let _ = herald().args(["migrate", "--drop-source", &self.name, "--config"]).arg(&self.config.path).output();
    }
}

async fn slot_exists(pool: &PgPool, slot: &str) -> bool {
    sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
        .bind(slot)
        .fetch_optional(pool)
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_capture_publishes_inserts_and_updates_with_no_trigger_and_no_extra_writes() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "");
    source.migrate();
    assert!(slot_exists(&pool, &source.slot).await);
    let triggers: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1)")
        .bind(format!("{schema}.pipeline_status"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(triggers, 0, "no trigger on the watched table");

    let mut herald = Herald::run(&source.config);
    let admin = admin_address(&mut herald);
    herald.wait_for_log("Source active");
    run_a_legacy_job(&pool, &schema).await;
    let messages = read_committed(&topic, 2);
    assert_the_legacy_jobs_events(&messages, &schema, &herald.log());
    let herald_changes: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{schema}.herald_changes"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(herald_changes.is_none(), "WAL capture writes no change table");

    // The slot is measured, and `check` reports it.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, body) = http(&admin, "GET", "/sources");
        let sources: serde_json::Value = serde_json::from_str(&body).unwrap();
        if sources[0]["retained_wal_bytes"].as_i64().unwrap() > 0 && sources[0]["published"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let check = common::herald().args(["check", "--config"]).arg(&source.config.path).output().unwrap();
    assert!(String::from_utf8_lossy(&check.stdout).contains(&format!("slot `{}` holds back", source.slot)));

    herald.signal("TERM");
    assert!(herald.wait_exit().success());
    source.drop_capture();
    assert!(!slot_exists(&pool, &source.slot).await, "drop-source removes the slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_capture_follows_commit_order_and_misses_no_late_commit() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "");
    source.migrate();
    let mut herald = Herald::run(&source.config);
    herald.wait_for_log("Source active");

    // A inserts first and commits last; B commits first.
    let mut a = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {schema}.pipeline_status (event, stage, source, status) VALUES ('STAGE_COMPLETE', 's', 'A', 'SUCCESS')"))
        .execute(&mut *a)
        .await
        .unwrap();
    insert(&pool, &schema, "B", "s", "SUCCESS", 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.commit().await.unwrap();
    insert(&pool, &schema, "C", "s", "SUCCESS", 0).await;

    let messages = read_committed(&topic, 3);
    let sources: Vec<String> = messages.iter().map(|m| json(m)["source"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sources, ["B", "A", "C"], "each once, in commit order");
    herald.signal("TERM");
    herald.wait_exit();
    source.drop_capture();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_capture_sigkill_rounds_publish_every_row_exactly_once() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "batch_size = 50");
    source.migrate();
    let total = 3000;
    write_rows_through_three_sigkills(&pool, &schema, &source.config, total).await;
    let mut herald = Herald::run(&source.config);
    herald.wait_for_log("Source active");

    let messages = read_committed(&topic, total);
    assert_each_record_once(&messages, total, &herald.log());
    // Per source key, in commit order.
    let records: Vec<i64> = messages.iter().map(|m| json(m)["records"].as_i64().unwrap()).collect();
    assert!(records.windows(2).all(|pair| pair[0] < pair[1]), "commit order kept");
    herald.signal("TERM");
    herald.wait_exit();
    source.drop_capture();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_standby_takes_over_the_slot_when_the_active_instance_is_killed() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "");
    source.migrate();
    let mut first = Herald::run(&source.config);
    first.wait_for_log("Source active");
    let mut second = Herald::run(&source.config);
    second.wait_for_log("standing by");
    for i in 0..50 {
        insert(&pool, &schema, "A", "s", "SUCCESS", i).await;
    }
    read_committed(&topic, 50);

    first.signal("KILL");
    first.wait_exit();
    let killed_at = Instant::now();
    for i in 50..100 {
        insert(&pool, &schema, "A", "s", "SUCCESS", i).await;
    }
    second.wait_for_log("Streaming from the replication slot");
    let messages = read_committed(&topic, 100);
    let records: Vec<i64> = messages.iter().map(|m| json(m)["records"].as_i64().unwrap()).collect();
    assert_eq!(records, (0..100).collect::<Vec<_>>(), "in order, each once, across the takeover");
    assert!(killed_at.elapsed() < Duration::from_secs(30), "takeover took {:?}", killed_at.elapsed());
    second.signal("TERM");
    second.wait_exit();
    source.drop_capture();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_sink_and_source_on_one_table_never_loop() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "");
    let section = std::fs::read_to_string(&source.config.path).unwrap();
    let mut herald = assert_both_directions_never_loop(&pool, &schema, &topic, &section).await;
    herald.signal("TERM");
    herald.wait_exit();
    source.drop_capture();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_capture_refuses_a_table_whose_updates_it_would_break() {
    let pool = pool().await;
    let schema = unique("legacy").replace('-', "_");
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
    // No primary key: in a publication of updates, Postgres would refuse this table's UPDATEs.
    sqlx::query(&format!("CREATE TABLE {schema}.job_status (src text, step text, state text, at timestamptz)"))
        .execute(&pool)
        .await
        .unwrap();
    let source = WalSource::new(
        &schema,
        &unique("events"),
        &format!(
            "table = \"{schema}.job_status\"\nconstants = {{ event = \"STAGE_COMPLETE\" }}\n\
             columns = {{ source = \"src\", stage = \"step\", status = \"state\", timestamp = \"at\" }}"
        ),
    );
    let out = herald().args(["migrate", "--config"]).arg(&source.config.path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no replica identity") && stderr.contains("REPLICA IDENTITY FULL"), "{stderr}");
    assert!(!slot_exists(&pool, &source.slot).await, "nothing was created");
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_publication WHERE pubname = $1")
        .bind(&source.slot)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(published, 0);
    // The application's UPDATE still works.
    sqlx::query(&format!("INSERT INTO {schema}.job_status VALUES ('A', 's', 'RUNNING', now())"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("UPDATE {schema}.job_status SET state = 'SUCCESS'")).execute(&pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_capture_publishes_a_huge_transaction_in_batches_exactly_once_across_a_sigkill() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "batch_size = 200");
    source.migrate();
    let mut first = Herald::run(&source.config);
    first.wait_for_log("Streaming from the replication slot");

    // One legacy transaction of 20,000 rows: far more than a batch (and than one Kafka
    // transaction should hold).
    let total: i64 = 20_000;
    sqlx::query(&format!(
        "INSERT INTO {schema}.pipeline_status (event, stage, source, records, status)
         SELECT 'STAGE_COMPLETE', 'bulk', 'src' || (n % 7), n, 'SUCCESS' FROM generate_series(0, $1 - 1) AS n"
    ))
    .bind(total)
    .execute(&pool)
    .await
    .unwrap();
    // Killed once part of it is in Kafka.
    let watcher: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", BROKERS).create().unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, high) = watcher.fetch_watermarks(&topic, 0, Duration::from_secs(5)).unwrap_or((0, 0));
        if high > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing published:\n{}", first.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.signal("KILL");
    first.wait_exit();
    let mut herald = Herald::run(&source.config);
    herald.wait_for_log("Source active");

    let messages = read_committed(&topic, total as usize);
    assert_each_record_once(&messages, total as usize, &herald.log());
    herald.signal("TERM");
    herald.wait_exit();
    source.drop_capture();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_for_kafka_is_dead_lettered_trimmed_and_the_rows_after_it_flow() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let dlq = format!("{topic}.dlq");
    let source = WalSource::new(&schema, &topic, &format!("dead_letter_topic = \"{dlq}\""));
    source.migrate();
    let mut herald = Herald::run(&source.config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "before", "s", "SUCCESS", 1).await;
    insert_huge(&pool, &schema, "huge", 2).await;
    insert(&pool, &schema, "after", "s", "SUCCESS", 3).await;
    assert_the_huge_row_was_dead_lettered(&topic, &dlq);
    herald.signal("TERM");
    herald.wait_exit();
    source.drop_capture();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rows_become_events_or_dead_letters_and_never_stop_the_source() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let table = odd_table(&pool, &schema).await;
    let topic = unique("events");
    let dlq = format!("{topic}.dlq");
    let source = WalSource::new(&schema, &topic, &format!("{table}dead_letter_topic = \"{dlq}\"\n"));
    source.migrate();
    let mut herald = Herald::run(&source.config);
    herald.wait_for_log("Source active");
    let (published, dead) = write_hostile_rows(&pool, &schema).await;
    assert_hostile_rows_sorted(&topic, &dlq, &published, dead);
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    source.drop_capture();
}

/// Runs `herald run` on `config` until it exits; its status and log.
fn run_to_exit(config: &TempConfig) -> (std::process::ExitStatus, String) {
    let mut herald = Herald::run(config);
    let status = herald.wait_exit();
    (status, herald.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_recovered_as_printed_publishes_each_missing_status_once_and_none_twice() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "snapshot = \"latest\"");
    source.migrate();
    let lose = format!("SELECT pg_drop_replication_slot('{}')", source.slot);
    recover_a_lost_capture_as_printed(&pool, &schema, &source.config, &topic, &lose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_or_advanced_behind_herald_s_back_stops_the_source_saying_so() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "");
    source.migrate();
    let mut herald = Herald::run(&source.config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "before", "s", "SUCCESS", 1).await;
    read_committed(&topic, 1);
    herald.signal("TERM");
    herald.wait_exit();

    // A DBA drops the slot (the remedy for one that pins WAL); rows are written meanwhile.
    sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&source.slot).execute(&pool).await.unwrap();
    for seq in 0..5 {
        insert(&pool, &schema, "unseen", "s", "SUCCESS", seq).await;
    }
    let (status, log) = run_to_exit(&source.config);
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("replication slot `{}` is gone", source.slot)), "{log}");
    assert!(log.contains("herald published every change up to LSN") && log.contains("herald reconcile"), "{log}");
    // `herald check` says the capture was lost and what to do, not "not created yet".
    let check = common::herald().args(["check", "--config"]).arg(&source.config.path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(!check.status.success(), "{said}");
    assert!(
        said.contains("is gone") && said.contains("herald reconcile") && !said.contains("not created yet"),
        "{said}"
    );
    // `herald migrate` will not hide the gap by creating the slot again.
    let out = common::herald().args(["migrate", "--config"]).arg(&source.config.path).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is gone"));
    assert!(!slot_exists(&pool, &source.slot).await);

    // Retiring the source forgets its position: the next start captures from then on.
    source.drop_capture();
    source.migrate();
    let mut herald = Herald::run(&source.config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "after", "s", "SUCCESS", 9).await;
    let messages = read_committed(&topic, 2);
    let sources: Vec<String> = messages.iter().map(|m| json(m)["source"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sources, ["before", "after"], "nothing of the gap pretended");
    herald.signal("TERM");
    herald.wait_exit();

    // A slot moved ahead of herald's position (advanced by hand) is as lost.
    insert(&pool, &schema, "skipped", "s", "SUCCESS", 10).await;
    sqlx::query("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())")
        .bind(&source.slot)
        .execute(&pool)
        .await
        .unwrap();
    let (status, log) = run_to_exit(&source.config);
    assert!(!status.success() && log.contains("past herald's position"), "{log}");
    source.drop_capture();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_with_snapshot_latest_joins_the_slot_s_stream_without_a_gap_or_double() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "snapshot = \"latest\"");
    source.migrate();
    assert_the_snapshot_joins_the_stream(&pool, &schema, &source.config, &topic).await;
    source.drop_capture();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_capture_lost_resync_recreates_the_slot_and_publishes_what_the_topic_lacks() {
    let pool = pool().await;
    let schema = greenfield(&pool).await;
    let topic = unique("events");
    let source = WalSource::new(&schema, &topic, "on_capture_lost = \"resync\"");
    source.migrate();
    let mut herald = Herald::run(&source.config);
    herald.wait_for_log("Source active");
    insert(&pool, &schema, "A", "s", "SUCCESS", 1).await;
    read_committed(&topic, 1);
    herald.signal("TERM");
    herald.wait_exit();

    sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&source.slot).execute(&pool).await.unwrap();
    insert(&pool, &schema, "B", "s", "SUCCESS", 2).await;
    let mut herald = Herald::run(&source.config);
    herald.wait_for_log("Source active");
    assert!(herald.log().contains("Capture lost; resyncing"), "{}", herald.log());
    insert(&pool, &schema, "C", "s", "SUCCESS", 3).await;
    let messages = read_committed(&topic, 3);
    let records: Vec<i64> = messages.iter().map(|m| json(m)["records"].as_i64().unwrap()).collect();
    assert_eq!(records, [1, 2, 3], "A once, B by the resync, C streamed");
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    source.drop_capture();
}
