//! What many routes cost: one herald with N stdout routes (a topic and a consumer group each)
//! beside the same herald with one route, idle and draining a backlog, and how long SIGTERM
//! takes to end it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::load::{self, Pace};
use crate::process::HeraldProcess;
use crate::stats::Row;
use crate::Services;

/// How long herald settles before it is measured, and how long idle CPU is counted.
const SETTLE: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(20);

/// For each of `[1, routes]`: idle RSS, threads and CPU, then SIGTERM → exit; with
/// `backlog > 0`, a second pass drains `backlog` events per topic and reports the peak RSS.
pub async fn run(services: &Services, routes: usize, backlog: u64) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for count in [1, routes] {
        rows.push(idle(services, count).await?);
    }
    if backlog > 0 {
        for count in [1, routes] {
            rows.push(drain(services, count, backlog, routes).await?);
        }
    }
    Ok(rows)
}

/// Topics and a config of `count` stdout routes.
async fn setup(services: &Services, count: usize) -> Result<(String, Vec<String>, String)> {
    let run = services.run_name("routes");
    let mut topics = Vec::with_capacity(count);
    let mut config =
        format!("[kafka]\nbootstrap.servers = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n", services.brokers);
    for index in 0..count {
        let topic = format!("bench.{run}.{index}");
        herald_kafka::ensure_topic(&services.kafka(), &topic, 1).await.context("creating a topic")?;
        config.push_str(&format!(
            "\n[[route]]\nname = \"r{index}\"\ntopics = [\"{topic}\"]\nsink = {{ type = \"stdout\" }}\n"
        ));
        topics.push(topic);
    }
    Ok((run, topics, config))
}

fn threads(herald: &HeraldProcess) -> usize {
    std::fs::read_to_string(format!("/proc/{}/status", herald.pid()))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| line.strip_prefix("Threads:").and_then(|n| n.trim().parse().ok()))
        })
        .unwrap_or(0)
}

async fn idle(services: &Services, count: usize) -> Result<Row> {
    let (run, _topics, config) = setup(services, count).await?;
    let mut herald = HeraldProcess::start(&services.herald, &run, &config, None)?;
    herald.wait_for_logs("Partitions assigned.", count, Duration::from_secs(120))?;
    let (after, cpu) = herald.idle_usage(SETTLE, IDLE).await?;
    let thread_count = threads(&herald);
    let stopping = Instant::now();
    herald.stop()?;
    let stop_ms = stopping.elapsed().as_secs_f64() * 1000.0;
    Ok(Row {
        name: format!("{count} routes idle"),
        usage: Some(after),
        cpu_percent: Some(cpu),
        note: format!(
            "RSS {:.1} MiB, {thread_count} threads, {cpu:.2}% of a core over {} s idle; SIGTERM → exit {stop_ms:.0} ms",
            after.rss_mib,
            IDLE.as_secs()
        ),
        ..Row::default()
    })
}

/// `count` routes draining `per_topic` events each, produced before herald starts. With fewer
/// routes than `spread`, the same total goes over fewer topics.
async fn drain(services: &Services, count: usize, per_topic: u64, spread: usize) -> Result<Row> {
    let (run, topics, config) = setup(services, count).await?;
    let total = per_topic * spread as u64;
    let each = total / count as u64;
    let producer = load::producer(&services.brokers, Pace::Max)?;
    for (index, topic) in topics.iter().enumerate() {
        let first = index as u64 * each;
        load::produce(&producer, topic, &run, first..first + each, Pace::Max).await?;
    }
    let mut herald = HeraldProcess::start(&services.herald, &run, &config, None)?;
    let started = Instant::now();
    let mut peak = 0.0_f64;
    loop {
        let usage = herald.usage()?;
        peak = peak.max(usage.peak_rss_mib);
        let delivered = herald.delivered_total(count)?;
        if delivered >= total {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "drained {delivered} of {total} in 300 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let usage = herald.usage()?;
    herald.stop()?;
    Ok(Row {
        name: format!("{count} routes draining {total} events"),
        events: total as usize,
        throughput: total as f64 / took.as_secs_f64(),
        usage: Some(usage),
        note: format!("peak RSS {peak:.1} MiB; {:.1} s from exec to the last event delivered", took.as_secs_f64()),
        ..Row::default()
    })
}
