//! The registry: every sink and source kind this binary knows, one line each, and the typed
//! values commands that use one kind's own API build from them (reconcile's subjects).

use anyhow::{bail, Context, Result};
use herald_core::source::{Source, SourceFactory};
use herald_core::{BoundRoute, RouteConfig, SourceSpec};
use herald_reconcile::Subject;
use herald_sdk::Sink;
use herald_sdk::{Purpose, Registered, SinkContext, SinkFactory};
use tracing::warn;

use crate::config::Config;

/// Every sink kind this binary knows. Adding a sink is one line here and one dependency.
pub static SINKS: &[&dyn SinkFactory] = &[
    &Registered::<herald_sink_stdout::StdoutSinkConfig>::NEW,
    &Registered::<herald_sink_postgres::PostgresSinkConfig>::NEW,
    &Registered::<herald_sink_redis::RedisSinkConfig>::NEW,
    &Registered::<herald_sink_sns::SnsSinkConfig>::NEW,
    &Registered::<herald_sink_http::HttpSinkConfig>::NEW,
    &Registered::<herald_sink_exec::ExecSinkConfig>::NEW,
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

/// The route with its sink built to run, as `run`, a reload and a restart start it: a sink
/// that does not answer its healthcheck is not fatal (writes are retried until it is back),
/// and what the sink found that will surprise ([`Sink::warnings`]) is logged.
pub async fn bind(route: &RouteConfig) -> Result<BoundRoute> {
    let mut sink = build(route, Purpose::Run).await?;
    if let Err(err) = sink.healthcheck().await {
        warn!(route = %route.name, error = %herald_sdk::error_chain(&err).join(": "), "Sink healthcheck failed; writes will be retried.");
    }
    for warning in sink.warnings() {
        warn!(route = %route.name, "{warning}");
    }
    Ok(BoundRoute { config: route.clone(), sink })
}

/// Checks the route's sink settings without connecting to anything.
pub fn validate(route: &RouteConfig) -> Result<()> {
    factory(route)?.validate(&route.sink.settings).with_context(context(route))
}

/// Checks that every event field the route's sink settings name is an event field or one of
/// the route's `extra_fields`. Settings that do not parse are left to [`validate`] to report.
pub fn check_sink_fields(route: &RouteConfig) -> Result<(), (String, String)> {
    let Ok(fields) = factory(route).and_then(|factory| Ok(factory.fields_named(&route.sink.settings)?)) else {
        return Ok(());
    };
    for (setting, field) in fields {
        herald_sdk::check_field(&field, &route.extra_fields).map_err(|reason| (format!("sink.{setting}"), reason))?;
    }
    Ok(())
}

/// Creates or updates what the route's sink needs (tables); returns what was migrated.
pub async fn migrate(route: &RouteConfig) -> Result<Option<String>> {
    let group = route.group_id();
    let sink_context = SinkContext { route: &route.name, consumer_group: &group, purpose: Purpose::Run };
    factory(route)?.migrate(&route.sink.settings, sink_context).await.with_context(context(route))
}

/// Every source kind this binary knows, one line each as for sinks.
pub static SOURCES: &[&dyn SourceFactory] = &[&Registered::<herald_source_postgres::PostgresSourceConfig>::NEW];

/// The source a `[[source]]` table describes, parsed and validated (nothing connected).
pub fn source(spec: &SourceSpec) -> Result<Box<dyn Source>> {
    let Some(factory) = SOURCES.iter().find(|factory| factory.kind() == spec.kind) else {
        let known: Vec<&str> = SOURCES.iter().map(|factory| factory.kind()).collect();
        bail!("source `{}`: unknown source type `{}`; known types: {}", spec.name, spec.kind, known.join(", "))
    };
    factory.build(spec).with_context(|| format!("source `{}` (type `{}`)", spec.name, spec.kind))
}

/// Every `[[source]]`, parsed and validated, with their names. Two sources may not claim the
/// same resource: two WAL sources sharing a replication slot or a publication would confirm
/// WAL the other has not published.
pub fn sources(specs: &[SourceSpec]) -> Result<Vec<(String, Box<dyn Source>)>> {
    let sources = specs.iter().map(|spec| Ok((spec.name.clone(), source(spec)?))).collect::<Result<Vec<_>>>()?;
    let mut claimed: std::collections::BTreeMap<String, &str> = std::collections::BTreeMap::new();
    for (name, source) in &sources {
        for claim in source.claims() {
            if let Some(other) = claimed.insert(claim.resource.clone(), name) {
                bail!("sources `{other}` and `{name}` would share {}: {}", claim.resource, claim.hint);
            }
        }
    }
    Ok(sources)
}

/// What `reconcile` compares for `[[source]]` `spec`: a Postgres source's table; `None` for
/// another kind.
pub fn source_subject(spec: &SourceSpec) -> Result<Option<Subject>> {
    Ok(postgres_source(spec)?.map(Subject::Source))
}

/// What `reconcile` compares for `route`: the table of a Postgres sink; `None` for another
/// sink.
pub fn route_subject(route: &RouteConfig) -> Result<Option<Subject>> {
    let Some(sink) = typed_sink::<herald_sink_postgres::PostgresSinkConfig>(route)? else { return Ok(None) };
    let table =
        herald_sink_postgres::RouteTable::new(&route.name, sink).with_context(|| format!("route `{}`", route.name))?;
    Ok(Some(Subject::Route { route: Box::new(route.clone()), table }))
}

/// Every Postgres source and Postgres sink route of `config`: what `herald run` reconciles
/// periodically.
pub fn reconcile_subjects(config: &Config) -> Result<Vec<Subject>> {
    let mut subjects = Vec::new();
    for spec in &config.sources {
        subjects.extend(source_subject(spec)?);
    }
    for route in &config.routes {
        subjects.extend(route_subject(route)?);
    }
    Ok(subjects)
}

/// A route's sink as kind `P`'s typed config, parsed and validated, or `None` when the route's
/// sink is another kind: for commands that use one kind's own API (`reconcile` reads Postgres).
pub fn typed_sink<P: herald_sdk::SinkPlugin>(route: &RouteConfig) -> Result<Option<P>> {
    if route.sink.kind != P::KIND {
        return Ok(None);
    }
    let config: P = herald_sdk::parse_settings(&route.sink.settings).with_context(context(route))?;
    config.validate().map_err(anyhow::Error::from_boxed).with_context(context(route))?;
    Ok(Some(config))
}

/// The Postgres source `spec` describes, built (its plan checked); `None` for another kind.
pub fn postgres_source(spec: &SourceSpec) -> Result<Option<herald_source_postgres::PostgresSource>> {
    let Some(config) = typed_source::<herald_source_postgres::PostgresSourceConfig>(spec)? else { return Ok(None) };
    let source = herald_source_postgres::PostgresSource::new(&spec.name, config, spec.config_file.as_deref())
        .with_context(|| format!("source `{}`", spec.name))?;
    Ok(Some(source))
}

/// A `[[source]]` as kind `P`'s typed config, parsed and validated, or `None` when it is
/// another kind.
pub fn typed_source<P: herald_core::source::SourcePlugin>(spec: &SourceSpec) -> Result<Option<P>> {
    if spec.kind != P::KIND {
        return Ok(None);
    }
    let config: P = herald_sdk::parse_settings(&spec.settings).with_context(|| format!("source `{}`", spec.name))?;
    config.validate().map_err(anyhow::Error::from_boxed).with_context(|| format!("source `{}`", spec.name))?;
    Ok(Some(config))
}
