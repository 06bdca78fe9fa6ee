//! `herald offsets show`: where a route resumes, per topic-partition (the sink's stored offsets
//! where the sink keeps them, else the group's), with the log's ends, the lag and the next
//! event's time; and where a source stands (its committed position, and when). Read-only: no
//! group is joined and nothing is committed, so it is safe while herald runs.
//!
//! `herald offsets reset`: moves where a route resumes — the sink's stored offsets, in one
//! transaction, where the sink keeps them (the route reads from there), and the group's — to
//! replay a window or skip one; refused while any process runs the route.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use herald_offsets::{KeptBy, Position, ResetTo};
use serde::Serialize;

use crate::registry;

/// Arguments of `herald offsets`.
#[derive(Debug, Args)]
pub struct OffsetsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: OffsetsCommand,
}

/// The `offsets` subcommands.
#[derive(Debug, Subcommand)]
pub enum OffsetsCommand {
    /// Per topic-partition of a route: where it resumes and who keeps that (the sink or the
    /// group), the log's start and end, the lag, the next event's time. For a source: its
    /// committed position and when it was stored.
    Show(ShowArgs),
    /// Moves where a route resumes (its sink's stored offsets where it keeps them, and its
    /// group's), printing before → after; refused while any process runs the route.
    Reset(ResetArgs),
}

/// Arguments of `herald offsets reset`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_time", "to_offset"])))]
pub struct ResetArgs {
    /// The config file that names the route.
    #[arg(long, short, env = "HERALD_CONFIG")]
    pub config: PathBuf,
    /// The route.
    #[arg(long, value_name = "NAME")]
    pub route: String,
    /// Every partition to its oldest event still in the log: replay everything.
    #[arg(long)]
    pub to_earliest: bool,
    /// Every partition to its end: skip everything in the log now.
    #[arg(long)]
    pub to_latest: bool,
    /// Every partition to its first event produced at or after TIME: an RFC 3339 instant
    /// (`2026-12-07T10:00:00Z`) or a duration ago (`2h`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to_time: Option<chrono::DateTime<chrono::Utc>>,
    /// One partition to OFFSET (`TOPIC:PARTITION:OFFSET`); the others stay: skip a poison event
    /// by giving the offset after it.
    #[arg(long, value_name = "TOPIC:PARTITION:OFFSET", value_parser = parse_offset)]
    pub to_offset: Option<(String, i32, i64)>,
    /// Print what would move, and move nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let ago = super::parse_duration(text)
        .map_err(|_| format!("`{text}` is neither an RFC 3339 instant (2026-12-07T10:00:00Z) nor a duration (2h)"))?;
    chrono::Duration::from_std(ago).map(|ago| chrono::Utc::now() - ago).map_err(|_| format!("`{text}` is too long ago"))
}

fn parse_offset(text: &str) -> Result<(String, i32, i64), String> {
    let invalid = || format!("`{text}` is not TOPIC:PARTITION:OFFSET (e.g. pipeline.stage.events:0:1234)");
    let (rest, offset) = text.rsplit_once(':').ok_or_else(invalid)?;
    let (topic, partition) = rest.rsplit_once(':').ok_or_else(invalid)?;
    if topic.is_empty() {
        return Err(invalid());
    }
    Ok((topic.to_owned(), partition.parse().map_err(|_| invalid())?, offset.parse().map_err(|_| invalid())?))
}

/// Arguments of `herald offsets show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The config file that names the route or source.
    #[arg(long, short, env = "HERALD_CONFIG")]
    pub config: PathBuf,
    /// The route.
    #[arg(long, value_name = "NAME", required_unless_present = "source", conflicts_with = "source")]
    pub route: Option<String>,
    /// The source.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn offsets(args: OffsetsArgs) -> Result<ExitCode> {
    match args.command {
        OffsetsCommand::Show(args) => show(args).await,
        OffsetsCommand::Reset(args) => reset(args).await,
    }
}

