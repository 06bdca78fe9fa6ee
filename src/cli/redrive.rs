//! `herald redrive`: sends a route's dead letters back through it once their cause is fixed.
//!
//! The redrive is the route itself — its sink, filter, mapping, retries and dead-letter topic —
//! reading the dead-letter topic instead of its own topics, in a group of its own
//! (`<group>.redrive`), from where the last redrive left off to the topic's end when this one
//! started. So only this route's sink sees the events again (no other consumer of the source
//! topic does); a sink that stores offsets with its rows (Postgres) gets each letter exactly
//! once, as it gets any event; a letter that fails again goes back to the dead-letter topic
//! with its new error; and a second redrive sends back nothing already sent. Letters not chosen
//! (`--since`, `--filter`) stay dead: see `herald_offsets::letters`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use herald_core::tap::{Outcome, TapWatch};
use herald_core::{Observer, RouteConfig};
use herald_offsets::letters::{self, Choice, Letter, Verdict};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::registry;

/// Arguments of `herald redrive`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The config file that names the route.
    #[arg(long, short, env = "HERALD_CONFIG")]
    pub config: PathBuf,
    /// The route whose dead letters go back through it.
    #[arg(long, value_name = "NAME")]
    pub route: String,
    /// Only letters that died within this long (`2h`); the older stay dead.
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
    pub since: Option<Duration>,
    /// Only letters whose event has this field value (`source=OrdersDB`); repeat for more, all
    /// must hold. The others stay dead.
    #[arg(long, value_name = "FIELD=VALUE", value_parser = parse_field)]
    pub filter: Vec<(String, String)>,
    /// Print what would be sent back, per error class, and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_field(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((field, value)) if !field.is_empty() => Ok((field.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not FIELD=VALUE (e.g. source=OrdersDB)")),
    }
}

/// What became of the letters of one error class.
#[derive(Debug, Default, Serialize)]
pub struct ClassCounts {
    /// Sent back and delivered (for a dry run: would be sent back).
    redriven: u64,
    /// Sent back and dead again.
    failed_again: u64,
    /// Not chosen: dead still.
    kept: u64,
    /// Passed over by the route's own filter.
    skipped: u64,
}

/// A letter that failed again, and why.
#[derive(Debug, Serialize)]
pub struct FailedAgain {
    partition: i32,
    offset: i64,
    error_class: String,
    error: String,
}

/// What a redrive did, per error class, and the letters that failed again.
#[derive(Debug, Serialize)]
pub struct Report {
    route: String,
    dead_letter_topic: String,
    group: String,
    dry_run: bool,
    /// Letters read: the window from where the last redrive left off to the topic's end.
    letters: usize,
    classes: BTreeMap<String, ClassCounts>,
    failed_again: Vec<FailedAgain>,
    /// Seconds spent reading the window to judge it, and sending back (the route's own run).
    read_seconds: f64,
    send_seconds: f64,
}

/// Letters a redrive's tap may hold before it counts some as missed.
const TAP_BUFFER: usize = 1 << 20;

