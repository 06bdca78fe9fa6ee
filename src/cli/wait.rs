//! `herald wait`: the seed's `wait_for_stage`, fixed, and for several stages at once.
//!
//! The seed's consumer starts at `latest`, so a job started after the event was published waits
//! forever. `wait` first reads back `--since` (seeking by Kafka timestamp), and the newest matching
//! event found there decides; only if there is none does it wait for new events. It joins no
//! consumer group and commits nothing, so any number of waiters can run at once.
//!
//! Several `--source`/`--stage` pairs wait once for all of them (`--all`, the default) or for the
//! first (`--any`); each pair's deciding event is printed as it is found, and a FAILED one ends
//! the wait at once with exit 3 unless `--allow-failed`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Args;
use herald_kafka::reader::TopicReader;
use herald_sdk::event::STAGE_COMPLETE;
use herald_sdk::printable;
use herald_sdk::StageEvent;
use herald_wait::{pairs, Decision, Verdict, Waiting};
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
    /// The data source to wait for, e.g. `OrdersDB`; repeat to wait for several
    /// (`--source OrdersDB --source Payments`).
    #[arg(long, required = true)]
    pub source: Vec<String>,
    /// Only this stage, e.g. `bronze_ingest`: given once, it applies to every `--source`;
    /// repeated, the n-th `--stage` goes with the n-th `--source`. Default: any stage.
    #[arg(long)]
    pub stage: Vec<String>,
    /// Return once every source/stage pair is done (the default).
    #[arg(long, conflicts_with = "any")]
    pub all: bool,
    /// Return once any one pair is done.
    #[arg(long)]
    pub any: bool,
    /// The event name to wait for.
    #[arg(long, default_value = STAGE_COMPLETE)]
    pub event: String,
    /// Also accept events published this long before `wait` started (`0s`: only new ones).
    #[arg(long, default_value = "1h", value_parser = super::parse_duration)]
    pub since: Duration,
    /// Give up after this long (exit 124); default: wait indefinitely.
    #[arg(long, value_parser = super::parse_duration)]
    pub timeout: Option<Duration>,
    /// How often to say on stderr what is still awaited and the last event read (`0s`: never).
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    pub progress: Duration,
    /// Count a FAILED event as done (default: any awaited pair FAILED exits 3 at once).
    #[arg(long)]
    pub allow_failed: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Prints `decisions` (each deciding event as JSON); the exit code once one ends the wait.
fn report(decisions: Vec<Decision>) -> Option<ExitCode> {
    for Decision { event, verdict } in decisions {
        // The event as JSON, with what JSON leaves raw and a terminal would act on escaped.
        println!("{}", printable::json(&event.to_json()));
        match verdict {
            Verdict::Decided => {}
            Verdict::Failed => {
                eprintln!(
                    "herald wait: stage `{}` of `{}` FAILED",
                    printable::printable(&event.stage, printable::LOG_CHARS),
                    printable::printable(&event.source, printable::LOG_CHARS)
                );
                return Some(ExitCode::from(EXIT_FAILED));
            }
            Verdict::Done => return Some(ExitCode::SUCCESS),
        }
    }
    None
}

pub async fn wait(args: WaitArgs) -> Result<ExitCode> {
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let cutoff = Utc::now() - chrono::Duration::from_std(args.since).context("--since is too large")?;
    let pairs = pairs(&args.source, &args.stage)?;
    let props = args.kafka.properties()?;
    let topics = args.kafka.read_topics()?;
    let named = format!("`{}`", topics.join("`, `"));
    let opening = TopicReader::open(&props, &topics, cutoff, "wait");
    let mut reader = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, opening).await.map_err(|_| {
            anyhow::anyhow!(
                "Kafka at {} did not answer within --timeout {}",
                props.bootstrap_servers(),
                humantime::format_duration(args.timeout.unwrap_or_default())
            )
        })??,
        None => opening.await?,
    };
    let mut waiting = Waiting::new(pairs, &args.event, cutoff, args.any, args.allow_failed);
    debug!(pairs = ?waiting.pairs(), "Reading history before waiting.");

    let mut history_settled = false;
    let (mut last_progress, mut read_count, mut last_read) = (Instant::now(), 0_u64, None::<StageEvent>);
    loop {
        if !history_settled && reader.history_done() {
            history_settled = true;
            if let Some(exit) = report(waiting.settle_history()) {
                return Ok(exit);
            }
        }
        let timed_out = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let progress_due = async {
            if args.progress.is_zero() {
                std::future::pending().await
            } else {
                tokio::time::sleep_until(last_progress + args.progress).await
            }
        };
        // `next` is cancel-safe: a message is taken only once it is there.
        let read = tokio::select! {
            read = reader.next() => read?,
            () = timed_out => {
                eprintln!(
                    "herald wait: no {} event for {} on {} within {}",
                    args.event,
                    printable::printable(&waiting.pending().join("; "), 4 * printable::LOG_CHARS),
                    printable::printable(&named, 4 * printable::LOG_CHARS),
                    humantime::format_duration(args.timeout.unwrap_or_default())
                );
                return Ok(ExitCode::from(EXIT_TIMEOUT));
            }
            () = progress_due => {
                last_progress = Instant::now();
                eprintln!("herald wait: {}", printable::printable(&progress(&waiting, &named, read_count, last_read.as_ref()), 8 * printable::LOG_CHARS));
                continue;
            }
        };
        if let Some(read) = &read {
            read_count += 1;
            if let Some(event) = &read.event {
                last_read = Some(event.clone());
            }
        }
        // `None`: the history turned out to be read while no message came (it ended in
        // transaction markers); the loop's top settles it.
        let Some(read) = read else { continue };
        let Some(event) = read.event else { continue };
        if let Some(exit) = report(waiting.read(&event, read.in_history)) {
            return Ok(exit);
        }
    }
}

/// What `wait` says while it waits: the pairs still open, where it reads, the last event read.
fn progress(waiting: &Waiting, topics: &str, read: u64, last: Option<&StageEvent>) -> String {
    let last = match last {
        Some(event) => format!(
            "last: {} {} of `{}`/`{}` at {}",
            event.event,
            event.status,
            event.source,
            event.stage,
            event.timestamp.instant().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        None => "none yet".to_owned(),
    };
    format!("still waiting for {} on {topics}; {read} messages read, {last}", waiting.pending().join("; "))
}
