//! `herald migrate`: create or update the tables herald's sinks own, install the sources'
//! change capture, and create the topics herald writes; or, with `--drop-source`, forget a
//! source that was taken out of service.

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use herald_kafka::{ensure_topics, partition_counts, TopicSpec};

use crate::config::Config;
use crate::registry;

/// Arguments of `herald migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The config file.
    #[arg(long, short, env = "HERALD_CONFIG", default_value = "config/herald.toml")]
    pub config: PathBuf,
    /// Instead of migrating, retire the source of this name (a `[[source]]` of the config, still
    /// there): WAL capture drops its slot and publication; trigger capture stops keeping the
    /// table's changes for it and, when no other source reads the table, drops the trigger.
    #[arg(long, value_name = "NAME")]
    pub drop_source: Option<String>,
}

pub async fn migrate(args: MigrateArgs) -> Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    if let Some(name) = &args.drop_source {
        let Some(spec) = config.sources.iter().find(|spec| &spec.name == name) else {
            let known: Vec<&str> = config.sources.iter().map(|spec| spec.name.as_str()).collect();
            bail!(
                "{}: no [[source]] named `{name}` (sources: {}); keep a source's [[source]] in the config until it is retired",
                args.config.display(),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            );
        };
        let source = registry::source(spec)?;
        let had = source
            .retire(&config.kafka)
            .await
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| format!("source `{name}`"))?;
        let what = if had {
            "forgotten: its slot and publication, or its claim on the table's captured changes, are removed"
        } else {
            "had nothing to forget"
        };
        println!("ok    source {name:<21} {what}");
        return Ok(ExitCode::SUCCESS);
    }
    // Topics first: a source's continuity check reads its offsets topic.
    create_topics(&config).await?;
    for route in &config.routes {
        match registry::migrate(route).await? {
            Some(what) => println!("ok    route {:<22} {} migrated", route.name, what),
            None => println!("-     route {:<22} sink `{}` has no tables", route.name, route.sink.kind),
        }
    }
    for spec in &config.sources {
        let source = registry::source(spec)?;
        let what = source
            .migrate(&config.kafka)
            .await
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| format!("source `{}`", spec.name))?;
        println!("ok    source {:<21} {what}", spec.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates the topics herald writes that are missing, with `[kafka.topic_defaults]`: each
/// route's dead-letter topic, each source's events, dead-letter and offsets topics, the ingest
/// listener's topic, and with
/// `[[expect]]` rules the alerts' topic and the evaluator's state topic (as many partitions as
/// the alerts' topic, compacted).
async fn create_topics(config: &Config) -> Result<()> {
    let mut topics: Vec<TopicSpec> = config
        .routes
        .iter()
        .filter_map(|route| route.dead_letter_topic.as_deref())
        .map(TopicSpec::dead_letters)
        .collect();
    for spec in &config.sources {
        topics.extend(registry::source(spec)?.topics());
    }
    if !config.expect.is_empty() {
        topics.push(TopicSpec::events(config.expectations.topic.as_str()));
    }
    if config.ingest.listen.is_some() {
        topics.push(TopicSpec::events(config.ingest.topic.as_str()));
    }
    let kafka = &config.kafka;
    let brokers = kafka.bootstrap_servers();
    let mut created =
        ensure_topics(kafka, &topics).await.with_context(|| format!("creating herald's topics at {brokers}"))?;
    if !config.expect.is_empty() {
        let (props, alerts) = (kafka.clone(), vec![config.expectations.topic.clone()]);
        let counts = tokio::task::spawn_blocking(move || partition_counts(&props, &alerts, Duration::from_secs(30)))
            .await
            .context("reading the alerts topic's partitions")??;
        let partitions = counts.first().map_or(1, |(_, count)| i32::try_from(*count).unwrap_or(1).max(1));
        let state = [TopicSpec::compacted(config.expectations.state_topic(), partitions)];
        created.extend(
            ensure_topics(kafka, &state).await.with_context(|| format!("creating the state topic at {brokers}"))?,
        );
        topics.extend(state);
    }
    for topic in &topics {
        let done = if created.contains(&topic.name) { "created" } else { "exists" };
        println!("ok    topic {:<22} {done}", topic.name);
    }
    Ok(())
}