pub async fn redrive(args: RedriveArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let route = super::find_route(&config, &args.route, &args.config)?;
    let choice = Choice {
        since: args.since.and_then(|ago| chrono::Duration::from_std(ago).ok()).map(|ago| chrono::Utc::now() - ago),
        fields: args.filter.clone(),
    };
    let report = redrive_route(&config, route, choice, args.dry_run).await?;
    print_report(&report, args.json)?;
    // Like `reconcile`: 3 says something is left to look at.
    Ok(if report.failed_again.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// Sends `route`'s dead letters that `choice` picks back through it (with `dry_run`, only
/// counts them), as `herald redrive` and `POST /routes/{name}/redrive` do.
pub async fn redrive_route(
    config: &crate::config::Config,
    route: &RouteConfig,
    choice: Choice,
    dry_run: bool,
) -> Result<Report> {
    let name = &route.name;
    let Some(topic) = route.dead_letter_topic.clone() else {
        bail!("route `{name}` has no dead_letter_topic: it keeps no dead letters to send back");
    };
    let group = format!("{}.redrive", route.group_id());
    let members = herald_offsets::group_members(&config.kafka, &group).await?;
    if !members.is_empty() {
        bail!("a redrive of route `{name}` is running already (group `{group}`: {})", members.join(", "));
    }
    // Where the last redrive left off: the sink's stored offsets where it keeps them, else the group's.
    let (table, positions) = super::offsets::positions_as(config, route, &group, std::slice::from_ref(&topic)).await?;
    let positions = match positions {
        Ok(positions) => positions,
        // Its dead-letter topic does not exist yet: nothing died.
        Err(herald_offsets::OffsetsError::NoTopic(_)) => {
            return Ok(Report {
                route: name.clone(),
                dead_letter_topic: topic,
                group,
                dry_run,
                letters: 0,
                classes: BTreeMap::new(),
                failed_again: Vec::new(),
                read_seconds: 0.0,
                send_seconds: 0.0,
            })
        }
        Err(err) => return Err(err.into()),
    };
    let windows: Vec<(i32, i64, i64)> = positions
        .iter()
        .map(|p| (p.partition, p.resumes_from.unwrap_or(p.log_start).max(p.log_start), p.log_end))
        .collect();
    let starts: HashMap<i32, i64> = windows.iter().map(|(partition, from, _)| (*partition, *from)).collect();
    let reading = std::time::Instant::now();
    let letters = letters::read_letters(&config.kafka, &topic, windows.clone()).await?;
    let read_seconds = reading.elapsed().as_secs_f64();
    let verdicts = letters::judge(&letters, &choice, &starts);
    let mut report = Report {
        route: name.clone(),
        dead_letter_topic: topic.clone(),
        group: group.clone(),
        dry_run,
        letters: letters.len(),
        classes: BTreeMap::new(),
        failed_again: Vec::new(),
        read_seconds,
        send_seconds: 0.0,
    };
    for (letter, verdict) in letters.iter().zip(&verdicts) {
        let counts = report.classes.entry(letter.error_class.clone()).or_default();
        match verdict {
            Verdict::Redrive if dry_run => counts.redriven += 1,
            Verdict::Redrive => {}
            Verdict::Keep | Verdict::AlreadyKept | Verdict::Superseded => counts.kept += 1,
        }
    }
    // Nothing chosen: nothing is sent, kept or passed over, so the same redrive run again
    // changes nothing either.
    if dry_run || !verdicts.contains(&Verdict::Redrive) {
        return Ok(report);
    }
    let kept: Vec<&Letter> = letters
        .iter()
        .zip(&verdicts)
        .filter(|(_, verdict)| **verdict == Verdict::Keep)
        .map(|(letter, _)| letter)
        .collect();
    letters::keep(&config.kafka, &topic, &kept).await.context("keeping the letters not chosen")?;

    let chosen: BTreeSet<(i32, i64)> = letters
        .iter()
        .zip(&verdicts)
        .filter(|(_, verdict)| **verdict == Verdict::Redrive)
        .map(|(letter, _)| (letter.partition, letter.offset))
        .collect();
    let mut redrive_route = route.clone();
    redrive_route.topics = vec![topic.clone()];
    redrive_route.group_id = Some(group.clone());
    redrive_route.start_from = herald_core::config::StartFrom::Earliest;
    redrive_route.only = Some(Arc::new(herald_core::Only {
        chosen: chosen.clone(),
        ends: windows.iter().map(|(partition, _, end)| (*partition, *end)).collect(),
    }));
    let sending = std::time::Instant::now();
    let outcomes = run_once(config, redrive_route, &letters, &chosen).await?;
    report.send_seconds = sending.elapsed().as_secs_f64();
    // Every letter of the window is settled (sent back, dead again, kept or passed over): the
    // next redrive starts at its end. Skipped letters do not move a sink's stored offsets, so
    // they are moved here, where the window ends.
    let ends: Vec<((String, i32), i64)> = windows
        .iter()
        .filter(|(_, from, end)| from < end)
        .map(|(partition, _, end)| ((topic.clone(), *partition), *end))
        .collect();
    if let Some(table) = &table {
        table
            .move_offsets(&group, &ends)
            .await
            .with_context(|| format!("route `{name}`: storing where the redrive ended"))?;
    }
    herald_offsets::commit_group(&config.kafka, &group, &ends).await?;

    let by_offset: HashMap<(i32, i64), &Letter> = letters.iter().map(|l| ((l.partition, l.offset), l)).collect();
    for ((partition, offset), (outcome, error)) in &outcomes {
        let Some(letter) = by_offset.get(&(*partition, *offset)) else { continue };
        if !chosen.contains(&(*partition, *offset)) {
            continue;
        }
        let counts = report.classes.entry(letter.error_class.clone()).or_default();
        match outcome {
            Outcome::Delivered => counts.redriven += 1,
            Outcome::Skipped => counts.skipped += 1,
            Outcome::DeadLettered => {
                counts.failed_again += 1;
                report.failed_again.push(FailedAgain {
                    partition: *partition,
                    offset: *offset,
                    error_class: letter.error_class.clone(),
                    error: error.clone().unwrap_or_default(),
                });
            }
            Outcome::Retried => {}
        }
    }
    Ok(report)
}

/// Runs `route` (the redrive) until every letter of the window is settled, and returns the
/// final outcome of each, with its error.
async fn run_once(
    config: &crate::config::Config,
    route: RouteConfig,
    letters: &[Letter],
    chosen: &BTreeSet<(i32, i64)>,
) -> Result<BTreeMap<(i32, i64), (Outcome, Option<String>)>> {
    let name = route.name.clone();
    let observer = Observer::new()?;
    let shared = observer.route(&name);
    let watch = shared.tap.watch(TAP_BUFFER, None);
    let last: HashMap<i32, i64> = letters.iter().fold(HashMap::new(), |mut last, letter| {
        let at = last.entry(letter.partition).or_insert(letter.offset);
        *at = (*at).max(letter.offset);
        last
    });
    let done = CancellationToken::new();
    let tracking = tokio::spawn(track(watch, last, chosen.clone(), done.clone()));
    let failure = {
        let (shared, done) = (Arc::clone(&shared), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = done.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                let state = shared.state();
                if state.status == "failed" {
                    done.cancel();
                    return state.last_error;
                }
            }
        })
    };
    let bound = registry::bind(&route).await.with_context(|| format!("route `{name}`"))?;
    let (_changes, no_changes) = tokio::sync::mpsc::channel(1);
    let stop = done.clone();
    let interrupted = CancellationToken::new();
    let on_signal = interrupted.clone();
    let shutdown = async move {
        tokio::select! {
            () = stop.cancelled() => {}
            _ = tokio::signal::ctrl_c() => on_signal.cancel(),
        }
    };
    // Not the route's static membership: this is another group, run once.
    let settings = herald_core::RuntimeConfig { instance_id: None, ..config.runtime.clone() };
    herald_core::run(&config.kafka, &settings, vec![bound], Arc::clone(&observer), no_changes, shutdown).await?;
    done.cancel();
    if let Ok(Some(error)) = failure.await {
        bail!("route `{name}` failed while sending its dead letters back: {error}");
    }
    let outcomes = tracking.await.context("the redrive's tap")?;
    if interrupted.is_cancelled() {
        bail!("interrupted: what was sent back stays sent; run the redrive again for the rest");
    }
    Ok(outcomes)
}

