//! What expectations cost a herald that tracks many (source, stage) pairs: resident memory and
//! idle CPU beside the same herald without them, alternating.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::HeraldProcess;
use crate::stats::Row;
use crate::Services;

/// How long herald settles before it is measured, and how long idle CPU is counted.
const SETTLE: Duration = Duration::from_secs(8);
const IDLE: Duration = Duration::from_secs(20);

/// `rounds` × (without, with `pairs` pairs); one row per run.
pub async fn run(services: &Services, pairs: usize, rounds: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for round in 0..rounds {
        for with in [false, true] {
            rows.push(once(services, pairs, with, round).await?);
        }
    }
    Ok(rows)
}

async fn once(services: &Services, pairs: usize, with: bool, round: usize) -> Result<Row> {
    let run = services.run_name("expect");
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 3).await.context("creating the topic")?;
    let mut config = format!(
        "[kafka]\nbootstrap.servers = \"{}\"\n\n[[route]]\nname = \"idle\"\ntopics = [\"{topic}\"]\nsink = {{ type = \"stdout\" }}\n",
        services.brokers
    );
    if with {
        let sources: Vec<String> = (0..pairs).map(|n| format!("\"source-{n:05}\"")).collect();
        config.push_str(&format!(
            "\n[expectations]\ntopic = \"{topic}\"\ngroup_id = \"{run}\"\n\n[[expect]]\nname = \"nightly\"\nstage = \"bronze\"\n\
             by = \"0 6 * * *\"\ntimezone = \"Europe/Berlin\"\nsources = [{}]\n",
            sources.join(", ")
        ));
    }
    let mut herald = HeraldProcess::start(&services.herald, &run, &config, None)?;
    herald.wait_for_log("Partitions assigned.", Duration::from_secs(60))?;
    if with {
        herald.wait_for_logs("Expectations: partition taken over.", 3, Duration::from_secs(60))?;
    }
    let (after, cpu) = herald.idle_usage(SETTLE, IDLE).await?;
    herald.stop()?;
    Ok(Row {
        name: if with {
            format!("idle with expectations, {pairs} pairs (round {})", round + 1)
        } else {
            format!("idle without expectations (round {})", round + 1)
        },
        usage: Some(after),
        cpu_percent: Some(cpu),
        note: format!("RSS {:.1} MiB; {:.2}% of a core over {} s idle", after.rss_mib, cpu, IDLE.as_secs()),
        ..Row::default()
    })
}
