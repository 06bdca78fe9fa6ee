//! The sink registry: a route's `sink.type` → the sink crate that builds it.

use anyhow::{bail, Context, Result};
use herald_core::{RouteConfig, Sink, SourceSpec};
use herald_sink_postgres::Setup;

/// Every sink type this binary knows, for error messages.
pub const KNOWN: &[&str] =
    &[herald_sink_stdout::KIND, herald_sink_postgres::KIND, herald_sink_redis::KIND, herald_sink_sns::KIND];

/// Why a sink is being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `herald run`: create what the sink needs (tables), then deliver.
    Run,
    /// `herald check`: connect and verify, change nothing.
    Check,
}

/// Parses the route's sink settings with that sink's typed config and builds the sink.
pub async fn build(route: &RouteConfig, purpose: Purpose) -> Result<Box<dyn Sink>> {
    let spec = &route.sink;
    let context = || format!("route `{}`: sink `{}`", route.name, spec.kind);
    match spec.kind.as_str() {
        herald_sink_stdout::KIND => {
            let config: herald_sink_stdout::StdoutSinkConfig = spec.parse().with_context(context)?;
            Ok(config.build())
        }
        herald_sink_postgres::KIND => {
            let config: herald_sink_postgres::PostgresSinkConfig = spec.parse().with_context(context)?;
            let setup = match purpose {
                Purpose::Run => Setup::Migrate,
                Purpose::Check => Setup::CheckOnly,
            };
            config.build(&route.name, &route.group_id(), setup).await.with_context(context)
        }
        herald_sink_redis::KIND => {
            let config: herald_sink_redis::RedisSinkConfig = spec.parse().with_context(context)?;
            config.build().with_context(context)
        }
        herald_sink_sns::KIND => {
            let config: herald_sink_sns::SnsSinkConfig = spec.parse().with_context(context)?;
            config.build().await.with_context(context)
        }
        other => bail!("route `{}`: unknown sink type `{other}`; known types: {}", route.name, KNOWN.join(", ")),
    }
}

/// Checks the route's sink settings without connecting to anything.
pub fn validate(route: &RouteConfig) -> Result<()> {
    let spec = &route.sink;
    let context = || format!("route `{}`: sink `{}`", route.name, spec.kind);
    match spec.kind.as_str() {
        herald_sink_stdout::KIND => {
            spec.parse::<herald_sink_stdout::StdoutSinkConfig>().with_context(context)?;
        }
        herald_sink_postgres::KIND => {
            let config: herald_sink_postgres::PostgresSinkConfig = spec.parse().with_context(context)?;
            config.validate().with_context(context)?;
        }
        herald_sink_redis::KIND => {
            let config: herald_sink_redis::RedisSinkConfig = spec.parse().with_context(context)?;
            config.validate().with_context(context)?;
        }
        herald_sink_sns::KIND => {
            let config: herald_sink_sns::SnsSinkConfig = spec.parse().with_context(context)?;
            config.validate().with_context(context)?;
        }
        other => bail!("route `{}`: unknown sink type `{other}`; known types: {}", route.name, KNOWN.join(", ")),
    }
    Ok(())
}

/// Creates or updates the tables of every route's sink that has any; returns what was migrated.
pub async fn migrate(route: &RouteConfig) -> Result<Option<String>> {
    let spec = &route.sink;
    let context = || format!("route `{}`: sink `{}`", route.name, spec.kind);
    match spec.kind.as_str() {
        herald_sink_postgres::KIND => {
            let config: herald_sink_postgres::PostgresSinkConfig = spec.parse().with_context(context)?;
            config.migrate(&route.name).await.with_context(context)?;
            Ok(Some(format!("schema `{}`", config.schema)))
        }
        _ => Ok(None),
    }
}

/// The source a `[[source]]` table describes, parsed and validated.
pub fn source(spec: &SourceSpec) -> Result<herald_source_postgres::PostgresSourceConfig> {
    let context = || format!("source `{}` (type `{}`)", spec.name, spec.kind);
    match spec.kind.as_str() {
        herald_source_postgres::KIND => {
            let config: herald_source_postgres::PostgresSourceConfig = spec.parse().with_context(context)?;
            config.validate().with_context(context)?;
            Ok(config)
        }
        other => bail!(
            "source `{}`: unknown source type `{other}`; known types: {}",
            spec.name,
            herald_source_postgres::KIND
        ),
    }
}

/// Every `[[source]]`, parsed and validated, with their names; two WAL sources may not share a
/// replication slot or a publication (one would confirm WAL the other has not published).
pub fn sources(specs: &[SourceSpec]) -> Result<Vec<(String, herald_source_postgres::PostgresSourceConfig)>> {
    let sources = specs.iter().map(|spec| Ok((spec.name.clone(), source(spec)?))).collect::<Result<Vec<_>>>()?;
    let mut slots: std::collections::BTreeMap<String, &str> = std::collections::BTreeMap::new();
    let mut publications: std::collections::BTreeMap<String, &str> = std::collections::BTreeMap::new();
    for (name, config) in &sources {
        if config.capture != herald_source_postgres::Capture::Wal {
            continue;
        }
        if let Some(other) = slots.insert(config.slot_name(name), name) {
            bail!(
                "sources `{other}` and `{name}` would share replication slot `{}`: set `slot` on one of them",
                config.slot_name(name)
            );
        }
        if let Some(other) = publications.insert(config.publication_name(name), name) {
            bail!(
                "sources `{other}` and `{name}` would share publication `{}`: set `publication` on one of them",
                config.publication_name(name)
            );
        }
    }
    Ok(sources)
}