/// A route's group, the sink's table when the sink keeps offsets, and where it stands.
struct RouteState {
    group: String,
    table: Option<herald_sink_postgres::RouteTable>,
    positions: Vec<Position>,
}

async fn route_state(config: &crate::config::Config, route: &herald_core::RouteConfig) -> Result<RouteState> {
    let name = &route.name;
    if let Some(pattern) = route.topics.iter().find(|topic| topic.starts_with('^')) {
        bail!("route `{name}` subscribes to a pattern ({pattern}): name its topics to see their offsets");
    }
    let group = route.group_id();
    let (table, positions) = positions_as(config, route, &group, &route.topics).await?;
    Ok(RouteState { group, table, positions: positions.with_context(|| format!("route `{name}`"))? })
}

/// Where consumer group `group` of `route`'s sink resumes on `topics`: the sink's stored offsets
/// where it keeps them (a Postgres sink keeps them with its rows, and the route reads from
/// there), else the group's; with the sink's table, when it has one.
pub async fn positions_as(
    config: &crate::config::Config,
    route: &herald_core::RouteConfig,
    group: &str,
    topics: &[String],
) -> Result<(Option<herald_sink_postgres::RouteTable>, Result<Vec<Position>, herald_offsets::OffsetsError>)> {
    let table = match registry::route_subject(route)? {
        Some(herald_reconcile::Subject::Route { table, .. }) => Some(table),
        _ => None,
    };
    let stored = match &table {
        Some(table) => {
            Some(table.written(group).await.with_context(|| format!("route `{}`", route.name))?.next_offsets)
        }
        None => None,
    };
    let positions = herald_offsets::route_positions(&config.kafka, group, topics, stored).await;
    Ok((table, positions))
}

async fn reset(args: ResetArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let route = super::find_route(&config, &args.route, &args.config)?;
    let to = match (&args.to_time, &args.to_offset) {
        _ if args.to_earliest => ResetTo::Earliest,
        _ if args.to_latest => ResetTo::Latest,
        (Some(at), _) => ResetTo::Time(*at),
        (None, Some((topic, partition, offset))) => {
            ResetTo::Offset { topic: topic.clone(), partition: *partition, offset: *offset }
        }
        (None, None) => bail!("say where to: --to-earliest, --to-latest, --to-time or --to-offset"),
    };
    let reset = reset_route(&config, route, &to, args.dry_run).await?;
    println!("route `{}` (group `{}`):", route.name, reset.group);
    for moved in &reset.moved {
        let before = moved.before.map_or_else(|| "start_from".to_owned(), |offset| offset.to_string());
        println!("  {}[{}]: {before} → {}", moved.topic, moved.partition, moved.after);
    }
    if args.dry_run {
        println!("dry run: nothing moved");
    } else {
        println!("moved {}; the route reads from there when it next starts", reset.kept_by);
    }
    Ok(ExitCode::SUCCESS)
}

/// One partition a reset moves.
#[derive(Debug, Serialize)]
pub struct Moved {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Where the route resumed (`None`: from `start_from`, nothing kept).
    pub before: Option<i64>,
    /// Where it resumes now.
    pub after: i64,
}

/// What a reset moved, or would move.
#[derive(Debug, Serialize)]
pub struct Reset {
    /// The route's consumer group.
    pub group: String,
    /// Each partition moved.
    pub moved: Vec<Moved>,
    /// Who keeps the position: the sink's stored offsets and the group's, or the group's.
    pub kept_by: &'static str,
    /// Whether nothing was moved (a dry run).
    pub dry_run: bool,
}

