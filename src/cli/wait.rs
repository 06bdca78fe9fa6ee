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

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::Args;
use herald_core::event::STAGE_COMPLETE;
use herald_core::StageEvent;
use herald_kafka::reader::TopicReader;
use herald_sdk::printable;
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

/// One source (and maybe stage) awaited.
#[derive(Debug)]
struct Pair {
    source: String,
    stage: Option<String>,
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.stage {
            Some(stage) => write!(f, "source `{}`, stage `{stage}`", self.source),
            None => write!(f, "source `{}`", self.source),
        }
    }
}

/// The pairs `--source` and `--stage` describe: no stage (any), one for all, or one each.
fn pairs(sources: &[String], stages: &[String]) -> Result<Vec<Pair>> {
    let stage_of = |index: usize| {
        match stages.len() {
        0 => Ok(None),
        1 => Ok(stages.first().cloned()),
        n if n == sources.len() => Ok(stages.get(index).cloned()),
        n => bail!(
            "--stage is given {n} times for {} --source: give one stage for all sources, or one per source in the same order",
            sources.len()
        ),
    }
    };
    sources
        .iter()
        .enumerate()
        .map(|(index, source)| Ok(Pair { source: source.clone(), stage: stage_of(index)? }))
        .collect()
}

/// A terminal status: the one a wait for `STAGE_COMPLETE` waits for.
fn is_terminal(status: &str) -> bool {
    status == "SUCCESS" || status == "FAILED"
}

/// Whether `event` decides a wait for events named `wanted`: a `STAGE_COMPLETE` (whose status
/// goes `RUNNING` → `SUCCESS`/`FAILED`) when its status is terminal, any other kind
/// (`STAGE_LATE`, `STAGE_MISSING`, a custom one) as soon as it comes.
fn awaited(event: &StageEvent, wanted: &str) -> bool {
    event.event == wanted && (wanted != STAGE_COMPLETE || is_terminal(&event.status))
}

/// The pairs and what has been decided for each.
struct Waiting {
    pairs: Vec<Pair>,
    /// The event that decided each pair.
    decided: Vec<Option<StageEvent>>,
    /// Per pair, per stage: the newest event in the history read so far that either decides
    /// the wait or says a new run began (then the pair waits for that run's outcome).
    newest_in_history: Vec<std::collections::BTreeMap<String, StageEvent>>,
    any: bool,
    allow_failed: bool,
}

impl Waiting {
    /// Decides pair `index` with `event` and prints it; the exit code once `wait` is over.
    fn decide(&mut self, index: usize, event: StageEvent) -> Option<ExitCode> {
        // The event as JSON, with what JSON leaves raw and a terminal would act on escaped.
        println!("{}", printable::json(&event.to_json()));
        let failed = event.status == "FAILED";
        if failed && !self.allow_failed {
            eprintln!(
                "herald wait: stage `{}` of `{}` FAILED",
                printable::printable(&event.stage, printable::LOG_CHARS),
                printable::printable(&event.source, printable::LOG_CHARS)
            );
            return Some(ExitCode::from(EXIT_FAILED));
        }
        if let Some(slot) = self.decided.get_mut(index) {
            *slot = Some(event);
        }
        let done = self.decided.iter().filter(|decided| decided.is_some()).count();
        (done == self.pairs.len() || (self.any && done > 0)).then_some(ExitCode::SUCCESS)
    }

    /// Keeps `event`, read from the history, if it is the newest of its pair and stage: by
    /// timestamp, and on a tie the later offset (read later), as the Postgres sink's upsert
    /// orders them.
    fn remember(&mut self, index: usize, event: StageEvent) {
        let Some(newest) = self.newest_in_history.get_mut(index) else { return };
        match newest.get(&event.stage) {
            Some(kept) if event.timestamp.instant() < kept.timestamp.instant() => {}
            _ => {
                newest.insert(event.stage.clone(), event);
            }
        }
    }

    /// Once the history is read: each pair still open is decided by its newest event there,
    /// unless that event says a new run began (the stage is re-running: wait for its outcome).
    /// With no `--stage`, the newest outcome among the stages whose newest event is one.
    fn settle_history(&mut self, wanted: &str) -> Option<ExitCode> {
        for index in 0..self.pairs.len() {
            if self.decided[index].is_some() {
                continue;
            }
            let newest = std::mem::take(&mut self.newest_in_history[index]);
            let outcome = newest
                .into_values()
                .filter(|event| awaited(event, wanted))
                .max_by_key(|event| event.timestamp.instant());
            if let Some(event) = outcome {
                if let Some(exit) = self.decide(index, event) {
                    return Some(exit);
                }
            }
        }
        None
    }

