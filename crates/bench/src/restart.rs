//! Recovery after a crash: a herald SIGKILLed with its partitions assigned and started again at
//! once on the same config. Measured: from the new process's exec to the first event it
//! delivers (an event produced right after the exec), with dynamic group membership (the
//! default: the group first waits out the dead member's `session.timeout.ms`) and with
//! `[runtime] instance_id` (static membership: the new process takes the dead one's place).
//! Alternating, medians and ranges.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::{self, Pace};
use crate::observe::Visible;
use crate::process::HeraldProcess;
use crate::stats::Row;
use crate::Services;

/// `rounds` of (dynamic, static), each a kill and a restart.
pub async fn run(services: &Services, rounds: usize) -> Result<Vec<Row>> {
    let mut dynamic = Vec::new();
    let mut fixed = Vec::new();
    for _ in 0..rounds {
        dynamic.push(once(services, false).await?);
        fixed.push(once(services, true).await?);
    }
    Ok(vec![row("dynamic membership (default)", dynamic), row("static membership (`[runtime] instance_id`)", fixed)])
}

/// One kill and restart; seconds from the restart's exec to its first delivery.
async fn once(services: &Services, static_membership: bool) -> Result<f64> {
    let run = services.run_name("restart");
    let topic = format!("bench.{run}");
    herald_kafka::ensure_topic(&services.kafka(), &topic, 3).await.context("creating the topic")?;
    let runtime = if static_membership { format!("[runtime]\ninstance_id = \"bench-{run}\"\n") } else { String::new() };
    // Kafka's own session timeout (45 s), as a user has it unless they changed it.
    let config = format!(
        "[kafka]\nbootstrap.servers = \"{}\"\n{runtime}\n[[route]]\nname = \"r\"\ntopics = [\"{topic}\"]\n\
         sink = {{ type = \"stdout\" }}\n",
        services.brokers
    );
    let producer = load::producer(&services.brokers, Pace::Rate(1.0))?;
    let first_seen = Arc::new(Visible::default());
    let mut first = HeraldProcess::start(&services.herald, &run, &config, Some(Arc::clone(&first_seen)))?;
    first.wait_for_log("Partitions assigned.", Duration::from_secs(120))?;
    load::produce(&producer, &topic, &run, 0..1, Pace::Max).await?;
    first_seen.wait_for(1, Duration::from_secs(60)).await?;
    // Auto-commit stores the delivered offset within a second: let it, so the restart has
    // nothing of the first run's to deliver again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill()?;
    let seen = Arc::new(Visible::default());
    let second = HeraldProcess::start(&services.herald, &run, &config, Some(Arc::clone(&seen)))?;
    let spawned = second.spawned;
    load::produce(&producer, &topic, &run, 1..2, Pace::Max).await?;
    seen.wait_for(1, Duration::from_secs(180)).await?;
    let seconds = seen.first_seen().first().map_or(0.0, |(_, at)| at.duration_since(spawned).as_secs_f64());
    second.stop()?;
    Ok(seconds)
}

fn row(what: &str, mut seconds: Vec<f64>) -> Row {
    seconds.sort_by(f64::total_cmp);
    let median = seconds.get(seconds.len() / 2).copied().unwrap_or_default();
    let listed: Vec<String> = seconds.iter().map(|s| format!("{s:.1}")).collect();
    Row {
        name: format!("SIGKILL, restart at once: exec → first delivery, {what}"),
        events: seconds.len(),
        offered_rate: None,
        throughput: 0.0,
        drain_rate: None,
        latency: None,
        usage: None,
        cpu_percent: None,
        note: format!("median {median:.1} s over {} runs ({} s)", seconds.len(), listed.join(", ")),
    }
}
