//! The Postgres source, through the herald binary: a row insert committed → the event read by
//! a `read_committed` Kafka consumer, in both capture modes; and what capture costs the writers
//! of the watched table (their insert rate, Postgres's CPU) against no capture at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use sqlx::PgPool;

use crate::observe::Visible;
use crate::process::HeraldProcess;
use crate::stats::{median, Percentiles, Row};
use crate::Services;

/// How the measured source captures changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Capture {
    /// No source at all: the writers' reference.
    Off,
    /// `capture = "trigger"`.
    Trigger,
    /// `capture = "wal"`.
    Wal,
    /// No herald: Postgres's own logical-decoding client, `pg_recvlogical`, draining a pgoutput
    /// slot of the same publication to /dev/null — what any WAL reader costs Postgres.
    PgRecvlogical,
}

impl Capture {
    /// A short name for run names (schemas, topics, slots).
    fn slug(self) -> &'static str {
        match self {
            Capture::Off => "off",
            Capture::Trigger => "trigger",
            Capture::Wal => "wal",
            Capture::PgRecvlogical => "recvlogical",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Capture::Off => "no capture",
            Capture::Trigger => "trigger capture",
            Capture::Wal => "wal capture",
            Capture::PgRecvlogical => "pg_recvlogical, no herald",
        }
    }
}

/// A status table and, unless `capture` is off, a herald source watching it.
pub(crate) struct Watched {
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
    pub(crate) topic: String,
    pub(crate) slot: String,
    pub(crate) herald: Option<HeraldProcess>,
    recvlogical: Option<std::process::Child>,
}

impl Watched {
    pub(crate) async fn create(services: &Services, capture: Capture) -> Result<Self> {
        let run = services.run_name(&format!("source-{}", capture.slug()));
        let schema = Services::schema_for(&run);
        let topic = format!("bench.{run}");
        let slot = format!("herald_waltest_{}", schema.trim_start_matches("bench_"));
        let pool = PgPool::connect(&services.postgres).await.context("connecting to Postgres")?;
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.context("creating the schema")?;
        // A primary key, as WAL capture needs (and most status tables have).
        sqlx::query(&format!(
            "CREATE TABLE {schema}.status (id bigserial PRIMARY KEY, source text, stage text, status text, seq bigint, at timestamptz DEFAULT now())"
        ))
        .execute(&pool)
        .await
        .context("creating the status table")?;
        let mut watched = Self { pool, schema, topic, slot, herald: None, recvlogical: None };
        match capture {
            Capture::Off => {}
            Capture::PgRecvlogical => watched.start_recvlogical(services).await?,
            Capture::Trigger | Capture::Wal => watched.start(services, &run, capture)?,
        }
        Ok(watched)
    }

