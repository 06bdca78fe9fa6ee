//! `herald reconcile`: does a status table agree with a topic? The evidence a team needs before
//! it switches a poller off or retires a table.
//!
//! For each (source, stage) it compares the table's latest row with the topic's latest event
//! over `--since` (instant, event, status, records) and lists every pair that differs, as
//! `status` lists them. It works both ways: a source (table → topic; `--repair` publishes the
//! rows the topic lacks) and a Postgres sink route (topic → table; `--repair` writes the events
//! the table lacks). Memory holds one row and one event per pair, never the table or the topic.
//!
//! Exit 0 when they agree, 3 when they differ (after `--repair`: when something is left that it
//! could not repair), 1 on error, 124 when reading the topic outlasts `--timeout`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::Args;
use herald_board::{compare, render_divergences, Board, Compared, Divergence, Verdict};
use herald_core::{RouteConfig, SourceSpec, StageEvent};
use herald_kafka::reader::{Read, TopicReader};
use herald_kafka::KafkaProperties;
use herald_sdk::{LazyEvent, SinkRecord};
use herald_sink_postgres::PostgresSinkConfig;
use herald_source_postgres::{PostgresSourceConfig, TableRow};
use serde::Serialize;

use crate::config::Config;
use crate::registry;

/// Exit code when table and topic differ.
const EXIT_DIVERGENT: u8 = 3;
/// Exit code when reading the topic outlasted `--timeout`.
const EXIT_TIMEOUT: u8 = 124;
/// How much earlier than `--since` the topic is read: an event is published after the instant
/// it carries, but the producer's and the broker's clocks may disagree (as `max_clock_skew`).
const PUBLISH_SLACK: Duration = Duration::from_secs(3600);

/// Arguments of `herald reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The config file that names the source or route.
    #[arg(long, short, env = "HERALD_CONFIG")]
    pub config: PathBuf,
    /// Compare a Postgres source's table with the topic it publishes to.
    #[arg(long, value_name = "NAME", required_unless_present = "route", conflicts_with = "route")]
    pub source: Option<String>,
    /// Compare a Postgres sink route's table with the topics it reads.
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// The window: pairs whose latest row and latest event are both older are not compared.
    #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
    pub since: Duration,
    /// Make them agree where herald can: a source publishes the rows the topic lacks or has
    /// older (exactly once: a second repair publishes nothing); a route writes the events the
    /// table lacks or has older, as the sink writes them.
    #[arg(long)]
    pub repair: bool,
    /// Print one JSON object: the divergences, what was repaired, what was left out.
    #[arg(long)]
    pub json: bool,
    /// Give up reading the topic after this long (exit 124).
    #[arg(long, default_value = "120s", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

/// What a reconcile found, and did.
#[derive(Debug, Serialize)]
struct Report {
    /// `source <name>` or `route <name>`.
    subject: String,
    table: String,
    topics: Vec<String>,
    since: DateTime<Utc>,
    /// Pairs on either side.
    pairs: usize,
    divergences: Vec<Divergence>,
    /// Of the divergences, how many `--repair` repaired.
    repaired: usize,
    /// Divergences `--repair` cannot repair from this side (it is the other side that lacks).
    unrepairable: usize,
    /// Route only: events the route has not reached yet (beyond its stored offsets), not compared.
    in_flight: usize,
    /// Route only: events the table refused (in the dead-letter topic), not compared.
    dead_lettered: usize,
}

pub async fn reconcile(args: ReconcileArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let since = Utc::now() - chrono::Duration::from_std(args.since).context("--since is too large")?;
    let report = match (&args.source, &args.route) {
        (Some(name), _) => {
            let spec = find_source(&config, name, &args.config)?;
            reconcile_source(&config, spec, since, &args).await?
        }
        (None, Some(name)) => {
            let route = find_route(&config, name, &args.config)?;
            reconcile_route(&config, route, since, &args).await?
        }
        (None, None) => bail!("say what to reconcile: --source NAME or --route NAME"),
    };
    let Some(report) = report else {
        return Ok(ExitCode::from(EXIT_TIMEOUT));
    };
    print_report(&report, args.json, args.repair)?;
    let left = if args.repair { report.unrepairable } else { report.divergences.len() };
    Ok(if left == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_DIVERGENT) })
}

fn find_source<'a>(config: &'a Config, name: &str, path: &std::path::Path) -> Result<&'a SourceSpec> {
    config.sources.iter().find(|spec| spec.name == name).with_context(|| {
        let known: Vec<&str> = config.sources.iter().map(|spec| spec.name.as_str()).collect();
        format!("{}: no [[source]] named `{name}` (sources: {})", path.display(), list(&known))
    })
}

