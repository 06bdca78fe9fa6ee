//! `herald status`: the status board on a terminal. It reads the topic from `--since` ago up to
//! its end when it started, like `wait` (no consumer group, nothing committed), and prints the
//! latest event of every source and stage.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Args;
use herald_board::{age, render_table, Board};
use herald_kafka::reader::TopicReader;

use super::KafkaArgs;

/// Arguments of `herald status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// How far back to read.
    #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
    pub since: Duration,
    /// Print JSON: one object per source and stage, with `age_seconds`.
    #[arg(long)]
    pub json: bool,
    /// Give up reading after this long (exit 124), e.g. when the topic is huge.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

pub async fn status(args: StatusArgs) -> Result<ExitCode> {
    let since = Utc::now() - chrono::Duration::from_std(args.since).context("--since is too large")?;
    let props = args.kafka.properties()?;
    let topics = args.kafka.read_topics()?;
    let named = topics.join("`, `");
    // --timeout bounds the whole command, reaching Kafka included.
    let deadline = tokio::time::Instant::now() + args.timeout;
    let opening = TopicReader::open(&props, &topics, since, "status");
    let mut reader = tokio::time::timeout_at(deadline, opening).await.map_err(|_| {
        anyhow::anyhow!(
            "Kafka at {} did not answer within --timeout {}",
            props.bootstrap_servers(),
            humantime::format_duration(args.timeout)
        )
    })??;
    let board = Board::new();
    let read_history = async {
        while !reader.history_done() {
            if let Some(event) = reader.next().await?.and_then(|read| read.event) {
                board.apply(&event);
            }
        }
        Ok::<_, herald_kafka::reader::HistoryError>(())
    };
    match tokio::time::timeout_at(deadline, read_history).await {
        Ok(read) => read?,
        Err(_) => {
            eprintln!(
                "herald status: reading `{}` took longer than {}; try a shorter --since",
                named,
                humantime::format_duration(args.timeout)
            );
            return Ok(ExitCode::from(124));
        }
    }
    let snapshot = board.snapshot();
    let now = Utc::now();
    if args.json {
        let cells: Vec<serde_json::Value> = snapshot
            .cells
            .iter()
            .map(|cell| {
                let mut value = serde_json::to_value(cell).unwrap_or_default();
                value["age_seconds"] = (now - cell.at).num_seconds().max(0).into();
                value
            })
            .collect();
        let json = serde_json::to_string_pretty(&cells).context("encoding the board")?;
        println!("{}", herald_sdk::printable::json(&json));
    } else if snapshot.cells.is_empty() {
        println!("No stage events on `{named}` in the last {}.", humantime::format_duration(args.since));
    } else {
        print!("{}", render_table(&snapshot, now));
        let newest = snapshot.cells.iter().map(|cell| cell.at).max().unwrap_or(now);
        println!(
            "\n{} sources, {} stages; newest event {} ago.",
            {
                let mut sources: Vec<&str> = snapshot.cells.iter().map(|c| c.source.as_str()).collect();
                sources.dedup();
                sources.len()
            },
            snapshot.stages.len(),
            age(newest, now)
        );
    }
    Ok(ExitCode::SUCCESS)
}