    async fn start_recvlogical(&mut self, services: &Services) -> Result<()> {
        let (schema, slot) = (&self.schema, &self.slot);
        sqlx::query(&format!("CREATE PUBLICATION {slot} FOR TABLE {schema}.status WITH (publish = 'insert, update')"))
            .execute(&self.pool)
            .await
            .context("creating the publication")?;
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(slot)
            .execute(&self.pool)
            .await
            .context("creating the slot")?;
        let child = std::process::Command::new("pg_recvlogical")
            .args(["--dbname", &services.postgres, "--slot", slot, "--start", "--file", "/dev/null"])
            .args(["--option", "proto_version=1", "--option", &format!("publication_names={slot}")])
            .args(["--status-interval", "1", "--fsync-interval", "1", "--no-loop"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting pg_recvlogical (Debian package postgresql-client)")?;
        self.recvlogical = Some(child);
        Ok(())
    }

    /// Waits until the slot has confirmed all WAL written so far (pg_recvlogical's progress).
    pub(crate) async fn wait_slot_caught_up(&self) -> Result<()> {
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.pool)
            .await
            .context("reading the WAL position")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let done: Option<bool> = sqlx::query_scalar(
                "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            )
            .bind(&self.slot)
            .bind(&target)
            .fetch_optional(&self.pool)
            .await
            .context("reading the slot")?
            .flatten();
            if done == Some(true) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "pg_recvlogical did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn start(&mut self, services: &Services, run: &str, capture: Capture) -> Result<()> {
        let (schema, topic) = (&self.schema, &self.topic);
        let wal = if capture == Capture::Wal {
            format!("capture = \"wal\"\nslot = \"{}\"", self.slot)
        } else {
            String::new()
        };
        let config = format!(
            r#"[kafka]
bootstrap.servers = "{brokers}"
{debug}
[[source]]
name = "{run}"
type = "postgres"
url = "{url}"
schema = "{schema}"
table = "{schema}.status"
topic = "{topic}"
offsets_topic = "{topic}.offsets"
key_field = "source"
columns = {{ source = "source", stage = "stage", status = "status", records = "seq", timestamp = "at" }}
constants = {{ event = "STAGE_COMPLETE" }}
{wal}
"#,
            brokers = services.brokers,
            url = services.postgres,
            // librdkafka's debug contexts, e.g. `eos,protocol`, to see where a transaction's time goes.
            debug = std::env::var("HERALD_BENCH_KAFKA_DEBUG").map(|d| format!("debug = \"{d}\"")).unwrap_or_default(),
        );
        let mut herald = HeraldProcess::start(&services.herald, run, &config, None)?;
        herald.wait_for_log("Source active.", Duration::from_secs(60))?;
        self.herald = Some(herald);
        Ok(())
    }

    /// Stops herald, drops the schema, the slot and the publication.
    /// Stops herald, leaving its capture installed.
    fn stop_herald(&mut self) -> Result<()> {
        if let Some(herald) = self.herald.take() {
            herald.stop()?;
        }
        Ok(())
    }

    /// Stops herald and puts the row-level trigger of earlier versions in place of herald's
    /// statement-level ones (the function it calls is still in herald's schema).
    async fn swap_to_row_trigger(&mut self) -> Result<()> {
        self.stop_herald()?;
        let schema = &self.schema;
        sqlx::raw_sql(&format!(
            "DROP TRIGGER herald_capture ON {schema}.status; DROP TRIGGER herald_capture_update ON {schema}.status;
             CREATE TRIGGER herald_capture AFTER INSERT OR UPDATE ON {schema}.status
             FOR EACH ROW EXECUTE FUNCTION {schema}.herald_capture()"
        ))
        .execute(&self.pool)
        .await
        .context("swapping in the row-level trigger")?;
        Ok(())
    }

    pub(crate) async fn drop(mut self) -> Result<()> {
        if let Some(herald) = self.herald.take() {
            herald.stop()?;
        }
        if let Some(mut child) = self.recvlogical.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.pool)
            .await
            .context("dropping the schema")?;
        // The slot may stay active for a moment after herald exits.
        for _ in 0..50 {
            let dropped = sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            )
            .bind(&self.slot)
            .execute(&self.pool)
            .await;
            let left: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&self.slot)
                .fetch_optional(&self.pool)
                .await
                .context("looking up the slot")?;
            if dropped.is_ok() && left.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sqlx::query(&format!("DROP PUBLICATION IF EXISTS {}", self.slot))
            .execute(&self.pool)
            .await
            .context("dropping the publication")?;
        Ok(())
    }
}

/// Inserts `rows` rows at `rate` rows/s into a status table herald's source watches (with
/// `capture`), and measures each from its insert's commit to its event in a consumer.
pub async fn run(services: &Services, capture: Capture, rate: f64, rows: u64) -> Result<Row> {
    let watched = Watched::create(services, capture).await?;
    let (pool, schema, topic) = (watched.pool.clone(), watched.schema.clone(), watched.topic.clone());
    let herald = watched.herald.as_ref().context("a source latency run needs a capture mode")?;

    let visible = Arc::new(Visible::default());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = read_committed(&services.brokers, &topic, Arc::clone(&visible), Arc::clone(&stop))?;

    let insert =
        format!("INSERT INTO {schema}.status (source, stage, status, seq) VALUES ($1, 'bench', 'SUCCESS', $2)");
    // Warm-up: one row all the way through, so the measure starts with the reader fetching, not
    // with its first offset lookup.
    sqlx::query(&insert)
        .bind("source-warmup")
        .bind(i64::try_from(crate::load::WARMUP_SEQ).unwrap_or(i64::MAX))
        .execute(&pool)
        .await
        .context("inserting the warm-up row")?;
    visible.wait_for(1, Duration::from_secs(60)).await.with_context(|| herald.log_text())?;
    visible.clear();

    let before = herald.usage()?;
    let start = tokio::time::Instant::now();
    let mut committed = Vec::with_capacity(rows as usize);
    for seq in 0..rows {
        tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
        sqlx::query(&insert)
            .bind(format!("source-{}", seq % crate::load::SOURCES))
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .execute(&pool)
            .await
            .context("inserting a row")?;
        committed.push(Instant::now());
    }
    let patience = Duration::from_secs(60);
    visible.wait_for(rows as usize, patience).await.with_context(|| herald.log_text())?;
    let after = herald.usage()?;
    if std::env::var_os("HERALD_BENCH_SHOW_LOG").is_some() {
        eprintln!("{}", herald.log_text());
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    watched.drop().await?;

    let seen = visible.first_seen();
    let last = seen.iter().map(|(_, at)| *at).max().unwrap_or_else(Instant::now);
    let window = last.saturating_duration_since(committed.first().copied().unwrap_or(last)).as_secs_f64();
    Ok(Row {
        name: format!("source latency, {} (insert committed → read_committed consumer)", capture.label()),
        events: rows as usize,
        offered_rate: Some(rate),
        throughput: rows as f64 / window.max(f64::EPSILON),
        drain_rate: None,
        latency: Percentiles::between(&committed, &seen),
        usage: Some(after),
        cpu_percent: Some((after.cpu_seconds - before.cpu_seconds) / window.max(f64::EPSILON) * 100.0),
        note: "a Kafka transaction per batch of changes".into(),
    })
}

/// One arm of the writer-overhead measure: a capture mode, or the row-level trigger an earlier
/// herald installed (its `herald_capture()` function, one call per row), kept as the "before"
/// of the statement-level capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Capture(Capture),
    /// herald installs its capture, stops, and the statement-level triggers are swapped for the
    /// earlier row-level one. No herald reads meanwhile (the writer's cost does not depend on
    /// it: the trigger runs in the writer's transaction).
    RowTrigger,
    /// herald installs its statement-level capture and stops: the "after" beside
    /// [`Arm::RowTrigger`], with no reader competing for the CPU either.
    StatementTrigger,
}