fn find_route<'a>(config: &'a Config, name: &str, path: &std::path::Path) -> Result<&'a RouteConfig> {
    config.routes.iter().find(|route| route.name == name).with_context(|| {
        let known: Vec<&str> = config.routes.iter().map(|route| route.name.as_str()).collect();
        format!("{}: no [[route]] named `{name}` (routes: {})", path.display(), list(&known))
    })
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// A source: the table's latest rows against the source's topic; repair publishes rows.
async fn reconcile_source(
    config: &Config,
    spec: &SourceSpec,
    since: DateTime<Utc>,
    args: &ReconcileArgs,
) -> Result<Option<Report>> {
    let Some(source) = registry::typed_source::<PostgresSourceConfig>(spec)? else {
        bail!("source `{}` is of type `{}`; reconcile compares Postgres tables", spec.name, spec.kind);
    };
    let context = || format!("source `{}`", spec.name);
    let rows = source.latest_rows(&spec.name, Some(since)).await.with_context(context)?;
    let table = Board::new();
    let mut rows_by_pair: BTreeMap<(String, String), TableRow> = BTreeMap::new();
    for row in rows {
        table.apply(&row.event);
        rows_by_pair.insert((row.event.source.clone(), row.event.stage.clone()), row);
    }
    let topics = vec![source.topic.clone()];
    let Some(topic) = read_topic(&config.kafka, &topics, since, args.timeout, |_| true).await? else {
        return Ok(None);
    };
    let divergences = compare(&table.snapshot(), &topic.board.snapshot(), Compared::ALL);
    let (repairable, unrepairable): (Vec<&Divergence>, Vec<&Divergence>) = divergences
        .iter()
        .partition(|d| matches!(d.verdict, Verdict::TableOnly | Verdict::TableNewer | Verdict::Differs));
    let mut repaired = 0;
    if args.repair && !repairable.is_empty() {
        let rows: Vec<TableRow> =
            repairable.iter().filter_map(|d| rows_by_pair.get(&(d.source.clone(), d.stage.clone())).cloned()).collect();
        repaired = source.repair(&spec.name, &config.kafka, &rows).await.with_context(context)?;
    }
    Ok(Some(Report {
        subject: format!("source {}", spec.name),
        table: source.table.clone().unwrap_or_else(|| format!("{}.pipeline_status", source.schema)),
        pairs: pairs(&table, &topic.board),
        unrepairable: unrepairable.len() + repairable.len().saturating_sub(repaired),
        topics,
        since,
        divergences,
        repaired,
        in_flight: 0,
        dead_lettered: 0,
    }))
}

/// A Postgres sink route: the topics it reads against its table; repair writes events.
async fn reconcile_route(
    config: &Config,
    route: &RouteConfig,
    since: DateTime<Utc>,
    args: &ReconcileArgs,
) -> Result<Option<Report>> {
    let Some(sink) = registry::typed_sink::<PostgresSinkConfig>(route)? else {
        bail!("route `{}` writes to a `{}` sink; reconcile compares Postgres tables", route.name, route.sink.kind);
    };
    let context = || format!("route `{}`", route.name);
    let written = sink.written(&route.name, &route.group_id()).await.with_context(context)?;
    let (mut in_flight, mut dead_lettered) = (0, 0);
    // What the route has handled and the table took; the rest is not the table's to have yet.
    let handled = |read: &Read| {
        let next = written.next_offsets.get(&(read.topic.clone(), read.partition)).copied().unwrap_or(0);
        if read.offset >= next {
            return Handled::InFlight;
        }
        if written.rejected.contains(&(read.topic.clone(), read.partition, read.offset)) {
            return Handled::DeadLettered;
        }
        Handled::Written
    };
    let filter = &route.filter;
    let Some(topic) = read_topic(&config.kafka, &route.topics, since, args.timeout, |read| {
        let Some(event) = &read.event else { return false };
        if !filter.matches(event) {
            return false;
        }
        match handled(read) {
            Handled::Written => true,
            Handled::InFlight => {
                in_flight += 1;
                false
            }
            Handled::DeadLettered => {
                dead_lettered += 1;
                false
            }
        }
    })
    .await?
    else {
        return Ok(None);
    };
    let table = Board::new();
    for event in sink.latest_events(&route.name).await.with_context(context)? {
        if event.timestamp.instant() >= since {
            table.apply(&event);
        }
    }
    let keeps = |field| sink.keeps_field(field).with_context(context);
    let fields = Compared { event: keeps("event")?, status: keeps("status")?, records: keeps("records")? };
    let divergences = compare(&table.snapshot(), &topic.board.snapshot(), fields);
    let (repairable, unrepairable): (Vec<&Divergence>, Vec<&Divergence>) = divergences
        .iter()
        .partition(|d| matches!(d.verdict, Verdict::TopicOnly | Verdict::TopicNewer | Verdict::Differs));
    let mut repaired = 0;
    if args.repair && !repairable.is_empty() {
        let records: Vec<SinkRecord> = repairable
            .iter()
            .filter_map(|d| topic.latest.get(&(d.source.clone(), d.stage.clone())))
            .map(|read| SinkRecord {
                event: LazyEvent::from(read.event.clone()),
                topic: Arc::from(read.topic.as_str()),
                partition: read.partition,
                offset: read.offset,
                origin: read.origin.clone(),
                raw: None,
            })
            .collect();
        repaired = sink.repair(&route.name, &records).await.with_context(context)?;
    }
    Ok(Some(Report {
        subject: format!("route {}", route.name),
        table: sink
            .table
            .as_ref()
            .map_or_else(|| format!("{}.pipeline_status_latest", sink.schema), |t| t.name.clone()),
        topics: route.topics.clone(),
        pairs: pairs(&table, &topic.board),
        unrepairable: unrepairable.len() + repairable.len().saturating_sub(repaired),
        since,
        divergences,
        repaired,
        in_flight,
        dead_lettered,
    }))
}