/// Moves where `route` resumes to `to` (with `dry_run`, only says where): refused while any
/// process runs the route's group, naming its members.
pub async fn reset_route(
    config: &crate::config::Config,
    route: &herald_core::RouteConfig,
    to: &ResetTo,
    dry_run: bool,
) -> Result<Reset> {
    let name = &route.name;
    // Asked first: a running route is refused before anything is read. A dry run moves
    // nothing, so it answers for a running (or paused) route too.
    let group = route.group_id();
    let members = if dry_run { Vec::new() } else { herald_offsets::group_members(&config.kafka, &group).await? };
    if !members.is_empty() {
        bail!(
            "route `{name}` is running: its consumer group `{group}` has members ({}). Stop those heralds, or \
             remove the route from their config and reload, then reset",
            members.join(", ")
        );
    }
    let state = route_state(config, route).await?;
    let targets = herald_offsets::targets(&config.kafka, &state.positions, to).await?;
    let moved = targets
        .iter()
        .map(|((topic, partition), after)| Moved {
            topic: topic.clone(),
            partition: *partition,
            before: state
                .positions
                .iter()
                .find(|p| &p.topic == topic && p.partition == *partition)
                .and_then(|p| p.resumes_from),
            after: *after,
        })
        .collect();
    let kept_by =
        if state.table.is_some() { "the sink's stored offsets and the group's" } else { "the group's offsets" };
    if !dry_run {
        if let Some(table) = &state.table {
            table.move_offsets(&state.group, &targets).await.with_context(|| format!("route `{name}`"))?;
        }
        // Also where the group's own tools look (and where a route whose sink keeps none resumes).
        herald_offsets::commit_group(&config.kafka, &state.group, &targets).await?;
    }
    Ok(Reset { group: state.group, moved, kept_by, dry_run })
}

/// Where `route` resumes, per topic-partition, as `offsets show --json` prints it.
pub async fn positions_json(
    config: &crate::config::Config,
    route: &herald_core::RouteConfig,
) -> Result<serde_json::Value> {
    let RouteState { group, positions, .. } = route_state(config, route).await?;
    Ok(serde_json::json!({ "route": route.name, "group": group, "partitions": positions }))
}

async fn show(args: ShowArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    if let Some(name) = &args.source {
        let spec = super::find_source(&config, name, &args.config)?;
        let Some(source) = registry::postgres_source(spec)? else {
            bail!("source `{name}` is of type `{}`; only Postgres sources keep a position", spec.kind)
        };
        let position = source.position(&config.kafka).await.with_context(|| format!("source `{name}`"))?;
        if args.json {
            let json = serde_json::json!({ "source": name, "offsets_topic": source.config().offsets_topic, "position": position });
            println!("{}", serde_json::to_string_pretty(&json)?);
        } else {
            match position {
                Some(position) => {
                    let at = position.at.map_or_else(|| "an unknown time".to_owned(), |at| at.to_rfc3339());
                    println!("source `{name}`: published everything up to {}, stored at {at}", position.position);
                }
                None => println!("source `{name}`: no position yet (it has not started)"),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(name) = &args.route else { bail!("say what to show: --route NAME or --source NAME") };
    let route = super::find_route(&config, name, &args.config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&positions_json(&config, route).await?)?);
    } else {
        let RouteState { group, positions, .. } = route_state(&config, route).await?;
        print!("{}", render(name, &group, &positions));
    }
    Ok(ExitCode::SUCCESS)
}

/// The positions as a table, under a line saying who keeps them.
fn render(route: &str, group: &str, positions: &[Position]) -> String {
    let keeper = if positions.iter().any(|p| p.kept_by == KeptBy::Sink) {
        "its sink's stored offsets (the group's committed offsets are not what it reads from)"
    } else {
        "the consumer group's committed offsets"
    };
    let mut out = format!("route `{route}` (group `{group}`) resumes from {keeper}:\n");
    let rows: Vec<[String; 7]> = positions
        .iter()
        .map(|p| {
            [
                p.topic.clone(),
                p.partition.to_string(),
                p.resumes_from.map_or_else(|| "start_from".to_owned(), |offset| offset.to_string()),
                p.log_start.to_string(),
                p.log_end.to_string(),
                p.lag.to_string(),
                p.next_event_at.map_or_else(|| "-".to_owned(), |at| at.to_rfc3339()),
            ]
        })
        .collect();
    let header = ["topic", "partition", "resumes from", "log start", "log end", "lag", "next event at"];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header.map(str::to_owned)).chain(rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
