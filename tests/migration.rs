//! The migration journey of docs/migration.md, end to end, with the actors it describes: a
//! legacy producer writing the status table, a legacy poller reading it, a migrated producer
//! (`herald publish`), and new consumers (`herald wait` and a Kafka consumer group). Between the
//! phases the capture is lost behind herald's back and Postgres restarts; after each phase
//! `herald reconcile` exits 0 and every consumer has seen each status exactly once.
//!
//! It runs on a Postgres server of its own (it restarts it), once per capture mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use herald_testkit::PrivatePostgres;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// One status: who reported it, and its sequence number (its `records`).
type Status = (String, i64);

/// The legacy table: a row per job run, written by legacy jobs and (from phase 2) by herald's
/// sink, which marks its rows `updated_by = 'herald'` so the source does not publish them back.
const LEGACY_TABLE: &str = "CREATE TABLE job_status (
    id          bigserial PRIMARY KEY,
    src_system  text NOT NULL,
    step        text NOT NULL,
    state       text NOT NULL,
    row_count   bigint,
    finished_at timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL DEFAULT 'legacy'
)";

struct Journey {
    server: PrivatePostgres,
    pool: PgPool,
    topic: String,
    source: String,
    route: String,
    capture: &'static str,
    /// WAL capture: the slot, the same in every phase's config.
    slot: String,
    /// Every status produced so far, by either kind of producer.
    produced: Vec<Status>,
    next_seq: i64,
}

impl Journey {
    async fn start(capture: &'static str) -> Self {
        let server = PrivatePostgres::start().unwrap();
        let pool = PgPoolOptions::new().max_connections(4).connect(&server.url()).await.unwrap();
        sqlx::query(LEGACY_TABLE).execute(&pool).await.unwrap();
        Self {
            server,
            pool,
            topic: unique("stage-events"),
            source: unique("legacy"),
            route: unique("to-table"),
            capture,
            slot: format!("herald_waltest_{}", rand::random::<u32>()),
            produced: Vec::new(),
            next_seq: 0,
        }
    }

    /// The config of a phase: the source, and from phase 2 the sink route writing the table.
    fn config(&self, with_sink: bool) -> TempConfig {
        let url = self.server.url();
        let slot = if self.capture == "wal" { format!("slot = \"{}\"\n", self.slot) } else { String::new() };
        let mut text = format!(
            r#"{kafka}
[[source]]
name = "{source}"
type = "postgres"
url = "{url}"
table = "public.job_status"
topic = "{topic}"
offsets_topic = "{topic}.offsets"
poll_interval = "1s"
capture = "{capture}"
{slot}on_capture_lost = "resync"
columns = {{ source = "src_system", stage = "step", status = "state", records = "row_count", timestamp = "finished_at" }}
constants = {{ event = "STAGE_COMPLETE" }}
skip_when = {{ column = "updated_by", value = "herald" }}
"#,
            kafka = kafka_section(),
            source = self.source,
            topic = self.topic,
            capture = self.capture,
        );
        if with_sink {
            text.push_str(&format!(
                r#"
[[route]]
name = "{route}"
topics = ["{topic}"]

[route.sink]
type = "postgres"
url = "{url}"

[route.sink.table]
name = "public.job_status"
columns = {{ src_system = "source", step = "stage", state = "status", row_count = "records", finished_at = "timestamp" }}
constants = {{ updated_by = "herald" }}
"#,
                route = self.route,
                topic = self.topic,
            ));
        }
        TempConfig::new(&text)
    }