    fn pending(&self) -> Vec<String> {
        self.pairs.iter().zip(&self.decided).filter(|(_, d)| d.is_none()).map(|(pair, _)| pair.to_string()).collect()
    }
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
    let count = pairs.len();
    let mut waiting = Waiting {
        pairs,
        decided: (0..count).map(|_| None).collect(),
        newest_in_history: (0..count).map(|_| std::collections::BTreeMap::new()).collect(),
        any: args.any,
        allow_failed: args.allow_failed,
    };
    debug!(pairs = ?waiting.pairs, "Reading history before waiting.");

    let mut history_settled = false;
    let (mut last_progress, mut read_count, mut last_read) = (Instant::now(), 0_u64, None::<StageEvent>);
    loop {
        if !history_settled && reader.history_done() {
            history_settled = true;
            if let Some(exit) = waiting.settle_history(&args.event) {
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
        let in_history = read.in_history;
        let Some(event) = read.event else { continue };
        let decides = awaited(&event, &args.event);
        let restarts = args.event == STAGE_COMPLETE && event.starts_a_run();
        if !(decides || restarts) || event.timestamp.instant() < cutoff {
            continue;
        }
        for index in 0..count {
            let pair = &waiting.pairs[index];
            let matches = event.source == pair.source && pair.stage.as_ref().is_none_or(|stage| &event.stage == stage);
            if !matches || waiting.decided[index].is_some() {
                continue;
            }
            if in_history {
                waiting.remember(index, event.clone());
            } else if decides {
                if let Some(exit) = waiting.decide(index, event.clone()) {
                    return Ok(exit);
                }
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(event: &str, stage: &str, status: &str, second: u32) -> StageEvent {
        StageEvent::from_json_str(&format!(
            r#"{{"event":"{event}","stage":"{stage}","source":"A","records":1,"timestamp":"2026-12-06T10:00:{second:02}","status":"{status}"}}"#
        ))
        .unwrap()
    }

    fn waiting(stage: Option<&str>) -> Waiting {
        Waiting {
            pairs: vec![Pair { source: "A".into(), stage: stage.map(str::to_owned) }],
            decided: vec![None],
            newest_in_history: vec![std::collections::BTreeMap::new()],
            any: false,
            allow_failed: false,
        }
    }

    /// The history's events in offset order, as `wait` reads them; whether the pair is decided.
    fn settles(stage: Option<&str>, history: &[StageEvent]) -> bool {
        let mut waiting = waiting(stage);
        for event in history {
            waiting.remember(0, event.clone());
        }
        waiting.settle_history(STAGE_COMPLETE).is_some()
    }

    #[test]
    fn a_stage_re_running_after_its_success_is_not_done() {
        let success = event(STAGE_COMPLETE, "silver", "SUCCESS", 1);
        let running = event(STAGE_COMPLETE, "silver", "RUNNING", 2);
        let started = event("STAGE_STARTED", "silver", "", 2);
        assert!(!settles(Some("silver"), &[success.clone(), running.clone()]), "SUCCESS then RUNNING: open");
        assert!(!settles(Some("silver"), &[success.clone(), started]), "SUCCESS then STAGE_STARTED: open");
        assert!(settles(Some("silver"), &[running.clone(), event(STAGE_COMPLETE, "silver", "SUCCESS", 3)]));
        // One instant: the later offset decides, as the table's upsert does.
        let tied_running = event(STAGE_COMPLETE, "silver", "RUNNING", 1);
        assert!(!settles(Some("silver"), &[success.clone(), tied_running.clone()]));
        assert!(settles(Some("silver"), &[tied_running, success.clone()]));
        // Read out of time order (another partition's event): the newer instant still decides.
        assert!(!settles(Some("silver"), &[running, success]));
    }

    #[test]
    fn without_a_stage_the_newest_outcome_of_a_stage_not_re_running_decides() {
        let bronze_done = event(STAGE_COMPLETE, "bronze", "SUCCESS", 1);
        let silver_running = event(STAGE_COMPLETE, "silver", "RUNNING", 2);
        assert!(settles(None, &[bronze_done.clone(), silver_running.clone()]));
        let bronze_again = event(STAGE_COMPLETE, "bronze", "RUNNING", 3);
        assert!(!settles(None, &[bronze_done, silver_running, bronze_again]));
    }

    #[test]
    fn stages_pair_with_sources_one_for_all_or_one_each() {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let described = |sources: &[&str], stages: &[&str]| -> Result<Vec<String>> {
            Ok(pairs(&strings(sources), &strings(stages))?.iter().map(ToString::to_string).collect())
        };
        assert_eq!(described(&["A"], &[]).unwrap(), ["source `A`"]);
        assert_eq!(
            described(&["A", "B"], &["silver"]).unwrap(),
            ["source `A`, stage `silver`", "source `B`, stage `silver`"]
        );
        assert_eq!(
            described(&["A", "B"], &["s1", "s2"]).unwrap(),
            ["source `A`, stage `s1`", "source `B`, stage `s2`"]
        );
        let error = described(&["A", "B", "C"], &["s1", "s2"]).unwrap_err().to_string();
        assert!(error.contains("--stage is given 2 times for 3 --source"), "{error}");
    }
}
