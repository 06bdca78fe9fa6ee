//! A database failover under a Postgres sink route, from herald's side: the standby was behind
//! when the primary died, so the promoted server lacks `lost` events herald had written; the
//! endpoint (a TCP forwarder, as a DNS name or a pooler) then moves to it. Measured: from the
//! endpoint moving to the last lost event written again in the promoted server, with the route's
//! default retry settings. Beside it, in the same run and alternating, the same route draining
//! the same number of events from Kafka into a healthy server (partitions assigned → last
//! written): the route's own pace, so the difference is what the failover costs.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use herald_testkit::{Endpoint, PrivatePostgres};
use sqlx::PgPool;

use crate::load::{self, Pace};
use crate::process::HeraldProcess;
use crate::stats::{median, runs_row as row, Row};
use crate::Services;

/// Events written while the standby is in step, before it falls behind.
const IN_STEP: u64 = 200;

/// `rounds` of (failover, drain), `lost` events each.
pub async fn run(services: &Services, lost: u64, rounds: usize) -> Result<Vec<Row>> {
    let (mut failover, mut drain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        failover.push(failover_once(services, lost).await?);
        drain.push(drain_once(services, lost).await?);
    }
    let ratio = median(&failover) / median(&drain).max(f64::EPSILON);
    Ok(vec![
        row(&format!("failover: endpoint moved → the {lost} lost events written again"), lost, &failover, ""),
        row(
            &format!("the same route draining {lost} events into a healthy server (assigned → last written)"),
            lost,
            &drain,
            &format!("; failover / drain = {ratio:.1}×"),
        ),
    ])
}

/// The route's config: one Postgres append route on `topic`, through `url`, default retries.
fn config(services: &Services, topic: &str, url: &str) -> String {
    format!(
        "[kafka]\nbootstrap.servers = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"failover\"\n\
         topics = [\"{topic}\"]\nsink = {{ type = \"postgres\", url = \"{url}\", mode = \"append\" }}\n",
        services.brokers
    )
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM public.pipeline_status").fetch_one(pool).await.unwrap_or(-1)
}

/// Polls `pool` until it holds `wanted` rows; the instant it first did.
async fn until_rows(pool: &PgPool, wanted: u64, patience: Duration) -> Result<Instant> {
    let started = Instant::now();
    loop {
        let now = rows(pool).await;
        if now == wanted as i64 {
            return Ok(Instant::now());
        }
        ensure!(started.elapsed() < patience, "{now} rows after {patience:?}, not {wanted}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One failover that loses `lost` events; seconds from the endpoint moving to the last of them
/// written again.
async fn failover_once(services: &Services, lost: u64) -> Result<f64> {
    let run = services.run_name("failover");
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 1).await.context("creating the topic")?;
    let primary = PrivatePostgres::start()?;
    let endpoint = Endpoint::start(primary.port()).await?;
    let url = format!("postgres://herald@127.0.0.1:{}/postgres", endpoint.port());
    let producer = load::producer(&services.brokers, Pace::Max)?;
    let mut herald = HeraldProcess::start(&services.herald, &run, &config(services, &topic, &url), None)?;
    herald.wait_for_log("Partitions assigned.", Duration::from_secs(60))?;
    load::produce(&producer, &topic, &run, 0..IN_STEP, Pace::Max).await?;
    let primary_pool = PgPool::connect(&primary.url()).await.context("connecting to the primary")?;
    until_rows(&primary_pool, IN_STEP, Duration::from_secs(60)).await?;
    // The standby is made now (herald's table exists), and stops before the lost events.
    let standby = PrivatePostgres::standby_of(&primary)?;
    let standby_pool = PgPool::connect(&standby.url()).await.context("connecting to the standby")?;
    until_rows(&standby_pool, IN_STEP, Duration::from_secs(60)).await?;
    standby_pool.close().await;
    standby.control("stop")?;
    load::produce(&producer, &topic, &run, IN_STEP..IN_STEP + lost, Pace::Max).await?;
    until_rows(&primary_pool, IN_STEP + lost, Duration::from_secs(120)).await?;
    primary_pool.close().await;
    primary.control("stop -m immediate")?;
    standby.control("start")?;
    standby.control("promote")?;
    let promoted = PgPool::connect(&standby.url()).await.context("connecting to the promoted server")?;
    ensure!(rows(&promoted).await == IN_STEP as i64, "the promoted server should hold only the {IN_STEP} rows before");
    let moved = Instant::now();
    endpoint.move_to(standby.port());
    let done = until_rows(&promoted, IN_STEP + lost, Duration::from_secs(300)).await?;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT kafka_offset) FROM public.pipeline_status")
        .fetch_one(&promoted)
        .await?;
    ensure!(distinct == (IN_STEP + lost) as i64, "{distinct} distinct offsets, not {}", IN_STEP + lost);
    herald.stop()?;
    Ok(done.duration_since(moved).as_secs_f64())
}

/// The same route draining `events` already in Kafka into a healthy private server; seconds
/// from its partitions assigned to the last written.
async fn drain_once(services: &Services, events: u64) -> Result<f64> {
    let run = services.run_name("failover-drain");
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 1).await.context("creating the topic")?;
    let server = PrivatePostgres::start()?;
    let endpoint = Endpoint::start(server.port()).await?;
    let url = format!("postgres://herald@127.0.0.1:{}/postgres", endpoint.port());
    let producer = load::producer(&services.brokers, Pace::Max)?;
    load::produce(&producer, &topic, &run, 0..events, Pace::Max).await?;
    let mut herald = HeraldProcess::start(&services.herald, &run, &config(services, &topic, &url), None)?;
    let assigned = herald.wait_for_log("Partitions assigned.", Duration::from_secs(60))?;
    let pool = PgPool::connect(&server.url()).await.context("connecting to the server")?;
    let done = until_rows(&pool, events, Duration::from_secs(300)).await?;
    herald.stop()?;
    Ok(done.duration_since(assigned).as_secs_f64())
}
