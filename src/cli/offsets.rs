//! `herald offsets show`: where a route resumes, per topic-partition (the sink's stored offsets
//! where the sink keeps them, else the group's), with the log's ends, the lag and the next
//! event's time; and where a source stands (its committed position, and when). Read-only: no
//! group is joined and nothing is committed, so it is safe while herald runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use herald_offsets::{KeptBy, Position};

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
    }
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
    let patterns: Vec<&String> = route.topics.iter().filter(|topic| topic.starts_with('^')).collect();
    if !patterns.is_empty() {
        bail!("route `{name}` subscribes to a pattern ({}): name its topics to show their offsets", patterns[0]);
    }
    let group = route.group_id();
    // A Postgres sink keeps the offsets with its rows; the route reads from there.
    let stored = match registry::route_subject(route)? {
        Some(herald_reconcile::Subject::Route { table, .. }) => {
            Some(table.written(&group).await.with_context(|| format!("route `{name}`"))?.next_offsets)
        }
        _ => None,
    };
    let positions = herald_offsets::route_positions(&config.kafka, &group, &route.topics, stored)
        .await
        .with_context(|| format!("route `{name}`"))?;
    if args.json {
        let json = serde_json::json!({ "route": name, "group": group, "partitions": positions });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
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