impl Arm {
    fn label(self) -> &'static str {
        match self {
            Arm::Capture(capture) => capture.label(),
            Arm::RowTrigger => "row-level trigger (before issue 38), no herald",
            Arm::StatementTrigger => "statement-level trigger, no herald",
        }
    }
}

/// What capture costs the table's writers: one writer inserts `rows` single-row transactions as
/// fast as it can, then one `INSERT … SELECT` of `bulk_rows` rows, into a table with no capture,
/// trigger capture, WAL capture, `pg_recvlogical` (the floor of any WAL reader) and the
/// row-level trigger of earlier versions in turn (`rounds` times, alternating, each round
/// starting with the next arm, each run with only its own reader running), and waits until
/// herald has published them all. Reports per arm and writer the median insert rate (and its
/// range), the ratio to no capture in the same round, and Postgres's CPU time (every `postgres`
/// process) per 1,000 rows.
pub async fn writer_overhead(services: &Services, rows: u64, bulk_rows: u64, rounds: usize) -> Result<Vec<Row>> {
    let arms = [
        Arm::Capture(Capture::Off),
        Arm::Capture(Capture::Trigger),
        Arm::RowTrigger,
        Arm::StatementTrigger,
        Arm::Capture(Capture::Wal),
        Arm::Capture(Capture::PgRecvlogical),
    ];
    let mut single = Samples::new(arms.len());
    let mut bulk = Samples::new(arms.len());
    for round in 0..rounds {
        // Each round starts with another arm, so no arm always runs first (or after the same
        // neighbour).
        for step in 0..arms.len() {
            let index = (round + step) % arms.len();
            let arm = arms[index];
            let capture = match arm {
                Arm::Capture(capture) => capture,
                Arm::RowTrigger | Arm::StatementTrigger => Capture::Trigger,
            };
            let mut watched = Watched::create(services, capture).await?;
            match arm {
                Arm::RowTrigger => watched.swap_to_row_trigger().await?,
                Arm::StatementTrigger => watched.stop_herald()?,
                Arm::Capture(_) => {}
            }
            let visible = Arc::new(Visible::default());
            let stop = Arc::new(AtomicBool::new(false));
            let reader = watched
                .herald
                .is_some()
                .then(|| read_committed(&services.brokers, &watched.topic, Arc::clone(&visible), Arc::clone(&stop)))
                .transpose()?;
            let mut writer = watched.pool.acquire().await.context("connecting the writer")?;
            let insert = format!(
                "INSERT INTO {}.status (source, stage, status, seq) VALUES ($1, 'bench', 'SUCCESS', $2)",
                watched.schema
            );
            // Warm the writer's statement cache and, with capture, the whole path.
            sqlx::query(&insert)
                .bind("source-warmup")
                .bind(i64::try_from(crate::load::WARMUP_SEQ).unwrap_or(i64::MAX))
                .execute(&mut *writer)
                .await
                .context("inserting the warm-up row")?;
            if reader.is_some() {
                visible.wait_for(1, Duration::from_secs(60)).await?;
                visible.clear();
            }
            let cpu_before = postgres_cpu_seconds();
            let started = Instant::now();
            for seq in 0..rows {
                sqlx::query(&insert)
                    .bind(format!("source-{}", seq % crate::load::SOURCES))
                    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                    .execute(&mut *writer)
                    .await
                    .context("inserting a row")?;
            }
            let elapsed = started.elapsed().as_secs_f64();
            if reader.is_some() {
                visible.wait_for(rows as usize, Duration::from_secs(120)).await?;
            }
            if capture == Capture::PgRecvlogical {
                watched.wait_slot_caught_up().await?;
            }
            single.push(index, rows as f64 / elapsed, postgres_cpu_seconds() - cpu_before, rows);

            // The bulk writer: one statement, sequence numbers after the single rows'.
            let cpu_before = postgres_cpu_seconds();
            let started = Instant::now();
            sqlx::query(&format!(
                "INSERT INTO {}.status (source, stage, status, seq)
                 SELECT 'source-' || (g % {sources}), 'bench', 'SUCCESS', g FROM generate_series($1::bigint, $2::bigint) AS g",
                watched.schema,
                sources = crate::load::SOURCES
            ))
            .bind(i64::try_from(rows).unwrap_or(i64::MAX))
            .bind(i64::try_from(rows + bulk_rows).unwrap_or(i64::MAX) - 1)
            .execute(&mut *writer)
            .await
            .context("inserting the bulk rows")?;
            let elapsed = started.elapsed().as_secs_f64();
            if reader.is_some() {
                visible.wait_for((rows + bulk_rows) as usize, Duration::from_secs(300)).await?;
            }
            if capture == Capture::PgRecvlogical {
                watched.wait_slot_caught_up().await?;
            }
            bulk.push(index, bulk_rows as f64 / elapsed, postgres_cpu_seconds() - cpu_before, bulk_rows);
            stop.store(true, Ordering::Relaxed);
            if let Some(reader) = reader {
                let _ = reader.join();
            }
            drop(writer);
            watched.drop().await?;
        }
    }
    let mut table = single.rows(&arms, rows, "single-row transactions");
    table.extend(bulk.rows(&arms, bulk_rows, "one INSERT … SELECT"));
    Ok(table)
}