enum Handled {
    Written,
    InFlight,
    DeadLettered,
}

/// The latest event of each pair on some topics.
struct TopicSide {
    board: Board,
    /// Where each pair's latest event was read, and the event.
    latest: BTreeMap<(String, String), LatestRead>,
}

struct LatestRead {
    event: StageEvent,
    topic: String,
    partition: i32,
    offset: i64,
    origin: Option<String>,
}

/// Reads `topics` from a little before `since` to their end when reading starts, keeping the
/// latest event per pair dated at or after `since` among those `keep` takes. `None` on timeout.
async fn read_topic(
    kafka: &KafkaProperties,
    topics: &[String],
    since: DateTime<Utc>,
    timeout: Duration,
    mut keep: impl FnMut(&Read) -> bool,
) -> Result<Option<TopicSide>> {
    let from = since - chrono::Duration::from_std(PUBLISH_SLACK).unwrap_or_default();
    let mut reader = TopicReader::open(kafka, topics, from, "reconcile").await?;
    let board = Board::new();
    let mut latest = BTreeMap::new();
    let read_history = async {
        while !reader.history_done() {
            let Some(read) = reader.next().await? else { break };
            if !read.in_history || !keep(&read) {
                continue;
            }
            let Some(event) = &read.event else { continue };
            if event.timestamp.instant() < since || !board.apply(event) {
                continue;
            }
            let pair = (event.source.clone(), event.stage.clone());
            latest.insert(
                pair,
                LatestRead {
                    event: event.clone(),
                    topic: read.topic.clone(),
                    partition: read.partition,
                    offset: read.offset,
                    origin: read.origin.clone(),
                },
            );
        }
        Ok::<_, herald_kafka::reader::HistoryError>(())
    };
    match tokio::time::timeout(timeout, read_history).await {
        Ok(read) => read?,
        Err(_) => {
            eprintln!(
                "herald reconcile: reading {} took longer than {}; try a shorter --since or a longer --timeout",
                topics.join(", "),
                humantime::format_duration(timeout)
            );
            return Ok(None);
        }
    }
    Ok(Some(TopicSide { board, latest }))
}

/// How many (source, stage) pairs are on either side.
fn pairs(table: &Board, topic: &Board) -> usize {
    let mut keys: Vec<(String, String)> = table
        .snapshot()
        .cells
        .into_iter()
        .chain(topic.snapshot().cells)
        .map(|cell| (cell.source, cell.stage))
        .collect();
    keys.sort();
    keys.dedup();
    keys.len()
}

fn print_report(report: &Report, json: bool, repair: bool) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(report).context("encoding the report")?;
        println!("{}", herald_sdk::printable::json(&text));
        return Ok(());
    }
    let window = format!("since {}", report.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let topics = report.topics.join(", ");
    if report.divergences.is_empty() {
        println!(
            "{}: table {} and topic {} agree on {} (source, stage) pairs {window}.",
            report.subject,
            herald_sdk::printable::printable(&report.table, 128),
            herald_sdk::printable::printable(&topics, 256),
            report.pairs
        );
    } else {
        print!("{}", render_divergences(&report.divergences, Utc::now()));
        println!(
            "\n{}: {} of {} (source, stage) pairs differ between table {} and topic {} {window}.",
            report.subject,
            report.divergences.len(),
            report.pairs,
            herald_sdk::printable::printable(&report.table, 128),
            herald_sdk::printable::printable(&topics, 256),
        );
        if repair {
            println!("Repaired {}; {} cannot be repaired from this side.", report.repaired, report.unrepairable);
        } else {
            println!("`--repair` makes them agree where this side lacks or is older.");
        }
    }
    if report.in_flight > 0 || report.dead_lettered > 0 {
        println!(
            "Not compared: {} events the route has not reached yet, {} the table refused (in the dead-letter topic).",
            report.in_flight, report.dead_lettered
        );
    }
    Ok(())
}