/// Keeps the last final outcome of each message the redrive handles, and says `done` once every
/// chosen letter has one and the last letter of every partition was reached.
async fn track(
    mut watch: TapWatch,
    last: HashMap<i32, i64>,
    chosen: BTreeSet<(i32, i64)>,
    done: CancellationToken,
) -> BTreeMap<(i32, i64), (Outcome, Option<String>)> {
    let mut outcomes: BTreeMap<(i32, i64), (Outcome, Option<String>)> = BTreeMap::new();
    let mut reached: BTreeSet<i32> = BTreeSet::new();
    loop {
        let tapped = tokio::select! {
            tapped = watch.recv() => tapped,
            () = done.cancelled() => None,
        };
        let Some(tapped) = tapped else { break };
        if tapped.outcome == Outcome::Retried {
            continue;
        }
        if last.get(&tapped.partition).is_some_and(|end| tapped.offset >= *end) {
            reached.insert(tapped.partition);
        }
        outcomes.insert((tapped.partition, tapped.offset), (tapped.outcome, tapped.error));
        if reached.len() == last.len() && chosen.iter().all(|at| outcomes.contains_key(at)) {
            done.cancel();
        }
    }
    if watch.missed() > 0 {
        tracing::warn!(missed = watch.missed(), "The redrive's tap missed outcomes: its counts are short.");
    }
    outcomes
}

fn print_report(report: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let action = if report.dry_run { "would send back" } else { "sent back" };
    println!(
        "route `{}`: {} dead letters read from `{}` (group `{}`){}",
        report.route,
        report.letters,
        report.dead_letter_topic,
        report.group,
        if report.dry_run { "; dry run: nothing sent" } else { "" }
    );
    if report.letters == 0 {
        println!("nothing to send back: every dead letter was sent back by an earlier redrive");
        return Ok(());
    }
    if report.classes.values().all(|c| c.redriven == 0 && c.failed_again == 0 && c.skipped == 0) {
        println!("none of them is chosen (--since, --filter): nothing sent back, nothing moved");
    }
    let header = ["error class", action, "failed again", "kept dead", "skipped by filter"];
    let mut rows: Vec<[String; 5]> = report
        .classes
        .iter()
        .map(|(class, c)| {
            [
                class.clone(),
                c.redriven.to_string(),
                c.failed_again.to_string(),
                c.kept.to_string(),
                c.skipped.to_string(),
            ]
        })
        .collect();
    let total = report
        .classes
        .values()
        .fold([0u64; 4], |t, c| [t[0] + c.redriven, t[1] + c.failed_again, t[2] + c.kept, t[3] + c.skipped]);
    rows.push([
        "total".to_owned(),
        total[0].to_string(),
        total[1].to_string(),
        total[2].to_string(),
        total[3].to_string(),
    ]);
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header.map(str::to_owned)).chain(rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        println!("  {}", cells.join("  ").trim_end());
    }
    for failed in &report.failed_again {
        println!(
            "failed again: {}[{}]@{} ({}): {}",
            report.dead_letter_topic, failed.partition, failed.offset, failed.error_class, failed.error
        );
    }
    Ok(())
}
