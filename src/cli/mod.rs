//! Command-line arguments and the subcommands.

mod check;
mod migrate;
pub(crate) mod offsets;
mod publish;
mod reconcile;
pub(crate) mod redrive;
mod reload;
mod run;
mod status;
mod tap;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use herald_kafka::KafkaProperties;

/// The topic the seed producer and consumer use, and herald's default.
pub const DEFAULT_TOPIC: &str = "pipeline.stage.events";

/// herald: a bridge between Kafka stage events and systems that cannot speak Kafka.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter, e.g. `info` or `herald_core=debug` (default: `info` for run/check, `warn`
    /// otherwise; `RUST_LOG` also works).
    #[arg(long, global = true, env = "HERALD_LOG")]
    pub log: Option<String>,
    /// Log lines as `text` (default) or `json`: one object per line with `timestamp`, `level`,
    /// `target`, the message under `fields.message` beside the event's fields (`route`,
    /// `source`, …), and the spans it happened in.
    #[arg(long, global = true, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: `2026-12-04T10:15:00Z  INFO Route started. route=…`.
    Text,
    /// For log shippers: one JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge: every route of the config until SIGINT/SIGTERM.
    Run(run::RunArgs),
    /// Validate the config and connect to Kafka and every sink; say exactly what is wrong.
    Check(check::CheckArgs),
    /// Create or update the tables herald's sinks own (idempotent; `run` does it too).
    Migrate(migrate::MigrateArgs),
    /// Publish one stage event and exit once the broker acknowledged it.
    Publish(publish::PublishArgs),
    /// Block until matching stage events arrive (or arrived within --since); print them.
    Wait(wait::WaitArgs),
    /// Print which source is at which stage: the latest event of each, read from the topic.
    Status(status::StatusArgs),
    /// Compare a status table with a topic, pair by pair; exit 3 when they differ. `--repair`
    /// makes them agree where herald can.
    Reconcile(reconcile::ReconcileArgs),
    /// Where each route resumes and each source stands: `offsets show`.
    Offsets(offsets::OffsetsArgs),
    /// Watch a running route: each message it handles and what became of it (delivered,
    /// skipped, dead-lettered, retried), from `herald run`'s admin API.
    Tap(tap::TapArgs),
    /// Send a route's dead letters back through it once their cause is fixed: each once, from
    /// where the last redrive left off; those that fail again stay dead, with their new error.
    Redrive(redrive::RedriveArgs),
}

/// Runs a subcommand; `Ok` carries the process exit code.
pub async fn execute(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => run::run(args).await,
        Command::Check(args) => check::check(args).await,
        Command::Migrate(args) => migrate::migrate(args).await,
        Command::Publish(args) => publish::publish(args).await,
        Command::Wait(args) => wait::wait(args).await,
        Command::Status(args) => status::status(args).await,
        Command::Reconcile(args) => reconcile::reconcile(args).await,
        Command::Offsets(args) => offsets::offsets(args).await,
        Command::Tap(args) => tap::tap(args).await,
        Command::Redrive(args) => redrive::redrive(args).await,
    }
}

/// Where `publish` and `wait` find Kafka: a config file's `[kafka]` table, then `--brokers`.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Config file whose `[kafka]` properties (TLS, SASL, …) to use.
    #[arg(long, short, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers; overrides the config file's. Default `127.0.0.1:9092`.
    #[arg(long, short, env = "HERALD_BROKERS")]
    pub brokers: Option<String>,
    /// The topic. Default for `publish`: `pipeline.stage.events`. For `wait` and `status`: with
    /// `--config`, the topics its sources write, its routes read and its `[board]` shows; else
    /// `pipeline.stage.events`.
    #[arg(long, short)]
    pub topic: Option<String>,
}

impl KafkaArgs {
    /// The topic to publish to: `--topic`, else the default.
    pub fn publish_topic(&self) -> String {
        self.topic.clone().unwrap_or_else(|| DEFAULT_TOPIC.to_owned())
    }

    /// The topics to read stage events from: `--topic`; else, with `--config`, the topics its
    /// sources write, its routes read (names, not patterns) and its board shows; else the
    /// default. So `wait --config F` waits where F's herald publishes.
    pub fn read_topics(&self) -> Result<Vec<String>> {
        if let Some(topic) = &self.topic {
            return Ok(vec![topic.clone()]);
        }
        let Some(path) = &self.config else { return Ok(vec![DEFAULT_TOPIC.to_owned()]) };
        let config = Config::load(path)?;
        let mut topics: Vec<String> = Vec::new();
        for spec in &config.sources {
            if let Some(source) = crate::registry::typed_source::<herald_source_postgres::PostgresSourceConfig>(spec)? {
                topics.push(source.topic);
            }
        }
        topics.extend(
            config.routes.iter().flat_map(|route| route.topics.iter().filter(|t| !t.starts_with('^')).cloned()),
        );
        topics.extend(config.board.topics.iter().filter(|t| !t.starts_with('^')).cloned());
        let mut seen = std::collections::BTreeSet::new();
        topics.retain(|topic| seen.insert(topic.clone()));
        if topics.is_empty() {
            topics.push(DEFAULT_TOPIC.to_owned());
        }
        Ok(topics)
    }

    /// The Kafka properties these arguments select.
    pub fn properties(&self) -> Result<KafkaProperties> {
        let mut props = match &self.config {
            Some(path) => Config::load(path)?.kafka,
            None => KafkaProperties::default(),
        };
        if let Some(brokers) = &self.brokers {
            props.set("bootstrap.servers", brokers.as_str());
        }
        Ok(props)
    }
}

/// Parses `30s`, `5m`, `2h`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("`{text}` is not a duration like 30s, 5m or 2h: {err}"))
}

/// Loads the config, with the file named in the error.
pub fn load_config(path: &std::path::Path) -> Result<Config> {
    Config::load(path).with_context(|| "invalid configuration".to_string())
}

/// The `[[route]]` named `name` in `config` (read from `path`), or an error listing the routes.
pub fn find_route<'c>(config: &'c Config, name: &str, path: &std::path::Path) -> Result<&'c herald_core::RouteConfig> {
    config.routes.iter().find(|route| route.name == name).ok_or_else(|| {
        let known: Vec<&str> = config.routes.iter().map(|route| route.name.as_str()).collect();
        anyhow::anyhow!("{}: no [[route]] named `{name}` (routes: {})", path.display(), list(&known))
    })
}

/// The `[[source]]` named `name` in `config` (read from `path`), or an error listing the sources.
pub fn find_source<'c>(config: &'c Config, name: &str, path: &std::path::Path) -> Result<&'c herald_core::SourceSpec> {
    config.sources.iter().find(|spec| spec.name == name).ok_or_else(|| {
        let known: Vec<&str> = config.sources.iter().map(|spec| spec.name.as_str()).collect();
        anyhow::anyhow!("{}: no [[source]] named `{name}` (sources: {})", path.display(), list(&known))
    })
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}
