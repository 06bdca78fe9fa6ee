//! The registry: every sink kind this binary knows, one line each, and the source.

use anyhow::{bail, Context, Result};
use herald_core::{RouteConfig, Sink, SourceSpec};
use herald_sdk::{Purpose, Registered, SinkContext, SinkFactory};

/// Every sink kind this binary knows. Adding a sink is one line here and one dependency.
pub static SINKS: &[&dyn SinkFactory] = &[
    &Registered::<herald_sink_stdout::Stdout>::NEW,
    &Registered::<herald_sink_postgres::Postgres>::NEW,
    &Registered::<herald_sink_redis::Redis>::NEW,
    &Registered::<herald_sink_sns::Sns>::NEW,
    &Registered::<herald_sink_http::Http>::NEW,
    &Registered::<herald_sink_exec::Exec>::NEW,
];

/// The factory of the route's sink kind.
fn factory(route: &RouteConfig) -> Result<&'static dyn SinkFactory> {
    match SINKS.iter().find(|factory| factory.kind() == route.sink.kind) {
        Some(factory) => Ok(*factory),
        None => {
            let known: Vec<&str> = SINKS.iter().map(|factory| factory.kind()).collect();
            bail!("route `{}`: unknown sink type `{}`; known types: {}", route.name, route.sink.kind, known.join(", "))
        }
    }
}

/// What an error of the route's sink is about.
fn context(route: &RouteConfig) -> impl Fn() -> String {
    let (name, kind) = (route.name.clone(), route.sink.kind.clone());
    move || format!("route `{name}`: sink `{kind}`")
}

/// Parses the route's sink settings with that sink's typed config and builds the sink.
pub async fn build(route: &RouteConfig, purpose: Purpose) -> Result<Box<dyn Sink>> {
    let group = route.group_id();
    let sink_context = SinkContext { route: &route.name, consumer_group: &group, purpose };
    factory(route)?.build(&route.sink.settings, sink_context).await.with_context(context(route))
}

/// Checks the route's sink settings without connecting to anything.
pub fn validate(route: &RouteConfig) -> Result<()> {
    factory(route)?.validate(&route.sink.settings).with_context(context(route))
}

/// Creates or updates what the route's sink needs (tables); returns what was migrated.
pub async fn migrate(route: &RouteConfig) -> Result<Option<String>> {
    let group = route.group_id();
    let sink_context = SinkContext { route: &route.name, consumer_group: &group, purpose: Purpose::Run };
    factory(route)?.migrate(&route.sink.settings, sink_context).await.with_context(context(route))
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
