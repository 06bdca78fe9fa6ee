//! After an incident, into Postgres: a replay (`herald offsets reset --to-earliest`, then the
//! route run again) and a redrive (`herald redrive` of as many dead letters) beside the route's
//! own drain of the same events. All three are the route's own path, so they should keep its
//! pace; what differs is what each starts with (a group joining, the dead letters read to judge
//! them). Each round runs the three in turn on one topic and one table, so they alternate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;

use crate::load::{self, Pace};
use crate::process::HeraldProcess;
use crate::stats::{median, runs_row as row, Row};
use crate::Services;

/// The route's name in every round.
const ROUTE: &str = "recovery";

/// One round's times, seconds: from herald's start (the `herald run` process, or the `herald
/// redrive` command) to the last row written, and for the two runs from their partitions being
/// assigned.
struct Round {
    drain: (f64, f64),
    replay: (f64, f64),
    redrive: f64,
    /// The redrive's own account: reading the window to judge it, and sending back.
    redrive_read: f64,
    redrive_send: f64,
}

/// `rounds` of (drain, replay, redrive), `events` each.
pub async fn run(services: &Services, events: u64, rounds: usize) -> Result<Vec<Row>> {
    let mut all = Vec::new();
    for _ in 0..rounds {
        all.push(round(services, events).await?);
    }
    let column = |pick: fn(&Round) -> f64| all.iter().map(pick).collect::<Vec<f64>>();
    let drain = column(|r| r.drain.0);
    let ratio = |seconds: &[f64]| median(seconds) / median(&drain).max(f64::EPSILON);
    let (replay, redrive) = (column(|r| r.replay.0), column(|r| r.redrive));
    Ok(vec![
        row(&format!("the route draining {events} events into Postgres (exec → last row)"), events, &drain, ""),
        row("  the same, from its partitions assigned", events, &column(|r| r.drain.1), ""),
        row(
            &format!("replay: offsets reset --to-earliest, the route run again (exec → last of {events} rows)"),
            events,
            &replay,
            &format!("; replay / drain = {:.2}×", ratio(&replay)),
        ),
        row("  the same, from its partitions assigned", events, &column(|r| r.replay.1), ""),
        row(
            &format!("redrive: herald redrive of {events} dead letters (command start → exit, all written)"),
            events,
            &redrive,
            &format!("; redrive / drain = {:.2}×", ratio(&redrive)),
        ),
        row("  of which reading the letters to judge them", events, &column(|r| r.redrive_read), ""),
        row(
            "  of which sending back: the route run once (sink connected, group joined → all settled, left)",
            events,
            &column(|r| r.redrive_send),
            "",
        ),
    ])
}

fn config(services: &Services, topic: &str, dlq: &str, schema: &str) -> String {
    format!(
        "[kafka]\nbootstrap.servers = \"{}\"\n\n[[route]]\nname = \"{ROUTE}\"\ntopics = [\"{topic}\"]\n\
         dead_letter_topic = \"{dlq}\"\nsink = {{ type = \"postgres\", url = \"{}\", schema = \"{schema}\", mode = \"append\" }}\n",
        services.brokers, services.postgres
    )
}

async fn round(services: &Services, events: u64) -> Result<Round> {
    let run = services.run_name("recovery");
    let (topic, dlq) = (format!("bench.{run}"), format!("bench.{run}.dlq"));
    let schema = Services::schema_for(&run);
    let table = format!("{schema}.pipeline_status");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 1).await.context("creating the topic")?;
    let producer = load::producer(&services.brokers, Pace::Max)?;
    load::produce(&producer, &topic, &run, 0..events, Pace::Max).await?;
    let config = config(services, &topic, &dlq, &schema);
    let path = std::env::temp_dir().join(format!("herald-bench-{run}-cli.toml"));
    std::fs::write(&path, &config).with_context(|| format!("writing {}", path.display()))?;
    let pool = PgPool::connect(&services.postgres).await.context("connecting to Postgres")?;

    let drain = run_until(services, &run, &config, &pool, &table, events).await?;
    cli(&services.herald, &path, &["offsets", "reset", "--route", ROUTE, "--to-earliest"])?;
    let replay = run_until(services, &run, &config, &pool, &table, 2 * events).await?;

    // The incident: a constraint refuses every row, so the events go to the dead-letter topic.
    sqlx::query(&format!("ALTER TABLE {table} ADD CONSTRAINT refuse_all CHECK (records < 0) NOT VALID"))
        .execute(&pool)
        .await?;
    cli(&services.herald, &path, &["offsets", "reset", "--route", ROUTE, "--to-earliest"])?;
    let herald = HeraldProcess::start(&services.herald, &run, &config, None)?;
    until_log_end(&services.brokers, &dlq, events, Duration::from_secs(600)).await?;
    herald.stop()?;
    sqlx::query(&format!("ALTER TABLE {table} DROP CONSTRAINT refuse_all")).execute(&pool).await?;

    let started = Instant::now();
    let output = cli(&services.herald, &path, &["redrive", "--route", ROUTE, "--json"])?;
    let redrive = started.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_slice(&output).context("the redrive's report")?;
    let redriven: u64 = report["classes"]
        .as_object()
        .map(|classes| classes.values().filter_map(|c| c["redriven"].as_u64()).sum())
        .unwrap_or_default();
    ensure!(redriven == events, "the redrive sent back {redriven}, not {events}: {report}");
    let rows = count(&pool, &table).await;
    ensure!(rows == (3 * events) as i64, "{rows} rows after the redrive, not {}", 3 * events);
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await?;
    let _ = std::fs::remove_file(&path);
    let seconds = |key: &str| report[key].as_f64().unwrap_or_default();
    Ok(Round { drain, replay, redrive, redrive_read: seconds("read_seconds"), redrive_send: seconds("send_seconds") })
}

/// Runs herald until `table` holds `rows`; seconds from exec and from the partitions assigned.
async fn run_until(
    services: &Services,
    run: &str,
    config: &str,
    pool: &PgPool,
    table: &str,
    rows: u64,
) -> Result<(f64, f64)> {
    let mut herald = HeraldProcess::start(&services.herald, run, config, None)?;
    let spawned = herald.spawned;
    let assigned = herald.wait_for_log("Partitions assigned.", Duration::from_secs(60))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let now = count(pool, table).await;
        if now >= rows as i64 {
            break;
        }
        ensure!(Instant::now() < deadline, "{now} rows in {table}, not {rows}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = Instant::now();
    herald.stop()?;
    Ok((done.duration_since(spawned).as_secs_f64(), done.duration_since(assigned).as_secs_f64()))
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.unwrap_or(-1)
}

/// Waits until partition 0 of `topic` holds `messages`.
async fn until_log_end(brokers: &str, topic: &str, messages: u64, patience: Duration) -> Result<()> {
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().context("a Kafka client")?;
    let deadline = Instant::now() + patience;
    loop {
        let end = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).map(|(_, end)| end).unwrap_or(0);
        if end >= messages as i64 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{end} dead letters in {topic}, not {messages}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `herald ARGS --config PATH`; its stdout, or why it failed.
fn cli(herald: &Path, path: &PathBuf, args: &[&str]) -> Result<Vec<u8>> {
    let output = Command::new(herald).args(args).arg("--config").arg(path).output().context("running herald")?;
    ensure!(
        output.status.success(),
        "herald {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}
