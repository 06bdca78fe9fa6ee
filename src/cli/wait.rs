//! `herald wait`: the seed's `wait_for_stage`, fixed.
//!
//! The seed's consumer starts at `latest`, so a job started after the event was published waits
//! forever. `wait` first reads back `--since` (seeking by Kafka timestamp), and the newest matching
//! event found there decides; only if there is none does it wait for new events. It joins no
//! consumer group and commits nothing, so any number of waiters can run at once.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::Args;
use herald_core::event::STAGE_COMPLETE;
use herald_core::kafka::client_config;
use herald_core::StageEvent;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use tokio::time::Instant;
use tracing::debug;

use super::KafkaArgs;

/// Exit code when the matching event says the stage failed.
const EXIT_FAILED: u8 = 3;
/// Exit code on timeout, as `timeout(1)` uses.
const EXIT_TIMEOUT: u8 = 124;

/// Arguments of `herald wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The data source to wait for, e.g. `OrdersDB`.
    #[arg(long)]
    pub source: String,
    /// Only this stage, e.g. `bronze_ingest`; default any stage.
    #[arg(long)]
    pub stage: Option<String>,
    /// The event name to wait for.
    #[arg(long, default_value = STAGE_COMPLETE)]
    pub event: String,
    /// Also accept events published this long before `wait` started (`0s`: only new ones).
    #[arg(long, default_value = "1h", value_parser = super::parse_duration)]
    pub since: Duration,
    /// Give up after this long (exit 124); default: wait indefinitely.
    #[arg(long, value_parser = super::parse_duration)]
    pub timeout: Option<Duration>,
    /// Exit 0 on a FAILED event too (default: exit 3).
    #[arg(long)]
    pub allow_failed: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// A terminal status: the one `wait` is waiting for.
fn is_terminal(status: &str) -> bool {
    status == "SUCCESS" || status == "FAILED"
}

pub async fn wait(args: WaitArgs) -> Result<ExitCode> {
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let cutoff = Utc::now() - chrono::Duration::from_std(args.since).context("--since is too large")?;
    let props = args.kafka.properties()?;
    let consumer: StreamConsumer = client_config(&props)
        .set("group.id", format!("herald-wait-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("cannot create the Kafka consumer")?;
    let topic = args.kafka.topic.as_str();

    // History: from the first offset at or after the cutoff up to each partition's end now.
    let metadata = tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(15)))
        .with_context(|| format!("cannot reach Kafka at {}", props.bootstrap_servers()))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic `{topic}` does not exist at {}", props.bootstrap_servers());
    }
    let mut by_time = TopicPartitionList::new();
    for &partition in &partitions {
        by_time.add_partition_offset(topic, partition, Offset::Offset(cutoff.timestamp_millis()))?;
    }
    let starts = tokio::task::block_in_place(|| consumer.offsets_for_times(by_time, Duration::from_secs(15)))
        .context("cannot look up offsets by time")?;
    // Partitions with history still to read, and the offset where their history ends.
    let mut history_end: HashMap<i32, i64> = HashMap::new();
    for element in starts.elements() {
        if let Offset::Offset(start) = element.offset() {
            let (_, high) = tokio::task::block_in_place(|| {
                consumer.fetch_watermarks(topic, element.partition(), Duration::from_secs(15))
            })?;
            if start < high {
                history_end.insert(element.partition(), high);
            }
        }
    }
    consumer.assign(&starts).context("cannot assign partitions")?;
    debug!(?history_end, "Reading history before waiting.");

    let mut newest_in_history: Option<StageEvent> = None;
    loop {
        if history_end.is_empty() {
            if let Some(event) = newest_in_history.take() {
                return Ok(finish(&event, args.allow_failed));
            }
        }
        let received = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(received) => received,
                Err(_) => {
                    eprintln!(
                        "herald wait: no {} event for source `{}`{} within {}",
                        args.event,
                        args.source,
                        args.stage.as_deref().map(|s| format!(", stage `{s}`")).unwrap_or_default(),
                        humantime::format_duration(args.timeout.unwrap_or_default())
                    );
                    return Ok(ExitCode::from(EXIT_TIMEOUT));
                }
            },
            None => consumer.recv().await,
        };
        let message = received.context("Kafka consumer error")?;
        let partition = message.partition();
        let in_history = history_end.get(&partition).is_some_and(|&end| message.offset() < end);
        if history_end.get(&partition).is_some_and(|&end| message.offset() + 1 >= end) {
            history_end.remove(&partition);
        }
        let Some(event) = message.payload().and_then(|payload| StageEvent::from_json(payload).ok()) else {
            continue;
        };
        let matches = event.source == args.source
            && event.event == args.event
            && args.stage.as_ref().is_none_or(|stage| &event.stage == stage)
            && is_terminal(&event.status)
            && event.timestamp.instant() >= cutoff;
        if !matches {
            continue;
        }
        if !in_history {
            return Ok(finish(&event, args.allow_failed));
        }
        if newest_in_history.as_ref().is_none_or(|newest| event.timestamp.instant() >= newest.timestamp.instant()) {
            newest_in_history = Some(event);
        }
    }
}

fn finish(event: &StageEvent, allow_failed: bool) -> ExitCode {
    println!("{}", event.to_json());
    if event.status == "FAILED" && !allow_failed {
        eprintln!("herald wait: stage `{}` of `{}` FAILED", event.stage, event.source);
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