    /// The legacy producer: `count` job runs written straight into the table.
    async fn legacy_writes(&mut self, sources: &[&str], count: usize) {
        for i in 0..count {
            let source = sources[i % sources.len()];
            let seq = self.seq();
            sqlx::query(
                "INSERT INTO job_status (src_system, step, state, row_count) VALUES ($1, 'ingest', 'SUCCESS', $2)",
            )
            .bind(source)
            .bind(seq)
            .execute(&self.pool)
            .await
            .unwrap();
            self.produced.push((source.to_owned(), seq));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One legacy job run's row with status `state`; its sequence number.
    async fn legacy_state(&mut self, source: &str, state: &str) -> i64 {
        let seq = self.seq();
        sqlx::query("INSERT INTO job_status (src_system, step, state, row_count) VALUES ($1, 'ingest', $2, $3)")
            .bind(source)
            .bind(state)
            .bind(seq)
            .execute(&self.pool)
            .await
            .unwrap();
        self.produced.push((source.to_owned(), seq));
        seq
    }

    /// `herald wait` for `source`'s ingest, as a phase 3 job step runs it.
    fn wait(&self, source: &str, timeout: &str) -> std::process::Output {
        herald()
            .args(["wait", "--brokers", BROKERS, "--topic", &self.topic, "--source", source, "--stage", "ingest"])
            .args(["--since", "1h", "--timeout", timeout])
            .output()
            .unwrap()
    }

    /// The migrated producer: `count` events through `herald publish`.
    fn publishes(&mut self, sources: &[&str], count: usize) {
        for i in 0..count {
            let source = sources[i % sources.len()];
            let seq = self.seq();
            let out = herald()
                .args(["publish", "--brokers", BROKERS, "--topic", &self.topic, "--source", source])
                .args(["--stage", "ingest", "--records", &seq.to_string()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            self.produced.push((source.to_owned(), seq));
        }
    }

    fn seq(&mut self) -> i64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// `herald migrate` on `config`.
    fn migrate(&self, config: &TempConfig) {
        let out = herald().args(["migrate", "--config"]).arg(&config.path).output().unwrap();
        assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The capture lost behind herald's back, as a DBA would: the trigger or the slot dropped.
    async fn lose_the_capture(&self) {
        if self.capture == "wal" {
            sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&self.slot).execute(&self.pool).await.unwrap();
        } else {
            sqlx::query("DROP TRIGGER herald_capture ON job_status").execute(&self.pool).await.unwrap();
        }
    }

    /// The signals that a phase is done: `herald reconcile` exits 0 for the source (and the
    /// route, when there is one), `herald wait` finds the newest status of `waited`, the consumer
    /// group and the table (the poller's view) hold each status exactly once.
    async fn assert_phase_done(&self, phase: &str, config: &TempConfig, consumers: &Consumers, with_sink: bool) {
        let expected: BTreeMap<Status, usize> = self.produced.iter().map(|status| (status.clone(), 1)).collect();
        consumers.wait_for(&expected, phase);
        let table = self.table_statuses().await;
        let legacy_only: BTreeMap<Status, usize> = if with_sink {
            expected.clone()
        } else {
            // Before the sink runs, the table holds what legacy jobs wrote, and only that.
            expected.iter().filter(|((source, _), _)| source.starts_with('L')).map(|(k, v)| (k.clone(), *v)).collect()
        };
        assert_eq!(table, legacy_only, "{phase}: the table (what a poller sees) holds each status once");

        let mut subjects = vec![("--source", self.source.as_str())];
        if with_sink {
            subjects.push(("--route", self.route.as_str()));
        }
        for (flag, name) in subjects {
            let out = herald().args(["reconcile", "--config"]).arg(&config.path).args([flag, name]).output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{phase}: reconcile {flag} {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (source, seq) = self.produced.last().unwrap();
        let out = herald()
            .args(["wait", "--brokers", BROKERS, "--topic", &self.topic, "--source", source, "--stage", "ingest"])
            .args(["--since", "1h", "--timeout", "60s"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{phase}: wait: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("\"records\":{seq}")),
            "{phase}: wait printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Each (source, records) in the table, with how many rows hold it.
    async fn table_statuses(&self) -> BTreeMap<Status, usize> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT src_system, row_count FROM job_status").fetch_all(&self.pool).await.unwrap();
        let mut counts = BTreeMap::new();
        for row in rows {
            *counts.entry(row).or_insert(0) += 1;
        }
        counts
    }
}

/// The new consumers' consumer group, reading the topic for the whole journey.
struct Consumers {
    seen: Arc<Mutex<BTreeMap<Status, usize>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Consumers {
    fn start(topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("group.id", unique("new-consumers"))
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (into, stopped) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                    let event: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
                    let status = (event["source"].as_str().unwrap().to_owned(), event["records"].as_i64().unwrap());
                    *into.lock().unwrap().entry(status).or_insert(0) += 1;
                }
            }
        });
        Self { seen, stop }
    }

    /// Waits until the group has seen `status`.
    fn wait_until_seen(&self, status: &Status) {
        let deadline = Instant::now() + PATIENCE;
        while !self.seen.lock().unwrap().contains_key(status) {
            assert!(Instant::now() < deadline, "the consumer group never saw {status:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the group has seen everything `expected` holds, then a little longer; then
    /// what it saw must be exactly that, each once.
    fn wait_for(&self, expected: &BTreeMap<Status, usize>, phase: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !expected.keys().all(|status| self.seen.lock().unwrap().contains_key(status)) {
            assert!(Instant::now() < deadline, "{phase}: the consumer group saw {:?}", self.seen.lock().unwrap());
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(*self.seen.lock().unwrap(), *expected, "{phase}: the consumer group saw each status once");
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn the_four_phases(capture: &'static str) {
    let mut journey = Journey::start(capture).await;
    let consumers = Consumers::start(&journey.topic);

    // Phase 1: bridge the readers. Legacy jobs keep writing the table; the source publishes it.
    let phase1 = journey.config(false);
    journey.migrate(&phase1);
    let mut herald = Herald::run(&phase1);
    herald.wait_for_log("Source active");
    journey.legacy_writes(&["L1", "L2", "L3"], 12).await;
    journey.assert_phase_done("phase 1", &phase1, &consumers, false).await;
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());

    // Phase 2: move producers. The sink route writes Kafka-born events into the table. Before it
    // starts, the capture is lost and legacy jobs write meanwhile (one run per job: what a
    // resync restores is each job's latest state).
    let phase2 = journey.config(true);
    journey.migrate(&phase2);
    journey.lose_the_capture().await;
    journey.legacy_writes(&["L4", "L5"], 2).await;
    let mut herald = Herald::run(&phase2);
    herald.wait_for_log("Source active");
    assert!(herald.log().contains("Capture lost; resyncing"), "{}", herald.log());
    journey.legacy_writes(&["L1", "L2"], 6).await;
    journey.publishes(&["M1", "M2"], 4);
    journey.assert_phase_done("phase 2", &phase2, &consumers, true).await;

    // Postgres restarts under a running herald: the source and the sink reconnect.
    journey.server.control("restart").unwrap();
    journey.pool = PgPoolOptions::new().max_connections(4).connect(&journey.server.url()).await.unwrap();

    // Phase 3: move pollers. Consumers use events; the table stays current for stragglers.
    journey.legacy_writes(&["L1"], 3).await;
    // A stage re-runs: the job that succeeded marks itself RUNNING again. `wait`, which replaced
    // the poller, waits for this run's outcome instead of starting the next job on the old one.
    let running = journey.legacy_state("L1", "RUNNING").await;
    consumers.wait_until_seen(&("L1".to_owned(), running));
    let early = journey.wait("L1", "3s");
    assert_eq!(
        early.status.code(),
        Some(124),
        "phase 3: wait on a re-running stage: {}",
        String::from_utf8_lossy(&early.stdout)
    );
    let outcome = journey.legacy_state("L1", "SUCCESS").await;
    let done = journey.wait("L1", "60s");
    assert_eq!(done.status.code(), Some(0), "phase 3: {}", String::from_utf8_lossy(&done.stderr));
    assert!(
        String::from_utf8_lossy(&done.stdout).contains(&format!("\"records\":{outcome}")),
        "phase 3: the re-run's outcome"
    );
    journey.publishes(&["M1", "M3"], 3);
    journey.assert_phase_done("phase 3", &phase2, &consumers, true).await;

    // Phase 4: retire the table. No legacy job writes it any more; the last signals hold, then
    // the source is retired, leaving no trigger or slot behind.
    journey.publishes(&["M2"], 2);
    journey.assert_phase_done("phase 4", &phase2, &consumers, true).await;
    // Retiring the source while a herald still runs it is refused, naming who runs it, and
    // takes nothing away from it: the signals still hold afterwards.
    let early = common::herald()
        .args(["migrate", "--drop-source", &journey.source, "--config"])
        .arg(&phase2.path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success() && said.contains("is running in a herald"), "retire while running: {said}");
    journey.legacy_writes(&["L2"], 1).await;
    journey.assert_phase_done("phase 4, after a refused retire", &phase2, &consumers, true).await;
    herald.signal("TERM");
    assert!(herald.wait_exit().success(), "{}", herald.log());
    let out = common::herald()
        .args(["migrate", "--drop-source", &journey.source, "--config"])
        .arg(&phase2.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let slots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots").fetch_one(&journey.pool).await.unwrap();
    let triggers: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgname = 'herald_capture'")
        .fetch_one(&journey.pool)
        .await
        .unwrap();
    assert_eq!((slots, triggers), (0, 0), "the retired source leaves nothing behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_phases_with_trigger_capture() {
    the_four_phases("trigger").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_phases_with_wal_capture() {
    the_four_phases("wal").await;
}