/// Insert rates and Postgres CPU per arm, one sample per round.
struct Samples {
    rates: Vec<Vec<f64>>,
    cpu_per_k: Vec<Vec<f64>>,
}

impl Samples {
    fn new(arms: usize) -> Self {
        Self { rates: vec![Vec::new(); arms], cpu_per_k: vec![Vec::new(); arms] }
    }

    fn push(&mut self, arm: usize, rate: f64, cpu_seconds: f64, rows: u64) {
        self.rates[arm].push(rate);
        self.cpu_per_k[arm].push(cpu_seconds / rows.max(1) as f64 * 1000.0);
    }

    /// A row per arm: its median rate, and each round's rate against the same round's
    /// no-capture rate (arm 0): the machine's drift through the day cancels out of a ratio
    /// taken minutes apart, not of one taken hours apart.
    fn rows(&self, arms: &[Arm], rows: u64, writer: &str) -> Vec<Row> {
        arms.iter()
            .enumerate()
            .map(|(index, arm)| {
                let runs: Vec<String> = self.rates[index].iter().map(|rate| format!("{rate:.0}")).collect();
                let ratios: Vec<f64> = self.rates[index]
                    .iter()
                    .zip(&self.rates[0])
                    .map(|(rate, off)| rate / off.max(f64::EPSILON))
                    .collect();
                let (low, high) = range(&ratios);
                Row {
                    name: format!("writer inserts, {} ({writer})", arm.label()),
                    events: rows as usize,
                    offered_rate: None,
                    throughput: median(&self.rates[index]),
                    drain_rate: None,
                    latency: None,
                    usage: None,
                    cpu_percent: None,
                    note: format!(
                        "runs {}; vs off in the same round: median {:.0}% (range {:.0}–{:.0}%), i.e. {:.2}× the time; Postgres CPU {:.2} s per 1,000 rows (median), all published",
                        runs.join(", "),
                        median(&ratios) * 100.0,
                        low * 100.0,
                        high * 100.0,
                        1.0 / median(&ratios).max(f64::EPSILON),
                        median(&self.cpu_per_k[index])
                    ),
                }
            })
            .collect()
    }
}

fn range(values: &[f64]) -> (f64, f64) {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() {
        (0.0, 0.0)
    } else {
        (low, high)
    }
}

/// User + system CPU seconds of every `postgres` process now (backends, WAL sender, writers).
pub(crate) fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .map(|stat| {
            let fields: Vec<&str> =
                stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
            let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (ticks(11) + ticks(12)) / crate::process::CLOCK_TICKS_PER_SECOND
        })
        .sum()
}

/// A `read_committed` consumer of partition 0 of `topic`, from the beginning, on its own thread.
pub(crate) fn read_committed(
    brokers: &str,
    topic: &str,
    visible: Arc<Visible>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}.reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the reader")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning).context("assigning the topic")?;
    consumer.assign(&assignment).context("assigning the topic")?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                if let Some(payload) = message.payload() {
                    visible.saw_payload(&String::from_utf8_lossy(payload));
                }
            }
        }
    }))
}
