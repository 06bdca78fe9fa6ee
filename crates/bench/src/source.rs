//! The Postgres source: a row insert committed → the event read by a `read_committed` Kafka
//! consumer, through the herald binary.

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
use crate::stats::{Percentiles, Row};
use crate::Services;

/// Inserts `rows` rows at `rate` rows/s into a status table herald's source watches, and
/// measures each from its insert's commit to its event in a consumer.
pub async fn run(services: &Services, rate: f64, rows: u64) -> Result<Row> {
    let run = services.run_name("source");
    let schema = Services::schema_for(&run);
    let topic = format!("bench.{run}");
    let pool = PgPool::connect(&services.postgres).await.context("connecting to Postgres")?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.context("creating the schema")?;
    sqlx::query(&format!(
        "CREATE TABLE {schema}.status (source text, stage text, status text, seq bigint, at timestamptz DEFAULT now())"
    ))
    .execute(&pool)
    .await
    .context("creating the status table")?;
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
"#,
        brokers = services.brokers,
        url = services.postgres,
        // librdkafka's debug contexts, e.g. `eos,protocol`, to see where a transaction's time goes.
        debug = std::env::var("HERALD_BENCH_KAFKA_DEBUG").map(|d| format!("debug = \"{d}\"")).unwrap_or_default(),
    );
    let mut herald = HeraldProcess::start(&services.herald, &run, &config, None)?;
    herald.wait_for_log("Source active.", Duration::from_secs(60))?;

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
    herald.stop()?;
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.context("dropping the schema")?;

    let seen = visible.first_seen();
    let last = seen.iter().map(|(_, at)| *at).max().unwrap_or_else(Instant::now);
    let window = last.saturating_duration_since(committed.first().copied().unwrap_or(last)).as_secs_f64();
    Ok(Row {
        name: "source latency (insert committed → read_committed consumer)".into(),
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

/// A `read_committed` consumer of partition 0 of `topic`, from the beginning, on its own thread.
fn read_committed(
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
